// Elementwise kernels in WebAssembly SIMD, four float32 lanes at a time. One
// template, `elementwise`, writes the loops once: it walks up to four dims
// of strided operands (broadcast dims have stride 0), and each op only says
// how to combine the input vectors. So `add` is one line below, and exp,
// tanh or GELU are short polynomials. The caller (kernels.ts) merges dims
// first, so most views become one or two dims here. Also here: the fused
// AdamW update.
//
// exp and tanh follow Cephes (https://www.netlib.org/cephes/), float32
// versions: a range reduction and a polynomial, accurate to a couple of ulp.

import {
  type Code,
  type Func,
  type Local,
  type ModuleBuilder,
  choose,
  for_,
  f32,
  f32x4,
  i32,
  i32x4,
  if_,
  seq,
  v128,
} from './emit.ts';

const c = (n: number) => i32.const(n);
const k4 = (x: number) => f32x4.const(x);
const add = f32x4.add;
const mul = f32x4.mul;
/** a * b + c as a multiply and an add: these kernels are the same with and without relaxed SIMD. */
const mad = (a: Code, b: Code, z: Code) => add(mul(a, b), z);

/** The polynomial c0 x^(n-1) + ... + c(n-1) by Horner's rule (x must be a local). */
function horner(x: Local, coefs: number[]): Code {
  return coefs.slice(1).reduce((acc: Code, coef) => mad(acc, x.get(), k4(coef)), k4(coefs[0]));
}

/**
 * e^x. Inputs are clamped to [-87.3, 88.7], where 2^n below stays a float32:
 * above, the result is infinity (2^128); below, it is 0 (float32 denormals
 * are flushed); NaN stays NaN.
 */
function exp(f: Func, x: Code): Code {
  const [v, t, n, r] = [f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
  const magic = 12582912; // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits
  const poly = horner(r, [1.98756915e-4, 1.39819995e-3, 8.33345191e-3, 4.16657959e-2, 1.66666655e-1, 5.00000012e-1]);
  return seq(
    v.set(x),
    // pmax/pmin clamp in one instruction each, and keep a NaN in their first operand
    r.set(f32x4.pmin(f32x4.pmax(v.get(), k4(-87.33654)), k4(88.72283))),
    // e^x = 2^n e^r with n = round(x / ln 2): r is small, where a polynomial is accurate
    t.set(mad(r.get(), k4(1.44269504), k4(magic))),
    n.set(f32x4.sub(t.get(), k4(magic))),
    // ln 2 in two parts, so that n ln 2 is exact enough (Cody and Waite)
    r.set(mad(n.get(), k4(2.1219444e-4), f32x4.sub(r.get(), mul(n.get(), k4(0.693359375))))),
    // 2^n from its bits: the exponent field is n + 127; t's low bits hold n (plus the magic's)
    n.set(i32x4.shl(i32x4.add(t.get(), i32x4.const(127 - 0x4b400000)), c(23))),
    v128.andNot(mul(add(mad(poly, mul(r.get(), r.get()), r.get()), k4(1)), n.get()), f32x4.lt(v.get(), k4(-87.33654))),
  );
}

/** 1 / (1 + e^-x). */
function sigmoid(f: Func, x: Code): Code {
  return f32x4.div(k4(1), add(k4(1), exp(f, f32x4.neg(x))));
}

/** tanh: an odd polynomial near 0 (where 1 - 2/(e^2x + 1) would lose digits), that formula elsewhere. */
function tanh(f: Func, x: Code): Code {
  const [v, z] = [f.local('v128'), f.local('v128')];
  const poly = horner(z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1]);
  const small = mad(mul(poly, z.get()), v.get(), v.get());
  const abs = f32x4.abs(v.get());
  const large = f32x4.sub(k4(1), f32x4.div(k4(2), add(exp(f, add(abs, abs)), k4(1))));
  const signed = v128.or(large, v128.and(v.get(), i32x4.const(-0x80000000))); // the sign of x
  return seq(v.set(x), z.set(mul(v.get(), v.get())), v128.select(small, signed, f32x4.lt(abs, k4(0.625))));
}

/** Unary ops: vector code from the input vector (a local, so an op may read it twice). */
export const UNARY: Record<string, (f: Func, x: Local) => Code> = {
  neg: (_, x) => f32x4.neg(x.get()),
  abs: (_, x) => f32x4.abs(x.get()),
  sqrt: (_, x) => f32x4.sqrt(x.get()),
  rsqrt: (_, x) => f32x4.div(k4(1), f32x4.sqrt(x.get())),
  // x > 0 ? x : 0, which maps NaN to 0 like the TypeScript kernel (max would keep it)
  relu: (_, x) => v128.and(x.get(), f32x4.gt(x.get(), k4(0))),
  exp: (f, x) => exp(f, x.get()),
  tanh: (f, x) => tanh(f, x.get()),
  sigmoid: (f, x) => sigmoid(f, x.get()),
  silu: (f, x) => mul(x.get(), sigmoid(f, x.get())),
  // GELU, tanh approximation: 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3);
  // the sigmoid form does not cancel for large negative x
  gelu: (f, x) =>
    mul(
      x.get(),
      sigmoid(f, mul(k4(2 * 0.7978845608028654), mad(mul(x.get(), mul(x.get(), x.get())), k4(0.044715), x.get()))),
    ),
};

/**
 * The backward passes of SiLU and GELU: g * op'(x) from the input x and the gradient g, with s a sigmoid:
 * silu' = s (1 + x (1 - s)), s = sigmoid(x); GELU is x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3),
 * so gelu' = s + x s (1 - s) 2 du/dx, s = sigmoid(2u) (the tanh form's 0.5 (1 + tanh u) is s, and its
 * 1 - tanh^2 u is 4 s (1 - s)).
 */
const ACTIVATION_BACKWARD: Record<string, (f: Func, x: Local, g: Local) => Code> = {
  silu: (f, x, g) => {
    const s = f.local('v128');
    const one = k4(1);
    return seq(s.set(sigmoid(f, x.get())), mul(g.get(), mul(s.get(), mad(x.get(), f32x4.sub(one, s.get()), one))));
  },
  gelu: (f, x, g) => {
    const [s, x2] = [f.local('v128'), f.local('v128')];
    const c2 = 2 * 0.7978845608028654;
    return seq(
      x2.set(mul(x.get(), x.get())),
      s.set(sigmoid(f, mul(k4(c2), mad(mul(x.get(), x2.get()), k4(0.044715), x.get())))),
      // s + x s (1 - s) 2c (1 + 3 * 0.044715 x^2)
      mul(
        g.get(),
        mad(
          mul(mul(x.get(), s.get()), f32x4.sub(k4(1), s.get())),
          mul(k4(c2), mad(x2.get(), k4(3 * 0.044715), k4(1))),
          s.get(),
        ),
      ),
    );
  },
};

/** 1.0 where a comparison's lanes are all-ones, else 0.0. */
const asFloat = (mask: Code) => v128.and(mask, k4(1));

/** Binary ops. */
const BINARY: Record<string, (a: Code, b: Code) => Code> = {
  add: f32x4.add,
  sub: f32x4.sub,
  mul: f32x4.mul,
  div: f32x4.div,
  // IEEE maximum/minimum: NaN wins, as in PyTorch
  maximum: f32x4.max,
  minimum: f32x4.min,
  eq: (a, b) => asFloat(f32x4.eq(a, b)),
  ne: (a, b) => asFloat(f32x4.ne(a, b)),
  lt: (a, b) => asFloat(f32x4.lt(a, b)),
  le: (a, b) => asFloat(f32x4.le(a, b)),
  gt: (a, b) => asFloat(f32x4.gt(a, b)),
  ge: (a, b) => asFloat(f32x4.ge(a, b)),
};

/** int32 ops (comparisons of ids and masks): 1 or 0 as int32. */
const BINARY_I32: Record<string, (a: Code, b: Code) => Code> = {
  add: i32x4.add,
  sub: i32x4.sub,
  mul: i32x4.mul,
  eq: (a, b) => i32x4.one(i32x4.eq(a, b)),
  ne: (a, b) => i32x4.one(v128.not(i32x4.eq(a, b))),
  lt: (a, b) => i32x4.one(i32x4.ltS(a, b)),
  le: (a, b) => i32x4.one(v128.not(i32x4.gtS(a, b))),
  gt: (a, b) => i32x4.one(i32x4.gtS(a, b)),
  ge: (a, b) => i32x4.one(v128.not(i32x4.ltS(a, b))),
};

/** Dims the elementwise kernels walk (more are looped over by the caller). */
export const EW_DIMS = 4;

/**
 * Emits `name(n0..n3, o, os0..os3, x, xs0..xs3, ...)`: out[h][i][j][k] =
 * op(in[h][i][j][k], ...) over a 4-D index space, for `arity` inputs and one
 * output (32-bit elements), each an address and four element strides.
 * Rows where every operand is contiguous go four elements per step with
 * plain vector loads and stores; other rows load each vector by its stride.
 * The last 1 to 3 elements of a row are gathered into one vector and stored
 * lane by lane, so nothing outside the output is written (another thread may
 * own the next row).
 */
function elementwise(m: ModuleBuilder, name: string, arity: number, op: (f: Func, xs: Local[]) => Code): void {
  const D = EW_DIMS;
  const f = m.func(name, Array(D + (D + 1) * (arity + 1)).fill('i32'));
  const dims = f.params.slice(0, D);
  // output first, then the inputs: each a base address and D strides
  const operands = Array.from({ length: arity + 1 }, (_, t) => f.params.slice(D + (D + 1) * t, D + (D + 1) * (t + 1)));
  const ptrs = operands.map(() => f.local('i32')); // each operand's place in the current row
  const vs = Array.from({ length: arity }, () => f.local('v128'));
  const idx = Array.from({ length: D - 1 }, () => f.local('i32')); // the outer indices
  const [k, end, left, r] = [f.local('i32'), f.local('i32'), f.local('i32'), f.local('v128')];
  const rowLen = dims[D - 1];
  const stride = (t: number) => operands[t][D];
  // The 4 values at p, p+s, p+2s, p+3s, stopping at the `last`-th (later lanes repeat it).
  const gather = (t: number, last: Code) =>
    [1, 2, 3].reduce(
      (v: Code, lane) =>
        f32x4.replaceLane(v, lane, f32.load(i32.add(ptrs[t].get(), i32.mul(i32.minU(c(lane), last), stride(t).get())))),
      v128.load32Splat(ptrs[t].get()),
    );
  const load4 = (t: number) =>
    choose(
      'v128',
      i32.eq(stride(t).get(), c(4)),
      v128.load(ptrs[t].get()),
      choose('v128', i32.eqz(stride(t).get()), v128.load32Splat(ptrs[t].get()), gather(t, c(3))),
    );
  const storeLane = (lane: number) =>
    f32.store(i32.add(ptrs[0].get(), i32.mul(c(lane), stride(0).get())), f32x4.extractLane(r.get(), lane));
  const store4 = if_(
    i32.eq(stride(0).get(), c(4)),
    v128.store(ptrs[0].get(), r.get()),
    seq(...[0, 1, 2, 3].map(storeLane)),
  );
  const advance = seq(...ptrs.map((p, t) => p.set(i32.add(p.get(), i32.shl(stride(t).get(), c(2)))))); // 4 elements on
  const contiguous = operands.map((_, t) => i32.eq(stride(t).get(), c(4))).reduce((x, y) => i32.and(x, y));
  // a row: set each operand's pointer from the outer indices, then the row's elements
  const rowStart = (t: number) =>
    idx.reduce((sum: Code, x, d) => i32.add(sum, i32.mul(x.get(), operands[t][1 + d].get())), operands[t][0].get());
  const row = seq(
    ...ptrs.map((p, t) => p.set(rowStart(t))),
    if_(
      contiguous,
      for_(
        k,
        c(0),
        end.get(),
        4,
        seq(...vs.map((v, t) => v.set(v128.load(ptrs[t + 1].get()))), v128.store(ptrs[0].get(), op(f, vs)), advance),
      ),
      for_(k, c(0), end.get(), 4, seq(...vs.map((v, t) => v.set(load4(t + 1))), r.set(op(f, vs)), store4, advance)),
    ),
    if_(
      i32.ltU(end.get(), rowLen.get()),
      seq(
        left.set(i32.sub(rowLen.get(), end.get())),
        ...vs.map((v, t) => v.set(gather(t + 1, i32.sub(left.get(), c(1))))),
        r.set(op(f, vs)),
        storeLane(0),
        if_(i32.gtU(left.get(), c(1)), storeLane(1)),
        if_(i32.gtU(left.get(), c(2)), storeLane(2)),
      ),
    ),
  );
  f.body = seq(
    ...operands.flatMap((ps) => ps.slice(1).map((s) => s.set(i32.shl(s.get(), c(2))))), // element strides to bytes
    end.set(i32.and(rowLen.get(), c(~3))),
    idx.reduceRight((body: Code, x, d) => for_(x, c(0), dims[d].get(), 1, body), row),
  );
}

/** Emits the elementwise kernels: un_<op>, bin_<op>, bwd_<activation>, where, copy. */
export function emitElementwise(m: ModuleBuilder): void {
  for (const [name, op] of Object.entries(UNARY)) elementwise(m, `un_${name}`, 1, (f, [x]) => op(f, x));
  for (const [name, op] of Object.entries(BINARY))
    elementwise(m, `bin_${name}`, 2, (_, [a, b]) => op(a.get(), b.get()));
  for (const [name, op] of Object.entries(ACTIVATION_BACKWARD))
    elementwise(m, `bwd_${name}`, 2, (f, [x, g]) => op(f, x, g));
  // cond != 0 ? a : b, for a float32 condition (where -0 is 0 too) and an int32 one
  elementwise(m, 'where', 3, (_, [cond, a, b]) => v128.select(b.get(), a.get(), f32x4.eq(cond.get(), k4(0))));
  elementwise(m, 'where_i32', 3, (_, [cond, a, b]) => v128.select(b.get(), a.get(), i32x4.eqz(cond.get())));
  // a strided copy moves bits, so it serves int32 as well as float32
  elementwise(m, 'copy', 1, (_, [x]) => x.get());
  // int32 to float32 (float32 to int32 must wrap like a typed-array store; it stays in TypeScript)
  elementwise(m, 'i32_to_f32', 1, (_, [x]) => f32x4.fromI32x4(x.get()));
  for (const [name, op] of Object.entries(BINARY_I32))
    elementwise(m, `bin_i32_${name}`, 2, (_, [a, b]) => op(a.get(), b.get()));
}

/**
 * Emits adamw(p, g, m, v, n, decay, b1, b2, b2c, c2, stepSize, eps): one AdamW
 * step over n contiguous float32s, in place, with the same operations in the
 * same order as nn/optim.ts (so the result is the same to the last bit):
 *   m = m + (g - m) * b1;  v = v * b2 + g * g * b2c
 *   p = p * decay - m / (sqrt(v) / c2 + eps) * stepSize
 * where b1 = 1 - beta1, b2 = beta2, b2c = 1 - beta2 and c2 = sqrt(1 - beta2^step),
 * each rounded to float32 as a scalar tensor would be.
 */
export function emitAdamW(m: ModuleBuilder): void {
  const f = m.func('adamw', ['i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f32']);
  const [p, g, mm, v, n, decay, b1, b2, b2c, c2, stepSize, eps] = f.params;
  const [k, end, gv, mv, vv] = [f.local('i32'), f.local('i32'), f.local('v128'), f.local('v128'), f.local('v128')];
  const [g1, m1, v1] = [f.local('f32'), f.local('f32'), f.local('f32')];
  const sp = (x: Local) => f32x4.splat(x.get());
  const vec = seq(
    gv.set(v128.load(g.get())),
    mv.set(f32x4.add(v128.load(mm.get()), mul(f32x4.sub(gv.get(), v128.load(mm.get())), sp(b1)))),
    vv.set(f32x4.add(mul(v128.load(v.get()), sp(b2)), mul(mul(gv.get(), gv.get()), sp(b2c)))),
    v128.store(mm.get(), mv.get()),
    v128.store(v.get(), vv.get()),
    v128.store(
      p.get(),
      f32x4.sub(
        mul(v128.load(p.get()), sp(decay)),
        mul(f32x4.div(mv.get(), f32x4.add(f32x4.div(f32x4.sqrt(vv.get()), sp(c2)), sp(eps))), sp(stepSize)),
      ),
    ),
  );
  const one = seq(
    g1.set(f32.load(g.get())),
    m1.set(f32.add(f32.load(mm.get()), f32.mul(f32.sub(g1.get(), f32.load(mm.get())), b1.get()))),
    v1.set(f32.add(f32.mul(f32.load(v.get()), b2.get()), f32.mul(f32.mul(g1.get(), g1.get()), b2c.get()))),
    f32.store(mm.get(), m1.get()),
    f32.store(v.get(), v1.get()),
    f32.store(
      p.get(),
      f32.sub(
        f32.mul(f32.load(p.get()), decay.get()),
        f32.mul(f32.div(m1.get(), f32.add(f32.div(f32.sqrt(v1.get()), c2.get()), eps.get())), stepSize.get()),
      ),
    ),
  );
  const advance = (bytes: number) => seq(...[p, g, mm, v].map((x) => x.set(i32.add(x.get(), c(bytes)))));
  f.body = seq(
    end.set(i32.and(n.get(), c(~3))),
    for_(k, c(0), end.get(), 4, seq(vec, advance(16))),
    for_(k, end.get(), n.get(), 1, seq(one, advance(4))),
  );
}
