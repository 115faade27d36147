import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tensor, type Tensor } from '../tensor/index.ts';
import { matmulF32, matmulF64, matmulStats, type GemmArgs, type GemmArgsF64 } from '../tensor/cpu/matmul.ts';
import { getCpuThreads, setCpuThreads } from '../tensor/cpu/threads.ts';
import { cpuKernelInfo, setCpuKernels, wasmStats } from '../tensor/cpu/wasm/kernels.ts';

/** A small deterministic generator of values in [-1, 1). */
function rng(seed: number): () => number {
  return () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return (seed / 2 ** 32) * 2 - 1;
  };
}

interface Case {
  M: number; K: number; N: number;
  batch?: number;
  transA?: boolean; transB?: boolean; // store the operand transposed and read it through swapped strides
  shareA?: boolean; shareB?: boolean; // every batch entry reads the same matrix (equal offsets)
  shared?: boolean; // operands and output in a SharedArrayBuffer
}

/** Float32 and float64 arguments over the same values, laid out as the case says. */
function build(t: Case, seed = 1): { f32: GemmArgs; f64: GemmArgsF64 } {
  const { M, K, N, batch = 1 } = t;
  const next = rng(seed);
  const pad = 3; // matrices start at odd offsets, with gaps between them
  const offsets = (share?: boolean, size = 0) => Array.from({ length: batch }, (_, p) => pad + (share ? 0 : p * (size + pad)));
  const aOffsets = offsets(t.shareA, M * K), bOffsets = offsets(t.shareB, K * N);
  const alloc = (n: number) => (t.shared ? new Float32Array(new SharedArrayBuffer(n * 4)) : new Float32Array(n));
  const a = alloc(pad + batch * (M * K + pad)).map(next);
  const b = alloc(pad + batch * (K * N + pad)).map(next);
  const c = alloc(batch * M * N).fill(NaN); // must be fully overwritten
  const f32: GemmArgs = {
    batch, M, N, K,
    a, aOffsets, aRowStride: t.transA ? 1 : K, aColStride: t.transA ? M : 1,
    b, bOffsets, bRowStride: t.transB ? 1 : N, bColStride: t.transB ? K : 1,
    c,
  };
  const f64: GemmArgsF64 = { ...f32, a: Float64Array.from(a), b: Float64Array.from(b), c: new Float64Array(batch * M * N) };
  return { f32, f64 };
}

/** Runs float32 and float64 on the same inputs; the error must stay within 1e-5 * sqrt(K) of the magnitude. */
function check(t: Case): void {
  const { f32, f64 } = build(t);
  matmulF32(f32);
  matmulF64(f64);
  const scale = Math.max(1, ...Array.from(f64.c, Math.abs));
  const tol = 1e-5 * Math.sqrt(Math.max(1, t.K)) * scale;
  let worst = 0;
  for (let i = 0; i < f64.c.length; i++) worst = Math.max(worst, Math.abs(f32.c[i] - f64.c[i]));
  expect(f32.c.every(Number.isFinite), 'every output written').toBe(true);
  expect(worst, JSON.stringify(t)).toBeLessThanOrEqual(tol);
}

const SIZES: [number, number, number][] = [[1, 1, 1], [3, 5, 7], [17, 33, 19], [67, 129, 45], [5, 513, 9]]; // M, K, N

// Products big enough to take the threaded path: tall (split by rows), wide
// (split by columns), transposed, batched, broadcast, and already shared.
const LARGE: Case[] = [
  { M: 150, K: 200, N: 170 },
  { M: 40, K: 300, N: 260 },
  { M: 130, K: 140, N: 150, transA: true, transB: true },
  { M: 64, K: 130, N: 96, batch: 4 },
  { M: 33, K: 300, N: 70, batch: 5, shareB: true },
  { M: 70, K: 90, N: 120, batch: 3, shareA: true, transB: true },
  { M: 100, K: 300, N: 90, shared: true },
];

afterAll(() => {
  setCpuThreads(2);
  setCpuKernels('wasm');
});

for (const threads of [1, 2]) {
  describe(`matmulF32 with ${threads} thread(s)`, () => {
    it('matches float64 on assorted sizes', () => {
      setCpuThreads(threads);
      for (const [M, K, N] of SIZES) check({ M, K, N });
    });

    it('handles zero-sized dimensions (K = 0 gives zeros)', () => {
      setCpuThreads(threads);
      for (const [M, K, N] of [[0, 5, 7], [3, 0, 7], [3, 5, 0], [0, 0, 0]]) check({ M, K, N });
      const { f32 } = build({ M: 2, K: 0, N: 3 });
      matmulF32(f32);
      expect(Array.from(f32.c)).toEqual([0, 0, 0, 0, 0, 0]);
    });

    it('reads transposed operands through their strides', () => {
      setCpuThreads(threads);
      for (const [M, K, N] of [[17, 33, 19], [67, 129, 45], [5, 513, 9], [3, 40, 6], [1, 300, 5]]) {
        for (const transA of [false, true]) for (const transB of [false, true]) check({ M, K, N, transA, transB });
      }
    });

    it('batches, with per-entry offsets and broadcast (equal) offsets', () => {
      setCpuThreads(threads);
      check({ M: 9, K: 21, N: 13, batch: 3 });
      check({ M: 9, K: 21, N: 13, batch: 3, shareA: true });
      check({ M: 9, K: 21, N: 13, batch: 4, shareB: true }); // folds into one tall product
      check({ M: 9, K: 21, N: 13, batch: 4, shareB: true, transA: true });
      check({ M: 9, K: 21, N: 13, batch: 2, shareA: true, shareB: true });
      check({ M: 1, K: 21, N: 13, batch: 3 }); // one row each: no packing
      check({ M: 1, K: 21, N: 13, batch: 3, shareB: true });
    });

    it(threads > 1 ? 'splits large products across a worker' : 'keeps large products on this thread', () => {
      setCpuThreads(threads);
      for (const t of LARGE) {
        const before = matmulStats.parallelCalls;
        check(t);
        expect(matmulStats.parallelCalls - before, JSON.stringify(t)).toBe(threads > 1 ? 1 : 0);
      }
    });
  });
}

describe('matmul threads', () => {
  it('defaults to min(2, cores) and can be changed', () => {
    expect(getCpuThreads()).toBeGreaterThanOrEqual(1);
    setCpuThreads(3);
    expect(getCpuThreads()).toBe(3);
    check(LARGE[0]); // two workers
    setCpuThreads(2);
  });

  it('starts workers under `npx tsx` too, and they do not keep the process alive', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const script = `
      import { matmulF32, matmulStats } from './tensor/cpu/matmul.ts';
      import { setCpuThreads } from './tensor/cpu/threads.ts';
      setCpuThreads(2);
      const n = 160, x = new Float32Array(n * n).fill(1), c = new Float32Array(n * n);
      const args = { batch: 1, M: n, N: n, K: n, aOffsets: [0], aRowStride: n, aColStride: 1, bOffsets: [0], bRowStride: n, bColStride: 1 };
      matmulF32({ ...args, a: x, b: x, c });
      console.log(matmulStats.parallelCalls, c[0], c[n * n - 1]);`;
    const tsx = fileURLToPath(import.meta.resolve('tsx/cli'));
    const out = execFileSync(process.execPath, [tsx, '--input-type=module', '-e', script],
      { cwd: root, timeout: 60_000, encoding: 'utf8' });
    expect(out.trim()).toBe('1 160 160');
  });
});

// The generated WebAssembly GEMM, through the backend (tensors in the shared
// memory), against the float64 reference on the same values: the same cases,
// with and without fused multiply-add, on one thread and two.

/** The float32 product of a case's operands through Tensor.matmul, and the float64 one (computed once per case). */
function tensorCase(t: Case, seed = 2): { got: Tensor; want: Float64Array } {
  const { M, K, N, batch = 1 } = t;
  const next = rng(seed);
  // an operand stored [rows, cols] (or transposed) and broadcast over the batch when shared
  const operand = (rows: number, cols: number, trans?: boolean, share?: boolean) => {
    const n = (share ? 1 : batch) * rows * cols;
    const values = Float64Array.from({ length: n }, next);
    const make = (dtype: 'float32' | 'float64') => {
      const x = tensor(values, { dtype, shape: [share ? 1 : batch, trans ? cols : rows, trans ? rows : cols] });
      const v = trans ? x.transpose(1, 2) : x;
      return share ? v.expand([batch, rows, cols]) : v;
    };
    return [make('float32'), make('float64')];
  };
  const [a32, a64] = operand(M, K, t.transA, t.shareA);
  const [b32, b64] = operand(K, N, t.transB, t.shareB);
  const key = JSON.stringify(t);
  if (!references.has(key)) references.set(key, a64.matmul(b64).dataSync() as Float64Array);
  return { got: a32.matmul(b32), want: references.get(key)! };
}
const references = new Map<string, Float64Array>();

/** Within 1e-5 * sqrt(K) of the largest magnitude, every element written. */
function checkTensor(t: Case): void {
  const { got, want } = tensorCase(t);
  const [g, w] = [got.dataSync(), want];
  let [scale, worst] = [1, 0];
  for (let i = 0; i < w.length; i++) [scale, worst] = [Math.max(scale, Math.abs(w[i])), Math.max(worst, Math.abs(g[i] - w[i]))];
  expect(Array.from(g).every(Number.isFinite), 'every output written').toBe(true);
  expect(worst, JSON.stringify(t)).toBeLessThanOrEqual(1e-5 * Math.sqrt(Math.max(1, t.K)) * scale);
}

for (const fma of cpuKernelInfo().relaxedSimd ? [true, false] : [false]) {
  for (const threads of [1, 2]) {
    describe(`wasm gemm, ${fma ? 'relaxed-SIMD FMA' : 'mul + add'}, ${threads} thread(s)`, () => {
      const setup = () => {
        setCpuKernels('wasm', { fma });
        setCpuThreads(threads);
      };
      it('matches float64 on sizes that are not multiples of the tile, any transpose', () => {
        setup();
        // M < 6 (MR) takes the unpacked path (gemv); 37 and 70 columns cover its 16-column blocks and their tail
        for (const [M, K, N] of [...SIZES, [4, 8, 8], [130, 300, 9], [2, 40, 37], [1, 300, 70]] as [number, number, number][]) {
          for (const transA of [false, true]) for (const transB of [false, true]) checkTensor({ M, K, N, transA, transB });
        }
      });
      it('handles empty dims (K = 0 gives zeros)', () => {
        setup();
        for (const [M, K, N] of [[0, 5, 7], [3, 0, 7], [3, 5, 0]]) checkTensor({ M, K, N });
        expect(Array.from(tensorCase({ M: 2, K: 0, N: 3 }).got.dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
      });
      it('batches, with broadcast operands', () => {
        setup();
        checkTensor({ M: 9, K: 21, N: 13, batch: 3 });
        checkTensor({ M: 9, K: 21, N: 13, batch: 3, shareA: true, transB: true });
        checkTensor({ M: 9, K: 21, N: 13, batch: 4, shareB: true }); // folds into one tall product
        checkTensor({ M: 9, K: 21, N: 13, batch: 4, shareB: true, transA: true });
        checkTensor({ M: 1, K: 21, N: 13, batch: 3 });
      });
      it(threads > 1 ? 'splits large products across threads' : 'keeps large products on this thread', () => {
        setup();
        for (const t of LARGE.filter((c) => !c.shared)) {
          const before = wasmStats.parallelCalls;
          checkTensor(t);
          expect(wasmStats.parallelCalls - before, JSON.stringify(t)).toBe(threads > 1 ? 1 : 0);
        }
        checkTensor({ M: 20, K: 30, N: 2100, transB: true }); // more columns than one packed slab (NC = 1024)
      });
    });
  }
}

describe('wasm kernel threads', () => {
  it('start under `npx tsx` too, and do not keep the process alive', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const script = `
      import { ones } from './tensor/index.ts';
      import { setCpuThreads } from './tensor/cpu/threads.ts';
      import { wasmStats } from './tensor/cpu/wasm/kernels.ts';
      setCpuThreads(2);
      const c = ones([300, 200]).matmul(ones([200, 100])).add(1).dataSync();
      console.log(wasmStats.parallelCalls, c[0], c[c.length - 1]);`;
    const tsx = fileURLToPath(import.meta.resolve('tsx/cli'));
    const out = execFileSync(process.execPath, [tsx, '--input-type=module', '-e', script], { cwd: root, timeout: 60_000, encoding: 'utf8' });
    expect(out.trim()).toBe('1 201 201');
  });
});
