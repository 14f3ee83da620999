/**
 * PEFT LoRA adapter directories for the runtime benchmarks: each adapter is created with random A and B
 * (its own seed, so every adapter has different weights), written with writePeftAdapter exactly as a user's
 * `PeftModel.save_pretrained` output would be laid out, and freed; the runtime then loads the directories
 * through its ordinary `{ kind: 'peft', dir }` path. Everything lives in one temp directory.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Transformer } from '../../src/base/transformer.js';
import { writePeftAdapter } from '../../src/io/peft-adapter.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { loraAdapter } from './specs.js';

export interface PeftDirs {
  /** One directory per adapter, in creation order. */
  readonly dirs: readonly string[];
  /** Removes the temp directory. */
  remove(): Promise<void>;
}

export interface PeftDirsOptions {
  readonly count: number;
  readonly r: number;
  readonly sites: 'all-linear' | readonly string[];
  /** Seed of the first adapter (adapter i uses seed + i). */
  readonly seed?: number;
}

/** Writes `count` random LoRA adapters for `base` as PEFT directories. */
export async function writeLoraDirs(base: Transformer, options: PeftDirsOptions): Promise<PeftDirs> {
  const root = await mkdtemp(join(tmpdir(), 'routed-peft-bench-'));
  const dirs: string[] = [];
  try {
    for (let i = 0; i < options.count; i++) {
      const name = `lora${i}`;
      const model = AdaptedModel.create(base, { seed: (options.seed ?? 1) + i, adapters: [loraAdapter(name, { r: options.r, sites: options.sites })] });
      try {
        const instance = model.adapters.get(name);
        if (instance === undefined) throw new Error(`adapter ${name} missing`);
        const dir = join(root, name);
        await writePeftAdapter(dir, instance, base);
        dirs.push(dir);
      } finally {
        model.dispose();
      }
    }
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  return { dirs, remove: () => rm(root, { recursive: true, force: true }) };
}

/** Bytes of one LoRA adapter's variables: Σ over layers and sites of r·(I + O) float32 values. */
export function loraBytes(base: Transformer, r: number, sites: readonly string[]): number {
  let values = 0;
  for (const layer of base.weights.layers) {
    for (const site of sites) {
      const weight = layer.sites[site as keyof typeof layer.sites]?.weight; // [I, O]
      if (weight === undefined) throw new Error(`the base has no site ${site}`);
      const [inputs, outputs] = weight.shape as [number, number];
      values += r * (inputs + outputs);
    }
  }
  return values * 4;
}
