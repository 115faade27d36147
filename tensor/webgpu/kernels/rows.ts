// Fused row kernels over the last axis: softmax, logSoftmax, layerNorm,
// rmsNorm and cross-entropy. One workgroup per row: the threads stride over
// the row's columns, then combine their partial max/sum in workgroup memory
// (a tree of log2(WG) steps), so a 49152-wide vocabulary row takes WG
// threads instead of one. The row's statistics are then known to every
// thread, which writes its columns. Nothing is materialised between passes:
// a row is re-read from global memory instead (it is usually still in cache).
//
// Params: [rows, cols, colStride, R outer dims: shape[0..R), xOffset, xStrides[0..R),
//          then the kernel's extras at extrasAt(R)].

import type { DType } from '../../dtype.ts';
import { type Kernel, binding, memo, prelude, stridedOffsets } from './common.ts';

/** The fused row ops. */
export type RowOp = 'softmax' | 'logSoftmax' | 'layerNorm' | 'rmsNorm' | 'crossEntropy';

/** Threads per row: a small workgroup for short rows, a wide one for long rows. */
export function rowWorkgroup(cols: number): number {
  return cols <= 256 ? 64 : 256;
}

/** Where the extra params start for R outer dims. */
function extrasAt(rank: number): number {
  return 3 + rank + 1 + rank;
}

// A tree sum/max over the workgroup, returned to every thread. The barrier
// before the first write is not redundant: Mesa's llvmpipe (22.3) lets the
// read of red[0] from the previous reduction happen late, after the barrier
// that ends it, so without this one a fast thread could overwrite red[0]
// with the next reduction's input first.
export function reducers(wg: number): string {
  return /* wgsl */ `
var<workgroup> red: array<f32, ${wg}>;
fn maxNaN(a: f32, b: f32) -> f32 { return select(b, a, a > b || isnan_(a)); }
fn wgSum(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn wgMax(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = maxNaN(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
}

/** log(sum(exp(row))) into `lse`, stable: the max is factored out first. */
export const logSumExp = /* wgsl */ `
  var m = -inf();
  for (var c = lid; c < cols; c += WG) { m = maxNaN(m, x[o0 + c * cs]); }
  m = wgMax(m, lid);
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { s += exp_(x[o0 + c * cs] - m); }
  s = wgSum(s, lid);
  let lse = select(m + log_(s), -inf(), m == -inf());`;

/** The body of each row op; `o0` is the row's offset, `dst` its first output. */
function body(op: RowOp, e: number): string {
  switch (op) {
    case 'softmax':
      return /* wgsl */ `
  var m = -inf();
  for (var c = lid; c < cols; c += WG) { m = maxNaN(m, x[o0 + c * cs]); }
  m = wgMax(m, lid);
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { s += exp_(x[o0 + c * cs] - m); }
  s = wgSum(s, lid);
  for (var c = lid; c < cols; c += WG) { out[dst + c] = fdiv(exp_(x[o0 + c * cs] - m), s); }`;
    case 'logSoftmax':
      return /* wgsl */ `${logSumExp}
  for (var c = lid; c < cols; c += WG) { out[dst + c] = x[o0 + c * cs] - lse; }`;
    case 'layerNorm':
      // two passes (mean, then the variance of x - mean): no cancellation for large means
      return /* wgsl */ `
  let n = f32(cols);
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { s += x[o0 + c * cs]; }
  let mean = wgSum(s, lid) / n;
  var v = 0.0;
  for (var c = lid; c < cols; c += WG) { let d = x[o0 + c * cs] - mean; v += d * d; }
  let rstd = 1.0 / sqrt(wgSum(v, lid) / n + pf(${e + 4}u));
  for (var c = lid; c < cols; c += WG) {
    let wc = w[p(${e}u) + c * p(${e + 1}u)];
    out[dst + c] = (x[o0 + c * cs] - mean) * rstd * wc + bias[p(${e + 2}u) + c * p(${e + 3}u)];
  }`;
    case 'rmsNorm':
      return /* wgsl */ `
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { let v = x[o0 + c * cs]; s += v * v; }
  let irms = 1.0 / sqrt(wgSum(s, lid) / f32(cols) + pf(${e + 2}u));
  for (var c = lid; c < cols; c += WG) { out[dst + c] = x[o0 + c * cs] * irms * w[p(${e}u) + c * p(${e + 1}u)]; }`;
    case 'crossEntropy':
      // A GPU cannot throw: an out-of-range target gives NaN, which poisons the loss visibly.
      return /* wgsl */ `${logSumExp}
  if (lid == 0u) {
    let t = tgt[p(${e}u) + row * p(${e + 1}u)];
    var r = 0.0;
    if (t != pi(${e + 2}u)) {
      if (t < 0 || u32(t) >= cols) { r = nan(); } else { r = lse - x[o0 + u32(t) * cs]; }
    }
    out[row] = r;
  }`;
  }
}

/**
 * The kernel for a row op with R outer dims. Extras: layerNorm [wOff, wStride,
 * bOff, bStride, eps], rmsNorm [wOff, wStride, eps], crossEntropy [tOff,
 * tStride, ignoreIndex].
 */
export const rowKernel = memo((op: RowOp, rank: number, wg: number): Kernel => {
  const e = extrasAt(rank);
  const extra: Record<RowOp, string[]> = {
    softmax: [],
    logSoftmax: [],
    layerNorm: [binding(3, 'w', 'f32', 'read'), binding(4, 'bias', 'f32', 'read')],
    rmsNorm: [binding(3, 'w', 'f32', 'read')],
    crossEntropy: [binding(3, 'tgt', 'i32', 'read')],
  };
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'x', 'f32', 'read')}
${extra[op].join('\n')}
${reducers(wg)}
const WG = ${wg}u;
@compute @workgroup_size(${wg})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = groupIndex(wid, nwg);
  if (row >= p(0u)) { return; }
  let cols = p(1u);
  let cs = p(2u);
  let dst = row * cols;
  ${stridedOffsets('row', rank, 3, [3 + rank])}
  ${body(op, e)}
}`;
  return {
    key: `row.${op}:${rank}:${wg}`,
    code,
    workgroupSize: wg,
    storage: ['read_write', 'read', ...extra[op].map(() => 'read' as const)],
  };
});

/** Row ops compute in float32 only. */
export function checkRowDtype(op: string, dtype: DType): void {
  if (dtype !== 'float32') throw new Error(`webgpu ${op}: expected float32, got ${dtype}`);
}
