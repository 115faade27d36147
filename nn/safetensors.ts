// safetensors, the Hugging Face Hub's weight format, read and written from
// scratch. A file is three parts:
//   8 bytes   N, the header length, a little-endian u64
//   N bytes   UTF-8 JSON: {"__metadata__": {"k": "v"},
//               "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//             (may end in spaces, which writers add to align the data)
//   the rest  the tensors' bytes, little-endian, row-major; offsets count
//             from the first byte after the header
// This file is pure and runs in a browser too; node/safetensors.ts adds the
// Node file I/O.

/** A loaded tensor: floats become float32, integers and booleans int32. */
export interface RawTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

/** A tensor to write: F32 and BF16 take a Float32Array, I32 an Int32Array. */
export type WriteTensor =
  { dtype: 'F32' | 'BF16'; shape: number[]; data: Float32Array } | { dtype: 'I32'; shape: number[]; data: Int32Array };

/** One validated header entry; begin and end are absolute byte offsets in the file. */
export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** A validated header: entries in file order, the metadata strings, where the data starts. */
export interface Header {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
  dataStart: number;
}

// The dtypes we read, with their sizes in bytes. F64 is narrowed to float32
// and I64 to int32 (with a range check): our tensors hold nothing wider.
const READ_SIZES = new Map([
  ['F64', 8],
  ['F32', 4],
  ['F16', 2],
  ['BF16', 2],
  ['I64', 8],
  ['I32', 4],
  ['U8', 1],
  ['BOOL', 1],
]);

// The dtypes we write, in the order PyTorch's writer (the Rust safetensors
// crate) lays them out: widest alignment first, so that with the header
// padded to 8 bytes every tensor starts aligned to its element size.
const WRITE_ORDER = ['F32', 'I32', 'BF16'];

// Beyond this a "header length" is garbage (the Rust reader's limit too).
const MAX_HEADER_BYTES = 100_000_000;

// Typed arrays use the host's byte order and the format is little-endian.
// Every platform Node and browsers run on today is little-endian too.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('safetensors: big-endian hosts are not supported');
}

function fail(source: string, problem: string): never {
  throw new Error(`${source}: ${problem}`);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isCount(x: unknown): x is number {
  return Number.isSafeInteger(x) && (x as number) >= 0;
}

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Reads the header length N from a file's first 8 bytes and checks that it fits the file. */
export function headerLength(first8: Uint8Array, fileSize: number, source: string): number {
  if (fileSize < 8)
    fail(source, `file is ${fileSize} bytes, too short to be safetensors (needs 8 for the header length)`);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES))
    fail(source, `header length ${n} is over the ${MAX_HEADER_BYTES}-byte limit: not a safetensors file?`);
  if (8 + Number(n) > fileSize) fail(source, `header length ${n} runs past the end of the file (${fileSize} bytes)`);
  return Number(n);
}

/**
 * Parses the N header bytes that follow the length and validates every entry
 * against the file size, so nothing is loaded from a file that is half wrong.
 */
export function parseHeader(json: Uint8Array, fileSize: number, source: string): Header {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    fail(source, 'header is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    // V8's message quotes the header, which may hold newlines and other
    // control characters: keep the error one printable line.
    fail(source, `header is not valid JSON (${(e as Error).message.replace(/[\s\x00-\x1f\x7f]+/g, ' ')})`);
  }
  if (!isObject(parsed)) fail(source, 'header is not a JSON object');

  const dataStart = 8 + json.length;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
  for (const [name, value] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (!isObject(value) || !Object.values(value).every((v) => typeof v === 'string')) {
        fail(source, '__metadata__ must be an object whose values are all strings');
      }
      metadata = value as Record<string, string>;
      continue;
    }
    const { dtype, shape, begin, end } = checkEntry(name, value, dataSize, source);
    entries.push({ name, dtype, shape, begin: dataStart + begin, end: dataStart + end });
  }

  // In file order, two neighbours overlap if one starts before the other
  // ends. Empty tensors hold no bytes, so they cannot overlap anything.
  entries.sort((a, b) => a.begin - b.begin);
  const spans = entries.filter((e) => e.end > e.begin);
  for (let i = 1; i < spans.length; i++) {
    const [a, b] = [spans[i - 1], spans[i]];
    if (b.begin < a.end) fail(source, `tensors ${JSON.stringify(a.name)} and ${JSON.stringify(b.name)} overlap`);
  }
  return { tensors: new Map(entries.map((e) => [e.name, e])), metadata, dataStart };
}

// Offsets here are relative to the data section, as in the file.
function checkEntry(name: string, value: unknown, dataSize: number, source: string) {
  const where = `tensor ${JSON.stringify(name)}`;
  if (!isObject(value)) fail(source, `${where} is not an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string') fail(source, `${where} has no dtype string`);
  const size = READ_SIZES.get(dtype);
  if (size === undefined) {
    fail(
      source,
      `${where} has dtype ${JSON.stringify(dtype)}, which is not supported (only ${[...READ_SIZES.keys()].join(', ')})`,
    );
  }
  // Values from the file are not echoed back: a hostile one could be huge.
  if (!Array.isArray(shape) || !shape.every(isCount))
    fail(source, `${where} has no shape, or one that is not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    fail(source, `${where} has no data_offsets, or ones that are not two non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(source, `${where} has data_offsets [${begin}, ${end}] that end before they begin`);
  if (end > dataSize)
    fail(source, `${where} has data_offsets [${begin}, ${end}] past the end of the data section (${dataSize} bytes)`);
  const bytes = numel(shape) * size;
  if (bytes !== end - begin) {
    fail(
      source,
      `${where} is ${dtype} of shape [${shape.join(', ')}], which needs ${bytes} bytes, ` +
        `but data_offsets span ${end - begin}`,
    );
  }
  return { dtype, shape, begin, end };
}

// F32 and I32 need no conversion, so their tensors view the bytes in place
// (a model is not copied twice): the fs reader reads each tensor into a
// fresh buffer, and PyTorch's writer keeps tensors aligned. Only misaligned
// bytes, which a typed array cannot view, are copied.
function inPlace(bytes: Uint8Array): [ArrayBufferLike, number] {
  return bytes.byteOffset % 4 === 0 ? [bytes.buffer, bytes.byteOffset] : [new Uint8Array(bytes).buffer, 0];
}

/**
 * Decodes one tensor from exactly its bytes (file offsets entry.begin to
 * entry.end). F32 and I32 data views `bytes` when aligned; other dtypes are
 * converted into a fresh array.
 */
export function decodeTensor(entry: TensorEntry, bytes: Uint8Array, source: string): RawTensor {
  const where = `tensor ${JSON.stringify(entry.name)}`;
  if (bytes.length !== entry.end - entry.begin)
    fail(source, `${where} needs ${entry.end - entry.begin} bytes, got ${bytes.length}`);
  const shape = [...entry.shape]; // the caller's to keep, apart from the header's
  const n = numel(shape);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const float = (data: Float32Array): RawTensor => ({ dtype: 'float32', shape, data });
  const int = (data: Int32Array): RawTensor => ({ dtype: 'int32', shape, data });
  switch (entry.dtype) {
    case 'F32':
      return float(new Float32Array(...inPlace(bytes), n));
    case 'I32':
      return int(new Int32Array(...inPlace(bytes), n));
    case 'U8':
    case 'BOOL':
      return int(Int32Array.from(bytes));
    case 'BF16': {
      // A bf16 is the top half of a float32.
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return float(new Float32Array(bits.buffer));
    }
    case 'F16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToF32(view.getUint16(2 * i, true));
      return float(out);
    }
    case 'F64': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(8 * i, true);
      return float(out);
    }
    case 'I64': {
      // Token ids and targets fit int32; anything else is an error, not a
      // silent wrap. It fits iff the high word is the low word's sign.
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const lo = view.getInt32(8 * i, true);
        if (view.getInt32(8 * i + 4, true) !== lo >> 31) {
          fail(source, `${where} (I64) holds ${view.getBigInt64(8 * i, true)} at index ${i}, outside the int32 range`);
        }
        out[i] = lo;
      }
      return int(out);
    }
  }
  return fail(source, `${where} has dtype ${JSON.stringify(entry.dtype)}, which is not supported`);
}

/**
 * Reads a whole safetensors file held in memory (e.g. fetched in a browser).
 * F32 and I32 tensors are views into `bytes`, not copies: do not reuse it.
 */
export function parseSafetensors(bytes: Uint8Array, source: string): Map<string, RawTensor> {
  const n = headerLength(bytes, bytes.length, source);
  const header = parseHeader(bytes.subarray(8, 8 + n), bytes.length, source);
  const out = new Map<string, RawTensor>();
  for (const [name, e] of header.tensors) out.set(name, decodeTensor(e, bytes.subarray(e.begin, e.end), source));
  return out;
}

/**
 * Encodes tensors and optional string metadata byte-for-byte as PyTorch's
 * writer does. Returns chunks whose concatenation is the file (write them in
 * turn, or wrap them in a Blob): F32 and I32 chunks are views of the callers'
 * arrays, so a large model is not copied whole.
 */
export function serialize(tensors: Record<string, WriteTensor>, metadata?: Record<string, string>): Uint8Array[] {
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') throw new Error(`safetensors: metadata ${JSON.stringify(k)} must be a string`);
  }
  // Same order as the Rust writer: dtype (see WRITE_ORDER), then name. It
  // compares names as UTF-8 bytes; < agrees unless names mix characters
  // above U+E000 with ones outside the BMP.
  const rank = (name: string) => WRITE_ORDER.indexOf(tensors[name].dtype);
  const names = Object.keys(tensors).sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  const parts = metadata ? [`"__metadata__":${JSON.stringify(metadata)}`] : [];
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const bytes = encodeTensor(name, t);
    const entry = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    chunks.push(bytes);
    offset += bytes.length;
  }
  // Pad the header with spaces to a multiple of 8 so the data starts aligned.
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  return [head, ...chunks];
}

function encodeTensor(name: string, t: WriteTensor): Uint8Array {
  const where = `safetensors: tensor ${JSON.stringify(name)}`;
  if (name === '__metadata__') throw new Error(`${where}: the name is reserved for metadata`);
  if (!WRITE_ORDER.includes(t.dtype))
    throw new Error(`${where}: cannot write dtype ${t.dtype} (only ${WRITE_ORDER.join(', ')})`);
  const arrayType = t.dtype === 'I32' ? Int32Array : Float32Array;
  if (!(t.data instanceof arrayType)) throw new Error(`${where}: ${t.dtype} data must be a ${arrayType.name}`);
  if (!Array.isArray(t.shape) || !t.shape.every(isCount))
    throw new Error(`${where}: shape must be a list of non-negative integers`);
  if (numel(t.shape) !== t.data.length) {
    throw new Error(
      `${where}: shape [${t.shape.join(', ')}] holds ${numel(t.shape)} values but data has ${t.data.length}`,
    );
  }
  if (t.dtype !== 'BF16') return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const bits = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
  const out = new Uint16Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bf16FromBits(bits[i]);
  return new Uint8Array(out.buffer);
}

// Scratch space to reinterpret float32 bits.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// float32 bits to bfloat16 bits, rounding to nearest, ties to even, as
// PyTorch does: add just under half a bf16 step (plus one if the kept part is
// odd) and truncate. Every NaN becomes PyTorch's quiet NaN 0x7fc0.
function bf16FromBits(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** Rounds x (taken as a float32) to bfloat16 bits, as PyTorch's .to(torch.bfloat16) does. */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  return bf16FromBits(u32[0]);
}

/** The float value of bfloat16 bits (exact). */
export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

/** The float value of IEEE half-precision bits (exact). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero and subnormals
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
