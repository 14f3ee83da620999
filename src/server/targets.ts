/**
 * What a request's `model` names, and loading targets at run time.
 *
 * `model` is `base` (the frozen base alone), the name of a loaded PEFT adapter target or of a routed model;
 * anything else is a 404 in OpenAI's shape listing what is served. The kind comes from the runtime's own
 * stats, so a target loaded or unloaded at run time is served (or not) from the next request on.
 *
 * Run-time loading (POST /v1/load_lora_adapter, off unless the server was started with an adapter
 * directory and --allow-runtime-loading) takes a name, never a path: `lora_path` (default: `lora_name`) must
 * be a plain directory name inside that directory — no separators, no `..`, and its real path (symlinks
 * resolved) must stay inside it. A directory holding routed-peft.json loads as a routed model, any other as
 * a PEFT LoRA adapter. Loading a name that is already served hot-swaps it: running requests finish on the old
 * weights, requests arriving afterwards get the new ones.
 */
import { realpath, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, sep } from 'node:path';
import { MANIFEST_FILE } from '../io/routed-model-dir.js';
import type { ServingRuntime } from './serving-runtime.js';
import type { Selection, TargetInfo, TargetSource } from '../runtime/types.js';
import { RoutedPeftError } from '../errors.js';
import { ServerError } from './errors.js';

export const BASE_MODEL = 'base';

export type TargetKind = 'base' | 'adapter' | 'routed';

export interface ResolvedModel {
  readonly name: string;
  readonly kind: TargetKind;
  readonly select: Selection;
}

/** One entry of GET /v1/models (OpenAI's Model object, with `parent` as vLLM lists LoRA adapters). */
export interface ModelCard {
  readonly id: string;
  readonly object: 'model';
  readonly created: number;
  readonly owned_by: 'routed-peft';
  readonly root: string;
  readonly parent: string | null;
  readonly routed_peft: { readonly kind: TargetKind; readonly resident: boolean };
}

export interface LoadResult {
  readonly name: string;
  readonly kind: 'adapter' | 'routed';
  readonly replaced: boolean;
  readonly bytes: number;
}

const PLAIN_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class ServedTargets {
  private readonly created = new Map<string, number>();
  /** The adapter directory with symlinks resolved (known after the first load). */
  private realAdapterDir: string | undefined;
  private readonly startedAt = Math.floor(Date.now() / 1000);

  constructor(
    private readonly runtime: ServingRuntime,
    private readonly adapterDir: string | undefined,
  ) {}

  /** The selection for a request's `model`; 404 (code model_not_found) when nothing by that name is served. */
  resolve(model: string): ResolvedModel {
    if (model === BASE_MODEL) return { name: BASE_MODEL, kind: 'base', select: 'base' };
    const target = this.runtime.stats().targets.find((t) => t.name === model);
    if (target === undefined) {
      const served = [BASE_MODEL, ...this.runtime.targets()];
      throw new ServerError(`the model ${JSON.stringify(model)} does not exist`, {
        status: 404,
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
        hint: `Served models: ${served.join(', ')} (GET /v1/models lists them)`,
      });
    }
    return target.kind === 'adapter'
      ? { name: model, kind: 'adapter', select: { adapter: model } }
      : { name: model, kind: 'routed', select: { routed: model } };
  }

  list(): ModelCard[] {
    const base: ModelCard = {
      id: BASE_MODEL,
      object: 'model',
      created: this.startedAt,
      owned_by: 'routed-peft',
      root: BASE_MODEL,
      parent: null,
      routed_peft: { kind: 'base', resident: true },
    };
    return [
      base,
      ...this.runtime.stats().targets.map(
        (t): ModelCard => ({
          id: t.name,
          object: 'model',
          created: this.created.get(t.name) ?? this.startedAt,
          owned_by: 'routed-peft',
          root: t.name,
          parent: BASE_MODEL,
          routed_peft: { kind: t.kind, resident: t.resident },
        }),
      ),
    ];
  }

  /** Loads (or hot-swaps) a target from an entry of the adapter directory. */
  async load(name: string, entry: string): Promise<LoadResult> {
    const source = await this.sourceFor(entry);
    const replaced = this.runtime.targets().includes(name);
    let info: TargetInfo;
    try {
      info = replaced ? await this.runtime.swap(name, source) : await this.runtime.load(name, source);
    } catch (error) {
      throw this.loadFailed(name, entry, error);
    }
    this.created.set(name, Math.floor(Date.now() / 1000));
    return { name, kind: info.kind, replaced, bytes: info.bytes };
  }

  /** Unloads a target; requests running on it finish first. */
  unload(name: string): void {
    if (!this.runtime.targets().includes(name)) {
      throw new ServerError(`no adapter named ${JSON.stringify(name)} is loaded`, {
        status: 404,
        param: 'lora_name',
        code: 'model_not_found',
        hint: `Loaded: ${this.runtime.targets().join(', ') || '(none)'}`,
      });
    }
    this.runtime.unload(name);
    this.created.delete(name);
  }

  private async sourceFor(entry: string): Promise<TargetSource> {
    const root = this.adapterDir;
    if (root === undefined) {
      throw new ServerError('run-time loading needs an adapter directory', {
        status: 403,
        code: 'loading_disabled',
        hint: 'Start the server with --adapter-dir DIR --allow-runtime-loading',
      });
    }
    if (!PLAIN_NAME.test(entry) || entry === '.' || entry === '..' || entry.includes('..')) {
      throw new ServerError(`lora_path ${JSON.stringify(entry)} is not a plain directory name`, {
        status: 400,
        param: 'lora_path',
        code: 'invalid_value',
        hint: "Name a directory inside the server's adapter directory (letters, digits, '_', '.', '-'; no '/' or '..')",
      });
    }
    const notFound = (): ServerError =>
      new ServerError(`the adapter directory has no entry named ${JSON.stringify(entry)}`, {
        status: 404,
        param: 'lora_path',
        code: 'adapter_not_found',
        hint: 'Copy the adapter into the adapter directory first (every replica reads the same directory)',
      });
    let real: string;
    let realRoot: string;
    try {
      realRoot = await realpath(root);
      this.realAdapterDir = realRoot;
      real = await realpath(join(root, entry));
    } catch {
      throw notFound();
    }
    if (!real.startsWith(realRoot + sep)) throw notFound();
    if (!(await stat(real)).isDirectory()) throw notFound();
    return existsSync(join(real, MANIFEST_FILE)) ? { kind: 'routed', dir: real } : { kind: 'peft', dir: real };
  }

  /** A load failure, with the server's directories left out of the message. */
  private loadFailed(name: string, entry: string, error: unknown): ServerError {
    const roots = [this.realAdapterDir, this.adapterDir].filter((r): r is string => r !== undefined && r !== '');
    const scrub = (text: string): string => roots.reduce((t, root) => t.split(root).join('<adapter-dir>'), text);
    const message = error instanceof Error ? scrub(error.message) : String(error);
    const conflict = error instanceof RoutedPeftError && /already loaded/.test(error.message);
    return new ServerError(`could not load ${JSON.stringify(entry)} as ${JSON.stringify(name)}: ${message}`, {
      status: conflict ? 409 : 400,
      param: 'lora_path',
      code: conflict ? 'already_loading' : 'invalid_adapter',
    });
  }
}
