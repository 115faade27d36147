// Matmul throughput of the CPU backend, in GFLOP/s = 2*M*N*K / seconds.
// Shapes are written M x K x N: C[M,N] = A[M,K] @ B[K,N], float32, contiguous.
// Each case gets one warm-up call (which also starts the worker threads), then
// the median of the timed runs, with the min and max to show the spread.
//
//   npx tsx bench/matmul.ts [--threads 1|2] [--runs 5]

import { getMatmulThreads, matmulF32, matmulStats, setMatmulThreads } from '../tensor/cpu/matmul.ts';
import { cpuCount, cpuModel } from '../tensor/cpu/threads.ts';

/** One measured case. */
export interface MatmulBenchRow {
  threads: number; M: number; K: number; N: number;
  median: number; min: number; max: number; runs: number;
}

const SHAPES: [number, number, number][] = [[256, 256, 256], [1024, 1024, 1024], [1024, 576, 1536], [1024, 1536, 576]];

function random(n: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.random() * 2 - 1;
  return x;
}

/** Times matmulF32 on the standard shapes for each thread count, prints a table and returns the rows. */
export async function benchMatmul(threadCounts: number[] = [1, 2], runs = 5): Promise<MatmulBenchRow[]> {
  const before = getMatmulThreads();
  const rows: MatmulBenchRow[] = [];
  console.log(`matmul, float32, M x K x N (C[M,N] = A[M,K] @ B[K,N]); ${cpuModel()}, ${cpuCount()} cores`);
  console.log('threads  M x K x N             GFLOP/s median  [min .. max]');
  for (const threads of threadCounts) {
    setMatmulThreads(threads);
    for (const [M, K, N] of SHAPES) {
      const args = {
        batch: 1, M, N, K,
        a: random(M * K), aOffsets: [0], aRowStride: K, aColStride: 1,
        b: random(K * N), bOffsets: [0], bRowStride: N, bColStride: 1,
        c: new Float32Array(M * N),
      };
      matmulF32(args);
      const parallelBefore = matmulStats.parallelCalls;
      const rates: number[] = [];
      for (let r = 0; r < runs; r++) {
        const t0 = performance.now();
        matmulF32(args);
        rates.push((2 * M * N * K) / ((performance.now() - t0) * 1e6));
        await new Promise((resolve) => setTimeout(resolve, 0)); // let pending events (a worker's exit) through
      }
      rates.sort((x, y) => x - y);
      const row = { threads, M, K, N, median: rates[runs >> 1], min: rates[0], max: rates[runs - 1], runs };
      rows.push(row);
      // A product below the parallel threshold (or a failed worker) runs on one thread: say so.
      const used = matmulStats.parallelCalls > parallelBefore ? threads : 1;
      const shape = `${M} x ${K} x ${N}`.padEnd(20);
      console.log(`${String(used).padStart(7)}  ${shape}  ${row.median.toFixed(2).padStart(14)}  [${row.min.toFixed(2)} .. ${row.max.toFixed(2)}]`);
    }
  }
  setMatmulThreads(before);
  return rows;
}

/** Reads `--name value` from the command line. */
function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) {
  const threads = flag('threads');
  await benchMatmul(threads ? [Number(threads)] : [1, 2], Number(flag('runs') ?? 5));
}
