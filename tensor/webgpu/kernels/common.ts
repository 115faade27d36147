// What every WGSL kernel shares: the kernel record the backend compiles and
// caches, the uniform block that carries shapes/strides/offsets (so one
// pipeline serves every shape of a given rank), the index arithmetic that
// walks a strided view, and float helpers whose GPU builtins are not accurate
// or not IEEE enough to match the CPU backend.
//
// A rule for every kernel: workgroup memory is written before it is read.
// WGSL would zero-fill it at the start of each workgroup; in Node that fill
// is turned off (node/dawn.ts), so a kernel reading memory it did not write
// would see another workgroup's leftovers.

import type { DType } from '../../dtype.ts';

/** How a kernel binds a storage buffer (binding 0 is always the uniform params). */
export type Access = 'read' | 'read_write';

/** A compiled-once compute shader: `key` names it in the pipeline cache. */
export interface Kernel {
  key: string;
  code: string;
  /** Threads per workgroup (x * y * z), for the dispatch arithmetic. */
  workgroupSize: number;
  /** Storage bindings 1..n, in order. */
  storage: Access[];
}

/**
 * Memoises a kernel generator by its arguments: ops ask for their kernel on
 * every call, and building the WGSL string each time would cost more than
 * recording the dispatch.
 */
export function memo<A extends (string | number | boolean)[]>(build: (...args: A) => Kernel): (...args: A) => Kernel {
  const cache = new Map<string, Kernel>();
  return (...args: A) => {
    const key = args.join('|');
    let k = cache.get(key);
    if (!k) cache.set(key, (k = build(...args)));
    return k;
  };
}

/** u32 words of uniform parameters every kernel may read (p(0) .. p(PARAM_WORDS-1)). */
export const PARAM_WORDS = 64;

/** Largest dispatch along one dimension that every WebGPU device accepts. */
export const MAX_GROUPS_PER_DIM = 65535;

/** The WGSL scalar type of a dtype. */
export function wgslType(dtype: DType): 'f32' | 'i32' {
  if (dtype === 'float32') return 'f32';
  if (dtype === 'int32') return 'i32';
  throw new Error(`webgpu: ${dtype} is not supported on the GPU (float32 and int32 only); cast to float32 first`);
}

/** Storage binding `n` named `name`, holding `type` elements. */
export function binding(n: number, name: string, type: string, access: Access): string {
  return `@group(0) @binding(${n}) var<storage, ${access}> ${name}: array<${type}>;`;
}

/**
 * The prelude of every kernel. Parameters live in a uniform block of vec4s
 * (uniform arrays need a 16-byte element stride), read one u32 at a time with
 * p(i).
 *
 * Then the float math. WGSL promises little: builtins such as sin, cos, exp
 * and log have loose error bounds (sin and cos only inside [-pi, pi]),
 * division is only accurate for |b| in [2^-126, 2^126], and an implementation
 * may assume that no NaN or infinity ever occurs. Real drivers use all of
 * that freedom: on SwiftShader exp(NaN) is Inf, 1 / NaN is Inf and sin(1) is
 * off by 2e-5; on llvmpipe x / 0 is 0. So every function below decides
 * NaN/Inf cases from the bits before any builtin sees them, and computes
 * exp, log, sin and cos from range reductions and polynomials that use only
 * +, - and *, which WGSL requires to be correctly rounded. The results then
 * carry the same error on every conforming driver (a few float32 ulp).
 * Denormals may still flush to zero (WGSL allows it): results below 1.2e-38
 * can read 0 where the CPU keeps a denormal. INF and NAN come from private
 * variables because a constant NaN is a WGSL compile error.
 */
export const prelude = /* wgsl */ `
struct Params { v: array<vec4<u32>, ${PARAM_WORDS / 4}> }
@group(0) @binding(0) var<uniform> P: Params;
fn p(i: u32) -> u32 { return P.v[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(p(i)); }
fn pi(i: u32) -> i32 { return bitcast<i32>(p(i)); }

var<private> INF_BITS: u32 = 0x7f800000u;
var<private> NAN_BITS: u32 = 0x7fc00000u;
fn inf() -> f32 { return bitcast<f32>(INF_BITS); }
fn nan() -> f32 { return bitcast<f32>(NAN_BITS); }
fn isnan_(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn isinf_(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
fn signbit(x: f32) -> bool { return (bitcast<u32>(x) & 0x80000000u) != 0u; }
// +-Inf with the sign of a * b
fn signedInf(a: f32, b: f32) -> f32 { return select(inf(), -inf(), signbit(a) != signbit(b)); }

// IEEE division: NaN in, NaN out; x / 0 is +-Inf (0 / 0 NaN); x / Inf is +-0;
// a huge divisor is scaled first (the builtin is only accurate up to 2^126).
fn fdiv(a: f32, b: f32) -> f32 {
  if (isnan_(a) || isnan_(b)) { return nan(); }
  if (isinf_(b)) {
    if (isinf_(a)) { return nan(); }
    return select(0.0, -0.0, signbit(a) != signbit(b));
  }
  if (isinf_(a)) { return signedInf(a, b); }
  if (b == 0.0) { return select(signedInf(a, b), nan(), a == 0.0); }
  if (abs(b) > 8.5070592e37) { return (a * 0.25) / (b * 0.25); }
  return a / b;
}

fn sqrt_(x: f32) -> f32 {
  if (isnan_(x) || x < 0.0) { return nan(); }
  if (isinf_(x)) { return x; }
  return sqrt(x);
}

// 2^n for n in [-126, 127], from the exponent bits.
fn pow2i(n: i32) -> f32 { return bitcast<f32>(u32(n + 127) << 23u); }

// e^x as Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so
// n ln2 is exact: Cody and Waite), a polynomial for e^r, then times 2^n.
fn exp_(x: f32) -> f32 {
  if (isnan_(x)) { return x; }
  if (x > 88.72283) { return inf(); }
  if (x < -87.33654) { return 0.0; }
  let n = round(x * 1.44269504);
  let r = (x - n * 0.693359375) + n * 2.12194440e-4;
  let z = r * r;
  var q = 1.9875691500e-4;
  q = q * r + 1.3981999507e-3;
  q = q * r + 8.3334519073e-3;
  q = q * r + 4.1665795894e-2;
  q = q * r + 1.6666665459e-1;
  q = q * r + 5.0000001201e-1;
  let e = q * z + r + 1.0;
  // 2^n in two halves: n may be 128, which has no float32 power of two
  let h = i32(n) / 2;
  return e * pow2i(h) * pow2i(i32(n) - h);
}

// log via x = m 2^e, m in [sqrt(1/2), sqrt(2)): log m = 2 atanh(s), s = (m-1)/(m+1).
// Accurate to ~1 ulp near x = 1, where the builtin loses relative accuracy.
fn log_(x: f32) -> f32 {
  if (isnan_(x) || x < 0.0) { return nan(); }
  if (x == 0.0) { return -inf(); }
  if (isinf_(x)) { return x; }
  let fr = frexp(x);
  var m = fr.fract;
  var e = f32(fr.exp);
  if (m < 0.70710678) { m = m * 2.0; e = e - 1.0; }
  let f = m - 1.0;
  let s = f / (2.0 + f);
  let z = s * s;
  let r = s * (2.0 + z * (0.6666666667 + z * (0.4 + z * (0.2857142857 + z * 0.2222222222))));
  return e * 0.693145751953125 + (r + e * 1.428606820309417e-6);
}

// tanh without cancellation near 0 (a Taylor series there) and without
// Inf/Inf for large |x| (exp(-2|x|) only goes to 0).
fn tanh_(x: f32) -> f32 {
  if (isnan_(x)) { return x; }
  let a = abs(x);
  if (a < 0.3) {
    let z = x * x;
    return x * (1.0 + z * (-0.3333333333 + z * (0.1333333333 + z * (-0.0539682540 + z * 0.0218694885))));
  }
  let e = exp_(-2.0 * a);
  return select(1.0, -1.0, x < 0.0) * (1.0 - e) / (1.0 + e);
}

// --- sin and cos: exact range reduction (Payne and Hanek), then Cephes' polynomials ---
// A float32 x is M 2^(e-23) with a 24-bit integer M. x (2/pi) mod 4 needs only
// the 96 bits of 2/pi from bit e-24 on (earlier bits only add multiples of 4,
// later ones less than 2^-70), so it is an exact integer product M * W, done
// in 16-bit halves because WGSL has no 64-bit integers. Its top two bits give
// the quadrant, the rest the fraction. Right for every finite float32, where
// any float-only reduction loses all digits at large |x|.

// 2/pi in binary: 0.a2f9836e 4e441529 ..., behind one zero word for windows that start before the point
var<private> TWO_OVER_PI: array<u32, 9> = array<u32, 9>(0u, 0xa2f9836eu, 0x4e441529u, 0xfc2757d1u,
  0xf534ddc0u, 0xdb629599u, 0x3c439041u, 0xfe5163abu, 0xdebbc561u);

// 32 bits of 2/pi from bit i on (bit 1 is the first after the point; i >= -31).
fn twoOverPiBits(i: i32) -> u32 {
  let j = u32(i + 31);
  let w = j / 32u;
  let o = j % 32u;
  if (o == 0u) { return TWO_OVER_PI[w]; }
  return (TWO_OVER_PI[w] << o) | (TWO_OVER_PI[w + 1u] >> (32u - o));
}

// The 64-bit product a * b as (high word, low word).
fn mulWide(a: u32, b: u32) -> vec2u {
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let lo = a0 * b0; let m1 = a1 * b0; let m2 = a0 * b1;
  let t = lo + (m1 << 16u);
  let t2 = t + (m2 << 16u);
  let carry = select(0u, 1u, t < lo) + select(0u, 1u, t2 < t);
  return vec2u(a1 * b1 + (m1 >> 16u) + (m2 >> 16u) + carry, t2);
}

// |x| = (4k + q) pi/2 + r with r in [-pi/4, pi/4]: returns (r, q).
fn reduceHalfPi(ax: f32) -> vec2f {
  if (ax <= 0.7853982) { return vec2f(ax, 0.0); }
  let bits = bitcast<u32>(ax);
  let e = i32(bits >> 23u) - 127;
  let M = (bits & 0x7fffffu) | 0x800000u;
  let i0 = e - 24;
  let p2 = mulWide(M, twoOverPiBits(i0 + 64));
  let p1 = mulWide(M, twoOverPiBits(i0 + 32));
  // the low 96 bits of M * W: w2 w1 w0
  let w0 = p2.y;
  let w1 = p2.x + p1.y;
  var w2 = p1.x + M * twoOverPiBits(i0) + select(0u, 1u, w1 < p2.x);
  var q = w2 >> 30u;
  var a = w2 & 0x3fffffffu;
  var b = w1;
  var c = w0;
  var sign = 1.0;
  if ((a & 0x20000000u) != 0u) {
    // fraction >= 1/2: use fraction - 1 (negate the 94-bit fraction) and the next quadrant
    c = ~c + 1u;
    b = ~b + select(0u, 1u, c == 0u);
    a = (~a + select(0u, 1u, c == 0u && b == 0u)) & 0x3fffffffu;
    q = (q + 1u) & 3u;
    sign = -1.0;
  }
  let frac = f32(a) * 9.313225746154785e-10 + f32(b) * 2.168404344971009e-19;
  return vec2f(sign * frac * 1.5707963267948966, f32(q));
}

// Cephes' sinf/cosf polynomials on [-pi/4, pi/4].
fn sinPoly(x: f32) -> f32 {
  let z = x * x;
  return ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * x + x;
}
fn cosPoly(x: f32) -> f32 {
  let z = x * x;
  return ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
}

fn sin_(x: f32) -> f32 {
  if (isnan_(x) || isinf_(x)) { return nan(); }
  let rq = reduceHalfPi(abs(x));
  let s = sinPoly(rq.x);
  let c = cosPoly(rq.x);
  let q = u32(rq.y);
  var v = select(s, c, q == 1u || q == 3u);
  if (q >= 2u) { v = -v; }
  return select(v, -v, x < 0.0);
}

fn cos_(x: f32) -> f32 {
  if (isnan_(x) || isinf_(x)) { return nan(); }
  let rq = reduceHalfPi(abs(x));
  let s = sinPoly(rq.x);
  let c = cosPoly(rq.x);
  let q = u32(rq.y);
  let v = select(c, s, q == 1u || q == 3u);
  return select(v, -v, q == 1u || q == 2u);
}

// x^y as Math.pow: small integer exponents by repeated squaring (exact like the CPU),
// negative bases with integer exponents, NaN for a negative base with a fractional
// one, and JavaScript's special cases (1^Inf is NaN there).
fn pow_(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (isnan_(a) || isnan_(b)) { return nan(); }
  if (isinf_(b)) {
    let m = abs(a);
    if (m == 1.0) { return nan(); }
    return select(0.0, inf(), (m > 1.0) == (b > 0.0));
  }
  let integral = round(b) == b;
  let odd = integral && abs(b) % 2.0 == 1.0;
  if (isinf_(a) || a == 0.0) {
    // |a| ^ b is Inf or 0; the sign of a survives an odd integer exponent
    let big = isinf_(a) == (b > 0.0);
    let m = select(0.0, inf(), big);
    return select(m, -m, odd && signbit(a));
  }
  if (integral && abs(b) <= 64.0) {
    var r = 1.0;
    var base = a;
    var n = u32(abs(b));
    loop {
      if ((n & 1u) != 0u) { r = r * base; }
      n = n >> 1u;
      if (n == 0u) { break; }
      base = base * base;
    }
    return select(r, fdiv(1.0, r), b < 0.0);
  }
  if (a < 0.0 && !integral) { return nan(); }
  let m = exp_(b * log_(abs(a)));
  return select(m, -m, a < 0.0 && odd);
}

// Integer power with wrap-around, and JS truncation for negative exponents.
fn powi(a: i32, b: i32) -> i32 {
  if (b < 0) {
    if (a == 1) { return 1; }
    if (a == -1) { return select(1, -1, (b & 1) != 0); }
    return 0;
  }
  var r = 1;
  var base = a;
  var n = u32(b);
  loop {
    if ((n & 1u) != 0u) { r = r * base; }
    n = n >> 1u;
    if (n == 0u) { break; }
    base = base * base;
  }
  return r;
}

// float -> int32 as a typed-array store does (ToInt32): truncate, wrap modulo 2^32, NaN/Inf -> 0.
fn toI32(x: f32) -> i32 {
  if (isnan_(x) || isinf_(x)) { return 0; }
  if (abs(x) < 2147483648.0) { return i32(x); }
  return bitcast<i32>(u32(x - floor(x * 2.3283064365386963e-10) * 4294967296.0));
}

// The workgroup's position in a dispatch that may be spread over x and y
// (at most 65535 workgroups per dimension).
fn groupIndex(wid: vec3u, nwg: vec3u) -> u32 { return wid.y * nwg.x + wid.x; }
`;

/** Converts a value of dtype `from` (a WGSL expression) to dtype `to`. */
export function castExpr(expr: string, from: DType, to: DType): string {
  if (from === to) return expr;
  return to === 'int32' ? `toI32(${expr})` : `f32(${expr})`;
}

/**
 * WGSL that turns a linear index `idx` over `shape` (rank `rank`, read from
 * params at `shapeAt`) into element offsets of several strided views. View k's
 * offset is p(viewAt[k]) and its strides follow it. Declares `o0`, `o1`, ...
 */
export function stridedOffsets(idx: string, rank: number, shapeAt: number, viewAt: number[]): string {
  const lines = viewAt.map((at, k) => `var o${k} = p(${at}u);`);
  if (rank > 0) lines.push(`var rem = ${idx};`);
  // innermost dim first: the index's remainder is that dim's coordinate
  for (let d = rank - 1; d >= 0; d--) {
    const c = `c${d}`;
    lines.push(d === 0 ? `let ${c} = rem;` : `let ${c} = rem % p(${shapeAt + d}u); rem = rem / p(${shapeAt + d}u);`);
    viewAt.forEach((at, k) => lines.push(`o${k} += ${c} * p(${at + 1 + d}u);`));
  }
  return lines.join('\n    ');
}
