// Shared fixtures for the runtime tests: a tiny llama, PEFT adapter directories written with
// writePeftAdapter, and routed-model directories (token-level top-k, sequence-level soft, switch) written
// with saveRoutedModel — all into one temp directory.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { writePeftAdapter } from '../../src/io/peft-adapter.js';
import { saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { AdapterInstance } from '../../src/adapters/instance.js';
import { tinyLlama } from '../helpers/tiny-models.js';

export const routers = builtinRouters();

export const PEFT_NAMES = ['a', 'b', 'c', 'a2'] as const;
export type PeftName = (typeof PEFT_NAMES)[number];

export const lora = (name: string, sites: string[] = ['attn.q', 'attn.v', 'mlp.down']) => ({
  kind: 'lora',
  name,
  r: 2,
  alpha: 4,
  init: 'random',
  targets: { sites },
});

export const ROUTED_SPEC = {
  seed: 5,
  adapters: [lora('e0'), lora('e1'), lora('e2', ['attn.k', 'mlp.up'])],
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 2 }, nullExpert: true },
};

export const SEQUENCE_SPEC = {
  seed: 6,
  adapters: [lora('s0'), lora('s1'), { kind: 'bottleneck', name: 'bn', placement: 'houlsby' }],
  composition: { kind: 'route', experts: ['s0', 's1', 'bn'], router: { kind: 'soft' }, granularity: 'sequence' },
};

export const SEQUENCE_TOPK_SPEC = {
  seed: 9,
  adapters: [lora('t0'), lora('t1', ['attn.o', 'mlp.gate'])],
  composition: { kind: 'route', experts: ['t0', 't1'], router: { kind: 'top-k', k: 1 }, granularity: 'sequence', placement: 'layer' },
};

export const SWITCH_SPEC = {
  seed: 7,
  adapters: [lora('w0'), lora('w1')],
  composition: { kind: 'route', experts: ['w0', 'w1'], router: { kind: 'switch', capacityFactor: 1 } },
};

export const PREFIX_SPEC = {
  seed: 8,
  adapters: [{ kind: 'prefix', name: 'p', prefixLength: 3 }, lora('pl')],
};

export interface RuntimeFixture {
  readonly base: Transformer;
  readonly dir: string;
  /** PEFT adapter directories by name. */
  readonly peft: Readonly<Record<PeftName, string>>;
  /** Routed-model directories. */
  readonly routed: string;
  readonly sequence: string;
  readonly sequenceTopK: string;
  readonly switched: string;
  /** The model whose adapters were written as PEFT dirs (kept for reference computations; dispose() frees it). */
  readonly source: AdaptedModel;
  dispose(): Promise<void>;
}

export async function makeFixture(): Promise<RuntimeFixture> {
  const base = tinyLlama({ maxSeqLen: 160 });
  const dir = await mkdtemp(join(tmpdir(), 'routed-runtime-'));
  const source = AdaptedModel.create(base, { seed: 3, adapters: PEFT_NAMES.map((n) => lora(n)) });
  const peft = {} as Record<PeftName, string>;
  for (const name of PEFT_NAMES) {
    peft[name] = join(dir, `peft-${name}`);
    await writePeftAdapter(peft[name], source.adapters.get(name) as AdapterInstance, base);
  }
  const save = async (spec: unknown, name: string): Promise<string> => {
    const model = AdaptedModel.create(base, spec, { routers });
    try {
      await saveRoutedModel(join(dir, name), model);
    } finally {
      model.dispose();
    }
    return join(dir, name);
  };
  const routed = await save(ROUTED_SPEC, 'routed');
  const sequence = await save(SEQUENCE_SPEC, 'sequence');
  const sequenceTopK = await save(SEQUENCE_TOPK_SPEC, 'sequence-top-k');
  const switched = await save(SWITCH_SPEC, 'switch');
  return {
    base,
    dir,
    peft,
    routed,
    sequence,
    sequenceTopK,
    switched,
    source,
    dispose: async () => {
      source.dispose();
      base.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A deterministic prompt of n tokens in [3, 31] (avoids BOS 1 / EOS 2). */
export function prompt(n: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7 + salt * 13 + 5) % 29));
}
