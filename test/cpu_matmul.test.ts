// The CPU backend's matmul against float64 on the same values, through
// Tensor.matmul: the TypeScript reference loop, and the generated
// WebAssembly GEMM (tensors in the shared memory) with and without fused
// multiply-add, on one thread and two, over sizes that are not multiples of
// the tile, transposed operands (read through their strides), batches and
// broadcast operands; and the matrix-vector products that read a bfloat16
// copy of the weights (keepBf16Copies) against float64 over the rounded ones.

import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { copyInto, dropBf16Copies, keepBf16Copies, memory, tensor, tidy, type Tensor } from '../tensor/index.ts';
import { blas } from '../tensor/cpu/blas.ts';
import { setCpuThreads } from '../tensor/cpu/threads.ts';
import { cpuKernelInfo, setCpuKernels, wasmStats } from '../tensor/cpu/wasm/kernels.ts';

/** A small deterministic generator of values in [-1, 1). */
function rng(seed: number): () => number {
  return () => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return (seed / 2 ** 32) * 2 - 1;
  };
}

interface Case {
  M: number;
  K: number;
  N: number;
  batch?: number;
  transA?: boolean;
  transB?: boolean; // store the operand transposed and read it through swapped strides
  shareA?: boolean;
  shareB?: boolean; // every batch entry reads the same matrix (broadcast)
}

const SIZES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 33, 19],
  [67, 129, 45],
  [5, 513, 9],
]; // M, K, N

// Products big enough to take the threaded path: tall (split by rows), wide
// (split by columns), transposed, batched, broadcast.
const LARGE: Case[] = [
  { M: 150, K: 200, N: 170 },
  { M: 40, K: 300, N: 260 },
  { M: 130, K: 140, N: 150, transA: true, transB: true },
  { M: 64, K: 130, N: 96, batch: 4 },
  { M: 33, K: 300, N: 70, batch: 5, shareB: true },
  { M: 70, K: 90, N: 120, batch: 3, shareA: true, transB: true },
  // matrix-vector products (decoding a token), split into bands of columns: x @ W^T and x @ W, a ragged band
  { M: 1, K: 300, N: 470, transB: true },
  { M: 2, K: 260, N: 517 },
];

afterAll(() => {
  setCpuThreads(2);
  setCpuKernels('wasm');
});

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
  for (let i = 0; i < w.length; i++)
    [scale, worst] = [Math.max(scale, Math.abs(w[i])), Math.max(worst, Math.abs(g[i] - w[i]))];
  expect(Array.from(g).every(Number.isFinite), 'every output written').toBe(true);
  expect(worst, JSON.stringify(t)).toBeLessThanOrEqual(1e-5 * Math.sqrt(Math.max(1, t.K)) * scale);
}

describe('ts reference matmul', () => {
  it('matches float64 on assorted sizes, any transpose, batches and broadcasts', () => {
    setCpuKernels('ts');
    for (const [M, K, N] of [...SIZES, [6, 8, 8], [1, 300, 70]] as [number, number, number][]) {
      for (const transA of [false, true]) for (const transB of [false, true]) checkTensor({ M, K, N, transA, transB });
    }
    checkTensor({ M: 9, K: 21, N: 13, batch: 3, shareA: true, transB: true });
    checkTensor({ M: 9, K: 21, N: 13, batch: 4, shareB: true, transA: true });
    checkTensor(LARGE[3]);
  });
  it('handles empty dims (K = 0 gives zeros)', () => {
    setCpuKernels('ts');
    for (const [M, K, N] of [
      [0, 5, 7],
      [3, 0, 7],
      [3, 5, 0],
    ])
      checkTensor({ M, K, N });
    expect(Array.from(tensorCase({ M: 2, K: 0, N: 3 }).got.dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

for (const fma of cpuKernelInfo().relaxedSimd ? [true, false] : [false]) {
  for (const threads of [1, 2]) {
    describe(`wasm gemm, ${fma ? 'relaxed-SIMD FMA' : 'mul + add'}, ${threads} thread(s)`, () => {
      const setup = () => {
        setCpuKernels('wasm', { fma, blas: false });
        setCpuThreads(threads);
      };
      it('matches float64 on sizes that are not multiples of the tile, any transpose', () => {
        setup();
        // M < 6 (MR) takes the unpacked path (gemv); 37 and 70 columns cover its 16-column blocks and their tail
        for (const [M, K, N] of [...SIZES, [4, 8, 8], [130, 300, 9], [2, 40, 37], [1, 300, 70]] as [
          number,
          number,
          number,
        ][]) {
          for (const transA of [false, true])
            for (const transB of [false, true]) checkTensor({ M, K, N, transA, transB });
        }
      });
      it('handles empty dims (K = 0 gives zeros)', () => {
        setup();
        for (const [M, K, N] of [
          [0, 5, 7],
          [3, 0, 7],
          [3, 5, 0],
        ])
          checkTensor({ M, K, N });
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
        for (const t of LARGE) {
          const before = wasmStats.parallelCalls;
          checkTensor(t);
          expect(wasmStats.parallelCalls - before, JSON.stringify(t)).toBe(threads > 1 ? 1 : 0);
        }
        checkTensor({ M: 20, K: 30, N: 2100, transB: true }); // more columns than one packed slab (NC = 1024)
        // a batch of more matrix-vector products than one threaded call takes (4095 tasks)
        const before = wasmStats.parallelCalls;
        checkTensor({ M: 1, K: 8, N: 5, batch: 4100 });
        expect(wasmStats.parallelCalls - before).toBe(threads > 1 ? 2 : 0);
      });
    });
  }
}

// Where OpenBLAS is installed (CI installs Debian's libopenblas0-pthread), the products go to it.
describe.skipIf(!blas)('OpenBLAS products', () => {
  for (const threads of [1, 2]) {
    it(`match float64 on awkward sizes, any transpose, batches and broadcasts, ${threads} thread(s)`, () => {
      setCpuKernels('wasm');
      setCpuThreads(threads);
      expect(cpuKernelInfo().blas).toMatch(/^OpenBLAS/);
      // (products of fewer than 6 rows are OpenBLAS's matrix-vector products, one per row)
      for (const [M, K, N] of [...SIZES, [6, 8, 8], [130, 300, 9]] as [number, number, number][]) {
        for (const transA of [false, true])
          for (const transB of [false, true]) checkTensor({ M, K, N, transA, transB });
      }
      const calls = wasmStats.parallelCalls;
      for (const t of LARGE) checkTensor(t);
      checkTensor({ M: 9, K: 21, N: 13, batch: 3, shareA: true, transB: true });
      checkTensor({ M: 9, K: 21, N: 13, batch: 4, shareB: true, transA: true });
      checkTensor({ M: 3, K: 0, N: 7 });
      expect(wasmStats.parallelCalls, 'no WebAssembly GEMM ran').toBe(calls);
    });
  }
  it('leave operands cblas cannot describe (no unit stride) to the WebAssembly GEMM, with the same result', () => {
    setCpuKernels('wasm');
    const next = rng(4);
    const row = tensor(Float32Array.from({ length: 40 }, next), { shape: [1, 40] });
    const b = tensor(Float32Array.from({ length: 40 * 30 }, next), { shape: [40, 30] });
    const got = tidy(() => row.expand([9, 40]).matmul(b).dataSync()); // A's rows all alias: row stride 0
    const want = tidy(() => row.matmul(b).dataSync());
    for (let i = 0; i < 9 * 30; i++) expect(got[i]).toBeCloseTo(want[i % 30], 5);
    for (const t of [row, b]) t.dispose();
  });
});

it.skipIf(!existsSync('/usr/lib/x86_64-linux-gnu/libopenblas.so.0'))('OpenBLAS is loaded where Debian has it', () => {
  expect(blas?.name).toMatch(/^OpenBLAS \d/);
});

describe('wasm kernel threads', () => {
  it('start under `npx tsx` too, and do not keep the process alive', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const script = `
      import { ones } from './tensor/index.ts';
      import { setCpuThreads } from './tensor/cpu/threads.ts';
      import { setCpuKernels, wasmStats } from './tensor/cpu/wasm/kernels.ts';
      setCpuKernels('wasm', { blas: false });
      setCpuThreads(2);
      const c = ones([300, 200]).matmul(ones([200, 100])).add(1).dataSync();
      console.log(wasmStats.parallelCalls, c[0], c[c.length - 1]);`;
    const tsx = fileURLToPath(import.meta.resolve('tsx/cli'));
    const out = execFileSync(process.execPath, [tsx, '--input-type=module', '-e', script], {
      cwd: root,
      timeout: 60_000,
      encoding: 'utf8',
    });
    expect(out.trim()).toBe('1 201 201');
  });
});

describe('bfloat16 copies of weights (keepBf16Copies)', () => {
  /** x [M, K] @ W^T for W [N, K], in float64 over `weights` (the float32 values, or their bf16 roundings). */
  function product(x: Float32Array, weights: Float32Array, M: number, K: number, N: number): Float64Array {
    const out = new Float64Array(M * N);
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[i * K + k] * weights[j * K + k];
        out[i * N + j] = s;
      }
    }
    return out;
  }
  /** Rounds float32 values to bfloat16 (nearest, ties to even), as float32. */
  function bf16(values: Float32Array): Float32Array {
    const bits = new Uint32Array(values.slice().buffer);
    for (let i = 0; i < bits.length; i++) bits[i] = ((bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16) << 16;
    return new Float32Array(bits.buffer);
  }
  /** Largest difference; float32 sums of K terms in [-1, 1) stay far below 1e-5 * sqrt(K). */
  const worst = (got: ArrayLike<number>, want: Float64Array) => {
    let w = 0;
    for (let i = 0; i < want.length; i++) w = Math.max(w, Math.abs(got[i] - want[i]));
    return w;
  };
  const [K, N] = [301, 517]; // rows of W not a multiple of 8 weights, nor N of 4 rows or 16 columns
  const tight = 1e-5 * Math.sqrt(K);
  const next = rng(5);
  const w = Float32Array.from({ length: N * K }, next);
  const x = Float32Array.from({ length: 7 * K }, next);
  /** a @ b^T and a @ b, their views and outputs freed. */
  const mmT = (a: Tensor, b: Tensor) => tidy(() => a.matmul(b.transpose(0, 1)).dataSync());
  const mm = (a: Tensor, b: Tensor) => tidy(() => a.matmul(b).dataSync());
  const [exact, rounded] = [product(x, w, 7, K, N).subarray(0, 2 * N), product(x, bf16(w), 7, K, N).subarray(0, 2 * N)];

  it('the roundings differ from the float32 values by far more than the tolerance (the checks below can tell)', () => {
    expect(worst(Float32Array.from(exact), rounded)).toBeGreaterThan(100 * tight);
  });

  for (const fma of cpuKernelInfo().relaxedSimd ? [true, false] : [false]) {
    for (const threads of [1, 2]) {
      const variant = `${fma ? 'FMA' : 'mul + add'}, ${threads} thread(s)`;
      it(`matrix-vector products x @ W^T read the rounded weights, ${variant}`, () => {
        setCpuKernels('wasm', { fma });
        setCpuThreads(threads);
        const W = tensor(w, { shape: [N, K] });
        const before = memory().numBytes;
        keepBf16Copies([W]);
        expect(memory().numBytes - before).toBe(2 * N * K); // the copy is counted
        const two = tensor(x.subarray(0, 2 * K), { shape: [2, K] });
        const calls = wasmStats.parallelCalls;
        expect(worst(mmT(two, W), rounded)).toBeLessThanOrEqual(tight);
        expect(wasmStats.parallelCalls - calls).toBe(threads > 1 ? 1 : 0); // both rows of x in one split call
        // 7 rows (a prompt) and x @ W (columns of the weights contiguous): the float32 weights
        const seven = tensor(x, { shape: [7, K] });
        expect(worst(mmT(seven, W), product(x, w, 7, K, N))).toBeLessThanOrEqual(tight);
        const wt = Float32Array.from({ length: K * N }, (_, i) => w[(i % N) * K + Math.floor(i / N)]); // W^T, stored
        const Wt = tensor(wt, { shape: [K, N] });
        keepBf16Copies([Wt]);
        expect(worst(mm(two, Wt), exact)).toBeLessThanOrEqual(tight);
        for (const t of [two, seven, Wt, W]) t.dispose();
        expect(memory().numBytes).toBe(before - 4 * N * K); // W's values and both copies freed
      });
    }
  }

  it('a write into the weights drops the copy (copyInto, setData), and so does dropBf16Copies', () => {
    setCpuKernels('wasm');
    setCpuThreads(2);
    const W = tensor(w, { shape: [N, K] });
    const two = tensor(x.subarray(0, 2 * K), { shape: [2, K] });
    const start = memory().numBytes;
    keepBf16Copies([W]);
    keepBf16Copies([W]); // a second call keeps the one copy
    expect(memory().numBytes - start).toBe(2 * N * K);
    const third = tensor(
      w.map((v) => v / 3),
      { shape: [N, K] },
    );
    copyInto(W, third);
    expect(memory().numBytes - start).toBe(4 * N * K); // the copy gone, `third` added
    const want = product(
      x,
      w.map((v) => v / 3),
      2,
      K,
      N,
    );
    expect(worst(mmT(two, W), want)).toBeLessThanOrEqual(tight);
    keepBf16Copies([W]);
    W.setData(w);
    expect(memory().numBytes - start).toBe(4 * N * K);
    expect(worst(mmT(two, W), exact)).toBeLessThanOrEqual(tight);
    keepBf16Copies([W]);
    dropBf16Copies([W]);
    expect(memory().numBytes - start).toBe(4 * N * K);
    expect(worst(mmT(two, W), exact)).toBeLessThanOrEqual(tight);
    for (const t of [W, two, third]) t.dispose();
    expect(memory().numBytes).toBe(start - 4 * N * K - 4 * 2 * K);
  });
});

describe('wasm matrix-vector products on two threads', () => {
  it('give the bits of one thread (each column summed in the same order)', () => {
    setCpuKernels('wasm', { blas: false });
    const next = rng(9);
    const x = tensor(Float32Array.from({ length: 2 * 300 }, next), { shape: [2, 300] });
    const W = tensor(Float32Array.from({ length: 470 * 300 }, next), { shape: [470, 300] });
    for (const b of [W.transpose(0, 1), W.reshape([300, 470])]) {
      const bits = [1, 2].map((threads) => {
        setCpuThreads(threads);
        return Array.from(x.matmul(b).dataSync());
      });
      expect(bits[1]).toEqual(bits[0]);
    }
  });
});
