// The backward passes of the fused row kernels (rows.ts), one workgroup per
// row like the forward ones: the row's statistics are recomputed with
// workgroup sums, then every thread writes its columns. What they replace is
// a dozen elementwise ops and reductions per norm, and for cross-entropy
// about ten passes over the [N, 49152] logits of a vocabulary, each reading
// and writing the whole matrix.
//
// Norms: with xhat the normalised row and gx = gradOut * weight,
//   rmsNorm:   dx = irms (gx - xhat mean(gx xhat))
//   layerNorm: dx = rstd (gx - mean(gx) - xhat mean(gx xhat))
// and each row also writes gradOut * xhat (and, for layerNorm, gradOut) into
// a [rows, cols] scratch buffer whose column sums the backend then takes:
// dweight (and dbias). Params: [rows, cols, xColStride, R outer dims:
// shape[0..R), xOffset, xStrides[0..R), gColStride, gOffset, gStrides[0..R),
// wOffset, wStride, eps bits].
//
// Cross-entropy: (softmax(logits) - onehot(target)) * gradOut[row], zeros on
// ignored rows, NaN for a target outside [0, V) (the forward's NaN). Params:
// [rows, cols, colStride, R: shape, offset, strides, tOffset, tStride,
// ignoreIndex, gOffset, gStride].

import { type Kernel, binding, memo, prelude, stridedOffsets } from './common.ts';
import { logSumExp, reducers } from './rows.ts';

/** Where the g view starts in the norm backward params (after rows, cols, xColStride, shape, x view). */
const gViewAt = (rank: number) => 5 + 2 * rank;

/** dx and the weight-gradient scratch of layerNorm or rmsNorm, rows with R outer dims. */
export const normBackwardKernel = memo((kind: 'layerNorm' | 'rmsNorm', rank: number, wg: number): Kernel => {
  const e = gViewAt(rank) + 1 + rank; // wOffset, wStride, eps
  const stats =
    kind === 'rmsNorm'
      ? /* wgsl */ `
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { let v = x[o0 + c * xcs]; s += v * v; }
  let rstd = 1.0 / sqrt(wgSum(s, lid) / n + pf(${e + 2}u)); // 1 / rms
  let mean = 0.0;
  let meanGx = 0.0;`
      : /* wgsl */ `
  var s = 0.0;
  for (var c = lid; c < cols; c += WG) { s += x[o0 + c * xcs]; }
  let mean = wgSum(s, lid) / n;
  var v = 0.0;
  for (var c = lid; c < cols; c += WG) { let d = x[o0 + c * xcs] - mean; v += d * d; }
  let rstd = 1.0 / sqrt(wgSum(v, lid) / n + pf(${e + 2}u));
  var sg = 0.0;
  for (var c = lid; c < cols; c += WG) { sg += g[o1 + c * gcs] * w[p(${e}u) + c * p(${e + 1}u)]; }
  let meanGx = wgSum(sg, lid) / n;`;
  const code = /* wgsl */ `${prelude}
${binding(1, 'dx', 'f32', 'read_write')}
${binding(2, 'scratch', 'f32', 'read_write')}
${binding(3, 'x', 'f32', 'read')}
${binding(4, 'g', 'f32', 'read')}
${binding(5, 'w', 'f32', 'read')}
${reducers(wg)}
const WG = ${wg}u;
@compute @workgroup_size(${wg})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = groupIndex(wid, nwg);
  let rows = p(0u);
  if (row >= rows) { return; }
  let cols = p(1u);
  let n = f32(cols);
  let xcs = p(2u);
  let gcs = p(${gViewAt(rank) - 1}u);
  let dst = row * cols;
  ${stridedOffsets('row', rank, 3, [3 + rank, gViewAt(rank)])}
  ${stats}
  // mean(gx xhat), gx = g * weight
  var sx = 0.0;
  for (var c = lid; c < cols; c += WG) {
    sx += g[o1 + c * gcs] * w[p(${e}u) + c * p(${e + 1}u)] * (x[o0 + c * xcs] - mean);
  }
  let meanGxXhat = wgSum(sx, lid) * rstd / n;
  for (var c = lid; c < cols; c += WG) {
    let xhat = (x[o0 + c * xcs] - mean) * rstd;
    let gc = g[o1 + c * gcs];
    dx[dst + c] = rstd * (gc * w[p(${e}u) + c * p(${e + 1}u)] - meanGx - xhat * meanGxXhat);
    scratch[dst + c] = gc * xhat;${kind === 'layerNorm' ? '\n    scratch[rows * cols + dst + c] = gc;' : ''}
  }
}`;
  return {
    key: `row.${kind}Backward:${rank}:${wg}`,
    code,
    workgroupSize: wg,
    storage: ['read_write', 'read_write', 'read', 'read', 'read'],
  };
});

/** d crossEntropy / d logits, rows with R outer dims. */
export const crossEntropyBackwardKernel = memo((rank: number, wg: number): Kernel => {
  const e = 3 + rank + 1 + rank; // tOffset, tStride, ignoreIndex, gOffset, gStride
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'x', 'f32', 'read')}
${binding(3, 'tgt', 'i32', 'read')}
${binding(4, 'g', 'f32', 'read')}
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
  ${logSumExp}
  let t = tgt[p(${e}u) + row * p(${e + 1}u)];
  let gr = g[p(${e + 3}u) + row * p(${e + 4}u)];
  let ignored = t == pi(${e + 2}u);
  let outside = !ignored && (t < 0 || u32(t) >= cols);
  for (var c = lid; c < cols; c += WG) {
    var d = (exp_(x[o0 + c * cs] - lse) - select(0.0, 1.0, i32(c) == t)) * gr;
    if (ignored) { d = 0.0; }
    if (outside) { d = nan(); }
    out[dst + c] = d;
  }
}`;
  return {
    key: `row.crossEntropyBackward:${rank}:${wg}`,
    code,
    workgroupSize: wg,
    storage: ['read_write', 'read', 'read', 'read'],
  };
});
