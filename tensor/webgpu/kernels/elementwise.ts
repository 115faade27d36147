// Elementwise kernels: one thread per output element. Every operand (the
// output included) is a strided view, so transposed, sliced and broadcast
// (stride 0) inputs are read in place, and copyInto writes through a strided
// destination. The backend first merges dims that are contiguous in every
// operand, so most calls run at rank 1 and skip the index arithmetic.
//
// Params: [n, shape[0..R), then per view (output first): offset, strides[0..R)].

import type { ActivationOp, BinaryOp, UnaryOp } from '../../backend.ts';
import type { DType } from '../../dtype.ts';
import { type Access, type Kernel, binding, castExpr, memo, prelude, stridedOffsets, wgslType } from './common.ts';

/** Threads per workgroup of the elementwise kernels. */
export const EW_WORKGROUP = 64;

/**
 * The entry point of a kernel with a thread per element: WGSL's main around
 * `body`, which runs for each element i < p(0) (the workgroups may form a
 * 2-d grid: groupIndex).
 */
export function perElement(body: string): string {
  return /* wgsl */ `@compute @workgroup_size(${EW_WORKGROUP})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = groupIndex(wid, nwg) * ${EW_WORKGROUP}u + lid;
  if (i >= p(0u)) { return; }${body}
}`;
}

/** Where view k's offset sits in the params of a rank-`rank` elementwise kernel. */
function viewParamAt(rank: number, k: number): number {
  return 1 + rank + k * (1 + rank);
}

/**
 * Float unary ops as WGSL expressions of `x` (the helpers are in common.ts).
 * unaryKernel maps a NaN input to NaN itself for all but relu, which gives 0
 * like the CPU's `x > 0 ? x : 0`.
 */
const unaryF32: Record<UnaryOp, string> = {
  neg: '-x',
  abs: 'abs(x)',
  exp: 'exp_(x)',
  log: 'log_(x)',
  sqrt: 'sqrt_(x)',
  rsqrt: 'fdiv(1.0, sqrt_(x))',
  sin: 'sin_(x)',
  cos: 'cos_(x)',
  tanh: 'tanh_(x)',
  sigmoid: 'fdiv(1.0, 1.0 + exp_(-x))',
  relu: 'select(0.0, x, x > 0.0 && !isnan_(x))',
  silu: 'fdiv(x, 1.0 + exp_(-x))',
  // GELU, tanh approximation: 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3);
  // the sigmoid form does not cancel for large negative x (the CPU's WebAssembly kernel uses it too)
  gelu: 'fdiv(x, 1.0 + exp_(-1.5957691216057308 * (x + 0.044715 * x * x * x)))',
};

/** The unary ops defined on int32 (ops.ts casts ints to float for the others). */
const unaryI32: Partial<Record<UnaryOp, string>> = { neg: '-x', abs: 'abs(x)', relu: 'max(x, 0)' };

/**
 * Binary ops on floats. Comparisons and maximum test NaN explicitly: WGSL
 * does not promise IEEE comparisons, and NaN must win in maximum/minimum.
 */
const binaryF32: Record<BinaryOp, string> = {
  add: 'a + b',
  sub: 'a - b',
  mul: 'a * b',
  div: 'fdiv(a, b)',
  pow: 'pow_(a, b)',
  maximum: 'select(b, a, a > b || isnan_(a))',
  minimum: 'select(b, a, a < b || isnan_(a))',
  eq: 'select(0.0, 1.0, a == b && !isnan_(a) && !isnan_(b))',
  ne: 'select(1.0, 0.0, a == b && !isnan_(a) && !isnan_(b))',
  lt: 'select(0.0, 1.0, a < b && !isnan_(a) && !isnan_(b))',
  le: 'select(0.0, 1.0, a <= b && !isnan_(a) && !isnan_(b))',
  gt: 'select(0.0, 1.0, a > b && !isnan_(a) && !isnan_(b))',
  ge: 'select(0.0, 1.0, a >= b && !isnan_(a) && !isnan_(b))',
};

/** Binary ops on int32: wrap-around arithmetic; division truncates, x / 0 is 0 (as a typed-array store of Infinity). */
const binaryI32: Record<BinaryOp, string> = {
  add: 'a + b',
  sub: 'a - b',
  mul: 'a * b',
  div: 'select(a / b, 0, b == 0)',
  pow: 'powi(a, b)',
  maximum: 'max(a, b)',
  minimum: 'min(a, b)',
  eq: 'select(0, 1, a == b)',
  ne: 'select(0, 1, a != b)',
  lt: 'select(0, 1, a < b)',
  le: 'select(0, 1, a <= b)',
  gt: 'select(0, 1, a > b)',
  ge: 'select(0, 1, a >= b)',
};

/**
 * The generic strided map: out[view 0] = body(in1[view 1], in2[view 2], ...).
 * `body` declares nothing; it is an expression of the `let` names in `names`.
 */
function mapKernel(
  name: string,
  rank: number,
  outType: DType,
  ins: { name: string; dtype: DType }[],
  body: string,
  helpers = '',
): Kernel {
  const views = [0, ...ins.map((_, k) => k + 1)].map((k) => viewParamAt(rank, k));
  const loads = ins.map((x, k) => `let ${x.name} = in${k}[o${k + 1}];`).join('\n    ');
  const code = /* wgsl */ `${prelude}${helpers}
${binding(1, 'out', wgslType(outType), 'read_write')}
${ins.map((x, k) => binding(k + 2, `in${k}`, wgslType(x.dtype), 'read')).join('\n')}
${perElement(`
  ${stridedOffsets('i', rank, 1, views)}
  ${loads}
  out[o0] = ${body};`)}`;
  return {
    key: `${name}:${rank}:${outType}:${ins.map((x) => x.dtype).join(',')}`,
    code,
    workgroupSize: EW_WORKGROUP,
    storage: ['read_write', ...ins.map(() => 'read' as const)],
  };
}

/** y = op(x). */
export const unaryKernel = memo((op: UnaryOp, dtype: DType, rank: number): Kernel => {
  const expr =
    dtype === 'int32' ? unaryI32[op] : op === 'relu' ? unaryF32[op] : `select(${unaryF32[op]}, x, isnan_(x))`;
  if (!expr) throw new Error(`webgpu unary: ${op} is not defined for ${dtype}`);
  return mapKernel(`unary.${op}`, rank, dtype, [{ name: 'x', dtype }], expr);
});

/** out = a op b (comparisons give 1/0 in the inputs' dtype). */
export const binaryKernel = memo((op: BinaryOp, dtype: DType, rank: number): Kernel => {
  const expr = (dtype === 'int32' ? binaryI32 : binaryF32)[op];
  return mapKernel(
    `binary.${op}`,
    rank,
    dtype,
    [
      { name: 'a', dtype },
      { name: 'b', dtype },
    ],
    expr,
  );
});

/**
 * The activations' derivatives, for out = g * op'(x): silu' = s (1 + x (1 - s)) with s = sigmoid(x); GELU in its
 * sigmoid form x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): gelu' = s + x s (1 - s) 2 du/dx, s = sigmoid(2u).
 */
const activationGrad: Record<ActivationOp, string> = {
  silu: /* wgsl */ `
fn silu_grad(x: f32) -> f32 {
  let s = fdiv(1.0, 1.0 + exp_(-x));
  return s * (1.0 + x * (1.0 - s));
}`,
  gelu: /* wgsl */ `
fn gelu_grad(x: f32) -> f32 {
  let s = fdiv(1.0, 1.0 + exp_(-1.5957691216057308 * (x + 0.044715 * x * x * x)));
  return s + x * s * (1.0 - s) * 1.5957691216057308 * (1.0 + ${3 * 0.044715} * x * x);
}`,
};

/** out = g * op'(x): an activation's backward pass in one dispatch. */
export const activationBackwardKernel = memo((op: ActivationOp, rank: number): Kernel =>
  mapKernel(
    `activation_backward.${op}`,
    rank,
    'float32',
    [
      { name: 'x', dtype: 'float32' },
      { name: 'g', dtype: 'float32' },
    ],
    `g * ${op}_grad(x)`,
    activationGrad[op],
  ),
);

/** out = cond != 0 ? a : b. A float cond tests its bits, so -0 counts as 0 and NaN as true, like the CPU. */
export const whereKernel = memo((condType: DType, dtype: DType, rank: number): Kernel => {
  const test = condType === 'int32' ? 'c != 0' : '(bitcast<u32>(c) & 0x7fffffffu) != 0u';
  return mapKernel(
    'where',
    rank,
    dtype,
    [
      { name: 'c', dtype: condType },
      { name: 'a', dtype },
      { name: 'b', dtype },
    ],
    `select(b, a, ${test})`,
  );
});

/**
 * A rotary embedding (backend.ts rope) in one pass: thread i owns one pair,
 * x1 = x[i] of the first half of the last axis and x2 = x[i + h] of the
 * second, and writes both of its outputs (inverse: the backward pass).
 * Params: map()'s for the first halves of out, x, cos and sin, then each
 * one's distance from its first half to its second (h times its last stride).
 */
export const ropeKernel = memo((inverse: boolean, rank: number): Kernel => {
  const far = viewParamAt(rank, 4); // where the four distances start
  const [first, second] = inverse
    ? ['x1 * cos1 + x2 * sin2', 'x2 * cos2 - x1 * sin1']
    : ['x1 * cos1 - x2 * sin1', 'x2 * cos2 + x1 * sin2'];
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'f32', 'read_write')}
${binding(2, 'x', 'f32', 'read')}
${binding(3, 'c', 'f32', 'read')}
${binding(4, 's', 'f32', 'read')}
${perElement(`
  ${stridedOffsets(
    'i',
    rank,
    1,
    [0, 1, 2, 3].map((k) => viewParamAt(rank, k)),
  )}
  let x1 = x[o1]; let x2 = x[o1 + p(${far + 1}u)];
  let cos1 = c[o2]; let cos2 = c[o2 + p(${far + 2}u)];
  let sin1 = s[o3]; let sin2 = s[o3 + p(${far + 3}u)];
  out[o0] = ${first};
  out[o0 + p(${far}u)] = ${second};`)}`;
  return {
    key: `rope:${rank}:${inverse ? 'inverse' : 'forward'}`,
    code,
    workgroupSize: EW_WORKGROUP,
    storage: ['read_write', 'read', 'read', 'read'],
  };
});

/** out = cast(x): materialises a view (contiguous or not, depending on the output strides). */
export const copyKernel = memo((from: DType, to: DType, rank: number): Kernel => {
  return mapKernel('copy', rank, to, [{ name: 'x', dtype: from }], castExpr('x', from, to));
});

/** out[i] = value, the value's bits in p(1). Params: [n, bits]. */
export const fillKernel = memo((dtype: DType): Kernel => {
  const t = wgslType(dtype);
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', t, 'read_write')}
${perElement(`
  out[i] = bitcast<${t}>(p(1u));`)}`;
  return { key: `fill:${dtype}`, code, workgroupSize: EW_WORKGROUP, storage: ['read_write'] };
});

/**
 * The upload copy: out[i] = src[p(1) + i] for i < p(0), 32-bit words. src is the
 * recorder's staging area; the copy runs in command order (recorder.ts).
 */
export const uploadKernel = memo((): Kernel => {
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', 'u32', 'read_write')}
${binding(2, 'src', 'u32', 'read')}
${perElement(`
  out[i] = src[p(1u) + i];`)}`;
  return { key: 'upload', code, workgroupSize: EW_WORKGROUP, storage: ['read_write', 'read'] };
});

/**
 * One AdamW step in place over contiguous p, m, v (and g, read), in the
 * order of torch.optim.AdamW's arithmetic (see the CPU backend's adamw).
 * Params: [n, pOffset, gOffset, mOffset, vOffset, then f32 bits of
 * 1 - lr wd, 1 - beta1, beta2, 1 - beta2, sqrt(1 - beta2^t), lr / (1 - beta1^t), eps,
 * then (conditional) the offset of the one-element flag: every thread returns where it is 0].
 */
export const adamwKernel = memo((conditional: boolean): Kernel => {
  const skip = conditional ? '\n  if (onlyIf[p(12u)] == 0.0) { return; }' : '';
  const code = /* wgsl */ `${prelude}
${binding(1, 'pw', 'f32', 'read_write')}
${binding(2, 'g', 'f32', 'read')}
${binding(3, 'm', 'f32', 'read_write')}
${binding(4, 'v', 'f32', 'read_write')}
${conditional ? binding(5, 'onlyIf', 'f32', 'read') : ''}
${perElement(`${skip}
  let gi = g[p(2u) + i];
  let mi = m[p(3u) + i] + (gi - m[p(3u) + i]) * pf(6u);
  let vi = v[p(4u) + i] * pf(7u) + (gi * gi) * pf(8u);
  m[p(3u) + i] = mi;
  v[p(4u) + i] = vi;
  pw[p(1u) + i] = pw[p(1u) + i] * pf(5u) - fdiv(mi, fdiv(sqrt_(vi), pf(9u)) + pf(11u)) * pf(10u);`)}`;
  const storage: Access[] = ['read_write', 'read', 'read_write', 'read_write'];
  return {
    key: conditional ? 'adamw:conditional' : 'adamw',
    code,
    workgroupSize: EW_WORKGROUP,
    storage: conditional ? [...storage, 'read'] : storage,
  };
});
