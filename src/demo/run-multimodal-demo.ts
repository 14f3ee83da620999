/**
 * `routed-peft demo --multimodal`, as a library function: joins the shipped language model (demo-model/) and
 * vision encoder (demo-vision/) LLaVA-style and fine-tunes a projector plus LoRA adapters on a mix of image
 * question-answer tasks (image-tasks.ts: count, colour, digit) and the four text tasks of the text demo, with
 * two setups of equal trainable budget — one shared LoRA, and routed LoRA experts whose per-token routers
 * also read each token's modality — on the same batches, steps, schedule and seed, each with its own
 * projector of the same size. Then it serves mixed batches (image and text rows interleaved) and measures
 * exact-match accuracy per task, how the routed model's tokens split over experts by modality (image tokens
 * vs text tokens), and checks that both frozen models are byte-identical after training.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { getBackendReport, selectBackend } from '../backend.js';
import { loadBaseModel } from '../base/checkpoints/load-model.js';
import type { Transformer } from '../base/transformer.js';
import { listWeightTensors } from '../base/weights.js';
import { RoutedPeftError } from '../errors.js';
import { MultimodalModel } from '../model/multimodal-model.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import type { RoutingTraceEntry } from '../routing/trace.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { seededShuffle } from '../train/batches.js';
import { exactMatch } from '../train/metrics.js';
import { Trainer } from '../train/trainer.js';
import { type VisionEncoder, listVisionTensors } from '../vision/encoder.js';
import type { PixelImage } from '../vision/pixel-image.js';
import { renderImageSpec } from '../vision/image-spec.js';
import { loadVisionEncoder } from '../vision/load-encoder.js';
import { renderHeatmap } from './heatmap.js';
import { IMAGE_TASKS, imageExamples } from './image-tasks.js';
import { DEMO_ADAPTERS, decodeCompletion, demoBatch, demoModelDir, packageModelDir } from './run-demo.js';
import { buildSetups, expertNames } from './setups.js';
import { DEMO_TASKS, heldOutExamples, taskExamples } from './tasks.js';

export interface MultimodalSizes {
  readonly runs: number;
  readonly trainPerTask: number;
  readonly steps: number;
  readonly batchSize: number;
  readonly lr: number;
  readonly routerLr: number;
  readonly warmupSteps: number;
  readonly minLrRatio: number;
  readonly evalPerTask: number;
  readonly evalBatch: number;
  /** E: routed experts (the shared LoRA has rank E·r). */
  readonly experts: number;
}

export const MULTIMODAL_FULL_SIZES: MultimodalSizes = {
  runs: 3,
  trainPerTask: 300,
  steps: 120,
  batchSize: 56,
  lr: 1e-2,
  routerLr: 1e-2,
  warmupSteps: 5,
  minLrRatio: 0.1,
  evalPerTask: 60,
  evalBatch: 105,
  experts: 4,
};

export const MULTIMODAL_QUICK_SIZES: MultimodalSizes = { ...MULTIMODAL_FULL_SIZES, runs: 1, evalPerTask: 20, evalBatch: 70 };

export type MultimodalSetupName = 'shared' | 'routed';
const SETUPS: readonly MultimodalSetupName[] = ['shared', 'routed'];

/** One training or evaluation row: a text task, or an image and a question. */
interface MixedExample {
  /** Index in taskNames(): the text tasks, then the image tasks. */
  readonly task: number;
  readonly prompt: string;
  readonly completion: string;
  readonly image?: PixelImage;
}

export interface ModalityShares {
  /** Mean gate weight per expert over image tokens and over text tokens (each sums to 1 over the experts). */
  readonly image: readonly number[];
  readonly text: readonly number[];
  /** ½ Σ |image − text|: 0 when both modalities use the experts alike, 1 when they use disjoint experts. */
  readonly separation: number;
  readonly imageTokens: number;
  readonly textTokens: number;
}

export interface MultimodalRun {
  readonly seed: number;
  readonly accuracy: Readonly<Record<MultimodalSetupName, Readonly<Record<string, number>>>>;
  readonly margin: number;
  readonly routing: ModalityShares;
  readonly trainSeconds: Readonly<Record<MultimodalSetupName, number>>;
}

export interface MultimodalSummary {
  readonly seed: number;
  readonly quick: boolean;
  readonly backend: string;
  readonly tasks: readonly { readonly name: string; readonly modality: 'text' | 'image'; readonly description: string }[];
  readonly sizes: MultimodalSizes;
  readonly budgets: Readonly<Record<MultimodalSetupName, number>>;
  readonly frozen: { readonly language: number; readonly encoder: number; readonly unchanged: boolean };
  readonly experts: readonly string[];
  /** Mean over runs of each task's accuracy, per setup (and 'mean', 'image', 'text'). */
  readonly accuracy: Readonly<Record<MultimodalSetupName, Readonly<Record<string, number>>>>;
  readonly margin: number;
  readonly runs: readonly MultimodalRun[];
  readonly files: { readonly heatmap: string; readonly summary: string };
  readonly seconds: number;
}

export interface MultimodalDemoOptions {
  readonly routers: RouterRegistry;
  readonly seed?: number;
  readonly quick?: boolean;
  readonly outDir: string;
  readonly modelDir?: string;
  readonly visionDir?: string;
  readonly sizes?: Partial<MultimodalSizes>;
  readonly log?: (line: string) => void;
}

/** The demo-vision/ directory of this package (from src/demo/ or dist/src/demo/). */
export function demoVisionDir(): string {
  return packageModelDir('demo-vision', 'the demo vision encoder', 'scripts/pretrain-demo-vision.ts');
}

export function taskNames(): string[] {
  return [...DEMO_TASKS.map((t) => t.name), ...IMAGE_TASKS.map((t) => t.name)];
}

function mixedExamples(perTask: number, seed: number, held: boolean, exclude: ReadonlySet<string>): MixedExample[] {
  const text = held ? heldOutExamples(perTask, seed, exclude) : taskExamples(perTask, seed);
  const images = imageExamples(perTask, seed + 1);
  const out: MixedExample[] = [];
  for (let i = 0; i < Math.max(text.length, images.length); i++) {
    const t = text[i];
    if (t !== undefined) out.push({ task: t.task, prompt: t.prompt, completion: t.completion });
    const m = images[i];
    if (m !== undefined) out.push({ task: DEMO_TASKS.length + m.task, prompt: m.prompt, completion: m.completion, image: renderImageSpec(m.spec) });
  }
  return out;
}

/** Bytes of every frozen tensor, for the before/after comparison. */
function frozenBytes(base: Transformer, encoder: VisionEncoder): Uint8Array[] {
  return [...listWeightTensors(base.weights), ...listVisionTensors(encoder.weights)].map((t) => new Uint8Array((t.dataSync() as Float32Array).slice().buffer));
}

function sameBytes(a: readonly Uint8Array[], b: readonly Uint8Array[]): boolean {
  return a.length === b.length && a.every((x, i) => Buffer.from(x).equals(Buffer.from(b[i] as Uint8Array)));
}

function modalityShares(trace: readonly RoutingTraceEntry[], experts: readonly string[]): ModalityShares {
  const sums = { image: experts.map(() => 0), text: experts.map(() => 0) };
  const counts = { image: 0, text: 0 };
  for (const entry of trace) {
    counts[entry.modality] += 1;
    entry.experts.forEach((name, k) => {
      const e = experts.indexOf(name);
      if (e >= 0) (sums[entry.modality] as number[])[e] = ((sums[entry.modality] as number[])[e] as number) + (entry.weights[k] ?? 0);
    });
  }
  const image = sums.image.map((s) => s / Math.max(1, counts.image));
  const text = sums.text.map((s) => s / Math.max(1, counts.text));
  const separation = image.reduce((s, v, e) => s + Math.abs(v - (text[e] as number)), 0) / 2;
  return { image, text, separation, imageTokens: counts.image, textTokens: counts.text };
}

const mean = (values: readonly number[]): number => (values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length);

interface RunContext {
  readonly base: Transformer;
  readonly encoder: VisionEncoder;
  readonly tokenizer: Tokenizer;
  readonly routers: RouterRegistry;
  readonly sizes: MultimodalSizes;
  readonly log: (line: string) => void;
}

function runOnce(
  context: RunContext,
  seed: number,
): { run: MultimodalRun; budgets: Record<MultimodalSetupName, number>; heat: number[][]; heatRows: string[] } {
  const { base, encoder, tokenizer, routers, sizes, log } = context;
  const names = taskNames();
  const train = mixedExamples(sizes.trainPerTask, seed, false, new Set());
  const evalSet = mixedExamples(sizes.evalPerTask, seed + 7919, true, new Set(train.map((e) => e.prompt)));
  const order: number[] = [];
  for (let epoch = 0; order.length < sizes.steps * sizes.batchSize; epoch++)
    order.push(
      ...seededShuffle(
        train.map((_, i) => i),
        seed * 1009 + epoch,
      ),
    );
  const experts = expertNames(sizes.experts);
  const setups = buildSetups(base, routers, {
    ...DEMO_ADAPTERS,
    tasks: experts,
    granularity: 'token',
    placement: 'layer',
    modalityFeature: true,
    seed,
  }).filter((s) => s.name !== 'oracle');
  const accuracy = {} as Record<MultimodalSetupName, Record<string, number>>;
  const budgets = {} as Record<MultimodalSetupName, number>;
  const trainSeconds = {} as Record<MultimodalSetupName, number>;
  let routing: ModalityShares | undefined;
  let heat: number[][] = [];
  const heatRows: string[] = [];
  for (const setup of setups) {
    const name = setup.name as MultimodalSetupName;
    const model = MultimodalModel.create(base, encoder, { ...setup.spec, projector: {} }, { routers });
    try {
      budgets[name] = model.parameterReport().trainable;
      const trainer = new Trainer(model, {
        optimizer: { lr: sizes.lr, routerLr: sizes.routerLr },
        schedule: { warmupSteps: sizes.warmupSteps, totalSteps: sizes.steps, minLrRatio: sizes.minLrRatio },
        maxGradNorm: 1,
      });
      const started = performance.now();
      try {
        for (let step = 0; step < sizes.steps; step++) {
          const rows = order.slice(step * sizes.batchSize, (step + 1) * sizes.batchSize).map((i) => train[i] as MixedExample);
          const batch = demoBatch(rows, tokenizer);
          const report = trainer.step({ ids: batch.ids, mask: batch.mask, lossMask: batch.lossMask, images: rows.map((r) => r.image) });
          if ((step + 1) % Math.max(1, Math.round(sizes.steps / 4)) === 0)
            log(`  ${name.padEnd(6)} step ${step + 1}/${sizes.steps}  loss ${report.taskLoss.toFixed(3)}`);
        }
      } finally {
        trainer.dispose();
      }
      trainSeconds[name] = (performance.now() - started) / 1000;
      const trace: RoutingTraceEntry[] | undefined = name === 'routed' ? [] : undefined;
      const taskOfTrace: number[] = [];
      const predicted: string[] = [];
      for (let start = 0; start < evalSet.length; start += sizes.evalBatch) {
        const chunk = evalSet.slice(start, start + sizes.evalBatch);
        const prompts = chunk.map((e) => tokenizer.encode(e.prompt, { addBos: true }));
        const entries: RoutingTraceEntry[] | undefined = trace === undefined ? undefined : [];
        const generated = model.generate(prompts, {
          maxNewTokens: 9,
          temperature: 0,
          images: chunk.map((e) => e.image),
          ...(entries === undefined ? {} : { routing: { trace: entries } }),
        });
        for (const entry of entries ?? []) {
          trace?.push(entry);
          taskOfTrace.push((chunk[entry.batch] as MixedExample).task);
        }
        generated.forEach((ids, b) => predicted.push(decodeCompletion(tokenizer, ids, prompts[b]?.length ?? 0)));
      }
      const perTask: Record<string, number> = {};
      names.forEach((task, t) => {
        const indices = evalSet.map((e, i) => (e.task === t ? i : -1)).filter((i) => i >= 0);
        perTask[task] = indices.filter((i) => exactMatch(predicted[i] ?? '', evalSet[i]?.completion ?? '')).length / Math.max(1, indices.length);
      });
      const values = names.map((t) => perTask[t] as number);
      accuracy[name] = {
        ...perTask,
        mean: mean(values),
        text: mean(values.slice(0, DEMO_TASKS.length)),
        image: mean(values.slice(DEMO_TASKS.length)),
      };
      if (trace !== undefined) {
        routing = modalityShares(trace, experts);
        // Heat map rows: each task's image tokens (image tasks) and text tokens.
        names.forEach((task, t) => {
          for (const modality of t >= DEMO_TASKS.length ? (['image', 'text'] as const) : (['text'] as const)) {
            const rows = trace.filter((entry, i) => taskOfTrace[i] === t && entry.modality === modality);
            heatRows.push(`${task} · ${modality}`);
            heat.push(modalityShares(rows, experts)[modality].slice());
          }
        });
      }
      log(
        `${name}: mean ${((accuracy[name]?.['mean'] ?? 0) * 100).toFixed(1)}% (${names.map((t) => `${t} ${((perTask[t] ?? 0) * 100).toFixed(0)}%`).join(', ')}), train ${(trainSeconds[name] ?? 0).toFixed(1)} s`,
      );
    } finally {
      model.dispose();
    }
  }
  if (routing === undefined) throw new Error('the routed setup did not run');
  heat = heat.length === 0 ? [] : heat;
  return {
    run: { seed, accuracy, margin: (accuracy.routed?.['mean'] ?? 0) - (accuracy.shared?.['mean'] ?? 0), routing, trainSeconds },
    budgets,
    heat,
    heatRows,
  };
}

export async function runMultimodalDemo(options: MultimodalDemoOptions): Promise<MultimodalSummary> {
  const started = performance.now();
  const seed = options.seed ?? 0;
  const quick = options.quick ?? false;
  const sizes: MultimodalSizes = { ...(quick ? MULTIMODAL_QUICK_SIZES : MULTIMODAL_FULL_SIZES), ...options.sizes };
  if (!Number.isInteger(sizes.runs) || sizes.runs < 1) throw new RoutedPeftError(`demo: runs must be a whole number >= 1, got ${sizes.runs}`);
  const log = options.log ?? ((): void => {});
  await selectBackend();
  const modelDir = resolve(options.modelDir ?? demoModelDir());
  const visionDir = resolve(options.visionDir ?? demoVisionDir());
  const { model: base } = await loadBaseModel(modelDir);
  let encoder: VisionEncoder | undefined;
  try {
    encoder = await loadVisionEncoder(visionDir);
    const tokenizer = await loadTokenizer(modelDir);
    const before = frozenBytes(base, encoder);
    log(
      `language model ${modelDir} (${base.parameterCount} parameters), vision encoder ${visionDir} (${encoder.parameterCount} parameters, ${encoder.tokensPerImage} tokens per image)`,
    );
    const context: RunContext = { base, encoder, tokenizer, routers: options.routers, sizes, log };
    const results = Array.from({ length: sizes.runs }, (_, i) => runOnce(context, seed + i));
    const unchanged = sameBytes(before, frozenBytes(base, encoder));
    const first = results[0] as (typeof results)[number];
    const runs = results.map((r) => r.run);
    const keys = [...taskNames(), 'mean', 'text', 'image'];
    const accuracy = Object.fromEntries(
      SETUPS.map((s) => [s, Object.fromEntries(keys.map((k) => [k, mean(runs.map((r) => r.accuracy[s]?.[k] ?? 0))]))]),
    ) as Record<MultimodalSetupName, Record<string, number>>;
    const outDir = resolve(options.outDir);
    await mkdir(outDir, { recursive: true });
    const heatmapPath = join(outDir, 'multimodal-routing-heatmap.svg');
    const summaryPath = join(outDir, 'multimodal-summary.json');
    const experts = expertNames(sizes.experts);
    const summary: MultimodalSummary = {
      seed,
      quick,
      backend: getBackendReport()?.chosen ?? tf.getBackend(),
      tasks: [
        ...DEMO_TASKS.map((t) => ({ name: t.name, modality: 'text' as const, description: t.description })),
        ...IMAGE_TASKS.map((t) => ({ name: t.name, modality: 'image' as const, description: `${t.description} (${JSON.stringify(t.question)})` })),
      ],
      sizes,
      budgets: first.budgets,
      frozen: { language: base.parameterCount, encoder: encoder.parameterCount, unchanged },
      experts,
      accuracy,
      margin: mean(runs.map((r) => r.margin)),
      runs,
      files: { heatmap: heatmapPath, summary: summaryPath },
      seconds: (performance.now() - started) / 1000,
    };
    await writeFile(
      heatmapPath,
      renderHeatmap({
        title: `Multimodal routing: mean gate weight per expert, image vs text tokens (seed ${seed}${quick ? ', quick' : ''})`,
        columns: experts,
        groups: [{ label: 'all layers', rows: first.heatRows.map((label, i) => ({ label, values: first.heat[i] ?? [] })) }],
      }),
    );
    await writeFile(summaryPath, `${JSON.stringify(summary, null, 2)}\n`);
    return summary;
  } finally {
    encoder?.dispose();
    base.dispose();
  }
}

const percent = (value: number): string => `${(value * 100).toFixed(1)}%`;

export function formatMultimodalReport(summary: MultimodalSummary): string {
  const names = summary.tasks.map((t) => t.name);
  const out: string[] = [];
  out.push(`routed-peft demo --multimodal (seed ${summary.seed}${summary.quick ? ', --quick' : ''}), backend ${summary.backend}`);
  out.push(`tasks: ${summary.tasks.map((t) => `${t.name} [${t.modality}]`).join(', ')}`);
  out.push(
    `every setup: the same ${summary.sizes.steps} steps of ${summary.sizes.batchSize} mixed rows, AdamW lr ${summary.sizes.lr}; ${summary.sizes.evalPerTask} held-out prompts per task, mixed batches; ${summary.runs.length} run(s)`,
  );
  out.push('');
  const header = ['setup', ...names, 'text', 'image', 'mean', 'trainable'];
  const rows = SETUPS.map((s) => [
    s,
    ...names.map((t) => percent(summary.accuracy[s]?.[t] ?? 0)),
    ...['text', 'image', 'mean'].map((k) => percent(summary.accuracy[s]?.[k] ?? 0)),
    String(summary.budgets[s]),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  for (const line of [header, ...rows]) out.push(line.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  '));
  out.push('');
  for (const run of summary.runs) {
    out.push(
      `seed ${run.seed}: shared ${percent(run.accuracy.shared?.['mean'] ?? 0)}, routed ${percent(run.accuracy.routed?.['mean'] ?? 0)} (${run.margin >= 0 ? '+' : ''}${(run.margin * 100).toFixed(1)} points); ` +
        `routing image tokens ${run.routing.image.map((v, e) => `${summary.experts[e]} ${percent(v)}`).join(' ')} | text tokens ${run.routing.text.map((v, e) => `${summary.experts[e]} ${percent(v)}`).join(' ')} | separation ${run.routing.separation.toFixed(3)}`,
    );
  }
  out.push(
    `${summary.margin > 0 ? 'routed beats shared' : 'routed does NOT beat shared'}: ${(summary.margin * 100).toFixed(1)} points of mean accuracy at equal budget`,
  );
  out.push(
    `frozen language model (${summary.frozen.language} parameters) and vision encoder (${summary.frozen.encoder}) byte-identical after training: ${summary.frozen.unchanged ? 'yes' : 'NO'}`,
  );
  out.push(`wrote ${summary.files.heatmap}`);
  out.push(`wrote ${summary.files.summary}`);
  out.push(`total ${summary.seconds.toFixed(1)} s`);
  return `${out.join('\n')}\n`;
}
