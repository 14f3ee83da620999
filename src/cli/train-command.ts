/**
 * `routed-peft train`: train a routed model's experts and routers on a JSONL dataset (train/dataset.ts)
 * with the base frozen. --out is the checkpoint directory: a routed-model directory (usable with
 * `--routed`) plus the training state, saved every --checkpoint-every steps and at the end; `--resume`
 * continues it exactly (train/train-loop.ts). --steps is the TOTAL: resumed at 8 with --steps 16, it stops
 * at 16.
 *
 * Output: a progress bar on stderr when stdout is a terminal (and --format text); otherwise one JSON line
 * per optimizer step on stdout, then a summary line. Lines carry `type`: "step", "checkpoint", "summary".
 * An AdaLoRA adapter's final ranks per layer and site are in the summary (`adalora`) and printed on a
 * terminal; the checkpoint holds them as adapters/<name>/adalora-ranks.json beside its PEFT LoRA export.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { SingleBar } from 'cli-progress';
import { adaloraRanks, type AdaloraRankReport } from '../adapters/adalora/export.js';
import { CheckpointError, UsageError } from '../errors.js';
import { readJsonFile } from '../base/checkpoints/hf-model-dir.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../compose/model-spec.js';
import { checkOutputDirectory } from '../formats/output.js';
import { isMultimodalModelDir, readMultimodalManifest, saveMultimodalModel } from '../io/multimodal-model-dir.js';
import { loadRoutedModel } from '../io/routed-model-dir.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { MultimodalModel } from '../model/multimodal-model.js';
import type { VisionEncoder } from '../vision/encoder.js';
import { hasCheckpoint, loadCheckpoint, readTrainingState, type LoadedCheckpoint } from '../train/checkpoint.js';
import { datasetImages } from '../train/dataset.js';
import { readJsonlDataset } from '../train/dataset-file.js';
import { refuseImages } from './image-rows.js';
import { trainFromDataset, type LoopStepReport } from '../train/train-loop.js';
import { MAX_LEARNING_RATE } from '../train/param-groups.js';
import { DataParallelGroup, MAX_REPLICAS } from '../train/data-parallel.js';
import { getDefaultThreads, setDefaultThreads, THREADS_ENV_VAR } from '../backend.js';
import { loadedWasmThreads } from '../wasm-threads.js';
import type { TrainerConfigInput } from '../train/trainer.js';
import { optional, parseStrict, toChoice, toInt, toNumber } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { MODEL_FLAGS, MODEL_USAGE, loadCliModel } from './model-options.js';
import {
  VISION_FLAGS,
  VISION_USAGE,
  loadCliMultimodal,
  loadCliVision,
  refuseMultimodalSpecWithoutVision,
  refuseMultimodalWithoutVision,
} from './vision-options.js';

const DEFAULT_STEPS = 100;
const DEFAULT_BATCH_SIZE = 8;
const DEFAULT_MAX_LENGTH = 128;

const usage = `Usage: routed-peft train --model PATH [--tokenizer PATH] --data FILE.jsonl (--spec SPEC.json | --routed DIR)
                       --out DIR [--steps N] [--batch-size N] [--seed S] [--lr X] [--router-lr X]
                       [--max-length N] [--checkpoint-every N] [--resume] [--format text|json]
                       [--retention-data FILE.jsonl [--retention-weight W] [--retention-batch-size N]]
                       [--vision DIR] [--workers N]

Train the experts and routers of a routed model on JSONL data; the base model stays frozen.
Data lines: {"text": ...}, {"prompt": ..., "completion": ...} (loss on the completion only), or
{"text": ..., "label": ...} (classification head), each with an optional "task" for task routers.
With --vision, text and prompt/completion lines may carry an "image": a PNG path (relative to the data
file) or a generated-image spec ({"kind": "shapes" | "digit", ...}); the image enters before the text.

Options:
${MODEL_USAGE}
  --data FILE          Training data (JSONL)
  --spec FILE          Start from a fresh routed model built from this spec (see examples/)
  --routed DIR         Start from an existing routed-model directory (e.g. made by init)
  --out DIR            Checkpoint directory: the routed model plus training-state.json, optimizer and
                       variables; replaced atomically at every save
  --steps N            TOTAL optimizer steps, counting those before a resume (default ${DEFAULT_STEPS})
  --batch-size N       Examples per step (default ${DEFAULT_BATCH_SIZE})
  --seed S             Seeds the data order of every epoch (default 0)
  --lr X               Peak learning rate of the experts (default 1e-3); cosine decay over --steps
  --router-lr X        Peak learning rate of the routers (default: --lr)
  --max-length N       Longest example in tokens, BOS/EOS included (default ${DEFAULT_MAX_LENGTH}, at most the model's)
  --checkpoint-every N Save a checkpoint every N steps (default 0: only at the end)
  --workers N          Data-parallel replicas (default 1): each step's batch is split by rows over N
                       copies of the model (this thread and N - 1 worker threads, each holding its own
                       copy of the base), which compute their shards' gradients at the same time; a step
                       then equals gradient accumulation over those shards. The workers compute on one
                       wasm thread each, this thread on --threads (default 1 with --workers). Not with
                       --vision or --retention-data; AdaLoRA adapters are refused; step lines carry no
                       routing 'load'
  --resume             Continue the checkpoint in --out (its spec, trainer settings, data order and seed);
                       --spec/--routed are then not needed
  --format text|json   Progress bar + text summary on a terminal (text, the default), or JSON lines
  --retention-data FILE  Base-domain text ({"text": ...} lines) mixed into every step: on those rows the
                       loss is the KL divergence from the frozen base's own next-token distribution, so
                       the routes learn to leave base-domain text alone (and a route's retention terms,
                       e.g. nullRouting, learn which inputs those are)
  --retention-weight W Weight of that KL term (default 1)
  --retention-batch-size N  Retention rows per step (default: --batch-size)
${VISION_USAGE}
                       --spec is then a multimodal spec (adapters on vision.* sites adapt the encoder,
                       "projector": {"hidden": N}); --routed a multimodal directory to train further. --out
                       gets a multimodal model directory (routed-peft-multimodal.json, language/,
                       multimodal.safetensors), written at the end; --resume and --checkpoint-every are
                       not implemented for it (refused), nor --retention-data or labelled lines

Without a terminal (or with --format json) stdout gets one JSON line per step:
  {"type":"step","step","loss","taskLoss","auxLoss","retentionLoss"?,"lr","routerLr","gradNorm","skipped","tokensPerSecond","load"?}
and a final {"type":"summary",...} line. AdaLoRA adapters: the summary's "adalora" lists each one's final
ranks per layer and site; --out DIR/adapters/NAME/ holds adalora-ranks.json and lora/ (a plain PEFT LoRA
with rank_pattern, for PEFT or --adapter).
`;

/** A Writable that forwards to io.stderr and claims to be a terminal, for cli-progress. */
export function terminalStream(io: CliIo): NodeJS.WritableStream {
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      io.stderr(typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
      callback();
    },
  });
  return Object.assign(stream, { isTTY: true, columns: process.stderr.columns ?? 100 });
}

const round = (x: number | null, digits = 6): number | null => (x === null ? null : Number(x.toPrecision(digits)));

function stepLine(report: LoopStepReport): string {
  return JSON.stringify({
    type: 'step',
    step: report.step,
    epoch: report.epoch,
    loss: report.loss,
    taskLoss: report.taskLoss,
    auxLoss: report.auxLoss,
    ...(report.retentionLoss === undefined ? {} : { retentionLoss: report.retentionLoss }),
    lr: report.lr.expert,
    routerLr: report.lr.router,
    gradNorm: report.gradNorm,
    skipped: report.skipped,
    skippedTotal: report.skippedTotal,
    tokens: report.tokens,
    tokensPerSecond: Math.round(report.tokensPerSecond),
    ...(report.load === undefined
      ? {}
      : {
          load: report.load.map((l) => ({
            layer: l.layer,
            site: l.site,
            route: l.route,
            experts: l.experts,
            fractions: l.fractions.map((f) => round(f, 4)),
            droppedRate: l.droppedRate,
          })),
        }),
  });
}

/** The final ranks of the model's AdaLoRA adapters, for the summary (absent without any). */
function adaloraSummary(model: AdaptedModel): { adalora?: AdaloraRankReport[] } {
  const reports = [...model.adapters.values()].filter((a) => a.spec.kind === 'adalora').map(adaloraRanks);
  return reports.length === 0 ? {} : { adalora: reports };
}

/** `adalora NAME: total rank 12 (target 12, from 24); layers.0: attn.q 3, attn.v 1 | layers.1: …`. */
export function formatAdaloraRanks(report: AdaloraRankReport, out: string): string {
  const layers = [...new Set(report.modules.map((m) => m.layer))];
  const perLayer = layers.map(
    (layer) =>
      `layers.${layer}: ${report.modules
        .filter((m) => m.layer === layer)
        .map((m) => `${m.site} ${m.rank}`)
        .join(', ')}`,
  );
  return (
    `adalora ${report.adapter}: total rank ${report.totalRank} (target ${report.targetTotalRank}, from ${report.initialTotalRank}); ` +
    (existsSync(join(out, 'adapters', report.adapter, 'lora', 'adapter_config.json'))
      ? `LoRA export (${report.exportedLoraParameters.toLocaleString('en-US')} parameters) in ${join(out, 'adapters', report.adapter, 'lora')}`
      : `no LoRA export (see ${join(out, 'adapters', report.adapter, 'adalora-ranks.json')})`) +
    `\n  ${perLayer.join('\n  ')}\n`
  );
}

/** A flag that must agree with the checkpoint when given with --resume. */
function agree<T>(flag: string, given: T | undefined, saved: T): T {
  if (given !== undefined && given !== saved) {
    throw new UsageError(`--${flag} ${String(given)} differs from the checkpoint's ${String(saved)}; a resumed run keeps its settings (omit --${flag})`);
  }
  return saved;
}

export const trainCommand: CliCommand = {
  name: 'train',
  summary: 'Train a routed model (experts + routers) on JSONL data, with checkpoints and exact resume',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      ...MODEL_FLAGS,
      data: { type: 'string' },
      spec: { type: 'string' },
      routed: { type: 'string' },
      out: { type: 'string' },
      steps: { type: 'string' },
      'batch-size': { type: 'string' },
      seed: { type: 'string' },
      lr: { type: 'string' },
      'router-lr': { type: 'string' },
      'max-length': { type: 'string' },
      'checkpoint-every': { type: 'string', default: '0' },
      resume: { type: 'boolean', default: false },
      format: { type: 'string', default: 'text' },
      'retention-data': { type: 'string' },
      'retention-weight': { type: 'string' },
      'retention-batch-size': { type: 'string' },
      ...VISION_FLAGS,
      workers: { type: 'string', default: '1' },
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    const retentionWeightFlag = optional(values['retention-weight'], (raw) => toNumber('retention-weight', raw, { min: 0 }), undefined);
    const retentionBatchFlag = optional(values['retention-batch-size'], (raw) => toInt('retention-batch-size', raw, { min: 1 }), undefined);
    if (values['retention-data'] === undefined && (retentionWeightFlag !== undefined || retentionBatchFlag !== undefined)) {
      throw new UsageError('--retention-weight and --retention-batch-size need --retention-data FILE.jsonl');
    }
    const steps = optional(values.steps, (raw) => toInt('steps', raw, { min: 1 }), DEFAULT_STEPS);
    const batchSizeFlag = optional(values['batch-size'], (raw) => toInt('batch-size', raw, { min: 1 }), undefined);
    const seedFlag = optional(values.seed, (raw) => toInt('seed', raw), undefined);
    const lrFlag = optional(values.lr, (raw) => toNumber('lr', raw, { min: 0, minExclusive: true, max: MAX_LEARNING_RATE }), undefined);
    const routerLrFlag = optional(values['router-lr'], (raw) => toNumber('router-lr', raw, { min: 0, minExclusive: true, max: MAX_LEARNING_RATE }), undefined);
    const maxLengthFlag = optional(values['max-length'], (raw) => toInt('max-length', raw, { min: 2 }), undefined);
    const checkpointEvery = toInt('checkpoint-every', values['checkpoint-every'], { min: 0 });
    const workers = toInt('workers', values.workers, { min: 1, max: MAX_REPLICAS });
    if (workers > 1) {
      if (values.vision !== undefined) throw new UsageError('--workers with --vision: data-parallel training of a multimodal model is not implemented');
      if (values['retention-data'] !== undefined)
        throw new UsageError('--workers with --retention-data: data-parallel training with retention rows is not implemented', {
          hint: 'Drop --workers, or train without --retention-data',
        });
      // Each replica is one thread by default: the replicas are the parallelism (see --threads). A process
      // whose wasm backend already runs (the library called in-process) keeps its threads.
      const unset = getDefaultThreads() === undefined && (process.env[THREADS_ENV_VAR] ?? '').trim() === '';
      if (unset && loadedWasmThreads() === undefined) setDefaultThreads(1);
    }
    if (values.data === undefined) throw new UsageError('--data is required');
    if (values.out === undefined) throw new UsageError('--out is required');
    if (values.model === undefined) throw new UsageError('--model is required');
    const out = values.out;
    const resume = values.resume;
    const visionPath = values.vision;
    if (visionPath === undefined) refuseMultimodalWithoutVision(values.routed);
    else {
      const hint = 'With --vision the trained model is saved to --out once, at the end';
      if (resume) {
        throw new UsageError('--resume with --vision: training checkpoints of a multimodal model are not implemented', {
          hint: 'Continue from the saved model instead: --vision DIR --routed OLD_OUT --out NEW_OUT (a fresh optimizer and schedule)',
        });
      }
      if (checkpointEvery > 0)
        throw new UsageError('--checkpoint-every with --vision: training checkpoints of a multimodal model are not implemented', { hint });
      if (values['retention-data'] !== undefined) {
        throw new UsageError('--retention-data with --vision is not implemented (retention rows cannot share a batch with images)', {
          hint: 'Train the multimodal model without --retention-data',
        });
      }
      if (isMultimodalModelDir(out)) {
        throw new UsageError(`--out ${out} already holds a multimodal model; choose another --out`, {
          hint: `To train it further: --routed ${out} --out NEW_DIR`,
        });
      }
    }
    if (!resume) {
      if ((values.spec === undefined) === (values.routed === undefined)) throw new UsageError('give exactly one of --spec and --routed (or --resume)');
      if (hasCheckpoint(out)) throw new UsageError(`--out ${out} already holds a training checkpoint; pass --resume to continue it, or choose another --out`);
    } else if (!hasCheckpoint(out)) {
      throw new CheckpointError(`--resume: no checkpoint to resume from in --out ${out}`, {
        path: out,
        hint: 'Run once without --resume to start training there',
      });
    }
    // Before any work (a read-only --out used to fail with a raw EROFS after the first step).
    await checkOutputDirectory(out, { what: '--out' });
    const saved = resume ? await readTrainingState(out) : undefined;
    const savedOptimizer = (saved?.trainer['optimizer'] ?? {}) as { readonly lr?: number; readonly routerLr?: number };
    const batchSize = saved === undefined ? (batchSizeFlag ?? DEFAULT_BATCH_SIZE) : agree('batch-size', batchSizeFlag, saved.data.batchSize);
    const seed = saved === undefined ? (seedFlag ?? 0) : agree('seed', seedFlag, saved.data.seed);
    if (saved !== undefined) {
      if (savedOptimizer.lr !== undefined) agree('lr', lrFlag, savedOptimizer.lr);
      agree('router-lr', routerLrFlag, savedOptimizer.routerLr ?? savedOptimizer.lr);
      const savedWeight = saved.trainer['retentionWeight'];
      if (typeof savedWeight === 'number' && saved.data.retention !== undefined) agree('retention-weight', retentionWeightFlag, savedWeight);
      if (saved.data.retention !== undefined) agree('retention-batch-size', retentionBatchFlag, saved.data.retention.batchSize);
      if ((saved.data.retention === undefined) !== (values['retention-data'] === undefined)) {
        throw new UsageError(
          saved.data.retention === undefined
            ? '--retention-data: the checkpoint was trained without retention data; a resumed run keeps its data (omit --retention-data)'
            : '--resume: the checkpoint was trained with retention data; pass the same --retention-data FILE',
        );
      }
    }
    const retentionData = values['retention-data'] === undefined ? undefined : await readJsonlDataset(values['retention-data']);
    for (const problem of retentionData?.problems ?? []) io.stderr(`warning: ${values['retention-data']}: line ${problem.line} skipped: ${problem.message}\n`);
    const spec = values.spec === undefined || resume ? undefined : await readJsonFile(values.spec, 'spec');
    if (visionPath === undefined && values.spec !== undefined) refuseMultimodalSpecWithoutVision(spec, values.spec);
    // The data's task and label names keep the ids of the run being resumed.
    // A saved multimodal model trained further keeps its task ids too.
    const savedTasks =
      visionPath !== undefined && values.routed !== undefined && isMultimodalModelDir(values.routed)
        ? (await readMultimodalManifest(values.routed)).tasks
        : undefined;
    const dataset = await readJsonlDataset(
      values.data,
      saved === undefined ? (savedTasks === undefined ? {} : { tasks: savedTasks }) : { tasks: saved.data.tasks, labels: saved.data.labels },
    );
    if (visionPath === undefined) refuseImages(datasetImages(dataset), values.data);
    else if (dataset.kind === 'classification') {
      throw new UsageError(`--vision: ${values.data} holds labelled lines; a multimodal model trains on text and prompt/completion lines only`, {
        path: values.data,
        hint: 'Give "text" or "prompt"/"completion" lines (with optional "image"), or train the classifier without --vision',
      });
    }
    for (const problem of dataset.problems) io.stderr(`warning: ${values.data}: line ${problem.line} skipped: ${problem.message}\n`);

    const loaded = await loadCliModel(values);
    let model: AdaptedModel | undefined;
    let encoder: VisionEncoder | undefined;
    let multimodal: MultimodalModel | undefined;
    let checkpoint: LoadedCheckpoint | undefined;
    let bar: SingleBar | undefined;
    let group: DataParallelGroup | undefined;
    try {
      const tokenizer = loaded.tokenizer;
      if (tokenizer === undefined) throw new UsageError('training needs a tokenizer: pass --tokenizer PATH');
      const maxSeqLen = loaded.model.config.maxSeqLen;
      const maxLength =
        saved === undefined ? (maxLengthFlag ?? Math.min(DEFAULT_MAX_LENGTH, maxSeqLen)) : agree('max-length', maxLengthFlag, saved.data.maxLength);
      if (maxLength > maxSeqLen) throw new UsageError(`--max-length ${maxLength} exceeds the model's context of ${maxSeqLen} tokens`);
      const routers = context.routers === undefined ? {} : { routers: context.routers };
      const finite = { allowNonFinite: loaded.allowNonFinite };
      if (visionPath !== undefined) {
        encoder = await loadCliVision(visionPath);
        multimodal =
          values.routed === undefined
            ? MultimodalModel.create(loaded.model, encoder, spec, routers)
            : (await loadCliMultimodal(loaded, encoder, values.routed, context, io)).model;
        model = multimodal.language;
      } else if (resume) {
        checkpoint = await loadCheckpoint(out, loaded.model, { ...routers, ...finite });
        for (const w of checkpoint.warnings) io.stderr(`warning: ${w}\n`);
        model = checkpoint.model;
      } else if (values.routed !== undefined) {
        const routed = await loadRoutedModel(values.routed, loaded.model, { ...routers, ...finite });
        for (const w of routed.warnings) io.stderr(`warning: ${w}\n`);
        model = routed.model;
      } else {
        checkSpecAgainstModel(parseAdaptedModelSpec(spec), loaded.model.config);
        model = AdaptedModel.create(loaded.model, spec, routers);
      }
      // A checkpoint holds the variables, two AdamW moments and the PEFT copy: about 4× the trainable bytes.
      const trainee = multimodal ?? model;
      await checkOutputDirectory(out, { what: '--out', bytes: 4 * trainee.parameterReport().trainableBytes + (1 << 20) });
      const trainerConfig: TrainerConfigInput = {
        optimizer: { ...(lrFlag === undefined ? {} : { lr: lrFlag }), ...(routerLrFlag === undefined ? {} : { routerLr: routerLrFlag }) },
        schedule: { totalSteps: steps },
        seed,
        ...(retentionWeightFlag === undefined ? {} : { retentionWeight: retentionWeightFlag }),
        ...(dataset.kind === 'classification' ? { objective: { kind: 'classification', classes: Math.max(2, dataset.labels.length) } } : {}),
      };

      const startStep = saved?.step ?? 0;
      const useBar = io.isTTY && format === 'text';
      if (useBar) {
        bar = new SingleBar({
          stream: terminalStream(io),
          format: 'train |{bar}| {value}/{total} steps | loss {loss} | {tps} tok/s | ETA {eta_formatted}',
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 20,
        });
        bar.start(steps, Math.min(startStep, steps), { loss: '-', tps: '-' });
      }
      if (workers > 1) {
        group = await DataParallelGroup.start(model, checkpoint?.state.trainer ?? trainerConfig, { replicas: workers });
      }
      const result = await trainFromDataset({
        model: trainee,
        tokenizer,
        dataset,
        trainer: trainerConfig,
        steps,
        batchSize,
        seed,
        maxLength,
        // A multimodal model has no training checkpoints: it is saved below, once.
        ...(multimodal === undefined ? { checkpointDir: out, checkpointEvery } : {}),
        ...(checkpoint === undefined ? {} : { resumeFrom: checkpoint }),
        basePath: loaded.path,
        ...(retentionData === undefined
          ? {}
          : { retention: { dataset: retentionData, batchSize: saved?.data.retention?.batchSize ?? retentionBatchFlag ?? batchSize } }),
        routingLoadEvery: useBar || model.routes.length === 0 || group !== undefined ? 0 : 1, // traces cover one shard only
        ...(group === undefined ? {} : { trainerOptions: { dataParallel: group } }),
        onStep: (report) => {
          if (bar !== undefined)
            bar.update(report.step, { loss: report.loss === null ? 'nan' : report.loss.toFixed(4), tps: Math.round(report.tokensPerSecond) });
          else io.stdout(`${stepLine(report)}\n`);
        },
        onCheckpoint: ({ dir, step }) => {
          if (bar === undefined) io.stdout(`${JSON.stringify({ type: 'checkpoint', step, dir })}\n`);
        },
      });
      if (multimodal !== undefined) {
        await saveMultimodalModel(out, multimodal, { basePath: loaded.path, visionPath: visionPath as string, tasks: dataset.tasks });
        if (bar === undefined) io.stdout(`${JSON.stringify({ type: 'checkpoint', step: result.summary.steps, dir: out })}\n`);
      }
      bar?.stop();
      bar = undefined;
      const { summary } = result;
      const final = {
        type: 'summary',
        out,
        startStep: result.startStep,
        steps: summary.steps,
        appliedSteps: summary.appliedSteps,
        skippedTotal: summary.skippedTotal,
        firstLoss: result.history.find((h) => h.loss !== null)?.loss ?? null,
        lastLoss: [...result.history].reverse().find((h) => h.loss !== null)?.loss ?? null,
        epoch: result.position.epoch,
        examples: result.position.examples,
        tokens: summary.tokens,
        seconds: Number((summary.ms / 1000).toFixed(3)),
        ...adaloraSummary(model),
      };
      if (useBar) {
        const loss = (x: number | null): string => (x === null ? 'n/a' : x.toFixed(4));
        io.stdout(
          `trained ${out}: steps ${final.startStep} → ${final.steps} (${final.skippedTotal} skipped), loss ${loss(final.firstLoss)} → ${loss(final.lastLoss)}, ${final.tokens} tokens in ${final.seconds} s\n`,
        );
        for (const report of final.adalora ?? []) io.stdout(formatAdaloraRanks(report, out));
      } else {
        io.stdout(`${JSON.stringify(final)}\n`);
      }
      return 0;
    } finally {
      bar?.stop();
      await group?.close();
      if (multimodal !== undefined) multimodal.dispose();
      else model?.dispose();
      encoder?.dispose();
      loaded.model.dispose();
    }
  },
};
