// The differentiable primitives. Each op computes its forward result with one
// backend kernel and records, right below, its backward rule written with
// ordinary tensor ops (micrograd's layout: the derivative sits next to the
// function). Everything else (mean, crossEntropy, attention, ...) is composed
// from these in composite.ts and gets its gradient for free.

import { recordGrad, recordGradOfOutputs } from './autograd.ts';
import type { ActivationOp, AttentionOptions, Backend, BinaryOp, Storage, UnaryOp, View } from './backend.ts';
import { autocast, autocastDtype } from './mixed_precision.ts';
import { type Generator, defaultGenerator } from './random.ts';
import { type DType, type TypedArray, dtypeOf, isFloat } from './dtype.ts';
import {
  broadcastReduceDims,
  broadcastShapes,
  broadcastStrides,
  fmt,
  inferReshape,
  isContiguous,
  normalizeDim,
  numel,
  viewStrides,
} from './shape.ts';
import { Tensor } from './tensor.ts';

/** A tensor or a plain number (a scalar of the other operand's dtype). */
export type TensorLike = Tensor | number;

/** The view of `t` read as if broadcast to `shape` (stride 0 where expanded). */
function viewAs(t: Tensor, shape: number[]): View {
  return {
    storage: t.storage,
    shape,
    strides: broadcastStrides(t.shape, t.strides, shape),
    offset: t.offset,
    dtype: t.dtype,
  };
}

/** A new tensor on `like`'s device around freshly computed storage. */
function wrap(like: Tensor, storage: Storage, shape: number[], dtype: DType = like.dtype): Tensor {
  return new Tensor(like.backend, storage, shape, dtype);
}

/** A tensor sharing `t`'s storage under another shape/strides (no copy); no gradient flows through it. */
export function alias(t: Tensor, shape: number[], strides: number[], offset: number): Tensor {
  t.backend.retain(t.storage);
  return new Tensor(t.backend, t.storage, shape, t.dtype, strides, offset);
}

function checkSameDevice(op: string, ts: Tensor[]): void {
  for (const t of ts) {
    t.assertAlive(op);
    if (t.backend !== ts[0].backend)
      throw new Error(`${op}: tensors are on different devices (${ts[0].device} and ${t.device})`);
  }
}

/**
 * Turns the operands of a binary op into tensors of one dtype. Numbers become
 * scalars; an int tensor meeting a float (or a fractional number) is promoted
 * to float32, as PyTorch does.
 */
function operands(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  const ref = a instanceof Tensor ? a : (b as Tensor);
  const floatTensor = [a, b].find((x): x is Tensor => x instanceof Tensor && isFloat(x.dtype));
  const fractional = [a, b].some((x) => typeof x === 'number' && !Number.isInteger(x));
  const dtype = floatTensor?.dtype ?? (fractional ? 'float32' : ref.dtype);
  const [ta, tb] = [lift(a, ref, dtype), lift(b, ref, dtype)];
  checkSameDevice(op, [ta, tb]);
  if (ta.dtype !== tb.dtype) throw new Error(`${op}: dtypes ${ta.dtype} and ${tb.dtype} differ; cast one first`);
  return [ta, tb];
}

/** An operand as a tensor of `dtype` (a number becomes a 0-d tensor beside `ref`); float tensors stay. */
function lift(x: TensorLike, ref: Tensor, dtype: DType): Tensor {
  return x instanceof Tensor ? (x.dtype === dtype || isFloat(x.dtype) ? x : x.cast(dtype)) : scalar(ref, x, dtype);
}

/**
 * The constants numbers become in ops on a GPU: each made once and then
 * shared (a fill there is a kernel call, and a training step uses the same
 * few constants, 1e-6 or 0.5, every time). Never written: they are only ever
 * an op's input. A run that makes many different ones starts over. The CPU
 * fills four bytes for free, and memory() there returns to where it was.
 */
const constants = new WeakMap<Backend, Map<string, Storage>>();
const MAX_CONSTANTS = 256;

/** A 0-d tensor holding `value` on `like`'s device (shared storage: an op's input, never written). */
export function scalar(like: Tensor, value: number, dtype: DType = like.dtype): Tensor {
  const backend = like.backend;
  if (backend.name === 'cpu') return new Tensor(backend, backend.fill(dtype, 1, value), [], dtype);
  let known = constants.get(backend);
  if (!known) constants.set(backend, (known = new Map()));
  const key = `${dtype}:${Object.is(value, -0) ? '-0' : value}`;
  let storage = known.get(key);
  if (!storage) {
    if (known.size >= MAX_CONSTANTS) {
      for (const s of known.values()) backend.release(s);
      known.clear();
    }
    storage = backend.fill(dtype, 1, value);
    known.set(key, storage);
  }
  backend.retain(storage);
  return new Tensor(backend, storage, [], dtype);
}

/** A tensor on `like`'s device holding host data (dtype from the array type). */
export function fromHost(like: Tensor, data: TypedArray, shape: number[]): Tensor {
  const dtype = dtypeOf(data);
  const t = new Tensor(like.backend, like.backend.alloc(dtype, data.length), shape, dtype);
  like.backend.write(t.storage, data);
  return t;
}

/**
 * `grad()` when `t` needs a gradient, else null: backward rules skip the work
 * for inputs nobody differentiates (frozen weights, masks, data).
 */
function ifNeeded(t: Tensor, grad: () => Tensor): Tensor | null {
  return t.requiresGrad ? grad() : null;
}

/** Sums a broadcast gradient back down to `shape` (the adjoint of broadcasting). */
export function sumTo(g: Tensor, shape: number[]): Tensor {
  const dims = broadcastReduceDims(shape, g.shape);
  if (dims.length === 0) return g;
  return sum(g, dims, true).reshape(shape);
}

// ---------------------------------------------------------------- elementwise

/** Unary elementwise op with its derivative. */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  x.assertAlive(op);
  if (!isFloat(x.dtype) && op !== 'neg' && op !== 'abs' && op !== 'relu') return unary(op, x.cast('float32'));
  const out = wrap(x, x.backend.unary(op, x.view()), x.shape);
  if (op === 'silu' || op === 'gelu') {
    // their derivatives are chains of a dozen elementwise ops: one kernel instead (the CPU backend's reference
    // loop in activationBackward writes each formula out)
    return recordGrad(out, op, [x], (g) => [wrap(x, x.backend.activationBackward(op, x.view(), g.view()), x.shape)]);
  }
  return recordGrad(out, op, [x], (g) => [g.mul(unaryGrad(op, x, out))]);
}

/** d op(x) / dx, from the input x and the output y (the activations' are backend kernels). */
function unaryGrad(op: Exclude<UnaryOp, ActivationOp>, x: Tensor, y: Tensor): TensorLike {
  switch (op) {
    case 'neg':
      return -1;
    case 'abs':
      return x.gt(0).sub(x.lt(0)).cast(x.dtype);
    case 'exp':
      return y;
    case 'log':
      return x.reciprocal();
    case 'sqrt':
      return y.reciprocal().mul(0.5);
    case 'rsqrt':
      return y.pow(3).mul(-0.5);
    case 'sin':
      return x.cos();
    case 'cos':
      return x.sin().neg();
    case 'tanh':
      return y.square().neg().add(1);
    case 'sigmoid':
      return y.mul(y.neg().add(1));
    case 'relu':
      return x.gt(0).cast(x.dtype);
  }
}

/**
 * dLoss/dx and dLoss/dy of each differentiable binary op, from g = dLoss/dout; each is a thunk, run only
 * for an input that needs it. (Comparisons have no gradient.)
 */
const BINARY_GRADS: Partial<
  Record<BinaryOp, (g: Tensor, x: Tensor, y: Tensor, out: Tensor) => [() => Tensor, () => Tensor]>
> = {
  add: (g) => [() => g, () => g],
  sub: (g) => [() => g, () => g.neg()],
  mul: (g, x, y) => [() => g.mul(y), () => g.mul(x)],
  div: (g, x, y) => [() => g.div(y), () => g.mul(x).div(y.square()).neg()],
  // d/dx x^y = y x^(y-1); d/dy x^y = x^y log x
  pow: (g, x, y, out) => [() => g.mul(y).mul(x.pow(y.sub(1))), () => g.mul(out).mul(x.log())],
  // ties split the gradient in half, as PyTorch does
  maximum: (g, x, y) => minMaxGrad(g, x.gt(y), x.eq(y)),
  minimum: (g, x, y) => minMaxGrad(g, x.lt(y), x.eq(y)),
};

/** Broadcasting binary op with its derivative. */
export function binary(op: BinaryOp, a: TensorLike, b: TensorLike): Tensor {
  const [x, y] = operands(op, a, b);
  const shape = broadcastShapes(op, x.shape, y.shape);
  const out = wrap(x, x.backend.binary(op, viewAs(x, shape), viewAs(y, shape)), shape);
  const rule = BINARY_GRADS[op];
  if (!rule) return out;
  return recordGrad(out, op, [x, y], (g) => {
    const [dx, dy] = rule(g, x, y, out);
    return [ifNeeded(x, () => sumTo(dx(), x.shape)), ifNeeded(y, () => sumTo(dy(), y.shape))];
  });
}

function minMaxGrad(g: Tensor, wins: Tensor, ties: Tensor): [() => Tensor, () => Tensor] {
  const wa = wins.cast(g.dtype).add(ties.cast(g.dtype).mul(0.5));
  return [() => g.mul(wa), () => g.mul(wa.neg().add(1))];
}

/** cond ? a : b, broadcasting all three. */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  // two numbers: float32 beside cond
  const [x, y] = operands('where', typeof a === 'number' && typeof b === 'number' ? scalar(cond, a, 'float32') : a, b);
  checkSameDevice('where', [cond, x]);
  const shape = broadcastShapes('where', cond.shape, x.shape, y.shape);
  const out = wrap(x, x.backend.where(viewAs(cond, shape), viewAs(x, shape), viewAs(y, shape)), shape);
  return recordGrad(out, 'where', [cond, x, y], (g) => [
    null,
    ifNeeded(x, () => sumTo(where(cond, g, 0), x.shape)),
    ifNeeded(y, () => sumTo(where(cond, 0, g), y.shape)),
  ]);
}

/** Converts to another dtype (always a fresh contiguous copy). */
export function cast(x: Tensor, dtype: DType): Tensor {
  x.assertAlive('cast');
  const out = wrap(x, x.backend.copy(x.view(), dtype), x.shape, dtype);
  if (!isFloat(dtype)) return out;
  return recordGrad(out, 'cast', [x], (g) => [g.cast(x.dtype)]);
}

/** A contiguous copy of a view (no copy when it already is one). */
export function contiguous(x: Tensor): Tensor {
  x.assertAlive('contiguous');
  if (isContiguous(x.shape, x.strides)) return x;
  const out = wrap(x, x.backend.copy(x.view(), x.dtype), x.shape);
  return recordGrad(out, 'contiguous', [x], (g) => [g]);
}

// ---------------------------------------------------------------- reductions

/** Sum over `dims` (all dims when omitted). */
export function sum(x: Tensor, dims?: number | number[], keepdim = false): Tensor {
  x.assertAlive('sum');
  const axes = reduceAxes(x, dims, 'sum');
  // Reduced axes side by side in a contiguous tensor are one axis of their product (a bias gradient sums
  // over batch and tokens at once, as PyTorch does): one kernel for them
  let out = x;
  let merged = axes;
  if (axes.length > 1 && isContiguous(x.shape, x.strides)) {
    const shape: number[] = [];
    merged = [];
    x.shape.forEach((d, i) => {
      const reduced = axes.includes(i);
      if (reduced && i > 0 && axes.includes(i - 1)) shape[shape.length - 1] *= d;
      else {
        if (reduced) merged.push(shape.length);
        shape.push(d);
      }
    });
    out = x.reshape(shape);
  }
  // One axis at a time, innermost first, so earlier axis numbers stay valid.
  for (const axis of [...merged].sort((p, q) => q - p)) out = sumAxis(out, axis);
  if (axes.length === 0) out = out.reshape(out.shape); // always a new tensor
  return keepdim ? out.reshape(x.shape.map((d, i) => (axes.includes(i) ? 1 : d))) : out;
}

function sumAxis(x: Tensor, axis: number): Tensor {
  const shape = x.shape.filter((_, i) => i !== axis);
  const out = wrap(x, x.backend.reduce('sum', x.view(), axis), shape);
  // every input element contributed once: broadcast the gradient back
  return recordGrad(out, 'sum', [x], (g) => [g.unsqueeze(axis).expand(x.shape)]);
}

/** Max over one dim; the gradient flows to the element that was picked (argmax). */
export function max(x: Tensor, dim: number, keepdim = false): Tensor {
  x.assertAlive('max');
  const axis = normalizeDim(dim, x.ndim, 'max');
  const shape = x.shape.filter((_, i) => i !== axis);
  const out = wrap(x, x.backend.reduce('max', x.view(), axis), shape);
  recordGrad(out, 'max', [x], (g) => {
    const picked = argmax(x, axis, true)
      .eq(arangeLike(x, x.shape[axis], axis))
      .cast(g.dtype);
    return [picked.mul(g.unsqueeze(axis))];
  });
  return keepdim ? out.unsqueeze(axis) : out;
}

/** Index of the max over one dim (first one on ties), int32. */
export function argmax(x: Tensor, dim: number, keepdim = false): Tensor {
  x.assertAlive('argmax');
  const axis = normalizeDim(dim, x.ndim, 'argmax');
  const shape = x.shape.filter((_, i) => i !== axis);
  const out = wrap(x, x.backend.reduce('argmax', x.view(), axis), shape, 'int32');
  return keepdim ? out.unsqueeze(axis) : out;
}

/** 0..n-1 laid along `axis` of a tensor with x's rank (for one-hot comparisons). */
function arangeLike(x: Tensor, n: number, axis: number): Tensor {
  const ids = Int32Array.from({ length: n }, (_, i) => i);
  return fromHost(
    x,
    ids,
    x.shape.map((_, i) => (i === axis ? n : 1)),
  );
}

function reduceAxes(x: Tensor, dims: number | number[] | undefined, op: string): number[] {
  if (dims === undefined) return x.shape.map((_, i) => i);
  return (Array.isArray(dims) ? dims : [dims]).map((d) => normalizeDim(d, x.ndim, op));
}

// ---------------------------------------------------------------- matmul

/** Batched matrix product with broadcast batch dims: [..., M, K] @ [..., K, N]. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  checkSameDevice('matmul', [a, b]);
  if (a.ndim < 1 || b.ndim < 1)
    throw new Error(`matmul: both operands need at least 1 dim, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  // vectors are treated as a row / a column, then the dim is dropped again
  if (a.ndim === 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  if (b.ndim === 1) return matmul(a, b.unsqueeze(-1)).squeeze(-1);
  if (a.dtype !== b.dtype) throw new Error(`matmul: dtypes ${a.dtype} and ${b.dtype} differ`);
  const [M, K] = a.shape.slice(-2);
  const [K2, N] = b.shape.slice(-2);
  if (K !== K2) throw new Error(`matmul: cannot multiply ${fmt(a.shape)} by ${fmt(b.shape)}`);
  const batch = broadcastShapes('matmul', a.shape.slice(0, -2), b.shape.slice(0, -2));
  const [av, bv] = [viewAs(a, [...batch, M, K]), viewAs(b, [...batch, K, N])];
  // under autocast('float16') the operands are rounded to float16, the sums stay float32 (mixed_precision.ts)
  const mode = autocastDtype();
  const half = mode === 'float16' && a.dtype === 'float32';
  const out = wrap(a, half ? a.backend.matmulF16(av, bv) : a.backend.matmul(av, bv), [...batch, M, N]);
  // the backward's products in the forward's precision, wherever backward() is called
  return recordGrad(out, 'matmul', [a, b], (g) =>
    autocast(mode, () => [
      ifNeeded(a, () => sumTo(g.matmul(b.transpose(-1, -2)), a.shape)),
      ifNeeded(b, () => {
        if (b.ndim !== 2) return sumTo(a.transpose(-1, -2).matmul(g), b.shape);
        // A weight shared by the whole batch (x @ W): one [K, batch*M] @ [batch*M, N]
        // product, rather than a product per batch entry summed afterwards.
        const [a2, g2] = [a.reshape([-1, K]), g.reshape([-1, N])];
        // A weight read transposed (Linear's x @ W^T, W stored [N, K]): make its
        // gradient in W's own layout, (g^T a)^T, so that it reaches W contiguous
        // instead of needing a strided copy. Same products, same sums.
        if (b.strides[0] === 1 && b.strides[1] === K && K > 1) return g2.transpose(0, 1).matmul(a2).transpose(0, 1);
        return a2.transpose(0, 1).matmul(g2);
      }),
    ]),
  );
}

// ---------------------------------------------------------------- views (no copies)

/** Same elements, new shape; a view when the layout allows, else a copy (PyTorch's reshape). */
export function reshape(x: Tensor, shape: number[]): Tensor {
  x.assertAlive('reshape');
  const to = inferReshape(x.shape, shape);
  const strides = viewStrides(x.shape, x.strides, to);
  if (!strides) return reshape(contiguous(x), to);
  return recordGrad(alias(x, to, strides, x.offset), 'reshape', [x], (g) => [g.reshape(x.shape)]);
}

/** Reorders dims: out.shape[i] = x.shape[dims[i]]. */
export function permute(x: Tensor, dims: number[]): Tensor {
  x.assertAlive('permute');
  const axes = dims.map((d) => normalizeDim(d, x.ndim, 'permute'));
  if (axes.length !== x.ndim || new Set(axes).size !== axes.length) {
    throw new Error(`permute: [${dims}] is not a permutation of the ${x.ndim} dims of ${fmt(x.shape)}`);
  }
  const out = alias(
    x,
    axes.map((d) => x.shape[d]),
    axes.map((d) => x.strides[d]),
    x.offset,
  );
  const inverse = axes.map((_, i) => axes.indexOf(i));
  return recordGrad(out, 'permute', [x], (g) => [g.permute(...inverse)]);
}

/** Repeats size-1 dims (and adds leading dims) without copying: stride 0. -1 keeps a dim. */
export function expand(x: Tensor, shape: number[]): Tensor {
  x.assertAlive('expand');
  const lead = shape.length - x.ndim;
  const to = shape.map((d, i) => (d === -1 ? x.shape[i - lead] : d));
  if (lead < 0 || to.some((d, i) => i >= lead && x.shape[i - lead] !== 1 && x.shape[i - lead] !== d)) {
    throw new Error(`expand: cannot expand ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  const out = alias(x, to, broadcastStrides(x.shape, x.strides, to), x.offset);
  return recordGrad(out, 'expand', [x], (g) => [sumTo(g, x.shape)]);
}

/** Elements start, start+step, ... < end along one dim (Python slice rules). */
export function slice(x: Tensor, dim: number, start = 0, end = Infinity, step = 1): Tensor {
  x.assertAlive('slice');
  const axis = normalizeDim(dim, x.ndim, 'slice');
  const n = x.shape[axis];
  if (step < 1 || !Number.isInteger(step)) throw new Error(`slice: step must be a positive integer, got ${step}`);
  const [s, e] = [start, end].map((i) => Math.min(Math.max(i < 0 ? i + n : i, 0), n)); // clamped into [0, n]
  const len = Math.max(0, Math.ceil((e - s) / step));
  const shape = x.shape.map((d, i) => (i === axis ? len : d));
  const strides = x.strides.map((st, i) => (i === axis ? st * step : st));
  const out = alias(x, shape, strides, x.offset + s * x.strides[axis]);
  return recordGrad(out, 'slice', [x], (g) => {
    // the gradient of a slice is zeros with g written into the sliced positions
    const gx = new Tensor(g.backend, g.backend.fill(g.dtype, x.size, 0), x.shape, g.dtype);
    const target = slice(gx, axis, s, e, step);
    g.backend.copyInto(target.view(), g.view());
    target.dispose();
    return [gx];
  });
}

/**
 * Splits into pieces of `sizes` (or equal pieces of that size) along dim:
 * views, no copy. One op with several outputs, so its backward is one cat of
 * the pieces' gradients (zeros for a piece the loss does not use), not a
 * zero-filled gradient of the whole per piece and a sum of them.
 */
export function split(x: Tensor, sizes: number | number[], dim = 0): Tensor[] {
  x.assertAlive('split');
  const axis = normalizeDim(dim, x.ndim, 'split');
  const n = x.shape[axis];
  const parts = Array.isArray(sizes)
    ? sizes
    : Array.from({ length: Math.ceil(n / sizes) }, (_, i) => Math.min(sizes, n - i * sizes));
  if (parts.reduce((a, b) => a + b, 0) !== n)
    throw new Error(`split: sizes [${parts}] do not add up to ${n} (dim ${dim} of ${fmt(x.shape)})`);
  let at = 0;
  const pieces = parts.map((len) => {
    const shape = x.shape.map((d, i) => (i === axis ? len : d));
    const piece = alias(x, shape, x.strides, x.offset + at * x.strides[axis]);
    at += len;
    return piece;
  });
  return recordGradOfOutputs(pieces, 'split', [x], (gradOuts) => {
    const dtype = gradOuts.find((g) => g)!.dtype;
    const zerosLike = (t: Tensor) => wrap(x, x.backend.fill(dtype, t.size, 0), t.shape, dtype);
    const parts = gradOuts.map((g, i) => g ?? zerosLike(pieces[i]));
    return [cat(parts, axis)];
  });
}

/** Joins tensors along an existing dim. */
export function cat(tensors: Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new Error('cat: expected at least one tensor');
  checkSameDevice('cat', tensors);
  const first = tensors[0];
  const axis = normalizeDim(dim, first.ndim, 'cat');
  for (const t of tensors) {
    if (
      t.ndim !== first.ndim ||
      t.shape.some((d, i) => i !== axis && d !== first.shape[i]) ||
      t.dtype !== first.dtype
    ) {
      throw new Error(
        `cat: cannot join ${fmt(first.shape)} (${first.dtype}) and ${fmt(t.shape)} (${t.dtype}) along dim ${dim}`,
      );
    }
  }
  const shape = first.shape.map((d, i) => (i === axis ? tensors.reduce((s, t) => s + t.shape[axis], 0) : d));
  // not cleared first: the parts overwrite every element
  const out = new Tensor(first.backend, first.backend.alloc(first.dtype, numel(shape), false), shape, first.dtype);
  const starts: number[] = [];
  let at = 0;
  for (const t of tensors) {
    starts.push(at);
    const part = {
      storage: out.storage,
      shape: t.shape,
      strides: out.strides,
      offset: at * out.strides[axis],
      dtype: out.dtype,
    };
    first.backend.copyInto(part, t.view());
    at += t.shape[axis];
  }
  return recordGrad(out, 'cat', tensors, (g) =>
    tensors.map((t, i) => ifNeeded(t, () => slice(g, axis, starts[i], starts[i] + t.shape[axis]))),
  );
}

// ---------------------------------------------------------------- indexing

/** Embedding lookup: rows of table [V, D] at int32 ids -> [...ids.shape, D]. */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  checkSameDevice('embedding', [table, ids]);
  if (table.ndim !== 2) throw new Error(`embedding: the table must be [V, D], got ${fmt(table.shape)}`);
  if (ids.dtype !== 'int32') throw new Error(`embedding: ids must be int32, got ${ids.dtype}`);
  const out = wrap(table, table.backend.gather(table.view(), ids.view()), [...ids.shape, table.shape[1]]);
  // rows used several times receive the sum of their gradients
  return recordGrad(out, 'embedding', [table, ids], (g) => [
    wrap(g, g.backend.scatterAdd(ids.view(), g.contiguous().view(), table.shape[0]), table.shape),
    null,
  ]);
}

// ---------------------------------------------------------------- fused row ops (last dim)

/** softmax over the last dim. */
export function softmaxLast(x: Tensor): Tensor {
  const out = wrap(x, x.backend.softmax(x.view()), x.shape);
  // dx = y * (g - sum(g * y))
  return recordGrad(out, 'softmax', [x], (g) => [out.mul(g.sub(g.mul(out).sum(-1, true)))]);
}

/** log(softmax) over the last dim, without forming the softmax. */
export function logSoftmaxLast(x: Tensor): Tensor {
  const out = wrap(x, x.backend.logSoftmax(x.view()), x.shape);
  // dx = g - softmax * sum(g)
  return recordGrad(out, 'logSoftmax', [x], (g) => [g.sub(out.exp().mul(g.sum(-1, true)))]);
}

/** A gradient the backend computed for `t`, or null (disposed) where `t` needs none. */
function gradFor(t: Tensor, storage: Storage): Tensor | null {
  const grad = wrap(t, storage, t.shape);
  if (t.requiresGrad) return grad;
  grad.dispose();
  return null;
}

/**
 * LayerNorm over the last dim. The backward is one fused kernel that
 * recomputes the statistics: with xhat = (x - mean) * rstd and gx = g * weight,
 * dx = rstd * (gx - mean(gx) - xhat * mean(gx * xhat)), dweight = sum(g * xhat), dbias = sum(g).
 */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): Tensor {
  checkSameDevice('layerNorm', [x, weight, bias]);
  const D = x.shape[x.ndim - 1];
  if (weight.size !== D || bias.size !== D) {
    const shapes = `weight ${fmt(weight.shape)} and bias ${fmt(bias.shape)}`;
    throw new Error(`layerNorm: ${shapes} do not match the last dim of ${fmt(x.shape)}`);
  }
  const out = wrap(x, x.backend.layerNorm(x.view(), weight.view(), bias.view(), eps), x.shape);
  return recordGrad(out, 'layerNorm', [x, weight, bias], (g) => {
    const r = x.backend.layerNormBackward(x.view(), weight.view(), g.view(), eps);
    return [gradFor(x, r.dx), gradFor(weight, r.dweight), gradFor(bias, r.dbias)];
  });
}

/**
 * RMSNorm over the last dim (Llama): x / rms(x) * weight. The backward is one
 * fused kernel: with xhat = x / rms(x) and gx = g * weight,
 * dx = (gx - xhat * mean(gx * xhat)) / rms(x), dweight = sum(g * xhat).
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  checkSameDevice('rmsNorm', [x, weight]);
  const D = x.shape[x.ndim - 1];
  if (weight.size !== D)
    throw new Error(`rmsNorm: weight ${fmt(weight.shape)} does not match the last dim of ${fmt(x.shape)}`);
  const out = wrap(x, x.backend.rmsNorm(x.view(), weight.view(), eps), x.shape);
  return recordGrad(out, 'rmsNorm', [x, weight], (g) => {
    const r = x.backend.rmsNormBackward(x.view(), weight.view(), g.view(), eps);
    return [gradFor(x, r.dx), gradFor(weight, r.dweight)];
  });
}

/**
 * Rotary position embedding: each pair (x[i], x[i + h]) of the last axis
 * (2h long) rotated by the angle whose cos and sin the tables hold:
 * x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1], as
 * one op instead of seven (two products, a negation, two copies of a
 * concatenation, a sum): one dispatch on WebGPU, and one more for its
 * backward. cos and sin broadcast to x's shape; they are tables of positions
 * and get no gradient.
 */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  checkSameDevice('rope', [x, cos, sin]);
  if (x.ndim === 0 || x.shape[x.ndim - 1] % 2 !== 0)
    throw new Error(`rope: the last dim of ${fmt(x.shape)} must be even (it holds pairs)`);
  for (const [name, t] of [
    ['cos', cos],
    ['sin', sin],
  ] as const) {
    if (broadcastShapes('rope', x.shape, t.shape).some((d, i) => d !== x.shape[i]))
      throw new Error(`rope: ${name} ${fmt(t.shape)} does not broadcast to x ${fmt(x.shape)}`);
    if (t.requiresGrad) throw new Error(`rope: ${name} is a table of positions and gets no gradient`);
  }
  const [c, s] = [viewAs(cos, x.shape), viewAs(sin, x.shape)];
  const out = wrap(x, x.backend.rope(x.view(), c, s, false), x.shape);
  // cos and sin are inputs (without gradients) so that they live until backward has read them
  return recordGrad(out, 'rope', [x, cos, sin], (g) => [
    wrap(g, g.backend.rope(g.view(), c, s, true), x.shape),
    null,
    null,
  ]);
}

/** Per-row cross-entropy of logits [N, V] against int32 targets [N]; 0 at ignored rows. */
export function crossEntropyRows(logits: Tensor, targets: Tensor, ignoreIndex: number): Tensor {
  checkSameDevice('crossEntropy', [logits, targets]);
  const [N, V] = logits.shape;
  if (logits.ndim !== 2 || targets.ndim !== 1 || targets.shape[0] !== N) {
    throw new Error(
      `crossEntropy: logits ${fmt(logits.shape)} and targets ${fmt(targets.shape)} do not match ` +
        '(expected [N, V] and [N])',
    );
  }
  if (targets.dtype !== 'int32') throw new Error(`crossEntropy: targets must be int32, got ${targets.dtype}`);
  const out = wrap(logits, logits.backend.crossEntropy(logits.view(), targets.view(), ignoreIndex), [N]);
  return recordGrad(out, 'crossEntropy', [logits, targets], (g) => {
    // d(-log softmax[t]) / dlogits = softmax - onehot(t), zero on ignored rows: one pass over [N, V]
    const grad = logits.backend.crossEntropyBackward(logits.view(), targets.view(), g.view(), ignoreIndex);
    return [wrap(logits, grad, [N, V]), null];
  });
}

// ---------------------------------------------------------------- attention

/** Options of scaledDotProductAttention (PyTorch's names). */
export interface AttentionArgs {
  /** Added to the scores before the softmax; broadcasts to (B, H, T, Tk). Gets no gradient. */
  attnMask?: Tensor | null;
  /** Each query sees only keys at or before its position (the last T of the Tk positions). */
  isCausal?: boolean;
  /** Dropout of the attention probabilities (0 in evaluation). */
  dropoutP?: number;
  /** Multiplies q . k; default 1 / sqrt(head_dim). */
  scale?: number;
  /** Draws the dropout seed. */
  generator?: Generator;
}

/**
 * softmax(q k^T * scale + attnMask) v, as PyTorch's F.scaled_dot_product_attention
 * with grouped-query heads (enable_gqa): q (B, H, T, D), k and v (B, Hkv, Tk, D)
 * with H a multiple of Hkv. One fused kernel per direction: the (T, Tk) scores
 * and probabilities are never stored; the backward pass recomputes them from
 * the saved log-sum-exp of each row (as FlashAttention does). The result is a
 * (B, H, T, D) view laid out as (B, T, H, D) in memory, so `.transpose(1, 2)`
 * followed by merging the heads costs no copy.
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, args: AttentionArgs = {}): Tensor {
  const mask = args.attnMask ?? null;
  checkSameDevice('attention', mask ? [q, k, v, mask] : [q, k, v]);
  const [B, H, T, D] = q.shape;
  const [Hkv, Tk] = [k.shape[1], k.shape[2]];
  const shapes = `q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)}`;
  if (q.ndim !== 4 || k.ndim !== 4 || fmt(k.shape) !== fmt(v.shape) || k.shape[0] !== B || k.shape[3] !== D) {
    throw new Error(`attention: expected q (B, H, T, D) and k, v (B, Hkv, Tk, D), got ${shapes}`);
  }
  if (H % Hkv !== 0) throw new Error(`attention: ${H} query heads cannot share ${Hkv} key/value heads (${shapes})`);
  if (args.isCausal && T > Tk)
    throw new Error(`attention: causal attention needs at least as many keys as queries (${shapes})`);
  if (!isFloat(q.dtype) || k.dtype !== q.dtype || v.dtype !== q.dtype || (mask && mask.dtype !== q.dtype)) {
    throw new Error(
      `attention: q, k, v and the mask must share one float dtype (got ${q.dtype}, ${k.dtype}, ${v.dtype})`,
    );
  }
  const full = [B, H, T, Tk];
  if (mask) broadcastShapes('attention mask', mask.shape, full);
  const p = args.dropoutP ?? 0;
  if (p < 0 || p >= 1) throw new Error(`attention: dropoutP must be in [0, 1), got ${p}`);
  const seed = Math.floor((args.generator ?? defaultGenerator).random() * 2 ** 32);
  const opts: AttentionOptions = {
    scale: args.scale ?? 1 / Math.sqrt(D),
    causal: args.isCausal ?? false,
    mask: mask ? viewAs(mask, full) : null,
    dropout: p > 0 ? { p, seed } : null,
  };
  const r = q.backend.attention(q.view(), k.view(), v.view(), opts);
  const out = headsLast(q, r.out, [B, H, T, D]);
  const lse = wrap(q, r.lse, [B, H, T]);
  // the mask is an input without a gradient (the backward reads it); lse is this op's own, freed with its node
  recordGrad(
    out,
    'attention',
    mask ? [q, k, v, mask] : [q, k, v],
    (g) => {
      const grads = q.backend.attentionBackward(q.view(), k.view(), v.view(), out.view(), g.view(), lse.view(), opts);
      const [dk, dv] = [grads.dk, grads.dv].map((s) => headsLast(q, s, [B, Hkv, Tk, D]));
      return [headsLast(q, grads.dq, [B, H, T, D]), dk, dv, null];
    },
    [lse],
  );
  if (!out.ctx) lse.dispose(); // no backward pass will need it
  return out;
}

/** The attention kernels write (B, T, H, D) memory order: a (B, H, T, D) view of it, with permuted strides. */
function headsLast(like: Tensor, storage: Storage, [B, n, t, D]: number[]): Tensor {
  return new Tensor(like.backend, storage, [B, n, t, D], like.dtype, [t * n * D, D, n * D, 1], 0);
}

// ---------------------------------------------------------------- sorting and sampling

/** Sorts along the last dim; values carry gradients back to where they came from. */
export function sortLast(x: Tensor, descending: boolean): { values: Tensor; indices: Tensor } {
  x.assertAlive('sort');
  const r = x.backend.sort(x.view(), descending);
  const values = wrap(x, r.values, x.shape);
  const indices = wrap(x, r.indices, x.shape, 'int32');
  recordGrad(values, 'sort', [x], (g) => [scatterLast(g, indices, x.shape[x.ndim - 1])]);
  return { values, indices };
}

/** out[..., j] = sum of g[..., k] where indices[..., k] == j: puts sorted values back. */
export function scatterLast(g: Tensor, indices: Tensor, n: number): Tensor {
  const hits = indices
    .unsqueeze(-1)
    .eq(arangeLike(indices.unsqueeze(-1), n, indices.ndim))
    .cast(g.dtype);
  return hits.mul(g.unsqueeze(-1)).sum(-2);
}

/** Writes `src` into the view `dst` in place (KV caches, building tensors); no gradient. */
export function copyInto(dst: Tensor, src: Tensor): void {
  checkSameDevice('copyInto', [dst, src]);
  const s = src.dtype === dst.dtype ? src : src.cast(dst.dtype);
  if (broadcastShapes('copyInto', dst.shape, s.shape).some((d, i) => d !== dst.shape[i])) {
    throw new Error(`copyInto: cannot write ${fmt(src.shape)} into ${fmt(dst.shape)}`);
  }
  dst.backend.copyInto(dst.view(), viewAs(s, dst.shape));
  if (s !== src) s.dispose();
}
