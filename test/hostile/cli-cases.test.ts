// Issue 20 through the CLI, on the shipped demo model: every case exits 1 with the typed error's message (or 2
// for a bad flag), in well under a second where nothing else has to happen, and never prints `null` logits.
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { readSafetensorsFile, serializeSafetensors, type TensorToWrite } from '../../src/formats/safetensors.js';
import { MANIFEST_FILE } from '../../src/io/routed-model-dir.js';

const demo = fileURLToPath(new URL('../../demo-model', import.meta.url));
const context = { routers: builtinRouters() };
let dir: string;

async function run(argv: string[]): Promise<{ code: number; out: string; err: string; ms: number }> {
  const io = createMemoryIo();
  const start = performance.now();
  const code = await main(argv, io, context);
  return { code, out: io.out, err: io.err, ms: performance.now() - start };
}

const spec = (adapter: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  seed: 0,
  adapters: [{ kind: 'lora', name: 'e0', r: 2, alpha: 4, ...adapter }],
  ...extra,
});

async function writeJson(name: string, value: unknown, prefix = ''): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, `${prefix}${JSON.stringify(value)}`);
  return path;
}

/** A directory this process cannot write into: chmod 555 where that binds (not for root), else a sysfs path. */
async function unwritableDir(): Promise<string | undefined> {
  const ro = join(dir, 'read-only');
  await mkdir(ro, { recursive: true });
  await chmod(ro, 0o555);
  try {
    await mkdir(join(ro, 'probe'));
  } catch {
    return ro;
  }
  await rm(join(ro, 'probe'), { recursive: true });
  // Root ignores permissions; sysfs refuses new directories to everyone.
  try {
    await mkdir('/sys/routed-peft-probe');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EPERM' || code === 'EROFS' || code === 'EACCES') return '/sys';
  }
  return undefined;
}

/** Rewrites every float32 value of a tensor whose name matches `match`. */
async function rewrite(file: string, match: RegExp, value: (i: number) => number): Promise<void> {
  const parsed = await readSafetensorsFile(file);
  const out = new Map<string, TensorToWrite>();
  for (const [name, entry] of parsed.entries) {
    const bytes = Uint8Array.from(entry.bytes);
    if (match.test(name)) for (let i = 0; i < bytes.length / 4; i++) new DataView(bytes.buffer).setFloat32(i * 4, value(i), true);
    out.set(name, { dtype: entry.dtype, shape: entry.shape, data: bytes });
  }
  await writeFile(file, serializeSafetensors(out, { ...parsed.metadata }));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'routed-peft-hostile-cli-'));
});
afterAll(async () => {
  await chmod(join(dir, 'read-only'), 0o755).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('CLI: hostile input exits 1 with a typed error (2 for bad flags)', () => {
  test('train on a JSONL row with "task": 1e9 exits 1 naming the limit, before loading the model (was: SIGABRT in V8)', async () => {
    const data = join(dir, 'huge-task.jsonl');
    await writeFile(data, '{"text": "abc", "task": 1000000000}\n');
    const r = await run(['train', '--model', demo, '--data', data, '--spec', await writeJson('s.json', spec()), '--out', join(dir, 'run-task')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/task 1000000000 exceeds the largest id 65535/);
    expect(r.ms).toBeLessThan(1000);
  });

  test('init with r = 1e9 exits 1 with the ConfigError (was: RangeError: Invalid typed array length)', async () => {
    const r = await run(['init', '--model', demo, '--spec', await writeJson('r.json', spec({ r: 1e9 })), '--out', join(dir, 'init-r')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/spec\.adapters\[0\]\.r: Too big/);
    expect(r.err).not.toMatch(/unexpected error/);
  });

  test('init with a model-level readLayer beyond the last layer exits 1', async () => {
    const routed = spec({}, { composition: { kind: 'route', experts: ['e0'], router: { kind: 'top-k', k: 1 }, placement: 'model', readLayer: 3 } });
    const r = await run(['init', '--model', demo, '--spec', await writeJson('rl.json', routed), '--out', join(dir, 'init-rl')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/entering layer 3, but the model has layers 0\.\.2/);
  });

  test('a read-only --out: init and train exit 1 with an OutputError naming the path, before any work (was: raw EROFS after a step)', async () => {
    const ro = await unwritableDir();
    if (ro === undefined) return; // no unwritable place on this machine
    const out = join(ro, 'out');
    const init = await run(['init', '--model', demo, '--spec', await writeJson('ok.json', spec()), '--out', out]);
    expect(init.code).toBe(1);
    expect(init.err).toMatch(/OutputError|cannot write --out/);
    expect(init.err).toContain(out);
    const data = join(dir, 'ok.jsonl');
    await writeFile(data, '{"text": "abc"}\n');
    const train = await run(['train', '--model', demo, '--data', data, '--spec', join(dir, 'ok.json'), '--out', out, '--steps', '2']);
    expect(train.code).toBe(1);
    expect(train.err).toMatch(/cannot write --out/);
    expect(train.out).not.toMatch(/"type":"step"/);
    expect(train.ms).toBeLessThan(1000);
  });

  test('a spec file with a UTF-8 BOM is read (was: a JSON parse error)', async () => {
    const r = await run(['init', '--model', demo, '--spec', await writeJson('bom.json', spec(), '\ufeff'), '--out', join(dir, 'init-bom')]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  test('generate --max-new-tokens 100000 is refused up front with exit 2 (was: streamed to the limit, then failed)', async () => {
    const r = await run(['generate', '--model', demo, '--prompt', 'r:ab=', '--max-new-tokens', '100000', '--temperature', '0']);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/--max-new-tokens 100000 with a \d+-token prompt exceeds the model's context of 64 tokens; at most \d+ new tokens fit/);
  });

  test('--steps -1 names the value (was: "argument is ambiguous")', async () => {
    const r = await run(['train', '--model', demo, '--data', 'x.jsonl', '--spec', 'x.json', '--out', join(dir, 'x'), '--steps', '-1']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/Invalid value for --steps: '-1' \(expected an integer >= 1\)/);
  });

  test('train --lr 1e30 exits 2 naming the limit (was: "succeeded" with the loss stuck at ln V)', async () => {
    const r = await run(['train', '--model', demo, '--data', 'x.jsonl', '--spec', 'x.json', '--out', join(dir, 'x'), '--lr', '1e30']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/Invalid value for --lr: '1e30' \(expected a number > 0 and <= 1\)/);
  });

  describe('forward on a routed model with broken weights', () => {
    let routed: string;
    let peftWeights: string;
    beforeAll(async () => {
      routed = join(dir, 'routed');
      const r = await run(['init', '--model', demo, '--spec', await writeJson('fw.json', spec({ init: 'random' })), '--out', routed]);
      expect(r.code).toBe(0);
      peftWeights = join(routed, 'adapters', 'e0', 'adapter_model.safetensors');
    });

    test('NaN in the adapter: exit 1 with a NonFiniteError naming the tensor (was: 1,536 null logits and exit 0)', async () => {
      const original = await readFile(peftWeights);
      await rewrite(peftWeights, /layers\.0\.self_attn\.q_proj\.lora_B/, (i) => (i === 5 ? Number.NaN : 0.01));
      const r = await run(['forward', '--model', demo, '--routed', routed, '--ids', '1,5,6']);
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/tensor "base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_B\.weight" holds NaN at flat index 5/);
      await writeFile(peftWeights, original);
    });

    test('finite weights whose output overflows: exit 1 with a NonFiniteError, never null in the JSON; --allow-non-finite prints it with a warning', async () => {
      const original = await readFile(peftWeights);
      await rewrite(peftWeights, /lora_[AB]/, () => 3e19);
      const r = await run(['forward', '--model', demo, '--routed', routed, '--ids', '1,5,6']);
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/NonFiniteError|non-finite logit/);
      expect(r.err).toMatch(/the forward pass produced \d+ non-finite logits? of 144/);
      const allowed = await run(['forward', '--model', demo, '--routed', routed, '--ids', '1,5,6', '--allow-non-finite']);
      expect(allowed.code).toBe(0);
      expect(allowed.err).toMatch(/warning: the forward pass produced/);
      expect(allowed.out).toMatch(/null/);
      await writeFile(peftWeights, original);
    });

    test('a manifest path leading out of the directory: exit 1, nothing outside is read', async () => {
      const manifestPath = join(routed, MANIFEST_FILE);
      const original = await readFile(manifestPath, 'utf8');
      const manifest = JSON.parse(original) as { adapters: Record<string, { path: string }> };
      manifest.adapters['e0'] = { ...manifest.adapters['e0'], path: '../../../../../../etc' } as never;
      await writeFile(manifestPath, JSON.stringify(manifest));
      const r = await run(['forward', '--model', demo, '--routed', routed, '--ids', '1,5']);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/leads outside the directory/);
      await writeFile(manifestPath, original);
    });

    test('a catastrophic target_modules regex in --adapter DIR: exit 1 in well under a second', async () => {
      const adapter = join(routed, 'adapters', 'e0');
      const configPath = join(adapter, 'adapter_config.json');
      const original = await readFile(configPath, 'utf8');
      await writeFile(configPath, JSON.stringify({ ...(JSON.parse(original) as object), target_modules: '([a-z_.0-9]+)+X' }));
      const r = await run(['forward', '--model', demo, '--adapter', adapter, '--ids', '1,5']);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/no tensor in adapter_model\.safetensors belongs to a module/);
      expect(r.ms).toBeLessThan(3000);
      await writeFile(configPath, original);
    });
  });
});
