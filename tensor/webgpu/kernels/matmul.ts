// Batched matmul: out[z] = a[z] @ b[z], a [M, K], b [K, N], all strided.
//
// Tiling: each workgroup owns a TILE x TILE block of the output. It walks K
// in steps of TK: the threads cooperatively copy a TILE x TK slab of a and a
// TK x TILE slab of b into workgroup memory, then every thread multiplies
// them into a W x W block of accumulators held in registers. Every element
// copied into workgroup memory is used by TILE outputs, so global memory is
// read TILE times less than by one thread per output walking its row of a
// and column of b, and the inner loop touches only workgroup memory and
// registers.
//
// A thread owns rows ty, ty + TD, ... and columns tx, tx + TD, ... (spread,
// not a solid W x W block), so neighbouring threads write neighbouring
// output columns and read neighbouring workgroup-memory words.
//
// Inputs are read through their strides (no copies for transposed or
// broadcast operands); the slab copy walks whichever index is contiguous in
// memory (`aKFast`/`bNFast` variants) so consecutive threads read
// consecutive addresses. Batch dims go through the same strided index
// arithmetic as elementwise kernels, so broadcast batches (stride 0) are free.
//
// Params: [M, N, K, aRowStride, aColStride, bRowStride, bColStride, zBase,
//          batch rank R: shape[0..R), aOffset, aStrides[0..R), bOffset, bStrides[0..R)].

import { type Kernel, binding, memo, prelude, stridedOffsets } from './common.ts';

/** The slab depth along K. */
const TK = 16;

/** Where the batch view params start. */
const MATMUL_BATCH_AT = 8;

/** The tiled batched matmul kernel (float32): td x td threads, each computing w x w outputs. */
export const matmulKernel = memo((batchRank: number, aKFast: boolean, bNFast: boolean, td: number, w: number): Kernel => {
  const tile = td * w;
  const threads = td * td;
  const loads = (tile * TK) / threads;
  const R = batchRank;
  const aView = MATMUL_BATCH_AT + R;
  const bView = aView + 1 + R;
  // which (row, k) / (k, col) of the slab thread `idx` copies
  const aIdx = aKFast ? `let r = idx / ${TK}u; let kk = idx % ${TK}u;` : `let r = idx % ${tile}u; let kk = idx / ${tile}u;`;
  const bIdx = bNFast ? `let kr = idx / ${tile}u; let c = idx % ${tile}u;` : `let kr = idx % ${TK}u; let c = idx / ${TK}u;`;
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'a', 'f32', 'read')}
${binding(3, 'b', 'f32', 'read')}
var<workgroup> As: array<f32, ${tile * TK}>;
var<workgroup> Bs: array<f32, ${TK * tile}>;
@compute @workgroup_size(${td}, ${td})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let M = p(0u); let N = p(1u); let K = p(2u);
  let aRS = p(3u); let aCS = p(4u); let bRS = p(5u); let bCS = p(6u);
  let z = p(7u) + wid.z;
  ${stridedOffsets('z', R, MATMUL_BATCH_AT, [aView, bView])}
  let row0 = wid.y * ${tile}u;
  let col0 = wid.x * ${tile}u;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${td}u + tx;
  var acc: array<array<f32, ${w}>, ${w}>;
  for (var k0 = 0u; k0 < K; k0 += ${TK}u) {
    for (var l = 0u; l < ${loads}u; l++) {
      let idx = tid + l * ${threads}u;
      ${aIdx}
      var va = 0.0;
      if (row0 + r < M && k0 + kk < K) { va = a[o0 + (row0 + r) * aRS + (k0 + kk) * aCS]; }
      As[r * ${TK}u + kk] = va;
      ${bIdx}
      var vb = 0.0;
      if (k0 + kr < K && col0 + c < N) { vb = b[o1 + (k0 + kr) * bRS + (col0 + c) * bCS]; }
      Bs[kr * ${tile}u + c] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
      var av: array<f32, ${w}>;
      var bv: array<f32, ${w}>;
      for (var i = 0u; i < ${w}u; i++) {
        av[i] = As[(ty + i * ${td}u) * ${TK}u + kk];
        bv[i] = Bs[kk * ${tile}u + tx + i * ${td}u];
      }
      for (var i = 0u; i < ${w}u; i++) {
        for (var j = 0u; j < ${w}u; j++) { acc[i][j] += av[i] * bv[j]; }
      }
    }
    workgroupBarrier();
  }
  let base = z * M * N;
  for (var i = 0u; i < ${w}u; i++) {
    for (var j = 0u; j < ${w}u; j++) {
      let r = row0 + ty + i * ${td}u;
      let c = col0 + tx + j * ${td}u;
      if (r < M && c < N) { out[base + r * N + c] = acc[i][j]; }
    }
  }
}`;
  return {
    key: `matmul:${R}:${aKFast ? 'k' : 'm'}:${bNFast ? 'n' : 'k'}:${td}x${w}`,
    code,
    workgroupSize: threads,
    storage: ['read_write', 'read', 'read'],
  };
});
