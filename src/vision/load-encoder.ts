/**
 * Vision encoder directories: a Hugging Face ViT layout — config.json (model_type "vit") and
 * model.safetensors with ViTModel's tensor names (optionally prefixed `vit.`, as ViTForImageClassification
 * saves them). Linear weights are [out, in] and the patch convolution [Dv, C, p, p]; both are stored [in, out]
 * here, as the language model's sites are. A tensor the encoder would not read (a pooler, a classifier) is
 * refused by name, never silently dropped.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { readJsonFile } from '../base/checkpoints/hf-model-dir.js';
import type { SiteName } from '../base/sites.js';
import type { LayerWeights, LinearWeights, NormWeights } from '../base/weights.js';
import { CheckpointError } from '../errors.js';
import { assertFiniteTensor } from '../formats/finite.js';
import { takeTensor, transpose2d, type HostTensor, type TensorSource } from '../formats/host-tensors.js';
import { decodeFloat32, readSafetensorsFile, writeSafetensorsFile, type TensorToWrite } from '../formats/safetensors.js';
import { type VisionConfig, patchCount, visionConfigFromHf, visionConfigToHf } from './encoder-config.js';
import { VisionEncoder, type VisionWeights } from './encoder.js';

/** ViTModel module path of each site, relative to `encoder.layer.{i}.`. */
export const VIT_SITE_MODULES: Readonly<Partial<Record<SiteName, string>>> = {
  'attn.q': 'attention.attention.query',
  'attn.k': 'attention.attention.key',
  'attn.v': 'attention.attention.value',
  'attn.o': 'attention.output.dense',
  'mlp.up': 'intermediate.dense',
  'mlp.down': 'output.dense',
};

function siteWidths(config: VisionConfig, site: SiteName): [number, number] {
  if (site === 'mlp.up') return [config.hiddenDim, config.dim];
  if (site === 'mlp.down') return [config.dim, config.hiddenDim];
  return [config.dim, config.dim];
}

function hasBias(config: VisionConfig, site: SiteName): boolean {
  return config.qkvBias || !['attn.q', 'attn.k', 'attn.v'].includes(site);
}

/** Builds the encoder's tensors from a source in ViT naming (in a tidy: nothing leaks when a tensor is missing). */
export function buildVisionEncoder(config: VisionConfig, source: TensorSource): VisionEncoder {
  const prefix = source.has('vit.embeddings.cls_token') ? 'vit.' : '';
  const used = new Set<string>();
  const take = (name: string, shape: readonly number[]): HostTensor => {
    used.add(`${prefix}${name}`);
    return takeTensor(source, `${prefix}${name}`, shape);
  };
  const { dim } = config;
  const tokens = patchCount(config) + 1;
  const k = 3 * config.patchSize ** 2;
  const weights = tf.tidy(() => {
    const vector = (name: string, size: number): tf.Tensor1D => tf.tensor1d(take(name, [size]).values);
    const norm = (name: string): NormWeights => ({ weight: vector(`${name}.weight`, dim), bias: vector(`${name}.bias`, dim) });
    /** A linear weight [O, I], stored [I, O]. */
    const linear = (name: string, [out, inputs]: [number, number], bias: boolean): LinearWeights => ({
      weight: tf.tensor2d(transpose2d(take(`${name}.weight`, [out, inputs]).values, out, inputs), [inputs, out]),
      ...(bias ? { bias: vector(`${name}.bias`, out) } : {}),
    });
    const layers: LayerWeights[] = [];
    for (let i = 0; i < config.nLayers; i++) {
      const at = `encoder.layer.${i}.`;
      const sites: Partial<Record<SiteName, LinearWeights>> = {};
      for (const [site, module] of Object.entries(VIT_SITE_MODULES) as [SiteName, string][]) {
        sites[site] = linear(`${at}${module}`, siteWidths(config, site), hasBias(config, site));
      }
      layers.push({ attnNorm: norm(`${at}layernorm_before`), mlpNorm: norm(`${at}layernorm_after`), sites });
    }
    const conv = take('embeddings.patch_embeddings.projection.weight', [dim, 3, config.patchSize, config.patchSize]).values; // [Dv, C, p, p]
    const built: VisionWeights = {
      patchWeight: tf.tensor2d(transpose2d(conv, dim, k), [k, dim]), // [K, Dv]
      patchBias: vector('embeddings.patch_embeddings.projection.bias', dim),
      classToken: tf.tensor2d(take('embeddings.cls_token', [1, 1, dim]).values, [1, dim]),
      positions: tf.tensor2d(take('embeddings.position_embeddings', [1, tokens, dim]).values, [tokens, dim]),
      layers,
      finalNorm: norm('layernorm'),
    };
    return built as unknown as tf.TensorContainer;
  }) as unknown as VisionWeights;
  const encoder = new VisionEncoder(config, weights);
  const unused = [...source.names()].filter((name) => !used.has(name));
  if (unused.length > 0) {
    encoder.dispose();
    throw new CheckpointError(
      `${unused.length} tensor(s) are not used by the vision encoder: ${unused.slice(0, 8).join(', ')}${unused.length > 8 ? ', …' : ''}`,
      {
        path: source.origin,
        hint: 'The encoder reads a ViTModel (patch embedding, class token, positions, layers, final norm); save the encoder without poolers or heads',
      },
    );
  }
  return encoder;
}

/** Loads a vision encoder directory (config.json + model.safetensors); non-finite weights are refused. */
export async function loadVisionEncoder(path: string): Promise<VisionEncoder> {
  const dir = resolve(path);
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) {
    throw new CheckpointError('no config.json in the vision encoder directory', {
      path: dir,
      hint: 'Pass a directory holding config.json and model.safetensors',
    });
  }
  const config = visionConfigFromHf(await readJsonFile(configPath, 'config.json'), configPath);
  const file = join(dir, 'model.safetensors');
  if (!existsSync(file)) throw new CheckpointError('no model.safetensors in the vision encoder directory', { path: dir });
  const parsed = await readSafetensorsFile(file);
  const source: TensorSource = {
    origin: dir,
    has: (name) => parsed.entries.has(name),
    get: (name) => {
      const entry = parsed.entries.get(name);
      if (entry === undefined) return undefined;
      const values = decodeFloat32(entry, { source: file });
      assertFiniteTensor(values, name, file, {});
      return { shape: entry.shape, values };
    },
    names: () => parsed.entries.keys(),
  };
  return buildVisionEncoder(config, source);
}

/** The encoder's tensors in ViT naming and layout (what saveVisionEncoder writes). */
export function visionEncoderTensors(encoder: VisionEncoder): Map<string, TensorToWrite> {
  const { config, weights } = encoder;
  const { dim } = config;
  const k = 3 * config.patchSize ** 2;
  const out = new Map<string, TensorToWrite>();
  const put = (name: string, shape: readonly number[], data: Float32Array): void => {
    out.set(name, { dtype: 'F32', shape, data });
  };
  const values = (t: tf.Tensor): Float32Array => t.dataSync() as Float32Array;
  put('embeddings.cls_token', [1, 1, dim], values(weights.classToken));
  put('embeddings.position_embeddings', [1, patchCount(config) + 1, dim], values(weights.positions));
  put('embeddings.patch_embeddings.projection.weight', [dim, 3, config.patchSize, config.patchSize], transpose2d(values(weights.patchWeight), k, dim));
  put('embeddings.patch_embeddings.projection.bias', [dim], values(weights.patchBias));
  weights.layers.forEach((layer, i) => {
    const at = `encoder.layer.${i}.`;
    for (const [site, module] of Object.entries(VIT_SITE_MODULES) as [SiteName, string][]) {
      const linear = layer.sites[site] as LinearWeights;
      const [o, inputs] = siteWidths(config, site);
      put(`${at}${module}.weight`, [o, inputs], transpose2d(values(linear.weight), inputs, o));
      if (linear.bias !== undefined) put(`${at}${module}.bias`, [o], values(linear.bias));
    }
    for (const [name, norm] of [
      ['layernorm_before', layer.attnNorm],
      ['layernorm_after', layer.mlpNorm],
    ] as const) {
      put(`${at}${name}.weight`, [dim], values(norm.weight));
      if (norm.bias !== undefined) put(`${at}${name}.bias`, [dim], values(norm.bias));
    }
  });
  put('layernorm.weight', [dim], values(weights.finalNorm.weight));
  if (weights.finalNorm.bias !== undefined) put('layernorm.bias', [dim], values(weights.finalNorm.bias));
  return out;
}

/** Writes config.json and model.safetensors (ViT naming) into `dir`. */
export async function saveVisionEncoder(dir: string, encoder: VisionEncoder): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(visionConfigToHf(encoder.config), null, 2)}\n`);
  await writeSafetensorsFile(join(dir, 'model.safetensors'), visionEncoderTensors(encoder), { format: 'pt' });
}
