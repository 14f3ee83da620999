/**
 * curves.svg: validation accuracy against trainable parameters, one colour per method: every candidate (at
 * its highest rung) as a dot, the method's monotone frontier as a step line. The parameter axis is
 * logarithmic when the counts span a factor of 10 or more, linear otherwise.
 */
import type { SearchAnalysis } from './report.js';
import { CHAR_W, TITLE_CHAR_W, escapeXml, seriesColour, shortNumber, svgOpen } from './svg.js';

const PLOT_W = 520;
const PLOT_H = 300;
const LEFT = 60;
const TOP = 40;
const BOTTOM = 44;

export function renderCurves(search: SearchAnalysis): string {
  const all = search.methods.flatMap((m) => m.points);
  const minP = Math.min(...all.map((p) => p.trainableParams));
  const maxP = Math.max(...all.map((p) => p.trainableParams));
  const logScale = minP > 0 && maxP / minP >= 10;
  const lo = logScale ? Math.log10(minP) : minP;
  const hi = logScale ? Math.log10(maxP) : maxP;
  const span = hi - lo === 0 ? 1 : hi - lo;
  const minA = Math.min(...all.map((p) => p.accuracy));
  const maxA = Math.max(...all.map((p) => p.accuracy));
  const aLo = Math.max(0, Math.floor((minA - 0.05) * 10) / 10);
  const aHi = Math.min(1, Math.ceil((maxA + 0.05) * 10) / 10);
  const aSpan = aHi - aLo === 0 ? 1 : aHi - aLo;
  const px = (n: number): number => LEFT + 10 + (((logScale ? Math.log10(n) : n) - lo) / span) * (PLOT_W - 20);
  const py = (a: number): number => TOP + PLOT_H - ((a - aLo) / aSpan) * PLOT_H;
  const legendW = Math.max(120, ...search.methods.map((m) => m.method.length * CHAR_W + 30));
  const title = `Validation accuracy vs trainable parameters (${search.trials} trials; frontier per method)`;
  const width = Math.max(LEFT + PLOT_W + 20 + legendW, Math.ceil(24 + title.length * TITLE_CHAR_W));
  const height = TOP + PLOT_H + BOTTOM;
  const parts = svgOpen(width, height, title);
  parts.push(`<rect x="${LEFT}" y="${TOP}" width="${PLOT_W}" height="${PLOT_H}" fill="#fafafa" stroke="#999999"/>`);
  for (let i = 0; i <= 4; i++) {
    const a = aLo + (aSpan * i) / 4;
    const y = py(a);
    parts.push(`<line x1="${LEFT}" y1="${y}" x2="${LEFT + PLOT_W}" y2="${y}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${LEFT - 6}" y="${y + 4}" text-anchor="end">${a.toFixed(2)}</text>`);
  }
  const ticks = logScale
    ? Array.from({ length: Math.floor(hi) - Math.floor(lo) + 1 }, (_, i) => [1, 2, 5].map((m) => m * 10 ** (Math.floor(lo) + i)))
        .flat()
        .filter((t) => t >= minP && t <= maxP)
    : Array.from({ length: 5 }, (_, i) => minP + ((maxP - minP) * i) / 4);
  for (const t of [...new Set(ticks)]) {
    const x = px(t);
    parts.push(`<line x1="${x}" y1="${TOP + PLOT_H}" x2="${x}" y2="${TOP + PLOT_H + 4}" stroke="#666666"/>`);
    parts.push(`<text x="${x}" y="${TOP + PLOT_H + 16}" text-anchor="middle">${escapeXml(shortNumber(Math.round(t)))}</text>`);
  }
  parts.push(`<text x="${LEFT + PLOT_W / 2}" y="${height - 8}" text-anchor="middle">trainable parameters${logScale ? ' (log scale)' : ''}</text>`);
  parts.push(`<text x="14" y="${TOP + PLOT_H / 2}" transform="rotate(-90 14 ${TOP + PLOT_H / 2})" text-anchor="middle">validation accuracy</text>`);
  search.methods.forEach((method, i) => {
    const colour = seriesColour(i);
    for (const p of method.points) {
      parts.push(`<circle cx="${px(p.trainableParams).toFixed(1)}" cy="${py(p.accuracy).toFixed(1)}" r="3" fill="${colour}" fill-opacity="0.35"/>`);
    }
    // Steps: flat from each frontier point to the next parameter count, then up; flat to the right edge at the end.
    const steps: string[] = [];
    method.frontier.forEach((p, k) => {
      const x = px(p.trainableParams);
      const y = py(p.accuracy);
      if (k > 0) steps.push(`${x.toFixed(1)},${py((method.frontier[k - 1] as typeof p).accuracy).toFixed(1)}`);
      steps.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    const last = method.frontier[method.frontier.length - 1];
    if (last !== undefined) steps.push(`${(LEFT + PLOT_W).toFixed(1)},${py(last.accuracy).toFixed(1)}`);
    parts.push(`<polyline points="${steps.join(' ')}" fill="none" stroke="${colour}" stroke-width="2"/>`);
    const ly = TOP + 10 + i * 16;
    parts.push(`<rect x="${LEFT + PLOT_W + 20}" y="${ly - 8}" width="12" height="8" fill="${colour}"/>`);
    parts.push(`<text x="${LEFT + PLOT_W + 38}" y="${ly}">${escapeXml(method.method)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
