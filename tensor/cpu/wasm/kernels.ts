// The WebAssembly kernels of the CPU backend, and the switch between them and
// the TypeScript ones. When this file loads, the kernel module is emitted
// (gemm.ts, elementwise.ts), compiled for the tensor memory (heap.ts) and
// instantiated; every kernel then works on byte offsets into that memory.
// Large calls are split across worker threads (pool.ts), which run the same
// module over the same memory.
//
// Where WebAssembly SIMD is missing, the TypeScript kernels run instead, and
// we say so once; relaxed SIMD (fused multiply-add) is used when the engine
// has it, else a multiply and an add.

import type { ActivationOp, AttentionOptions, BinaryOp, UnaryOp, View } from '../../backend.ts';
import { contiguousStrides, isContiguous, numel } from '../../shape.ts';
import { NO_TRANS, ROW_MAJOR, TRANS, blas, blasLayout, blockGemmImport } from '../blas.ts';
import { CpuStorage, free, heapF32, heapI32, malloc, memory, sharedMemory } from '../heap.ts';
import { enableRelaxedSimd, getCpuThreads } from '../threads.ts';
import { ATT, emitAttention } from './attention.ts';
import { EW_DIMS, UNARY, emitAdamW, emitElementwise } from './elementwise.ts';
import { ModuleBuilder } from './emit.ts';
import { GEMM_SCRATCH, MR, NR, emitGemm } from './gemm.ts';
import { ensureWorkers, runParallel, startParallel, waitParallel } from './pool.ts';
import { emitRows } from './rows.ts';

/** Which kernels the CPU backend runs: readable TypeScript loops, or generated WebAssembly SIMD. */
export type CpuKernels = 'ts' | 'wasm';

type Fn = (...args: number[]) => number;

/** Emits every kernel; with `fma`, the relaxed-SIMD variants too. */
function emitModule(fma: boolean): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder();
  const hostGemm = m.importFunc('gemm', Array(13).fill('i32')); // blockGemmImport in ../blas.ts
  emitAttention(m, emitGemm(m, fma), hostGemm);
  emitElementwise(m);
  emitRows(m);
  emitAdamW(m);
  return m.assemble(sharedMemory);
}

/**
 * Compiles the module with fused multiply-add if the engine accepts it (Node
 * 20 needs a V8 flag for it, set only then), else without; null without SIMD,
 * or where compiling synchronously is refused (browsers once refused modules
 * over 4 KB on a page's main thread; Chromium 156 compiles this one there).
 */
function compile(): { module: WebAssembly.Module; relaxed: boolean } | null {
  if (!memory) return null;
  try {
    const withFma = emitModule(true);
    if (!WebAssembly.validate(withFma)) enableRelaxedSimd();
    if (WebAssembly.validate(withFma)) return { module: new WebAssembly.Module(withFma), relaxed: true };
    const plain = emitModule(false);
    return WebAssembly.validate(plain) ? { module: new WebAssembly.Module(plain), relaxed: false } : null;
  } catch {
    return null;
  }
}

const compiled = compile();
const fns: Record<string, Fn> = {};
const fnIndex: Record<string, number> = {};
if (compiled) {
  const gemm = blockGemmImport(
    memory!,
    () => fns.gemm_block,
    () => wasmStats.blasBlockProducts++,
  );
  const exports = new WebAssembly.Instance(compiled.module, { env: { memory: memory!, gemm } }).exports;
  WebAssembly.Module.exports(compiled.module).forEach((e, i) => {
    fns[e.name] = exports[e.name] as Fn;
    fnIndex[e.name] = i;
  });
}
let kernels: CpuKernels = compiled ? 'wasm' : 'ts';
let fma = compiled?.relaxed ?? false;
let useBlas = blas !== null && compiled !== null;
if (!compiled) {
  console.warn(
    `cpu backend: ${memory ? 'WebAssembly SIMD' : 'WebAssembly'} is not available, using the TypeScript kernels`,
  );
}

/**
 * Picks the CPU kernels; `fma: false` forces the multiply-then-add SIMD variant, `blas: false` the
 * WebAssembly GEMM where OpenBLAS would run the matrix products (tests, comparisons).
 */
export function setCpuKernels(kind: CpuKernels, opts: { fma?: boolean; blas?: boolean } = {}): void {
  if (kind !== 'ts' && kind !== 'wasm') throw new Error(`unknown cpu kernels '${kind}': use ts or wasm`);
  if (kind === 'wasm' && !compiled)
    throw new Error('setCpuKernels: WebAssembly SIMD is not available here, only the ts kernels');
  kernels = kind;
  fma = (opts.fma ?? true) && (compiled?.relaxed ?? false);
  useBlas = (opts.blas ?? true) && blas !== null && compiled !== null;
}

/** The CPU kernels in use: 'wasm' by default where WebAssembly SIMD exists, else 'ts'. */
export function getCpuKernels(): CpuKernels {
  return kernels;
}

/** What the platform offers and what is in use, for logs and benchmarks. */
export function cpuKernelInfo(): {
  kernels: CpuKernels;
  simd: boolean;
  relaxedSimd: boolean;
  fma: boolean;
  /** The BLAS library running the matrix products (e.g. 'OpenBLAS 0.3.21'), or null: the WebAssembly GEMM. */
  blas: string | null;
  sharedMemory: boolean;
  threads: number;
} {
  const threads = kernels === 'wasm' && sharedMemory ? getCpuThreads() : 1;
  return {
    kernels,
    simd: compiled !== null,
    relaxedSimd: compiled?.relaxed ?? false,
    fma: kernels === 'wasm' && fma,
    blas: kernels === 'wasm' && useBlas ? blas!.name : null,
    sharedMemory,
    threads,
  };
}

/** True when the wasm kernels are on and every storage lives in the memory. */
export function useWasm(...storages: CpuStorage[]): boolean {
  if (kernels !== 'wasm') return false;
  for (const s of storages) if (s.ptr < 0) return false;
  return true;
}

/**
 * How many tasks to cut a kernel of `work` units into: 1 below `min` or on
 * one thread, else 4 per thread, so that the tasks of a thread the OS has
 * paused can be taken over by the others.
 */
function pieces(work: number, min: number): number {
  const n = getCpuThreads();
  if (n === 1 || work < min || !sharedMemory || !compiled) return 1;
  return ensureWorkers(n, compiled.module, memory!) ? 4 * n : 1;
}

/** A block of the memory for a kernel's own use. */
function block(bytes: number): number {
  const ptr = malloc(bytes);
  if (ptr < 0) throw new Error('cpu backend: the WebAssembly memory is full');
  return ptr;
}

/** Kernel calls that ran on more than one thread, and attention block products made by OpenBLAS (tests read these). */
export const wasmStats = { parallelCalls: 0, blasBlockProducts: 0 };

/** Runs one export per task, on this thread alone or on all; each call gets the thread's index as one more argument. */
function run(name: string, tasks: number[][]): void {
  if (tasks.length === 1) return void fns[name](...tasks[0], 0);
  runParallel(fnIndex[name], fns[name], tasks);
  wasmStats.parallelCalls++;
}

// ---------------------------------------------------------------- matmul

/** A batched float32 product over the memory: byte addresses plus element offsets and strides. */
export interface WasmGemm {
  batch: number;
  M: number;
  N: number;
  K: number;
  a: number;
  aOffsets: ArrayLike<number>;
  aRowStride: number;
  aColStride: number;
  b: number;
  bOffsets: ArrayLike<number>;
  bRowStride: number;
  bColStride: number;
  /** Byte address of a bfloat16 copy of B's storage (CpuStorage.makeBf16), or -1. */
  bf16: number;
  /** Contiguous [batch, M, N] output. */
  c: number;
}

// multiply-adds below which splitting costs more than it saves (even at 2^20 when measured)
const GEMM_PARALLEL_MIN = 1 << 21;
const GEMV_PARALLEL_MIN = 1 << 17; // the same for matrix-vector products (one 576 x 576 weight is 2^18.3)
let scratch = { ptr: 0, threads: 0 }; // packing buffers in the memory, one per thread, made on first use

/** The packing buffers of every thread (GEMM_SCRATCH bytes each), made on first use. */
function gemmScratch(): number {
  const threads = getCpuThreads();
  if (scratch.threads < threads) {
    if (scratch.threads) free(scratch.ptr, scratch.threads * GEMM_SCRATCH);
    scratch = { ptr: block(threads * GEMM_SCRATCH), threads };
  }
  return scratch.ptr;
}

/**
 * C = A @ B. The work is cut into units (a matrix of the batch, or a band of
 * rows or columns of one) listed in the memory, and each thread gets a run of
 * consecutive units. A batch that shares one B and stacks A's rows folds into
 * one tall product first, so B is packed once.
 */
export function gemm(g: WasmGemm): void {
  const { M, N, K } = g;
  let { batch, aOffsets, bOffsets } = g;
  let rows = M;
  if (batch * M * N === 0) return;
  if (K === 0) {
    heapF32().fill(0, g.c / 4, g.c / 4 + batch * M * N);
    return;
  }
  let stacked = batch > 1;
  for (let p = 1; p < batch && stacked; p++)
    stacked = bOffsets[p] === bOffsets[0] && aOffsets[p] === aOffsets[0] + p * M * g.aRowStride;
  if (stacked) [rows, batch, aOffsets, bOffsets] = [batch * M, 1, [aOffsets[0]], [bOffsets[0]]];
  // A few rows (generating one token at a time): no packing, rows of C straight from A and B.
  // These products read each weight once, so memory bandwidth bounds them: split across
  // threads into bands of columns (16 wide, as the kernel's blocks), each thread streams its part of B.
  if (rows < MR && ((g.bRowStride === 1 && g.aColStride === 1) || g.bColStride === 1)) {
    const P = pieces(batch * rows * N * K, GEMV_PARALLEL_MIN);
    const bands = Math.min(Math.ceil(P / (batch * rows)), Math.ceil(N / 16)); // a long batch: a task per row
    // x @ W^T with a bfloat16 copy of W (keepBf16Copies): half the bytes to read
    const bf16 = g.bf16 >= 0 && g.bRowStride === 1 && g.aColStride === 1;
    // OpenBLAS's sgemv wakes its threads for anything over about 10^4 weights: on small products that costs
    // more than our own single-threaded loop, so they stay here
    const large = batch * rows * N * K >= GEMV_PARALLEL_MIN;
    if (!bf16 && large && useBlas && blasGemv(g, batch, rows, aOffsets, bOffsets)) return;
    const tasks: number[][] = [];
    for (let p = 0; p < batch; p++) {
      for (let i = 0; i < rows; i++) {
        const a = g.a + 4 * (aOffsets[p] + i * g.aRowStride);
        for (let t = 0; t < bands; t++) {
          const [lo, hi] = [bandStart(N, t, bands, 16), bandStart(N, t + 1, bands, 16)];
          const [b, c] = [bOffsets[p] + lo * g.bColStride, g.c + 4 * ((p * rows + i) * N + lo)];
          if (hi === lo) continue;
          if (bf16) tasks.push([a, g.bf16 + 2 * b, g.bColStride, c, K, hi - lo]);
          else tasks.push([a, g.aColStride, g.b + 4 * b, g.bRowStride, g.bColStride, c, K, hi - lo]);
        }
      }
    }
    const kernel = bf16 ? (fma ? 'gemv_bf16_fma' : 'gemv_bf16') : 'gemv';
    if (P === 1) for (const task of tasks) fns[kernel](...task);
    else for (let at = 0; at < tasks.length; at += 4095) run(kernel, tasks.slice(at, at + 4095));
    return;
  }

  if (useBlas && blasGemm(g, batch, rows, aOffsets, bOffsets)) return;
  const P = pieces(batch * rows * N * K, GEMM_PARALLEL_MIN);
  const units: number[] = [];
  // With fewer matrices than pieces, cut each into bands: of rows, or of
  // columns when C is wide, in whole tiles.
  const bands = Math.ceil(P / batch);
  const byRows = rows >= N;
  const len = byRows ? rows : N;
  const tileLen = byRows ? MR : NR;
  for (let p = 0; p < batch; p++) {
    const [a, b, c] = [g.a + 4 * aOffsets[p], g.b + 4 * bOffsets[p], g.c + 4 * p * rows * N];
    for (let t = 0; t < bands; t++) {
      const [lo, hi] = [bandStart(len, t, bands, tileLen), bandStart(len, t + 1, bands, tileLen)];
      if (lo === hi) continue;
      if (byRows) units.push(a + 4 * lo * g.aRowStride, b, c + 4 * lo * N, hi - lo, N);
      else units.push(a, b + 4 * lo * g.bColStride, c + 4 * lo, rows, hi - lo);
    }
  }
  const count = units.length / 5;
  const table = block(units.length * 4);
  heapI32().set(units, table / 4);
  // Each task is a run of consecutive units. The thread that runs it packs
  // into its own buffers: scratch + thread * GEMM_SCRATCH.
  const packing = gemmScratch();
  const per = Math.ceil(count / P);
  const tasks: number[][] = [];
  for (let t = 0; t * per < count; t++) {
    const strides = [g.aRowStride, g.aColStride, g.bRowStride, g.bColStride];
    tasks.push([table + 20 * t * per, Math.min(per, count - t * per), K, ...strides, N, packing]);
  }
  try {
    run(fma ? 'gemm_fma' : 'gemm', tasks);
  } finally {
    free(table, units.length * 4);
  }
}

/** Where band t of `bands` starts along a dim of `len`, in whole tiles of `tile`. */
function bandStart(len: number, t: number, bands: number, tile: number): number {
  return Math.min(len, Math.ceil((len * t) / bands / tile) * tile);
}

let blasThreads = 0;

/** How many threads OpenBLAS may split a product across (it keeps its own pool): ours, unless told. */
function matchBlasThreads(n = getCpuThreads()): void {
  if (blasThreads === n) return;
  blasThreads = n;
  blas!.setThreads(n);
}

/** C = A @ B by OpenBLAS, one sgemm per matrix of the batch; false when its strides do not fit cblas. */
function blasGemm(g: WasmGemm, batch: number, rows: number, aOffsets: ArrayLike<number>, bOffsets: ArrayLike<number>) {
  const { N, K } = g;
  const a = blasLayout(rows, K, g.aRowStride, g.aColStride);
  const b = blasLayout(K, N, g.bRowStride, g.bColStride);
  if (!a || !b) return false;
  matchBlasThreads();
  const heap = heapF32();
  for (let p = 0; p < batch; p++) {
    const [A, B] = [heap.subarray(g.a / 4 + aOffsets[p]), heap.subarray(g.b / 4 + bOffsets[p])];
    const C = heap.subarray(g.c / 4 + p * rows * N);
    blas!.sgemm(ROW_MAJOR, a[0], b[0], rows, N, K, 1, A, a[1], B, b[1], 0, C, N);
  }
  return true;
}

/**
 * The rows of C = A @ B by OpenBLAS's sgemv, one matrix-vector product per row (decoding): with B = W^T for
 * W stored [N, K] (a Linear's weight), c = W a; with B stored [K, N], c = B^T a. False for other strides.
 */
function blasGemv(g: WasmGemm, batch: number, rows: number, aOffsets: ArrayLike<number>, bOffsets: ArrayLike<number>) {
  const { N, K } = g;
  const b = blasLayout(K, N, g.bRowStride, g.bColStride);
  if (!b || g.aColStride < 1) return false;
  // c = B^T a: sgemv transposes B as stored; a B stored transposed ([N, K], a Linear's weight) is read as it is
  const layout = b[0] === NO_TRANS ? [TRANS, K, N, b[1]] : [NO_TRANS, N, K, b[1]];
  matchBlasThreads();
  const heap = heapF32();
  for (let p = 0; p < batch; p++) {
    const B = heap.subarray(g.b / 4 + bOffsets[p]);
    for (let i = 0; i < rows; i++) {
      const [a, c] = [
        heap.subarray(g.a / 4 + aOffsets[p] + i * g.aRowStride),
        heap.subarray(g.c / 4 + (p * rows + i) * N),
      ];
      blas!.sgemv(ROW_MAJOR, layout[0], layout[1], layout[2], 1, B, layout[3], a, g.aColStride, 0, c, 1);
    }
  }
  return true;
}

// ---------------------------------------------------------------- elementwise

const EW_PARALLEL_MIN = 1 << 18; // elements below which one thread is faster (about break-even at 2^17.5 when measured)

/** Byte address of a view's first element. */
function addr(v: View): number {
  return (v.storage as CpuStorage).ptr + 4 * v.offset;
}

/**
 * The fewest dims that walk the same elements as `shape` in every operand:
 * size-1 dims go, and a dim merges into the one before it when each operand
 * steps over it exactly as if the two were one dim. A [B, T, D] tensor plus a
 * broadcast [D] bias becomes [B*T, D] with bias strides [0, 1].
 */
export function mergeDims(shape: number[], strides: number[][]): { shape: number[]; strides: number[][] } {
  // (plain loops: this runs for every elementwise kernel, thousands of times a step)
  const dims: number[] = [];
  const st: number[][] = [];
  for (let t = 0; t < strides.length; t++) st.push([]);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = dims.length - 1;
    let merges = last >= 0;
    for (let t = 0; t < strides.length && merges; t++) merges = st[t][last] === strides[t][d] * shape[d];
    if (merges) dims[last] *= shape[d];
    else dims.push(shape[d]);
    for (let t = 0; t < strides.length; t++) st[t][merges ? last : last + 1] = strides[t][d];
  }
  return { shape: dims, strides: st };
}

/**
 * Runs elementwise export `name`: out[idx] = op(inputs[idx]...) for every
 * index of out's shape. Merged dims beyond the kernel's four are looped over
 * here (an odometer over the leading dims); a large call is split across
 * threads along a dim with enough rows for all. A call's arguments are the
 * four dims, then per operand its address and four element strides.
 */
function elementwise(name: string, out: View, inputs: View[]): void {
  if (numel(out.shape) === 0) return;
  const views = [out, ...inputs];
  const all: number[][] = [];
  for (const v of views) all.push(v.strides);
  const merged = mergeDims(out.shape, all);
  while (merged.shape.length < EW_DIMS) {
    merged.shape.unshift(1);
    for (const s of merged.strides) s.unshift(0);
  }
  const lead = merged.shape.length - EW_DIMS;
  const dims = merged.shape.slice(lead);
  const P = pieces(numel(dims), EW_PARALLEL_MIN);
  // split the first dim long enough for every piece, else the longest
  let split = -1;
  for (let d = 0; d < EW_DIMS && split < 0; d++) if (dims[d] >= P) split = d;
  if (split < 0) split = dims.indexOf(Math.max(...dims));
  const parts = Math.min(P, dims[split]);
  const idx = new Array<number>(lead).fill(0);
  for (let slab = 0, slabs = numel(merged.shape.slice(0, lead)); slab < slabs; slab++) {
    const tasks: number[][] = [];
    for (let t = 0; t < parts; t++) {
      const lo = Math.floor((dims[split] * t) / parts);
      const task = dims.slice();
      task[split] = Math.floor((dims[split] * (t + 1)) / parts) - lo;
      for (let v = 0; v < views.length; v++) {
        const st = merged.strides[v];
        let at = addr(views[v]) + 4 * lo * st[lead + split];
        for (let d = 0; d < lead; d++) at += 4 * idx[d] * st[d];
        task.push(at, st[lead], st[lead + 1], st[lead + 2], st[lead + 3]);
      }
      tasks.push(task);
    }
    run(name, tasks);
    for (let d = lead - 1; d >= 0 && ++idx[d] === merged.shape[d]; d--) idx[d] = 0;
  }
}

/** The whole of a fresh contiguous output, as a view. */
function whole(out: CpuStorage, shape: number[]): View {
  return { storage: out, shape, strides: contiguousStrides(shape), offset: 0, dtype: out.dtype };
}

/** out = op(x) elementwise; false when the op or dtype has no wasm kernel. */
export function unary(op: UnaryOp, x: View, out: CpuStorage): boolean {
  if (!(op in UNARY) || x.dtype !== 'float32') return false;
  elementwise(`un_${op}`, whole(out, x.shape), [x]);
  return true;
}

/** out = a op b (views already broadcast to one shape); false when there is no wasm kernel. */
export function binary(op: BinaryOp, a: View, b: View, out: CpuStorage): boolean {
  const name = a.dtype === 'float32' ? `bin_${op}` : a.dtype === 'int32' ? `bin_i32_${op}` : '';
  if (!(name in fns)) return false;
  elementwise(name, whole(out, a.shape), [a, b]);
  return true;
}

/** out = g * op'(x), elementwise. */
export function activationBackward(op: ActivationOp, x: View, g: View, out: CpuStorage): boolean {
  if (x.dtype !== 'float32' || g.dtype !== 'float32') return false;
  elementwise(`bwd_${op}`, whole(out, x.shape), [x, g]);
  return true;
}

/** out = cond != 0 ? a : b. */
export function where(cond: View, a: View, b: View, out: CpuStorage): boolean {
  if (a.dtype !== 'float32' || cond.dtype === 'float64') return false;
  elementwise(cond.dtype === 'int32' ? 'where_i32' : 'where', whole(out, a.shape), [cond, a, b]);
  return true;
}

/** Writes the elements of x into the view `dst`, converting int32 to float32 if needed. */
export function copyInto(dst: View, x: View): boolean {
  const name = x.dtype === dst.dtype ? 'copy' : x.dtype === 'int32' && dst.dtype === 'float32' ? 'i32_to_f32' : '';
  if (!name || x.dtype === 'float64') return false;
  elementwise(name, dst, [x]);
  return true;
}

/** A contiguous copy of x in out's dtype. */
export function copy(x: View, out: CpuStorage): boolean {
  return copyInto(whole(out, x.shape), x);
}

// ---------------------------------------------------------------- rows

/** Calls `fn` with the byte address of x's elements, contiguous (copied to a temporary if they are not). */
function withDense<T>(x: View, fn: (ptr: number) => T): T {
  if (isContiguous(x.shape, x.strides)) return fn(addr(x));
  const tmp = new CpuStorage(x.dtype, numel(x.shape), block(4 * numel(x.shape)));
  try {
    copy(x, tmp);
    return fn(tmp.ptr);
  } finally {
    tmp.free();
  }
}

/** Runs a row kernel over `rows` rows, split into bands of rows across threads when large. */
function rowsCall(name: string, rows: number, cols: number, args: (lo: number, hi: number) => number[]): void {
  if (rows === 0) return;
  const P = Math.min(pieces(rows * cols, EW_PARALLEL_MIN), rows);
  run(
    name,
    Array.from({ length: P }, (_, t) => args(Math.floor((rows * t) / P), Math.floor((rows * (t + 1)) / P))),
  );
}

/** out = sum of x over `axis`. */
export function sum(x: View, axis: number, out: CpuStorage): boolean {
  if (x.dtype !== 'float32') return false;
  const len = x.shape[axis];
  const outer = numel(x.shape.slice(0, axis));
  const inner = numel(x.shape.slice(axis + 1));
  if (len === 0) return false;
  withDense(x, (p) => {
    if (inner === 1) rowsCall('sum_rows', outer, len, (lo, hi) => [p + 4 * lo * len, hi - lo, len, out.ptr + 4 * lo]);
    else if (outer > 1)
      rowsCall('sum_cols', outer, len * inner, (lo, hi) => [
        p + 4 * lo * len * inner,
        hi - lo,
        len,
        inner,
        out.ptr + 4 * lo * inner,
      ]);
    else run('sum_cols', [[p, 1, len, inner, out.ptr]]);
  });
  return true;
}

/** Softmax over the last axis. */
export function softmax(x: View, out: CpuStorage): boolean {
  if (x.dtype !== 'float32' || x.shape.length === 0) return false;
  const cols = x.shape[x.shape.length - 1];
  const rows = cols === 0 ? 0 : numel(x.shape) / cols;
  withDense(x, (p) =>
    rowsCall('softmax', rows, cols, (lo, hi) => [p + 4 * lo * cols, hi - lo, cols, out.ptr + 4 * lo * cols]),
  );
  return true;
}

/**
 * Runs exp_sums over the rows of x (the last axis): for each row, its max m
 * and log(sum of e^(x - m)), the log taken on the host (one per row).
 * log-sum-exp is m + that.
 */
function rowLogSums(x: View): Float32Array {
  const cols = x.shape[x.shape.length - 1];
  const rows = numel(x.shape) / cols;
  const pairs = block(8 * rows);
  try {
    withDense(x, (p) =>
      rowsCall('exp_sums', rows, cols, (lo, hi) => [p + 4 * lo * cols, hi - lo, cols, pairs + 8 * lo]),
    );
    const h = heapF32().slice(pairs / 4, pairs / 4 + 2 * rows);
    for (let r = 0; r < rows; r++) h[2 * r + 1] = Math.log(h[2 * r + 1]);
    return h;
  } finally {
    free(pairs, 8 * rows);
  }
}

/**
 * log(softmax(x)) over the last axis: (x - max) - log(sum), in that order so
 * that large inputs lose no digits (x - max is exact when x is near max).
 */
export function logSoftmax(x: View, out: CpuStorage): boolean {
  if (x.dtype !== 'float32' || x.shape.length === 0 || numel(x.shape) === 0) return false;
  const pairs = rowLogSums(x);
  const tmp = new CpuStorage('float32', pairs.length, block(4 * pairs.length));
  try {
    tmp.data.set(pairs);
    // each row's max, then its log-sum, broadcast along the row (stride 0 on the last axis)
    const rowStrides = [...contiguousStrides(x.shape.slice(0, -1)).map((st) => 2 * st), 0];
    const o = whole(out, x.shape);
    elementwise('bin_sub', o, [x, { ...o, storage: tmp, strides: rowStrides }]);
    elementwise('bin_sub', o, [o, { ...o, storage: tmp, strides: rowStrides, offset: 1 }]);
  } finally {
    tmp.free();
  }
  return true;
}

/** Per-row -log softmax(logits)[target] for [rows, cols] logits; 0 at ignored rows. */
export function crossEntropy(logits: View, targets: View, ignoreIndex: number, out: CpuStorage): boolean {
  if (logits.dtype !== 'float32' || numel(logits.shape) === 0) return false;
  const [rows, cols] = logits.shape;
  const pairs = rowLogSums(logits);
  const [t, x, o] = [heapI32(), heapF32(), out.data];
  const [t0, x0] = [addr(targets) / 4, addr(logits) / 4];
  for (let r = 0; r < rows; r++) {
    const target = t[t0 + r * targets.strides[0]];
    if (target === ignoreIndex) o[r] = 0;
    else if (target < 0 || target >= cols)
      throw new Error(`crossEntropy: target ${target} is out of range for ${cols} classes`);
    else o[r] = pairs[2 * r] - x[x0 + r * logits.strides[0] + target * logits.strides[1]] + pairs[2 * r + 1];
  }
  return true;
}

/**
 * The gradient of per-row cross-entropy for [rows, cols] logits: (softmax(logits) - onehot(target)) * g
 * per row, zero at ignored rows. The softmax and the scaling are kernels; the one-hot part and the ignored
 * rows are one value (or one fill) per row, on the host.
 */
export function crossEntropyBackward(
  logits: View,
  targets: View,
  g: View,
  ignoreIndex: number,
  out: CpuStorage,
): boolean {
  if (logits.dtype !== 'float32' || g.dtype !== 'float32' || numel(logits.shape) === 0) return false;
  const [rows, cols] = logits.shape;
  softmax(logits, out);
  const scale = new CpuStorage('float32', rows, block(4 * rows));
  try {
    const [t, x, o] = [heapI32(), heapF32(), out.data];
    const [t0, g0] = [addr(targets) / 4, addr(g) / 4];
    const ignored = (r: number) => t[t0 + r * targets.strides[0]] === ignoreIndex;
    for (let r = 0; r < rows; r++) scale.data[r] = ignored(r) ? 0 : x[g0 + r * g.strides[0]];
    const o2 = whole(out, [rows, cols]);
    elementwise('bin_mul', o2, [
      o2,
      { storage: scale, shape: [rows, cols], strides: [1, 0], offset: 0, dtype: 'float32' },
    ]);
    // minus g at each target; ignored rows get exact zeros, whatever their logits held
    for (let r = 0; r < rows; r++) {
      if (ignored(r)) o.fill(0, r * cols, (r + 1) * cols);
      else o[r * cols + t[t0 + r * targets.strides[0]]] -= scale.data[r];
    }
  } finally {
    scale.free();
  }
  return true;
}

/** LayerNorm (with bias) or RMSNorm (bias null) over the last axis. */
export function norm(x: View, w: View, b: View | null, eps: number, out: CpuStorage): boolean {
  if (![x, w, b].every((v) => !v || v.dtype === 'float32') || x.shape.length === 0) return false;
  if (![w, b].every((v) => !v || isContiguous(v.shape, v.strides))) return false;
  const cols = x.shape[x.shape.length - 1];
  const rows = cols === 0 ? 0 : numel(x.shape) / cols;
  withDense(x, (p) =>
    rowsCall(b ? 'layer_norm' : 'rms_norm', rows, cols, (lo, hi) => {
      const [xs, o] = [p + 4 * lo * cols, out.ptr + 4 * lo * cols];
      return b ? [xs, addr(w), addr(b), hi - lo, cols, eps, o] : [xs, addr(w), hi - lo, cols, eps, o];
    }),
  );
  return true;
}

/**
 * The backward pass of LayerNorm (db given) or RMSNorm (db null) over the last axis: dx, and the weight
 * (and bias) gradients summed over the rows. Each thread sums its band of rows into its own zeroed partial
 * sums; sum_cols adds those up.
 */
export function normBackward(
  x: View,
  w: View,
  g: View,
  eps: number,
  out: { dx: CpuStorage; dw: CpuStorage; db: CpuStorage | null },
): boolean {
  if (![x, w, g].every((v) => v.dtype === 'float32') || x.shape.length === 0) return false;
  if (!isContiguous(w.shape, w.strides)) return false;
  const cols = x.shape[x.shape.length - 1];
  const rows = cols === 0 ? 0 : numel(x.shape) / cols;
  if (rows === 0) return false;
  const P = Math.min(pieces(rows * cols, EW_PARALLEL_MIN), rows);
  const sums = out.db ? 2 : 1; // dw's partial sums, then db's
  const partial = block(4 * P * cols * sums);
  heapF32().fill(0, partial / 4, partial / 4 + P * cols * sums);
  const part = (which: number, t: number) => partial + 4 * cols * (which * P + t);
  try {
    withDense(x, (px) =>
      withDense(g, (pg) =>
        run(
          out.db ? 'layer_norm_bwd' : 'rms_norm_bwd',
          Array.from({ length: P }, (_, t) => {
            const [lo, hi] = [Math.floor((rows * t) / P), Math.floor((rows * (t + 1)) / P)];
            const [xs, gs, dxs] = [px + 4 * lo * cols, pg + 4 * lo * cols, out.dx.ptr + 4 * lo * cols];
            const common = [xs, addr(w), gs, hi - lo, cols, eps, dxs, part(0, t)];
            return out.db ? [...common, part(1, t)] : common;
          }),
        ),
      ),
    );
    run('sum_cols', [[partial, 1, P, cols, out.dw.ptr]]);
    if (out.db) run('sum_cols', [[part(1, 0), 1, P, cols, out.db.ptr]]);
  } finally {
    free(partial, 4 * P * cols * sums);
  }
  return true;
}

// ---------------------------------------------------------------- attention

const ATT_ROWS = 96; // most query rows per block (whole 6-row register tiles)
const ATT_KEYS = 256; // most keys per block: a block of scores stays in L2, and is one GEMM slab deep (KC)
const ATT_BLAS_MIN = 1 << 15; // multiply-adds of a head's score product from which OpenBLAS makes the products
// With OpenBLAS, larger blocks: fewer, larger sgemm calls (each call packs its operands: a fixed cost)
const ATT_ROWS_BLAS = 256;
const ATT_KEYS_BLAS = 512;

/** A block length near n / ceil(n / most), at most `most`, rounded up to a multiple of `multiple`. */
function blockLength(n: number, most: number, multiple: number): number {
  return Math.min(most, Math.ceil(n / Math.ceil(n / most) / multiple) * multiple);
}

/** Whether the fast path takes these views: float32, in the memory, no empty dims. */
function attentionFits(views: View[]): boolean {
  return views.every((x) => x.dtype === 'float32' && (x.storage as CpuStorage).ptr >= 0 && numel(x.shape) > 0);
}

/**
 * Calls fn with the (B, H, T, D) views, each with its rows of D contiguous
 * (the kernels read rows as vectors): a view whose last stride is not 1 (a
 * broadcast gradient) is copied to a temporary first.
 */
function withRows<T>(views: View[], fn: (rows: View[]) => T): T {
  const temps: CpuStorage[] = [];
  try {
    return fn(
      views.map((x) => {
        if (x.strides[3] === 1 || x.shape[3] === 1) return x;
        const tmp = new CpuStorage('float32', numel(x.shape), block(4 * numel(x.shape)));
        temps.push(tmp);
        copy(x, tmp);
        return whole(tmp, x.shape);
      }),
    );
  } finally {
    for (const t of temps) t.free();
  }
}

/** What an attention call's tasks need: the parameter block, the block length of the queries, how to run. */
interface AttentionCall {
  params: number;
  rowsPerBlock: number;
  run: (name: 'attention_fwd' | 'attention_bwd', tasks: number[][]) => void;
}

/**
 * Writes the parameter block of an attention call (ATT in attention.ts) and
 * the per-thread buffers, calls fn, and frees them. q (B, H, T, D) and k, v
 * (B, Hkv, Tk, D) as views; o is the output (B, H, T, D) view and g
 * dLoss/dout (backward only).
 */
function attentionCall(
  q: View,
  k: View,
  v: View,
  o: View,
  g: View | null,
  opts: AttentionOptions,
  fn: (call: AttentionCall) => void,
): void {
  const [B, H, T, D] = q.shape;
  const [Hkv, Tk] = [k.shape[1], k.shape[2]];
  // OpenBLAS does the block products where it runs the GEMM (gemm() above), called by whichever of our threads
  // runs the task (each loads OpenBLAS). While our threads split the call, each product runs on the thread that
  // asks for it; on one thread, OpenBLAS may split the large ones across its own. A few query rows (decoding)
  // stay on the WebAssembly GEMM, as gemm's do, and so do tiny heads: a call to OpenBLAS costs about a
  // microsecond, more than a product under 2^15 multiply-adds (the default model's 20 x 20 x 16) takes here.
  const viaBlas = useBlas && T >= MR && T * Tk * D >= ATT_BLAS_MIN;
  const [mq, nk] = viaBlas
    ? [blockLength(T, ATT_ROWS_BLAS, 1), blockLength(Tk, ATT_KEYS_BLAS, 1)]
    : [blockLength(T, ATT_ROWS, MR), blockLength(Tk, ATT_KEYS, NR)];
  const parallel = pieces(B * H * T * Tk * D, GEMM_PARALLEL_MIN) > 1;
  const threads = parallel ? getCpuThreads() : 1;
  if (viaBlas) matchBlasThreads(threads > 1 ? 1 : undefined);
  // forward: scores, output rows, max and sum of a block; backward: P and dP of a block, delta of a head
  const floatsPerThread = g ? 2 * mq * nk + T : mq * nk + mq * D + 2 * mq;
  const perThread = Math.ceil((4 * floatsPerThread) / 64) * 64; // whole cache lines: threads never share one
  const packing = gemmScratch();
  const [params, work] = [block(4 * ATT.WORDS), block(threads * perThread)];
  const [mask, drop] = [opts.mask, opts.dropout];
  const values: Partial<Record<keyof typeof ATT, number>> = {
    QR: q.strides[2],
    QC: q.strides[3],
    KR: k.strides[2],
    KC: k.strides[3],
    VR: v.strides[2],
    VC: v.strides[3],
    OR: o.strides[2],
    GR: g?.strides[2] ?? 0,
    MR: mask?.strides[2] ?? 0,
    MC: mask?.strides[3] ?? 0,
    QH: q.strides[1],
    OH: o.strides[1],
    GH: g?.strides[1] ?? 0,
    LH: T,
    MH: mask?.strides[1] ?? 0,
    DQR: H * D,
    DQH: D,
    DKR: Hkv * D,
    NH: T * Tk,
    GROUP: H / Hkv,
    T,
    TK: Tk,
    D,
    CAUSAL: opts.causal ? 1 : 0,
    SHIFT: Tk - T,
    DROPOUT: drop ? 1 : 0,
    THRESHOLD: drop ? Math.floor(drop.p * 2 ** 32) : 0,
    SEED: drop?.seed ?? 0,
    NK: nk,
    MQ: mq,
    SCRATCH: work,
    SCRATCH_BYTES: perThread,
    GEMM_SCRATCH: packing,
    ZERO: 0,
  };
  try {
    const words = heapI32().subarray(params / 4, params / 4 + ATT.WORDS);
    for (const [name, value] of Object.entries(values)) words[ATT[name as keyof typeof ATT]] = value;
    const floats = heapF32().subarray(params / 4, params / 4 + ATT.WORDS);
    floats[ATT.SCALE] = opts.scale;
    floats[ATT.KEEP_SCALE] = drop ? 1 / (1 - drop.p) : 1;
    fn({
      params,
      rowsPerBlock: mq,
      run: (name, tasks) => {
        const kernel = viaBlas ? `${name}_blas` : fma ? `${name}_fma` : name;
        if (!parallel) for (const task of tasks) fns[kernel](...task, 0);
        else for (let at = 0; at < tasks.length; at += 4095) run(kernel, tasks.slice(at, at + 4095));
      },
    });
  } finally {
    free(params, 4 * ATT.WORDS);
    free(work, threads * perThread);
  }
}

/** Byte address of element [b, h, t, 0] of a (B, H, T, D) view. */
function rowAddr(x: View, b: number, h: number, t = 0): number {
  return addr(x) + 4 * (b * x.strides[0] + h * x.strides[1] + t * x.strides[2]);
}

/**
 * Fused attention (see attention.ts): out in (B, T, H, D) order and the
 * log-sum-exp of each score row. One task per block of query rows of a head.
 */
export function attention(
  q: View,
  k: View,
  v: View,
  opts: AttentionOptions,
  out: CpuStorage,
  lse: CpuStorage,
): boolean {
  if (!attentionFits(opts.mask ? [q, k, v, opts.mask] : [q, k, v])) return false;
  const [Hq, Tq, Dq] = [q.shape[1], q.shape[2], q.shape[3]];
  let o: View = { storage: out, shape: q.shape, strides: [Tq * Hq * Dq, Dq, Hq * Dq, 1], offset: 0, dtype: 'float32' };
  // One query (a decoding step) with grouped heads: the query heads that share a key/value head become the rows of
  // one head, so each key/value head is packed once, not once per query head, and a block holds several rows, not
  // one. (B, H, 1, D) is seen as (B, Hkv, H / Hkv, D): the same memory, and the same (max, sum) rows. The query is
  // the last position, so causal hides no key; dropout numbers its rows by position and stays unfolded.
  if (Tq === 1 && Hq > k.shape[1] && !opts.dropout) {
    const G = Hq / k.shape[1];
    const fold = (x: View): View => {
      const hs = x.shape[1] === 1 ? 0 : x.strides[1];
      const [shape, strides] = [
        [x.shape[0], k.shape[1], G, x.shape[3]],
        [x.strides[0], G * hs, hs, x.strides[3]],
      ];
      return { ...x, shape, strides };
    };
    [q, o] = [fold(q), fold(o)];
    opts = { ...opts, causal: false, mask: opts.mask && fold(opts.mask) };
  }
  const [B, H, T] = q.shape;
  const [Hkv, Tk] = [k.shape[1], k.shape[2]];
  const stats = block(8 * B * H * T); // (max, sum) of each score row
  try {
    withRows([q, k, v], ([q, k, v]) =>
      attentionCall(q, k, v, o, null, opts, (call) => {
        const tasks: number[][] = [];
        const zero = call.params + 4 * ATT.ZERO;
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            const kh = Math.floor(h / (H / Hkv));
            for (let i0 = 0; i0 < T; i0 += call.rowsPerBlock) {
              const row = (b * H + h) * T + i0;
              const mask = opts.mask ? rowAddr(opts.mask, b, h, i0) : zero;
              tasks.push([
                call.params,
                rowAddr(q, b, h, i0),
                rowAddr(k, b, kh),
                rowAddr(v, b, kh),
                rowAddr(o, b, h, i0),
                stats + 8 * row,
                mask,
                i0,
                Math.min(call.rowsPerBlock, T - i0),
                row * Tk,
              ]);
            }
          }
        }
        call.run('attention_fwd', tasks);
      }),
    );
    // lse = max + log(sum), one log per row, on the host (no log instruction)
    const [st, l] = [heapF32().subarray(stats / 4, stats / 4 + 2 * B * H * T), lse.data];
    for (let i = 0; i < B * H * T; i++) l[i] = st[2 * i] + Math.log(st[2 * i + 1]);
  } finally {
    free(stats, 8 * B * H * T);
  }
  return true;
}

/**
 * The gradients of attention (see attention.ts), added into zeroed dq (B, T,
 * H, D), dk and dv (B, Tk, Hkv, D). One task per key/value head of a batch
 * entry: it owns that head's rows of dk and dv and its query heads' rows of dq.
 */
export function attentionBackward(
  q: View,
  k: View,
  v: View,
  o: View,
  g: View,
  lse: View,
  opts: AttentionOptions,
  dq: CpuStorage,
  dk: CpuStorage,
  dv: CpuStorage,
): boolean {
  if (!attentionFits([q, k, v, o, g, lse, ...(opts.mask ? [opts.mask] : [])])) return false;
  if (!isContiguous(lse.shape, lse.strides)) return false;
  const [B, H, T, D] = q.shape;
  const [Hkv, Tk] = [k.shape[1], k.shape[2]];
  const group = H / Hkv;
  withRows([q, k, v, o, g], ([q, k, v, o, g]) =>
    attentionCall(q, k, v, o, g, opts, (call) => {
      const tasks: number[][] = [];
      const zero = call.params + 4 * ATT.ZERO;
      for (let b = 0; b < B; b++) {
        for (let kh = 0; kh < Hkv; kh++) {
          const h = kh * group; // the group's first query head
          const mask = opts.mask ? rowAddr(opts.mask, b, h) : zero;
          const [dqAt, dkvAt] = [4 * (b * T * H + h) * D, 4 * (b * Tk * Hkv + kh) * D];
          tasks.push([
            call.params,
            rowAddr(q, b, h),
            rowAddr(k, b, kh),
            rowAddr(v, b, kh),
            rowAddr(o, b, h),
            rowAddr(g, b, h),
            addr(lse) + 4 * (b * H + h) * T,
            mask,
            dq.ptr + dqAt,
            dk.ptr + dkvAt,
            dv.ptr + dkvAt,
            (b * H + h) * T * Tk,
          ]);
        }
      }
      call.run('attention_bwd', tasks);
    }),
  );
  return true;
}

// ---------------------------------------------------------------- optimizer

/** AdamW's per-step constants, as nn/optim.ts computes them. */
export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The step number, from 1 (for the bias corrections). */
  step: number;
}

const ADAMW_CHUNK = 1 << 15; // elements of each moment streamed through the memory at a time (256 KiB for both)

/**
 * One fused AdamW update of a float32 parameter and its two moments, in
 * place (all contiguous, same length). The parameter and its gradient are in
 * the memory; the moments may be outside it (CpuBackend.adamw keeps them
 * there), and then go through a scratch block a chunk at a time: copied in,
 * updated, copied back, through two scratch slots: chunk i is updated while
 * chunk i - 1 is copied out and chunk i + 1 in. On several threads a worker
 * does the update meanwhile (the copies take longer than it does).
 */
export function adamw(p: View, g: View, m: View, v: View, h: AdamWStep): boolean {
  if (![p, g, m, v].every((x) => x.dtype === 'float32' && isContiguous(x.shape, x.strides))) return false;
  const n = numel(p.shape);
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const stepSize = h.lr / (1 - h.beta1 ** h.step);
  const consts = [1 - h.lr * h.weightDecay, 1 - h.beta1, h.beta2, 1 - h.beta2, c2, stepSize, h.eps];
  const [ms, vs] = [m.storage as CpuStorage, v.storage as CpuStorage];
  if (ms.ptr >= 0 && vs.ptr >= 0) {
    run('adamw', [[addr(p), addr(g), addr(m), addr(v), n, ...consts]]);
    return true;
  }
  const chunk = Math.min(n, ADAMW_CHUNK);
  const chunks = Math.ceil(n / chunk);
  const overlap = pieces(n, 2 * ADAMW_CHUNK) > 1; // two chunks at least, and a worker to update them
  const tmp = block(16 * chunk); // two slots of [m chunk, v chunk]
  const [md, vd] = [ms.data, vs.data];
  // chunk i: its elements, and its scratch slot
  const span = (i: number) => [i * chunk, Math.min(chunk, n - i * chunk)];
  const slot = (i: number) => tmp + 8 * chunk * (i % 2);
  const copyIn = (i: number) => {
    const [[at, len], heap, s] = [span(i), heapF32(), slot(i) / 4];
    heap.set(md.subarray(m.offset + at, m.offset + at + len), s);
    heap.set(vd.subarray(v.offset + at, v.offset + at + len), s + chunk);
  };
  const copyOut = (i: number) => {
    const [[at, len], heap, s] = [span(i), heapF32(), slot(i) / 4];
    md.set(heap.subarray(s, s + len), m.offset + at);
    vd.set(heap.subarray(s + chunk, s + chunk + len), v.offset + at);
  };
  try {
    copyIn(0);
    for (let i = 0; i < chunks; i++) {
      const [at, len] = span(i);
      const update = [addr(p) + 4 * at, addr(g) + 4 * at, slot(i), slot(i) + 4 * chunk, len, ...consts];
      if (overlap) startParallel(fnIndex.adamw, [update]);
      else fns.adamw(...update);
      try {
        if (i > 0) copyOut(i - 1);
        if (i + 1 < chunks) copyIn(i + 1); // into the slot chunk i - 1 has just left
      } finally {
        if (overlap) waitParallel(); // the worker is done with chunk i before its slot is touched again
      }
    }
    copyOut(chunks - 1);
    if (overlap) wasmStats.parallelCalls++;
  } finally {
    free(tmp, 16 * chunk);
  }
  return true;
}
