// The contract between tensors and the hardware. A backend owns storage and a
// small set of kernels; it knows nothing of autograd. Every kernel takes
// strided views (shape + strides + offset into a storage), so transposes,
// broadcasts and slices reach the kernels without copies, and returns fresh
// storage holding a contiguous (row-major) result.
//
// Kernels are synchronous: a GPU backend records the work and returns at once,
// the data may still be pending. Only `read` is async, because getting bytes
// back from a GPU is.

import type { DType, TypedArray } from './dtype.ts';

/** Where a tensor lives. */
export type DeviceName = 'cpu' | 'webgpu';

/** A backend's handle to a buffer. Opaque outside the backend; refcounted. */
export interface Storage {
  readonly dtype: DType;
  /** Number of elements the buffer holds. */
  readonly length: number;
}

/** One strided view of a storage: what every kernel reads. */
export interface View {
  storage: Storage;
  shape: number[];
  strides: number[];
  offset: number;
  dtype: DType;
}

export type UnaryOp =
  | 'neg' | 'abs' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'sin' | 'cos' | 'tanh'
  | 'sigmoid' | 'relu' | 'silu' | 'gelu';
export type BinaryOp =
  | 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'maximum' | 'minimum'
  | 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge';
export type ReduceOp = 'sum' | 'max' | 'argmax';

/** Every kernel a backend must provide. Both backends implement all of it. */
export interface Backend {
  readonly name: DeviceName;

  // --- storage ---
  /** New storage of `length` elements, zero-filled, refcount 1. */
  alloc(dtype: DType, length: number): Storage;
  /** Copies host data into a storage (whole buffer). */
  write(dst: Storage, src: TypedArray): void;
  /** Contiguous copy of a view's elements, back on the host. */
  read(x: View): Promise<TypedArray>;
  retain(s: Storage): void;
  /** Drops one reference; at zero the buffer is freed or pooled. */
  release(s: Storage): void;
  /** Bytes held by live (not released) buffers. */
  liveBytes(): number;
  /** Submits pending device work (a no-op on the CPU). */
  flush(): void;

  // --- elementwise (inputs already broadcast to the output shape by strides) ---
  unary(op: UnaryOp, x: View): Storage;
  /** Comparisons give 1/0 in the inputs' dtype. */
  binary(op: BinaryOp, a: View, b: View): Storage;
  /** cond != 0 ? a : b. */
  where(cond: View, a: View, b: View): Storage;
  /** Materialises a view as a contiguous buffer, converting to `dtype`. */
  copy(x: View, dtype: DType): Storage;
  /** Writes `src` (same shape as dst) into the view `dst` of an existing storage. */
  copyInto(dst: View, src: View): void;
  /** A storage of `length` elements all equal to `value`. */
  fill(dtype: DType, length: number, value: number): Storage;

  // --- reductions over one axis (the axis is removed from the output) ---
  reduce(op: ReduceOp, x: View, axis: number): Storage;

  // --- linear algebra: a [..., M, K] @ b [..., K, N], batch dims already equal ---
  matmul(a: View, b: View): Storage;

  // --- indexing ---
  /** Rows of a [V, D] table picked by int32 ids: [...ids, D]. */
  gather(table: View, ids: View): Storage;
  /** The adjoint of gather: a [rows, D] buffer with src rows summed in at ids. */
  scatterAdd(ids: View, src: View, rows: number): Storage;

  // --- fused row kernels over the last axis (numerically stable) ---
  softmax(x: View): Storage;
  logSoftmax(x: View): Storage;
  /** (x - mean) / sqrt(var + eps) * weight + bias, over the last axis. */
  layerNorm(x: View, weight: View, bias: View, eps: number): Storage;
  /** x / sqrt(mean(x^2) + eps) * weight, over the last axis. */
  rmsNorm(x: View, weight: View, eps: number): Storage;
  /** Per-row -log softmax(logits)[target]; 0 where target == ignoreIndex. */
  crossEntropy(logits: View, targets: View, ignoreIndex: number): Storage;

  // --- sampling helpers ---
  /** Sorts each row of the last axis: values and int32 indices (stable). */
  sort(x: View, descending: boolean): { values: Storage; indices: Storage };
  /**
   * For each row of non-negative weights, the first index whose running sum
   * exceeds u * total (u in [0,1) given per row): one multinomial draw.
   */
  multinomial(probs: View, u: View): Storage;
}
