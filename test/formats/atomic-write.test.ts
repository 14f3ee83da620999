// Atomic file and directory replacement: content is swapped in whole, failures leave the old
// content untouched and no temporary siblings behind.
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { CheckpointError } from '../../src/errors.js';
import { replaceDirectoryAtomic, writeFileAtomic } from '../../src/formats/atomic-write.js';

let root = '';
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'routed-peft-atomic-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const listing = async (dir: string): Promise<string[]> => (await readdir(dir)).sort();

describe('writeFileAtomic', () => {
  test('creates a new file from bytes or a string', async () => {
    await writeFileAtomic(join(root, 'a.bin'), new Uint8Array([1, 2, 3]));
    await writeFileAtomic(join(root, 'b.json'), '{"x": "ü"}');
    expect([...(await readFile(join(root, 'a.bin')))]).toEqual([1, 2, 3]);
    expect(await readFile(join(root, 'b.json'), 'utf8')).toBe('{"x": "ü"}');
    expect(await listing(root)).toEqual(['a.bin', 'b.json']);
  });

  test('replaces existing content and keeps its permissions, leaving no temp file', async () => {
    const path = join(root, 'config.json');
    await writeFile(path, 'old content that is longer than the new one');
    if (process.platform !== 'win32') await chmod(path, 0o640);
    await writeFileAtomic(path, 'new');
    expect(await readFile(path, 'utf8')).toBe('new');
    if (process.platform !== 'win32') expect((await stat(path)).mode & 0o777).toBe(0o640);
    expect(await listing(root)).toEqual(['config.json']);
  });

  test('a failed write rejects and removes its temp file', async () => {
    // Renaming a file over a non-empty directory fails after the temp file was written.
    const path = join(root, 'taken');
    await mkdir(path);
    await writeFile(join(path, 'inside'), 'keep');
    await expect(writeFileAtomic(path, 'data')).rejects.toThrow();
    expect(await listing(root)).toEqual(['taken']);
    expect(await readFile(join(path, 'inside'), 'utf8')).toBe('keep');
  });

  test('a missing parent directory rejects', async () => {
    await expect(writeFileAtomic(join(root, 'no', 'such', 'file'), 'x')).rejects.toThrow(/ENOENT/);
    expect(await listing(root)).toEqual([]);
  });
});

describe('replaceDirectoryAtomic', () => {
  test('creates the directory when it does not exist (including parents)', async () => {
    const target = join(root, 'runs', 'ckpt');
    await replaceDirectoryAtomic(target, async (tmp) => {
      await writeFile(join(tmp, 'adapter_config.json'), '{}');
    });
    expect(await listing(target)).toEqual(['adapter_config.json']);
    expect(await listing(join(root, 'runs'))).toEqual(['ckpt']);
  });

  test('replaces the whole content of an existing directory', async () => {
    const target = join(root, 'ckpt');
    await mkdir(join(target, 'old-sub'), { recursive: true });
    await writeFile(join(target, 'stale.safetensors'), 'old');
    await writeFile(join(target, 'adapter_config.json'), 'old');
    let seen = '';
    await replaceDirectoryAtomic(target, async (tmp) => {
      seen = tmp;
      expect(tmp).not.toBe(target);
      // The old directory is still intact while fill runs.
      expect(await readFile(join(target, 'adapter_config.json'), 'utf8')).toBe('old');
      await mkdir(join(tmp, 'experts'));
      await writeFile(join(tmp, 'experts', 'e0.safetensors'), 'new-e0');
      await writeFile(join(tmp, 'adapter_config.json'), 'new');
    });
    expect(await listing(target)).toEqual(['adapter_config.json', 'experts']);
    expect(await readFile(join(target, 'adapter_config.json'), 'utf8')).toBe('new');
    expect(await readFile(join(target, 'experts', 'e0.safetensors'), 'utf8')).toBe('new-e0');
    // Neither the temp dir nor the backup of the old one remains.
    expect(await listing(root)).toEqual(['ckpt']);
    await expect(stat(seen)).rejects.toThrow(/ENOENT/);
  });

  test('a failing fill leaves the old directory intact and no temp dirs behind', async () => {
    const target = join(root, 'ckpt');
    await mkdir(target);
    await writeFile(join(target, 'adapter_config.json'), 'old');
    const failure = new Error('disk full (simulated)');
    await expect(
      replaceDirectoryAtomic(target, async (tmp) => {
        await writeFile(join(tmp, 'adapter_config.json'), 'half-written');
        throw failure;
      }),
    ).rejects.toBe(failure);
    expect(await listing(target)).toEqual(['adapter_config.json']);
    expect(await readFile(join(target, 'adapter_config.json'), 'utf8')).toBe('old');
    expect(await listing(root)).toEqual(['ckpt']);
  });

  test('a failing fill for a new directory creates nothing', async () => {
    await expect(
      replaceDirectoryAtomic(join(root, 'ckpt'), async () => {
        throw new Error('nope');
      }),
    ).rejects.toThrow('nope');
    expect(await listing(root)).toEqual([]);
  });

  test('refuses to replace a file with a directory, without calling fill', async () => {
    const target = join(root, 'ckpt');
    await writeFile(target, 'a file');
    let called = false;
    const run = replaceDirectoryAtomic(target, async () => {
      called = true;
    });
    await expect(run).rejects.toThrow(CheckpointError);
    expect(called).toBe(false);
    expect(await readFile(target, 'utf8')).toBe('a file');
    expect(await listing(root)).toEqual(['ckpt']);
  });
});
