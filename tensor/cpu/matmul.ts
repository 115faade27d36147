// Matrix multiply for the CPU backend: the loop where nearly all of a model's
// time goes. It follows the GotoBLAS / BLIS recipe, in plain TypeScript:
//
//  - Packing. Before computing, a KC-deep slab of B is copied into column
//    panels NR wide, and a block of A into row panels MR tall, each laid out in
//    exactly the order the micro-kernel reads it. Strides of any kind
//    (transposed or broadcast views) are paid for once, here; the inner loop
//    only ever walks forward through two small contiguous arrays.
//  - Cache blocking. KC bounds the depth of a slab so that an A panel
//    (MR x KC) and a B panel (KC x NR) sit in L1 while the micro-kernel runs,
//    and MC bounds the rows of A packed at once so they stay in L2.
//  - Register tiling. The micro-kernel keeps an MR x NR block of C in local
//    variables, which V8 keeps (mostly) in registers: every element of A it
//    loads is used NR times and every element of B MR times.
//
// Each slab's sums are carried in JS numbers (float64) and rounded to float32
// once, so the result is more accurate than a float32 dot product. Large
// products are also split across worker threads that share memory with this
// one (threads.ts is the seam to Node's worker_threads).

import { getCpuThreads, isShared, sharedFloat32, sharedInt32, spawnWorker, type WorkerHandle } from './threads.ts';

/** Arguments of a batched strided float32 matmul: C[b] = A[b] @ B[b]. */
export interface GemmArgs {
  batch: number; M: number; N: number; K: number;
  /** A[b][i][k] = a[aOffsets[b] + i*aRowStride + k*aColStride] */
  a: Float32Array; aOffsets: ArrayLike<number>; aRowStride: number; aColStride: number;
  /** B[b][k][j] = b[bOffsets[b] + k*bRowStride + j*bColStride] */
  b: Float32Array; bOffsets: ArrayLike<number>; bRowStride: number; bColStride: number;
  /** Output, contiguous [batch, M, N], fully overwritten (not accumulated). */
  c: Float32Array;
}

/** The same arguments in float64, for the reference matmul. */
export type GemmArgsF64 = Omit<GemmArgs, 'a' | 'b' | 'c'> & { a: Float64Array; b: Float64Array; c: Float64Array };

/** One thread's share of a product: like GemmArgs, but C[b] starts at cOffsets[b] with row stride cRowStride. */
export interface GemmJob extends GemmArgs {
  cOffsets: ArrayLike<number>;
  cRowStride: number;
}

// The register tile is MR x NR = 4 x 4: 16 accumulators, about what x86-64's
// 16 float registers hold (wider tiles spill and measured no faster in V8).
// pack() writes panels 4 wide, so both must stay 4.
const MR = 4;
const NR = 4;
const KC = 256; // depth of a packed slab: a 4 x 256 panel of floats is 4 KiB
const MC = 64; // rows of A packed at once: 64 x 256 floats is 64 KiB

// Packing buffers, reused across calls and grown when a product needs more.
let packA = new Float32Array(MC * KC);
let packB = new Float32Array(0);
const tile = new Float64Array(MR * NR);

/**
 * Copies `lines` strided vectors of length `depth` (rows of A, or columns of
 * B) into panels of 4 lines: for each step along the depth, the panel's 4
 * values sit side by side, in the order the micro-kernel reads them. A last,
 * partial panel repeats its last line: the extra rows or columns of C that it
 * produces are never stored, so the micro-kernel needs no edge cases.
 */
function pack(src: Float32Array, off: number, lineStride: number, depthStride: number,
  lines: number, depth: number, dst: Float32Array): void {
  let w = 0;
  for (let l = 0; l < lines; l += 4) {
    const o0 = off + l * lineStride;
    const o1 = off + Math.min(l + 1, lines - 1) * lineStride;
    const o2 = off + Math.min(l + 2, lines - 1) * lineStride;
    const o3 = off + Math.min(l + 3, lines - 1) * lineStride;
    for (let d = 0, o = 0; d < depth; d++, o += depthStride, w += 4) {
      dst[w] = src[o0 + o]; dst[w + 1] = src[o1 + o]; dst[w + 2] = src[o2 + o]; dst[w + 3] = src[o3 + o];
    }
  }
}

/** The micro-kernel: tile = (MR x kc panel of A at ia) @ (kc x NR panel of B at ib). */
function kernel(a: Float32Array, ia: number, b: Float32Array, ib: number, kc: number): void {
  let c00 = 0, c01 = 0, c02 = 0, c03 = 0;
  let c10 = 0, c11 = 0, c12 = 0, c13 = 0;
  let c20 = 0, c21 = 0, c22 = 0, c23 = 0;
  let c30 = 0, c31 = 0, c32 = 0, c33 = 0;
  for (let p = 0; p < kc; p++) {
    const a0 = a[ia++], a1 = a[ia++], a2 = a[ia++], a3 = a[ia++];
    const b0 = b[ib++], b1 = b[ib++], b2 = b[ib++], b3 = b[ib++];
    c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
    c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
    c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
    c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
  }
  tile[0] = c00; tile[1] = c01; tile[2] = c02; tile[3] = c03;
  tile[4] = c10; tile[5] = c11; tile[6] = c12; tile[7] = c13;
  tile[8] = c20; tile[9] = c21; tile[10] = c22; tile[11] = c23;
  tile[12] = c30; tile[13] = c31; tile[14] = c32; tile[15] = c33;
}

/**
 * One row of C for a product too thin to pay for packing (a single token's
 * activations times a weight matrix, say): dot products straight from the
 * strided operands, four columns of C at a time so that every value loaded
 * from A is used four times. Past the last column it recomputes the last one.
 */
function skinnyRow(a: Float32Array, ao: number, acs: number, b: Float32Array, bo: number, brs: number, bcs: number,
  K: number, N: number, c: Float32Array, co: number): void {
  for (let j = 0; j < N; j += 4) {
    const o0 = bo + j * bcs;
    const o1 = bo + Math.min(j + 1, N - 1) * bcs;
    const o2 = bo + Math.min(j + 2, N - 1) * bcs;
    const o3 = bo + Math.min(j + 3, N - 1) * bcs;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let k = 0, ia = ao, ib = 0; k < K; k++, ia += acs, ib += brs) {
      const x = a[ia];
      s0 += x * b[o0 + ib]; s1 += x * b[o1 + ib]; s2 += x * b[o2 + ib]; s3 += x * b[o3 + ib];
    }
    c[co + j] = s0;
    if (j + 1 < N) c[co + j + 1] = s1;
    if (j + 2 < N) c[co + j + 2] = s2;
    if (j + 3 < N) c[co + j + 3] = s3;
  }
}

/** Computes one job on the calling thread (the workers run this too). */
export function gemmF32(job: GemmJob): void {
  const { batch, M, N, K, a, b, c, cRowStride: ldc } = job;
  const { aRowStride: ars, aColStride: acs, bRowStride: brs, bColStride: bcs } = job;
  if (M < MR) { // fewer rows than a register tile: packing would cost more than it saves
    for (let p = 0; p < batch; p++) {
      for (let i = 0; i < M; i++) {
        skinnyRow(a, job.aOffsets[p] + i * ars, acs, b, job.bOffsets[p], brs, bcs, K, N, c, job.cOffsets[p] + i * ldc);
      }
    }
    return;
  }
  for (let p = 0; p < batch; p++) {
    for (let i = 0; i < M; i++) c.fill(0, job.cOffsets[p] + i * ldc, job.cOffsets[p] + i * ldc + N);
  }
  const panelsB = Math.ceil(N / NR) * NR * KC;
  if (packB.length < panelsB) packB = new Float32Array(panelsB);
  const pa = packA, pb = packB;
  for (let p = 0; p < batch; p++) {
    for (let pc = 0; pc < K; pc += KC) {
      const kc = Math.min(KC, K - pc);
      pack(b, job.bOffsets[p] + pc * brs, bcs, brs, N, kc, pb);
      for (let ic = 0; ic < M; ic += MC) {
        const mc = Math.min(MC, M - ic);
        pack(a, job.aOffsets[p] + ic * ars + pc * acs, ars, acs, mc, kc, pa);
        // One B panel stays in L1 while every A panel of the block passes by it.
        for (let jr = 0; jr < N; jr += NR) {
          const cols = Math.min(NR, N - jr);
          for (let ir = 0; ir < mc; ir += MR) {
            kernel(pa, ir * kc, pb, jr * kc, kc);
            const rows = Math.min(MR, mc - ir);
            const o = job.cOffsets[p] + (ic + ir) * ldc + jr;
            for (let r = 0; r < rows; r++) {
              for (let j = 0; j < cols; j++) c[o + r * ldc + j] += tile[r * NR + j];
            }
          }
        }
      }
    }
  }
}

/**
 * The job for a whole product. When every batch entry uses the same B (x @ W
 * with a broadcast weight) and A's entries are consecutive row blocks, the
 * batch folds into one tall product, so W is packed once rather than per entry.
 */
function wholeJob(g: GemmArgs): GemmJob {
  const { batch, M, N, aOffsets, bOffsets } = g;
  let stacked = batch > 1;
  for (let p = 1; p < batch && stacked; p++) {
    stacked = bOffsets[p] === bOffsets[0] && aOffsets[p] === aOffsets[0] + p * M * g.aRowStride;
  }
  if (stacked) {
    return { ...g, batch: 1, M: batch * M, aOffsets: [aOffsets[0]], bOffsets: [bOffsets[0]], cOffsets: [0], cRowStride: N };
  }
  return { ...g, cOffsets: Array.from({ length: batch }, (_, p) => p * M * N), cRowStride: N };
}

// --- threads ---

const PARALLEL_MIN = 1 << 21; // multiply-adds below which a worker's hand-off costs more than it saves
const workers: WorkerHandle[] = [];
let broken = false; // set once workers failed: stay on one thread from then on
let sync: Int32Array = new Int32Array(2); // [workers still busy, a worker failed], in shared memory once workers start
let scratch: Float32Array = new Float32Array(0); // shared copies of A, B and C for the workers

/** Calls of matmulF32 that ran on more than one thread (tests and benchmarks read this). */
export const matmulStats = { parallelCalls: 0 };

/** Blocks until every worker has counted itself off `sync[0]`. */
function waitForWorkers(): void {
  for (let v; (v = Atomics.load(sync, 0)) !== 0;) Atomics.wait(sync, 0, v);
}

/** Warns once, then stays on one thread for good. */
function giveUp(why: string): false {
  if (!broken) console.warn(`matmul: using one thread (${why})`);
  broken = true;
  return false;
}

/** Makes sure n - 1 workers are up; they start on first need, and stay. */
function ensureWorkers(n: number): boolean {
  if (broken) return false;
  if (workers.some((w) => w.failed)) return giveUp('a worker stopped');
  while (workers.length < n - 1) {
    const w = spawnWorker(new URL('./matmul_worker.ts', import.meta.url));
    if (!w) return giveUp('could not start a worker thread');
    if (workers.length === 0) sync = sharedInt32(2); // a worker runs, so shared memory exists
    workers.push(w);
  }
  return true;
}

/** A view of `job` restricted to rows (or columns) lo..hi of C. */
function slice(job: GemmJob, lo: number, hi: number, byRows: boolean): GemmJob {
  const shift = (offsets: ArrayLike<number>, by: number) => Array.from(offsets, (o) => o + by);
  return byRows
    ? { ...job, M: hi - lo, aOffsets: shift(job.aOffsets, lo * job.aRowStride), cOffsets: shift(job.cOffsets, lo * job.cRowStride) }
    : { ...job, N: hi - lo, bOffsets: shift(job.bOffsets, lo * job.bColStride), cOffsets: shift(job.cOffsets, lo) };
}

/**
 * Copies each distinct matrix of an operand into `dst` at `at`, row-major
 * (broadcast entries share one copy). Returns the new offsets.
 */
function copyOperand(src: Float32Array, offsets: ArrayLike<number>, rows: number, cols: number,
  rs: number, cs: number, dst: Float32Array, at: number): number[] {
  const seen = new Map<number, number>();
  return Array.from(offsets, (o) => {
    let t = seen.get(o);
    if (t !== undefined) return t;
    seen.set(o, (t = at));
    for (let i = 0; i < rows; i++, at += cols) {
      const s = o + i * rs;
      if (cs === 1) dst.set(src.subarray(s, s + cols), at);
      else for (let j = 0; j < cols; j++) dst[at + j] = src[s + j * cs];
    }
    return t;
  });
}

/**
 * Splits C into one band of rows (or columns, when C is wide) per thread. The
 * workers only see shared memory, so A and B are first copied into a shared
 * scratch buffer unless they already live there; their bands of C are written
 * there too and copied out after. The caller's thread computes the last band
 * straight from the original arrays, then blocks until the workers are done.
 */
function matmulParallel(job: GemmJob, n: number): void {
  const { batch, M, N, K } = job;
  const need = (x: Float32Array, offsets: ArrayLike<number>, size: number) =>
    isShared(x) ? 0 : new Set(Array.from(offsets)).size * size;
  const aSize = need(job.a, job.aOffsets, M * K), bSize = need(job.b, job.bOffsets, K * N);
  const cSize = isShared(job.c) ? 0 : batch * M * N;
  if (scratch.length < aSize + bSize + cSize) scratch = sharedFloat32(Math.ceil((aSize + bSize + cSize) * 1.25));
  const shared: GemmJob = { ...job };
  if (aSize) {
    shared.a = scratch;
    shared.aOffsets = copyOperand(job.a, job.aOffsets, M, K, job.aRowStride, job.aColStride, scratch, 0);
    shared.aRowStride = K;
    shared.aColStride = 1;
  }
  if (bSize) {
    shared.b = scratch;
    shared.bOffsets = copyOperand(job.b, job.bOffsets, K, N, job.bRowStride, job.bColStride, scratch, aSize);
    shared.bRowStride = N;
    shared.bColStride = 1;
  }
  if (cSize) shared.c = scratch.subarray(aSize + bSize, aSize + bSize + cSize);

  const byRows = M >= N;
  const len = byRows ? M : N, align = byRows ? MR : NR;
  const cut = (t: number) => Math.min(len, Math.ceil((len * t) / n / align) * align);
  let busy = 0;
  for (let t = 0; t < n - 1; t++) busy += cut(t) < cut(t + 1) ? 1 : 0;
  Atomics.store(sync, 0, busy);
  Atomics.store(sync, 1, 0);
  for (let t = 0; t < n - 1; t++) {
    if (cut(t) < cut(t + 1)) workers[t].post({ sync, job: slice(shared, cut(t), cut(t + 1), byRows) });
  }
  gemmF32(slice(job, cut(n - 1), len, byRows));
  waitForWorkers();
  if (Atomics.load(sync, 1)) throw new Error('matmul: a worker failed');
  matmulStats.parallelCalls++;

  if (!cSize) return;
  const { c, cOffsets, cRowStride: ldc } = job, hi = cut(n - 1);
  for (let p = 0; p < batch; p++) {
    if (byRows) c.set(shared.c.subarray(cOffsets[p], cOffsets[p] + hi * ldc), cOffsets[p]);
    else for (let i = 0, o = cOffsets[p]; i < M; i++, o += ldc) c.set(shared.c.subarray(o, o + hi), o);
  }
}

/** C = A @ B in float32 for every batch entry, on one or more threads; synchronous. */
export function matmulF32(args: GemmArgs): void {
  const job = wholeJob(args);
  const n = Math.min(getCpuThreads(), Math.max(job.M, job.N));
  const big = job.M >= MR && job.batch * job.M * job.N * job.K >= PARALLEL_MIN;
  if (n > 1 && big && ensureWorkers(n)) matmulParallel(job, n);
  else gemmF32(job);
}

/** C = A @ B in float64: a plain triple loop, the reference for gradient checks and tests. */
export function matmulF64(g: GemmArgsF64): void {
  const { batch, M, N, K, a, b, c } = g;
  for (let p = 0; p < batch; p++) {
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          s += a[g.aOffsets[p] + i * g.aRowStride + k * g.aColStride] * b[g.bOffsets[p] + k * g.bRowStride + j * g.bColStride];
        }
        c[(p * M + i) * N + j] = s;
      }
    }
  }
}
