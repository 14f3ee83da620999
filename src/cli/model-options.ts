/**
 * Flags every model-running command shares (--model, --tokenizer), and loading what they name: the
 * backend, the frozen base, and a tokenizer (given, or tokenizer.json inside an HF model directory).
 */
import { existsSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import type { AdapterInstance } from '../adapters/instance.js';
import { readPeftAdapter } from '../io/peft-adapter.js';
import { loadRoutedModel } from '../io/routed-model-dir.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { staticComposition } from '../model/selection.js';
import { toChoice, toInt, toNumber } from './args.js';
import type { CliContext } from './command.js';
import type { CliIo } from './io.js';
import { selectBackend } from '../backend.js';
import { loadBaseModel, type LoadedModel } from '../base/checkpoints/load-model.js';
import { UsageError } from '../errors.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import { refuseMultimodalWithoutVision } from './vision-options.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';

export const MODEL_FLAGS = {
  model: { type: 'string' },
  tokenizer: { type: 'string' },
  'allow-non-finite': { type: 'boolean', default: false },
} as const;

export const MODEL_USAGE = `  --model PATH         Hugging Face model directory (llama, gpt2; safetensors) or llama2.c .bin
  --tokenizer PATH     llama2.c tokenizer .bin, tokenizer.json, or a directory holding it
                       (default: tokenizer.json inside an HF model directory, when present)
  --allow-non-finite   Load weights holding NaN or ±Infinity (refused by default) and print
                       non-finite outputs as null instead of failing`;

/** Flags that attach adapters: PEFT LoRA directories (static) or a routed-model directory. */
export const ADAPTER_FLAGS = {
  adapter: { type: 'string', multiple: true },
  combine: { type: 'string' },
  weights: { type: 'string' },
  routed: { type: 'string' },
  'task-id': { type: 'string' },
} as const;

export const ADAPTER_USAGE = `  --adapter DIR        A PEFT LoRA adapter directory (repeatable)
  --combine MODE       How several --adapter combine: stack | parallel (default) | average
  --weights LIST       Weights of each adapter's delta for --combine parallel or average, comma-separated
  --routed DIR         A routed-model directory (routed-peft.json); not with --adapter
  --task-id N          Task id given to task routers`;

export interface LoadedCliModel extends LoadedModel {
  readonly tokenizer: Tokenizer | undefined;
  /** --allow-non-finite: weights with NaN / ±Infinity load, non-finite outputs print as null. */
  readonly allowNonFinite: boolean;
}

/** --tokenizer, else the model directory when it holds a tokenizer.json; undefined when there is none. */
export function cliTokenizerPath(model: string, tokenizer: string | undefined): string | undefined {
  if (tokenizer !== undefined) return tokenizer;
  return statSync(model).isDirectory() && existsSync(join(model, 'tokenizer.json')) ? model : undefined;
}

export async function loadCliModel(values: {
  readonly model?: string | undefined;
  readonly tokenizer?: string | undefined;
  readonly 'allow-non-finite'?: boolean | undefined;
}): Promise<LoadedCliModel> {
  if (values.model === undefined) throw new UsageError('--model is required');
  const allowNonFinite = values['allow-non-finite'] === true;
  await selectBackend();
  const loaded = await loadBaseModel(values.model, { allowNonFinite });
  try {
    const tokenizerPath = cliTokenizerPath(values.model, values.tokenizer);
    const tokenizer = tokenizerPath === undefined ? undefined : await loadTokenizer(tokenizerPath, { vocabSize: loaded.model.config.vocabSize });
    return { ...loaded, tokenizer, allowNonFinite };
  } catch (error) {
    loaded.model.dispose();
    throw error;
  }
}

/** Ids for a prompt: the text encoded (with BOS where the model uses one) or the given ids. */
export function promptIds(loaded: LoadedCliModel, prompt: string | undefined, ids: number[] | undefined): number[] {
  if (prompt !== undefined && ids !== undefined) throw new UsageError('give --prompt or --prompt-ids, not both');
  if (ids !== undefined) return ids;
  const bos = loaded.model.config.bosId;
  if (prompt === undefined) {
    if (bos === undefined) throw new UsageError('this model has no BOS token to start from: give --prompt or --prompt-ids');
    return [bos];
  }
  if (loaded.tokenizer === undefined) throw new UsageError('--prompt needs a tokenizer: pass --tokenizer PATH (or use --prompt-ids)');
  const addBos = loaded.model.config.family === 'llama' && loaded.tokenizer.bosId !== undefined;
  const encoded = loaded.tokenizer.encode(prompt, { addBos });
  if (encoded.length === 0) throw new UsageError('--prompt encodes to no tokens; give a non-empty prompt');
  return encoded;
}

export interface CliAdapters {
  readonly model: AdaptedModel | undefined;
  readonly taskIds: number[] | undefined;
}

/** Attaches what --adapter / --routed name to a loaded base; undefined model when neither is given. */
export async function loadCliAdapters(
  loaded: LoadedCliModel,
  values: {
    readonly adapter?: string[] | undefined;
    readonly combine?: string | undefined;
    readonly weights?: string | undefined;
    readonly routed?: string | undefined;
    readonly 'task-id'?: string | undefined;
  },
  context: CliContext,
  io: CliIo,
): Promise<CliAdapters> {
  const taskIds = values['task-id'] === undefined ? undefined : [toInt('task-id', values['task-id'], { min: 0 })];
  const adapters = values.adapter ?? [];
  if (values.routed !== undefined && adapters.length > 0) throw new UsageError('give --routed or --adapter, not both');
  if (values.routed !== undefined) {
    refuseMultimodalWithoutVision(values.routed);
    const { model, warnings } = await loadRoutedModel(values.routed, loaded.model, { routers: context.routers, allowNonFinite: loaded.allowNonFinite });
    for (const w of warnings) io.stderr(`warning: ${w}\n`);
    return { model, taskIds };
  }
  if (adapters.length === 0) {
    if (values.combine !== undefined || values.weights !== undefined) throw new UsageError('--combine and --weights need --adapter');
    return { model: undefined, taskIds };
  }
  const combine = toChoice('combine', values.combine ?? 'parallel', ['stack', 'parallel', 'average'] as const);
  const weights = values.weights === undefined ? undefined : values.weights.split(',').map((w) => toNumber('weights', w.trim()));
  if (weights !== undefined && combine === 'stack') throw new UsageError('--weights applies to --combine parallel or average (a stack takes no weights)');
  if (weights !== undefined && weights.length !== adapters.length)
    throw new UsageError(`--weights has ${weights.length} values for ${adapters.length} adapters`);
  const instances: AdapterInstance[] = [];
  try {
    const used = new Set<string>();
    for (const dir of adapters) {
      let name =
        basename(resolve(dir))
          .replace(/[^A-Za-z0-9_.-]/g, '_')
          .slice(0, 100) || 'adapter';
      for (let n = 2; used.has(name); n++) name = `${basename(resolve(dir)).slice(0, 100)}-${n}`;
      used.add(name);
      const read = await readPeftAdapter(dir, loaded.model, { name, allowNonFinite: loaded.allowNonFinite });
      for (const w of read.warnings) io.stderr(`warning: ${dir}: ${w}\n`);
      instances.push(read.instance);
    }
    const names = instances.map((i) => i.name);
    // The library's selection vocabulary (model/selection.ts), as RoutedRuntime calls take it.
    const composition = staticComposition(
      names.length === 1 && weights === undefined ? { adapter: names[0] as string } : { combine, adapters: names, weights },
    );
    const model = AdaptedModel.create(loaded.model, { adapters: instances.map((i) => i.spec), composition });
    for (const instance of instances.splice(0)) model.replaceAdapter(instance);
    return { model, taskIds };
  } finally {
    for (const instance of instances) instance.dispose();
  }
}
