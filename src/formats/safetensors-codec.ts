/**
 * safetensors reader and writer (format: huggingface/safetensors README and `src/tensor.rs`).
 *
 * Layout: 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the data buffer.
 * The reader validates everything the reference parser validates and turns every defect,
 * on any input, into a SafetensorsError that names the tensor and the file. The writer lays
 * tensors out in insertion order, so reading a file we wrote and writing its entries back in
 * the same order reproduces it byte for byte. Bytes only: reading and writing files is `safetensors.ts`.
 */
import { SafetensorsError, formatShape } from '../errors.js';
import { decodeBf16Bytes, decodeF16Bytes, encodeBf16Bytes, encodeF16Bytes } from './float16.js';

export type SafetensorsDtype = 'BOOL' | 'U8' | 'I8' | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'F64' | 'I64' | 'U64';

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Raw little-endian bytes exactly as stored: a view into the file buffer, not a copy. */
  readonly bytes: Uint8Array;
}

export interface SafetensorsFile {
  /** The `__metadata__` map, or {} when the file has none. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors in file (data offset) order. */
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
}

export interface TensorToWrite {
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /**
   * Values or raw bytes. A Uint8Array whose length is the tensor's byte size is taken as raw
   * little-endian bytes for any dtype. Otherwise: Float32Array for F16/BF16 (narrowed,
   * round-to-nearest-even), F32 and F64; Int32Array for the integer dtypes (range-checked
   * for the narrower and unsigned ones).
   */
  readonly data: Float32Array | Int32Array | Uint8Array;
}

export type TensorsToWrite = Readonly<Record<string, TensorToWrite>> | ReadonlyMap<string, TensorToWrite>;

export interface DecodedTensor {
  dtype: 'float32' | 'int32' | 'bool';
  shape: number[];
  values: Float32Array | Int32Array | Uint8Array;
}

interface SourceOption {
  readonly source?: string;
}

/** Bytes per element of each dtype. */
const DTYPE_SIZE: Readonly<Record<SafetensorsDtype, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/** The reference parser's cap on the header length. */
const MAX_HEADER_BYTES = 100_000_000n;
const METADATA_KEY = '__metadata__';
const FLOAT_DTYPES: ReadonlySet<SafetensorsDtype> = new Set<SafetensorsDtype>(['F16', 'BF16', 'F32', 'F64']);

// Typed-array fast paths reinterpret bytes in host order; safetensors is little-endian.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function isSafetensorsDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === 'string' && Object.hasOwn(DTYPE_SIZE, value);
}

/** Bytes per element of a safetensors dtype. */
export function dtypeByteSize(dtype: SafetensorsDtype): number {
  return DTYPE_SIZE[dtype];
}

// ---------------------------------------------------------------------------------------------
// Reading

function fail(message: string, source: string | undefined, hint?: string, cause?: unknown): never {
  throw new SafetensorsError(message, {
    ...(source === undefined ? {} : { path: source }),
    ...(hint === undefined ? {} : { hint }),
    ...(cause === undefined ? {} : { cause }),
  });
}

function quote(name: string): string {
  // JSON quoting keeps control characters and odd names from mangling the message.
  return JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}…` : name);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  // String(), not JSON.stringify: it cannot throw (BigInt) and suits every primitive.
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return `${typeof value} ${text.slice(0, 40)}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

interface RawEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: number[];
  readonly begin: number;
  readonly end: number;
}

function validateEntry(name: string, value: unknown, source: string | undefined): RawEntry {
  const t = `tensor ${quote(name)}`;
  if (!isPlainObject(value)) {
    fail(`safetensors header: ${t} is ${describe(value)}, expected an object with dtype, shape and data_offsets`, source);
  }
  const dtype = value['dtype'];
  if (dtype === undefined) fail(`safetensors header: ${t} has no "dtype"`, source);
  if (typeof dtype !== 'string') fail(`safetensors header: ${t} has "dtype" of type ${describe(dtype)}, expected a string`, source);
  if (!isSafetensorsDtype(dtype)) {
    fail(`safetensors header: ${t} has unknown or unsupported dtype ${quote(dtype)}`, source, `Supported dtypes: ${Object.keys(DTYPE_SIZE).join(', ')}`);
  }

  const shape = value['shape'];
  if (shape === undefined) fail(`safetensors header: ${t} has no "shape"`, source);
  if (!Array.isArray(shape)) fail(`safetensors header: ${t} has "shape" of type ${describe(shape)}, expected an array`, source);
  const dims: number[] = [];
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      fail(`safetensors header: ${t} has shape[${i}] = ${describe(d)}, expected a non-negative integer`, source);
    }
    dims.push(d);
  }

  const offsets = value['data_offsets'];
  if (offsets === undefined) fail(`safetensors header: ${t} has no "data_offsets"`, source);
  if (!Array.isArray(offsets)) {
    fail(`safetensors header: ${t} has "data_offsets" of type ${describe(offsets)}, expected [begin, end]`, source);
  }
  if (offsets.length !== 2) {
    fail(`safetensors header: ${t} has ${offsets.length} data_offsets, expected exactly two [begin, end]`, source);
  }
  const [begin, end] = offsets as unknown[];
  for (const [label, v] of [
    ['begin', begin],
    ['end', end],
  ] as const) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      fail(`safetensors header: ${t} has data_offsets ${label} = ${describe(v)}, expected a non-negative integer`, source);
    }
  }
  const b = begin as number;
  const e = end as number;
  if (e < b) fail(`safetensors header: ${t} has data_offsets end ${e} before begin ${b}`, source);

  // BigInt keeps product(shape) × size exact however large the dimensions are.
  let expected = BigInt(DTYPE_SIZE[dtype]);
  for (const d of dims) expected *= BigInt(d);
  if (expected !== BigInt(e - b)) {
    fail(`safetensors header: ${t} has ${e - b} data bytes, but dtype ${dtype} with shape ${formatShape(dims)} needs ${expected}`, source);
  }
  return { name, dtype, shape: dims, begin: b, end: e };
}

function validateMetadata(value: unknown, source: string | undefined): Record<string, string> {
  if (!isPlainObject(value)) {
    fail(`safetensors header: "__metadata__" is ${describe(value)}, expected a map of strings to strings`, source);
  }
  // A null-prototype object, so a "__proto__" key is stored as data and cannot rewire the prototype.
  const out = Object.create(null) as Record<string, string>;
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') {
      fail(`safetensors header: "__metadata__" key ${quote(key)} is ${describe(v)}, expected a string`, source);
    }
    out[key] = v;
  }
  return Object.freeze(out);
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parses and validates a safetensors file held in memory. Entry bytes are views into `bytes`. */
export function parseSafetensors(bytes: Uint8Array, options: SourceOption = {}): SafetensorsFile {
  const source = options.source;
  if (bytes.length < 8) {
    fail(`safetensors file is ${bytes.length} bytes, shorter than the 8-byte header length`, source, 'The file is truncated or not a safetensors file');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getBigUint64(0, true);
  if (n > MAX_HEADER_BYTES) {
    fail(`safetensors header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`, source, 'The file is corrupt or not a safetensors file');
  }
  if (8n + n > BigInt(bytes.length)) {
    fail(`safetensors header length ${n} runs past the end of the ${bytes.length}-byte file`, source, 'The file is truncated or not a safetensors file');
  }
  const headerEnd = 8 + Number(n);

  let text: string;
  try {
    text = utf8.decode(bytes.subarray(8, headerEnd));
  } catch (err) {
    fail('safetensors header is not valid UTF-8', source, undefined, err);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    const why = err instanceof Error ? `: ${err.message}` : '';
    fail(`safetensors header is not valid JSON${why}`, source, undefined, err);
  }
  if (!isPlainObject(header)) fail(`safetensors header is ${describe(header)}, expected a JSON object`, source);

  let metadata: Record<string, string> = Object.freeze(Object.create(null) as Record<string, string>);
  const raw: RawEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) metadata = validateMetadata(value, source);
    else raw.push(validateEntry(name, value, source));
  }

  // Contiguity, as the reference checks it: sorted by offsets, each begin equals the previous end.
  raw.sort((a, b) => a.begin - b.begin || a.end - b.end);
  const dataLength = bytes.length - headerEnd;
  let prevEnd = 0;
  let prevName: string | undefined;
  for (const r of raw) {
    if (r.begin > prevEnd) {
      const after = prevName === undefined ? 'the start of the data buffer' : `tensor ${quote(prevName)} ends at ${prevEnd}`;
      fail(
        `safetensors header: tensor ${quote(r.name)} begins at ${r.begin}, leaving a gap of ${r.begin - prevEnd} bytes (${after})`,
        source,
        'Tensors must be packed back to back from offset 0',
      );
    }
    if (r.begin < prevEnd) {
      fail(
        `safetensors header: tensor ${quote(r.name)} begins at ${r.begin}, overlapping tensor ${quote(prevName ?? '')} which ends at ${prevEnd}`,
        source,
        'Tensors must not share bytes',
      );
    }
    prevEnd = r.end;
    prevName = r.name;
  }
  if (prevEnd !== dataLength) {
    const last = prevName === undefined ? 'no tensors cover it' : `the last tensor ${quote(prevName)} ends at ${prevEnd}`;
    if (prevEnd > dataLength) {
      fail(`safetensors data buffer is ${dataLength} bytes, but ${last}`, source, 'The file is truncated');
    }
    fail(`safetensors data buffer has ${dataLength - prevEnd} trailing bytes: it is ${dataLength} bytes, but ${last}`, source);
  }

  const entries = new Map<string, SafetensorsEntry>();
  for (const r of raw) {
    entries.set(r.name, {
      name: r.name,
      dtype: r.dtype,
      shape: Object.freeze(r.shape),
      bytes: bytes.subarray(headerEnd + r.begin, headerEnd + r.end),
    });
  }
  return { metadata, entries };
}

// ---------------------------------------------------------------------------------------------
// Decoding

function checkEntryBytes(entry: SafetensorsEntry, source: string | undefined): number {
  // Entries from parseSafetensors are already consistent; this guards hand-built ones.
  if (!isSafetensorsDtype(entry.dtype)) fail(`tensor ${quote(entry.name)} has unknown dtype ${quote(String(entry.dtype))}`, source);
  let count = 1n;
  for (const d of entry.shape) {
    if (!Number.isSafeInteger(d) || d < 0) fail(`tensor ${quote(entry.name)} has invalid shape ${formatShape(entry.shape)}`, source);
    count *= BigInt(d);
  }
  if (count * BigInt(DTYPE_SIZE[entry.dtype]) !== BigInt(entry.bytes.length)) {
    fail(
      `tensor ${quote(entry.name)} has ${entry.bytes.length} bytes, but dtype ${entry.dtype} with shape ${formatShape(entry.shape)} needs ${count * BigInt(DTYPE_SIZE[entry.dtype])}`,
      source,
    );
  }
  return Number(count);
}

function decodeF32Bytes(bytes: Uint8Array, n: number): Float32Array {
  if (HOST_IS_LITTLE_ENDIAN) {
    // Copy into a fresh buffer: file offsets need not be 4-byte aligned for a Float32Array view.
    const copy = new Uint8Array(n * 4);
    copy.set(bytes);
    return new Float32Array(copy.buffer);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** Widens a float entry (F16, BF16, F32, F64) to float32. */
export function decodeFloat32(entry: SafetensorsEntry, options: SourceOption = {}): Float32Array {
  const n = checkEntryBytes(entry, options.source);
  switch (entry.dtype) {
    case 'F16':
      return decodeF16Bytes(entry.bytes);
    case 'BF16':
      return decodeBf16Bytes(entry.bytes);
    case 'F32':
      return decodeF32Bytes(entry.bytes, n);
    case 'F64': {
      const view = new DataView(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
      return out;
    }
    default:
      return fail(`tensor ${quote(entry.name)} has dtype ${entry.dtype}, expected a float dtype (F16, BF16, F32 or F64)`, options.source);
  }
}

function outOfInt32(entry: SafetensorsEntry, index: number, value: bigint, source: string | undefined): never {
  return fail(
    `tensor ${quote(entry.name)} (${entry.dtype}) holds ${value} at flat index ${index}, outside the int32 range tfjs can hold`,
    source,
    'Store this tensor as I32, or keep its values within [-2147483648, 2147483647]',
  );
}

function decodeInt32(entry: SafetensorsEntry, n: number, source: string | undefined): Int32Array {
  const b = entry.bytes;
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = new Int32Array(n);
  switch (entry.dtype) {
    case 'U8':
      for (let i = 0; i < n; i++) out[i] = b[i] as number;
      break;
    case 'I8':
      for (let i = 0; i < n; i++) out[i] = view.getInt8(i);
      break;
    case 'I16':
      for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true);
      break;
    case 'U16':
      for (let i = 0; i < n; i++) out[i] = view.getUint16(i * 2, true);
      break;
    case 'I32':
      for (let i = 0; i < n; i++) out[i] = view.getInt32(i * 4, true);
      break;
    case 'U32':
      for (let i = 0; i < n; i++) {
        const v = view.getUint32(i * 4, true);
        if (v > 0x7fffffff) outOfInt32(entry, i, BigInt(v), source);
        out[i] = v;
      }
      break;
    case 'I64':
      for (let i = 0; i < n; i++) {
        // In int32 range exactly when the high word is the sign extension of the low word.
        const lo = view.getInt32(i * 8, true);
        const hi = view.getInt32(i * 8 + 4, true);
        if (hi !== (lo < 0 ? -1 : 0)) outOfInt32(entry, i, view.getBigInt64(i * 8, true), source);
        out[i] = lo;
      }
      break;
    case 'U64':
      for (let i = 0; i < n; i++) {
        const lo = view.getUint32(i * 8, true);
        const hi = view.getUint32(i * 8 + 4, true);
        if (hi !== 0 || lo > 0x7fffffff) outOfInt32(entry, i, view.getBigUint64(i * 8, true), source);
        out[i] = lo;
      }
      break;
    default:
      fail(`tensor ${quote(entry.name)} has dtype ${entry.dtype}, expected an integer dtype`, source);
  }
  return out;
}

/** Decodes an entry to a dtype tfjs can hold: floats → float32, integers → int32 (range-checked), BOOL → bool. */
export function decodeEntry(entry: SafetensorsEntry, options: SourceOption = {}): DecodedTensor {
  const n = checkEntryBytes(entry, options.source);
  const shape = [...entry.shape];
  if (FLOAT_DTYPES.has(entry.dtype)) return { dtype: 'float32', shape, values: decodeFloat32(entry, options) };
  if (entry.dtype === 'BOOL') {
    // torch writes 0/1, but normalise any non-zero byte so tfjs sees a proper bool.
    const values = new Uint8Array(n);
    for (let i = 0; i < n; i++) values[i] = entry.bytes[i] === 0 ? 0 : 1;
    return { dtype: 'bool', shape, values };
  }
  return { dtype: 'int32', shape, values: decodeInt32(entry, n, options.source) };
}

// ---------------------------------------------------------------------------------------------
// Writing

const INT_RANGE: Partial<Record<SafetensorsDtype, readonly [number, number]>> = {
  U8: [0, 0xff],
  I8: [-0x80, 0x7f],
  I16: [-0x8000, 0x7fff],
  U16: [0, 0xffff],
  I32: [-0x80000000, 0x7fffffff],
  U32: [0, 0x7fffffff],
  I64: [-0x80000000, 0x7fffffff],
  U64: [0, 0x7fffffff],
};

function writeFail(name: string, source: string | undefined, message: string, hint?: string): never {
  return fail(`cannot write tensor ${quote(name)}: ${message}`, source, hint);
}

/** The little-endian bytes of one tensor, converting values to its dtype where needed. */
function tensorBytes(name: string, t: TensorToWrite, source: string | undefined): Uint8Array {
  if (!isSafetensorsDtype(t.dtype)) writeFail(name, source, `unknown dtype ${quote(String(t.dtype))}`);
  const size = DTYPE_SIZE[t.dtype];
  let total = 1n;
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) writeFail(name, source, `shape ${formatShape(t.shape)} has a dimension that is not a non-negative integer`);
    total *= BigInt(d);
  }
  if (total * BigInt(size) > BigInt(Number.MAX_SAFE_INTEGER)) writeFail(name, source, `shape ${formatShape(t.shape)} is too large`);
  const count = Number(total);
  const data = t.data;
  const mismatch = (): never =>
    writeFail(
      name,
      source,
      `got ${data.constructor.name} of length ${data.length} for dtype ${t.dtype} with shape ${formatShape(t.shape)} (${count} elements, ${count * size} bytes)`,
    );

  if (data instanceof Uint8Array) {
    // Raw bytes for any dtype (for BOOL and U8 the raw bytes are the values).
    if (data.length !== count * size) mismatch();
    return data;
  }
  if (data.length !== count) mismatch();

  if (data instanceof Float32Array) {
    switch (t.dtype) {
      case 'F16':
        return encodeF16Bytes(data);
      case 'BF16':
        return encodeBf16Bytes(data);
      case 'F32': {
        if (HOST_IS_LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        const out = new Uint8Array(count * 4);
        const view = new DataView(out.buffer);
        for (let i = 0; i < count; i++) view.setFloat32(i * 4, data[i] as number, true);
        return out;
      }
      case 'F64': {
        const out = new Uint8Array(count * 8);
        const view = new DataView(out.buffer);
        for (let i = 0; i < count; i++) view.setFloat64(i * 8, data[i] as number, true);
        return out;
      }
      default:
        return writeFail(name, source, `Float32Array data cannot be written as ${t.dtype}`, 'Pass an Int32Array or raw bytes for integer dtypes');
    }
  }

  // Int32Array: integer dtypes only.
  const range = INT_RANGE[t.dtype];
  if (range === undefined) writeFail(name, source, `Int32Array data cannot be written as ${t.dtype}`, 'Pass a Float32Array for float dtypes');
  const [lo, hi] = range;
  const out = new Uint8Array(count * size);
  const view = new DataView(out.buffer);
  for (let i = 0; i < count; i++) {
    const v = data[i] as number;
    if (v < lo || v > hi) writeFail(name, source, `value ${v} at flat index ${i} does not fit ${t.dtype}`);
    const o = i * size;
    switch (size) {
      case 1:
        view.setUint8(o, v & 0xff);
        break;
      case 2:
        view.setUint16(o, v & 0xffff, true);
        break;
      case 4:
        view.setInt32(o, v, true);
        break;
      default:
        // 64-bit: low word is the value, high word its sign extension.
        view.setInt32(o, v, true);
        view.setInt32(o + 4, v < 0 ? -1 : 0, true);
    }
  }
  return out;
}

/** Serialises tensors (in insertion order) and optional metadata to safetensors bytes. */
export function serializeSafetensors(tensors: TensorsToWrite, metadata?: Readonly<Record<string, string>>): Uint8Array {
  return serialize(tensors, metadata, undefined);
}

/** serializeSafetensors with the file it is for named in errors. */
export function serialize(tensors: TensorsToWrite, metadata: Readonly<Record<string, string>> | undefined, source: string | undefined): Uint8Array {
  const list: [string, TensorToWrite][] = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  // The header is assembled by hand: JSON.stringify of an object would move integer-like
  // tensor names ahead of the others and break the insertion order.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const meta: string[] = [];
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') {
        fail(`cannot write safetensors metadata: key ${quote(key)} is ${describe(value)}, expected a string`, source);
      }
      meta.push(`${JSON.stringify(key)}:${JSON.stringify(value)}`);
    }
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${meta.join(',')}}`);
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of list) {
    if (name === METADATA_KEY) writeFail(name, source, `"${METADATA_KEY}" is reserved for the metadata map`, 'Rename the tensor');
    const b = tensorBytes(name, t, source);
    const entry = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + b.length] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    chunks.push(b);
    offset += b.length;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  // Spaces pad the header to a multiple of 8 so the data buffer starts 8-byte aligned.
  const headerLength = json.length + ((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + headerLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLength);
  let at = 8 + headerLength;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
