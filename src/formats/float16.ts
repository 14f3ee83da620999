/**
 * Half-precision conversions for safetensors I/O. tfjs holds only float32, so F16 and BF16
 * tensors are widened on read (exact: every half value is a float32) and narrowed on write
 * with round-to-nearest-even, the rounding IEEE 754 and PyTorch's `.half()` / `.bfloat16()` use.
 *
 * All functions work on bit patterns through integer views, so NaN payloads and signed zeros
 * survive and the results do not depend on the host's endianness (input bytes are little-endian).
 */

// One shared scratch pair to reinterpret a single float32 as its bits.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** float32 bit pattern of an IEEE binary16 bit pattern (exact widening). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) {
    // Infinity or NaN: all-ones exponent, mantissa (payload) shifted into place.
    return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  }
  if (exp === 0) {
    if (mant === 0) return sign >>> 0; // ±0
    // Subnormal half: normalise it, since every half subnormal is a normal float32.
    let e = -14;
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      e -= 1;
    }
    mant &= 0x3ff;
    return (sign | ((e + 127) << 23) | (mant << 13)) >>> 0;
  }
  return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
}

/** IEEE binary16 bit pattern nearest to a float32 bit pattern (round-to-nearest-even). */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00; // ±Infinity
    // NaN: keep the top payload bits (so F16 → F32 → F16 is exact), but when they are all
    // zero set the quiet bit, or the NaN would turn into infinity.
    return mant >>> 13 === 0 ? sign | 0x7e00 : sign | 0x7c00 | (mant >>> 13);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // too large: overflows to infinity
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: rounds to ±0
    // Result is subnormal: shift the full significand (with its implicit 1) into place.
    const full = mant | 0x800000;
    const shift = 14 - e;
    let half = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half += 1;
    return sign | half; // a carry into bit 10 correctly yields the smallest normal
  }
  let half = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry may ripple into the exponent, and from 0x7bff into infinity (0x7c00), as it should.
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half += 1;
  return half;
}

/** bfloat16 bit pattern nearest to a float32 bit pattern (round-to-nearest-even). */
export function f32BitsToBf16Bits(x: number): number {
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
    // NaN: truncate (exact for widened BF16), but if that drops the whole payload set the
    // quiet bit, or the NaN would turn into infinity.
    const top = (x >>> 16) & 0xffff;
    return (top & 0x7f) === 0 ? top | 0x40 : top;
  }
  const lsb = (x >>> 16) & 1;
  // Plain number arithmetic: the largest non-NaN input (0xff800000) plus 0x8000 stays below 2^32.
  return Math.floor(((x >>> 0) + 0x7fff + lsb) / 0x10000) & 0xffff;
}

/** float32 value of an IEEE binary16 bit pattern. */
export function f16ToFloat32(h: number): number {
  scratchU32[0] = f16BitsToF32Bits(h);
  return scratchF32[0] as number;
}

/** float32 value of a bfloat16 bit pattern. */
export function bf16ToFloat32(b: number): number {
  scratchU32[0] = (b & 0xffff) << 16;
  return scratchF32[0] as number;
}

/** binary16 bit pattern of a number (first rounded to float32, then to half, as tfjs data would be). */
export function float32ToF16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToF16Bits(scratchU32[0] as number);
}

/** bfloat16 bit pattern of a number (first rounded to float32). */
export function float32ToBf16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToBf16Bits(scratchU32[0] as number);
}

// Widening table for F16: 65,536 float32 bit patterns (256 KiB), built on first use.
let f16Table: Uint32Array | undefined;
function getF16Table(): Uint32Array {
  if (f16Table === undefined) {
    f16Table = new Uint32Array(0x10000);
    for (let h = 0; h < 0x10000; h++) f16Table[h] = f16BitsToF32Bits(h);
  }
  return f16Table;
}

/** Widens little-endian F16 bytes to float32. `bytes.length` must be even. */
export function decodeF16Bytes(bytes: Uint8Array): Float32Array {
  const n = bytes.length >>> 1;
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  const table = getF16Table();
  for (let i = 0, j = 0; i < n; i++, j += 2) {
    bits[i] = table[(bytes[j] as number) | ((bytes[j + 1] as number) << 8)] as number;
  }
  return out;
}

/** Widens little-endian BF16 bytes to float32. `bytes.length` must be even. */
export function decodeBf16Bytes(bytes: Uint8Array): Float32Array {
  const n = bytes.length >>> 1;
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0, j = 0; i < n; i++, j += 2) {
    // bfloat16 is the top half of a float32, so widening is a 16-bit shift.
    bits[i] = (((bytes[j] as number) << 16) | ((bytes[j + 1] as number) << 24)) >>> 0;
  }
  return out;
}

/** Narrows float32 values to little-endian F16 bytes (round-to-nearest-even). */
export function encodeF16Bytes(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint8Array(values.length * 2);
  for (let i = 0, j = 0; i < values.length; i++, j += 2) {
    const h = f32BitsToF16Bits(bits[i] as number);
    out[j] = h & 0xff;
    out[j + 1] = h >>> 8;
  }
  return out;
}

/** Narrows float32 values to little-endian BF16 bytes (round-to-nearest-even). */
export function encodeBf16Bytes(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint8Array(values.length * 2);
  for (let i = 0, j = 0; i < values.length; i++, j += 2) {
    const b = f32BitsToBf16Bits(bits[i] as number);
    out[j] = b & 0xff;
    out[j + 1] = b >>> 8;
  }
  return out;
}
