/**
 * A routing heat map as a standalone SVG, written by hand (no dependencies): one column per expert, one row
 * per task, rows grouped by layer; each cell is coloured by its share (0 white → 1 deep blue) and labelled
 * with it in percent.
 */

export interface HeatmapRow {
  readonly label: string;
  /** One value in [0, 1] per column. */
  readonly values: readonly number[];
}

export interface HeatmapGroup {
  /** e.g. `layer 0`. */
  readonly label: string;
  readonly rows: readonly HeatmapRow[];
}

export interface HeatmapInput {
  readonly title: string;
  readonly columns: readonly string[];
  readonly groups: readonly HeatmapGroup[];
}

const CELL_W = 64;
const CELL_H = 26;
const GROUP_W = 70;
const LABEL_W = 80;
const TITLE_H = 34;
const HEADER_H = 24;
const GROUP_GAP = 8;
const LEGEND_H = 40;
const MARGIN = 12;
/** Average advance of a 13 px bold sans-serif character: sizes the picture so the title is not clipped. */
const TITLE_CHAR_W = 7.5;

export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** White (0) to deep blue (1), linear in RGB. */
export function shareColour(value: number): string {
  const v = Math.min(1, Math.max(0, Number.isFinite(value) ? value : 0));
  const mix = (from: number, to: number): number => Math.round(from + (to - from) * v);
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return `#${hex(mix(255, 8))}${hex(mix(255, 48))}${hex(mix(255, 107))}`;
}

export function renderHeatmap(input: HeatmapInput): string {
  const columns = input.columns.length;
  const rows = input.groups.reduce((s, g) => s + g.rows.length, 0);
  const gridX = MARGIN + GROUP_W + LABEL_W;
  const width = Math.max(gridX + Math.max(1, columns) * CELL_W + MARGIN, Math.ceil(2 * MARGIN + input.title.length * TITLE_CHAR_W));
  const gridY = MARGIN + TITLE_H + HEADER_H;
  const height = gridY + rows * CELL_H + Math.max(0, input.groups.length - 1) * GROUP_GAP + LEGEND_H + MARGIN;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${MARGIN}" y="${MARGIN + 16}" font-size="13" font-weight="bold">${escapeXml(input.title)}</text>`,
  ];
  input.columns.forEach((name, c) => {
    parts.push(`<text x="${gridX + c * CELL_W + CELL_W / 2}" y="${gridY - 8}" text-anchor="middle" font-weight="bold">${escapeXml(name)}</text>`);
  });
  let y = gridY;
  input.groups.forEach((group, g) => {
    if (g > 0) y += GROUP_GAP;
    const groupHeight = group.rows.length * CELL_H;
    parts.push(`<text x="${MARGIN}" y="${y + groupHeight / 2 + 4}" font-weight="bold">${escapeXml(group.label)}</text>`);
    for (const row of group.rows) {
      parts.push(`<text x="${gridX - 6}" y="${y + CELL_H / 2 + 4}" text-anchor="end">${escapeXml(row.label)}</text>`);
      for (let c = 0; c < columns; c++) {
        const value = row.values[c] ?? 0;
        const x = gridX + c * CELL_W;
        parts.push(`<rect x="${x}" y="${y}" width="${CELL_W}" height="${CELL_H}" fill="${shareColour(value)}" stroke="#ffffff"/>`);
        parts.push(
          `<text x="${x + CELL_W / 2}" y="${y + CELL_H / 2 + 4}" text-anchor="middle" fill="${value > 0.55 ? '#ffffff' : '#222222'}">${(value * 100).toFixed(0)}%</text>`,
        );
      }
      y += CELL_H;
    }
  });
  // Legend: the colour scale from 0% to 100%.
  const legendY = y + 16;
  const steps = 10;
  const legendW = Math.max(1, columns) * CELL_W;
  for (let i = 0; i < steps; i++) {
    parts.push(`<rect x="${gridX + (i * legendW) / steps}" y="${legendY}" width="${legendW / steps}" height="10" fill="${shareColour((i + 0.5) / steps)}"/>`);
  }
  parts.push(`<text x="${gridX - 6}" y="${legendY + 9}" text-anchor="end">share</text>`);
  parts.push(`<text x="${gridX}" y="${legendY + 24}">0%</text>`);
  parts.push(`<text x="${gridX + legendW}" y="${legendY + 24}" text-anchor="end">100%</text>`);
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
