/**
 * The live routing heat map: one column per token (prompt and generated), one band of rows per routed point
 * (layer, site), one row per expert in the band. A cell is coloured by the weight the router gave that
 * expert for that token (blank: not chosen). Cells carry their data (`data-layer`, `data-site`,
 * `data-token`, `data-expert`, `data-weight`) so a test reads exactly what is drawn. Redrawn as entries
 * stream in; plain SVG, no canvas.
 */
import type { RoutingTraceEntry } from '../src/browser.js';

const SVG = 'http://www.w3.org/2000/svg';
const CELL = 16;
const LABEL_WIDTH = 96;
const HEADER = 22;

export interface HeatmapInput {
  readonly experts: readonly string[];
  /** Display text of each token position. */
  readonly tokens: readonly string[];
  /** Trace entries of batch row 0. */
  readonly entries: readonly RoutingTraceEntry[];
}

/** Blue of increasing depth for a weight in (0, 1]. */
export function weightColour(weight: number): string {
  const w = Math.max(0, Math.min(1, weight));
  const mix = (from: number, to: number): number => Math.round(from + (to - from) * w);
  return `rgb(${mix(222, 8)}, ${mix(235, 69)}, ${mix(247, 148)})`;
}

function element<K extends keyof SVGElementTagNameMap>(name: K, attributes: Record<string, string | number>): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/** Routed points in the order they appear (layer, then first appearance). */
function bands(entries: readonly RoutingTraceEntry[]): { layer: number; site: string }[] {
  const seen = new Map<string, { layer: number; site: string }>();
  for (const e of entries) {
    const key = `${e.layer}|${e.site}`;
    if (!seen.has(key)) seen.set(key, { layer: e.layer, site: e.site });
  }
  return [...seen.values()].sort((a, b) => a.layer - b.layer);
}

export function renderHeatmap(input: HeatmapInput): SVGSVGElement {
  const points = bands(input.entries);
  const rows = points.length * input.experts.length;
  const width = LABEL_WIDTH + input.tokens.length * CELL + 4;
  const height = HEADER + rows * CELL + points.length * 4 + 4;
  const svg = element('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'routing heat map' });
  input.tokens.forEach((text, t) => {
    const label = element('text', { x: LABEL_WIDTH + t * CELL + CELL / 2, y: HEADER - 7, 'text-anchor': 'middle' });
    label.textContent = text === ' ' ? '␣' : text;
    svg.append(label);
  });
  const byCell = new Map<string, number>();
  for (const e of input.entries) {
    if (e.batch !== 0) continue;
    e.experts.forEach((expert, i) => byCell.set(`${e.layer}|${e.site}|${e.token}|${expert}`, e.weights[i] as number));
  }
  points.forEach((point, p) => {
    const top = HEADER + p * (input.experts.length * CELL + 4);
    input.experts.forEach((expert, x) => {
      const y = top + x * CELL;
      const label = element('text', { x: 4, y: y + CELL - 4 });
      label.textContent = `${point.site === 'layer' ? `layer ${point.layer}` : `L${point.layer} ${point.site}`}  ${expert}`;
      svg.append(label);
      input.tokens.forEach((_, t) => {
        const weight = byCell.get(`${point.layer}|${point.site}|${t}|${expert}`);
        const cell = element('rect', {
          x: LABEL_WIDTH + t * CELL,
          y,
          width: CELL - 1,
          height: CELL - 1,
          fill: weight === undefined ? '#f6f8fa' : weightColour(weight),
          class: weight === undefined ? 'cell' : 'cell chosen',
          'data-layer': point.layer,
          'data-site': point.site,
          'data-token': t,
          'data-expert': expert,
          'data-weight': weight ?? 0,
        });
        const title = element('title', {});
        title.textContent = `layer ${point.layer} ${point.site}, token ${t}, ${expert}: ${weight === undefined ? 'not chosen' : weight.toFixed(3)}`;
        cell.append(title);
        svg.append(cell);
      });
    });
  });
  return svg;
}
