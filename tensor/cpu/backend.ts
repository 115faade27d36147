// The CPU backend. Its buffers live in one WebAssembly memory (heap.ts).
// Each kernel first tries the generated WebAssembly SIMD version (wasm/,
// the default where the platform has it); when that is switched off
// (setCpuKernels('ts')) or does not apply (float64, an op without a wasm
// version), the reference runs: plain TypeScript loops that turn their
// strided inputs into dense arrays (`dense`) and then loop simply, short
// enough to check by eye. The WebGPU backend is checked against this one, op
// for op.

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
import { type DType, type TypedArray, makeTypedArray } from '../dtype.ts';
import { roundToHalf } from '../mixed_precision.ts';
import { dropoutKeeps } from '../random.ts';
import { contiguousStrides, fmt, isContiguous, numel } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { CpuStorage } from './heap.ts';
import * as W from './wasm/kernels.ts';

export { CpuStorage };

/** The CPU storage under a view. */
function store(v: View): CpuStorage {
  return v.storage as CpuStorage;
}

function dataOf(v: View | Storage): TypedArray {
  const s = ('storage' in v ? v.storage : v) as CpuStorage;
  if (s.refs <= 0) throw new Error('cpu backend: use of a freed buffer (a tensor was used after dispose())');
  return s.data;
}

/**
 * The elements of a view as one dense row-major array, converted to `dtype`.
 * A contiguous view of the right dtype is returned as is (no copy); otherwise
 * we walk the view's index space, keeping the source offset up to date as the
 * counters tick over, like an odometer.
 */
export function dense(v: View, dtype: DType = v.dtype): TypedArray {
  const src = dataOf(v);
  const n = numel(v.shape);
  if (dtype === v.dtype && isContiguous(v.shape, v.strides)) return src.subarray(v.offset, v.offset + n);
  const out = makeTypedArray(dtype, n);
  if (n === 0) return out;
  const rank = v.shape.length;
  if (rank === 0) {
    out[0] = src[v.offset];
    return out;
  }
  const inner = v.shape[rank - 1];
  const innerStride = v.strides[rank - 1];
  const idx = new Array<number>(rank).fill(0);
  let off = v.offset;
  for (let i = 0; i < n; i += inner) {
    for (let j = 0; j < inner; j++) out[i + j] = src[off + j * innerStride];
    // advance the outer dims (all but the last) by one step
    for (let d = rank - 2; d >= 0; d--) {
      idx[d]++;
      off += v.strides[d];
      if (idx[d] < v.shape[d]) break;
      off -= v.strides[d] * v.shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** Rows of the last axis: [rows, cols] of a shape. */
function rowsCols(shape: number[]): [number, number] {
  const cols = shape.length ? shape[shape.length - 1] : 1;
  return [cols === 0 ? 0 : numel(shape) / cols, cols];
}

/**
 * A fresh output buffer. Kernels overwrite every element, so it is not
 * zero-filled (only alloc() promises zeros). Take its `data` after making
 * every output: a later allocation may grow the memory.
 */
function output(dtype: DType, length: number, zeroed = false): CpuStorage {
  const s = CpuStorage.create(dtype, length, zeroed);
  live.bytes += s.bytes;
  return s;
}
const live = { bytes: 0 };

/** Parameters from this many elements up have their AdamW moments outside the memory (see adamw). */
const COLD_MOMENTS_MIN = 1 << 17;

/** The CPU backend. */
export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;

  liveBytes(): number {
    return live.bytes;
  }

  alloc(dtype: DType, length: number, zeroed = true): Storage {
    return output(dtype, length, zeroed);
  }
  write(dst: Storage, src: TypedArray): void {
    dropCopy(dst as CpuStorage);
    dataOf(dst).set(src);
  }
  async read(x: View): Promise<TypedArray> {
    return this.readSync(x);
  }
  /** Synchronous read, CPU only (tests and host-side helpers). */
  readSync(x: View): TypedArray {
    return dense(x).slice();
  }
  retain(s: Storage): void {
    (s as CpuStorage).refs++;
  }
  release(s: Storage): void {
    const c = s as CpuStorage;
    if (--c.refs > 0) return;
    dropCopy(c);
    live.bytes -= c.bytes;
    c.free();
  }
  flush(): void {}

  unary(op: UnaryOp, v: View): Storage {
    const out = output(v.dtype, numel(v.shape));
    if (W.useWasm(store(v), out) && W.unary(op, v, out)) return out;
    const x = dense(v);
    const n = x.length;
    const o = out.data;
    switch (op) {
      case 'neg':
        for (let i = 0; i < n; i++) o[i] = -x[i];
        break;
      case 'abs':
        for (let i = 0; i < n; i++) o[i] = Math.abs(x[i]);
        break;
      case 'exp':
        for (let i = 0; i < n; i++) o[i] = Math.exp(x[i]);
        break;
      case 'log':
        for (let i = 0; i < n; i++) o[i] = Math.log(x[i]);
        break;
      case 'sqrt':
        for (let i = 0; i < n; i++) o[i] = Math.sqrt(x[i]);
        break;
      case 'rsqrt':
        for (let i = 0; i < n; i++) o[i] = 1 / Math.sqrt(x[i]);
        break;
      case 'sin':
        for (let i = 0; i < n; i++) o[i] = Math.sin(x[i]);
        break;
      case 'cos':
        for (let i = 0; i < n; i++) o[i] = Math.cos(x[i]);
        break;
      case 'tanh':
        for (let i = 0; i < n; i++) o[i] = Math.tanh(x[i]);
        break;
      case 'sigmoid':
        for (let i = 0; i < n; i++) o[i] = 1 / (1 + Math.exp(-x[i]));
        break;
      case 'relu':
        for (let i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : 0;
        break;
      case 'silu':
        for (let i = 0; i < n; i++) o[i] = x[i] / (1 + Math.exp(-x[i]));
        break;
      // GELU, tanh approximation (what SigLIP uses): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      case 'gelu':
        for (let i = 0; i < n; i++) {
          const t = x[i];
          o[i] = 0.5 * t * (1 + Math.tanh(0.7978845608028654 * (t + 0.044715 * t * t * t)));
        }
        break;
    }
    return out;
  }

  activationBackward(op: ActivationOp, xv: View, gv: View): Storage {
    const out = output(xv.dtype, numel(xv.shape));
    if (W.useWasm(store(xv), store(gv), out) && W.activationBackward(op, xv, gv, out)) return out;
    const [x, g, o] = [dense(xv), dense(gv), out.data];
    for (let i = 0; i < x.length; i++) {
      const t = x[i];
      if (op === 'silu') {
        const s = 1 / (1 + Math.exp(-t));
        o[i] = g[i] * s * (1 + t * (1 - s)); // d/dx x s(x) = s (1 + x (1 - s))
      } else {
        // y = 0.5 x (1 + th), th = tanh(c (x + 0.044715 x^3)): dy/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) du/dx
        const c = 0.7978845608028654;
        const th = Math.tanh(c * (t + 0.044715 * t * t * t));
        o[i] = g[i] * (0.5 * (1 + th) + 0.5 * t * (1 - th * th) * c * (1 + 3 * 0.044715 * t * t));
      }
    }
    return out;
  }

  binary(op: BinaryOp, av: View, bv: View): Storage {
    const out = output(av.dtype, numel(av.shape));
    if (W.useWasm(store(av), store(bv), out) && W.binary(op, av, bv, out)) return out;
    const a = dense(av);
    const b = dense(bv);
    const n = a.length;
    const o = out.data;
    switch (op) {
      case 'add':
        for (let i = 0; i < n; i++) o[i] = a[i] + b[i];
        break;
      case 'sub':
        for (let i = 0; i < n; i++) o[i] = a[i] - b[i];
        break;
      case 'mul':
        for (let i = 0; i < n; i++) o[i] = a[i] * b[i];
        break;
      // integer division truncates toward zero like a typed-array store does
      case 'div':
        for (let i = 0; i < n; i++) o[i] = a[i] / b[i];
        break;
      case 'pow':
        for (let i = 0; i < n; i++) o[i] = Math.pow(a[i], b[i]);
        break;
      // NaN wins in maximum/minimum, as in PyTorch
      case 'maximum':
        for (let i = 0; i < n; i++) o[i] = a[i] > b[i] || a[i] !== a[i] ? a[i] : b[i];
        break;
      case 'minimum':
        for (let i = 0; i < n; i++) o[i] = a[i] < b[i] || a[i] !== a[i] ? a[i] : b[i];
        break;
      case 'eq':
        for (let i = 0; i < n; i++) o[i] = a[i] === b[i] ? 1 : 0;
        break;
      case 'ne':
        for (let i = 0; i < n; i++) o[i] = a[i] !== b[i] ? 1 : 0;
        break;
      case 'lt':
        for (let i = 0; i < n; i++) o[i] = a[i] < b[i] ? 1 : 0;
        break;
      case 'le':
        for (let i = 0; i < n; i++) o[i] = a[i] <= b[i] ? 1 : 0;
        break;
      case 'gt':
        for (let i = 0; i < n; i++) o[i] = a[i] > b[i] ? 1 : 0;
        break;
      case 'ge':
        for (let i = 0; i < n; i++) o[i] = a[i] >= b[i] ? 1 : 0;
        break;
    }
    return out;
  }

  where(cv: View, av: View, bv: View): Storage {
    const out = output(av.dtype, numel(av.shape));
    if (W.useWasm(store(cv), store(av), store(bv), out) && W.where(cv, av, bv, out)) return out;
    const c = dense(cv);
    const a = dense(av);
    const b = dense(bv);
    const o = out.data;
    for (let i = 0; i < o.length; i++) o[i] = c[i] !== 0 ? a[i] : b[i];
    return out;
  }

  /**
   * Each half of the output from the elementwise kernels (WebAssembly, on
   * every thread) on half views of x, cos and sin: two products, their sum or
   * difference, copied into place. The bits of the composite it replaces.
   */
  rope(xv: View, cv: View, sv: View, inverse: boolean): Storage {
    const r = xv.shape.length;
    const h = xv.shape[r - 1] / 2;
    const half = (v: View, k: number): View => ({
      ...v,
      shape: [...v.shape.slice(0, r - 1), h],
      offset: v.offset + k * h * v.strides[r - 1],
    });
    const out = output(xv.dtype, numel(xv.shape));
    const ov = { storage: out, shape: xv.shape, strides: contiguousStrides(xv.shape), offset: 0, dtype: xv.dtype };
    const [x1, x2, c1, c2, s1, s2] = [half(xv, 0), half(xv, 1), half(cv, 0), half(cv, 1), half(sv, 0), half(sv, 1)];
    const halves: [BinaryOp, View, View, View, View][] = inverse
      ? [
          ['add', x1, c1, x2, s2],
          ['sub', x2, c2, x1, s1],
        ]
      : [
          ['sub', x1, c1, x2, s1],
          ['add', x2, c2, x1, s2],
        ];
    halves.forEach(([op, a, b, c, d], k) => {
      const shape = a.shape;
      const whole = (st: Storage): View => ({
        storage: st,
        shape,
        strides: contiguousStrides(shape),
        offset: 0,
        dtype: a.dtype,
      });
      const [ab, cd] = [this.binary('mul', a, b), this.binary('mul', c, d)];
      const sum = this.binary(op, whole(ab), whole(cd));
      this.copyInto(half(ov, k), whole(sum));
      [ab, cd, sum].forEach((st) => this.release(st));
    });
    return out;
  }

  copy(x: View, dtype: DType): Storage {
    const out = output(dtype, numel(x.shape));
    if (W.useWasm(store(x), out) && W.copy(x, out)) return out;
    out.data.set(dense(x, dtype));
    return out;
  }

  copyInto(dst: View, src: View): void {
    dropCopy(store(dst));
    if (W.useWasm(store(dst), store(src)) && W.copyInto(dst, src)) return;
    // Walk dst's index space the way dense() walks a source: same odometer.
    const s = dense(src, dst.dtype);
    const out = dataOf(dst);
    const rank = dst.shape.length;
    const n = numel(dst.shape);
    if (n === 0) return;
    if (rank === 0) {
      out[dst.offset] = s[0];
      return;
    }
    const inner = dst.shape[rank - 1];
    const innerStride = dst.strides[rank - 1];
    const idx = new Array<number>(rank).fill(0);
    let off = dst.offset;
    for (let i = 0; i < n; i += inner) {
      for (let j = 0; j < inner; j++) out[off + j * innerStride] = s[i + j];
      for (let d = rank - 2; d >= 0; d--) {
        idx[d]++;
        off += dst.strides[d];
        if (idx[d] < dst.shape[d]) break;
        off -= dst.strides[d] * dst.shape[d];
        idx[d] = 0;
      }
    }
  }

  fill(dtype: DType, length: number, value: number): Storage {
    const out = output(dtype, length);
    out.data.fill(value);
    return out;
  }

  reduce(op: ReduceOp, v: View, axis: number): Storage {
    const len = v.shape[axis];
    const outer = numel(v.shape.slice(0, axis));
    const inner = numel(v.shape.slice(axis + 1));
    const out = output(op === 'argmax' ? 'int32' : v.dtype, outer * inner);
    if (op === 'sum' && W.useWasm(store(v), out) && W.sum(v, axis, out)) return out;
    const x = dense(v);
    const o = out.data;
    if (op !== 'sum' && len === 0) throw new Error(`${op}: cannot reduce over an empty dim of ${fmt(v.shape)}`);
    for (let p = 0; p < outer; p++) {
      for (let q = 0; q < inner; q++) {
        const base = p * len * inner + q;
        if (op === 'sum') {
          let acc = 0; // a float64 accumulator: sums of many float32s stay accurate
          for (let l = 0; l < len; l++) acc += x[base + l * inner];
          o[p * inner + q] = acc;
        } else {
          let best = x[base];
          let arg = 0;
          for (let l = 1; l < len; l++) {
            const t = x[base + l * inner];
            if (t > best || (t !== t && best === best)) {
              best = t;
              arg = l;
            }
          }
          o[p * inner + q] = op === 'max' ? best : arg;
        }
      }
    }
    return out;
  }

  matmul(a: View, b: View): Storage {
    const r = a.shape.length;
    const [M, K, N] = [a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]];
    const batchShape = a.shape.slice(0, r - 2);
    const batch = numel(batchShape);
    // Offsets of each matrix in the batch: views may broadcast (stride 0) or be permuted.
    const aOffsets = new Array<number>(batch);
    const bOffsets = new Array<number>(batch);
    for (let i = 0; i < batch; i++) {
      let rem = i;
      let ao = a.offset;
      let bo = b.offset;
      for (let d = batchShape.length - 1; d >= 0; d--) {
        const k = rem % batchShape[d];
        rem = (rem - k) / batchShape[d];
        ao += k * a.strides[d];
        bo += k * b.strides[d];
      }
      aOffsets[i] = ao;
      bOffsets[i] = bo;
    }
    if (a.dtype === 'int32') throw new Error('matmul: int32 is not supported, cast to float32 first');
    const out = output(a.dtype, batch * M * N);
    const [ars, acs, brs, bcs] = [a.strides[r - 2], a.strides[r - 1], b.strides[r - 2], b.strides[r - 1]];
    const [sa, sb] = [a.storage as CpuStorage, b.storage as CpuStorage];
    if (a.dtype === 'float32' && W.useWasm(sa, sb, out)) {
      W.gemm({
        batch,
        M,
        N,
        K,
        a: sa.ptr,
        aOffsets,
        aRowStride: ars,
        aColStride: acs,
        b: sb.ptr,
        bf16: sb.bf16,
        bOffsets,
        bRowStride: brs,
        bColStride: bcs,
        c: out.ptr,
      });
      return out;
    }
    // C[p][i][j] = sum over k of A[p][i][k] B[p][k][j], summed in float64 and
    // rounded once: row i of C gathers A[i][k] times row k of B, for each k
    const [A, B, C] = [dataOf(a), dataOf(b), out.data];
    const row = new Float64Array(N);
    for (let p = 0; p < batch; p++) {
      for (let i = 0; i < M; i++) {
        row.fill(0);
        for (let k = 0; k < K; k++) {
          const aik = A[aOffsets[p] + i * ars + k * acs];
          const bk = bOffsets[p] + k * brs;
          for (let j = 0; j < N; j++) row[j] += aik * B[bk + j * bcs];
        }
        C.set(row, (p * M + i) * N);
      }
    }
    return out;
  }

  gather(tv: View, iv: View): Storage {
    const [V, D] = tv.shape;
    const out = output(tv.dtype, numel(iv.shape) * D);
    const table = dense(tv);
    const ids = dense(iv);
    const o = out.data;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0 || id >= V) throw new Error(`embedding: index ${id} is out of range for a table of ${V} rows`);
      o.set(table.subarray(id * D, id * D + D), i * D);
    }
    return out;
  }

  scatterAdd(iv: View, sv: View, rows: number): Storage {
    const n = numel(iv.shape);
    const D = n === 0 ? 0 : numel(sv.shape) / n;
    const out = output(sv.dtype, rows * D, true);
    const ids = dense(iv);
    const src = dense(sv);
    const o = out.data;
    for (let i = 0; i < ids.length; i++) {
      const base = ids[i] * D;
      for (let d = 0; d < D; d++) o[base + d] += src[i * D + d];
    }
    return out;
  }

  softmax(v: View): Storage {
    const out = output(v.dtype, numel(v.shape));
    if (W.useWasm(store(v), out) && W.softmax(v, out)) return out;
    const x = dense(v);
    const [rows, cols] = rowsCols(v.shape);
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      // subtract the row max first: exp never overflows, the result is unchanged
      let max = -Infinity;
      for (let c = 0; c < cols; c++) max = Math.max(max, x[base + c]);
      let sum = 0;
      for (let c = 0; c < cols; c++) sum += o[base + c] = Math.exp(x[base + c] - max);
      for (let c = 0; c < cols; c++) o[base + c] /= sum;
    }
    return out;
  }

  logSoftmax(v: View): Storage {
    const out = output(v.dtype, numel(v.shape));
    if (W.useWasm(store(v), out) && W.logSoftmax(v, out)) return out;
    const x = dense(v);
    const [rows, cols] = rowsCols(v.shape);
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      const lse = logSumExp(x, base, cols);
      for (let c = 0; c < cols; c++) o[base + c] = x[base + c] - lse;
    }
    return out;
  }

  layerNorm(v: View, wv: View, bv: View, eps: number): Storage {
    const out = output(v.dtype, numel(v.shape));
    if (W.useWasm(store(v), store(wv), store(bv), out) && W.norm(v, wv, bv, eps, out)) return out;
    const x = dense(v);
    const w = dense(wv);
    const b = dense(bv);
    const [rows, cols] = rowsCols(v.shape);
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let mean = 0;
      for (let c = 0; c < cols; c++) mean += x[base + c];
      mean /= cols;
      let variance = 0; // biased, as PyTorch's LayerNorm
      for (let c = 0; c < cols; c++) variance += (x[base + c] - mean) ** 2;
      const rstd = 1 / Math.sqrt(variance / cols + eps);
      for (let c = 0; c < cols; c++) o[base + c] = (x[base + c] - mean) * rstd * w[c] + b[c];
    }
    return out;
  }

  rmsNorm(v: View, wv: View, eps: number): Storage {
    const out = output(v.dtype, numel(v.shape));
    if (W.useWasm(store(v), store(wv), out) && W.norm(v, wv, null, eps, out)) return out;
    const x = dense(v);
    const w = dense(wv);
    const [rows, cols] = rowsCols(v.shape);
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let ms = 0;
      for (let c = 0; c < cols; c++) ms += x[base + c] * x[base + c];
      const irms = 1 / Math.sqrt(ms / cols + eps);
      for (let c = 0; c < cols; c++) o[base + c] = x[base + c] * irms * w[c];
    }
    return out;
  }

  crossEntropy(lv: View, tv: View, ignoreIndex: number): Storage {
    const [rows, cols] = rowsCols(lv.shape);
    const out = output(lv.dtype, rows, true);
    if (W.useWasm(store(lv), store(tv), out) && W.crossEntropy(lv, tv, ignoreIndex, out)) return out;
    const x = dense(lv);
    const t = dense(tv);
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      if (t[r] === ignoreIndex) continue;
      if (t[r] < 0 || t[r] >= cols) throw new Error(`crossEntropy: target ${t[r]} is out of range for ${cols} classes`);
      o[r] = logSumExp(x, r * cols, cols) - x[r * cols + t[r]];
    }
    return out;
  }

  sort(v: View, descending: boolean): { values: Storage; indices: Storage } {
    const n = numel(v.shape);
    const [valuesOut, indicesOut] = [output(v.dtype, n), output('int32', n)];
    const x = dense(v);
    const [rows, cols] = rowsCols(v.shape);
    const [values, indices] = [valuesOut.data, indicesOut.data];
    const order = new Array<number>(cols);
    // NaN sorts as the largest value, as in PyTorch; ties keep their order (stable).
    const key = (i: number, base: number) => (x[base + i] !== x[base + i] ? Infinity : x[base + i]);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      for (let c = 0; c < cols; c++) order[c] = c;
      order.sort((i, j) => (descending ? key(j, base) - key(i, base) : key(i, base) - key(j, base)) || i - j);
      for (let c = 0; c < cols; c++) {
        values[base + c] = x[base + order[c]];
        indices[base + c] = order[c];
      }
    }
    return { values: valuesOut, indices: indicesOut };
  }

  attention(qv: View, kv: View, vv: View, opts: AttentionOptions): { out: Storage; lse: Storage } {
    const a = attentionShape(qv, kv);
    const [out, lse] = [output(qv.dtype, a.B * a.H * a.T * a.D), output(qv.dtype, a.B * a.H * a.T)];
    if (W.useWasm(out, lse) && W.attention(qv, kv, vv, opts, out, lse)) return { out, lse };
    const [q, k, v, o, l] = [dense(qv), dense(kv), dense(vv), out.data, lse.data];
    const scores = new Float64Array(a.Tk);
    forEachQuery(a, opts, (b, h, t, kh, last) => {
      const row = scoreRow(a, opts, q, k, b, h, t, kh, last, scores);
      l[(b * a.H + h) * a.T + t] = row.lse;
      // out[b, t, h] = sum_j p_j v_j, with p_j = exp(score_j - lse), dropped out or scaled
      const at = ((b * a.T + t) * a.H + h) * a.D;
      for (let d = 0; d < a.D; d++) {
        let acc = 0;
        for (let j = 0; j <= last; j++) acc += row.p(j) * v[((b * a.Hkv + kh) * a.Tk + j) * a.D + d];
        o[at + d] = acc;
      }
    });
    return { out, lse };
  }

  attentionBackward(
    qv: View,
    kv: View,
    vv: View,
    ov: View,
    gv: View,
    lseV: View,
    opts: AttentionOptions,
  ): { dq: Storage; dk: Storage; dv: Storage } {
    const a = attentionShape(qv, kv);
    const n = a.B * a.Hkv * a.Tk * a.D;
    const [dqS, dkS, dvS] = [
      output(qv.dtype, a.B * a.H * a.T * a.D, true),
      output(qv.dtype, n, true),
      output(qv.dtype, n, true),
    ];
    if (W.useWasm(dqS, dkS, dvS) && W.attentionBackward(qv, kv, vv, ov, gv, lseV, opts, dqS, dkS, dvS)) {
      return { dq: dqS, dk: dkS, dv: dvS };
    }
    const [q, k, v, o, g] = [dense(qv), dense(kv), dense(vv), dense(ov), dense(gv)];
    const [dq, dk, dv] = [dqS.data, dkS.data, dvS.data];
    const scores = new Float64Array(a.Tk);
    forEachQuery(a, opts, (b, h, t, kh, last) => {
      const row = scoreRow(a, opts, q, k, b, h, t, kh, last, scores);
      const qi = ((b * a.H + h) * a.T + t) * a.D; // q, out and gradOut rows: (B, H, T, D)
      const dqi = ((b * a.T + t) * a.H + h) * a.D; // dq rows: (B, T, H, D)
      let delta = 0; // sum_j p_j dp_j = gradOut . out
      for (let d = 0; d < a.D; d++) delta += g[qi + d] * o[qi + d];
      for (let j = 0; j <= last; j++) {
        const kj = ((b * a.Hkv + kh) * a.Tk + j) * a.D; // k and v rows: (B, Hkv, Tk, D)
        const dkj = ((b * a.Tk + j) * a.Hkv + kh) * a.D; // dk and dv rows: (B, Tk, Hkv, D)
        let dz = 0; // dLoss / d(probability after dropout)
        for (let d = 0; d < a.D; d++) dz += g[qi + d] * v[kj + d];
        const ds = row.prob(j) * (dz * row.keepScale(j) - delta); // through the softmax
        for (let d = 0; d < a.D; d++) {
          dq[dqi + d] += ds * opts.scale * k[kj + d];
          dk[dkj + d] += ds * opts.scale * q[qi + d];
          dv[dkj + d] += row.p(j) * g[qi + d];
        }
      }
    });
    return { dq: dqS, dk: dkS, dv: dvS };
  }

  /**
   * The moments are cold state: read and written once per step, by this
   * kernel alone. So those of large parameters move out of the WebAssembly
   * memory on first use (which holds at most 4 GiB: nanoVLM-222M's weights,
   * gradients and two moments together would not fit) and are streamed
   * through it in chunks. Small ones stay: their copies would cost more time
   * than their bytes are worth.
   */
  adamw(p: View, g: View, m: View, v: View, h: AdamWHyper, onlyIf: View | null): void {
    for (const x of [p, m, v])
      if (!isContiguous(x.shape, x.strides)) throw new Error('adamw: the parameter and its moments must be contiguous');
    if (onlyIf && this.readSync(onlyIf)[0] === 0) return;
    if (numel(p.shape) >= COLD_MOMENTS_MIN) {
      store(m).moveToHost();
      store(v).moveToHost();
    }
    dropCopy(store(p));
    if (W.useWasm(store(p), store(g)) && W.adamw(p, g, m, v, h)) return;
    const [pd, md, vd] = [dataOf(p), dataOf(m), dataOf(v)];
    const gd = dense(g);
    const f = p.dtype === 'float32' ? Math.fround : (x: number) => x; // each op rounds, as a tensor op would
    const [decay, b1, b2, b2c, eps] = [1 - h.lr * h.weightDecay, 1 - h.beta1, h.beta2, 1 - h.beta2, h.eps].map(f);
    const [c2, stepSize] = [f(Math.sqrt(1 - h.beta2 ** h.step)), f(h.lr / (1 - h.beta1 ** h.step))];
    for (let i = 0; i < gd.length; i++) {
      const [x, mi, vi] = [p.offset + i, m.offset + i, v.offset + i];
      md[mi] = f(md[mi] + f(f(gd[i] - md[mi]) * b1)); // m += (g - m) (1 - beta1)
      vd[vi] = f(f(vd[vi] * b2) + f(f(gd[i] * gd[i]) * b2c)); // v = beta2 v + (1 - beta2) g^2
      // p = p (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
      pd[x] = f(f(pd[x] * decay) - f(f(md[mi] / f(f(f(Math.sqrt(vd[vi])) / c2) + eps)) * stepSize));
    }
  }

  // ---------------------------------------------------------------- fused backward kernels
  // The backward passes of the row kernels: WebAssembly (kernels.ts) where it
  // runs, else these reference loops, one row at a time in float64. Weight
  // gradients are sums over the rows.

  layerNormBackward(xv: View, wv: View, gv: View, eps: number): { dx: Storage; dweight: Storage; dbias: Storage } {
    const [rows, cols] = rowsCols(xv.shape);
    const [dxS, dwS, dbS] = [output(xv.dtype, rows * cols), output(xv.dtype, cols), output(xv.dtype, cols)];
    const wasm = W.useWasm(store(xv), store(wv), store(gv), dxS, dwS, dbS);
    if (wasm && W.normBackward(xv, wv, gv, eps, { dx: dxS, dw: dwS, db: dbS })) {
      return { dx: dxS, dweight: dwS, dbias: dbS };
    }
    const [x, w, g] = [dense(xv), dense(wv), dense(gv)];
    const [dw, db] = [new Float64Array(cols), new Float64Array(cols)];
    const dx = dxS.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let mean = 0;
      for (let c = 0; c < cols; c++) mean += x[base + c];
      mean /= cols;
      let variance = 0;
      for (let c = 0; c < cols; c++) variance += (x[base + c] - mean) ** 2;
      const rstd = 1 / Math.sqrt(variance / cols + eps);
      // gx = g * weight; dx = rstd * (gx - mean(gx) - xhat * mean(gx * xhat))
      let [meanGx, meanGxXhat] = [0, 0];
      for (let c = 0; c < cols; c++) {
        const gx = g[base + c] * w[c];
        meanGx += gx / cols;
        meanGxXhat += (gx * (x[base + c] - mean) * rstd) / cols;
      }
      for (let c = 0; c < cols; c++) {
        const xhat = (x[base + c] - mean) * rstd;
        dx[base + c] = rstd * (g[base + c] * w[c] - meanGx - xhat * meanGxXhat);
        dw[c] += g[base + c] * xhat;
        db[c] += g[base + c];
      }
    }
    dwS.data.set(dw);
    dbS.data.set(db);
    return { dx: dxS, dweight: dwS, dbias: dbS };
  }

  rmsNormBackward(xv: View, wv: View, gv: View, eps: number): { dx: Storage; dweight: Storage } {
    const [rows, cols] = rowsCols(xv.shape);
    const [dxS, dwS] = [output(xv.dtype, rows * cols), output(xv.dtype, cols)];
    const wasm = W.useWasm(store(xv), store(wv), store(gv), dxS, dwS);
    if (wasm && W.normBackward(xv, wv, gv, eps, { dx: dxS, dw: dwS, db: null })) return { dx: dxS, dweight: dwS };
    const [x, w, g] = [dense(xv), dense(wv), dense(gv)];
    const dw = new Float64Array(cols);
    const dx = dxS.data;
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let ms = 0;
      for (let c = 0; c < cols; c++) ms += x[base + c] * x[base + c];
      const irms = 1 / Math.sqrt(ms / cols + eps);
      // gx = g * weight; dx = irms * (gx - xhat * mean(gx * xhat))
      let meanGxXhat = 0;
      for (let c = 0; c < cols; c++) meanGxXhat += (g[base + c] * w[c] * x[base + c] * irms) / cols;
      for (let c = 0; c < cols; c++) {
        const xhat = x[base + c] * irms;
        dx[base + c] = irms * (g[base + c] * w[c] - xhat * meanGxXhat);
        dw[c] += g[base + c] * xhat;
      }
    }
    dwS.data.set(dw);
    return { dx: dxS, dweight: dwS };
  }

  matmulF16(a: View, b: View): Storage {
    // the operands rounded to float16 into temporary buffers, then the float32 product
    const rounded = [a, b].map((v) => {
      const s = output('float32', numel(v.shape));
      const x = dense(v, 'float32');
      s.data.set(x.map(roundToHalf));
      return { storage: s, shape: v.shape, strides: contiguousStrides(v.shape), offset: 0, dtype: 'float32' as const };
    });
    try {
      return this.matmul(rounded[0], rounded[1]);
    } finally {
      for (const r of rounded) this.release(r.storage);
    }
  }

  crossEntropyBackward(lv: View, tv: View, gv: View, ignoreIndex: number): Storage {
    const [rows, cols] = rowsCols(lv.shape);
    const out = output(lv.dtype, rows * cols, true);
    if (W.useWasm(store(lv), store(tv), store(gv), out) && W.crossEntropyBackward(lv, tv, gv, ignoreIndex, out))
      return out;
    const [x, t, g] = [dense(lv), dense(tv), dense(gv)];
    const o = out.data;
    for (let r = 0; r < rows; r++) {
      if (t[r] === ignoreIndex) continue; // an ignored row keeps its zeros
      const base = r * cols;
      let max = -Infinity;
      for (let c = 0; c < cols; c++) max = Math.max(max, x[base + c]);
      let sum = 0;
      for (let c = 0; c < cols; c++) {
        o[base + c] = Math.exp(x[base + c] - max);
        sum += o[base + c];
      }
      // (softmax - onehot(target)) * g
      const scale = g[r] / sum;
      for (let c = 0; c < cols; c++) o[base + c] *= scale;
      o[base + t[r]] -= g[r];
    }
    return out;
  }
}

/**
 * Keeps a bfloat16 copy of each tensor's values for the CPU's matrix-vector
 * products (x @ W^T with fewer than 6 rows of x: decoding a token). Those
 * read every weight once per token, so memory bandwidth bounds them, and the
 * copy halves the bytes. The products then use weights rounded to 8
 * significant bits (bfloat16's; weights that came from a bf16 file are
 * unchanged) and sum in another order; products with more rows (a prompt),
 * x @ W, and every other op still read the float32 values, and a write into a
 * tensor (a load, an optimizer step) drops its copy. For inference (generate.ts
 * --dtype bfloat16); a tensor off the CPU, or that does not fit the memory, is
 * left as it is. The copies count in memory().
 */
export function keepBf16Copies(tensors: Tensor[]): void {
  for (const t of tensors) {
    const s = t.storage as CpuStorage;
    if (t.device !== 'cpu' || s.bf16 >= 0) continue;
    if (s.makeBf16()) live.bytes += 2 * s.length;
  }
}

/** Frees the copies keepBf16Copies made: the products read the float32 values again. */
export function dropBf16Copies(tensors: Tensor[]): void {
  for (const t of tensors) if (t.device === 'cpu') dropCopy(t.storage as CpuStorage);
}

/** Drops a storage's bfloat16 copy: its values are about to change, or it is freed. */
function dropCopy(s: CpuStorage): void {
  if (s.bf16 < 0) return;
  s.dropBf16();
  live.bytes -= 2 * s.length;
}

/** The sizes of an attention call: q (B, H, T, D), k and v (B, Hkv, Tk, D). */
interface AttentionShape {
  B: number;
  H: number;
  T: number;
  D: number;
  Hkv: number;
  Tk: number;
}

function attentionShape(q: View, k: View): AttentionShape {
  const [B, H, T, D] = q.shape;
  return { B, H, T, D, Hkv: k.shape[1], Tk: k.shape[2] };
}

/** Calls fn for every query row with its key/value head and the last key it may see. */
function forEachQuery(
  a: AttentionShape,
  opts: AttentionOptions,
  fn: (b: number, h: number, t: number, kh: number, last: number) => void,
): void {
  const group = a.H / a.Hkv; // query heads per key/value head
  for (let b = 0; b < a.B; b++) {
    for (let h = 0; h < a.H; h++) {
      for (let t = 0; t < a.T; t++) fn(b, h, t, Math.floor(h / group), opts.causal ? a.Tk - a.T + t : a.Tk - 1);
    }
  }
}

/**
 * One query row's scores s_j = q . k_j * scale + mask (for j <= last) and
 * their log-sum-exp. prob(j) is softmax(s)_j, keepScale(j) the dropout factor
 * (0 or 1 / (1 - p)), p(j) their product: the weight of v_j in the output.
 */
function scoreRow(
  a: AttentionShape,
  opts: AttentionOptions,
  q: TypedArray,
  k: TypedArray,
  b: number,
  h: number,
  t: number,
  kh: number,
  last: number,
  s: Float64Array,
) {
  const m = opts.mask;
  const maskData = m ? dataOf(m) : null;
  const qi = ((b * a.H + h) * a.T + t) * a.D;
  let max = -Infinity;
  for (let j = 0; j <= last; j++) {
    let dot = 0;
    for (let d = 0; d < a.D; d++) dot += q[qi + d] * k[((b * a.Hkv + kh) * a.Tk + j) * a.D + d];
    const bias = m
      ? maskData![m.offset + b * m.strides[0] + h * m.strides[1] + t * m.strides[2] + j * m.strides[3]]
      : 0;
    s[j] = dot * opts.scale + bias;
    max = Math.max(max, s[j]);
  }
  let sum = 0;
  for (let j = 0; j <= last; j++) sum += Math.exp(s[j] - max);
  const lse = max + Math.log(sum);
  const drop = opts.dropout;
  const threshold = drop ? Math.floor(drop.p * 2 ** 32) : 0;
  const first = ((b * a.H + h) * a.T + t) * a.Tk; // flat index of score j = 0
  const keepScale = (j: number) => (!drop ? 1 : dropoutKeeps(first + j, drop.seed, threshold) ? 1 / (1 - drop.p) : 0);
  const prob = (j: number) => Math.exp(s[j] - lse);
  return { lse, prob, keepScale, p: (j: number) => prob(j) * keepScale(j) };
}

/** log(sum(exp(x[base..base+n]))), computed stably by factoring out the max. */
function logSumExp(x: TypedArray, base: number, n: number): number {
  let max = -Infinity;
  for (let c = 0; c < n; c++) max = Math.max(max, x[base + c]);
  if (max === -Infinity) return -Infinity;
  let sum = 0;
  for (let c = 0; c < n; c++) sum += Math.exp(x[base + c] - max);
  return max + Math.log(sum);
}
