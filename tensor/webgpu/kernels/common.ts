// What every WGSL kernel shares: the kernel record the backend compiles and
// caches, the uniform block that carries shapes/strides/offsets (so one
// pipeline serves every shape of a given rank), the index arithmetic that
// walks a strided view, and float helpers whose GPU builtins are not accurate
// or not IEEE enough to match the CPU backend.

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
 * p(i). The float helpers exist because WGSL leaves NaN/Inf behaviour and the
 * accuracy of some builtins to the implementation: on Mesa llvmpipe, x / 0.0
 * gives 0, tanh(1e-5) is off by 0.3%, log(1 + 1e-5) by 0.1%. INF and NAN come
 * from private variables because a constant NaN is a WGSL compile error.
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

// IEEE division: a / 0 is +-Inf (NaN for 0/0), which some drivers do not give.
fn fdiv(a: f32, b: f32) -> f32 {
  if (b != 0.0) { return a / b; }
  if (a == 0.0 || isnan_(a)) { return nan(); }
  let negative = (a < 0.0) != ((bitcast<u32>(b) & 0x80000000u) != 0u);
  return select(inf(), -inf(), negative);
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
  let a = abs(x);
  if (a < 0.3) {
    let z = x * x;
    return x * (1.0 + z * (-0.3333333333 + z * (0.1333333333 + z * (-0.0539682540 + z * 0.0218694885))));
  }
  let e = exp(-2.0 * a);
  return select(1.0, -1.0, x < 0.0) * (1.0 - e) / (1.0 + e);
}

// sin/cos of large arguments (rotary tables reach hundreds of radians):
// reduce into [-pi, pi] with 2 pi split in two parts (Cody-Waite) first.
fn reduce2pi(x: f32) -> f32 {
  let k = round(x * 0.15915494309189535);
  return (x - k * 6.28125) - k * 0.0019353071795864769;
}

// x^y as Math.pow: small integer exponents by repeated squaring (exact like the CPU),
// negative bases with integer exponents, NaN for a negative base with a fractional one.
fn pow_(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (isnan_(a) || isnan_(b)) { return nan(); }
  let integral = round(b) == b;
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
  if (a == 0.0) { return select(0.0, inf(), b < 0.0); }
  let m = exp2(b * log2(abs(a)));
  if (a > 0.0) { return m; }
  if (!integral) { return nan(); }
  return select(m, -m, abs(b) % 2.0 == 1.0);
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
