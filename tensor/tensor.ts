// The Tensor: a strided view of a backend storage, plus what autograd needs
// (requiresGrad, grad, and the GradCtx of the op that produced it). Views
// (reshape, permute, slice, expand) share storage, so they cost no copy. The
// methods here are thin: the math and the gradients live in ops.ts and
// composite.ts.

import { backward as runBackward, type GradCtx } from './autograd.ts';
import type { Backend, DeviceName, Storage, UnaryOp, View } from './backend.ts';
import * as C from './composite.ts';
import { getBackend } from './device.ts';
import { type DType, type TypedArray, dtypeOf, isFloat, toTypedArray } from './dtype.ts';
import * as O from './ops.ts';
import type { Generator } from './random.ts';
import { track, untrack } from './scope.ts';
import { contiguousStrides, fmt, normalizeDim, numel } from './shape.ts';

/** Nested arrays of numbers, as toArray() returns them. */
export type NestedArray = number | NestedArray[];

let nextId = 0;

/** An n-dimensional array on a device, with reverse-mode autograd. */
export class Tensor {
  readonly id = nextId++;
  /** True when gradients flow to (or through) this tensor. */
  requiresGrad = false;
  /** dLoss/dThis after backward(), for leaves that require grad. */
  grad: Tensor | null = null;
  /**
   * Where backward() writes this leaf's gradient, in place: a view into an
   * optimizer's bucket (nn/optim.ts), which `grad` then is. null: a fresh tensor.
   */
  gradBuffer: Tensor | null = null;
  /** How this tensor was computed, while the graph is alive. */
  ctx: GradCtx | null = null;
  /** Kept tensors survive the tidy() scope they were made in. */
  kept = false;
  disposed = false;

  constructor(
    readonly backend: Backend,
    public storage: Storage,
    readonly shape: number[],
    readonly dtype: DType,
    // strides and offset change only in assign(), when an optimizer swaps storage
    public strides: number[] = contiguousStrides(shape),
    public offset = 0,
  ) {
    track(this);
  }

  /** 'cpu' or 'webgpu'. */
  get device(): DeviceName {
    return this.backend.name;
  }
  /** Number of dims. */
  get ndim(): number {
    return this.shape.length;
  }
  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }
  /** The strided view that kernels read. */
  view(): View;
  /** A new tensor object over the same storage with another shape (PyTorch's view). */
  view(shape: number[]): Tensor;
  view(shape?: number[]): View | Tensor {
    if (shape) return O.reshape(this, shape);
    return { storage: this.storage, shape: this.shape, strides: this.strides, offset: this.offset, dtype: this.dtype };
  }

  /** Throws a clear error if the tensor was disposed. */
  assertAlive(op: string): void {
    if (this.disposed) throw new Error(`${op}: tensor ${fmt(this.shape)} was used after dispose()`);
  }

  toString(): string {
    return `Tensor(${fmt(this.shape)}, ${this.dtype}, ${this.device}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  // ------------------------------------------------------------ reading values
  // These are the host-device sync points: on a GPU they wait for all queued work.

  /** The elements, row-major, in a fresh typed array. */
  async data(): Promise<TypedArray> {
    this.assertAlive('data');
    return this.backend.read(this.view());
  }
  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item: the tensor has ${this.size} elements, expected 1`);
    return (await this.data())[0];
  }
  /** The elements as nested arrays. */
  async toArray(): Promise<NestedArray> {
    return nest(await this.data(), this.shape);
  }
  /** Synchronous read, CPU tensors only (a GPU backend throws, pointing to data()). */
  dataSync(): TypedArray {
    this.assertAlive('dataSync');
    return this.backend.readSync(this.view());
  }
  /** Moves (copies) the tensor to another device. */
  async to(device: DeviceName): Promise<Tensor> {
    if (device === this.device) return this;
    const target = getBackend(device);
    const out = new Tensor(target, target.alloc(this.dtype, this.size), [...this.shape], this.dtype);
    target.write(out.storage, await this.data());
    out.requiresGrad = this.requiresGrad;
    return out;
  }

  // ------------------------------------------------------------ lifetime

  /** Frees the storage now (it is shared by views: freed when the last one goes). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.ctx = null;
    this.backend.release(this.storage);
    untrack();
  }
  /** Protects this tensor from the enclosing tidy() (parameters, optimizer state). */
  keep(): this {
    this.kept = true;
    return this;
  }
  /**
   * Replaces this tensor's contents with `value`'s (same shape). Optimizers
   * update parameters this way, so modules keep pointing at the same object.
   */
  assign(value: Tensor): this {
    if (fmt(value.shape) !== fmt(this.shape) || value.dtype !== this.dtype) {
      throw new Error(`assign: cannot assign ${fmt(value.shape)} ${value.dtype} to ${fmt(this.shape)} ${this.dtype}`);
    }
    const src = value.contiguous();
    this.backend.retain(src.storage);
    this.backend.release(this.storage);
    this.storage = src.storage;
    this.offset = src.offset;
    this.strides = contiguousStrides(this.shape);
    return this;
  }

  /** Overwrites the contents with host values (same element count, converted to this dtype). */
  setData(values: TypedArray): this {
    if (values.length !== this.size)
      throw new Error(`setData: ${values.length} values for a tensor of ${this.size} elements`);
    const fresh = this.backend.alloc(this.dtype, this.size);
    this.backend.write(fresh, dtypeOf(values) === this.dtype ? values : toTypedArray(this.dtype, values));
    this.backend.release(this.storage);
    this.storage = fresh;
    this.offset = 0;
    this.strides = contiguousStrides(this.shape);
    return this;
  }

  // ------------------------------------------------------------ autograd

  /** Backpropagates from this tensor (a scalar, unless a gradient is given). */
  backward(gradient?: Tensor): void {
    if (!gradient && this.size !== 1)
      throw new Error(
        `backward: the output has shape ${fmt(this.shape)}; pass a gradient or reduce it to a scalar first`,
      );
    const ones = () => new Tensor(this.backend, this.backend.fill(this.dtype, this.size, 1), this.shape, this.dtype);
    runBackward(this, gradient ?? ones());
  }
  /** Marks a leaf as trainable (or not). */
  setRequiresGrad(flag = true): this {
    if (flag && !isFloat(this.dtype))
      throw new Error(`requiresGrad: only float tensors can require grad, got ${this.dtype}`);
    this.requiresGrad = flag;
    return this;
  }
  /** The same values, cut from the graph. */
  detach(): Tensor {
    this.backend.retain(this.storage);
    return new Tensor(this.backend, this.storage, this.shape, this.dtype, this.strides, this.offset);
  }

  // ------------------------------------------------------------ elementwise
  add(o: O.TensorLike): Tensor {
    return O.binary('add', this, o);
  }
  sub(o: O.TensorLike): Tensor {
    return O.binary('sub', this, o);
  }
  mul(o: O.TensorLike): Tensor {
    return O.binary('mul', this, o);
  }
  div(o: O.TensorLike): Tensor {
    return O.binary('div', this, o);
  }
  pow(o: O.TensorLike): Tensor {
    return O.binary('pow', this, o);
  }
  maximum(o: O.TensorLike): Tensor {
    return O.binary('maximum', this, o);
  }
  minimum(o: O.TensorLike): Tensor {
    return O.binary('minimum', this, o);
  }
  eq(o: O.TensorLike): Tensor {
    return O.binary('eq', this, o);
  }
  ne(o: O.TensorLike): Tensor {
    return O.binary('ne', this, o);
  }
  lt(o: O.TensorLike): Tensor {
    return O.binary('lt', this, o);
  }
  le(o: O.TensorLike): Tensor {
    return O.binary('le', this, o);
  }
  gt(o: O.TensorLike): Tensor {
    return O.binary('gt', this, o);
  }
  ge(o: O.TensorLike): Tensor {
    return O.binary('ge', this, o);
  }
  /** 1 where the element is finite, 0 at +-Inf and NaN (torch.isfinite; as a float, like the comparisons). */
  isfinite(): Tensor {
    return this.abs().lt(Infinity); // NaN compares false with everything
  }
  neg(): Tensor {
    return this.unary('neg');
  }
  abs(): Tensor {
    return this.unary('abs');
  }
  exp(): Tensor {
    return this.unary('exp');
  }
  log(): Tensor {
    return this.unary('log');
  }
  sqrt(): Tensor {
    return this.unary('sqrt');
  }
  rsqrt(): Tensor {
    return this.unary('rsqrt');
  }
  sin(): Tensor {
    return this.unary('sin');
  }
  cos(): Tensor {
    return this.unary('cos');
  }
  tanh(): Tensor {
    return this.unary('tanh');
  }
  sigmoid(): Tensor {
    return this.unary('sigmoid');
  }
  relu(): Tensor {
    return this.unary('relu');
  }
  silu(): Tensor {
    return this.unary('silu');
  }
  /** GELU, tanh approximation (SigLIP's gelu_pytorch_tanh). */
  gelu(): Tensor {
    return this.unary('gelu');
  }
  square(): Tensor {
    return this.mul(this);
  }
  reciprocal(): Tensor {
    return O.binary('div', 1, this);
  }
  private unary(op: UnaryOp): Tensor {
    return O.unary(op, this);
  }
  /** mask ? value : this (mask broadcasts). */
  maskedFill(mask: Tensor, value: number): Tensor {
    return O.where(mask, value, this);
  }
  cast(dtype: DType): Tensor {
    return dtype === this.dtype ? this : O.cast(this, dtype);
  }
  float(): Tensor {
    return this.cast('float32');
  }
  int(): Tensor {
    return this.cast('int32');
  }

  // ------------------------------------------------------------ reductions
  sum(dims?: number | number[], keepdim = false): Tensor {
    return O.sum(this, dims, keepdim);
  }
  mean(dims?: number | number[], keepdim = false): Tensor {
    return C.mean(this, dims, keepdim);
  }
  /** Max over a dim (over everything when dim is omitted). */
  max(dim?: number, keepdim = false): Tensor {
    return dim === undefined ? O.max(this.reshape([-1]), 0) : O.max(this, dim, keepdim);
  }
  argmax(dim?: number, keepdim = false): Tensor {
    return dim === undefined ? O.argmax(this.reshape([-1]), 0) : O.argmax(this, dim, keepdim);
  }
  softmax(dim = -1): Tensor {
    return C.softmax(this, dim);
  }
  logSoftmax(dim = -1): Tensor {
    return C.logSoftmax(this, dim);
  }

  // ------------------------------------------------------------ linear algebra
  matmul(o: Tensor): Tensor {
    return O.matmul(this, o);
  }

  // ------------------------------------------------------------ shape (views, no copy)
  reshape(shape: number[]): Tensor {
    return O.reshape(this, shape);
  }
  flatten(startDim = 0, endDim = -1): Tensor {
    const s = normalizeDim(startDim, Math.max(this.ndim, 1), 'flatten');
    const e = normalizeDim(endDim, Math.max(this.ndim, 1), 'flatten');
    return this.reshape([...this.shape.slice(0, s), numel(this.shape.slice(s, e + 1)), ...this.shape.slice(e + 1)]);
  }
  permute(...dims: number[]): Tensor {
    return O.permute(this, dims);
  }
  transpose(d0: number, d1: number): Tensor {
    const dims = this.shape.map((_, i) => i);
    const [a, b] = [normalizeDim(d0, this.ndim, 'transpose'), normalizeDim(d1, this.ndim, 'transpose')];
    [dims[a], dims[b]] = [dims[b], dims[a]];
    return O.permute(this, dims);
  }
  expand(shape: number[]): Tensor {
    return O.expand(this, shape);
  }
  unsqueeze(dim: number): Tensor {
    const d = normalizeDim(dim, this.ndim + 1, 'unsqueeze');
    return this.reshape([...this.shape.slice(0, d), 1, ...this.shape.slice(d)]);
  }
  /** Removes a size-1 dim (all size-1 dims when dim is omitted). */
  squeeze(dim?: number): Tensor {
    if (dim === undefined) return this.reshape(this.shape.filter((d) => d !== 1));
    const d = normalizeDim(dim, this.ndim, 'squeeze');
    return this.shape[d] === 1 ? this.reshape(this.shape.filter((_, i) => i !== d)) : this.reshape(this.shape);
  }
  slice(dim: number, start?: number, end?: number, step?: number): Tensor {
    return O.slice(this, dim, start, end, step);
  }
  narrow(dim: number, start: number, length: number): Tensor {
    return O.slice(this, dim, start, start + length);
  }
  contiguous(): Tensor {
    return O.contiguous(this);
  }
  split(sizes: number | number[], dim = 0): Tensor[] {
    return O.split(this, sizes, dim);
  }
  chunk(n: number, dim = 0): Tensor[] {
    return C.chunk(this, n, dim);
  }
  repeatInterleave(repeats: number, dim: number): Tensor {
    return C.repeatInterleave(this, repeats, dim);
  }

  // ------------------------------------------------------------ nn helpers
  embedding(ids: Tensor): Tensor {
    return O.embedding(this, ids);
  }
  dropout(p: number, training: boolean, generator?: Generator): Tensor {
    return C.dropout(this, p, training, generator);
  }
  sort(dim = -1, descending = false): { values: Tensor; indices: Tensor } {
    return C.sort(this, dim, descending);
  }
  topk(k: number, dim = -1): { values: Tensor; indices: Tensor } {
    return C.topk(this, k, dim);
  }
}

function nest(data: TypedArray, shape: number[]): NestedArray {
  if (shape.length === 0) return data[0];
  const [n, ...rest] = shape;
  const step = numel(rest);
  return Array.from({ length: n }, (_, i) => nest(data.subarray(i * step, (i + 1) * step), rest));
}
