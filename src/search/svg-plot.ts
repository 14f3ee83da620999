/**
 * A scatter plot with optional staircase lines as a standalone SVG, written by hand like the demo's heat
 * map: x and y axes with ticks, one colour per series, a legend. Used for the Pareto front (accuracy against
 * trainable parameters) and the analysis curves.
 */

/** Text safe inside SVG elements and attributes. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export interface PlotPoint {
  readonly x: number;
  readonly y: number;
}

export interface PlotSeries {
  readonly name: string;
  readonly points: readonly PlotPoint[];
  /** Join the points (sorted by x) with a staircase: the best y so far, as a Pareto front reads. */
  readonly staircase?: boolean;
  /** Draw the points hollow (e.g. trials below the front). */
  readonly hollow?: boolean;
}

export interface PlotInput {
  readonly title: string;
  /** A smaller line under the title. */
  readonly subtitle?: string;
  /** A dashed vertical line at x (e.g. the budget), labelled. */
  readonly xMarker?: { readonly x: number; readonly label: string };
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly PlotSeries[];
  /** y range (default: 0 to 1, for accuracies). */
  readonly yRange?: readonly [number, number];
}

const WIDTH = 720;
const HEIGHT = 440;
const LEFT = 64;
const RIGHT = 200;
const TOP = 52;
const BOTTOM = 52;
export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

/** Round tick values covering [lo, hi]: 1, 2 or 5 times a power of ten apart, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * power >= raw) ?? 10) * power;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** `59,392` → `59.4k`; small numbers as they are. */
export function shortNumber(value: number): string {
  if (Math.abs(value) >= 1e6) return `${Number((value / 1e6).toPrecision(3))}M`;
  if (Math.abs(value) >= 1e3) return `${Number((value / 1e3).toPrecision(3))}k`;
  return String(Number(value.toPrecision(3)));
}

export function renderPlot(input: PlotInput): string {
  const all = input.series.flatMap((s) => s.points);
  const xs = all.map((p) => p.x);
  const xMax = Math.max(1, ...xs, input.xMarker?.x ?? 0) * 1.05;
  const [yLo, yHi] = input.yRange ?? [0, 1];
  const plotW = WIDTH - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const px = (x: number): number => LEFT + (x / xMax) * plotW;
  const py = (y: number): number => TOP + plotH - ((Math.min(yHi, Math.max(yLo, y)) - yLo) / (yHi - yLo)) * plotH;
  const f = (n: number): string => n.toFixed(1);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    `<text x="${LEFT}" y="22" font-size="13" font-weight="bold">${escapeXml(input.title)}</text>`,
  ];
  if (input.subtitle !== undefined) parts.push(`<text x="${LEFT}" y="40" font-size="11" fill="#555555">${escapeXml(input.subtitle)}</text>`);
  for (const t of niceTicks(0, xMax)) {
    parts.push(`<line x1="${f(px(t))}" y1="${TOP}" x2="${f(px(t))}" y2="${TOP + plotH}" stroke="#eeeeee"/>`);
    parts.push(`<text x="${f(px(t))}" y="${TOP + plotH + 16}" text-anchor="middle">${shortNumber(t)}</text>`);
  }
  for (const t of niceTicks(yLo, yHi)) {
    parts.push(`<line x1="${LEFT}" y1="${f(py(t))}" x2="${LEFT + plotW}" y2="${f(py(t))}" stroke="#eeeeee"/>`);
    parts.push(`<text x="${LEFT - 6}" y="${f(py(t) + 4)}" text-anchor="end">${shortNumber(t)}</text>`);
  }
  parts.push(`<rect x="${LEFT}" y="${TOP}" width="${plotW}" height="${plotH}" fill="none" stroke="#444444"/>`);
  if (input.xMarker !== undefined) {
    const x = f(px(input.xMarker.x));
    parts.push(`<line x1="${x}" y1="${TOP}" x2="${x}" y2="${TOP + plotH}" stroke="#888888" stroke-dasharray="4 3"/>`);
    parts.push(
      `<text x="${f(px(input.xMarker.x) - 4)}" y="${TOP + 14}" text-anchor="end" font-size="11" fill="#555555">${escapeXml(input.xMarker.label)}</text>`,
    );
  }
  parts.push(`<text x="${LEFT + plotW / 2}" y="${HEIGHT - 14}" text-anchor="middle">${escapeXml(input.xLabel)}</text>`);
  parts.push(`<text x="16" y="${TOP + plotH / 2}" text-anchor="middle" transform="rotate(-90 16 ${TOP + plotH / 2})">${escapeXml(input.yLabel)}</text>`);
  input.series.forEach((series, i) => {
    const colour = PALETTE[i % PALETTE.length] as string;
    const sorted = [...series.points].sort((a, b) => a.x - b.x);
    if (series.staircase === true && sorted.length > 0) {
      const first = sorted[0] as PlotPoint;
      let d = `M${f(px(first.x))},${f(py(first.y))}`;
      let best = first.y;
      for (const p of sorted.slice(1)) {
        d += ` H${f(px(p.x))}`;
        if (p.y > best) {
          best = p.y;
          d += ` V${f(py(best))}`;
        }
      }
      parts.push(`<path d="${d}" fill="none" stroke="${colour}" stroke-width="1.5"/>`);
    }
    for (const p of sorted) {
      parts.push(
        `<circle cx="${f(px(p.x))}" cy="${f(py(p.y))}" r="4" fill="${series.hollow === true ? '#ffffff' : colour}" stroke="${colour}" stroke-width="1.5"/>`,
      );
    }
    const ly = TOP + 8 + i * 20;
    parts.push(
      `<circle cx="${LEFT + plotW + 18}" cy="${ly}" r="4" fill="${series.hollow === true ? '#ffffff' : colour}" stroke="${colour}" stroke-width="1.5"/>`,
    );
    parts.push(`<text x="${LEFT + plotW + 28}" y="${ly + 4}">${escapeXml(series.name)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
