// Matmul throughput of the CPU backend, in GFLOP/s = 2*M*N*K / seconds.
// Shapes are written M x K x N: C[M,N] = A[M,K] @ B[K,N], float32, contiguous,
// through the backend's matmul (so the output allocation is included, as in a
// model). Each case is warmed up first (which also starts the worker threads
// and lets the engine optimise the kernels), then timed: the median of the
// runs, with the min and max to show the spread.
//
//   npx tsx bench/matmul.ts [--kernels ts|wasm|wasm-nofma|blas|all] [--threads 1|2] [--runs 5]
//                           [--shapes 1024x576x1536,...]
//   npx tsx bench/matmul.ts --help

import { defineFlags, parseCommandLine } from '../cli.ts';
import { getBackend, randn, type Tensor } from '../tensor/index.ts';
import { blas } from '../tensor/cpu/blas.ts';
import { cpuCount, cpuModel, getCpuThreads, setCpuThreads } from '../tensor/cpu/threads.ts';
import { cpuKernelInfo, wasmStats, getCpuKernels, setCpuKernels } from '../tensor/cpu/wasm/kernels.ts';

/**
 * Which kernels to time: the TypeScript loops, the WebAssembly GEMM with or without fused multiply-add, or the
 * system's OpenBLAS (tensor/cpu/blas.ts; what PyTorch's CPU path calls).
 */
export type MatmulKernels = 'ts' | 'wasm' | 'wasm-nofma' | 'blas';

/** One measured case (threads: how many actually ran it). */
export interface MatmulBenchRow {
  kernels: MatmulKernels;
  threads: number;
  M: number;
  K: number;
  N: number;
  median: number;
  min: number;
  max: number;
  runs: number;
}

/** The reference shapes (M x K x N). */
export const MATMUL_SHAPES: [number, number, number][] = [
  [256, 256, 256],
  [1024, 1024, 1024],
  [1024, 576, 1536],
  [1024, 1536, 576],
];

/** Times C = A @ B for each kernel set, thread count and shape; prints a table and returns the rows. */
export async function benchMatmul(
  threadCounts: number[] = [1, 2],
  runs = 5,
  {
    kernels: kernelSets = ['ts', 'wasm'],
    shapes = MATMUL_SHAPES,
  }: { kernels?: MatmulKernels[]; shapes?: [number, number, number][] } = {},
): Promise<MatmulBenchRow[]> {
  const [kernelsBefore, threadsBefore] = [getCpuKernels(), getCpuThreads()];
  const backend = getBackend('cpu');
  const rows: MatmulBenchRow[] = [];
  console.log(`matmul, float32, M x K x N (C[M,N] = A[M,K] @ B[K,N]); ${cpuModel()}, ${cpuCount()} cores`);
  console.log('kernels     threads  M x K x N             GFLOP/s median  [min .. max]');
  for (const kernels of kernelSets) {
    setCpuKernels(kernels === 'ts' ? 'ts' : 'wasm', { fma: kernels !== 'wasm-nofma', blas: kernels === 'blas' });
    for (const threads of threadCounts) {
      setCpuThreads(threads);
      for (const [M, K, N] of shapes) {
        const [a, b]: Tensor[] = [randn([M, K]), randn([K, N])];
        const call = () => backend.release(backend.matmul(a.view(), b.view()));
        // Warm up for 0.3 s at least, and make each timed run last 0.1 s or
        // more so that the timer's grain is noise.
        let calls = 0;
        const start = performance.now();
        do {
          call();
          calls++;
        } while (performance.now() - start < 300);
        const reps = Math.ceil(100 / ((performance.now() - start) / calls));
        const parallelBefore = wasmStats.parallelCalls;
        const rates: number[] = [];
        for (let r = 0; r < runs; r++) {
          const t0 = performance.now();
          for (let i = 0; i < reps; i++) call();
          rates.push((2 * M * N * K * reps) / ((performance.now() - t0) * 1e6));
          await new Promise((resolve) => setTimeout(resolve, 0)); // let pending events (a worker's exit) through
        }
        a.dispose();
        b.dispose();
        rates.sort((x, y) => x - y);
        // A product below the parallel threshold (or a failed worker) runs on one thread: say so
        // (the ts kernels run on one thread; OpenBLAS decides for itself, up to `threads`).
        const used = kernels === 'blas' ? threads : wasmStats.parallelCalls > parallelBefore ? threads : 1;
        const row = {
          kernels,
          threads: used,
          M,
          K,
          N,
          median: rates[runs >> 1],
          min: rates[0],
          max: rates[runs - 1],
          runs,
        };
        rows.push(row);
        const shape = `${M} x ${K} x ${N}`.padEnd(20);
        const spread = `[${row.min.toFixed(2)} .. ${row.max.toFixed(2)}]`;
        console.log(
          `${kernels.padEnd(10)}  ${String(used).padStart(7)}  ${shape}  ` +
            `${row.median.toFixed(2).padStart(14)}  ${spread}`,
        );
      }
    }
  }
  setCpuKernels(kernelsBefore);
  setCpuThreads(threadsBefore);
  return rows;
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) {
  const flags = defineFlags({
    kernels: {
      type: 'string',
      default: 'all',
      choices: ['all', 'ts', 'wasm', 'wasm-nofma', 'blas'],
      help: 'which kernels (blas: the system OpenBLAS, where installed)',
    },
    threads: { type: 'int', min: 1, help: 'one thread count (default: 1 and 2)' },
    shapes: { type: 'string', metavar: 'MxKxN,...', help: "the products to time (default: the model's shapes)" },
    runs: { type: 'int', default: 5, min: 1, help: 'timed runs per product (the median is reported)' },
  });
  const args = parseCommandLine(flags, 'npx tsx bench/matmul.ts');
  const info = cpuKernelInfo();
  const sets: MatmulKernels[] =
    args.kernels === 'all'
      ? ['ts', 'wasm', ...(info.relaxedSimd ? ['wasm-nofma' as const] : []), ...(blas ? ['blas' as const] : [])]
      : [args.kernels];
  if (sets.includes('blas') && !blas) throw new Error('bench/matmul.ts: no OpenBLAS here (see tensor/cpu/blas.ts)');
  const shapes = args.shapes?.split(',').map((s) => s.split('x').map(Number) as [number, number, number]);
  await benchMatmul(args.threads ? [args.threads] : [1, 2], args.runs, { kernels: sets, shapes });
}
