/**
 * spectra.svg: one panel per adapter site (rows: layers, columns: points), each drawing σ_i against i for
 * every module with a ΔW there, one colour per adapter. Values are scaled to the panel's largest σ (printed
 * in the panel's title), so panels compare shapes: a steep drop is a low effective rank.
 */
import type { RoutedAnalysis } from './report.js';
import { CHAR_W, TITLE_CHAR_W, escapeXml, seriesColour, shortNumber, svgOpen } from './svg.js';

const PANEL_W = 170;
const PANEL_H = 110;
const GAP = 14;
const LEFT = 60;
const TOP = 40;
const PLOT_PAD = 18;

export function renderSpectra(analysis: RoutedAnalysis): string {
  const layers = [...new Set(analysis.sites.map((s) => s.layer))].sort((a, b) => a - b);
  const points = [...new Set(analysis.sites.filter((s) => s.modules.some((m) => m.measure === 'delta-w')).map((s) => s.site))];
  const names = analysis.adapters.filter((a) => a.kind === 'lora' || a.kind === 'adalora').map((a) => a.name);
  const colourOf = new Map(names.map((n, i) => [n, seriesColour(i)]));
  const legendW = Math.max(120, ...names.map((n) => n.length * CHAR_W + 30));
  const title = `ΔW singular values per site (${analysis.directory}); each panel scaled to its largest σ`;
  const width = Math.max(LEFT + Math.max(1, points.length) * (PANEL_W + GAP) + legendW, Math.ceil(24 + title.length * TITLE_CHAR_W));
  const height = Math.max(TOP + Math.max(1, layers.length) * (PANEL_H + GAP) + 20, TOP + 20 + names.length * 16);
  const parts = svgOpen(width, height, title);
  layers.forEach((layer, row) => {
    const y0 = TOP + row * (PANEL_H + GAP);
    parts.push(`<text x="12" y="${y0 + PANEL_H / 2}" font-weight="bold">layer ${layer}</text>`);
    points.forEach((point, col) => {
      const x0 = LEFT + col * (PANEL_W + GAP);
      const site = analysis.sites.find((s) => s.layer === layer && s.site === point);
      const deltas = (site?.modules ?? []).flatMap((m) => (m.measure === 'delta-w' ? [m] : []));
      const top = Math.max(0, ...deltas.flatMap((m) => m.singularValues));
      parts.push(`<rect x="${x0}" y="${y0}" width="${PANEL_W}" height="${PANEL_H}" fill="#fafafa" stroke="#cccccc"/>`);
      parts.push(`<text x="${x0 + 4}" y="${y0 + 12}">${escapeXml(point)}  σ₁ ${escapeXml(shortNumber(top))}</text>`);
      if (deltas.length === 0 || top === 0) {
        parts.push(
          `<text x="${x0 + PANEL_W / 2}" y="${y0 + PANEL_H / 2}" text-anchor="middle" fill="#888888">${deltas.length === 0 ? 'no ΔW' : 'ΔW = 0'}</text>`,
        );
        return;
      }
      const longest = Math.max(...deltas.map((m) => m.singularValues.length));
      const px = (i: number): number => x0 + PLOT_PAD + (longest <= 1 ? 0 : (i / (longest - 1)) * (PANEL_W - 2 * PLOT_PAD));
      const py = (s: number): number => y0 + PANEL_H - 8 - (s / top) * (PANEL_H - 30);
      for (const m of deltas) {
        const colour = colourOf.get(m.adapter) ?? '#333333';
        const coords = m.singularValues.map((s, i) => `${px(i).toFixed(1)},${py(s).toFixed(1)}`);
        parts.push(`<polyline points="${coords.join(' ')}" fill="none" stroke="${colour}" stroke-width="1.5"/>`);
        for (const c of coords) {
          const [cx, cy] = c.split(',');
          parts.push(`<circle cx="${cx}" cy="${cy}" r="2" fill="${colour}"/>`);
        }
      }
    });
  });
  const lx = LEFT + Math.max(1, points.length) * (PANEL_W + GAP);
  names.forEach((name, i) => {
    const y = TOP + 10 + i * 16;
    parts.push(`<rect x="${lx}" y="${y - 8}" width="12" height="8" fill="${colourOf.get(name)}"/>`);
    parts.push(`<text x="${lx + 18}" y="${y}">${escapeXml(name)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
