// Fused scaled-dot-product attention (the contract is in backend.ts), in its
// simplest correct form: one thread per query row walks every key it may see
// with an online softmax (running max and sum), so no (T, Tk) tensor exists.
// The backward pass recomputes each probability from the saved log-sum-exp:
// one kernel per query row for dq (and delta = gradOut . out), one per key row
// for dk and dv, each summing over the query heads that share that key head.
//
// Params (u32 words): [B, H, Hkv, T, Tk, scale bits, causal, dropout threshold,
// seed, dropout scale bits, has dropout], then offset + 4 strides of q, k, v,
// mask, out, gradOut (out and gradOut in the backward pass only).

import { type Access, type Kernel, binding, memo, prelude } from './common.ts';

/** Threads per workgroup. */
export const ATTENTION_WORKGROUP = 64;
/** The largest head dim the kernels keep in registers. */
export const ATTENTION_MAX_HEAD_DIM = 256;

/** Where view k (0..5: q, k, v, mask, out, gradOut) starts in the params. */
export const attentionViewAt = (k: number): number => 11 + 5 * k;

// Sizes, the element offset of (i0, i1, i2, i3) in view k, the score of query
// row (b, h, t) against key j, and the dropout factor of score n.
const helpers = (D: number, hasMask: boolean) => /* wgsl */ `
fn at(k: u32, i0: u32, i1: u32, i2: u32, i3: u32) -> u32 {
  let s = ${attentionViewAt(0)}u + 5u * k;
  return p(s) + i0 * p(s + 1u) + i1 * p(s + 2u) + i2 * p(s + 3u) + i3 * p(s + 4u);
}
fn nB() -> u32 { return p(0u); }
fn nH() -> u32 { return p(1u); }
fn nHkv() -> u32 { return p(2u); }
fn nT() -> u32 { return p(3u); }
fn nTk() -> u32 { return p(4u); }
// the last key a query at row t may see: all keys, or those up to its position
fn lastKey(t: u32) -> u32 { return select(nTk() - 1u, nTk() - nT() + t, p(6u) != 0u); }
fn maskAt(b: u32, h: u32, t: u32, j: u32) -> f32 {
  ${hasMask ? 'return mask[at(3u, b, h, t, j)];' : 'return 0.0;'}
}
fn score(qr: ptr<function, array<f32, ${D}>>, b: u32, h: u32, kh: u32, t: u32, j: u32) -> f32 {
  var s = 0.0;
  for (var d = 0u; d < ${D}u; d++) { s += (*qr)[d] * k[at(1u, b, kh, j, d)]; }
  return s * pf(5u) + maskAt(b, h, t, j);
}
fn hash32(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
  return x;
}
fn keepScale(n: u32) -> f32 {
  if (p(10u) == 0u) { return 1.0; }
  return select(0.0, pf(9u), hash32(n * 0x9e3779b9u + p(8u)) >= p(7u));
}
fn isNegInf(x: f32) -> bool { return isinf_(x) && x < 0.0; }
`;

/** Storage access of a kernel: `writes` outputs, then `reads` inputs. */
const access = (writes: number, reads: number): Access[] => [
  ...Array<Access>(writes).fill('read_write'),
  ...Array<Access>(reads).fill('read'),
];

const inputs = (hasMask: boolean, first: number) =>
  ['q', 'k', 'v', ...(hasMask ? ['mask'] : [])].map((n, i) => binding(first + i, n, 'f32', 'read')).join('\n');

/** Forward: out (B, T, H, D) and lse (B, H, T), one thread per query row. */
export const attentionKernel = memo((D: number, hasMask: boolean): Kernel => {
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'lse', 'f32', 'read_write')}
${inputs(hasMask, 3)}
${helpers(D, hasMask)}
@compute @workgroup_size(${ATTENTION_WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = groupIndex(wid, nwg) * ${ATTENTION_WORKGROUP}u + lid;
  if (row >= nB() * nH() * nT()) { return; }
  let t = row % nT();
  let h = (row / nT()) % nH();
  let b = row / (nT() * nH());
  let kh = h / (nH() / nHkv());
  var qr: array<f32, ${D}>;
  for (var d = 0u; d < ${D}u; d++) { qr[d] = q[at(0u, b, h, t, d)]; }
  var acc: array<f32, ${D}>;
  var m = -inf();
  var l = 0.0;
  for (var j = 0u; j <= lastKey(t); j++) {
    let s = score(&qr, b, h, kh, t, j);
    if (isNegInf(s)) { continue; } // contributes exp(-inf) = 0
    // online softmax: rescale what was summed so far to the new running max
    let mNew = max(m, s);
    let corr = select(exp_(m - mNew), 0.0, isNegInf(m));
    let e = exp_(s - mNew);
    l = l * corr + e;
    let w = e * keepScale(row * nTk() + j);
    for (var d = 0u; d < ${D}u; d++) { acc[d] = acc[d] * corr + w * v[at(2u, b, kh, j, d)]; }
    m = mNew;
  }
  let base = ((b * nT() + t) * nH() + h) * ${D}u;
  for (var d = 0u; d < ${D}u; d++) { out[base + d] = fdiv(acc[d], l); }
  lse[row] = m + log_(l);
}`;
  return { key: `attention:${D}:${hasMask}`, code, workgroupSize: ATTENTION_WORKGROUP, storage: access(2, hasMask ? 4 : 3) };
});

/** Backward, per query row: dq (B, T, H, D) and delta = gradOut . out (B, H, T). */
export const attentionDqKernel = memo((D: number, hasMask: boolean): Kernel => {
  const code = /* wgsl */ `${prelude}
${binding(1, 'dq', 'f32', 'read_write')}
${binding(2, 'delta', 'f32', 'read_write')}
${binding(3, 'lse', 'f32', 'read')}
${binding(4, 'o', 'f32', 'read')}
${binding(5, 'g', 'f32', 'read')}
${inputs(hasMask, 6)}
${helpers(D, hasMask)}
@compute @workgroup_size(${ATTENTION_WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = groupIndex(wid, nwg) * ${ATTENTION_WORKGROUP}u + lid;
  if (row >= nB() * nH() * nT()) { return; }
  let t = row % nT();
  let h = (row / nT()) % nH();
  let b = row / (nT() * nH());
  let kh = h / (nH() / nHkv());
  var qr: array<f32, ${D}>;
  var gr: array<f32, ${D}>;
  var dlt = 0.0;
  for (var d = 0u; d < ${D}u; d++) {
    qr[d] = q[at(0u, b, h, t, d)];
    gr[d] = g[at(5u, b, h, t, d)];
    dlt += gr[d] * o[at(4u, b, h, t, d)];
  }
  var acc: array<f32, ${D}>;
  for (var j = 0u; j <= lastKey(t); j++) {
    let s = score(&qr, b, h, kh, t, j);
    if (isNegInf(s)) { continue; }
    var dz = 0.0;
    for (var d = 0u; d < ${D}u; d++) { dz += gr[d] * v[at(2u, b, kh, j, d)]; }
    let ds = exp_(s - lse[row]) * (dz * keepScale(row * nTk() + j) - dlt) * pf(5u);
    for (var d = 0u; d < ${D}u; d++) { acc[d] += ds * k[at(1u, b, kh, j, d)]; }
  }
  let base = ((b * nT() + t) * nH() + h) * ${D}u;
  for (var d = 0u; d < ${D}u; d++) { dq[base + d] = acc[d]; }
  delta[row] = dlt;
}`;
  return { key: `attention.dq:${D}:${hasMask}`, code, workgroupSize: ATTENTION_WORKGROUP, storage: access(2, hasMask ? 7 : 6) };
});

/** Backward, per key row: dk and dv (B, Tk, Hkv, D), summed over the query heads sharing the key head. */
export const attentionDkvKernel = memo((D: number, hasMask: boolean): Kernel => {
  const code = /* wgsl */ `${prelude}
${binding(1, 'dk', 'f32', 'read_write')}
${binding(2, 'dv', 'f32', 'read_write')}
${binding(3, 'lse', 'f32', 'read')}
${binding(4, 'delta', 'f32', 'read')}
${binding(5, 'g', 'f32', 'read')}
${inputs(hasMask, 6)}
${helpers(D, hasMask)}
@compute @workgroup_size(${ATTENTION_WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let key = groupIndex(wid, nwg) * ${ATTENTION_WORKGROUP}u + lid;
  if (key >= nB() * nHkv() * nTk()) { return; }
  let j = key % nTk();
  let kh = (key / nTk()) % nHkv();
  let b = key / (nTk() * nHkv());
  let group = nH() / nHkv();
  var vr: array<f32, ${D}>;
  for (var d = 0u; d < ${D}u; d++) { vr[d] = v[at(2u, b, kh, j, d)]; }
  var dkAcc: array<f32, ${D}>;
  var dvAcc: array<f32, ${D}>;
  var qr: array<f32, ${D}>;
  for (var h = kh * group; h < (kh + 1u) * group; h++) {
    for (var t = 0u; t < nT(); t++) {
      if (j > lastKey(t)) { continue; }
      for (var d = 0u; d < ${D}u; d++) { qr[d] = q[at(0u, b, h, t, d)]; }
      let s = score(&qr, b, h, kh, t, j);
      if (isNegInf(s)) { continue; }
      let row = (b * nH() + h) * nT() + t;
      let pr = exp_(s - lse[row]);
      let keep = keepScale(row * nTk() + j);
      var dz = 0.0;
      for (var d = 0u; d < ${D}u; d++) { dz += g[at(5u, b, h, t, d)] * vr[d]; }
      let ds = pr * (dz * keep - delta[row]) * pf(5u);
      for (var d = 0u; d < ${D}u; d++) {
        dkAcc[d] += ds * qr[d];
        dvAcc[d] += pr * keep * g[at(5u, b, h, t, d)];
      }
    }
  }
  let base = ((b * nTk() + j) * nHkv() + kh) * ${D}u;
  for (var d = 0u; d < ${D}u; d++) {
    dk[base + d] = dkAcc[d];
    dv[base + d] = dvAcc[d];
  }
}`;
  return { key: `attention.dkv:${D}:${hasMask}`, code, workgroupSize: ATTENTION_WORKGROUP, storage: access(2, hasMask ? 7 : 6) };
});
