// Ops built from the primitives in ops.ts. They need no backward rules of
// their own: autograd differentiates the primitives they are made of.

import { type Tensor } from './tensor.ts';
import * as O from './ops.ts';
import { defaultGenerator, type Generator } from './random.ts';
import { fmt, normalizeDim } from './shape.ts';

/** Mean over dims (all when omitted). */
export function mean(x: Tensor, dims?: number | number[], keepdim = false): Tensor {
  const s = O.sum(x, dims, keepdim);
  return s.div(x.size / Math.max(s.size, 1) || 1);
}

/** Moves `dim` to the end, applies a last-dim op, and moves it back. */
function alongDim(x: Tensor, dim: number, op: string, f: (t: Tensor) => Tensor): Tensor {
  const d = normalizeDim(dim, x.ndim, op);
  if (d === x.ndim - 1) return f(x);
  return f(x.transpose(d, -1)).transpose(d, -1);
}

/** softmax(x) = exp(x) / sum(exp(x)) along dim, numerically stable. */
export function softmax(x: Tensor, dim = -1): Tensor {
  return alongDim(x, dim, 'softmax', O.softmaxLast);
}

/** log(softmax(x)) along dim, without forming softmax (stable for very negative logits). */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  return alongDim(x, dim, 'logSoftmax', O.logSoftmaxLast);
}

/**
 * Cross-entropy between logits [..., V] and int32 targets [...], averaged over
 * the targets that are not ignoreIndex (PyTorch's reduction='mean'). When every
 * target is ignored PyTorch returns NaN; we return 0, so a batch of fully
 * masked samples does not poison a training run.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex = -100): Tensor {
  const V = logits.shape[logits.ndim - 1];
  if (fmt(logits.shape.slice(0, -1)) !== fmt(targets.shape)) {
    throw new Error(`crossEntropy: logits ${fmt(logits.shape)} and targets ${fmt(targets.shape)} do not match`);
  }
  const rows = O.crossEntropyRows(logits.reshape([-1, V]), targets.reshape([-1]), ignoreIndex);
  const counted = targets.ne(ignoreIndex).sum().cast(logits.dtype).maximum(1);
  return rows.sum().div(counted);
}

/** Zeroes elements with probability p while training and rescales the rest by 1/(1-p). */
export function dropout(x: Tensor, p: number, training: boolean, generator: Generator = defaultGenerator): Tensor {
  if (!training || p === 0) return x;
  if (p < 0 || p >= 1) throw new Error(`dropout: p must be in [0, 1), got ${p}`);
  const keep = new Float32Array(x.size);
  for (let i = 0; i < keep.length; i++) keep[i] = generator.random() >= p ? 1 / (1 - p) : 0;
  const mask = O.fromHost(x, keep, x.shape).cast(x.dtype);
  return x.mul(mask);
}

/** Splits into n nearly equal pieces along dim (torch.chunk). */
export function chunk(x: Tensor, n: number, dim = 0): Tensor[] {
  const size = x.shape[normalizeDim(dim, x.ndim, 'chunk')];
  return O.split(x, Math.ceil(size / n) || 1, dim);
}

/** Joins tensors along a new dim. */
export function stack(tensors: Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new Error('stack: expected at least one tensor');
  const d = normalizeDim(dim, tensors[0].ndim + 1, 'stack');
  return O.cat(
    tensors.map((t) => t.unsqueeze(d)),
    d,
  );
}

/** Repeats each element `repeats` times along dim: [a, b] -> [a, a, b, b] (used for grouped-query attention). */
export function repeatInterleave(x: Tensor, repeats: number, dim: number): Tensor {
  const d = normalizeDim(dim, x.ndim, 'repeatInterleave');
  const shape = [...x.shape];
  const expanded = [...shape.slice(0, d + 1), repeats, ...shape.slice(d + 1)];
  shape[d] *= repeats;
  return x
    .unsqueeze(d + 1)
    .expand(expanded)
    .reshape(shape);
}

/** Sorts along dim; returns sorted values and their int32 indices. */
export function sort(x: Tensor, dim = -1, descending = false): { values: Tensor; indices: Tensor } {
  const d = normalizeDim(dim, x.ndim, 'sort');
  if (d === x.ndim - 1) return O.sortLast(x, descending);
  const r = O.sortLast(x.transpose(d, -1), descending);
  return { values: r.values.transpose(d, -1), indices: r.indices.transpose(d, -1) };
}

/** The k largest values along dim, in descending order, with their indices. */
export function topk(x: Tensor, k: number, dim = -1): { values: Tensor; indices: Tensor } {
  const d = normalizeDim(dim, x.ndim, 'topk');
  if (k < 0 || k > x.shape[d]) throw new Error(`topk: k = ${k} is out of range for dim ${dim} of ${fmt(x.shape)}`);
  const { values, indices } = sort(x, d, true);
  return { values: values.slice(d, 0, k), indices: indices.slice(d, 0, k) };
}

/** Keeps the lower triangle (j <= i + diagonal) of the last two dims, zeroes the rest. */
export function tril(x: Tensor, diagonal = 0): Tensor {
  const [rows, cols] = x.shape.slice(-2);
  const mask = new Int32Array(rows * cols).map((_, k) => (k % cols <= Math.floor(k / cols) + diagonal ? 1 : 0));
  return O.where(O.fromHost(x, mask, [rows, cols]), x, 0);
}

/**
 * Patch embedding, a Conv2d whose stride equals its kernel: x [B, C, H, W] with
 * weight [O, C, P, P] -> [B, O, floor(H/P), floor(W/P)]. With stride == kernel
 * the patches do not overlap, so the convolution is exactly "cut into patches,
 * then one matmul": no im2col duplication needed. As in PyTorch, rows and
 * columns past the last whole patch are ignored.
 */
export function conv2dPatch(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  const [B, Cin, H, W] = x.shape;
  const [Cout, Cw, P, P2] = weight.shape;
  if (x.ndim !== 4 || weight.ndim !== 4 || Cw !== Cin || P !== P2 || H < P || W < P) {
    throw new Error(`conv2d: cannot apply weight ${fmt(weight.shape)} with stride ${P} to input ${fmt(x.shape)}`);
  }
  const [h, w] = [Math.floor(H / P), Math.floor(W / P)];
  const patches = x
    .slice(2, 0, h * P)
    .slice(3, 0, w * P)
    .reshape([B, Cin, h, P, w, P])
    .permute(0, 2, 4, 1, 3, 5) // (B, h, w, C, P, P): one row per patch, in the weight's (C, P, P) order
    .reshape([B * h * w, Cin * P * P]);
  let out = patches.matmul(weight.reshape([Cout, Cin * P * P]).transpose(0, 1)); // (B*h*w, O)
  if (bias) out = out.add(bias);
  return out.reshape([B, h, w, Cout]).permute(0, 3, 1, 2); // (B, O, h, w), PyTorch's conv layout
}
