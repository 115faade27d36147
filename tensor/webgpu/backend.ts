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
// [0, V) gives NaN. float -> int32 casts wrap like a typed-array store.

import type {
  ActivationOp,
  AdamWHyper,
  AttentionOptions,
  Backend,
  BinaryOp,
  ReduceOp,
  Storage,
  UnaryOp,
  View,
} from '../backend.ts';
import { type DType, type TypedArray, dtypeOf, makeTypedArray, toTypedArray } from '../dtype.ts';
import { contiguousStrides, fmt, isContiguous, numel } from '../shape.ts';
import { type Kernel, MAX_GROUPS_PER_DIM } from './kernels/common.ts';
import {
  ATTENTION_CHUNK,
  ATTENTION_CHUNKS_AT,
  ATTENTION_MAX_HEAD_DIM,
  ATTENTION_ROWS,
  attentionCombineKernel,
  attentionDecodeKernel,
  attentionDkvKernel,
  attentionDqKernel,
  attentionKernel,
} from './kernels/attention.ts';
import {
  EW_WORKGROUP,
  activationBackwardKernel,
  adamwKernel,
  binaryKernel,
  copyKernel,
  fillKernel,
  ropeKernel,
  unaryKernel,
  whereKernel,
} from './kernels/elementwise.ts';
import { SORT_TILE, gatherKernel, scatterSumKernel, sortKernel } from './kernels/indexing.ts';
import { GEMV_OUTPUTS, TILES, type TileConfig, gemvKernel, matmulKernel } from './kernels/matmul.ts';
import { REDUCE_CHUNK, REDUCE_WORKGROUP, SHORT_AXIS, reduceKernel } from './kernels/reduce.ts';
import { type RowOp, checkRowDtype, rowKernel, rowWorkgroup } from './kernels/rows.ts';
import { crossEntropyBackwardKernel, normBackwardKernel } from './kernels/rows_backward.ts';
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

/** How a matmul runs: GEMV for one row (two variants), or tiles of one size with K split `splits` ways. */
export interface MatmulPlan {
  kind: 'tiled' | 'gemv.dot' | 'gemv.axpy';
  tile: keyof typeof TILES;
  splits: number;
}

/** One matmul's operands as the kernels see them. */
interface MatmulOperands {
  op: string;
  a: View;
  b: View;
  M: number;
  N: number;
  K: number;
  batchShape: number[];
  half: boolean;
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
  /** The zero mask of unmasked attention (attentionViews). */
  private noMask: GpuStorage | null = null;
  /** matmulF16's tiles keep their workgroup slabs in WGSL f16 (where the device has `shader-f16`; else float32). */
  shaderF16: boolean;

  constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterDescription,
    /** Dawn's instance (create()'s result): must stay referenced while the device is used, or Dawn crashes. */
    public gpu: GPU | null,
  ) {
    this.rec = new CommandRecorder(device);
    this.shaderF16 = adapter.features.includes('shader-f16');
  }

  // ------------------------------------------------------------ storage

  alloc(dtype: DType, length: number, zeroed = true): Storage {
    return this.rec.newStorage(dtype, length, zeroed, 'alloc');
  }

  write(dst: Storage, src: TypedArray): void {
    const s = this.rec.check(dst, 'write');
    if (src.length > s.length)
      throw new Error(`webgpu write: ${src.length} values do not fit a storage of ${s.length}`);
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

  readSync(): TypedArray {
    throw new Error('dataSync: a GPU cannot be read synchronously; use await tensor.data()');
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

  activationBackward(op: ActivationOp, x: View, g: View): Storage {
    if (x.dtype !== 'float32' || g.dtype !== 'float32') throw new Error(`webgpu ${op} backward: float32 only`);
    return this.mapOp(`${op} backward`, 'float32', x.shape, [x, g], (r) => activationBackwardKernel(op, r));
  }

  where(cond: View, a: View, b: View): Storage {
    return this.mapOp('where', a.dtype, a.shape, [cond, a, b], (r) => whereKernel(cond.dtype, a.dtype, r));
  }

  copy(x: View, dtype: DType): Storage {
    // a kernel even where a buffer copy would do: it stays in the compute pass (recorder.ts)
    return this.mapOp('copy', dtype, x.shape, [x], (r) => copyKernel(x.dtype, dtype, r));
  }

  /**
   * One dispatch over the first halves of the last axis (kernels/elementwise.ts
   * ropeKernel): each thread reads a pair and writes both its outputs.
   */
  rope(x: View, cos: View, sin: View, inverse: boolean): Storage {
    if (x.dtype !== 'float32') throw new Error(`rope: ${x.dtype} is not supported on webgpu, cast to float32 first`);
    const r = x.shape.length;
    const h = x.shape[r - 1] / 2;
    const firstHalf = (v: View): View => ({ ...v, shape: [...v.shape.slice(0, r - 1), h] });
    return this.output('rope', 'float32', numel(x.shape), (out) => {
      const o = { storage: out, shape: x.shape, strides: contiguousStrides(x.shape), offset: 0, dtype: x.dtype };
      const views = [o, x, cos, sin];
      const toSecondHalf = views.map((v) => h * v.strides[r - 1]);
      this.map('rope', firstHalf(o), views.slice(1).map(firstHalf), (rank) => ropeKernel(inverse, rank), toSecondHalf);
    });
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
      this.rec.run(
        'fill',
        fillKernel(dtype),
        [length, bits],
        [this.whole(out, 'fill')],
        this.rec.groupsFor(Math.ceil(length / EW_WORKGROUP)),
      );
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
    // a very long sum or max: a workgroup per chunk, then the chunks' partial results reduced (kernels/reduce.ts)
    const chunks = op !== 'argmax' && len > 2 * REDUCE_CHUNK ? Math.ceil(len / REDUCE_CHUNK) : 1;
    const partial = this.output(op, dtype, nOut * chunks, (out) => {
      const outer = collapse(outShape, [x.strides.filter((_, i) => i !== axis)]);
      const xb = this.bind(x, op);
      const long = len > SHORT_AXIS; // a workgroup per output (per chunk) instead of a thread
      const chunk = chunks > 1 ? REDUCE_CHUNK : len;
      const params = [nOut * chunks, len, x.strides[axis], chunk, ...outer.shape, xb.offset, ...outer.strides[0]];
      const groups = this.rec.groupsFor(long ? nOut * chunks : Math.ceil(nOut / REDUCE_WORKGROUP));
      this.rec.run(
        op,
        reduceKernel(op, x.dtype, outer.shape.length, long),
        params,
        [this.whole(out, op), xb.arg],
        groups,
      );
    });
    if (chunks === 1) return partial;
    try {
      const view = { storage: partial, shape: [nOut, chunks], strides: [chunks, 1], offset: 0, dtype };
      return this.reduce(op, view, 1);
    } finally {
      this.rec.release(partial);
    }
  }

  // ------------------------------------------------------------ matmul

  matmul(a: View, b: View, plan?: MatmulPlan): Storage {
    return this.matmulWith('matmul', a, b, false, plan);
  }

  /**
   * autocast('float16')'s matmul: a @ b with both operands rounded to float16
   * (to nearest even, as the kernels load them) and float32 products and sums;
   * the result is float32. With `shader-f16` the tiles hold the rounded values
   * as WGSL f16, else as float32 (kernels/matmul.ts): the same bits either way.
   */
  matmulF16(a: View, b: View, plan?: MatmulPlan): Storage {
    return this.matmulWith('matmulF16', a, b, true, plan);
  }

  /**
   * How a matmul of this shape runs: GEMV for one row; otherwise the tile
   * size that fits the output (big tiles only where there are enough of them
   * to keep a GPU busy), and split-K where a single product has few tiles and
   * a long K (weight gradients). Not tuned on a GPU yet: bench/gpu.ts prints
   * what each choice does.
   */
  planMatmul(M: number, N: number, K: number, batch: number, bKFast: boolean): MatmulPlan {
    if (M === 1) return { kind: bKFast ? 'gemv.dot' : 'gemv.axpy', tile: 'small', splits: 1 };
    const wide = this.device.limits.maxComputeInvocationsPerWorkgroup >= 256;
    const count = (t: TileConfig) => Math.ceil(M / t.BM) * Math.ceil(N / t.BN) * batch;
    const fits = (t: TileConfig) => M >= t.BM && N >= t.BN; // at most half of an edge tile is wasted
    const tile = !wide
      ? 'small'
      : fits(TILES.large) && count(TILES.large) >= 16
        ? 'large'
        : fits(TILES.medium)
          ? 'medium'
          : 'small';
    const tiles = count(TILES[tile]);
    const splits =
      batch === 1 && tiles < 64 && K >= 1024 ? Math.min(16, Math.ceil(64 / tiles), Math.floor(K / 256)) : 1;
    return { kind: 'tiled', tile, splits };
  }

  private matmulWith(op: string, a: View, b: View, half: boolean, forced?: MatmulPlan): Storage {
    if (a.dtype !== 'float32' || b.dtype !== 'float32') {
      throw new Error(
        `${op}: ${a.dtype === 'float32' ? b.dtype : a.dtype} is not supported on webgpu, cast to float32 first`,
      );
    }
    const r = a.shape.length;
    const [M, K, N] = [a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]];
    const batchShape = a.shape.slice(0, r - 2);
    const batch = numel(batchShape);
    if (K === 0) return this.rec.newStorage('float32', batch * M * N, true, op);
    if (batch * M * N === 0) return this.rec.newStorage('float32', 0, false, op);
    const bKFast = b.strides[r - 2] === 1 && b.strides[r - 1] !== 1;
    const plan = forced ?? this.planMatmul(M, N, K, batch, bKFast);
    const ops = { op, a, b, M, N, K, batchShape, half };
    if (plan.kind !== 'tiled')
      return this.output(op, 'float32', batch * M * N, (out) =>
        this.gemv(ops, plan.kind === 'gemv.dot' ? 'dot' : 'axpy', out),
      );
    const t = TILES[plan.tile];
    const Kc = Math.ceil(Math.ceil(K / plan.splits) / t.BK) * t.BK;
    const splits = Math.ceil(K / Kc);
    if (splits === 1) return this.output(op, 'float32', batch * M * N, (out) => this.tiled(ops, t, 1, K, out));
    // split-K: the partial products of each K chunk, then their sum in chunk order
    if (batch !== 1) throw new Error(`${op}: split-K needs a single product, not a batch of ${batch}`);
    const parts = this.output(op, 'float32', splits * M * N, (out) => this.tiled(ops, t, splits, Kc, out));
    try {
      return this.reduce(
        'sum',
        { storage: parts, shape: [splits, M * N], strides: [M * N, 1], offset: 0, dtype: 'float32' },
        0,
      );
    } finally {
      this.rec.release(parts);
    }
  }

  /** The params every matmul kernel reads (see kernels/matmul.ts), and the bound operands. */
  private matmulParams(m: MatmulOperands, splits: number, Kc: number) {
    const r = m.a.shape.length;
    const bs = collapse(m.batchShape, [m.a.strides.slice(0, r - 2), m.b.strides.slice(0, r - 2)]);
    const [ab, bb] = [this.bind(m.a, m.op), this.bind(m.b, m.op)];
    const [aRS, aCS, bRS, bCS] = [m.a.strides[r - 2], m.a.strides[r - 1], m.b.strides[r - 2], m.b.strides[r - 1]];
    const params = (z0: number) => [
      m.M,
      m.N,
      m.K,
      aRS,
      aCS,
      bRS,
      bCS,
      z0,
      splits,
      Kc,
      ...bs.shape,
      ab.offset,
      ...bs.strides[0],
      bb.offset,
      ...bs.strides[1],
    ];
    return { bs, ab, bb, strides: { aRS, aCS, bRS, bCS }, params };
  }

  private tiled(m: MatmulOperands, t: TileConfig, splits: number, Kc: number, out: GpuStorage): void {
    const { bs, ab, bb, strides, params } = this.matmulParams(m, splits, Kc);
    const { aRS, aCS, bRS, bCS } = strides;
    // an operand is read as vec4s along its contiguous dim when everything else is 4-aligned too
    const aligned = (offset: number, batchStrides: number[], other: number) =>
      offset % 4 === 0 && other % 4 === 0 && batchStrides.every((x) => x % 4 === 0);
    const aFast = aCS === 1 || (aRS !== 1 && aCS <= aRS) ? 'k' : 'm';
    const bFast = bCS === 1 || (bRS !== 1 && bCS <= bRS) ? 'n' : 'k';
    const aVec =
      aFast === 'k'
        ? aCS === 1 && m.K % 4 === 0 && aligned(ab.offset, bs.strides[0], m.M === 1 ? 0 : aRS)
        : aRS === 1 && m.M % 4 === 0 && aligned(ab.offset, bs.strides[0], aCS);
    const bVec =
      bFast === 'n'
        ? bCS === 1 && m.N % 4 === 0 && aligned(bb.offset, bs.strides[1], bRS)
        : bRS === 1 && m.K % 4 === 0 && aligned(bb.offset, bs.strides[1], m.N === 1 ? 0 : bCS);
    const precision = !m.half ? 'f32' : this.shaderF16 ? 'f16-slabs' : 'f16';
    const kernel = matmulKernel(bs.shape.length, t.name, aFast, aVec, bFast, bVec, m.N % 4 === 0, precision);
    const total = (m.batchShape.length ? numel(m.batchShape) : 1) * splits;
    for (let z0 = 0; z0 < total; z0 += MAX_GROUPS_PER_DIM) {
      const groups: [number, number, number] = [
        Math.ceil(m.N / t.BN),
        Math.ceil(m.M / t.BM),
        Math.min(MAX_GROUPS_PER_DIM, total - z0),
      ];
      this.rec.run(m.op, kernel, params(z0), [this.whole(out, m.op), ab.arg, bb.arg], groups);
    }
  }

  private gemv(m: MatmulOperands, variant: 'dot' | 'axpy', out: GpuStorage): void {
    const { bs, ab, bb, params } = this.matmulParams(m, 1, m.K);
    const kernel = gemvKernel(bs.shape.length, variant, m.half);
    const total = m.batchShape.length ? numel(m.batchShape) : 1;
    for (let z0 = 0; z0 < total; z0 += MAX_GROUPS_PER_DIM) {
      const groups: [number, number, number] = [
        Math.ceil(m.N / GEMV_OUTPUTS[variant]),
        1,
        Math.min(MAX_GROUPS_PER_DIM, total - z0),
      ];
      this.rec.run(m.op, kernel, params(z0), [this.whole(out, m.op), ab.arg, bb.arg], groups);
    }
  }

  // ------------------------------------------------------------ indexing

  gather(table: View, ids: View): Storage {
    const [V, D] = table.shape;
    return this.output('embedding', table.dtype, numel(ids.shape) * D, (out) =>
      this.with1d(ids, 'embedding', (id) => {
        const tb = this.bind(table, 'embedding');
        const params = [out.length, D, V, tb.offset, table.strides[0], table.strides[1], id.offset, id.stride];
        const groups = this.rec.groupsFor(Math.ceil(out.length / EW_WORKGROUP));
        this.rec.run(
          'embedding',
          gatherKernel(table.dtype),
          params,
          [this.whole(out, 'embedding'), tb.arg, id.arg],
          groups,
        );
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
        const args = [
          this.whole(out, 'scatterAdd'),
          this.whole(sorted.values, 'scatterAdd'),
          this.whole(sorted.indices, 'scatterAdd'),
          sb.arg,
        ];
        this.rec.run(
          'scatterAdd',
          scatterSumKernel(src.dtype),
          params,
          args,
          this.rec.groupsFor(Math.ceil(out.length / EW_WORKGROUP)),
        );
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
      this.with1d(bias, 'layerNorm', (b) =>
        this.rowOp('layerNorm', x, [w.offset, w.stride, b.offset, b.stride, f32Bits(eps)], [w.arg, b.arg]),
      ),
    );
  }

  rmsNorm(x: View, weight: View, eps: number): Storage {
    return this.with1d(weight, 'rmsNorm', (w) => this.rowOp('rmsNorm', x, [w.offset, w.stride, f32Bits(eps)], [w.arg]));
  }

  crossEntropy(logits: View, targets: View, ignoreIndex: number): Storage {
    return this.with1d(targets, 'crossEntropy', (t) =>
      this.rowOp('crossEntropy', logits, [t.offset, t.stride, i32Bits(ignoreIndex)], [t.arg]),
    );
  }

  // ------------------------------------------------------------ their backward passes

  layerNormBackward(x: View, weight: View, gradOut: View, eps: number) {
    const r = this.normBackward('layerNorm', x, weight, gradOut, eps);
    return { dx: r.dx, dweight: r.dweight, dbias: r.dbias! };
  }

  rmsNormBackward(x: View, weight: View, gradOut: View, eps: number): { dx: Storage; dweight: Storage } {
    return this.normBackward('rmsNorm', x, weight, gradOut, eps);
  }

  crossEntropyBackward(logits: View, targets: View, gradOut: View, ignoreIndex: number): Storage {
    const op = 'crossEntropy backward';
    checkRowDtype(op, logits.dtype);
    const rv = this.rowsOf(logits, op);
    return this.with1d(targets, op, (t) =>
      this.with1d(gradOut, op, (g) =>
        this.output(op, 'float32', rv.rows * rv.cols, (out) => {
          const params = [...rv.params, t.offset, t.stride, i32Bits(ignoreIndex), g.offset, g.stride];
          const kernel = crossEntropyBackwardKernel(rv.rank, rowWorkgroup(rv.cols));
          const args = [this.whole(out, op), rv.arg, t.arg, g.arg];
          this.rec.run(op, kernel, params, args, this.rec.groupsFor(rv.rows));
        }),
      ),
    );
  }

  /**
   * dx of a norm from one row kernel, which also writes gradOut * xhat (and
   * gradOut, for layerNorm) into a scratch buffer; dweight (and dbias) are its
   * column sums.
   */
  private normBackward(
    kind: 'layerNorm' | 'rmsNorm',
    x: View,
    weight: View,
    g: View,
    eps: number,
  ): { dx: Storage; dweight: Storage; dbias?: Storage } {
    const op = `${kind} backward`;
    checkRowDtype(op, x.dtype);
    const shape = x.shape.length ? x.shape : [1];
    const [xs, gs] = x.shape.length ? [x.strides, g.strides] : [[1], [1]];
    const cols = shape[shape.length - 1];
    const rows = cols === 0 ? 0 : numel(shape) / cols;
    const outer = collapse(shape.slice(0, -1), [xs.slice(0, -1), gs.slice(0, -1)]);
    const [xb, gb] = [this.bind(x, op), this.bind(g, op)];
    const parts = kind === 'layerNorm' ? 2 : 1;
    const scratch = this.rec.newStorage('float32', parts * rows * cols, false, op);
    const made: Storage[] = [];
    try {
      const dx = this.with1d(weight, op, (w) =>
        this.output(op, 'float32', rows * cols, (out) => {
          const xView = [xb.offset, ...outer.strides[0]];
          const gView = [gs[gs.length - 1], gb.offset, ...outer.strides[1]];
          const params = [rows, cols, xs[xs.length - 1], ...outer.shape, ...xView, ...gView];
          params.push(w.offset, w.stride, f32Bits(eps));
          const kernel = normBackwardKernel(kind, outer.shape.length, rowWorkgroup(cols));
          const args = [this.whole(out, op), this.whole(scratch, op), xb.arg, gb.arg, w.arg];
          this.rec.run(op, kernel, params, args, this.rec.groupsFor(rows));
        }),
      );
      made.push(dx);
      const columnSum = (part: number) => {
        const v = { storage: scratch, shape: [rows, cols], strides: [cols, 1], offset: part * rows * cols };
        const sum = this.reduce('sum', { ...v, dtype: 'float32' }, 0);
        made.push(sum);
        return sum;
      };
      const dweight = columnSum(0);
      return { dx, dweight, dbias: parts === 2 ? columnSum(1) : undefined };
    } catch (e) {
      for (const m of made) this.release(m);
      throw e;
    } finally {
      this.rec.release(scratch);
    }
  }

  // ------------------------------------------------------------ sampling helpers

  sort(x: View, descending: boolean): { values: Storage; indices: Storage } {
    return this.sortRows(x, descending);
  }

  // ------------------------------------------------------------ attention

  attention(q: View, k: View, v: View, opts: AttentionOptions): { out: Storage; lse: Storage } {
    const [B, H, T, D] = q.shape;
    const [Hkv, Tk] = [k.shape[1], k.shape[2]];
    checkHeadDim(D);
    const op = 'attention';
    const views = this.attentionViews(op, [q, k, v, opts.mask]);
    const lse = this.rec.newStorage('float32', B * H * T, false, op);
    try {
      const out = this.output(op, 'float32', B * H * T * D, (o) => {
        if (T > 1) {
          // a workgroup per 64 query rows of one key/value head
          const groups = this.rec.groupsFor(B * Hkv * Math.ceil(((H / Hkv) * T) / ATTENTION_ROWS));
          const params = [...attentionParams(q, k, opts), ...views.params];
          const args = [this.whole(o, op), this.whole(lse, op), ...views.args];
          this.rec.run(op, attentionKernel(D), params, args, groups);
          return;
        }
        // one query per row (decoding): the keys split into chunks, then the chunks combined
        const chunks = Math.ceil(Tk / ATTENTION_CHUNK);
        const params = [...attentionParams(q, k, opts), ...views.params];
        while (params.length < ATTENTION_CHUNKS_AT) params.push(0);
        params.push(chunks);
        const part = this.rec.newStorage('float32', B * H * chunks * (D + 2), false, op);
        try {
          const decode = attentionDecodeKernel(D);
          this.rec.run(op, decode, params, [this.whole(part, op), ...views.args], this.rec.groupsFor(B * H * chunks));
          const args = [this.whole(o, op), this.whole(lse, op), this.whole(part, op)];
          this.rec.run(op, attentionCombineKernel(D), params, args, this.rec.groupsFor(B * H));
        } finally {
          this.rec.release(part);
        }
      });
      return { out, lse };
    } catch (e) {
      this.rec.release(lse);
      throw e;
    }
  }

  attentionBackward(
    q: View,
    k: View,
    v: View,
    out: View,
    gradOut: View,
    lse: View,
    opts: AttentionOptions,
  ): { dq: Storage; dk: Storage; dv: Storage } {
    const [B, H, T, D] = q.shape;
    const [Hkv, Tk] = [k.shape[1], k.shape[2]];
    checkHeadDim(D);
    const op = 'attention backward';
    const views = this.attentionViews(op, [q, k, v, opts.mask, out, gradOut]);
    const params = [...attentionParams(q, k, opts), ...views.params];
    const [qkv, outArgs] = [views.args.slice(0, 4), views.args.slice(4)];
    const lseArg = this.whole(this.rec.check(lse.storage, op), op);
    const delta = this.rec.newStorage('float32', B * H * T, false, op);
    const dk = this.rec.newStorage('float32', B * Hkv * Tk * D, false, op);
    const dv = this.rec.newStorage('float32', B * Hkv * Tk * D, false, op);
    try {
      // dq and delta per 64 query rows of one key/value head, then dk and dv per 64 keys (delta read)
      const dq = this.output(op, 'float32', B * H * T * D, (dqs) => {
        const args = [this.whole(dqs, op), this.whole(delta, op), lseArg, ...outArgs, ...qkv];
        const groups = this.rec.groupsFor(B * Hkv * Math.ceil(((H / Hkv) * T) / ATTENTION_ROWS));
        this.rec.run(op, attentionDqKernel(D), params, args, groups);
      });
      const args = [this.whole(dk, op), this.whole(dv, op), lseArg, this.whole(delta, op), outArgs[1], ...qkv];
      const groups = this.rec.groupsFor(B * Hkv * Math.ceil(Tk / ATTENTION_ROWS));
      this.rec.run(op, attentionDkvKernel(D), params, args, groups);
      return { dq, dk, dv };
    } catch (e) {
      this.rec.release(dk);
      this.rec.release(dv);
      throw e;
    } finally {
      this.rec.release(delta);
    }
  }

  /**
   * The attention operands bound, with their offsets and strides as params. A
   * missing mask reads a zero scalar with zero strides (kept for the device's
   * lifetime), so one kernel serves masked and unmasked attention.
   */
  private attentionViews(op: string, views: (View | null)[]): { params: number[]; args: Arg[] } {
    const params: number[] = [];
    const args: Arg[] = [];
    for (const v of views) {
      const view = v ?? this.zeroMask();
      const b = this.bind(view, op);
      params.push(b.offset, ...view.strides);
      args.push(b.arg);
    }
    return { params, args };
  }

  private zeroMask(): View {
    this.noMask ??= this.rec.newStorage('float32', 1, true, 'attention');
    return { storage: this.noMask, shape: [1, 1, 1, 1], strides: [0, 0, 0, 0], offset: 0, dtype: 'float32' };
  }

  // ------------------------------------------------------------ optimizer

  adamw(p: View, g: View, m: View, v: View, h: AdamWHyper, onlyIf: View | null): void {
    for (const x of [p, g, m, v]) {
      if (!isContiguous(x.shape, x.strides))
        throw new Error('webgpu adamw: the parameter, its gradient and its moments must be contiguous');
    }
    const n = numel(p.shape);
    if (n === 0) return;
    const [pb, gb, mb, vb] = [p, g, m, v].map((x) => this.bind(x, 'adamw'));
    const flag = onlyIf ? this.bind(onlyIf, 'adamw') : null;
    const consts = [
      1 - h.lr * h.weightDecay,
      1 - h.beta1,
      h.beta2,
      1 - h.beta2,
      Math.sqrt(1 - h.beta2 ** h.step),
      h.lr / (1 - h.beta1 ** h.step),
      h.eps,
    ];
    const params = [
      n,
      pb.offset,
      gb.offset,
      mb.offset,
      vb.offset,
      ...consts.map(f32Bits),
      ...(flag ? [flag.offset] : []),
    ];
    this.rec.run(
      'adamw',
      adamwKernel(flag !== null),
      params,
      [pb.arg, gb.arg, mb.arg, vb.arg, ...(flag ? [flag.arg] : [])],
      this.rec.groupsFor(Math.ceil(n / EW_WORKGROUP)),
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
      throw new Error(
        `webgpu ${op}: an output of ${size} bytes exceeds this device's maxStorageBufferBindingSize (${max} bytes); ` +
          'split the op into smaller pieces',
      );
    }
    return { storage: s, offset: 0, size: s.buffer.size <= max ? s.buffer.size : size };
  }

  /**
   * Binds the part of a view's buffer that the view touches: the whole buffer if it fits one binding,
   * else a window.
   */
  private bind(v: View, op: string): Bound {
    const s = this.rec.check(v.storage, op);
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (s.buffer.size <= max) return { arg: { storage: s, offset: 0, size: s.buffer.size }, offset: v.offset };
    const [lo, hi] = elementRange(v.shape, v.strides, v.offset);
    const align = this.device.limits.minStorageBufferOffsetAlignment;
    const start = Math.floor((lo * 4) / align) * align;
    const size = (hi + 1) * 4 - start;
    if (size > max) {
      throw new Error(
        `webgpu ${op}: a view of ${fmt(v.shape)} spans ${size} bytes, over this device's maxStorageBufferBindingSize ` +
          `(${max} bytes); split the op into smaller pieces`,
      );
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

  /**
   * A view as rows of its last axis, with the row kernels' params:
   * [rows, cols, colStride, R, shape, offset, strides].
   */
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
      this.rec.run(
        op,
        kernel,
        [...rv.params, ...extras],
        [this.whole(out, op), rv.arg, ...extraArgs],
        this.rec.groupsFor(rv.rows),
      );
    });
  }

  private sortRows(x: View, descending: boolean): { values: GpuStorage; indices: GpuStorage } {
    const rv = this.rowsOf(x, 'sort');
    const n = rv.rows * rv.cols;
    const values = this.rec.newStorage(x.dtype, n, false, 'sort');
    try {
      const indices = this.output('sort', 'int32', n, (idx) => {
        const groups = this.rec.groupsFor(rv.rows * Math.ceil(rv.cols / SORT_TILE));
        this.rec.run(
          'sort',
          sortKernel(x.dtype, rv.rank, descending),
          rv.params,
          [this.whole(values, 'sort'), this.whole(idx, 'sort'), rv.arg],
          groups,
        );
      });
      return { values, indices };
    } catch (e) {
      this.rec.release(values);
      throw e;
    }
  }

  /** An elementwise op into a fresh contiguous output. */
  private mapOp(op: string, dtype: DType, shape: number[], ins: View[], kernel: (rank: number) => Kernel): GpuStorage {
    return this.output(op, dtype, numel(shape), (out) =>
      this.map(op, { storage: out, shape, strides: contiguousStrides(shape), offset: 0, dtype }, ins, kernel),
    );
  }

  /**
   * out[view] = f(ins[views]) for same-shape strided views; `out` may itself be
   * a strided destination. `extra` params follow the views' (ropeKernel's).
   */
  private map(op: string, out: View, ins: View[], kernel: (rank: number) => Kernel, extra: number[] = []): void {
    const n = numel(out.shape);
    if (n === 0) return;
    const views = [out, ...ins];
    const c = collapse(
      out.shape,
      views.map((v) => v.strides),
    );
    const bound = views.map((v) => this.bind(v, op));
    const params = [n, ...c.shape, ...bound.flatMap((b, k) => [b.offset, ...c.strides[k]]), ...extra];
    this.rec.run(
      op,
      kernel(c.shape.length),
      params,
      bound.map((b) => b.arg),
      this.rec.groupsFor(Math.ceil(n / EW_WORKGROUP)),
    );
  }
}

/** The scalar params of the attention kernels: sizes, scale, causal flag, dropout. */
function attentionParams(q: View, k: View, opts: AttentionOptions): number[] {
  const [B, H, T] = q.shape;
  const d = opts.dropout;
  const threshold = d ? Math.floor(d.p * 2 ** 32) : 0;
  const dropScale = d ? 1 / (1 - d.p) : 1;
  const dropout = [threshold, d ? d.seed : 0, f32Bits(dropScale), d ? 1 : 0];
  return [B, H, k.shape[1], T, k.shape[2], f32Bits(opts.scale), opts.causal ? 1 : 0, ...dropout];
}

function checkHeadDim(D: number): void {
  if (D > ATTENTION_MAX_HEAD_DIM)
    throw new Error(`webgpu attention: head dim ${D} is over the supported ${ATTENTION_MAX_HEAD_DIM}`);
}
