/** The human-readable summary of an analysis report: the table `routed-peft analyze` prints. */
import type { AnalysisReport, ModuleMeasure } from './report.js';

const num = (x: number, digits = 3): string => (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toFixed(digits));

function describe(m: ModuleMeasure): string {
  switch (m.measure) {
    case 'delta-w':
      return `${m.kind} r=${m.rank}  σ₁ ${num(m.singularValues[0] ?? 0, 4)}  effective rank ${num(m.effectiveRank, 2)}  numerical rank ${m.numericalRank}  ‖ΔW‖F ${num(m.frobenius, 4)}`;
    case 'scale-vector':
      return `ia3 width ${m.width}  ‖l−1‖ ${num(m.deviationNorm, 4)}  max |l−1| ${num(m.maxDeviation, 4)}`;
    case 'none':
      return `${m.kind}: not analysed (${m.reason})`;
  }
}

export function formatAnalysisSummary(report: AnalysisReport): string {
  const lines: string[] = [];
  const routed = report.routed;
  if (routed !== undefined) {
    lines.push(`routed model ${routed.directory}: ${routed.adapters.length} adapters, ${routed.routes.length} routes, ${routed.sites.length} sites`);
    const width = Math.max(...routed.adapters.map((a) => a.name.length), 7);
    for (const site of routed.sites) {
      lines.push(`layer ${site.layer} ${site.site}`);
      for (const m of site.modules) lines.push(`  ${m.adapter.padEnd(width)}  ${describe(m)}`);
      for (const route of site.overlap) {
        if (route.pairs.length === 0) continue;
        const pairs = route.pairs.map((p) => `${p.first}·${p.second} ${p.overlap === null ? 'n/a' : p.overlap.toFixed(3)}`).join(', ');
        lines.push(`  route ${route.route} overlap: mean ${route.mean === null ? 'n/a' : route.mean.toFixed(3)} (${pairs})`);
      }
    }
    if (routed.notAnalysed.length > 0) {
      const names = [...new Set(routed.notAnalysed.map((n) => `${n.adapter} (${n.kind})`))];
      lines.push(`not analysed: ${names.join(', ')}`);
    }
  }
  const search = report.search;
  if (search !== undefined) {
    lines.push(`search run ${search.directory}: ${search.trials} trial lines`);
    for (const method of search.methods) {
      const steps = method.frontier.map((p) => `${p.trainableParams} → ${p.accuracy.toFixed(3)}`).join(', ');
      lines.push(`  ${method.method} (${method.candidates} candidates): frontier ${steps}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
