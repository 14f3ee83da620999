// Hostile inputs of the five kinds the library reads from untrusted files — safetensors files, specs, PEFT
// adapter configs, routed-model manifests and JSONL rows — as seeded fast-check arbitraries, and one runner
// per kind that feeds a case to the real parsers and loaders and classifies the outcome:
//
//   ok       accepted (and, where it builds something, built and disposed)
//   typed    refused with a RoutedPeftError (the contract: typed, with a message and a path)
//   untyped  anything else thrown: a bug (RangeError, TypeError, stack overflow, …)
//
// Used by test/hostile/fuzz.test.ts (a modest budget in `npm test`) and benchmarks/fuzz-inputs.ts (≥ 20,000
// cases, with a watchdog that counts hangs).
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { builtinRouters } from '../../routers/index.js';
import { peftTargetsToSites, readPeftAdapter, writePeftAdapter } from '../../src/io/peft-adapter.js';
import { parsePeftLoraConfig } from '../../src/io/peft-config.js';
import { MANIFEST_FILE, loadRoutedModel, saveRoutedModel } from '../../src/io/routed-model-dir.js';
import type { Transformer } from '../../src/base/transformer.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../../src/compose/model-spec.js';
import { RoutedPeftError } from '../../src/errors.js';
import { assertFiniteTensor } from '../../src/formats/finite.js';
import { decodeEntry, dtypeByteSize, parseSafetensors, serializeSafetensors, type SafetensorsDtype } from '../../src/formats/safetensors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { makeBatches, tokenizeExamples } from '../../src/train/batches.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';
import { tinyLlama } from '../helpers/tiny-models.js';

export type Outcome = 'ok' | 'typed' | 'untyped';
export type InputKind = 'safetensors' | 'spec' | 'adapter-config' | 'manifest' | 'jsonl';
export const INPUT_KINDS: readonly InputKind[] = ['safetensors', 'spec', 'adapter-config', 'manifest', 'jsonl'];

export interface CaseResult {
  readonly outcome: Outcome;
  /** The error's name and message (and, for untyped errors, the stack head). */
  readonly detail?: string;
  readonly ms: number;
}

// ---------------------------------------------------------------------------------------------------------
// Hostile values

export const HOSTILE_NUMBERS: readonly number[] = [
  0,
  -1,
  1,
  2,
  1.5,
  -0.5,
  1e9,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 53 + 2,
  1e308,
  -1e308,
  Number.MIN_VALUE,
  65_536,
  65_537,
  1e7,
];
/** Catastrophic (for backtracking engines) and unsupported regular expressions. */
export const HOSTILE_REGEXES: readonly string[] = [
  '(a+)+$',
  '([a-z_.0-9]+)+X',
  '(.*.*)*x',
  '(x+x+)+y',
  '((.*)*)*$',
  '(?=a)b',
  '(a)\\1',
  '[',
  'a{1001}',
  '.*q_proj',
  'model\\.layers\\.\\d+\\.self_attn\\.(q|v)_proj',
  '(.+)+\\.weight',
];
export const HOSTILE_STRINGS: readonly string[] = [
  '',
  ' ',
  '../../../../etc/passwd',
  '/etc/passwd',
  'adapters/../../outside',
  'C:\\Windows',
  '\u0000',
  '\ud800',
  '__proto__',
  'constructor',
  'default',
  'none',
  'route0',
  '..',
  '.',
  'x'.repeat(300),
  'attn.*',
  '/^attn\\.(q|v)$/',
  '/(a+)+$/',
  '/([a-z.]+)+X/',
  'layers.99.attn.q',
  'layers.1.attn.v',
  'all-linear',
  ...HOSTILE_REGEXES,
];

const hostileNumber = fc.constantFrom(...HOSTILE_NUMBERS);
const hostileString = fc.constantFrom(...HOSTILE_STRINGS);
/** Any JSON-able value, biased towards what breaks parsers. */
const hostileLeaf: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: hostileNumber },
  { weight: 3, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.constantFrom(null, true, false, [], {}) },
  { weight: 1, arbitrary: fc.integer({ min: -5, max: 70 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
);

/** Nested arrays `depth` deep, built iteratively (no recursion anywhere). */
export function deepArray(depth: number, leaf: unknown = 1): unknown {
  let value: unknown = leaf;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

/** Deeply nested JSON text (`[[[…1…]]]`), for places that parse JSON. */
export function deepJsonText(depth: number): string {
  return `${'['.repeat(depth)}1${']'.repeat(depth)}`;
}

// ---------------------------------------------------------------------------------------------------------
// Mutating JSON-able trees

type Json = unknown;

function paths(value: Json, limit = 200): (string | number)[][] {
  const out: (string | number)[][] = [[]];
  const stack: { value: Json; path: (string | number)[] }[] = [{ value, path: [] }];
  while (stack.length > 0 && out.length < limit) {
    const { value: v, path } = stack.pop() as { value: Json; path: (string | number)[] };
    if (v === null || typeof v !== 'object') continue;
    const entries: [string | number, Json][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v as Record<string, Json>);
    for (const [k, child] of entries) {
      out.push([...path, k]);
      stack.push({ value: child, path: [...path, k] });
    }
  }
  return out;
}

function setAt(root: Json, path: readonly (string | number)[], value: Json): Json {
  if (path.length === 0) return value;
  const copy = JSON.parse(JSON.stringify(root)) as Json;
  let node = copy as Record<string | number, Json>;
  for (const key of path.slice(0, -1)) node = node[key] as Record<string | number, Json>;
  node[path[path.length - 1] as string | number] = value;
  return copy;
}

function deleteAt(root: Json, path: readonly (string | number)[]): Json {
  if (path.length === 0) return {};
  const copy = JSON.parse(JSON.stringify(root)) as Json;
  let node = copy as Record<string | number, Json>;
  for (const key of path.slice(0, -1)) node = node[key] as Record<string | number, Json>;
  const last = path[path.length - 1] as string | number;
  if (Array.isArray(node)) node.splice(Number(last), 1);
  else delete node[last];
  return copy;
}

/** One to three random edits of a JSON tree: replace a value (by a hostile one), delete a key or item, or add a key. */
function mutateJson(base: Json): fc.Arbitrary<Json> {
  const candidates = paths(base);
  const edit = fc.record({
    path: fc.constantFrom(...candidates),
    op: fc.constantFrom('replace', 'replace', 'replace', 'delete', 'add'),
    value: hostileLeaf,
    key: fc.oneof(hostileString, fc.string({ maxLength: 8 })),
  });
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) => {
    let value = base;
    for (const e of edits) {
      const existing = paths(value);
      const path = existing.find((p) => p.join('\u0001') === e.path.join('\u0001')) ?? existing[existing.length - 1] ?? [];
      if (e.op === 'replace') value = setAt(value, path, e.value);
      else if (e.op === 'delete') value = deleteAt(value, path);
      else {
        const target = path.length === 0 ? value : path.reduce<Json>((n, k) => (n as Record<string | number, Json>)[k], value);
        if (target !== null && typeof target === 'object' && !Array.isArray(target)) value = setAt(value, [...path, e.key], e.value);
        else value = setAt(value, path, { [e.key]: e.value });
      }
    }
    return value;
  });
}

// ---------------------------------------------------------------------------------------------------------
// 1. safetensors files

const DTYPES: readonly SafetensorsDtype[] = ['BOOL', 'U8', 'I8', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'];

const validSafetensors: fc.Arbitrary<Uint8Array> = fc
  .array(
    fc.record({
      name: fc.oneof(fc.constantFrom('a', 'b', 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', '0', '__x'), fc.string({ maxLength: 10 })),
      dtype: fc.constantFrom(...DTYPES),
      shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
      fill: fc.constantFrom('random', 'nan', 'inf', 'zero'),
      seed: fc.integer({ min: 0, max: 1000 }),
    }),
    { maxLength: 4 },
  )
  .map((tensors) => {
    const map = new Map<string, { dtype: SafetensorsDtype; shape: number[]; data: Uint8Array }>();
    for (const t of tensors) {
      if (t.name === '__metadata__' || map.has(t.name)) continue;
      const bytes = new Uint8Array(t.shape.reduce((a, b) => a * b, 1) * dtypeByteSize(t.dtype));
      let x = t.seed + 1;
      for (let i = 0; i < bytes.length; i++) {
        x = (x * 1103515245 + 12345) % 2 ** 31;
        bytes[i] = t.fill === 'zero' ? 0 : x & 0xff;
      }
      if ((t.fill === 'nan' || t.fill === 'inf') && t.dtype === 'F32' && bytes.length >= 4) {
        new DataView(bytes.buffer).setFloat32(0, t.fill === 'nan' ? Number.NaN : Number.POSITIVE_INFINITY, true);
      }
      map.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytes });
    }
    return serializeSafetensors(map, { format: 'pt' });
  });

function withHeader(bytes: Uint8Array, header: string, lengthOverride?: bigint): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const data = bytes.subarray(8 + n);
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function headerOf(bytes: Uint8Array): Json {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Json;
}

/** Valid files mutated: header edits, raw header text, byte flips, truncation, length field, garbage. */
export const safetensorsCase: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 4, arbitrary: validSafetensors.chain((bytes) => mutateJson(headerOf(bytes)).map((h) => withHeader(bytes, JSON.stringify(h)))) },
  {
    weight: 2,
    arbitrary: fc.tuple(validSafetensors, fc.constantFrom('dup', 'deep', 'bom', 'nul', 'proto', 'huge-offsets', 'trailing')).map(([bytes, how]) => {
      const text = JSON.stringify(headerOf(bytes));
      const inner = text.slice(1, -1);
      const first = inner === '' ? '' : `${inner},`;
      switch (how) {
        case 'dup':
          return withHeader(bytes, `{${first}"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`);
        case 'deep':
          return withHeader(bytes, `{${first}"d":${deepJsonText(50_000)}}`);
        case 'bom':
          return withHeader(bytes, `\ufeff${text}`);
        case 'nul':
          return withHeader(bytes, `${text}\u0000\u0000`);
        case 'proto':
          return withHeader(bytes, `{${first}"__proto__":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"__metadata__":{"__proto__":"x"}}`);
        case 'huge-offsets':
          return withHeader(bytes, `{"a":{"dtype":"F32","shape":[1e15,1e15],"data_offsets":[0,9007199254740993]}}`);
        default:
          return withHeader(bytes, `${text}   x`);
      }
    }),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(validSafetensors, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }))
      .map(([bytes, flips]) => {
        const out = Uint8Array.from(bytes);
        for (const [at, value] of flips) if (out.length > 0) out[at % out.length] = value;
        return out;
      }),
  },
  { weight: 1, arbitrary: fc.tuple(validSafetensors, fc.nat()).map(([bytes, cut]) => bytes.subarray(0, cut % (bytes.length + 1))) },
  {
    weight: 1,
    arbitrary: fc.tuple(validSafetensors, fc.constantFrom(0n, 1n, 7n, 2n ** 32n, 100_000_001n, 2n ** 63n, 2n ** 64n - 1n)).map(([bytes, n]) => {
      const out = Uint8Array.from(bytes);
      new DataView(out.buffer).setBigUint64(0, n, true);
      return out;
    }),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
);

// ---------------------------------------------------------------------------------------------------------
// 2. specs (objects handed to AdaptedModel.create, as a library user or a spec file would)

const NAMES = ['e0', 'e1', 'e2'] as const;
const siteEntry = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('attn.q', 'attn.v', 'mlp.down', 'attn.*', '/^attn\\.(q|v)$/') },
  { weight: 2, arbitrary: fc.constantFrom('nope', '/(a+)+$/', '/([a-z.]+)+X/', '/(?=a)/', '/(.*.*)*x/') },
  { weight: 1, arbitrary: hostileString },
);
const patternKey = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('attn.q', 'attn.v', 'layers.0.attn.q', 'layers.1.attn.v', 'attn.*') },
  { weight: 2, arbitrary: fc.constantFrom('mlp.*', 'attn.k', 'layers.9.attn.q', '/(a+)+$/', '/([a-z.]+)+X/') },
  { weight: 1, arbitrary: hostileString },
);
/** Mostly a valid small size, sometimes a hostile number or value (one bad field per spec reaches deeper code). */
const size = fc.oneof(
  { weight: 14, arbitrary: fc.integer({ min: 1, max: 8 }) },
  { weight: 1, arbitrary: hostileNumber },
  { weight: 1, arbitrary: hostileLeaf },
);

const adapterSpec = fc.record(
  {
    kind: fc.oneof({ weight: 30, arbitrary: fc.constantFrom('lora', 'lora', 'bottleneck', 'prefix', 'ia3') }, { weight: 1, arbitrary: hostileLeaf }),
    name: fc.oneof({ weight: 30, arbitrary: fc.constantFrom(...NAMES) }, { weight: 1, arbitrary: hostileLeaf }),
    r: size,
    alpha: size,
    rankPattern: fc.dictionary(patternKey, size, { maxKeys: 3, noNullPrototype: true }),
    alphaPattern: fc.dictionary(patternKey, size, { maxKeys: 2, noNullPrototype: true }),
    targets: fc.record(
      {
        sites: fc.oneof(
          { weight: 8, arbitrary: fc.array(siteEntry, { minLength: 1, maxLength: 3 }) },
          { weight: 2, arbitrary: fc.constant('all-linear') },
          { weight: 1, arbitrary: hostileLeaf },
        ),
        layers: fc.oneof(
          { weight: 6, arbitrary: fc.constant('all') },
          { weight: 3, arbitrary: fc.array(fc.integer({ min: 0, max: 1 }), { minLength: 1, maxLength: 2 }) },
          { weight: 1, arbitrary: fc.array(size, { minLength: 1, maxLength: 2 }) },
        ),
      },
      { requiredKeys: [] },
    ),
    bottleneckDim: size,
    reductionFactor: size,
    prefixLength: size,
    reparameterize: fc.boolean(),
    reparamHiddenDim: size,
    placement: fc.constantFrom('houlsby', 'pfeiffer'),
    dropout: fc.oneof({ weight: 10, arbitrary: fc.constantFrom(0, 0.1) }, { weight: 1, arbitrary: hostileLeaf }),
  },
  { requiredKeys: ['kind', 'name'] },
);

/** Prunes a random record to the fields its kind has, most of the time (so some specs are valid). */
function tidyAdapter(a: Record<string, unknown>, keepAll: boolean): Record<string, unknown> {
  if (keepAll) return a;
  const common = ['kind', 'name', 'targets'];
  const byKind: Record<string, string[]> = {
    lora: ['r', 'alpha', 'rankPattern', 'alphaPattern', 'dropout'],
    bottleneck: ['bottleneckDim', 'reductionFactor', 'placement', 'dropout'],
    prefix: ['prefixLength', 'reparameterize', 'reparamHiddenDim'],
    ia3: [],
  };
  const kind = String(a['kind']);
  const keep = new Set([...common, ...(Object.hasOwn(byKind, kind) ? (byKind[kind] as string[]) : [])]);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(a)) if (keep.has(k)) out[k] = v;
  if (a['kind'] === 'bottleneck' || a['kind'] === 'prefix') {
    const targets = out['targets'] as Record<string, unknown> | undefined;
    if (targets !== undefined) out['targets'] = { ...(targets['layers'] === undefined ? {} : { layers: targets['layers'] }) };
  }
  return out;
}

const compositionTree: fc.Arbitrary<unknown> = fc.letrec<{ node: unknown }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    { weight: 8, arbitrary: fc.constantFrom(...NAMES) },
    { weight: 1, arbitrary: hostileLeaf },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constantFrom('stack', 'parallel', 'average'), children: fc.array(tie('node'), { minLength: 0, maxLength: 3 }) }),
    },
    {
      weight: 2,
      arbitrary: fc.record(
        {
          kind: fc.constant('route'),
          experts: fc.oneof(
            { weight: 8, arbitrary: fc.shuffledSubarray([...NAMES], { minLength: 1 }) },
            { weight: 1, arbitrary: fc.array(hostileString, { maxLength: 2 }) },
          ),
          router: fc.oneof(
            { weight: 4, arbitrary: fc.constantFrom({ kind: 'top-k', k: 1 }, { kind: 'soft' }, { kind: 'switch' }, { kind: 'hash' }) },
            {
              weight: 1,
              arbitrary: fc.record(
                { kind: fc.oneof(fc.constantFrom('top-k', 'top-p', 'task'), hostileString), k: size, p: hostileLeaf, mapping: hostileLeaf },
                { requiredKeys: ['kind'] },
              ),
            },
          ),
          placement: fc.constantFrom('site', 'layer', 'model'),
          readLayer: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 2 }) }, { weight: 1, arbitrary: hostileNumber }),
          granularity: fc.constantFrom('token', 'sequence'),
        },
        { requiredKeys: ['kind', 'experts', 'router'] },
      ),
    },
  ),
})).node;

/** A composition that is `depth` stacks deep, built iteratively. */
export function deepComposition(depth: number): unknown {
  let node: unknown = 'e0';
  for (let i = 0; i < depth; i++) node = { kind: 'stack', children: [node] };
  return node;
}

/** A composition that contains itself. */
export function cyclicComposition(): unknown {
  const inner: { kind: string; children: unknown[] } = { kind: 'parallel', children: ['e0'] };
  const outer = { kind: 'stack', children: [inner] };
  inner.children.push(outer);
  return outer;
}

/** A DAG whose shared subtrees expand to 2^depth paths (a tree walk would never finish). */
export function exponentialComposition(depth: number): unknown {
  let node: unknown = 'e0';
  for (let i = 0; i < depth; i++) node = { kind: 'parallel', children: [node, node] };
  return node;
}

export const specCase: fc.Arbitrary<unknown> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .tuple(
        fc.oneof({ weight: 20, arbitrary: fc.integer({ min: 0, max: 9 }) }, { weight: 1, arbitrary: hostileLeaf }),
        fc
          .array(fc.tuple(adapterSpec, fc.integer({ min: 0, max: 9 })), { minLength: 1, maxLength: 3 })
          // Names e0, e1, … in order most of the time, so compositions can name them.
          .map((list) => list.map(([a, roll], i) => tidyAdapter(roll === 0 ? a : { ...a, name: NAMES[i] }, roll === 1))),
      )
      .chain(([seed, adapters]) => {
        const names = adapters.map((a) => a['name']).filter((n): n is string => typeof n === 'string');
        const route = fc.record({
          kind: fc.constant('route'),
          experts: fc.constant(names),
          router: fc.constantFrom({ kind: 'top-k', k: 1 }, { kind: 'soft' }, { kind: 'top-p' }, { kind: 'noisy-top-k', k: 1 }),
          placement: fc.constantFrom('site', 'layer', 'model'),
          granularity: fc.constantFrom('token', 'sequence'),
          nullExpert: fc.boolean(),
        });
        const composition = fc.oneof(
          { weight: 3, arbitrary: fc.constant(undefined) },
          { weight: 3, arbitrary: route },
          { weight: 1, arbitrary: fc.constant({ kind: 'stack', children: names }) },
          { weight: 3, arbitrary: compositionTree },
        );
        return composition.map((c) => ({ seed, adapters, ...(c === undefined ? {} : { composition: c }) }) as unknown);
      }),
  },
  { weight: 1, arbitrary: mutateJson({ adapters: [{ kind: 'lora', name: 'e0', r: 2 }], composition: 'e0' }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom('deep', 'cycle', 'dag', 'deep-field').map((how) => ({
      adapters: [{ kind: 'lora', name: 'e0', r: how === 'deep-field' ? deepArray(20_000) : 2 }],
      composition: how === 'deep' ? deepComposition(10_000) : how === 'cycle' ? cyclicComposition() : how === 'dag' ? exponentialComposition(60) : 'e0',
    })),
  },
);

// ---------------------------------------------------------------------------------------------------------
// 3. PEFT adapter configs (adapter_config.json)

const VALID_PEFT_CONFIG = {
  peft_type: 'LORA',
  r: 2,
  lora_alpha: 4,
  target_modules: ['q_proj', 'v_proj'],
  lora_dropout: 0,
  bias: 'none',
  fan_in_fan_out: false,
  use_rslora: false,
  rank_pattern: {},
  alpha_pattern: {},
  layers_to_transform: null,
  task_type: 'CAUSAL_LM',
};

export const adapterConfigCase: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 5, arbitrary: mutateJson(VALID_PEFT_CONFIG) },
  {
    weight: 3,
    arbitrary: fc.record({
      peft_type: fc.oneof({ weight: 20, arbitrary: fc.constant('LORA') }, { weight: 1, arbitrary: hostileLeaf }),
      // The weights on disk are rank 2: other ranks are shape errors, which is fine, but keep most valid.
      r: fc.oneof({ weight: 6, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: size }),
      lora_alpha: size,
      target_modules: fc.oneof(
        { weight: 3, arbitrary: fc.constantFrom(...HOSTILE_REGEXES) },
        {
          weight: 3,
          arbitrary: fc.array(fc.oneof({ weight: 6, arbitrary: fc.constantFrom('q_proj', 'v_proj', 'o_proj') }, { weight: 1, arbitrary: hostileString }), {
            minLength: 1,
            maxLength: 3,
          }),
        },
        { weight: 1, arbitrary: hostileLeaf },
      ),
      rank_pattern: fc.dictionary(fc.oneof(fc.constantFrom(...HOSTILE_REGEXES), fc.constantFrom('q_proj', 'model.layers.0.self_attn.q_proj')), fc.constant(2), {
        maxKeys: 3,
        noNullPrototype: true,
      }),
      alpha_pattern: fc.dictionary(fc.constantFrom(...HOSTILE_REGEXES), size, { maxKeys: 2, noNullPrototype: true }),
      layers_to_transform: fc.oneof(
        { weight: 4, arbitrary: fc.constant(null) },
        { weight: 1, arbitrary: fc.array(size, { maxLength: 2 }) },
        { weight: 1, arbitrary: size },
      ),
      use_dora: fc.oneof({ weight: 12, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      layer_replication: fc.oneof({ weight: 12, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: hostileLeaf }),
    }),
  },
  { weight: 1, arbitrary: hostileLeaf },
);

// ---------------------------------------------------------------------------------------------------------
// 4. routed-model manifests (routed-peft.json), against a directory holding valid files

/** Path values a manifest might name: inside, outside, absolute, through a link that leads out. */
export const MANIFEST_PATHS: readonly string[] = [
  'adapters/e0',
  'adapters/e1',
  'routers.safetensors',
  '../outside',
  '../outside/e0',
  '/etc',
  'escape-link',
  'escape-link/e0',
  'adapters/../../outside',
  'adapters/e0/../../../outside',
  'C:/x',
  '',
  'nope',
];

export function manifestCase(valid: Record<string, unknown>): fc.Arbitrary<unknown> {
  return fc.oneof(
    { weight: 5, arbitrary: mutateJson(valid) },
    {
      weight: 3,
      arbitrary: fc
        .tuple(fc.constantFrom(...MANIFEST_PATHS), fc.constantFrom(...MANIFEST_PATHS), fc.constantFrom('peft', 'native', 'x'))
        .map(([a, r, format]) => {
          const adapters = { ...(valid['adapters'] as Record<string, { path: string; format: string }>) };
          const first = Object.keys(adapters)[0] as string;
          adapters[first] = { path: a, format };
          return { ...valid, adapters, routers: r };
        }),
    },
    {
      weight: 2,
      arbitrary: mutateJson(valid['spec']).map((spec) => ({ ...valid, spec })),
    },
    { weight: 1, arbitrary: hostileLeaf },
  );
}

// ---------------------------------------------------------------------------------------------------------
// 5. JSONL rows

const rowText = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.constantFrom('hello world', 'once upon a time', 'abc 123') },
  { weight: 1, arbitrary: hostileLeaf },
  { weight: 1, arbitrary: fc.integer({ min: 200, max: 5000 }).map((n) => 'word '.repeat(n)) },
);
const idValue = fc.oneof(fc.integer({ min: 0, max: 5 }), fc.constantFrom('a', 'b', 'task-x'), hostileNumber, hostileLeaf);

const jsonlRow = fc.oneof(
  { weight: 3, arbitrary: fc.record({ text: rowText, task: idValue }, { requiredKeys: ['text'] }).map((r) => JSON.stringify(r)) },
  {
    weight: 3,
    arbitrary: fc.record({ prompt: rowText, completion: rowText, task: idValue }, { requiredKeys: ['prompt', 'completion'] }).map((r) => JSON.stringify(r)),
  },
  { weight: 2, arbitrary: fc.record({ text: rowText, label: idValue, task: idValue }, { requiredKeys: ['text', 'label'] }).map((r) => JSON.stringify(r)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '{',
      '[]',
      'null',
      '{"text": }',
      '1e999',
      '"x"',
      '{"text":"a","task":1e9}',
      '{"text":"a","label":1e9}',
      '{"text":"a","task":10000000}',
    ),
  },
  { weight: 1, arbitrary: fc.constant(deepJsonText(20_000)) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 30 }) },
);

/** A well-formed row of one family (language modelling or classification) with task ids of one style. */
function wellFormedRow(family: 'lm' | 'cls', style: 'names' | 'ints'): fc.Arbitrary<string> {
  const id: fc.Arbitrary<string | number> = style === 'names' ? fc.constantFrom('a', 'b', 'task-x') : fc.integer({ min: 0, max: 5 });
  const task = fc.option(id, { nil: undefined, freq: 8 });
  const text = fc.oneof({ weight: 6, arbitrary: fc.constantFrom('hello world', 'once upon a time', 'abc 123', 'the end.') }, { weight: 3, arbitrary: rowText });
  const row =
    family === 'cls'
      ? fc.record({ text, label: fc.constantFrom('pos', 'neg'), task })
      : fc.oneof(fc.record({ text, task }), fc.record({ prompt: text, completion: text, task }));
  return row.map((r) => JSON.stringify(r));
}

/** Files of one family and id style, with a hostile row now and then (and a BOM or CRLF line ends). */
export const jsonlCase: fc.Arbitrary<string> = fc
  .tuple(fc.constantFrom('lm', 'cls'), fc.constantFrom('names', 'ints'), fc.boolean(), fc.boolean())
  .chain(([family, style, bom, crlf]) =>
    fc
      .array(fc.oneof({ weight: 5, arbitrary: wellFormedRow(family as 'lm' | 'cls', style as 'names' | 'ints') }, { weight: 1, arbitrary: jsonlRow }), {
        minLength: 1,
        maxLength: 8,
      })
      .map((rows) => `${bom ? '\ufeff' : ''}${rows.join(crlf ? '\r\n' : '\n')}\n`),
  );

// ---------------------------------------------------------------------------------------------------------
// The context the runners share

export interface FuzzContext {
  readonly base: Transformer;
  readonly tokenizer: Tokenizer;
  readonly dir: string;
  /** A directory whose files are those of a valid routed model; cases overwrite its manifest. */
  readonly routedDir: string;
  readonly validManifest: Record<string, unknown>;
  /** A PEFT adapter directory with valid weights; cases overwrite its adapter_config.json. */
  readonly peftDir: string;
  dispose(): Promise<void>;
}

const routers = builtinRouters();
const demoTokenizer = fileURLToPath(new URL('../../demo-model/tokenizer.json', import.meta.url));

export const FUZZ_SPEC = {
  seed: 1,
  adapters: [
    { kind: 'lora', name: 'e0', r: 2, alpha: 4 },
    { kind: 'lora', name: 'e1', r: 2, alpha: 4, targets: { sites: ['attn.q', 'mlp.down'] } },
    { kind: 'bottleneck', name: 'e2', bottleneckDim: 4 },
  ],
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 1 } },
};

export async function createFuzzContext(): Promise<FuzzContext> {
  const base = tinyLlama();
  const tokenizer = await loadTokenizer(demoTokenizer);
  const dir = await mkdtemp(join(tmpdir(), 'routed-peft-fuzz-'));
  // A valid routed model, saved once; its real directory is what cases point their manifests at.
  const model = AdaptedModel.create(base, FUZZ_SPEC, { routers });
  const saved = join(dir, 'saved');
  const validManifest = (await saveRoutedModel(saved, model)) as unknown as Record<string, unknown>;
  const routedDir = join(dir, 'routed');
  await mkdir(routedDir);
  const { cp } = await import('node:fs/promises');
  await cp(saved, routedDir, { recursive: true, dereference: true });
  await mkdir(join(dir, 'outside', 'e0'), { recursive: true });
  await cp(join(routedDir, 'adapters', 'e0'), join(dir, 'outside', 'e0'), { recursive: true });
  await symlink(join(dir, 'outside'), join(routedDir, 'escape-link'));
  const peftDir = join(dir, 'peft');
  await writePeftAdapter(peftDir, model.adapters.get('e0') as never, base);
  model.dispose();
  return {
    base,
    tokenizer,
    dir,
    routedDir,
    validManifest,
    peftDir,
    async dispose() {
      base.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Runners

function classify(error: unknown): Omit<CaseResult, 'ms'> {
  if (error instanceof RoutedPeftError) return { outcome: 'typed', detail: `${error.name}: ${error.message.split('\n').slice(0, 2).join(' ').slice(0, 200)}` };
  const e = error as Error;
  const stack = typeof e?.stack === 'string' ? e.stack.split('\n').slice(0, 4).join(' | ') : '';
  return { outcome: 'untyped', detail: `${e?.name ?? typeof error}: ${String(e?.message ?? error).slice(0, 300)} ${stack}` };
}

async function timed(run: () => Promise<void> | void): Promise<CaseResult> {
  const start = performance.now();
  try {
    await run();
    return { outcome: 'ok', ms: performance.now() - start };
  } catch (error) {
    return { ...classify(error), ms: performance.now() - start };
  }
}

export function runSafetensors(bytes: Uint8Array): Promise<CaseResult> {
  return timed(() => {
    const file = parseSafetensors(bytes, { source: 'fuzz.safetensors' });
    for (const entry of file.entries.values()) {
      const decoded = decodeEntry(entry, { source: 'fuzz.safetensors' });
      if (decoded.dtype === 'float32') assertFiniteTensor(decoded.values, entry.name, 'fuzz.safetensors');
    }
  });
}

export function runSpec(spec: unknown, context: FuzzContext): Promise<CaseResult> {
  return timed(() => {
    const parsed = parseAdaptedModelSpec(spec);
    checkSpecAgainstModel(parsed, context.base.config);
    const model = AdaptedModel.create(context.base, spec, { routers });
    model.dispose();
  });
}

export function runAdapterConfig(json: unknown, context: FuzzContext): Promise<CaseResult> {
  return timed(async () => {
    const { config } = parsePeftLoraConfig(json, 'adapter_config.json');
    if (config.target_modules !== null) peftTargetsToSites(config.target_modules, 'llama', { nLayers: context.base.config.nLayers });
    await writeFile(join(context.peftDir, 'adapter_config.json'), JSON.stringify(json));
    const { instance } = await readPeftAdapter(context.peftDir, context.base, { name: 'fuzz' });
    instance.dispose();
  });
}

export function runManifest(manifest: unknown, context: FuzzContext): Promise<CaseResult> {
  return timed(async () => {
    await writeFile(join(context.routedDir, MANIFEST_FILE), JSON.stringify(manifest));
    const { model } = await loadRoutedModel(context.routedDir, context.base, { routers });
    model.dispose();
  });
}

export function runJsonl(text: string, context: FuzzContext): Promise<CaseResult> {
  return timed(() => {
    const dataset = parseJsonlDataset(text, 'fuzz.jsonl');
    const tokenized = tokenizeExamples(dataset.examples, context.tokenizer, { maxLength: 32 });
    makeBatches(tokenized, { batchSize: 4, seed: 0 });
  });
}

/** Runs one generated case of `kind`. */
export function runCase(kind: InputKind, input: unknown, context: FuzzContext): Promise<CaseResult> {
  switch (kind) {
    case 'safetensors':
      return runSafetensors(input as Uint8Array);
    case 'spec':
      return runSpec(input, context);
    case 'adapter-config':
      return runAdapterConfig(input, context);
    case 'manifest':
      return runManifest(input, context);
    case 'jsonl':
      return runJsonl(input as string, context);
  }
}

/** The arbitrary of `kind` (manifests are mutations of the context's valid manifest). */
export function arbitraryOf(kind: InputKind, context: FuzzContext): fc.Arbitrary<unknown> {
  switch (kind) {
    case 'safetensors':
      return safetensorsCase;
    case 'spec':
      return specCase;
    case 'adapter-config':
      return adapterConfigCase;
    case 'manifest':
      return manifestCase(context.validManifest);
    case 'jsonl':
      return jsonlCase;
  }
}
