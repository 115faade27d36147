// Reductions over one axis of a strided view: sum, max, argmax. The output
// has the axis removed; its elements are indexed by the other ("outer") dims.
//
// Two shapes of work: a short axis gets one thread per output element (a
// plain loop, in the CPU's order); a long axis gets one workgroup per output,
// where threads stride over the axis and then combine their partial results
// in workgroup memory as a tree (log2(WG) steps instead of WG sequential adds).
// A very long axis (a whole bucket of gradients, tens of millions of
// elements) is cut into chunks of REDUCE_CHUNK, a workgroup each, whose
// partial results a second reduction combines (backend.ts): one workgroup
// would leave all but one of a GPU's cores idle (and llvmpipe's GLES driver
// gets a sum over 4 Mi elements in one workgroup wrong).
//
// max/argmax keep (value, index) pairs and compare them with `better`: NaN
// beats everything and, among equals, the smaller index wins, so the result
// is the CPU's (NaN wins, first index on ties) whatever order threads combine in.
//
// Params: [outputs (of the long variant: outputs x chunks), len, axisStride, chunk length,
//   outer rank R: shape[0..R), offset, strides[0..R)].

import type { ReduceOp } from '../../backend.ts';
import type { DType } from '../../dtype.ts';
import { type Kernel, binding, memo, prelude, stridedOffsets, wgslType } from './common.ts';

/** Workgroup size of the long-axis variant. */
export const REDUCE_WORKGROUP = 64;
/** Axes up to this long use one thread per output. */
export const SHORT_AXIS = 64;
/** Elements per workgroup of a chunked long-axis sum or max (64 per thread). */
export const REDUCE_CHUNK = 4096;

function betterFn(t: string): string {
  return t === 'f32'
    ? /* wgsl */ `
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  if (bi == 0xffffffffu) { return true; }
  let vn = isnan_(v);
  let bn = isnan_(bv);
  if (vn || bn) { return vn && (!bn || i < bi); }
  return v > bv || (v == bv && i < bi);
}`
    : /* wgsl */ `
fn better(v: i32, i: u32, bv: i32, bi: u32) -> bool {
  if (bi == 0xffffffffu) { return true; }
  return v > bv || (v == bv && i < bi);
}`;
}

/** A reduction kernel for `op` over an axis, with `rank` outer dims. */
export const reduceKernel = memo((op: ReduceOp, dtype: DType, rank: number, longAxis: boolean): Kernel => {
  const t = wgslType(dtype);
  const outT = op === 'argmax' ? 'i32' : t;
  const sum = op === 'sum';
  const WG = REDUCE_WORKGROUP;
  const header = /* wgsl */ `${prelude}
${binding(1, 'out', outT, 'read_write')}
${binding(2, 'x', t, 'read')}
${sum ? '' : betterFn(t)}`;
  const result = sum ? 'acc' : op === 'max' ? 'best' : 'i32(bestI)';
  // Accumulate elements start, start+step, ... < end of the row at o0.
  const loop = (start: string, step: string, end: string) =>
    sum
      ? `var acc: ${t} = ${t}(0);
    for (var l = ${start}; l < ${end}; l += ${step}) { acc += x[o0 + l * st]; }`
      : `var best: ${t} = ${t}(0);
    var bestI = 0xffffffffu;
    for (var l = ${start}; l < ${end}; l += ${step}) {
      let v = x[o0 + l * st];
      if (better(v, l, best, bestI)) { best = v; bestI = l; }
    }`;
  // one step of the tree reduction of an arg-reduction: take the other half's candidate if it is better
  const argStep =
    'if (si[lid + s] != 0xffffffffu && better(sv[lid + s], si[lid + s], sv[lid], si[lid])) ' +
    '{ sv[lid] = sv[lid + s]; si[lid] = si[lid + s]; }';
  const code = longAxis
    ? /* wgsl */ `${header}
var<workgroup> sv: array<${t}, ${WG}>;
var<workgroup> si: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let g = groupIndex(wid, nwg);
  if (g >= p(0u)) { return; }
  let len = p(1u);
  let st = p(2u);
  // workgroup g sums chunk c of output o's axis
  let chunk = p(3u);
  let chunks = (len + chunk - 1u) / chunk;
  let o = g / chunks;
  let lo = (g % chunks) * chunk;
  let hi = min(len, lo + chunk);
  ${stridedOffsets('o', rank, 4, [4 + rank])}
  ${loop('lo + lid', `${WG}u`, 'hi')}
  ${sum ? 'sv[lid] = acc;' : 'sv[lid] = best; si[lid] = bestI;'}
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      ${sum ? 'sv[lid] += sv[lid + s];' : argStep}
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    ${sum ? 'out[g] = sv[0];' : op === 'max' ? 'out[g] = sv[0];' : 'out[g] = i32(si[0]);'}
  }
}`
    : /* wgsl */ `${header}
@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let g = groupIndex(wid, nwg) * ${WG}u + lid;
  if (g >= p(0u)) { return; }
  let len = p(1u);
  let st = p(2u);
  ${stridedOffsets('g', rank, 4, [4 + rank])}
  ${loop('0u', '1u', 'len')}
  out[g] = ${result};
}`;
  return {
    key: `reduce.${op}:${dtype}:${rank}:${longAxis ? 'wg' : 'thread'}`,
    code,
    workgroupSize: WG,
    storage: ['read_write', 'read'],
  };
});
