/**
 * A frozen language model and a frozen vision encoder joined LLaVA-style: each image becomes the encoder's
 * patch tokens, a trainable projector maps them to the language model's width, and they enter the language
 * model as a prefix of embedding vectors before the row's text. Adapters attach to either side: an adapter
 * whose `targets.sites` all start with `vision.` (`vision.attn.q`, `vision.mlp.*`) adapts the encoder's
 * layers, on every image; every other adapter belongs to the language model and its composition (routes
 * included). Routers of the language model see each token's modality (0 text, 1 image) in the forward
 * context; a route with `modalityFeature: true` reads it as an input feature, and traces record it.
 *
 * Neither base ever changes: the encoder and the language model hold plain tensors, and the trainable
 * variables are the projector's, the vision adapters' and the language model's adapters and routers.
 *
 * Shape letters: B rows, M rows with an image, N image tokens, Dv encoder width, D language model width.
 */
import * as tf from '@tensorflow/tfjs';
import { AdapterSpec } from '../adapters/registry.js';
import { type AdapterInstance, createAdapter, deriveSeed } from '../adapters/instance.js';
import { sitePattern } from '../adapters/targets.js';
import { collectSteps } from '../base/generate.js';
import type { ForwardHooks } from '../base/hooks.js';
import { FAMILY_SITES } from '../base/sites.js';
import type { PrefixEmbeddings, Transformer } from '../base/transformer.js';
import { listWeightTensors } from '../base/weights.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError, ShapeError } from '../errors.js';
import { visionAdapterConfig } from '../vision/encoder-config.js';
import { type VisionEncoder, listVisionTensors } from '../vision/encoder.js';
import type { PixelImage } from '../vision/pixel-image.js';
import { Projector, ProjectorSpec } from '../vision/projector.js';
import { AdaptedModel, type AdaptedForwardOptions, type AdaptedGenerateOptions, type AdaptedModelOptions, type ParameterReport } from './adapted-model.js';
import { compositionHooks } from './composition-hooks.js';
import { z } from 'zod';

/** The prefix that sends an adapter's target sites to the vision encoder. */
export const VISION_SITE_PREFIX = 'vision.';
/** The encoder's sites as specs name them. */
export const VISION_SITES: readonly string[] = FAMILY_SITES.gpt2.map((s) => `${VISION_SITE_PREFIX}${s}`);

export const MultimodalSpec = z
  .object({
    seed: z.number().int().default(0),
    /** Language and vision adapters (vision ones target `vision.` sites only). */
    adapters: z.array(z.unknown()).min(1),
    /** The language model's composition (vision adapters cannot appear in it). */
    composition: z.unknown().optional(),
    projector: ProjectorSpec.prefault({}),
  })
  .strict();
export type MultimodalSpec = z.infer<typeof MultimodalSpec>;

/** One image per row, or undefined for a row without one. */
export type RowImages = readonly (PixelImage | undefined)[];

export type MultimodalForwardOptions = AdaptedForwardOptions & { readonly images?: RowImages };
export type MultimodalGenerateOptions = AdaptedGenerateOptions & { readonly images?: RowImages };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The site entries of a raw adapter spec, when it has a list of them. */
function siteEntries(adapter: unknown): unknown[] | undefined {
  const sites = isRecord(adapter) && isRecord(adapter['targets']) ? adapter['targets']['sites'] : undefined;
  return Array.isArray(sites) ? sites : undefined;
}

function isVisionEntry(site: unknown): boolean {
  return typeof site === 'string' && site.startsWith(VISION_SITE_PREFIX);
}

/**
 * What makes a raw spec multimodal — `'adapters on vision.* sites'`, `'a projector'` — or undefined for a
 * text-only spec. Never throws: callers use it to refuse a multimodal spec where no encoder is loaded.
 */
export function multimodalSpecFeature(spec: unknown): string | undefined {
  if (!isRecord(spec)) return undefined;
  const adapters = Array.isArray(spec['adapters']) ? spec['adapters'] : [];
  if (adapters.some((adapter) => siteEntries(adapter)?.some(isVisionEntry) ?? false)) return 'adapters on vision.* sites';
  return 'projector' in spec ? 'a projector' : undefined;
}

/** Whether a raw adapter spec targets the encoder: every site entry starts with `vision.`; a mix is refused by name. */
function targetsVision(adapter: unknown, path: string): boolean {
  const sites = siteEntries(adapter);
  if (sites === undefined) return false;
  const vision = sites.map(isVisionEntry);
  if (vision.every(Boolean)) return sites.length > 0;
  if (vision.some(Boolean)) {
    throw new ConfigError('an adapter targets both vision-encoder sites and language-model sites', {
      path: `${path}.targets.sites`,
      hint: 'Split it into two adapters: one with only vision.* sites, one with only language sites',
    });
  }
  return false;
}

/** A vision adapter's spec with the `vision.` prefix removed; every entry must match an encoder site. */
function visionAdapterSpec(adapter: Record<string, unknown>, path: string): unknown {
  const targets = adapter['targets'] as Record<string, unknown>;
  const sites = (targets['sites'] as string[]).map((entry, i) => {
    const matches = VISION_SITES.filter(sitePattern(entry, `${path}.targets.sites[${i}]`));
    if (matches.length === 0) {
      throw new ConfigError(`site ${JSON.stringify(entry)} matches no site of the vision encoder`, {
        path: `${path}.targets.sites[${i}]`,
        hint: `Vision sites: ${VISION_SITES.join(', ')} (or a glob like 'vision.attn.*')`,
      });
    }
    return entry.slice(VISION_SITE_PREFIX.length);
  });
  return { ...adapter, targets: { ...targets, sites } };
}

/** Adapter names a raw composition mentions (strings and {adapter} / experts fields), for a clear refusal. */
function namesIn(node: unknown, out: Set<string>): Set<string> {
  if (typeof node === 'string') out.add(node);
  else if (Array.isArray(node)) for (const child of node) namesIn(child, out);
  else if (isRecord(node)) {
    if (typeof node['adapter'] === 'string') out.add(node['adapter']);
    namesIn(node['experts'], out);
    namesIn(node['children'], out);
  }
  return out;
}

export class MultimodalModel {
  private readonly visionHooks: ForwardHooks | undefined;
  private disposed = false;

  private constructor(
    /** The validated spec the model was built from (what a saved multimodal directory records). */
    readonly spec: MultimodalSpec,
    readonly language: AdaptedModel,
    readonly encoder: VisionEncoder,
    readonly projector: Projector,
    readonly visionAdapters: ReadonlyMap<string, AdapterInstance>,
  ) {
    const names = [...visionAdapters.keys()];
    this.visionHooks =
      names.length === 0
        ? undefined
        : compositionHooks(
            names.length === 1
              ? { kind: 'adapter', adapter: names[0] as string }
              : { kind: 'parallel', children: names.map((adapter) => ({ kind: 'adapter', adapter })) },
            visionAdapters,
          );
  }

  /** Validates a multimodal spec and builds the projector, the vision adapters and the adapted language model. */
  static create(base: Transformer, encoder: VisionEncoder, spec: unknown, options: AdaptedModelOptions = {}): MultimodalModel {
    const parsed = parseConfig(MultimodalSpec, spec, 'spec');
    const language: unknown[] = [];
    const visionSpecs: { spec: unknown; path: string }[] = [];
    parsed.adapters.forEach((adapter, i) => {
      const path = `spec.adapters[${i}]`;
      if (targetsVision(adapter, path)) visionSpecs.push({ spec: visionAdapterSpec(adapter as Record<string, unknown>, path), path });
      else language.push(adapter);
    });
    if (language.length === 0) {
      throw new ConfigError('a multimodal spec needs at least one language-model adapter', {
        path: 'spec.adapters',
        hint: 'Add an adapter on language sites (e.g. attn.q); the projector alone is not an adapted language model',
      });
    }
    const visionConfig = visionAdapterConfig(encoder.config);
    const vision = new Map<string, AdapterInstance>();
    let projector: Projector | undefined;
    let adapted: AdaptedModel | undefined;
    try {
      for (const { spec: raw, path } of visionSpecs) {
        const adapter = createAdapter(parseConfig(AdapterSpec, raw, path), visionConfig, parsed.seed, path);
        if (vision.has(adapter.name)) {
          adapter.dispose();
          throw new ConfigError(`two vision adapters are named ${JSON.stringify(adapter.name)}`, { path });
        }
        vision.set(adapter.name, adapter);
      }
      const mentioned = namesIn(parsed.composition, new Set());
      const inComposition = [...vision.keys()].find((name) => mentioned.has(name));
      if (inComposition !== undefined) {
        throw new ConfigError(`vision adapter ${JSON.stringify(inComposition)} appears in the composition`, {
          path: 'spec.composition',
          hint: 'Vision adapters apply to every image of the encoder; compose (and route) language adapters only',
        });
      }
      const clash = [...vision.keys()].find((name) => language.some((a) => isRecord(a) && a['name'] === name));
      if (clash !== undefined) throw new ConfigError(`a vision and a language adapter are both named ${JSON.stringify(clash)}`, { path: 'spec.adapters' });
      projector = new Projector(encoder.config.dim, base.config.dim, parsed.projector.hidden ?? base.config.dim, deriveSeed(parsed.seed, 'projector'));
      adapted = AdaptedModel.create(
        base,
        { seed: parsed.seed, adapters: language, ...(parsed.composition === undefined ? {} : { composition: parsed.composition }) },
        options,
      );
      return new MultimodalModel(parsed, adapted, encoder, projector, vision);
    } catch (error) {
      for (const a of vision.values()) a.dispose();
      projector?.dispose();
      adapted?.dispose();
      throw error;
    }
  }

  /** The frozen language model. */
  get base(): Transformer {
    return this.language.base;
  }

  get routes(): AdaptedModel['routes'] {
    return this.language.routes;
  }

  /** Every frozen tensor: the language model's and the encoder's (the trainer checks none is a variable). */
  frozenTensors(): tf.Tensor[] {
    return [...listWeightTensors(this.base.weights), ...listVisionTensors(this.encoder.weights)];
  }

  /**
   * The image prefix of a batch: [B, N, D] with a mask that is 1 on the N slots of rows with an image and 0
   * on rows without; undefined when no row has one. Runs in the caller's tidy (or gradient tape).
   */
  imagePrefix(images: RowImages, rows: number, training = false): PrefixEmbeddings | undefined {
    if (images.length !== rows) throw new ShapeError(`images has ${images.length} entries but the batch has ${rows} rows`, { path: 'images' });
    const present = images.flatMap((image, b) => (image === undefined ? [] : [b]));
    if (present.length === 0) return undefined;
    const tokens = this.encoder.forward(
      present.map((b) => images[b] as PixelImage),
      { ...(this.visionHooks === undefined ? {} : { hooks: this.visionHooks }), training },
    ); // [M, N, Dv]
    const projected = this.projector.apply(tokens); // [M, N, D]
    const n = this.encoder.tokensPerImage;
    let embeddings = projected;
    if (present.length < rows) {
      // Rows without an image read slot M, a block of zeros (masked out anyway).
      const zeros = tf.zeros([1, n, this.base.config.dim]); // [1, N, D]
      const slot = images.map((image, b) => (image === undefined ? present.length : present.indexOf(b)));
      embeddings = tf.gather(tf.concat([projected, zeros], 0), tf.tensor1d(slot, 'int32')) as tf.Tensor3D; // [B, N, D]
    }
    const mask = images.map((image) => Array.from({ length: n }, () => (image === undefined ? 0 : 1)));
    return { embeddings, mask };
  }

  forward(options: MultimodalForwardOptions): tf.Tensor {
    this.checkLive();
    const { images, ...rest } = options;
    if (images === undefined) return this.language.forward(rest);
    return tf.tidy(() => {
      const prefix = this.imagePrefix(images, rest.ids.length, rest.training ?? false);
      return this.language.forward(prefix === undefined ? rest : { ...rest, prefix });
    });
  }

  /** Greedy or sampled generation with each row's image before its prompt (the KV cache keeps the image tokens). */
  generate(prompts: readonly (readonly number[])[], options: MultimodalGenerateOptions): number[][] {
    this.checkLive();
    const { images, ...rest } = options;
    if (images === undefined) return this.language.generate(prompts, rest);
    const prefix = this.keptPrefix(images, prompts.length);
    try {
      return this.language.generate(prompts, prefix === undefined ? rest : { ...rest, prefix });
    } finally {
      prefix?.embeddings.dispose();
    }
  }

  /**
   * `generate` with asynchronous reads: works on every backend (webgpu included). The image prefix is built
   * once and freed when the generation ends (or is abandoned).
   */
  generateAsync(prompts: readonly (readonly number[])[], options: MultimodalGenerateOptions): Promise<number[][]> {
    return collectSteps(prompts, this.generateStepsAsync(prompts, options));
  }

  /** Step-by-step generation with asynchronous reads (each yield: one new token per row, −1 once a row stopped). */
  async *generateStepsAsync(prompts: readonly (readonly number[])[], options: MultimodalGenerateOptions): AsyncGenerator<number[], void, undefined> {
    this.checkLive();
    const { images, ...rest } = options;
    if (images === undefined) {
      yield* this.language.generateStepsAsync(prompts, rest);
      return;
    }
    const prefix = this.keptPrefix(images, prompts.length);
    try {
      yield* this.language.generateStepsAsync(prompts, prefix === undefined ? rest : { ...rest, prefix });
    } finally {
      prefix?.embeddings.dispose();
    }
  }

  /** The image prefix outside any tidy: the caller disposes its embeddings. */
  private keptPrefix(images: RowImages, rows: number): PrefixEmbeddings | undefined {
    let prefix: PrefixEmbeddings | undefined;
    tf.tidy(() => {
      const built = this.imagePrefix(images, rows);
      if (built !== undefined) prefix = { embeddings: tf.keep(built.embeddings), ...(built.mask ? { mask: built.mask } : {}) };
    });
    return prefix;
  }

  /** Trainable variables by stable name: the language model's, `projector/W1…b2`, `vision/<adapter>/<layer>|<point>/<i>`. */
  namedVariables(): Map<string, tf.Variable> {
    const named = this.language.namedVariables();
    const [w1, b1, w2, b2] = this.projector.variables() as [tf.Variable, tf.Variable, tf.Variable, tf.Variable];
    named.set('projector/W1', w1).set('projector/b1', b1).set('projector/W2', w2).set('projector/b2', b2);
    for (const adapter of this.visionAdapters.values()) {
      for (const [key, module] of adapter.modules) module.variables().forEach((v, i) => named.set(`vision/${adapter.name}/${key}/${i}`, v));
    }
    return named;
  }

  variables(): tf.Variable[] {
    return [...this.namedVariables().values()];
  }

  /** The language model's report with the projector and vision adapters added to the trainable, the encoder to the frozen. */
  parameterReport(): ParameterReport & { readonly projector: number; readonly visionAdapters: number; readonly encoder: number } {
    const report = this.language.parameterReport();
    const projector = this.projector.parameterCount;
    const visionAdapters = [...this.visionAdapters.values()].reduce((s, a) => s + a.parameterCount(), 0);
    const encoder = this.encoder.parameterCount;
    const trainable = report.trainable + projector + visionAdapters;
    const frozen = report.frozen + encoder;
    return {
      ...report,
      trainable,
      frozen,
      trainableFraction: trainable / (trainable + frozen),
      trainableBytes: trainable * 4,
      frozenBytes: frozen * 4,
      projector,
      visionAdapters,
      encoder,
    };
  }

  /** Frees the projector, the vision adapters and the language adapters; the two frozen bases are the caller's. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.projector.dispose();
    for (const a of this.visionAdapters.values()) a.dispose();
    this.language.dispose();
  }

  private checkLive(): void {
    if (this.disposed) throw new Error('MultimodalModel used after dispose()');
  }
}
