// A tiny ViT with seeded random weights in Hugging Face ViT naming (24×24 images, 12×12 patches: 4 tokens), built
// through the library's builder like a loaded directory.
import { seededRandom } from '../../src/base/sampling.js';
import { mapSource, type HostTensor } from '../../src/formats/host-tensors.js';
import { VisionConfig } from '../../src/vision/encoder-config.js';
import type { VisionEncoder } from '../../src/vision/encoder.js';
import { VIT_SITE_MODULES, buildVisionEncoder } from '../../src/vision/load-encoder.js';

export const TINY_VISION: VisionConfig = VisionConfig.parse({
  imageSize: 24,
  patchSize: 12,
  channels: 3,
  dim: 8,
  nLayers: 1,
  nHeads: 2,
  hiddenDim: 16,
  normEps: 1e-6,
  activation: 'gelu',
  qkvBias: true,
});

/** The tensors of a random tiny ViT, by ViTModel name (HF layout); `extra` adds or replaces some. */
export function tinyVitTensors(seed = 7, extra: Record<string, HostTensor> = {}): Map<string, HostTensor> {
  const random = seededRandom(seed);
  const c = TINY_VISION;
  const tensor = (shape: number[], scale = 0.3): HostTensor => ({
    shape,
    values: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (random() - 0.5) * 2 * scale),
  });
  const tensors = new Map<string, HostTensor>([
    ['embeddings.cls_token', tensor([1, 1, c.dim])],
    ['embeddings.position_embeddings', tensor([1, 5, c.dim])],
    ['embeddings.patch_embeddings.projection.weight', tensor([c.dim, 3, c.patchSize, c.patchSize], 0.05)],
    ['embeddings.patch_embeddings.projection.bias', tensor([c.dim])],
    ['layernorm.weight', tensor([c.dim])],
    ['layernorm.bias', tensor([c.dim])],
  ]);
  for (const [site, module] of Object.entries(VIT_SITE_MODULES)) {
    const [o, i] = site === 'mlp.up' ? [c.hiddenDim, c.dim] : site === 'mlp.down' ? [c.dim, c.hiddenDim] : [c.dim, c.dim];
    tensors.set(`encoder.layer.0.${module}.weight`, tensor([o, i]));
    tensors.set(`encoder.layer.0.${module}.bias`, tensor([o]));
  }
  for (const norm of ['layernorm_before', 'layernorm_after']) {
    tensors.set(`encoder.layer.0.${norm}.weight`, tensor([c.dim]));
    tensors.set(`encoder.layer.0.${norm}.bias`, tensor([c.dim]));
  }
  for (const [name, value] of Object.entries(extra)) tensors.set(name, value);
  return tensors;
}

export function tinyVisionEncoder(seed = 7): VisionEncoder {
  return buildVisionEncoder(TINY_VISION, mapSource('tiny-vit', tinyVitTensors(seed)));
}
