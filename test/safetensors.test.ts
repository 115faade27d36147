import { GOLD as FIXTURE_GOLD } from './fixtures.ts';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { bf16ToF32, f16ToF32, f32ToBf16, parseSafetensors, serialize } from '../nn/safetensors.ts';
import type { RawTensor, WriteTensor } from '../nn/safetensors.ts';
import { loadSafetensors, openSafetensors, saveSafetensors } from '../node/safetensors.ts';

// Files written by PyTorch's safetensors (copied from the shared gold folder).
const GOLD = `${FIXTURE_GOLD}nanovlm-tiny/`;
const CKPT = path.join(GOLD, 'checkpoint/model.safetensors'); // F32
const SMOLLM = path.join(GOLD, 'hf-smollm2/model.safetensors'); // BF16
const EXPECTED = path.join(GOLD, 'expected.safetensors'); // F32 + I32

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safetensors-test-'));
});
afterEach(() => {
  vi.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

// A safetensors file from a header (object or raw JSON text) and data bytes,
// written without our serializer so tests can build broken files.
function rawFile(header: unknown, data: ArrayLike<number> = [], jsonBytes?: Uint8Array): Uint8Array {
  const json = jsonBytes ?? new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function bytesOf(...arrays: ArrayBufferView[]): number[] {
  return arrays.flatMap((a) => [...new Uint8Array(a.buffer, a.byteOffset, a.byteLength)]);
}

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

function f32FromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

function concat(chunks: Uint8Array[]): Buffer {
  return Buffer.concat(chunks);
}

// Our RawTensors back in the writer's form, in the dtype the file had.
function asWritable(file: string): { tensors: Record<string, WriteTensor>; metadata: Record<string, string> } {
  const f = openSafetensors(file);
  const tensors: Record<string, WriteTensor> = {};
  for (const name of f.keys()) {
    const { dtype, shape } = f.info(name);
    const t = f.get(name);
    tensors[name] =
      dtype === 'I32'
        ? { dtype: 'I32', shape, data: t.data as Int32Array }
        : { dtype: dtype as 'F32' | 'BF16', shape, data: t.data as Float32Array };
  }
  f.close();
  return { tensors, metadata: f.metadata };
}

describe('reading files written by PyTorch', () => {
  // Expected values come from a python3 one-off over the raw bytes, without
  // our code: struct.unpack_from('<f', b, 8 + N + begin + 4 * i) for F32,
  // '<H' then `struct.unpack('<f', struct.pack('<I', h << 16))` for BF16,
  // '<i' for I32, with N and begin from json.loads of the header.
  it('reads the F32 checkpoint', () => {
    const f = openSafetensors(CKPT);
    expect(f.metadata).toEqual({ format: 'pt' });
    const keys = f.keys();
    expect(keys.length).toBe(51);
    expect(keys[0]).toBe('MP.proj.weight');
    expect(keys[50]).toBe('vision_encoder.patch_embedding.position_embedding');
    expect(f.info('vision_encoder.patch_embedding.conv.weight')).toEqual({ dtype: 'F32', shape: [64, 3, 8, 8] });
    f.close();

    const all = loadSafetensors(CKPT);
    expect([...all.keys()]).toEqual(keys);
    for (const t of all.values()) expect(t.dtype).toBe('float32');
    const mp = all.get('MP.proj.weight')!;
    expect(mp.shape).toEqual([64, 256]);
    expect([mp.data[0], mp.data[1], mp.data[16383]]).toEqual([
      -0.06472592800855637, 0.03163663297891617, -0.0019294912926852703,
    ]);
    expect([...all.get('decoder.rotary_embd.inv_freq')!.data]).toEqual([
      1.0, 0.23713736236095428, 0.05623412877321243, 0.01333521492779255, 0.003162277862429619, 0.0007498941849917173,
      0.00017782794020604342, 4.216965317027643e-5,
    ]);
    const conv = all.get('vision_encoder.patch_embedding.conv.weight')!;
    expect([conv.data[0], conv.data[12287]]).toEqual([0.03904876485466957, 0.08052226901054382]);
  });

  it('reads BF16 weights, widened to float32', () => {
    const all = loadSafetensors(SMOLLM);
    expect(all.size).toBe(20);
    const emb = all.get('model.embed_tokens.weight')!;
    expect(emb.dtype).toBe('float32');
    expect(emb.shape).toEqual([512, 64]);
    // bits 0x3de4, 0xbe1f, 0x3e26
    expect([emb.data[0], emb.data[1], emb.data[32767]]).toEqual([0.111328125, -0.1552734375, 0.162109375]);
    const norm = all.get('model.norm.weight')!;
    expect([norm.data[0], norm.data[63]]).toEqual([1.0859375, 1.2109375]); // 0x3f8b, 0x3f9b
  });

  it('reads int32 inputs next to float32 outputs', () => {
    const all = loadSafetensors(EXPECTED);
    expect(all.size).toBe(27);
    const ids = all.get('input_ids')!;
    expect(ids.dtype).toBe('int32');
    expect(ids.shape).toEqual([2, 12]);
    expect([...ids.data]).toEqual([
      0, 0, 0, 150, 281, 507, 462, 287, 469, 344, 357, 235, 249, 25, 38, 230, 80, 324, 57, 419, 328, 501, 244, 18,
    ]);
    expect([...all.get('targets')!.data]).toEqual([
      -100, -100, -100, -100, -100, -100, -100, 469, 344, 357, 235, -100, -100, -100, -100, 80, 324, 57, 419, 328, 501,
      244, 18, -100,
    ]);
    expect([...all.get('greedy_tokens')!.data]).toEqual([
      385, 385, 385, 385, 385, 385, 385, 385, 484, 366, 366, 366, 366, 366, 301, 301,
    ]);
    expect(all.get('loss')!.data[0]).toBe(7.146432399749756);
    expect(all.get('grad_total_norm')!.data[0]).toBe(8.171152114868164);
  });

  it('reads the same from memory as from disk', () => {
    const fromDisk = loadSafetensors(EXPECTED);
    const fromMemory = parseSafetensors(fs.readFileSync(EXPECTED), 'expected.safetensors');
    expect([...fromMemory.keys()]).toEqual([...fromDisk.keys()]);
    for (const [name, t] of fromMemory) {
      const d = fromDisk.get(name)!;
      expect([t.dtype, t.shape]).toEqual([d.dtype, d.shape]);
      expect(Buffer.from(bytesOf(t.data)).equals(Buffer.from(bytesOf(d.data)))).toBe(true);
    }
  });

  // PyTorch orders tensors by dtype (F32, then I32, then BF16), then name,
  // puts __metadata__ first and pads the header with spaces to 8 bytes.
  it.each([
    ['F32', CKPT],
    ['F32 + I32', EXPECTED],
    ['BF16', SMOLLM],
  ])('writes %s byte-identical to PyTorch', (_, file) => {
    const { tensors, metadata } = asWritable(file);
    expect(concat(serialize(tensors, metadata)).equals(fs.readFileSync(file))).toBe(true);
  });
});

describe('writing', () => {
  it('round-trips F32, BF16 and I32 with metadata', () => {
    const rand = mulberry32(7);
    const w = new Float32Array([1.5, -0, NaN, Infinity, -Infinity, f32FromBits(1)]);
    const b = Float32Array.from({ length: 20 }, () => (rand() - 0.5) * 10 ** (rand() * 8 - 4));
    const i = new Int32Array([-(2 ** 31), 2 ** 31 - 1, 0]);
    const metadata = { format: 'pt', note: 'a "quoted" ünïcode line\n' };
    const file = path.join(dir, 'rt.safetensors');
    saveSafetensors(
      file,
      {
        w: { dtype: 'F32', shape: [2, 3], data: w },
        b: { dtype: 'BF16', shape: [4, 5], data: b },
        i: { dtype: 'I32', shape: [3], data: i },
        empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
        scalar: { dtype: 'I32', shape: [], data: new Int32Array([42]) },
      },
      metadata,
    );

    const f = openSafetensors(file);
    expect(f.metadata).toEqual(metadata);
    expect(f.keys()).toEqual(['empty', 'w', 'i', 'scalar', 'b']); // F32, I32, BF16; then by name
    expect(f.info('b')).toEqual({ dtype: 'BF16', shape: [4, 5] });
    const got = f.getAll();
    f.close();
    expect(bytesOf(got.get('w')!.data)).toEqual(bytesOf(w)); // bit-exact, NaN included
    expect(got.get('i')).toEqual({ dtype: 'int32', shape: [3], data: i });
    expect(got.get('empty')).toEqual({ dtype: 'float32', shape: [0, 4], data: new Float32Array(0) });
    expect(got.get('scalar')).toEqual({ dtype: 'int32', shape: [], data: new Int32Array([42]) });
    const gb = got.get('b')!;
    expect(gb.dtype).toBe('float32');
    for (let k = 0; k < b.length; k++) {
      expect(Math.abs(gb.data[k] - b[k])).toBeLessThanOrEqual(Math.abs(b[k]) * 2 ** -8); // half a bf16 step
      expect(gb.data[k]).toBe(bf16ToF32(f32ToBf16(b[k])));
    }
    const header = fs.readFileSync(file).readBigUint64LE(0);
    expect(Number(header) % 8).toBe(0);
  });

  it('rounds float32 to bfloat16 to nearest, ties to even, as PyTorch does', () => {
    const cases: [number, number][] = [
      [0x3f800000, 0x3f80], // 1.0 exactly
      [0x3f808000, 0x3f80], // tie: keep the even 0x3f80
      [0x3f818000, 0x3f82], // tie: up to the even 0x3f82
      [0x3f808001, 0x3f81], // just above a tie
      [0x3f807fff, 0x3f80], // just below a tie
      [0x7f7fffff, 0x7f80], // the largest float32 rounds up to infinity
      [0x7f800000, 0x7f80], // +inf
      [0xff800000, 0xff80], // -inf
      [0x7fc00000, 0x7fc0], // NaN
      [0x7f800001, 0x7fc0], // a NaN that naive truncation would turn into inf
      [0xffc00001, 0x7fc0], // any NaN becomes the positive quiet NaN
      [0x80000000, 0x8000], // -0
      [0x00000001, 0x0000], // the smallest subnormal rounds to 0
      [0x00008000, 0x0000], // subnormal tie, to even
      [0x00018000, 0x0002], // subnormal tie, to even
      [0x00010000, 0x0001], // exact bf16 subnormal
      [0x80000001, 0x8000], // rounds to -0
      [0x007fffff, 0x0080], // the largest subnormal rounds up to the smallest normal
    ];
    for (const [bits, want] of cases) expect(f32ToBf16(f32FromBits(bits)), `0x${bits.toString(16)}`).toBe(want);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0x0001)).toBe(2 ** -133);
    expect(Object.is(bf16ToF32(0x8000), -0)).toBe(true);
    expect(bf16ToF32(0xff80)).toBe(-Infinity);
    expect(bf16ToF32(0x7fc0)).toBeNaN();

    // And through a file: NaN stays NaN, subnormals survive.
    const data = new Float32Array([NaN, f32FromBits(0x00010000), f32FromBits(0x3f818000), -Infinity]);
    const back = parseSafetensors(concat(serialize({ x: { dtype: 'BF16', shape: [4], data } })), 'mem').get('x')!.data;
    expect(back[0]).toBeNaN();
    expect([...back.slice(1)]).toEqual([f32FromBits(0x00010000), f32FromBits(0x3f820000), -Infinity]);
  });

  it('rejects what it cannot write', () => {
    const t = (dtype: string, data: unknown, shape = [1]) => ({ x: { dtype, shape, data } as unknown as WriteTensor });
    expect(() => serialize(t('F16', new Float32Array(1)))).toThrow(/tensor "x": cannot write dtype F16/);
    expect(() => serialize(t('I32', new Float32Array(1)))).toThrow(/I32 data must be a Int32Array/);
    expect(() => serialize(t('F32', new Float32Array(2)))).toThrow(/shape \[1\] holds 1 values but data has 2/);
    expect(() => serialize(t('F32', new Float32Array(1), [-1]))).toThrow(
      /shape must be a list of non-negative integers/,
    );
    expect(() => serialize({ __metadata__: t('F32', new Float32Array(1)).x })).toThrow(/reserved/);
    expect(() => serialize({}, { n: 1 } as unknown as Record<string, string>)).toThrow(/metadata "n" must be a string/);
  });

  it('saves atomically: a write that fails midway leaves the old file and no temp file', () => {
    const file = path.join(dir, 'model.safetensors');
    saveSafetensors(file, { a: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } });
    const before = fs.readFileSync(file);

    // The disk fills up after the header is written.
    const writeSync = fs.writeSync;
    let calls = 0;
    vi.spyOn(fs, 'writeSync').mockImplementation((...args: unknown[]) => {
      if (++calls === 2) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return Reflect.apply(writeSync, fs, args) as number;
    });
    const big = { a: { dtype: 'F32' as const, shape: [1000], data: new Float32Array(1000).fill(3) } };
    expect(() => saveSafetensors(file, big)).toThrow(/ENOSPC/);
    expect(calls).toBe(2);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(['model.safetensors']);

    // A tensor that cannot be read fails before anything touches the disk.
    vi.restoreAllMocks();
    const broken = {
      a: {
        dtype: 'F32',
        shape: [1],
        get data(): Float32Array {
          throw new Error('boom');
        },
      } as WriteTensor,
    };
    expect(() => saveSafetensors(file, broken)).toThrow(/boom/);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(['model.safetensors']);

    saveSafetensors(file, big);
    expect([...loadSafetensors(file).get('a')!.data]).toEqual([...big.a.data]);
  });
});

describe('reading other dtypes', () => {
  const load = (dtype: string, shape: number[], data: number[]) =>
    parseSafetensors(rawFile({ x: { dtype, shape, data_offsets: [0, data.length] } }, data), 'mem').get('x')!;

  it('widens F16, narrows F64, I64, widens U8 and BOOL', () => {
    // F16 values from python3: struct.unpack('<e', struct.pack('<H', h)).
    const f16 = load('F16', [7], bytesOf(new Uint16Array([0x3c00, 0x0001, 0x7bff, 0xfc00, 0x7e00, 0x8000, 0x3555])));
    expect(f16.dtype).toBe('float32');
    expect([...f16.data]).toEqual([1, 5.960464477539063e-8, 65504, -Infinity, NaN, -0, 0.333251953125]);
    expect(f16ToF32(0x03ff)).toBe(6.097555160522461e-5); // the largest subnormal

    const f64 = load('F64', [3], bytesOf(new Float64Array([0.1, -2.5, 1e300])));
    expect([...f64.data]).toEqual([Math.fround(0.1), -2.5, Infinity]);

    const ids = [0, -1, 2 ** 31 - 1, -(2 ** 31), -100];
    const i64 = load('I64', [5], bytesOf(new BigInt64Array(ids.map(BigInt))));
    expect(i64).toEqual({ dtype: 'int32', shape: [5], data: new Int32Array(ids) });

    expect(load('U8', [3], [0, 255, 7])).toEqual({ dtype: 'int32', shape: [3], data: new Int32Array([0, 255, 7]) });
    expect(load('BOOL', [2, 2], [0, 1, 1, 0]).data).toEqual(new Int32Array([0, 1, 1, 0]));
  });

  it('refuses I64 values outside int32, naming the tensor', () => {
    for (const v of [2n ** 31n, -(2n ** 31n) - 1n, 2n ** 40n]) {
      const e = errorOf(() => load('I64', [2], bytesOf(new BigInt64Array([0n, v]))));
      expect(e.message).toBe(`mem: tensor "x" (I64) holds ${v} at index 1, outside the int32 range`);
    }
  });
});

describe('broken files', () => {
  const ok = { dtype: 'F32', shape: [1], data_offsets: [0, 4] };
  const four = [0, 0, 128, 63];
  const cases: [string, Uint8Array, RegExp][] = [
    ['too short', new Uint8Array([1, 2, 3]), /file is 3 bytes, too short to be safetensors/],
    [
      'header past the end',
      rawFile({}).fill(0x9f, 0, 3),
      /header length \d+ runs past the end of the file \(10 bytes\)/,
    ],
    [
      'absurd header length',
      new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0x80, 0x7b, 0x7d]),
      /header length 9223372036854775808 is over the 100000000-byte limit/,
    ],
    ['invalid UTF-8', rawFile(null, [], new Uint8Array([0x7b, 0xff, 0x7d])), /header is not valid UTF-8/],
    ['invalid JSON', rawFile('{"a":'), /header is not valid JSON/],
    ['JSON array', rawFile('[1, 2]'), /header is not a JSON object/],
    ['JSON null', rawFile('null'), /header is not a JSON object/],
    ['entry not an object', rawFile({ a: 5 }), /tensor "a" is not an object/],
    ['missing dtype', rawFile({ a: { shape: [1], data_offsets: [0, 4] } }, four), /tensor "a" has no dtype string/],
    [
      'unknown dtype',
      rawFile({ a: { ...ok, dtype: 'F8_E4M3' } }, four),
      /tensor "a" has dtype "F8_E4M3", which is not supported/,
    ],
    [
      'I16',
      rawFile({ a: { ...ok, dtype: 'I16', shape: [2] } }, four),
      /tensor "a" has dtype "I16", which is not supported/,
    ],
    ['missing shape', rawFile({ a: { dtype: 'F32', data_offsets: [0, 4] } }, four), /tensor "a" has no shape/],
    [
      'negative dim',
      rawFile({ a: { ...ok, shape: [-1] } }, four),
      /tensor "a" has no shape, or one that is not a list of non-negative integers/,
    ],
    ['fractional dim', rawFile({ a: { ...ok, shape: [0.5] } }, four), /tensor "a" has no shape, or one/],
    ['missing offsets', rawFile({ a: { dtype: 'F32', shape: [1] } }, four), /tensor "a" has no data_offsets/],
    ['one offset', rawFile({ a: { ...ok, data_offsets: [4] } }, four), /not two non-negative integers/],
    ['negative offset', rawFile({ a: { ...ok, data_offsets: [-4, 0] } }, four), /not two non-negative integers/],
    ['string offset', rawFile({ a: { ...ok, data_offsets: [0, '4'] } }, four), /not two non-negative integers/],
    [
      'begin after end',
      rawFile({ a: { ...ok, data_offsets: [4, 0] } }, four),
      /tensor "a" has data_offsets \[4, 0\] that end before they begin/,
    ],
    [
      'wrong byte size',
      rawFile({ a: { ...ok, shape: [2] } }, four),
      /tensor "a" is F32 of shape \[2\], which needs 8 bytes, but data_offsets span 4/,
    ],
    [
      'offsets out of range',
      rawFile({ a: { ...ok, shape: [2], data_offsets: [0, 8] } }, four),
      /tensor "a" has data_offsets \[0, 8\] past the end of the data section \(4 bytes\)/,
    ],
    [
      'overlap',
      rawFile({ a: { ...ok, shape: [2], data_offsets: [0, 8] }, b: { ...ok, shape: [2], data_offsets: [4, 12] } }, [
        ...four,
        ...four,
        ...four,
      ]),
      /tensors "a" and "b" overlap/,
    ],
    [
      'metadata not strings',
      rawFile({ __metadata__: { n: 1 } }),
      /__metadata__ must be an object whose values are all strings/,
    ],
    ['metadata not an object', rawFile({ __metadata__: ['pt'] }), /__metadata__ must be an object/],
  ];

  it.each(cases)('%s: one clear error naming the file', (_, bytes, problem) => {
    const file = path.join(dir, 'model.safetensors');
    fs.writeFileSync(file, bytes);
    const e = errorOf(() => openSafetensors(file));
    expect(e.constructor).toBe(Error);
    expect(e.message.startsWith(`${file}: `)).toBe(true);
    expect(e.message).toMatch(problem);
    expect(e.message).not.toContain('\n');
    // The pure, in-memory reader says the same.
    expect(() => parseSafetensors(bytes, 'model.safetensors')).toThrow(e.message.replace(file, 'model.safetensors'));
  });

  it('allows gaps between tensors and an empty tensor anywhere', () => {
    const header = { a: ok, b: { ...ok, data_offsets: [8, 12] }, e: { ...ok, shape: [0], data_offsets: [2, 2] } };
    const all = parseSafetensors(rawFile(header, [...four, 9, 9, 9, 9, ...four]), 'gaps');
    expect([...all.keys()]).toEqual(['a', 'e', 'b']);
    expect(all.get('b')!.data).toEqual(new Float32Array([1]));
  });

  it('reports unknown names and reads after close', () => {
    const f = openSafetensors(CKPT);
    expect(() => f.get('nope')).toThrow(`${CKPT}: no tensor named "nope"`);
    f.close();
    f.close();
    expect(() => f.get('MP.proj.weight')).toThrow(`${CKPT}: already closed`);
  });

  it('fuzz: random and mutated files only ever give our clear Error', () => {
    const rand = mulberry32(2024);
    const int = (n: number) => Math.floor(rand() * n);
    const header = {
      __metadata__: { format: 'pt' },
      f: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      i: { dtype: 'I64', shape: [2], data_offsets: [8, 24] },
      h: { dtype: 'F16', shape: [2], data_offsets: [24, 28] },
      b: { dtype: 'BF16', shape: [1, 2], data_offsets: [28, 32] },
      d: { dtype: 'F64', shape: [1], data_offsets: [32, 40] },
      u: { dtype: 'U8', shape: [2], data_offsets: [40, 42] },
      z: { dtype: 'BOOL', shape: [2], data_offsets: [42, 44] },
      n: { dtype: 'I32', shape: [0, 3], data_offsets: [44, 44] },
    };
    const text = JSON.stringify(header);
    const data = Array.from({ length: 44 }, () => int(256));
    data.fill(0, 8, 24); // I64 zeros: the valid file must stay valid
    const base = rawFile(text, data);
    expect(parseSafetensors(base, 'fuzz').size).toBe(8);

    const inputs: Uint8Array[] = [];
    for (let k = 0; k < 500; k++) {
      // Random bytes, half of them with a header length that fits.
      const bytes = Uint8Array.from({ length: int(80) }, () => int(256));
      if (k % 2 && bytes.length >= 8) new DataView(bytes.buffer).setBigUint64(0, BigInt(int(bytes.length - 7)), true);
      inputs.push(bytes);
    }
    for (let k = 0; k < 500; k++) {
      const bytes = base.slice();
      for (let flips = 1 + int(4); flips > 0; flips--) bytes[int(bytes.length)] = int(256);
      inputs.push(bytes);
    }
    for (let k = 0; k < 500; k++) inputs.push(base.slice(0, int(base.length)));
    // Header edits that keep the JSON valid, to reach the entry checks.
    const swaps = ['-1', '1.5', '1e400', '9007199254740993', '0', '4294967296', '"8"', 'null', '[]', '{}', '[1,2,3]'];
    const dtypes = ['F32', 'BF16', 'I64', 'F8_E4M3', 'XYZ', 'U64', 'toString', '__proto__'];
    for (let k = 0; k < 500; k++) {
      const tokens = [...text.matchAll(/-?\d+|"[A-Z0-9]+"/g)];
      const t = tokens[int(tokens.length)];
      const swap = t[0].startsWith('"') ? JSON.stringify(dtypes[int(dtypes.length)]) : swaps[int(swaps.length)];
      inputs.push(rawFile(text.slice(0, t.index) + swap + text.slice(t.index! + t[0].length), data));
    }

    let failures = 0;
    for (const bytes of inputs) {
      try {
        const tensors = parseSafetensors(bytes, 'fuzz.safetensors');
        for (const t of tensors.values()) expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1));
      } catch (e) {
        failures++;
        expect((e as Error).constructor, String(e)).toBe(Error);
        expect((e as Error).message.startsWith('fuzz.safetensors: '), String(e)).toBe(true);
      }
    }
    expect(inputs.length).toBe(2000);
    expect(failures).toBeGreaterThan(1000);
    expect(failures).toBeLessThan(2000);
  });
});

describe('reading is lazy', () => {
  it('opening reads the header only, and get() reads only that tensor', () => {
    // Offsets from the file's own header, parsed here by hand.
    const bytes = fs.readFileSync(CKPT);
    const n = Number(bytes.readBigUint64LE(0));
    const entry = JSON.parse(bytes.subarray(8, 8 + n).toString())['decoder.norm.weight'];
    expect(entry.data_offsets).toEqual([590848, 591104]);

    const spy = vi.spyOn(fs, 'readSync');
    const reads = () => spy.mock.calls.map((c, k) => [(c as unknown[])[4], spy.mock.results[k].value]);
    const f = openSafetensors(CKPT);
    expect(reads()).toEqual([
      [0, 8],
      [8, n],
    ]);

    spy.mockClear();
    const t: RawTensor = f.get('decoder.norm.weight');
    expect(reads()).toEqual([[8 + n + 590848, 256]]);
    expect(t.shape).toEqual([64]);
    expect(t.data).toEqual(
      new Float32Array(bytes.buffer.slice(bytes.byteOffset + 8 + n + 590848, bytes.byteOffset + 8 + n + 591104)),
    );
    expect(t.data.buffer.byteLength).toBe(256); // its own buffer, not a view of something bigger
    f.close();
  });
});

// A small seeded PRNG, so the random tests are repeatable.
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
