// Batched matmul: out[z] = a[z] @ b[z], a [M, K], b [K, N], all strided.
// The one kernel worth tuning: a model step spends most of its GPU time here.
//
// Register-blocked tiles. A workgroup owns a BM x BN block of the output and
// walks K in slabs of BK: its threads copy a BM x BK slab of a and a BK x BN
// slab of b into workgroup memory, then each thread multiplies them into a
// TM x TN block of accumulators held in registers. Every element copied is
// used by BN (or BM) outputs, so global memory is read that many times less
// than by one thread per output, and the inner loop reads workgroup memory
// as vec4s and does vec4 multiply-adds. The slabs are stored k-major (As[k][m],
// Bs[k][n]) so a thread's TM rows and TN columns are contiguous vec4s.
//
// Vectorised loads. An operand whose fast dim (stride 1) is a multiple of 4
// long, with its other strides and offset multiples of 4 too, is read as
// vec4s: a quarter of the load instructions, and 16-byte coalesced accesses.
// Other operands (odd sizes, slices) are read one float at a time, through
// their strides; transposed operands are never copied.
//
// Split-K. A weight gradient (x^T @ dy) has a small output and a long K (all
// the tokens of a batch): too few tiles to fill a GPU. Then K is cut into S
// chunks, each tile of each chunk is a workgroup writing a partial product,
// and the S partials are summed afterwards (in a fixed order: deterministic).
//
// float16 operands (autocast('float16'), tensor/mixed_precision.ts). With
// `half`, each value of a and b is rounded to the nearest float16 as it is
// loaded (roundHalf: ties to even, in integer arithmetic, since WGSL lets a
// conversion to f16 round either way), and the products and sums are float32.
// Rounding on load costs a few integer operations per value copied into
// workgroup memory, where a separate rounding pass would cost a dispatch, a
// read and a write of each operand per matmul, and a copy of every
// transposed or sliced one. Where the device has `shader-f16` the workgroup
// slabs are f16 (`slab` below): half the workgroup memory and its traffic in
// the inner loop. Both give the same bits: every value is a float16 either
// way, converted to float32 exactly before it is multiplied.
//
// GEMV. With M = 1 (decoding one token) a tile wastes all but one row, so
// gemvKernel computes a row vector times a matrix instead: for b with a
// contiguous K (a Linear weight used as W^T) 32 threads share each output and
// stride along K; for b with a contiguous N, each thread owns a column and
// 4 threads split K. Either way consecutive threads read consecutive addresses.
//
// Params (tiles and GEMV): [M, N, K, aRowStride, aColStride, bRowStride, bColStride, zBase,
//   splits S, chunk Kc, batch rank R: shape[0..R), aOffset, aStrides[0..R), bOffset, bStrides[0..R)].

import { type Kernel, binding, memo, prelude, stridedOffsets } from './common.ts';

/** Where the batch view params start. */
export const MATMUL_BATCH_AT = 10;

/** A tile shape: BM x BN outputs per workgroup, slabs BK deep, TM x TN outputs per thread. */
export interface TileConfig {
  name: string;
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
}

/**
 * The tile table, picked per shape (backend.ts planMatmul). Threads per
 * workgroup: (BM/TM) x (BN/TN) = 64, 256, 256. Workgroup memory:
 * 4 (BM + BN) BK bytes = 4, 8, 8 KiB.
 */
export const TILES = {
  small: { name: 'small', BM: 32, BN: 32, BK: 16, TM: 4, TN: 4 },
  medium: { name: 'medium', BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
  large: { name: 'large', BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
} satisfies Record<string, TileConfig>;

/** How an operand is read: which of its two matrix dims is contiguous, and whether as vec4s. */
export interface OperandLayout {
  /** a: 'k' (rows of K) or 'm'; b: 'n' (rows of N) or 'k'. */
  fast: 'm' | 'n' | 'k';
  vec: boolean;
}

/**
 * What a tiled matmul does with operand values: uses them as they are
 * ('f32'), or rounds them to float16 on load and keeps its workgroup slabs in
 * float32 ('f16') or, with `shader-f16`, in WGSL's f16 ('f16-slabs').
 */
export type OperandPrecision = 'f32' | 'f16' | 'f16-slabs';

/**
 * x rounded to the nearest float16 (ties to even), as a float32: the mantissa
 * rounded to 10 bits by adding just under half its last kept bit (plus that
 * bit, so that a tie goes to the even neighbour) and clearing the rest; below
 * float16's smallest normal, 2^-14, to a multiple of 2^-24 (WGSL's round()
 * takes ties to even); from 65520, half a step above the largest float16, to
 * Inf. Decided from the bits: WGSL may assume no NaN or Inf reaches a compare.
 */
const roundHalf = /* wgsl */ `
fn roundHalf(x: f32) -> f32 {
  let b = bitcast<u32>(x);
  let a = b & 0x7fffffffu;
  if (a > 0x7f800000u) { return x; }
  if (a >= 0x477ff000u) { return bitcast<f32>((b & 0x80000000u) | 0x7f800000u); }
  if (a < 0x38800000u) { return round(x * 16777216.0) * 5.9604644775390625e-8; }
  return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
}
fn roundHalf4(v: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(roundHalf(v.x), roundHalf(v.y), roundHalf(v.z), roundHalf(v.w));
}`;

/** The load of one operand's element e (xAt), or of 4 elements from e, a multiple of 4 (xAt4), as float32. */
function loader(name: string, vec: boolean, half: boolean): string {
  const r = (x: string, n = '') => (half ? `roundHalf${n}(${x})` : x);
  if (vec) return `fn ${name}At4(e: u32) -> vec4<f32> { return ${r(`${name}4[e / 4u]`, '4')}; }`;
  return `fn ${name}At(e: u32) -> f32 { return ${r(`${name}[e]`)}; }`;
}

/** The binding of an operand: scalar and vec4 views of the same buffer cannot both be declared, so one of them. */
function operandBinding(n: number, name: string, vec: boolean): string {
  return binding(n, vec ? `${name}4` : name, vec ? 'vec4<f32>' : 'f32', 'read');
}

/**
 * WGSL that copies one operand's slab into workgroup memory `dst` (vec4s,
 * k-major: dst[k * (W / 4) + w / 4][w % 4] for slab row k, position w < W).
 * `rows` is the operand's non-K dim (M for a, N for b).
 */
function slabLoad(o: {
  name: string;
  dst: string;
  W: number;
  BK: number;
  threads: number;
  layout: OperandLayout;
  kIsRow: boolean;
  /** The slab's element type: f16 slabs take the (exact) conversion of each float16 value. */
  slab: 'f32' | 'f16';
}): string {
  const { name, dst, W, BK, threads, layout } = o;
  const cast = (x: string) => (o.slab === 'f16' ? `f16(${x})` : x);
  // element offset of (w, k) within the operand: the w dim has stride wS, the k dim kS
  const wS = o.kIsRow ? 'CS' : 'RS';
  const kS = o.kIsRow ? 'RS' : 'CS';
  const lim = o.kIsRow ? 'N' : 'M';
  const origin = o.kIsRow ? 'col0' : 'row0';
  const at = (w: string, k: string) => `${name}Base + (${origin} + ${w}) * ${name}${wS} + (k0 + ${k}) * ${name}${kS}`;
  const inRange = (w: string, k: string) => `${origin} + ${w} < ${lim} && k0 + ${k} < kEnd`;
  const kFast = layout.fast === 'k';
  if (layout.vec) {
    const count = (W * BK) / 4;
    const loops = Math.ceil(count / threads);
    const body = kFast
      ? `let w = v / ${BK / 4}u; let k = (v % ${BK / 4}u) * 4u;
        var val = vec4<f32>(0.0);
        if (${inRange('w', 'k')}) { val = ${name}At4(${at('w', 'k')}); }
        for (var c = 0u; c < 4u; c++) { ${dst}[(k + c) * ${W / 4}u + w / 4u][w % 4u] = ${cast('val[c]')}; }`
      : `let k = v / ${W / 4}u; let w = (v % ${W / 4}u) * 4u;
        var val = vec4<f32>(0.0);
        if (${inRange('w', 'k')}) { val = ${name}At4(${at('w', 'k')}); }
        ${dst}[k * ${W / 4}u + w / 4u] = ${o.slab === 'f16' ? 'vec4<f16>(val)' : 'val'};`;
    return `for (var l = 0u; l < ${loops}u; l++) {
      let v = tid + l * ${threads}u;
      if (v < ${count}u) {
        ${body}
      }
    }`;
  }
  const count = W * BK;
  const idx = kFast ? `let w = e / ${BK}u; let k = e % ${BK}u;` : `let k = e / ${W}u; let w = e % ${W}u;`;
  return `for (var l = 0u; l < ${Math.ceil(count / threads)}u; l++) {
      let e = tid + l * ${threads}u;
      if (e < ${count}u) {
        ${idx}
        var val = 0.0;
        if (${inRange('w', 'k')}) { val = ${name}At(${at('w', 'k')}); }
        ${dst}[k * ${W / 4}u + w / 4u][w % 4u] = ${cast('val')};
      }
    }`;
}

/**
 * The tiled batched matmul. `vecOut`: N is a multiple of 4, so rows of the
 * output are written as vec4s. `precision`: see OperandPrecision.
 */
export const matmulKernel = memo(
  (
    batchRank: number,
    tile: string,
    aFast: string,
    aVec: boolean,
    bFast: string,
    bVec: boolean,
    vecOut: boolean,
    precision: OperandPrecision,
  ): Kernel => {
    const t: TileConfig = TILES[tile as keyof typeof TILES];
    const { BM, BN, BK, TM, TN } = t;
    const TX = BN / TN;
    const TY = BM / TM;
    const threads = TX * TY;
    const R = batchRank;
    const aView = MATMUL_BATCH_AT + R;
    const bView = aView + 1 + R;
    const aLayout: OperandLayout = { fast: aFast as OperandLayout['fast'], vec: aVec };
    const bLayout: OperandLayout = { fast: bFast as OperandLayout['fast'], vec: bVec };
    // the TM x TN block: acc[i * (TN / 4) + j] holds row i, columns 4j .. 4j + 3
    const fma: string[] = [];
    for (let i = 0; i < TM; i++) {
      for (let j = 0; j < TN / 4; j++) fma.push(`acc[${i * (TN / 4) + j}] += av[${i >> 2}][${i & 3}] * bv[${j}];`);
    }
    const store = vecOut
      ? `if (r < M && c < N) { out4[(base + r * N + c) / 4u] = acc[i * ${TN / 4}u + j]; }`
      : `for (var q = 0u; q < 4u; q++) {
        if (r < M && c + q < N) { out[base + r * N + c + q] = acc[i * ${TN / 4}u + j][q]; }
      }`;
    const half = precision !== 'f32';
    const slab = precision === 'f16-slabs' ? 'f16' : 'f32';
    const code = /* wgsl */ `${slab === 'f16' ? 'enable f16;\n' : ''}${prelude}${half ? roundHalf : ''}
${vecOut ? binding(1, 'out4', 'vec4<f32>', 'read_write') : binding(1, 'out', 'f32', 'read_write')}
${operandBinding(2, 'a', aVec)}
${operandBinding(3, 'b', bVec)}
${loader('a', aVec, half)}
${loader('b', bVec, half)}
var<workgroup> As: array<vec4<${slab}>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<${slab}>, ${(BK * BN) / 4}>;
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let M = p(0u); let N = p(1u); let K = p(2u);
  let aRS = p(3u); let aCS = p(4u); let bRS = p(5u); let bCS = p(6u);
  let z = p(7u) + wid.z;
  let S = p(8u); let Kc = p(9u);
  // z enumerates (batch entry, K chunk); partial products of chunk s land in their own output slab
  let zb = z / S;
  let kStart = (z % S) * Kc;
  let kEnd = min(K, kStart + Kc);
  ${stridedOffsets('zb', R, MATMUL_BATCH_AT, [aView, bView])}
  let aBase = o0; let bBase = o1;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${TX}u + tx;
  var acc: array<vec4<f32>, ${(TM * TN) / 4}>;
  for (var k0 = kStart; k0 < kEnd; k0 += ${BK}u) {
    ${slabLoad({ name: 'a', dst: 'As', W: BM, BK, threads, layout: aLayout, kIsRow: false, slab })}
    ${slabLoad({ name: 'b', dst: 'Bs', W: BN, BK, threads, layout: bLayout, kIsRow: true, slab })}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
      var av: array<vec4<f32>, ${TM / 4}>;
      var bv: array<vec4<f32>, ${TN / 4}>;
      for (var i = 0u; i < ${TM / 4}u; i++) { av[i] = vec4<f32>(As[kk * ${BM / 4}u + ty * ${TM / 4}u + i]); }
      for (var j = 0u; j < ${TN / 4}u; j++) { bv[j] = vec4<f32>(Bs[kk * ${BN / 4}u + tx * ${TN / 4}u + j]); }
      ${fma.join('\n      ')}
    }
    workgroupBarrier();
  }
  let base = z * M * N;
  for (var i = 0u; i < ${TM}u; i++) {
    for (var j = 0u; j < ${TN / 4}u; j++) {
      let r = row0 + ty * ${TM}u + i;
      let c = col0 + tx * ${TN}u + j * 4u;
      ${store}
    }
  }
}`;
    return {
      key: `matmul.${tile}:${R}:a${aFast}${aVec ? 4 : 1}:b${bFast}${bVec ? 4 : 1}:o${vecOut ? 4 : 1}:${precision}`,
      code,
      workgroupSize: threads,
      storage: ['read_write', 'read', 'read'],
    };
  },
);

/** Outputs per GEMV workgroup of each variant (256 threads either way). */
export const GEMV_OUTPUTS = { dot: 8, axpy: 64 } as const;

/**
 * Row vector times matrix: out[z, n] = sum_k a[z, 0, k] b[z, k, n], the same
 * params as matmulKernel (S = 1). 'dot': 32 threads per output stride along
 * K (b's K contiguous); 'axpy': a thread per column, 4 threads split K (b's
 * N contiguous). The threads' partial sums meet in workgroup memory. With
 * `half`, both operands are rounded to float16 as they are loaded, as in the
 * tiles.
 */
export const gemvKernel = memo((batchRank: number, variant: 'dot' | 'axpy', half: boolean): Kernel => {
  const R = batchRank;
  const aView = MATMUL_BATCH_AT + R;
  const bView = aView + 1 + R;
  const [lanes, outs] = variant === 'dot' ? [32, GEMV_OUTPUTS.dot] : [4, GEMV_OUTPUTS.axpy];
  // thread lid: output lid / lanes (dot) or lid % outs (axpy); lane: the K stripe it sums
  const [out, lane] = variant === 'dot' ? ['lid / 32u', 'lid % 32u'] : ['lid % 64u', 'lid / 64u'];
  const reduce =
    variant === 'dot'
      ? `for (var s = 16u; s > 0u; s = s >> 1u) {
    if (lane < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }`
      : `for (var s = 2u; s > 0u; s = s >> 1u) {
    if (lane < s) { red[lid] += red[lid + s * 64u]; }
    workgroupBarrier();
  }`;
  const r = (x: string) => (half ? `roundHalf(${x})` : x);
  const code = /* wgsl */ `${prelude}${half ? roundHalf : ''}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'a', 'f32', 'read')}
${binding(3, 'b', 'f32', 'read')}
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let N = p(1u); let K = p(2u);
  let aCS = p(4u); let bRS = p(5u); let bCS = p(6u);
  let z = p(7u) + wid.z;
  ${stridedOffsets('z', R, MATMUL_BATCH_AT, [aView, bView])}
  let lane = ${lane};
  let n = wid.x * ${outs}u + ${out};
  var acc = 0.0;
  if (n < N) {
    for (var k = lane; k < K; k += ${lanes}u) { acc += ${r('a[o0 + k * aCS]')} * ${r('b[o1 + k * bRS + n * bCS]')}; }
  }
  red[lid] = acc;
  workgroupBarrier();
  ${reduce}
  if (lane == 0u && n < N) { out[z * N + n] = red[lid]; }
}`;
  return {
    key: `gemv.${variant}:${R}${half ? ':f16' : ''}`,
    code,
    workgroupSize: 256,
    storage: ['read_write', 'read', 'read'],
  };
});
