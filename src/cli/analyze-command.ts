/**
 * `routed-peft analyze`: the efficiency-vs-expressiveness analysis (src/analysis/). For a routed-model
 * directory: per adapter site and expert, the singular values, effective rank and Frobenius norm of each
 * learned ΔW, and how much each route's experts share (subspace overlap). For a search run: accuracy vs
 * trainable parameters per method. Prints a table (or the report as JSON); with --out, writes analysis.json
 * and the SVG plots there.
 */
import { analyzeRoutedModel } from '../analysis/routed-analysis.js';
import type { AnalysisReport } from '../analysis/report.js';
import { analyzeSearchRun } from '../analysis/search-curves.js';
import { formatAnalysisSummary } from '../analysis/summary-table.js';
import { writeAnalysis } from '../analysis/write-report.js';
import { selectBackend } from '../backend.js';
import { loadBaseModel } from '../base/checkpoints/load-model.js';
import { UsageError } from '../errors.js';
import { loadRoutedModel, readRoutedModelManifest } from '../io/routed-model-dir.js';
import { parseStrict, toChoice } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';

const usage = `Usage: routed-peft analyze [--routed DIR [--model PATH]] [--search DIR] [--out DIR] [--format text|json]

Efficiency vs expressiveness of learned adapters. Give --routed, --search, or both.

Options:
  --routed DIR          A routed-model directory (from train or init): per layer and site, each
                        LoRA/AdaLoRA expert's ΔW singular values, effective rank, numerical rank and
                        Frobenius norm; (IA)³ scale vectors' distance from 1; each route's expert
                        subspace overlap. Bottleneck and prefix modules are listed as not analysed.
  --model PATH          The base the directory was built for (default: the path its manifest records)
  --search DIR          A search run's directory (trials.jsonl): accuracy vs trainable parameters per
                        method, as the best accuracy at ≤ each parameter count
  --out DIR             Write analysis.json, spectra.svg and overlap.svg (--routed) and curves.svg
                        (--search) into DIR (created if needed); without it nothing is written
  --format text|json    What stdout gets: a table (default) or the whole report as JSON
  --allow-non-finite    Load adapter weights holding NaN or ±Infinity (refused by default)
`;

export const analyzeCommand: CliCommand = {
  name: 'analyze',
  summary: 'ΔW spectra, effective ranks and expert overlap of a routed model; accuracy-vs-parameters curves of a search',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      routed: { type: 'string' },
      model: { type: 'string' },
      search: { type: 'string' },
      out: { type: 'string' },
      format: { type: 'string', default: 'text' },
      'allow-non-finite': { type: 'boolean', default: false },
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    if (values.routed === undefined && values.search === undefined) throw new UsageError('give --routed DIR, --search DIR, or both');
    if (values.model !== undefined && values.routed === undefined) throw new UsageError('--model is for --routed: it names the base of the routed directory');
    const report: AnalysisReport = { format: 'routed-peft-analysis', version: 1 };
    if (values.routed !== undefined) {
      const manifest = await readRoutedModelManifest(values.routed);
      const modelPath = values.model ?? manifest.base.path;
      if (modelPath === undefined) throw new UsageError(`${values.routed} does not record the path of its base: pass --model PATH`);
      await selectBackend();
      const allowNonFinite = values['allow-non-finite'];
      const loaded = await loadBaseModel(modelPath, { allowNonFinite });
      try {
        const { model, warnings } = await loadRoutedModel(values.routed, loaded.model, { routers: context.routers, allowNonFinite });
        for (const w of warnings) io.stderr(`warning: ${w}\n`);
        try {
          report.routed = await analyzeRoutedModel(model, values.routed);
        } finally {
          model.dispose();
        }
      } finally {
        loaded.model.dispose();
      }
    }
    if (values.search !== undefined) report.search = await analyzeSearchRun(values.search);
    if (values.out !== undefined) {
      const written = await writeAnalysis(values.out, report);
      io.stderr(`wrote ${written.join(', ')}\n`);
    }
    io.stdout(format === 'json' ? `${JSON.stringify(report)}\n` : formatAnalysisSummary(report));
    return 0;
  },
};
