// Fused scaled-dot-product attention (the contract is in backend.ts), flash
// style (FlashAttention-2): scores exist only in registers, never as a
// (T, Tk) tensor, and every key and value row read from global memory serves
// a whole tile of queries.
//
// Forward (attentionKernel). A workgroup owns up to 64 query rows of one
// key/value head: the rows (query head of the group, t) in that order, so
// the heads of a GQA group share each key/value tile. A thread owns one row
// and keeps q and its output accumulator in registers. The workgroup walks the
// keys in tiles of BK rows copied into workgroup memory (only up to the last
// key its rows may see under causal masking); per tile, each thread takes its
// scores, the tile's running max m, rescales what it summed so far by
// exp(m_old - m) and adds exp(s - m) v (online softmax: one pass over the
// keys). It writes out / l and the log-sum-exp m + log l.
//
// Decoding (attentionDecodeKernel + attentionCombineKernel). With one query
// (T = 1, the KV-cache step) a tile of queries would be one busy thread, so
// the keys are split instead: a workgroup per (b, h, chunk of 64 keys), a
// thread per key, the chunk's max and sum by a workgroup reduction, and its
// partial output sum_j exp(s_j - m) v_j with a thread per output column. The
// combine kernel merges the chunks' (m, l, acc) into the output and lse.
//
// Backward, from the saved lse: p = exp(s - lse) recomputes each probability.
// attentionDqKernel has the forward's layout (a thread per query row, K/V
// tiles in workgroup memory) and also writes delta = gradOut . out per row;
// attentionDkvKernel gives a thread to each key row (64 per workgroup) and
// walks the query rows of every head of its group in tiles of q and gradOut,
// so dk and dv come out summed over the group with no atomics:
//   dv_j += p keep g_i,   ds = p (keep g_i . v_j - delta_i),   dk_j += ds scale q_i,   dq_i += ds scale k_j
// (keep: the dropout factor of score (i, j), 0 or 1 / (1 - p)).
//
// Rows are vec4s (head dim D rounded up to D4 = ceil(D / 4), padded with
// zeros), so dot products and updates are vec4 operations; every operand is
// read through its strides. The kernels are specialised on D alone (the
// registers it takes).
//
// Params (u32 words): [B, H, Hkv, T, Tk, scale bits, causal, dropout threshold,
// seed, dropout scale bits, has dropout], then offset + 4 strides of q, k, v,
// mask, out, gradOut (out and gradOut in the backward pass only), then the
// number of key chunks (decoding).

import { type Access, type Kernel, binding, memo, prelude } from './common.ts';

/** Query rows per workgroup (forward, dq) and key rows per workgroup (dk, dv): one per thread. */
export const ATTENTION_ROWS = 64;
/** Keys per chunk of the decoding kernel (one per thread). */
export const ATTENTION_CHUNK = 64;
/** The largest head dim the kernels keep in registers. */
export const ATTENTION_MAX_HEAD_DIM = 256;
/** Where the decoding kernels read the number of key chunks. */
export const ATTENTION_CHUNKS_AT = 41;

/** vec4s in the two workgroup-memory tiles together: 16 KiB, the least every device offers. */
const TILE_VEC4S = 1024;

/** Rows of a K/V (or q/gradOut) tile for head dim D: two tiles of rows x D4 vec4s fit TILE_VEC4S. */
export function attentionTileRows(D: number): number {
  return Math.min(ATTENTION_ROWS, Math.floor(TILE_VEC4S / 2 / Math.ceil(D / 4)));
}

/** Where view k (0..5: q, k, v, mask, out, gradOut) starts in the params. */
const viewAt = (k: number): number => 11 + 5 * k;

// Sizes; the element offset of row (i0, i1, i2) of view k and its column
// stride; loading a row as vec4s; the last key a query may see; the mask; the
// dropout factor of score n.
const helpers = (D: number) => {
  const D4 = Math.ceil(D / 4);
  return /* wgsl */ `
const D = ${D}u;
const D4 = ${D4}u;
fn nB() -> u32 { return p(0u); }
fn nH() -> u32 { return p(1u); }
fn nHkv() -> u32 { return p(2u); }
fn nT() -> u32 { return p(3u); }
fn nTk() -> u32 { return p(4u); }
fn scale() -> f32 { return pf(5u); }
fn rowAt(k: u32, i0: u32, i1: u32, i2: u32) -> u32 {
  let s = ${viewAt(0)}u + 5u * k;
  return p(s) + i0 * p(s + 1u) + i1 * p(s + 2u) + i2 * p(s + 3u);
}
fn colStride(k: u32) -> u32 { return p(${viewAt(0)}u + 5u * k + 4u); }
// query t of T sees all keys, or (causal) those up to its position Tk - T + t
fn lastKey(t: u32) -> u32 { return select(nTk() - 1u, nTk() - nT() + t, p(6u) != 0u); }
// without a mask, a zero scalar with zero strides stands in (one kernel serves both cases)
fn maskAt(b: u32, h: u32, t: u32, j: u32) -> f32 { return mask[rowAt(3u, b, h, t) + j * colStride(3u)]; }
fn hash32(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
  return x;
}
// the dropout factor of the score with flat index n = ((b H + h) T + t) Tk + j
fn keepScale(n: u32) -> f32 {
  if (p(10u) == 0u) { return 1.0; }
  return select(0.0, pf(9u), hash32(n * 0x9e3779b9u + p(8u)) >= p(7u));
}
fn isNegInf(x: f32) -> bool { return isinf_(x) && x < 0.0; }
`;
};

/**
 * For each named binding x, x4(start, cs, d4): columns 4 d4 .. 4 d4 + 3 of the
 * row at element offset start with column stride cs, as a vec4 (zeros past D).
 */
const loaders = (...names: string[]) =>
  names
    .map(
      (x) => /* wgsl */ `
fn ${x}4(start: u32, cs: u32, d4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    let d = 4u * d4 + c;
    if (d < D) { r[c] = ${x}[start + d * cs]; }
  }
  return r;
}`,
    )
    .join('');

/** Storage access of a kernel: `writes` outputs, then `reads` inputs. */
const access = (writes: number, reads: number): Access[] => [
  ...Array<Access>(writes).fill('read_write'),
  ...Array<Access>(reads).fill('read'),
];

const inputs = (first: number) =>
  ['q', 'k', 'v', 'mask'].map((n, i) => binding(first + i, n, 'f32', 'read')).join('\n');

// A workgroup of ATTENTION_ROWS query rows of one key/value head (forward and
// dq): which b, kh and rows it owns, this thread's row (h, t), and kEnd, one
// past the last key any of its rows may see. All of it uniform but the row.
const queryRows = /* wgsl */ `
  let group = nH() / nHkv();
  let R = group * nT(); // rows of one key/value head: (query head in the group, t)
  let tiles = (R + ${ATTENTION_ROWS - 1}u) / ${ATTENTION_ROWS}u;
  let w = groupIndex(wid, nwg);
  let b = w / (nHkv() * tiles);
  let kh = (w / tiles) % nHkv();
  let r0 = (w % tiles) * ${ATTENTION_ROWS}u;
  let rLast = min(r0 + ${ATTENTION_ROWS}u, R) - 1u;
  // the rows may cross from one head to the next: then some row has t = T - 1
  let tMax = select(rLast % nT(), nT() - 1u, r0 / nT() != rLast / nT());
  let kEnd = lastKey(tMax) + 1u;
  let valid = r0 + lid < R;
  let r = min(r0 + lid, R - 1u);
  let h = kh * group + r / nT();
  let t = r % nT();
  let row = (b * nH() + h) * nT() + t; // flat (b, h, t): lse, delta, dropout
  // keys past this row's last one are skipped: n keys of the tile at j0 count
  let last = lastKey(t);`;

// Copies keys j0 .. j0 + BK - 1 of k and v (zeros past Tk) into Ks and Vs.
const loadKvTile = (BK: number, threads: number) => /* wgsl */ `
    workgroupBarrier(); // every thread is done with the previous tile
    for (var e = lid; e < ${BK}u * D4; e += ${threads}u) {
      let j = j0 + e / D4;
      var kx = vec4<f32>(0.0);
      var vx = vec4<f32>(0.0);
      if (j < nTk()) {
        kx = k4(rowAt(1u, b, kh, j), colStride(1u), e % D4);
        vx = v4(rowAt(2u, b, kh, j), colStride(2u), e % D4);
      }
      Ks[e] = kx;
      Vs[e] = vx;
    }
    workgroupBarrier();
    let n = select(0u, min(${BK}u, last + 1u - j0), valid && last + 1u > j0);`;

/** Forward: out (B, T, H, D) and lse (B, H, T), a workgroup per 64 query rows of one key/value head. */
export const attentionKernel = memo((D: number): Kernel => {
  const BK = attentionTileRows(D);
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'lse', 'f32', 'read_write')}
${inputs(3)}
${helpers(D)}
${loaders('q', 'k', 'v')}
var<workgroup> Ks: array<vec4<f32>, ${BK * Math.ceil(D / 4)}>;
var<workgroup> Vs: array<vec4<f32>, ${BK * Math.ceil(D / 4)}>;
@compute @workgroup_size(${ATTENTION_ROWS})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  ${queryRows}
  var qr: array<vec4<f32>, D4>;
  let qo = rowAt(0u, b, h, t);
  for (var d4 = 0u; d4 < D4; d4++) { qr[d4] = q4(qo, colStride(0u), d4); }
  var acc: array<vec4<f32>, D4>;
  var s: array<f32, ${BK}>;
  var m = -inf(); // running max of the scores so far
  var l = 0.0; // running sum of exp(score - m)
  for (var j0 = 0u; j0 < kEnd; j0 += ${BK}u) {
    ${loadKvTile(BK, ATTENTION_ROWS)}
    // (no continue or break under a per-thread condition here: the barriers need uniform control flow)
    var mt = m;
    for (var jj = 0u; jj < n; jj++) {
      var dotqk = 0.0;
      for (var d4 = 0u; d4 < D4; d4++) { dotqk += dot(qr[d4], Ks[jj * D4 + d4]); }
      s[jj] = dotqk * scale() + maskAt(b, h, t, j0 + jj);
      if (!isNegInf(s[jj])) { mt = max(mt, s[jj]); }
    }
    // all -inf so far (masked): exp(-inf) = 0 everywhere, nothing to add
    if (!isNegInf(mt)) {
      // online softmax: what was summed against the old max is rescaled to the new one
      let corr = select(exp_(m - mt), 0.0, isNegInf(m));
      l = l * corr;
      for (var d4 = 0u; d4 < D4; d4++) { acc[d4] = acc[d4] * corr; }
      for (var jj = 0u; jj < n; jj++) {
        if (isNegInf(s[jj])) { continue; }
        let e = exp_(s[jj] - mt);
        l += e;
        let wt = e * keepScale(row * nTk() + j0 + jj);
        for (var d4 = 0u; d4 < D4; d4++) { acc[d4] += wt * Vs[jj * D4 + d4]; }
      }
      m = mt;
    }
  }
  if (!valid) { return; }
  let o = ((b * nT() + t) * nH() + h) * D;
  for (var d = 0u; d < D; d++) { out[o + d] = fdiv(acc[d / 4u][d % 4u], l); }
  lse[row] = m + log_(l);
}`;
  return {
    key: `attention:${D}`,
    code,
    workgroupSize: ATTENTION_ROWS,
    storage: access(2, 4),
  };
});

/**
 * Decoding, part 1: for one query row (T = 1) and a chunk of 64 keys, the
 * chunk's max m, sum l of exp(s - m) and partial output sum exp(s - m) keep v,
 * into part[(row * chunks + chunk) * (D + 2) + (0: m, 1: l, 2..: acc)].
 */
export const attentionDecodeKernel = memo((D: number): Kernel => {
  const WG = ATTENTION_CHUNK;
  const code = /* wgsl */ `${prelude}
${binding(1, 'part', 'f32', 'read_write')}
${inputs(2)}
${helpers(D)}
${loaders('q', 'k')}
var<workgroup> qs: array<vec4<f32>, D4>;
var<workgroup> ws: array<f32, ${WG}>;
var<workgroup> red: array<f32, ${WG}>;
// a tree max / sum over the workgroup, returned to every thread (barriers as in rows.ts)
fn wgReduce(v: f32, lid: u32, isMax: bool) -> f32 {
  workgroupBarrier();
  red[lid] = v;
  workgroupBarrier();
  for (var st = ${WG / 2}u; st > 0u; st = st >> 1u) {
    if (lid < st) { red[lid] = select(red[lid] + red[lid + st], max(red[lid], red[lid + st]), isMax); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let chunks = p(${ATTENTION_CHUNKS_AT}u);
  let w = groupIndex(wid, nwg);
  let row = w / chunks; // (b, h): T = 1
  let chunk = w % chunks;
  let b = row / nH();
  let h = row % nH();
  let kh = h / (nH() / nHkv());
  for (var d4 = lid; d4 < D4; d4 += ${WG}u) { qs[d4] = q4(rowAt(0u, b, h, 0u), colStride(0u), d4); }
  workgroupBarrier();
  // a thread per key: its score (T = 1 sees every key, causal or not)
  let j = chunk * ${WG}u + lid;
  var s = -inf();
  if (j < nTk()) {
    let ko = rowAt(1u, b, kh, j);
    var dotqk = 0.0;
    for (var d4 = 0u; d4 < D4; d4++) { dotqk += dot(qs[d4], k4(ko, colStride(1u), d4)); }
    s = dotqk * scale() + maskAt(b, h, 0u, j);
  }
  // the max over finite stand-ins: a driver may assume that no infinity reaches max()
  let m = wgReduce(select(s, -3.4028234663852886e38, isNegInf(s)), lid, true);
  var e = 0.0;
  if (!isNegInf(s)) { e = exp_(s - m); }
  let l = wgReduce(e, lid, false);
  ws[lid] = e * keepScale(row * nTk() + j);
  workgroupBarrier();
  // a thread per output column: sum over the chunk's keys
  let base = (row * chunks + chunk) * (D + 2u);
  let n = min(${WG}u, nTk() - chunk * ${WG}u);
  for (var d = lid; d < D; d += ${WG}u) {
    var acc = 0.0;
    for (var jj = 0u; jj < n; jj++) { acc += ws[jj] * v[rowAt(2u, b, kh, chunk * ${WG}u + jj) + d * colStride(2u)]; }
    part[base + 2u + d] = acc;
  }
  if (lid == 0u) {
    // a chunk with nothing to see keeps m = -inf (its l is 0)
    part[base] = select(m, -inf(), l == 0.0);
    part[base + 1u] = l;
  }
}`;
  return {
    key: `attention.decode:${D}`,
    code,
    workgroupSize: WG,
    storage: access(1, 4),
  };
});

/** Decoding, part 2: merges the chunks of each query row into out (B, 1, H, D) and lse (B, H, 1). */
export const attentionCombineKernel = memo((D: number): Kernel => {
  const WG = 64;
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'lse', 'f32', 'read_write')}
${binding(3, 'part', 'f32', 'read')}
const D = ${D}u;
fn isNegInf(x: f32) -> bool { return isinf_(x) && x < 0.0; }
@compute @workgroup_size(${WG})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let chunks = p(${ATTENTION_CHUNKS_AT}u);
  let row = groupIndex(wid, nwg);
  if (row >= p(0u) * p(1u)) { return; }
  let first = row * chunks * (D + 2u);
  // the global max, and the chunks' sums rescaled to it
  var m = -inf();
  for (var c = 0u; c < chunks; c++) {
    let mc = part[first + c * (D + 2u)];
    if (!isNegInf(mc)) { m = max(m, mc); }
  }
  var l = 0.0;
  for (var c = 0u; c < chunks; c++) {
    let mc = part[first + c * (D + 2u)];
    if (!isNegInf(mc)) { l += part[first + c * (D + 2u) + 1u] * exp_(mc - m); }
  }
  for (var d = lid; d < D; d += ${WG}u) {
    var acc = 0.0;
    for (var c = 0u; c < chunks; c++) {
      let mc = part[first + c * (D + 2u)];
      if (!isNegInf(mc)) { acc += part[first + c * (D + 2u) + 2u + d] * exp_(mc - m); }
    }
    out[row * D + d] = fdiv(acc, l); // (B, 1, H, D) is (B, H) rows
  }
  if (lid == 0u) { lse[row] = m + log_(l); }
}`;
  return { key: `attention.combine:${D}`, code, workgroupSize: WG, storage: access(2, 1) };
});

/** Backward, per query row: dq (B, T, H, D) and delta = gradOut . out (B, H, T). */
export const attentionDqKernel = memo((D: number): Kernel => {
  const BK = attentionTileRows(D);
  const code = /* wgsl */ `${prelude}
${binding(1, 'dq', 'f32', 'read_write')}
${binding(2, 'delta', 'f32', 'read_write')}
${binding(3, 'lse', 'f32', 'read')}
${binding(4, 'o', 'f32', 'read')}
${binding(5, 'g', 'f32', 'read')}
${inputs(6)}
${helpers(D)}
${loaders('q', 'k', 'v', 'o', 'g')}
var<workgroup> Ks: array<vec4<f32>, ${BK * Math.ceil(D / 4)}>;
var<workgroup> Vs: array<vec4<f32>, ${BK * Math.ceil(D / 4)}>;
@compute @workgroup_size(${ATTENTION_ROWS})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  ${queryRows}
  var qr: array<vec4<f32>, D4>;
  var gr: array<vec4<f32>, D4>;
  var dlt = 0.0;
  let qo = rowAt(0u, b, h, t);
  let go = rowAt(5u, b, h, t);
  let oo = rowAt(4u, b, h, t);
  for (var d4 = 0u; d4 < D4; d4++) {
    qr[d4] = q4(qo, colStride(0u), d4);
    gr[d4] = g4(go, colStride(5u), d4);
    dlt += dot(gr[d4], o4(oo, colStride(4u), d4));
  }
  let lseRow = lse[row];
  var acc: array<vec4<f32>, D4>;
  for (var j0 = 0u; j0 < kEnd; j0 += ${BK}u) {
    ${loadKvTile(BK, ATTENTION_ROWS)}
    for (var jj = 0u; jj < n; jj++) {
      var dotqk = 0.0;
      var dz = 0.0;
      for (var d4 = 0u; d4 < D4; d4++) {
        dotqk += dot(qr[d4], Ks[jj * D4 + d4]);
        dz += dot(gr[d4], Vs[jj * D4 + d4]);
      }
      let s = dotqk * scale() + maskAt(b, h, t, j0 + jj);
      if (isNegInf(s)) { continue; }
      let ds = exp_(s - lseRow) * (dz * keepScale(row * nTk() + j0 + jj) - dlt);
      for (var d4 = 0u; d4 < D4; d4++) { acc[d4] += ds * Ks[jj * D4 + d4]; }
    }
  }
  if (!valid) { return; }
  let dqo = ((b * nT() + t) * nH() + h) * D;
  for (var d = 0u; d < D; d++) { dq[dqo + d] = acc[d / 4u][d % 4u] * scale(); }
  delta[row] = dlt;
}`;
  return {
    key: `attention.dq:${D}`,
    code,
    workgroupSize: ATTENTION_ROWS,
    storage: access(2, 7),
  };
});

/**
 * Backward, per key row: dk and dv (B, Tk, Hkv, D), summed over the query
 * heads sharing the key head. A workgroup per 64 keys of one key/value head
 * walks the query rows of each head of the group in tiles of q and gradOut.
 */
export const attentionDkvKernel = memo((D: number): Kernel => {
  const BQ = attentionTileRows(D);
  const code = /* wgsl */ `${prelude}
${binding(1, 'dk', 'f32', 'read_write')}
${binding(2, 'dv', 'f32', 'read_write')}
${binding(3, 'lse', 'f32', 'read')}
${binding(4, 'delta', 'f32', 'read')}
${binding(5, 'g', 'f32', 'read')}
${inputs(6)}
${helpers(D)}
${loaders('q', 'k', 'v', 'g')}
var<workgroup> Qs: array<vec4<f32>, ${BQ * Math.ceil(D / 4)}>;
var<workgroup> Gs: array<vec4<f32>, ${BQ * Math.ceil(D / 4)}>;
@compute @workgroup_size(${ATTENTION_ROWS})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let group = nH() / nHkv();
  let tiles = (nTk() + ${ATTENTION_ROWS - 1}u) / ${ATTENTION_ROWS}u;
  let w = groupIndex(wid, nwg);
  let b = w / (nHkv() * tiles);
  let kh = (w / tiles) % nHkv();
  let j0 = (w % tiles) * ${ATTENTION_ROWS}u;
  let valid = j0 + lid < nTk();
  let j = min(j0 + lid, nTk() - 1u);
  var kr: array<vec4<f32>, D4>;
  var vr: array<vec4<f32>, D4>;
  let ko = rowAt(1u, b, kh, j);
  let vo = rowAt(2u, b, kh, j);
  for (var d4 = 0u; d4 < D4; d4++) {
    kr[d4] = k4(ko, colStride(1u), d4);
    vr[d4] = v4(vo, colStride(2u), d4);
  }
  var dka: array<vec4<f32>, D4>;
  var dva: array<vec4<f32>, D4>;
  // causal: the first query that sees key j0 is t = j0 - (Tk - T); earlier tiles are skipped
  var tStart = 0u;
  if (p(6u) != 0u && j0 + nT() > nTk()) { tStart = j0 + nT() - nTk(); }
  for (var h = kh * group; h < (kh + 1u) * group; h++) {
    for (var t0 = tStart; t0 < nT(); t0 += ${BQ}u) {
      workgroupBarrier(); // every thread is done with the previous tile
      for (var e = lid; e < ${BQ}u * D4; e += ${ATTENTION_ROWS}u) {
        let t = t0 + e / D4;
        var qx = vec4<f32>(0.0);
        var gx = vec4<f32>(0.0);
        if (t < nT()) {
          qx = q4(rowAt(0u, b, h, t), colStride(0u), e % D4);
          gx = g4(rowAt(5u, b, h, t), colStride(5u), e % D4);
        }
        Qs[e] = qx;
        Gs[e] = gx;
      }
      workgroupBarrier();
      let n = select(0u, min(${BQ}u, nT() - t0), valid);
      for (var i = 0u; i < n; i++) {
        let t = t0 + i;
        if (j > lastKey(t)) { continue; }
        var dotqk = 0.0;
        var dz = 0.0;
        for (var d4 = 0u; d4 < D4; d4++) {
          dotqk += dot(Qs[i * D4 + d4], kr[d4]);
          dz += dot(Gs[i * D4 + d4], vr[d4]);
        }
        let s = dotqk * scale() + maskAt(b, h, t, j);
        if (isNegInf(s)) { continue; }
        let row = (b * nH() + h) * nT() + t;
        let pr = exp_(s - lse[row]);
        let keep = keepScale(row * nTk() + j);
        let ds = pr * (dz * keep - delta[row]);
        for (var d4 = 0u; d4 < D4; d4++) {
          dka[d4] += ds * Qs[i * D4 + d4];
          dva[d4] += (pr * keep) * Gs[i * D4 + d4];
        }
      }
    }
  }
  if (!valid) { return; }
  let dko = ((b * nTk() + j) * nHkv() + kh) * D;
  for (var d = 0u; d < D; d++) {
    dk[dko + d] = dka[d / 4u][d % 4u] * scale();
    dv[dko + d] = dva[d / 4u][d % 4u];
  }
}`;
  return {
    key: `attention.dkv:${D}`,
    code,
    workgroupSize: ATTENTION_ROWS,
    storage: access(2, 7),
  };
});
