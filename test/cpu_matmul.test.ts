// The CPU backend's matmul against float64 on the same values, through
// Tensor.matmul: the TypeScript reference loop, and the generated
// WebAssembly GEMM (tensors in the shared memory) with and without fused
// multiply-add, on one thread and two, over sizes that are not multiples of
// the tile, transposed operands (read through their strides), batches and
// broadcast operands.

import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tensor, type Tensor } from '../tensor/index.ts';
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
  M: number; K: number; N: number;
  batch?: number;
  transA?: boolean; transB?: boolean; // store the operand transposed and read it through swapped strides
  shareA?: boolean; shareB?: boolean; // every batch entry reads the same matrix (broadcast)
}

const SIZES: [number, number, number][] = [[1, 1, 1], [3, 5, 7], [17, 33, 19], [67, 129, 45], [5, 513, 9]]; // M, K, N

// Products big enough to take the threaded path: tall (split by rows), wide
// (split by columns), transposed, batched, broadcast.
const LARGE: Case[] = [
  { M: 150, K: 200, N: 170 },
  { M: 40, K: 300, N: 260 },
  { M: 130, K: 140, N: 150, transA: true, transB: true },
  { M: 64, K: 130, N: 96, batch: 4 },
  { M: 33, K: 300, N: 70, batch: 5, shareB: true },
  { M: 70, K: 90, N: 120, batch: 3, shareA: true, transB: true },
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
  for (let i = 0; i < w.length; i++) [scale, worst] = [Math.max(scale, Math.abs(w[i])), Math.max(worst, Math.abs(g[i] - w[i]))];
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
    for (const [M, K, N] of [[0, 5, 7], [3, 0, 7], [3, 5, 0]]) checkTensor({ M, K, N });
    expect(Array.from(tensorCase({ M: 2, K: 0, N: 3 }).got.dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

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
        for (const t of LARGE) {
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
