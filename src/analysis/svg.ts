/** Small helpers shared by the analysis plots (hand-written standalone SVG, no dependencies). */

export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Ten distinguishable line colours (the Tableau 10 palette), repeating. */
const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

export function seriesColour(index: number): string {
  return PALETTE[index % PALETTE.length] as string;
}

/** White (0) to deep blue (1), linear in RGB; grey for a missing value. */
export function heatColour(value: number | null): string {
  if (value === null || !Number.isFinite(value)) return '#dddddd';
  const v = Math.min(1, Math.max(0, value));
  const mix = (from: number, to: number): number => Math.round(from + (to - from) * v);
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return `#${hex(mix(255, 8))}${hex(mix(255, 48))}${hex(mix(255, 107))}`;
}

/** A number for a label: 3 significant digits, exponent form outside [1e-3, 1e5). */
export function shortNumber(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(3)).toString();
}

export function svgOpen(width: number, height: number, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="12" y="22" font-size="13" font-weight="bold">${escapeXml(title)}</text>`,
  ];
}

/** Rough advance of an 11 px sans-serif character, to size labels' room. */
export const CHAR_W = 6.2;
/** Rough advance of a 13 px bold sans-serif character (titles). */
export const TITLE_CHAR_W = 7.9;
