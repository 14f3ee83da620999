/**
 * `routed-peft eval`: evaluate a routed model on JSONL data (train/evaluate.ts): loss and perplexity,
 * per-task loss and exact-match accuracy of greedy completions, and routing statistics (expert load,
 * dropped rate, task purity and mutual information). When the routed directory was written by `train`,
 * task names map to the ids the routers were trained with.
 */
import { UsageError } from '../errors.js';
import { readMultimodalManifest } from '../io/multimodal-model-dir.js';
import { loadRoutedModel } from '../io/routed-model-dir.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import type { MultimodalModel } from '../model/multimodal-model.js';
import type { VisionEncoder } from '../vision/encoder.js';
import { readTrainingState } from '../train/checkpoint.js';
import { datasetImages } from '../train/dataset.js';
import { readJsonlDataset } from '../train/dataset-file.js';
import { refuseImages } from './image-rows.js';
import { evaluateDataset, type EvaluationResult } from '../train/evaluate.js';
import { optional, parseStrict, toChoice, toInt } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { MODEL_FLAGS, MODEL_USAGE, loadCliModel } from './model-options.js';
import {
  VISION_FLAGS,
  VISION_USAGE,
  loadCliMultimodal,
  loadCliVision,
  refuseMultimodalWithoutVision,
  refuseVisionWithoutMultimodal,
} from './vision-options.js';

const usage = `Usage: routed-peft eval --model PATH [--tokenizer PATH] --routed DIR --data FILE.jsonl
                      [--batch-size N] [--max-new-tokens N] [--max-length N] [--base-text FILE.jsonl]
                      [--format text|json] [--vision DIR]

Evaluate a routed model on language-modelling data (text and/or prompt/completion lines).

Options:
${MODEL_USAGE}
  --routed DIR          The routed-model directory (from init or train), or with --vision the
                        multimodal model directory train --vision wrote
${VISION_USAGE}
                       (the encoder the model was trained with; another one is refused)
  --data FILE           Evaluation data (JSONL), with an optional "task" per line
  --batch-size N        Examples per forward (default 8)
  --max-new-tokens N    Greedy tokens per prompt/completion example for exact match
                        (default: the expected completion's length; 0 skips accuracy)
  --max-length N        Longest scored example in tokens (default: the model's context)
  --base-text FILE      Base-domain text (JSONL "text" lines): adds baseRetention, the loss with the
                        adapters against the bare base, and nullShare, the share of its routed tokens
                        that apply no expert (null expert's gate largest, or a router that abstained)
  --format text|json    json prints one object: {loss, perplexity, tokens, count, tasks: {name: {loss,
                        accuracy, count, tokens}}, routing: {purity, mutualInformation, droppedRate,
                        decisions, load: [...]}, baseRetention?: {routedLoss, baseLoss, delta, ratio,
                        perplexityRatio, nullShare}}
`;

const fmt = (x: number | null, digits = 4): string => (x === null ? 'n/a' : x.toFixed(digits));

function formatText(result: EvaluationResult): string {
  const lines = [`loss ${fmt(result.loss)}  perplexity ${fmt(result.perplexity, 2)}  (${result.tokens} target tokens, ${result.count} examples)`];
  const names = Object.keys(result.tasks);
  const width = Math.max(4, ...names.map((n) => n.length));
  lines.push(`${'task'.padEnd(width)}  ${'loss'.padStart(8)}  ${'accuracy'.padStart(8)}  ${'count'.padStart(6)}`);
  for (const name of names) {
    const t = result.tasks[name];
    if (t === undefined) continue;
    lines.push(`${name.padEnd(width)}  ${fmt(t.loss).padStart(8)}  ${fmt(t.accuracy, 3).padStart(8)}  ${String(t.count).padStart(6)}`);
  }
  const r = result.routing;
  if (r !== null) {
    lines.push(
      `routing: purity ${fmt(r.purity, 3)}  mutual information ${fmt(r.mutualInformation, 3)}  dropped ${(r.droppedRate * 100).toFixed(1)}%  (${r.decisions} decisions)`,
    );
    for (const l of r.load) {
      const shares = l.experts.map((e, i) => `${e} ${((l.fractions[i] ?? 0) * 100).toFixed(0)}%`).join(', ');
      lines.push(`  layer ${l.layer} ${l.site}${l.route > 0 ? ` (route ${l.route})` : ''}: ${shares}`);
    }
  }
  if (result.baseRetention !== undefined) {
    const b = result.baseRetention;
    const share = b.nullShare === null ? '' : `; ${(b.nullShare * 100).toFixed(1)}% of its routed tokens to the null expert (or to nothing)`;
    lines.push(`base retention: loss ${fmt(b.routedLoss)} with adapters vs ${fmt(b.baseLoss)} bare (delta ${fmt(b.delta)})${share}`);
  }
  return `${lines.join('\n')}\n`;
}

export const evalCommand: CliCommand = {
  name: 'eval',
  summary: 'Evaluate a routed model on JSONL data: loss, per-task exact match, routing statistics',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      ...MODEL_FLAGS,
      routed: { type: 'string' },
      data: { type: 'string' },
      'batch-size': { type: 'string', default: '8' },
      'max-new-tokens': { type: 'string' },
      'max-length': { type: 'string' },
      'base-text': { type: 'string' },
      format: { type: 'string', default: 'text' },
      ...VISION_FLAGS,
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    const batchSize = toInt('batch-size', values['batch-size'], { min: 1 });
    const maxNewTokens = optional(values['max-new-tokens'], (raw) => toInt('max-new-tokens', raw, { min: 0 }), undefined);
    const maxLengthFlag = optional(values['max-length'], (raw) => toInt('max-length', raw, { min: 2 }), undefined);
    if (values.model === undefined) throw new UsageError('--model is required');
    if (values.routed === undefined) throw new UsageError('--routed is required');
    if (values.data === undefined) throw new UsageError('--data is required');

    const visionPath = values.vision;
    if (visionPath === undefined) refuseMultimodalWithoutVision(values.routed);
    else refuseVisionWithoutMultimodal(values.routed);
    // Task names keep the ids the routers were trained with.
    const tasks = visionPath === undefined ? (await readTrainingState(values.routed))?.data.tasks : (await readMultimodalManifest(values.routed)).tasks;
    const dataset = await readJsonlDataset(values.data, tasks === undefined ? {} : { tasks });
    if (visionPath === undefined) refuseImages(datasetImages(dataset), values.data);
    for (const problem of dataset.problems) io.stderr(`warning: ${values.data}: line ${problem.line} skipped: ${problem.message}\n`);
    const baseText =
      values['base-text'] === undefined
        ? undefined
        : (await readJsonlDataset(values['base-text'])).examples.map((e) => (e.kind === 'prompt-completion' ? e.prompt + e.completion : e.text));

    const loaded = await loadCliModel(values);
    try {
      const tokenizer = loaded.tokenizer;
      if (tokenizer === undefined) throw new UsageError('eval needs a tokenizer: pass --tokenizer PATH');
      const maxSeqLen = loaded.model.config.maxSeqLen;
      const maxLength = maxLengthFlag ?? maxSeqLen;
      if (maxLength > maxSeqLen) throw new UsageError(`--max-length ${maxLength} exceeds the model's context of ${maxSeqLen} tokens`);
      let model: AdaptedModel | MultimodalModel;
      let encoder: VisionEncoder | undefined;
      if (visionPath === undefined) {
        const routed = await loadRoutedModel(values.routed, loaded.model, { routers: context.routers, allowNonFinite: loaded.allowNonFinite });
        for (const w of routed.warnings) io.stderr(`warning: ${w}\n`);
        model = routed.model;
      } else {
        encoder = await loadCliVision(visionPath);
        try {
          model = (await loadCliMultimodal(loaded, encoder, values.routed, context, io)).model;
        } catch (error) {
          encoder.dispose();
          throw error;
        }
      }
      try {
        const result = await evaluateDataset({
          model,
          tokenizer,
          dataset,
          batchSize,
          maxLength,
          ...(maxNewTokens === undefined ? {} : { maxNewTokens }),
          ...(baseText === undefined ? {} : { baseText }),
        });
        io.stdout(format === 'json' ? `${JSON.stringify(result)}\n` : formatText(result));
      } finally {
        model.dispose();
        encoder?.dispose();
      }
      return 0;
    } finally {
      loaded.model.dispose();
    }
  },
};
