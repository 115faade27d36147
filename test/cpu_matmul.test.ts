import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  getMatmulThreads, matmulF32, matmulF64, matmulStats, setMatmulThreads, type GemmArgs, type GemmArgsF64,
} from '../tensor/cpu/matmul.ts';

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

afterAll(() => setMatmulThreads(2));

for (const threads of [1, 2]) {
  describe(`matmulF32 with ${threads} thread(s)`, () => {
    it('matches float64 on assorted sizes', () => {
      setMatmulThreads(threads);
      for (const [M, K, N] of SIZES) check({ M, K, N });
    });

    it('handles zero-sized dimensions (K = 0 gives zeros)', () => {
      setMatmulThreads(threads);
      for (const [M, K, N] of [[0, 5, 7], [3, 0, 7], [3, 5, 0], [0, 0, 0]]) check({ M, K, N });
      const { f32 } = build({ M: 2, K: 0, N: 3 });
      matmulF32(f32);
      expect(Array.from(f32.c)).toEqual([0, 0, 0, 0, 0, 0]);
    });

    it('reads transposed operands through their strides', () => {
      setMatmulThreads(threads);
      for (const [M, K, N] of [[17, 33, 19], [67, 129, 45], [5, 513, 9], [3, 40, 6], [1, 300, 5]]) {
        for (const transA of [false, true]) for (const transB of [false, true]) check({ M, K, N, transA, transB });
      }
    });

    it('batches, with per-entry offsets and broadcast (equal) offsets', () => {
      setMatmulThreads(threads);
      check({ M: 9, K: 21, N: 13, batch: 3 });
      check({ M: 9, K: 21, N: 13, batch: 3, shareA: true });
      check({ M: 9, K: 21, N: 13, batch: 4, shareB: true }); // folds into one tall product
      check({ M: 9, K: 21, N: 13, batch: 4, shareB: true, transA: true });
      check({ M: 9, K: 21, N: 13, batch: 2, shareA: true, shareB: true });
      check({ M: 1, K: 21, N: 13, batch: 3 }); // one row each: no packing
      check({ M: 1, K: 21, N: 13, batch: 3, shareB: true });
    });

    it(threads > 1 ? 'splits large products across a worker' : 'keeps large products on this thread', () => {
      setMatmulThreads(threads);
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
    expect(getMatmulThreads()).toBeGreaterThanOrEqual(1);
    setMatmulThreads(3);
    expect(getMatmulThreads()).toBe(3);
    check(LARGE[0]); // two workers
    setMatmulThreads(2);
  });

  it('starts workers under `npx tsx` too, and they do not keep the process alive', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const script = `
      import { matmulF32, matmulStats, setMatmulThreads } from './tensor/cpu/matmul.ts';
      setMatmulThreads(2);
      const n = 160, x = new Float32Array(n * n).fill(1), c = new Float32Array(n * n);
      matmulF32({ batch: 1, M: n, N: n, K: n, a: x, aOffsets: [0], aRowStride: n, aColStride: 1, b: x, bOffsets: [0], bRowStride: n, bColStride: 1, c });
      console.log(matmulStats.parallelCalls, c[0], c[n * n - 1]);`;
    const tsx = fileURLToPath(import.meta.resolve('tsx/cli'));
    const out = execFileSync(process.execPath, [tsx, '--input-type=module', '-e', script], { cwd: root, timeout: 60_000, encoding: 'utf8' });
    expect(out.trim()).toBe('1 160 160');
  });
});
