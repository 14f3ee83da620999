/**
 * overlap.svg: a heat map with one row per adapter site (layer × point) and one column per expert pair of
 * each route (and the route's mean), each cell the pair's subspace overlap (0 white: orthogonal output
 * subspaces, 1 deep blue: the same), labelled with its value; grey where it is undefined (a zero ΔW).
 */
import type { RoutedAnalysis } from './report.js';
import { CHAR_W, TITLE_CHAR_W, escapeXml, heatColour, shortNumber, svgOpen } from './svg.js';

const CELL_W = 64;
const CELL_H = 22;
const TOP = 44;
const HEADER_H = 64;

export function renderOverlap(analysis: RoutedAnalysis): string {
  const columns: string[] = [];
  const seen = new Set<string>();
  const add = (label: string): void => {
    if (!seen.has(label)) {
      seen.add(label);
      columns.push(label);
    }
  };
  for (const site of analysis.sites) {
    for (const route of site.overlap) {
      for (const pair of route.pairs) add(`r${route.route} ${pair.first}·${pair.second}`);
      if (route.pairs.length > 1) add(`r${route.route} mean`);
    }
  }
  const rows = analysis.sites.filter((s) => s.overlap.some((r) => r.pairs.length > 0));
  const labelW = Math.max(80, ...rows.map((s) => `layer ${s.layer} ${s.site}`.length * CHAR_W + 12));
  const chances = [...new Set(rows.flatMap((s) => s.overlap.flatMap((r) => r.pairs.map((p) => shortNumber(p.chance)))))];
  const title =
    columns.length === 0
      ? 'Expert subspace overlap: no route has two experts with a ΔW at the same site'
      : `Expert subspace overlap: mean cos² of the principal angles between output subspaces (random subspaces: ${chances.join(', ')})`;
  const width = Math.max(12 + labelW + Math.max(1, columns.length) * CELL_W + 12, Math.ceil(24 + title.length * TITLE_CHAR_W));
  const height = TOP + HEADER_H + Math.max(1, rows.length) * CELL_H + 16;
  const parts = svgOpen(width, height, title);
  const gridX = 12 + labelW;
  const gridY = TOP + HEADER_H;
  columns.forEach((label, c) => {
    const x = gridX + c * CELL_W + CELL_W / 2;
    parts.push(`<text x="${x}" y="${gridY - 6}" transform="rotate(-35 ${x} ${gridY - 6})">${escapeXml(label)}</text>`);
  });
  rows.forEach((site, r) => {
    const y = gridY + r * CELL_H;
    parts.push(`<text x="${gridX - 6}" y="${y + CELL_H / 2 + 4}" text-anchor="end">${escapeXml(`layer ${site.layer} ${site.site}`)}</text>`);
    const values = new Map<string, number | null>();
    for (const route of site.overlap) {
      for (const pair of route.pairs) values.set(`r${route.route} ${pair.first}·${pair.second}`, pair.overlap);
      if (route.pairs.length > 1) values.set(`r${route.route} mean`, route.mean);
    }
    columns.forEach((label, c) => {
      if (!values.has(label)) return;
      const value = values.get(label) ?? null;
      const x = gridX + c * CELL_W;
      parts.push(`<rect x="${x}" y="${y}" width="${CELL_W}" height="${CELL_H}" fill="${heatColour(value)}" stroke="#ffffff"/>`);
      const text = value === null ? 'n/a' : value.toFixed(2);
      parts.push(
        `<text x="${x + CELL_W / 2}" y="${y + CELL_H / 2 + 4}" text-anchor="middle" fill="${value !== null && value > 0.55 ? '#ffffff' : '#222222'}">${text}</text>`,
      );
    });
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
