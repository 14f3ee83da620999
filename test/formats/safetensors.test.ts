// safetensors reader/writer: every malformed case the reference rejects, round trips, half-float
// conversions against hand-computed values, and a fuzz property that only SafetensorsError escapes.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CheckpointError, SafetensorsError } from '../../src/errors.js';
import {
  bf16ToFloat32,
  decodeBf16Bytes,
  decodeF16Bytes,
  encodeBf16Bytes,
  encodeF16Bytes,
  f16ToFloat32,
  float32ToBf16,
  float32ToF16,
} from '../../src/formats/float16.js';
import {
  decodeEntry,
  decodeFloat32,
  parseSafetensors,
  readSafetensorsFile,
  serializeSafetensors,
  writeSafetensorsFile,
  type SafetensorsEntry,
  type SafetensorsFile,
  type TensorToWrite,
} from '../../src/formats/safetensors.js';

const SOURCE = '/models/x.safetensors';

/** A file with a hand-written header (unpadded) and data buffer. */
function rawFile(header: string | Uint8Array, data: Uint8Array = new Uint8Array(0), declaredLength?: bigint): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, declaredLength ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** A file from a header object. */
function fileFrom(header: unknown, dataLength: number): Uint8Array {
  return rawFile(JSON.stringify(header), new Uint8Array(dataLength));
}

function parseError(bytes: Uint8Array): SafetensorsError {
  try {
    parseSafetensors(bytes, { source: SOURCE });
  } catch (err) {
    expect(err).toBeInstanceOf(SafetensorsError);
    expect(err).toBeInstanceOf(CheckpointError);
    const e = err as SafetensorsError;
    expect(e.path).toBe(SOURCE);
    expect(e.message).toContain(SOURCE);
    return e;
  }
  throw new Error('expected parseSafetensors to throw');
}

/** Asserts the parse fails with a SafetensorsError naming `tensor` and matching `what`. */
function expectRejected(bytes: Uint8Array, tensor: string | undefined, what: RegExp): void {
  const e = parseError(bytes);
  if (tensor !== undefined) expect(e.message).toContain(JSON.stringify(tensor));
  expect(e.message).toMatch(what);
}

const ok = (name = 'w', extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  [name]: { dtype: 'F32', shape: [2], data_offsets: [0, 8], ...extra },
});

describe('parseSafetensors rejects malformed files', () => {
  test('file shorter than 8 bytes', () => {
    expectRejected(new Uint8Array(5), undefined, /5 bytes, shorter than the 8-byte/);
    expectRejected(new Uint8Array(0), undefined, /0 bytes/);
  });

  test('header length above 100,000,000', () => {
    expectRejected(rawFile('{}', new Uint8Array(0), 100_000_001n), undefined, /100000001 exceeds the limit/);
    expectRejected(rawFile('{}', new Uint8Array(0), 0xffff_ffff_ffff_ffffn), undefined, /exceeds the limit/);
  });

  test('header length past the end of the file', () => {
    expectRejected(rawFile('{}', new Uint8Array(0), 3n), undefined, /header length 3 runs past the end of the 10-byte file/);
  });

  test('header not valid UTF-8', () => {
    expectRejected(rawFile(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), undefined, /not valid UTF-8/);
  });

  test('header not valid JSON', () => {
    expectRejected(rawFile('{"w": '), undefined, /not valid JSON/);
    expectRejected(rawFile(''), undefined, /not valid JSON/);
  });

  test('header not a JSON object', () => {
    expectRejected(rawFile('[1, 2]'), undefined, /is an array, expected a JSON object/);
    expectRejected(rawFile('null'), undefined, /is null, expected a JSON object/);
    expectRejected(rawFile('"x"'), undefined, /expected a JSON object/);
  });

  test('entry not an object', () => {
    expectRejected(fileFrom({ 'layer.0': [1, 2] }, 0), 'layer.0', /is an array, expected an object/);
    expectRejected(fileFrom({ 'layer.0': 'F32' }, 0), 'layer.0', /expected an object/);
  });

  test('missing or wrong-typed dtype', () => {
    expectRejected(fileFrom({ a: { shape: [2], data_offsets: [0, 8] } }, 8), 'a', /has no "dtype"/);
    expectRejected(fileFrom(ok('a', { dtype: 4 }), 8), 'a', /"dtype" of type number 4, expected a string/);
  });

  test('missing or wrong-typed shape', () => {
    expectRejected(fileFrom({ a: { dtype: 'F32', data_offsets: [0, 8] } }, 8), 'a', /has no "shape"/);
    expectRejected(fileFrom(ok('a', { shape: { 0: 2 } }), 8), 'a', /"shape" of type an object, expected an array/);
  });

  test('missing or wrong-typed data_offsets', () => {
    expectRejected(fileFrom({ a: { dtype: 'F32', shape: [2] } }, 8), 'a', /has no "data_offsets"/);
    expectRejected(fileFrom(ok('a', { data_offsets: '0-8' }), 8), 'a', /"data_offsets" of type string/);
  });

  test('unknown dtype', () => {
    expectRejected(fileFrom(ok('a', { dtype: 'F8_E4M3' }), 8), 'a', /unknown or unsupported dtype "F8_E4M3"/);
    expectRejected(fileFrom(ok('a', { dtype: 'f32' }), 8), 'a', /unknown or unsupported dtype "f32"/);
  });

  test('shape entries that are not non-negative safe integers', () => {
    expectRejected(fileFrom(ok('a', { shape: [-2] }), 8), 'a', /shape\[0\] = number -2/);
    expectRejected(fileFrom(ok('a', { shape: [1, 2.5] }), 8), 'a', /shape\[1\] = number 2.5/);
    expectRejected(fileFrom(ok('a', { shape: ['2'] }), 8), 'a', /shape\[0\] = string "2"/);
    expectRejected(rawFile('{"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,8]}}', new Uint8Array(8)), 'a', /shape\[0\]/);
    expectRejected(rawFile('{"a":{"dtype":"F32","shape":[9007199254740993],"data_offsets":[0,8]}}', new Uint8Array(8)), 'a', /shape\[0\]/);
  });

  test('data_offsets not two non-negative safe integers', () => {
    expectRejected(fileFrom(ok('a', { data_offsets: [0] }), 8), 'a', /1 data_offsets, expected exactly two/);
    expectRejected(fileFrom(ok('a', { data_offsets: [0, 8, 16] }), 8), 'a', /3 data_offsets/);
    expectRejected(fileFrom(ok('a', { data_offsets: [-8, 0] }), 8), 'a', /begin = number -8/);
    expectRejected(fileFrom(ok('a', { data_offsets: [0, 8.5] }), 8), 'a', /end = number 8.5/);
    expectRejected(fileFrom(ok('a', { data_offsets: [0, null] }), 8), 'a', /end = null/);
  });

  test('data_offsets end before begin', () => {
    expectRejected(fileFrom(ok('a', { data_offsets: [8, 0] }), 8), 'a', /end 0 before begin 8/);
  });

  test('gap before the first tensor', () => {
    expectRejected(fileFrom(ok('a', { data_offsets: [4, 12] }), 12), 'a', /gap of 4 bytes \(the start of the data buffer\)/);
  });

  test('gap between tensors', () => {
    const header = { ...ok('a'), b: { dtype: 'F32', shape: [1], data_offsets: [12, 16] } };
    expectRejected(fileFrom(header, 16), 'b', /gap of 4 bytes \(tensor "a" ends at 8\)/);
  });

  test('overlapping tensors (reported separately from gaps)', () => {
    const header = { ...ok('a'), b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
    const e = parseError(fileFrom(header, 8));
    expect(e.message).toMatch(/overlapping tensor "a" which ends at 8/);
    expect(e.message).toContain('"b"');
    expect(e.message).not.toMatch(/gap/);
  });

  test('byte length does not match product(shape) × dtype size', () => {
    expectRejected(fileFrom(ok('a', { shape: [3] }), 8), 'a', /8 data bytes, but dtype F32 with shape \[3\] needs 12/);
    expectRejected(fileFrom(ok('a', { dtype: 'F16' }), 8), 'a', /needs 4/);
  });

  test('product(shape) × size overflow is caught, not wrapped', () => {
    // 2^32 · 2^32 · 4 wraps to 0 in 64-bit arithmetic; it must not match an empty tensor.
    const header = { a: { dtype: 'F32', shape: [2 ** 32, 2 ** 32], data_offsets: [0, 0] } };
    expectRejected(fileFrom(header, 0), 'a', /needs 73786976294838206464/);
  });

  test('trailing bytes after the last tensor', () => {
    expectRejected(fileFrom(ok('a'), 12), 'a', /4 trailing bytes: it is 12 bytes, but the last tensor "a" ends at 8/);
    expectRejected(fileFrom({}, 3), undefined, /3 trailing bytes.*no tensors cover it/);
  });

  test('data buffer shorter than the tensors need', () => {
    expectRejected(fileFrom(ok('a'), 6), 'a', /data buffer is 6 bytes, but the last tensor "a" ends at 8/);
  });

  test('__metadata__ not a string → string map', () => {
    expectRejected(fileFrom({ __metadata__: ['pt'] }, 0), undefined, /"__metadata__" is an array/);
    expectRejected(fileFrom({ __metadata__: { format: 1 } }, 0), 'format', /key "format" is number 1, expected a string/);
    expectRejected(fileFrom({ __metadata__: { a: { b: 'c' } } }, 0), 'a', /expected a string/);
  });

  test('without a source the error still names the tensor', () => {
    try {
      parseSafetensors(fileFrom(ok('a', { dtype: 'X' }), 8));
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(SafetensorsError);
      expect((err as SafetensorsError).path).toBeUndefined();
      expect((err as SafetensorsError).message).toContain('"a"');
    }
  });
});

describe('parseSafetensors accepts valid files', () => {
  test('empty header, zero-size tensors, metadata with a __proto__ key', () => {
    expect(parseSafetensors(fileFrom({}, 0)).entries.size).toBe(0);
    const header = {
      __metadata__: { __proto__: 'x', format: 'pt' },
      e0: { dtype: 'F32', shape: [0, 3], data_offsets: [0, 0] },
      a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
      e1: { dtype: 'I64', shape: [5, 0], data_offsets: [2, 2] },
    };
    // JSON.stringify of an object literal with __proto__ drops it; write the header by hand.
    const text = JSON.stringify(header).replace('"__metadata__":{', '"__metadata__":{"__proto__":"x",');
    const f = parseSafetensors(rawFile(text, new Uint8Array([7, 9])));
    expect([...f.entries.keys()]).toEqual(['e0', 'a', 'e1']);
    expect(f.metadata['format']).toBe('pt');
    expect(Object.getOwnPropertyDescriptor(f.metadata, '__proto__')?.value).toBe('x');
    expect(decodeEntry(f.entries.get('e1') as SafetensorsEntry).values).toEqual(new Int32Array(0));
  });

  test('entries are ordered by offset and their bytes are views into the input', () => {
    const header = {
      b: { dtype: 'U8', shape: [2], data_offsets: [2, 4] },
      a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
    };
    // Parse from a subarray with a non-zero byteOffset, as a Buffer from a pool would be.
    const inner = fileFrom(header, 4);
    const outer = new Uint8Array(inner.length + 3);
    outer.set(inner, 3);
    const bytes = outer.subarray(3);
    bytes[bytes.length - 4] = 1;
    bytes[bytes.length - 1] = 4;
    const f = parseSafetensors(bytes);
    expect([...f.entries.keys()]).toEqual(['a', 'b']);
    const b = f.entries.get('b') as SafetensorsEntry;
    expect(b.bytes.buffer).toBe(outer.buffer);
    expect([...b.bytes]).toEqual([0, 4]);
    expect([...(f.entries.get('a') as SafetensorsEntry).bytes]).toEqual([1, 0]);
  });

  test('unaligned F32/F64/I64 data decodes correctly', () => {
    // Header of 3 bytes of padding-free JSON puts the data at an odd offset.
    const values = new Float32Array([1.5, -2.25]);
    const data = new Uint8Array(values.buffer);
    const header = `${JSON.stringify({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } })} `;
    const f = parseSafetensors(rawFile(header, data));
    expect((f.entries.get('w') as SafetensorsEntry).bytes.byteOffset % 4).not.toBe(0);
    expect(decodeFloat32(f.entries.get('w') as SafetensorsEntry)).toEqual(values);
  });
});

describe('round trips', () => {
  const f32 = new Float32Array([0, -1.5, 3.25, 1e-8, -65504, 7]);
  const tensors = new Map<string, TensorToWrite>([
    ['z.f32', { dtype: 'F32', shape: [2, 3], data: f32 }],
    ['10', { dtype: 'F16', shape: [6], data: f32 }],
    ['a.bf16', { dtype: 'BF16', shape: [3, 2], data: f32 }],
    ['i32', { dtype: 'I32', shape: [3], data: new Int32Array([-2147483648, 0, 2147483647]) }],
    ['i64', { dtype: 'I64', shape: [3], data: new Int32Array([-2147483648, -1, 2147483647]) }],
    ['mask', { dtype: 'BOOL', shape: [4], data: new Uint8Array([1, 0, 0, 1]) }],
    ['empty', { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) }],
    ['scalar', { dtype: 'F64', shape: [], data: new Float32Array([0.1]) }],
  ]);
  const metadata = { format: 'pt', '2': 'integer-like key', note: 'ünïcödé ✓' };

  test('write → read preserves order, dtypes, shapes, values and metadata', () => {
    const bytes = serializeSafetensors(tensors, metadata);
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerLength % 8).toBe(0);
    const f = parseSafetensors(bytes);
    expect([...f.entries.keys()]).toEqual([...tensors.keys()]);
    expect({ ...f.metadata }).toEqual(metadata);

    const get = (name: string): SafetensorsEntry => f.entries.get(name) as SafetensorsEntry;
    expect(decodeEntry(get('z.f32'))).toEqual({ dtype: 'float32', shape: [2, 3], values: f32 });
    // F16: 1e-8 is below half the smallest subnormal (2^-25 ≈ 2.98e-8) and rounds to 0.
    expect(decodeFloat32(get('10'))).toEqual(new Float32Array([0, -1.5, 3.25, 0, -65504, 7]));
    // BF16 keeps 8 significand bits: -65504 rounds to -65536.
    const bf = decodeFloat32(get('a.bf16'));
    expect([bf[0], bf[1], bf[2], bf[4], bf[5]]).toEqual([0, -1.5, 3.25, -65536, 7]);
    expect(bf[3]).toBeCloseTo(1e-8, 10);
    expect(decodeEntry(get('i32')).values).toEqual(new Int32Array([-2147483648, 0, 2147483647]));
    expect(decodeEntry(get('i64'))).toEqual({ dtype: 'int32', shape: [3], values: new Int32Array([-2147483648, -1, 2147483647]) });
    expect(decodeEntry(get('mask'))).toEqual({ dtype: 'bool', shape: [4], values: new Uint8Array([1, 0, 0, 1]) });
    expect(decodeEntry(get('empty'))).toEqual({ dtype: 'float32', shape: [0, 4], values: new Float32Array(0) });
    expect(decodeEntry(get('scalar')).values).toEqual(new Float32Array([0.1]));
    expect(get('scalar').bytes.length).toBe(8);
  });

  test('re-serialising the parsed entries reproduces the file byte for byte', () => {
    for (const meta of [metadata, undefined]) {
      const bytes = serializeSafetensors(tensors, meta);
      const f = parseSafetensors(bytes);
      const again = new Map<string, TensorToWrite>([...f.entries].map(([name, e]) => [name, { dtype: e.dtype, shape: e.shape, data: e.bytes }]));
      const hasMeta = Object.keys(f.metadata).length > 0;
      expect(serializeSafetensors(again, hasMeta ? f.metadata : undefined)).toEqual(bytes);
    }
  });

  test('a record keeps JavaScript property order, and re-serialises identically', () => {
    const record: Record<string, TensorToWrite> = {
      b: { dtype: 'U8', shape: [1], data: new Uint8Array([1]) },
      a: { dtype: 'U8', shape: [1], data: new Uint8Array([2]) },
    };
    const bytes = serializeSafetensors(record);
    const f = parseSafetensors(bytes);
    expect([...f.entries.keys()]).toEqual(['b', 'a']);
    const again = Object.fromEntries([...f.entries].map(([n, e]) => [n, { dtype: e.dtype, shape: e.shape, data: e.bytes }]));
    expect(serializeSafetensors(again)).toEqual(bytes);
  });

  test('I64 / U64 / U32 values outside int32 fail on decode, naming the tensor and index', () => {
    const big = new Uint8Array(16);
    const view = new DataView(big.buffer);
    view.setBigInt64(0, 5n, true);
    view.setBigInt64(8, 2n ** 31n, true);
    const f = parseSafetensors(
      serializeSafetensors({
        'pos.ids': { dtype: 'I64', shape: [2], data: big },
        neg: { dtype: 'I64', shape: [1], data: new Uint8Array(new BigInt64Array([-(2n ** 31n) - 1n]).buffer) },
        u64: { dtype: 'U64', shape: [1], data: new Uint8Array(new BigUint64Array([2n ** 64n - 1n]).buffer) },
        u32: { dtype: 'U32', shape: [1], data: new Uint8Array(new Uint32Array([2 ** 31]).buffer) },
      }),
      { source: SOURCE },
    );
    const cases: [string, RegExp][] = [
      ['pos.ids', /"pos.ids" \(I64\) holds 2147483648 at flat index 1/],
      ['neg', /holds -2147483649 at flat index 0/],
      ['u64', /holds 18446744073709551615/],
      ['u32', /holds 2147483648/],
    ];
    for (const [name, what] of cases) {
      const run = (): unknown => decodeEntry(f.entries.get(name) as SafetensorsEntry, { source: SOURCE });
      expect(run).toThrow(SafetensorsError);
      expect(run).toThrow(what);
      expect(run).toThrow(SOURCE);
    }
  });

  test('narrow integer dtypes decode to int32', () => {
    const f = parseSafetensors(
      serializeSafetensors({
        u8: { dtype: 'U8', shape: [2], data: new Int32Array([0, 255]) },
        i8: { dtype: 'I8', shape: [2], data: new Int32Array([-128, 127]) },
        i16: { dtype: 'I16', shape: [2], data: new Int32Array([-32768, 32767]) },
        u16: { dtype: 'U16', shape: [2], data: new Int32Array([0, 65535]) },
        u32: { dtype: 'U32', shape: [1], data: new Int32Array([2147483647]) },
        u64: { dtype: 'U64', shape: [1], data: new Int32Array([123]) },
      }),
    );
    const values = (n: string): number[] => [...decodeEntry(f.entries.get(n) as SafetensorsEntry).values];
    expect(values('u8')).toEqual([0, 255]);
    expect(values('i8')).toEqual([-128, 127]);
    expect(values('i16')).toEqual([-32768, 32767]);
    expect(values('u16')).toEqual([0, 65535]);
    expect(values('u32')).toEqual([2147483647]);
    expect(values('u64')).toEqual([123]);
  });

  test('decodeFloat32 rejects integer and bool tensors, naming them', () => {
    const f = parseSafetensors(serializeSafetensors({ 'ids.x': { dtype: 'I32', shape: [1], data: new Int32Array([1]) } }));
    const run = (): unknown => decodeFloat32(f.entries.get('ids.x') as SafetensorsEntry, { source: SOURCE });
    expect(run).toThrow(SafetensorsError);
    expect(run).toThrow(/"ids.x" has dtype I32, expected a float dtype/);
  });

  test('decoding a hand-built entry with the wrong byte count fails', () => {
    const entry: SafetensorsEntry = { name: 'h', dtype: 'F32', shape: [3], bytes: new Uint8Array(8) };
    expect(() => decodeEntry(entry)).toThrow(SafetensorsError);
    expect(() => decodeEntry(entry)).toThrow(/"h" has 8 bytes/);
  });

  test('the writer rejects inconsistent input, naming the tensor', () => {
    const bad: [Record<string, TensorToWrite>, RegExp][] = [
      [{ w: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }, /"w": got Float32Array of length 2/],
      [{ w: { dtype: 'F16', shape: [3], data: new Uint8Array(5) } }, /"w": got Uint8Array of length 5.*6 bytes/],
      [{ w: { dtype: 'I32', shape: [1], data: new Float32Array(1) } }, /"w": Float32Array data cannot be written as I32/],
      [{ w: { dtype: 'F32', shape: [1], data: new Int32Array(1) } }, /"w": Int32Array data cannot be written as F32/],
      [{ w: { dtype: 'I8', shape: [1], data: new Int32Array([200]) } }, /"w": value 200 at flat index 0 does not fit I8/],
      [{ w: { dtype: 'F32', shape: [-1], data: new Float32Array(0) } }, /"w": shape \[-1\]/],
      [{ __metadata__: { dtype: 'U8', shape: [0], data: new Uint8Array(0) } }, /reserved/],
    ];
    for (const [tensors, what] of bad) {
      expect(() => serializeSafetensors(tensors)).toThrow(SafetensorsError);
      expect(() => serializeSafetensors(tensors)).toThrow(what);
    }
  });
});

describe('F16 / BF16 conversions', () => {
  test('F16 widening against hand-computed values', () => {
    const cases: [number, number][] = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x0000, 0],
      [0x3555, 0.333251953125],
      [0x7bff, 65504],
      [0xfbff, -65504],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
      [0x0001, 2 ** -24], // smallest subnormal
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x0200, 2 ** -15],
      [0x0400, 2 ** -14], // smallest normal
      [0x3bff, 1 - 2 ** -11],
    ];
    for (const [bits, value] of cases) expect(f16ToFloat32(bits)).toBe(value);
    expect(Object.is(f16ToFloat32(0x8000), -0)).toBe(true);
    expect(f16ToFloat32(0x7e00)).toBeNaN();
    expect(f16ToFloat32(0x7c01)).toBeNaN();
    // Bulk decoding of little-endian bytes agrees.
    expect(decodeF16Bytes(new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00]))).toEqual(new Float32Array([1, -2, 2 ** -24]));
  });

  test('BF16 widening against hand-computed values', () => {
    const cases: [number, number][] = [
      [0x3f80, 1],
      [0xc000, -2],
      [0x4049, 3.140625],
      [0x7f80, Infinity],
      [0xff80, -Infinity],
      [0x0001, 2 ** -133], // smallest bf16 subnormal
      [0x7f7f, 3.3895313892515355e38], // largest finite
    ];
    for (const [bits, value] of cases) expect(bf16ToFloat32(bits)).toBe(value);
    expect(bf16ToFloat32(0x7fc0)).toBeNaN();
    expect(decodeBf16Bytes(new Uint8Array([0x80, 0x3f, 0x00, 0xc0]))).toEqual(new Float32Array([1, -2]));
  });

  test('F16 narrowing rounds to nearest even, with overflow and subnormals', () => {
    expect(float32ToF16(1)).toBe(0x3c00);
    expect(float32ToF16(-2)).toBe(0xc000);
    expect(float32ToF16(65504)).toBe(0x7bff);
    expect(float32ToF16(65519)).toBe(0x7bff); // just below the halfway point to 65536
    expect(float32ToF16(65520)).toBe(0x7c00); // halfway: ties to even overflows to infinity
    expect(float32ToF16(1e10)).toBe(0x7c00);
    expect(float32ToF16(-Infinity)).toBe(0xfc00);
    expect(float32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie, 0x3c00 is even
    expect(float32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, rounds up to even
    expect(float32ToF16(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(float32ToF16(2 ** -24)).toBe(0x0001);
    expect(float32ToF16(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal
    expect(float32ToF16(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 units: even
    expect(float32ToF16(2 ** -25 + 2 ** -35)).toBe(0x0001);
    expect(float32ToF16(1023.5 * 2 ** -24)).toBe(0x0400); // rounds up into the smallest normal
    expect(float32ToF16(-0)).toBe(0x8000);
    expect(float32ToF16(NaN) & 0x7c00).toBe(0x7c00);
    expect(float32ToF16(NaN) & 0x3ff).not.toBe(0);
  });

  test('BF16 narrowing rounds to nearest even', () => {
    expect(float32ToBf16(1)).toBe(0x3f80);
    expect(float32ToBf16(Math.PI)).toBe(0x4049);
    expect(float32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie to even
    expect(float32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie to even (up)
    expect(float32ToBf16(3.4e38)).toBe(0x7f80); // rounds past the largest finite
    expect(float32ToBf16(-Infinity)).toBe(0xff80);
    expect(float32ToBf16(NaN) & 0x7f80).toBe(0x7f80);
    expect(float32ToBf16(NaN) & 0x7f).not.toBe(0);
  });

  test('every F16 bit pattern survives widen → narrow', () => {
    const all = new Uint8Array(0x20000);
    for (let h = 0; h < 0x10000; h++) {
      all[2 * h] = h & 0xff;
      all[2 * h + 1] = h >>> 8;
    }
    // Buffer.equals: a deep toEqual over 131,072 elements is needlessly slow.
    expect(Buffer.from(encodeF16Bytes(decodeF16Bytes(all))).equals(all)).toBe(true);
    expect(Buffer.from(encodeBf16Bytes(decodeBf16Bytes(all))).equals(all)).toBe(true);
  });
});

describe('files', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-st-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('writeSafetensorsFile → readSafetensorsFile', async () => {
    const path = join(dir, 'adapter_model.safetensors');
    await writeSafetensorsFile(path, { w: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } }, { format: 'pt' });
    const f: SafetensorsFile = await readSafetensorsFile(path);
    expect(f.metadata).toEqual({ format: 'pt' });
    const w = f.entries.get('w') as SafetensorsEntry;
    expect(w.bytes).not.toBeInstanceOf(Buffer);
    expect(decodeFloat32(w)).toEqual(new Float32Array([1, 2]));
  });

  test('read errors carry the file path', async () => {
    const path = join(dir, 'bad.safetensors');
    await writeFile(path, fileFrom(ok('w', { dtype: 'F99' }), 8));
    await expect(readSafetensorsFile(path)).rejects.toThrow(SafetensorsError);
    await expect(readSafetensorsFile(path)).rejects.toThrow(path);
    const missing = join(dir, 'missing.safetensors');
    await expect(readSafetensorsFile(missing)).rejects.toThrow(CheckpointError);
    await expect(readSafetensorsFile(missing)).rejects.toThrow(missing);
  });

  test('write errors carry the file path and leave nothing behind', async () => {
    const path = join(dir, 'never.safetensors');
    const write = writeSafetensorsFile(path, { w: { dtype: 'F32', shape: [3], data: new Float32Array(1) } });
    await expect(write).rejects.toThrow(SafetensorsError);
    await expect(readFile(path)).rejects.toThrow(/ENOENT/);
  });
});

describe('fuzzing: any input parses or throws SafetensorsError', () => {
  const seedFile = serializeSafetensors(
    new Map<string, TensorToWrite>([
      ['a', { dtype: 'F16', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) }],
      ['b', { dtype: 'I64', shape: [3], data: new Int32Array([1, -1, 7]) }],
      ['c', { dtype: 'BOOL', shape: [2], data: new Uint8Array([0, 1]) }],
      ['d', { dtype: 'F32', shape: [0], data: new Float32Array(0) }],
      ['e', { dtype: 'U32', shape: [1], data: new Int32Array([9]) }],
    ]),
    { format: 'pt' },
  );
  const headerEnd = 8 + Number(new DataView(seedFile.buffer).getBigUint64(0, true));

  /** Parses and, on success, decodes every entry; returns the error, if any. */
  function exercise(bytes: Uint8Array): unknown {
    try {
      const f = parseSafetensors(bytes, { source: 'fuzz' });
      for (const e of f.entries.values()) {
        try {
          decodeEntry(e);
        } catch (err) {
          if (!(err instanceof SafetensorsError)) return err;
        }
        if (e.dtype.startsWith('F') || e.dtype === 'BF16') decodeFloat32(e);
      }
      return undefined;
    } catch (err) {
      return err;
    }
  }

  /** Throws anything but a SafetensorsError; returns whether the input parsed and decoded. */
  const expectOnlySafetensorsError = (bytes: Uint8Array): boolean => {
    const err = exercise(bytes);
    if (err !== undefined && !(err instanceof SafetensorsError)) throw err;
    return err === undefined;
  };

  test('the seed file itself parses', () => {
    expect(exercise(seedFile)).toBeUndefined();
  });

  test('random byte mutations and truncations', () => {
    let parsed = 0;
    // Weighted so that a good share of runs still parse: digit-for-digit edits inside the
    // header change shapes and offsets while keeping the JSON valid.
    const digitAt = [...seedFile.subarray(0, headerEnd)].flatMap((byte, i) => (i >= 8 && byte >= 0x30 && byte <= 0x39 ? [i] : []));
    const byte = fc.nat({ max: 255 });
    const jsonChar = fc.constantFrom(...'0123456789[]{}",:-.e '.split('').map((ch) => ch.charCodeAt(0)));
    const edit = fc.oneof(
      { weight: 4, arbitrary: fc.record({ at: fc.constantFrom(...digitAt), value: fc.integer({ min: 0x30, max: 0x39 }) }) },
      { weight: 3, arbitrary: fc.record({ at: fc.integer({ min: 8, max: headerEnd - 1 }), value: fc.oneof(byte, jsonChar) }) },
      { weight: 1, arbitrary: fc.record({ at: fc.nat({ max: 7 }), value: byte }) },
      { weight: 2, arbitrary: fc.record({ at: fc.nat({ max: seedFile.length - 1 }), value: byte }) },
    );
    const mutation = fc.record({
      edits: fc.array(edit, { maxLength: 3 }),
      truncate: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.nat({ max: seedFile.length }) }),
    });
    fc.assert(
      fc.property(mutation, ({ edits, truncate }) => {
        const bytes = seedFile.slice(0, truncate ?? seedFile.length);
        for (const { at, value } of edits) if (at < bytes.length) bytes[at] = value;
        if (expectOnlySafetensorsError(bytes)) parsed += 1;
      }),
      { seed: 0x5afe, numRuns: 300 },
    );
    // Not vacuous: some mutants still parse and go through decoding.
    expect(parsed).toBeGreaterThan(30);
  });

  test('structurally mutated headers (consistent layouts, then one field replaced)', () => {
    let parsed = 0;
    const dtypes = ['BOOL', 'U8', 'I8', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'] as const;
    const sizes: Record<string, number> = { BOOL: 1, U8: 1, I8: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8 };
    const tensor = fc.record({
      name: fc.oneof(fc.constantFrom('a', 'b', '0', '__proto__', 'x.weight'), fc.string({ maxLength: 6 })),
      dtype: fc.constantFrom(...dtypes),
      shape: fc.array(fc.nat({ max: 3 }), { maxLength: 3 }),
    });
    const anyJson = fc.jsonValue({ maxDepth: 2 });
    const perturbation = fc.oneof(
      { weight: 3, arbitrary: fc.constant(undefined) },
      {
        weight: 4,
        arbitrary: fc.record({
          index: fc.nat({ max: 3 }),
          field: fc.constantFrom('dtype', 'shape', 'data_offsets', 'entry', '__metadata__'),
          value: fc.oneof(anyJson, fc.constantFrom(-1, 2 ** 53, 2 ** 32, 0.5, [0], [0, 2 ** 53], [4, 2], ['0', 1], 'C64')),
        }),
      },
      { weight: 1, arbitrary: fc.record({ index: fc.nat({ max: 3 }), field: fc.constant('shift'), value: fc.integer({ min: -3, max: 3 }) }) },
    );
    fc.assert(
      fc.property(
        fc.uniqueArray(tensor, { maxLength: 4, selector: (t) => t.name }),
        perturbation,
        fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }) }),
        fc.uint8Array({ minLength: 1, maxLength: 16 }),
        (tensors, change, extraBytes, fill) => {
          const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
          let offset = 0;
          for (const t of tensors) {
            const n = t.shape.reduce((p, d) => p * d, 1) * (sizes[t.dtype] as number);
            header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
            offset += n;
          }
          const target = tensors[(change?.index ?? 0) % Math.max(tensors.length, 1)];
          if (change !== undefined) {
            if (change.field === '__metadata__') header['__metadata__'] = change.value;
            else if (target !== undefined) {
              const entry = header[target.name] as Record<string, unknown>;
              if (change.field === 'entry') header[target.name] = change.value;
              else if (change.field === 'shift') {
                const [b, e] = entry['data_offsets'] as [number, number];
                entry['data_offsets'] = [b + (change.value as number), e];
              } else entry[change.field] = change.value;
            }
          }
          // Object.defineProperty keeps a "__proto__" tensor name as an own key for JSON.stringify.
          const text = JSON.stringify(
            Object.entries(header).reduce<Record<string, unknown>>((o, [k, v]) => Object.defineProperty(o, k, { value: v, enumerable: true }), {}),
          );
          const data = new Uint8Array(Math.max(0, offset + extraBytes));
          for (let i = 0; i < data.length; i++) data[i] = fill[i % fill.length] as number;
          if (expectOnlySafetensorsError(rawFile(text, data))) parsed += 1;
        },
      ),
      { seed: 0xbeef, numRuns: 300 },
    );
    expect(parsed).toBeGreaterThan(30);
  });
});

test('the writer reports a non-string metadata value as SafetensorsError, even a BigInt', () => {
  const metadata = { format: 10n } as unknown as Record<string, string>;
  expect(() => serializeSafetensors({}, metadata)).toThrow(SafetensorsError);
  expect(() => serializeSafetensors({}, metadata)).toThrow(/key "format" is bigint 10, expected a string/);
});
