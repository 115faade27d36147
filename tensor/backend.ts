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
  'neg' | 'abs' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'sin' | 'cos' | 'tanh' | 'sigmoid' | 'relu' | 'silu' | 'gelu';
export type BinaryOp =
  'add' | 'sub' | 'mul' | 'div' | 'pow' | 'maximum' | 'minimum' | 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge';
export type ReduceOp = 'sum' | 'max' | 'argmax';
/** The activations whose backward pass is one kernel (their derivative written out would be many ops). */
export type ActivationOp = 'silu' | 'gelu';

/** Every kernel a backend must provide. Both backends implement all of it. */
export interface Backend {
  readonly name: DeviceName;

  // --- storage ---
  /**
   * New storage of `length` elements, refcount 1, zero-filled; with `zeroed`
   * false its contents are undefined (for an output every element of which is
   * about to be written: cat's).
   */
  alloc(dtype: DType, length: number, zeroed?: boolean): Storage;
  /** Copies host data into a storage (whole buffer). */
  write(dst: Storage, src: TypedArray): void;
  /** Contiguous copy of a view's elements, back on the host. */
  read(x: View): Promise<TypedArray>;
  /** The same, synchronously: the CPU backend only (a GPU cannot block; it throws, pointing to read). */
  readSync(x: View): TypedArray;
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
  /** g * op'(x), the backward pass of an activation in one kernel (x and g of one shape). */
  activationBackward(op: ActivationOp, x: View, g: View): Storage;
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
  /** The same with both float32 operands rounded to float16 (nearest even), accumulated in float32: autocast's. */
  matmulF16(a: View, b: View): Storage;

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

  // --- the backward passes of the fused row kernels (gradOut has x's shape; weight grads are summed over rows) ---
  /** layerNorm's dx (contiguous, x's shape), dweight and dbias (the last dim's length). */
  layerNormBackward(
    x: View,
    weight: View,
    gradOut: View,
    eps: number,
  ): { dx: Storage; dweight: Storage; dbias: Storage };
  /** rmsNorm's dx (contiguous, x's shape) and dweight. */
  rmsNormBackward(x: View, weight: View, gradOut: View, eps: number): { dx: Storage; dweight: Storage };
  /** d loss / d logits [N, V] for gradOut [N]: (softmax(logits) - onehot(target)) * gradOut; 0 at ignored rows. */
  crossEntropyBackward(logits: View, targets: View, gradOut: View, ignoreIndex: number): Storage;

  // --- rotary position embedding ---
  /**
   * RoPE over the last axis (even, 2h long), cos and sin already broadcast to
   * x's shape: x * cos + rotate_half(x) * sin, where rotate_half([x1, x2]) =
   * [-x2, x1], each product rounded before the sum (PyTorch's order). With
   * `inverse`, its backward pass (the rotation transposed) for x = gradOut:
   * [x1 c1 + x2 s2, x2 c2 - x1 s1]. Contiguous output.
   */
  rope(x: View, cos: View, sin: View, inverse: boolean): Storage;

  // --- attention ---
  /**
   * Fused scaled-dot-product attention, softmax(q k^T * scale + mask) v, without
   * a (T, Tk) tensor: each query row's scores live only inside the kernel.
   * q (B, H, T, D); k and v (B, Hkv, Tk, D) with H a multiple of Hkv: query head
   * h reads key/value head floor(h / (H / Hkv)) (grouped-query attention).
   * Returns the output written in (B, T, H, D) memory order (merging the heads
   * afterwards is then a free reshape) and the log-sum-exp of each score row
   * (B, H, T), which the backward pass uses to recompute the probabilities.
   */
  attention(q: View, k: View, v: View, opts: AttentionOptions): { out: Storage; lse: Storage };
  /**
   * The gradients of attention() given dLoss/dout (gradOut and out as (B, H, T, D)
   * views): dq in (B, T, H, D) memory order, dk and dv in (B, Tk, Hkv, D) order
   * (the layouts of the projections they flow back into). The mask gets none.
   */
  attentionBackward(
    q: View,
    k: View,
    v: View,
    out: View,
    gradOut: View,
    lse: View,
    opts: AttentionOptions,
  ): { dq: Storage; dk: Storage; dv: Storage };

  // --- optimizer ---
  /**
   * One AdamW update in place (torch.optim.AdamW's arithmetic, in its order):
   * the parameter p and its moments m and v (contiguous, same size) are
   * overwritten from the gradient g. With `onlyIf` (one element), only if it
   * is nonzero: a step can be skipped by a value still on the device.
   */
  adamw(p: View, g: View, m: View, v: View, h: AdamWHyper, onlyIf: View | null): void;

  // --- sampling helpers ---
  /** Sorts each row of the last axis: values and int32 indices (stable). */
  sort(x: View, descending: boolean): { values: Storage; indices: Storage };
}

/** What attention() needs besides q, k and v. */
export interface AttentionOptions {
  /** Multiplies q . k (1 / sqrt(head_dim) as a rule). */
  scale: number;
  /**
   * Query t of T is at position Tk - T + t and sees the keys up to it (decoder
   * self-attention; with a KV cache the queries are the last T positions).
   */
  causal: boolean;
  /** Added to the scores, broadcast to (B, H, T, Tk) by its strides (e.g. a large negative value at padded keys). */
  mask: View | null;
  /** Attention dropout, or null. */
  dropout: AttentionDropout | null;
}

/**
 * Dropout of the attention probabilities, reproducible on every backend: the
 * score with flat index n = ((b * H + h) * T + t) * Tk + j is kept when
 * hash32((n * 0x9e3779b9 + seed) mod 2^32) >= threshold, with
 * threshold = floor(p * 2^32) and hash32 = lowbias32 (x ^= x >> 16;
 * x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16, mod 2^32);
 * kept probabilities are scaled by 1 / (1 - p). The backward pass recomputes
 * the same mask from the same seed.
 */
export interface AttentionDropout {
  p: number;
  seed: number;
}

/** The hyperparameters of one AdamW step (step counts from 1). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}
