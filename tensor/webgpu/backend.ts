// The WebGPU backend: tensors live in GPU buffers, every op records one or
// two compute dispatches (recorder.ts submits them), and bytes come back to
// the host only through read().
//
// Views need no copies: every kernel takes offset + strides for each operand
// (kernels/common.ts), after neighbouring dims that are contiguous in every
// operand have been merged (strides.ts), so most elementwise calls run at
// rank 1. Matmul reads transposed, sliced and broadcast-batch operands in
// place too. Only the 1-d operands of fused kernels (weights, ids, targets)
// and a few odd layouts are copied to a contiguous buffer first.
//
// Large buffers: a buffer larger than maxStorageBufferBindingSize is bound
// through a window around the elements a view touches; an op that needs more
// than that in one binding fails with an error naming the op and the size.
//
// What a GPU cannot do like the CPU (it cannot throw from a kernel):
// embedding ids outside the table read zeros, a crossEntropy target outside
// [0, V) gives NaN, an invalid multinomial row (negative/NaN weights or a
// zero sum) gives -1. float -> int32 casts wrap like a typed-array store.

import type { Backend, BinaryOp, ReduceOp, Storage, UnaryOp, View } from '../backend.ts';
import { type DType, type TypedArray, dtypeOf, makeTypedArray, toTypedArray } from '../dtype.ts';
import { contiguousStrides, fmt, isContiguous, numel } from '../shape.ts';
import { type Kernel, MAX_GROUPS_PER_DIM } from './kernels/common.ts';
import { EW_WORKGROUP, binaryKernel, copyKernel, fillKernel, unaryKernel, whereKernel } from './kernels/elementwise.ts';
import { SORT_TILE, gatherKernel, multinomialKernel, scatterSumKernel, sortKernel } from './kernels/indexing.ts';
import { matmulKernel } from './kernels/matmul.ts';
import { REDUCE_WORKGROUP, SHORT_AXIS, reduceKernel } from './kernels/reduce.ts';
import { type RowOp, checkRowDtype, rowKernel, rowWorkgroup } from './kernels/rows.ts';
import { type Arg, CommandRecorder, type GpuCounters, GpuStorage } from './recorder.ts';
import { collapse, elementRange, f32Bits, i32Bits } from './strides.ts';

export { GpuStorage, type GpuCounters } from './recorder.ts';

/** A strided operand bound to one binding, with its offset relative to the binding window. */
interface Bound {
  arg: Arg;
  offset: number;
}

/** A 1-d operand: a binding plus element offset and stride. */
interface Bound1d extends Bound {
  stride: number;
}

/** Where the adapter came from, for messages and benchmarks. */
export interface AdapterDescription {
  name: string;
  backend: string;
  featureLevel: string;
  /** A CPU rasteriser (llvmpipe, SwiftShader): exact but slow. */
  software: boolean;
  /** The optional features the device was opened with (shader-f16, subgroups, timestamp-query). */
  features: string[];
}

/** The WebGPU backend. */
export class WebGPUBackend implements Backend {
  readonly name = 'webgpu' as const;
  readonly rec: CommandRecorder;
  /** Threads per side of a large-matrix matmul workgroup (each computes 4x4 outputs). */
  private matmulThreads: number;

  constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterDescription,
    /** Dawn's instance (create()'s result): must stay referenced while the device is used, or Dawn crashes. */
    public gpu: GPU | null,
  ) {
    this.rec = new CommandRecorder(device);
    // 16x16 threads x 4x4 outputs = 64x64 tiles where 256 invocations per workgroup are allowed
    this.matmulThreads = device.limits.maxComputeInvocationsPerWorkgroup >= 256 ? 16 : 8;
  }

  // ------------------------------------------------------------ storage

  alloc(dtype: DType, length: number): Storage {
    return this.rec.newStorage(dtype, length, true, 'alloc');
  }

  write(dst: Storage, src: TypedArray): void {
    const s = this.rec.check(dst, 'write');
    if (src.length > s.length) throw new Error(`webgpu write: ${src.length} values do not fit a storage of ${s.length}`);
    this.rec.upload(s, (dtypeOf(src) === s.dtype ? src : toTypedArray(s.dtype, src)) as Float32Array | Int32Array);
  }

  async read(x: View): Promise<TypedArray> {
    const n = numel(x.shape);
    if (n === 0) return makeTypedArray(x.dtype, 0);
    // a strided view is gathered on the device first: only its n elements travel
    const temp = isContiguous(x.shape, x.strides) ? null : (this.copy(x, x.dtype) as GpuStorage);
    const src = temp ?? this.rec.check(x.storage, 'read');
    const bytes = this.rec.readBytes(src, temp ? 0 : x.offset * 4, n * 4);
    if (temp) this.rec.release(temp);
    return x.dtype === 'int32' ? new Int32Array(await bytes) : new Float32Array(await bytes);
  }

  retain(s: Storage): void {
    this.rec.check(s, 'retain').refs++;
  }

  release(s: Storage): void {
    this.rec.release(this.rec.check(s, 'release'));
  }

  liveBytes(): number {
    return this.rec.liveBytes;
  }

  flush(): void {
    this.rec.flush();
  }

  /** Waits until the GPU has finished every op recorded so far. */
  sync(): Promise<void> {
    return this.rec.sync();
  }

  /** Live, pooled and allocated bytes, buffers, compiled pipelines and cached bind groups. */
  memoryStats(): ReturnType<CommandRecorder['stats']> {
    return this.rec.stats();
  }

  /** Host-side costs since the device was opened: dispatches, passes, submits, buffers, bind groups, bytes. */
  counters(): GpuCounters {
    return this.rec.counters();
  }

  /** Frees every GPU resource and the device (closeWebGPU). */
  destroy(): void {
    this.rec.destroy();
    this.gpu = null; // tensors that outlive the device must not keep Dawn (and the process) alive
  }

  // ------------------------------------------------------------ elementwise

  unary(op: UnaryOp, x: View): Storage {
    return this.mapOp(op, x.dtype, x.shape, [x], (r) => unaryKernel(op, x.dtype, r));
  }

  binary(op: BinaryOp, a: View, b: View): Storage {
    if (a.dtype !== b.dtype) throw new Error(`webgpu ${op}: dtypes ${a.dtype} and ${b.dtype} differ`);
    return this.mapOp(op, a.dtype, a.shape, [a, b], (r) => binaryKernel(op, a.dtype, r));
  }

  where(cond: View, a: View, b: View): Storage {
    return this.mapOp('where', a.dtype, a.shape, [cond, a, b], (r) => whereKernel(cond.dtype, a.dtype, r));
  }

  copy(x: View, dtype: DType): Storage {
    // a kernel even where a buffer copy would do: it stays in the compute pass (recorder.ts)
    return this.mapOp('copy', dtype, x.shape, [x], (r) => copyKernel(x.dtype, dtype, r));
  }

  copyInto(dst: View, src: View): void {
    // one dispatch cannot bind a buffer both writable and readable: copy an aliasing source first
    const temp = src.storage === dst.storage ? this.copy(src, src.dtype) : null;
    const from = temp ? { ...src, storage: temp, offset: 0, strides: contiguousStrides(src.shape) } : src;
    try {
      this.map('copyInto', dst, [from], (r) => copyKernel(from.dtype, dst.dtype, r));
    } finally {
      if (temp) this.release(temp);
    }
  }

  fill(dtype: DType, length: number, value: number): Storage {
    const bits = dtype === 'int32' ? i32Bits(value) : f32Bits(value);
    if (bits === 0) return this.rec.newStorage(dtype, length, true, 'fill'); // zeros: cleared when first used
    return this.output('fill', dtype, length, (out) => {
      this.rec.run('fill', fillKernel(dtype), [length, bits], [this.whole(out, 'fill')], this.rec.groupsFor(Math.ceil(length / EW_WORKGROUP)));
    });
  }

  // ------------------------------------------------------------ reductions

  reduce(op: ReduceOp, x: View, axis: number): Storage {
    const len = x.shape[axis];
    const outShape = x.shape.filter((_, i) => i !== axis);
    const nOut = numel(outShape);
    const dtype = op === 'argmax' ? 'int32' : x.dtype;
    if (len === 0 && nOut > 0) {
      if (op !== 'sum') throw new Error(`${op}: cannot reduce over an empty dim of ${fmt(x.shape)}`);
      return this.rec.newStorage(dtype, nOut, true, op); // an empty sum is 0
    }
    return this.output(op, dtype, nOut, (out) => {
      const outer = collapse(outShape, [x.strides.filter((_, i) => i !== axis)]);
      const xb = this.bind(x, op);
      const long = len > SHORT_AXIS; // a workgroup per output instead of a thread
      const params = [nOut, len, x.strides[axis], ...outer.shape, xb.offset, ...outer.strides[0]];
      const groups = this.rec.groupsFor(long ? nOut : Math.ceil(nOut / REDUCE_WORKGROUP));
      this.rec.run(op, reduceKernel(op, x.dtype, outer.shape.length, long), params, [this.whole(out, op), xb.arg], groups);
    });
  }

  // ------------------------------------------------------------ matmul

  matmul(a: View, b: View): Storage {
    if (a.dtype !== 'float32' || b.dtype !== 'float32') {
      throw new Error(`matmul: ${a.dtype === 'float32' ? b.dtype : a.dtype} is not supported on webgpu, cast to float32 first`);
    }
    const r = a.shape.length;
    const [M, K, N] = [a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]];
    const batchShape = a.shape.slice(0, r - 2);
    const batch = numel(batchShape);
    if (K === 0) return this.rec.newStorage('float32', batch * M * N, true, 'matmul');
    return this.output('matmul', 'float32', batch * M * N, (out) => {
      const bs = collapse(batchShape, [a.strides.slice(0, r - 2), b.strides.slice(0, r - 2)]);
      const [ab, bb] = [this.bind(a, 'matmul'), this.bind(b, 'matmul')];
      const [aRS, aCS, bRS, bCS] = [a.strides[r - 2], a.strides[r - 1], b.strides[r - 2], b.strides[r - 1]];
      // small matrices (attention heads, matrix-vector) waste less of a 32-wide tile
      const td = M <= 32 || N <= 32 ? 8 : this.matmulThreads;
      const tile = td * 4;
      // the slab copy walks the operand's contiguous index (kernels/matmul.ts)
      const kernel = matmulKernel(bs.shape.length, aCS <= aRS, bCS <= bRS, td, 4);
      for (let z0 = 0; z0 < batch; z0 += MAX_GROUPS_PER_DIM) {
        const params = [M, N, K, aRS, aCS, bRS, bCS, z0, ...bs.shape, ab.offset, ...bs.strides[0], bb.offset, ...bs.strides[1]];
        const groups: [number, number, number] = [Math.ceil(N / tile), Math.ceil(M / tile), Math.min(MAX_GROUPS_PER_DIM, batch - z0)];
        this.rec.run('matmul', kernel, params, [this.whole(out, 'matmul'), ab.arg, bb.arg], groups);
      }
    });
  }

  // ------------------------------------------------------------ indexing

  gather(table: View, ids: View): Storage {
    const [V, D] = table.shape;
    return this.output('embedding', table.dtype, numel(ids.shape) * D, (out) =>
      this.with1d(ids, 'embedding', (id) => {
        const tb = this.bind(table, 'embedding');
        const params = [out.length, D, V, tb.offset, table.strides[0], table.strides[1], id.offset, id.stride];
        const groups = this.rec.groupsFor(Math.ceil(out.length / EW_WORKGROUP));
        this.rec.run('embedding', gatherKernel(table.dtype), params, [this.whole(out, 'embedding'), tb.arg, id.arg], groups);
      }),
    );
  }

  scatterAdd(ids: View, src: View, rows: number): Storage {
    const N = numel(ids.shape);
    const D = N === 0 ? 0 : numel(src.shape) / N;
    if (N === 0) return this.rec.newStorage(src.dtype, rows * D, true, 'scatterAdd');
    return this.output('scatterAdd', src.dtype, rows * D, (out) => {
      // sort the ids (stable): equal ids become runs, kept in their original order
      const sorted = this.withFlat(ids, (flat) => this.sortRows(flat, false));
      // src as [N, D] rows with one row stride (a contiguous copy if its leading dims do not merge)
      const lead = collapse(src.shape.slice(0, -1), [src.strides.slice(0, -1)]);
      const temp = lead.shape.length > 1 ? this.copy(src, src.dtype) : null;
      const rowsView = temp ? { ...src, storage: temp, offset: 0, strides: contiguousStrides(src.shape) } : src;
      try {
        const rowStride = temp ? D : (lead.strides[0][0] ?? 0);
        const sb = this.bind(rowsView, 'scatterAdd');
        const params = [out.length, D, N, sb.offset, rowStride, rowsView.strides[rowsView.strides.length - 1]];
        const args = [this.whole(out, 'scatterAdd'), this.whole(sorted.values, 'scatterAdd'), this.whole(sorted.indices, 'scatterAdd'), sb.arg];
        this.rec.run('scatterAdd', scatterSumKernel(src.dtype), params, args, this.rec.groupsFor(Math.ceil(out.length / EW_WORKGROUP)));
      } finally {
        this.release(sorted.values);
        this.release(sorted.indices);
        if (temp) this.release(temp);
      }
    });
  }

  // ------------------------------------------------------------ fused row kernels

  softmax(x: View): Storage {
    return this.rowOp('softmax', x, [], []);
  }

  logSoftmax(x: View): Storage {
    return this.rowOp('logSoftmax', x, [], []);
  }

  layerNorm(x: View, weight: View, bias: View, eps: number): Storage {
    return this.with1d(weight, 'layerNorm', (w) =>
      this.with1d(bias, 'layerNorm', (b) => this.rowOp('layerNorm', x, [w.offset, w.stride, b.offset, b.stride, f32Bits(eps)], [w.arg, b.arg])),
    );
  }

  rmsNorm(x: View, weight: View, eps: number): Storage {
    return this.with1d(weight, 'rmsNorm', (w) => this.rowOp('rmsNorm', x, [w.offset, w.stride, f32Bits(eps)], [w.arg]));
  }

  crossEntropy(logits: View, targets: View, ignoreIndex: number): Storage {
    return this.with1d(targets, 'crossEntropy', (t) => this.rowOp('crossEntropy', logits, [t.offset, t.stride, i32Bits(ignoreIndex)], [t.arg]));
  }

  // ------------------------------------------------------------ sampling helpers

  sort(x: View, descending: boolean): { values: Storage; indices: Storage } {
    return this.sortRows(x, descending);
  }

  multinomial(probs: View, u: View): Storage {
    checkRowDtype('multinomial', probs.dtype);
    const rv = this.rowsOf(probs, 'multinomial');
    return this.output('multinomial', 'int32', rv.rows, (out) =>
      this.with1d(u, 'multinomial', (ub) => {
        const groups = this.rec.groupsFor(Math.ceil(rv.rows / EW_WORKGROUP));
        this.rec.run('multinomial', multinomialKernel(rv.rank), [...rv.params, ub.offset, ub.stride], [this.whole(out, 'multinomial'), rv.arg, ub.arg], groups);
      }),
    );
  }

  // ------------------------------------------------------------ helpers

  /** A fresh storage whose contents `fill` records (skipped when empty); released again if it throws. */
  private output(op: string, dtype: DType, length: number, fill: (out: GpuStorage) => void): GpuStorage {
    const out = this.rec.newStorage(dtype, length, false, op);
    try {
      if (length > 0) fill(out);
    } catch (e) {
      this.rec.release(out);
      throw e;
    }
    return out;
  }

  /**
   * A whole output storage as one binding. Where it fits, the binding covers
   * the whole pooled buffer (its bucket size), so the bind group is the same
   * whatever length the tensor in it has (recorder.ts caches bind groups).
   */
  private whole(s: GpuStorage, op: string): Arg {
    const size = Math.max(4, s.length * 4);
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (size > max) {
      throw new Error(`webgpu ${op}: an output of ${size} bytes exceeds this device's maxStorageBufferBindingSize (${max} bytes); split the op into smaller pieces`);
    }
    return { storage: s, offset: 0, size: s.buffer.size <= max ? s.buffer.size : size };
  }

  /** Binds the part of a view's buffer that the view touches: the whole buffer if it fits one binding, else an aligned window. */
  private bind(v: View, op: string): Bound {
    const s = this.rec.check(v.storage, op);
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (s.buffer.size <= max) return { arg: { storage: s, offset: 0, size: s.buffer.size }, offset: v.offset };
    const [lo, hi] = elementRange(v.shape, v.strides, v.offset);
    const align = this.device.limits.minStorageBufferOffsetAlignment;
    const start = Math.floor((lo * 4) / align) * align;
    const size = (hi + 1) * 4 - start;
    if (size > max) {
      throw new Error(`webgpu ${op}: a view of ${fmt(v.shape)} spans ${size} bytes, over this device's maxStorageBufferBindingSize (${max} bytes); split the op into smaller pieces`);
    }
    return { arg: { storage: s, offset: start, size }, offset: v.offset - start / 4 };
  }

  /** Runs fn on the view as a 1-d view of its elements (a contiguous copy when its layout cannot be one). */
  private withFlat<T>(v: View, fn: (flat: View) => T): T {
    const n = numel(v.shape);
    const c = collapse(v.shape, [v.strides]);
    if (c.shape.length <= 1) return fn({ ...v, shape: [n], strides: [c.strides[0][0] ?? 0] });
    const temp = this.copy(v, v.dtype);
    try {
      return fn({ storage: temp, shape: [n], strides: [1], offset: 0, dtype: v.dtype });
    } finally {
      this.release(temp);
    }
  }

  /** Runs fn with a view bound as one dim (the 1-d operands of fused kernels). */
  private with1d<T>(v: View, op: string, fn: (b: Bound1d) => T): T {
    return this.withFlat(v, (flat) => fn({ ...this.bind(flat, op), stride: flat.strides[0] }));
  }

  /** A view as rows of its last axis, with the row kernels' params: [rows, cols, colStride, R, outer shape, offset, outer strides]. */
  private rowsOf(x: View, op: string): { rows: number; cols: number; rank: number; params: number[]; arg: Arg } {
    const shape = x.shape.length ? x.shape : [1];
    const strides = x.shape.length ? x.strides : [1];
    const cols = shape[shape.length - 1];
    const rows = cols === 0 ? 0 : numel(shape) / cols;
    const outer = collapse(shape.slice(0, -1), [strides.slice(0, -1)]);
    const b = this.bind(x, op);
    const params = [rows, cols, strides[strides.length - 1], ...outer.shape, b.offset, ...outer.strides[0]];
    return { rows, cols, rank: outer.shape.length, params, arg: b.arg };
  }

  private rowOp(op: RowOp, x: View, extras: number[], extraArgs: Arg[]): Storage {
    checkRowDtype(op, x.dtype);
    const rv = this.rowsOf(x, op);
    return this.output(op, 'float32', op === 'crossEntropy' ? rv.rows : rv.rows * rv.cols, (out) => {
      const kernel = rowKernel(op, rv.rank, rowWorkgroup(rv.cols));
      this.rec.run(op, kernel, [...rv.params, ...extras], [this.whole(out, op), rv.arg, ...extraArgs], this.rec.groupsFor(rv.rows));
    });
  }

  private sortRows(x: View, descending: boolean): { values: GpuStorage; indices: GpuStorage } {
    const rv = this.rowsOf(x, 'sort');
    const n = rv.rows * rv.cols;
    const values = this.rec.newStorage(x.dtype, n, false, 'sort');
    try {
      const indices = this.output('sort', 'int32', n, (idx) => {
        const groups = this.rec.groupsFor(rv.rows * Math.ceil(rv.cols / SORT_TILE));
        this.rec.run('sort', sortKernel(x.dtype, rv.rank, descending), rv.params, [this.whole(values, 'sort'), this.whole(idx, 'sort'), rv.arg], groups);
      });
      return { values, indices };
    } catch (e) {
      this.rec.release(values);
      throw e;
    }
  }

  /** An elementwise op into a fresh contiguous output. */
  private mapOp(op: string, dtype: DType, shape: number[], ins: View[], kernel: (rank: number) => Kernel): GpuStorage {
    return this.output(op, dtype, numel(shape), (out) => this.map(op, { storage: out, shape, strides: contiguousStrides(shape), offset: 0, dtype }, ins, kernel));
  }

  /** out[view] = f(ins[views]) for same-shape strided views; `out` may itself be a strided destination. */
  private map(op: string, out: View, ins: View[], kernel: (rank: number) => Kernel): void {
    const n = numel(out.shape);
    if (n === 0) return;
    const views = [out, ...ins];
    const c = collapse(out.shape, views.map((v) => v.strides));
    const bound = views.map((v) => this.bind(v, op));
    const params = [n, ...c.shape, ...bound.flatMap((b, k) => [b.offset, ...c.strides[k]])];
    this.rec.run(op, kernel(c.shape.length), params, bound.map((b) => b.arg), this.rec.groupsFor(Math.ceil(n / EW_WORKGROUP)));
  }
}
