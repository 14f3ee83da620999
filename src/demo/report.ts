/**
 * The demo's text report: one table row per setup (accuracy per task and mean, trainable parameters and
 * their fraction, budget difference, base retention, time), then the margin, routing and retention lines.
 */
import { routerLabel, type DemoSummary } from './run-demo.js';
import { SETUP_NAMES } from './setups.js';

const percent = (value: number, digits = 1): string => `${(value * 100).toFixed(digits)}%`;
const signed = (value: number, digits = 3): string => `${value >= 0 ? '+' : ''}${value.toFixed(digits)}`;
const count = (value: number): string => value.toLocaleString('en-US');

function table(header: readonly string[], rows: readonly (readonly string[])[], alignLeft: ReadonlySet<number>): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, c) => (alignLeft.has(c) ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

export function formatDemoReport(summary: DemoSummary): string {
  const taskNames = summary.tasks.map((t) => t.name);
  const { sizes } = summary;
  const out: string[] = [];
  out.push(
    `routed-peft demo (seed ${summary.seed}${summary.quick ? ', --quick' : ''}): ${summary.model.layers}-layer llama base, ` +
      `${count(summary.model.parameters)} frozen parameters, backend ${summary.backend}`,
  );
  out.push(`tasks (the router never sees which): ${summary.tasks.map((t) => `${t.name} ${JSON.stringify(t.example)}`).join(', ')}`);
  out.push(
    `every setup: the same ${sizes.steps} steps of ${sizes.batchSize} examples (${sizes.trainPerTask} per task), AdamW lr ${sizes.lr}, ` +
      `warmup ${sizes.warmupSteps} + cosine, seed ${summary.seed}; accuracy = exact match of greedy completions on ` +
      `${sizes.evalPerTask} held-out prompts per task, served in mixed left-padded batches of ${sizes.evalBatch}`,
  );
  const lastSeed = summary.seed + summary.runs.length - 1;
  if (summary.runs.length > 1)
    out.push(
      `${summary.runs.length} runs (seeds ${summary.seed}-${lastSeed}, each with its own data, init and batch order); figures are means over the runs, times are totals`,
    );
  out.push('');
  const header = ['setup', ...taskNames, 'mean', 'trainable', 'fraction', 'vs routed', 'retention Δ', 'to null', 'purity', 'train s', 'eval s'];
  const rows = SETUP_NAMES.map((name) => {
    const s = summary.setups[name];
    return [
      name,
      ...taskNames.map((t) => percent(s.accuracy[t] ?? 0)),
      percent(s.accuracy.mean),
      count(s.trainableParams),
      percent(s.trainableFraction, 2),
      `${signed(s.budgetDifference * 100, 2)}%`,
      s.retentionDelta === null ? 'n/a' : signed(s.retentionDelta),
      s.nullShare === null ? 'n/a' : percent(s.nullShare, 0),
      s.purity === null ? 'n/a' : s.purity.toFixed(3),
      s.trainSeconds.toFixed(1),
      s.evalSeconds.toFixed(1),
    ];
  });
  out.push(...table(header, rows, new Set([0])));
  out.push('');
  for (const name of SETUP_NAMES) out.push(`  ${name.padEnd(7)} ${summary.setups[name].description}`);
  out.push('');
  if (summary.runs.length > 1) {
    out.push(
      ...table(
        ['seed', ...SETUP_NAMES.map((n) => `${n} mean`), 'routed - shared', 'purity', 'NMI'],
        summary.runs.map((r) => [
          String(r.seed),
          ...SETUP_NAMES.map((n) => percent(r.accuracy[n])),
          signed(r.margin * 100, 1),
          r.purity.toFixed(3),
          r.mutualInformation.toFixed(3),
        ]),
        new Set<number>(),
      ),
    );
    out.push('');
  }
  const verdict = summary.margin > 0 ? 'routed beats shared' : 'routed does NOT beat shared';
  out.push(
    `${verdict}: ${signed(summary.margin * 100, 1)} points of mean accuracy at equal budget (largest budget difference ${percent(summary.budgetTolerance, 2)})`,
  );
  const { routing } = summary;
  out.push(
    `routing of the served requests: purity ${routing.purity.toFixed(3)}, normalised mutual information task<->expert ` +
      `${routing.mutualInformation.toFixed(3)}, load ${Object.entries(routing.load)
        .map(([e, l]) => `${e} ${percent(l, 0)}`)
        .join(' ')}`,
  );
  if (summary.runs.length > 1) out.push(`  routing by layer, seed ${summary.seed} (each run's experts are its own):`);
  for (const layer of routing.layers) {
    const picks = taskNames.map((t, i) => {
      const shares = layer.shares[i] ?? [];
      const top = shares.indexOf(Math.max(...shares));
      return `${t}->${layer.experts[top] ?? '?'} ${percent(shares[top] ?? 0, 0)}`;
    });
    const reads = layer.router === 'model' ? ` (one router, reading the input of layer ${layer.layer})` : '';
    out.push(`  ${routerLabel(layer)}${reads}: ${picks.join(', ')}  (purity ${layer.purity.toFixed(3)}, NMI ${layer.mutualInformation.toFixed(3)})`);
  }
  const r = summary.retention;
  out.push(
    `base retention on pretraining-style text: routed ${r.routedLoss.toFixed(3)} vs bare base ${r.baseLoss.toFixed(3)} nats/token ` +
      `(delta ${signed(r.delta)}, perplexity x${r.perplexityRatio.toFixed(3)})`,
  );
  const k = summary.retainedRetention;
  const retained = summary.setups.retained;
  out.push(
    `  with retention (retained): ${k.routedLoss.toFixed(3)} vs ${k.baseLoss.toFixed(3)} (delta ${signed(k.delta)}), ` +
      `${percent(retained.nullShare ?? 0, 0)} of the documents routed to the null expert, task purity ${(retained.purity ?? 0).toFixed(3)}`,
  );
  out.push('');
  out.push('examples (expected | shared | routed | oracle | retained):');
  for (const e of summary.examples) {
    out.push(
      `  ${e.prompt.padEnd(12)} ${e.expected.padEnd(8)} | ${e.predicted.shared.padEnd(8)} | ${e.predicted.routed.padEnd(8)} | ${e.predicted.oracle.padEnd(8)} | ${e.predicted.retained}`,
    );
  }
  out.push('');
  out.push(`wrote ${summary.files.heatmap}`);
  out.push(`wrote ${summary.files.summary}`);
  out.push(`total ${summary.seconds.toFixed(1)} s`);
  return `${out.join('\n')}\n`;
}
