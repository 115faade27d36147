// A tiny WebAssembly assembler: enough to write SIMD kernels in TypeScript
// and turn them into a module at run time, with no compiler and no .wasm file
// (tinygrad renders its kernels the same way). WebAssembly is a stack
// machine: an instruction pops its operands and pushes its result. Here every
// helper returns the bytes (`Code`) that push one value, built from the code
// of its operands, so a kernel reads as nested expressions:
//
//   acc.set(f32x4.add(acc.get(), f32x4.mul(a.get(), b.get())))
//
// compiles to `local.get acc; local.get a; local.get b; f32x4.mul; f32x4.add;
// local.set acc`. The binary format is in the spec:
// https://webassembly.github.io/spec/core/binary/index.html

/**
 * Instruction bytes, as nested arrays: helpers wrap their operands' code
 * without copying it, and a function body is flattened once, at the end.
 */
export type Code = (number | Code)[];
/** The value types our kernels use. */
export type ValType = 'i32' | 'f32' | 'v128';

const TYPE_BYTE: Record<ValType, number> = { i32: 0x7f, f32: 0x7d, v128: 0x7b };

/** Unsigned LEB128: 7 bits per byte, low bits first, the high bit says "more follows". */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    const byte = n % 128;
    n = Math.floor(n / 128);
    out.push(n ? byte | 0x80 : byte);
  } while (n);
  return out;
}

/** Signed LEB128, for i32 constants: stop once the rest is all sign bits. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (n |= 0; ;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(byte & 0x40)) || (n === -1 && byte & 0x40)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

/** A section or a name: its byte length first, then the bytes. */
function sized(bytes: number[]): number[] {
  return [...uleb(bytes.length), ...bytes];
}

/** A vector: the element count, then the elements. */
function vec(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

function utf8(s: string): number[] {
  return sized([...new TextEncoder().encode(s)]);
}

/** Appends the bytes of nested code to `out`. */
function flatten(code: Code, out: number[]): number[] {
  for (const x of code) {
    if (typeof x === 'number') out.push(x);
    else flatten(x, out);
  }
  return out;
}

/** Concatenates pieces of code (a statement list). */
export function seq(...parts: Code[]): Code {
  return parts;
}

/** A function parameter or local variable. */
export class Local {
  constructor(
    readonly index: number,
    readonly type: ValType,
  ) {}
  get(): Code {
    return [0x20, ...uleb(this.index)];
  }
  set(value: Code): Code {
    return [value, 0x21, ...uleb(this.index)];
  }
  /** Sets and also leaves the value on the stack. */
  tee(value: Code): Code {
    return [value, 0x22, ...uleb(this.index)];
  }
}

/** One function of a module: typed parameters, locals on demand, and a body. */
export class Func {
  readonly params: Local[];
  private readonly locals: ValType[] = [];
  body: Code = [];

  constructor(
    readonly index: number,
    readonly name: string,
    params: ValType[],
    readonly result: ValType | null,
  ) {
    this.params = params.map((t, i) => new Local(i, t));
  }

  /** A fresh local variable (zero-initialised, as wasm guarantees). */
  local(type: ValType): Local {
    this.locals.push(type);
    return new Local(this.params.length + this.locals.length - 1, type);
  }

  /** The function type, as the type section writes it. */
  signature(): number[] {
    return [
      0x60,
      ...vec(this.params.map((p) => [TYPE_BYTE[p.type]])),
      ...vec(this.result ? [[TYPE_BYTE[this.result]]] : []),
    ];
  }

  /** The code section entry: locals (one group each), the body, `end`. */
  encode(): number[] {
    return sized(flatten(this.body, [...vec(this.locals.map((t) => [1, TYPE_BYTE[t]]))]).concat(0x0b));
  }
}

/** A module under construction: its functions, each exported under its name. */
export class ModuleBuilder {
  readonly funcs: Func[] = [];
  /** Functions the host provides (env.<name>): they take the first indices, before every defined one. */
  private readonly imports: Func[] = [];

  /** Declares a function the host passes in as env.<name> when it instantiates the module. */
  importFunc(name: string, params: ValType[], result: ValType | null = null): Func {
    if (this.funcs.length) throw new Error(`wasm module: import ${name} must come before the first function`);
    const f = new Func(this.imports.length, name, params, result);
    this.imports.push(f);
    return f;
  }

  /** Declares a function; fill in its `body` afterwards. */
  func(name: string, params: ValType[], result: ValType | null = null): Func {
    const f = new Func(this.imports.length + this.funcs.length, name, params, result);
    this.funcs.push(f);
    return f;
  }

  /**
   * The binary module. It imports its memory as env.memory (and the host's
   * functions as env.<name>); a shared memory must declare a maximum, and
   * 65536 pages (4 GiB) accepts any the host makes.
   */
  assemble(shared: boolean): Uint8Array<ArrayBuffer> {
    const types: string[] = [];
    const typeOf = (f: Func) => {
      const key = f.signature().join();
      if (!types.includes(key)) types.push(key);
      return types.indexOf(key);
    };
    const importTypes = this.imports.map(typeOf);
    const typeIndex = this.funcs.map(typeOf);
    const section = (id: number, items: number[][]) => [id, ...sized(vec(items))];
    const limits = shared ? [0x03, 0, ...uleb(65536)] : [0x00, 0];
    return new Uint8Array([
      0x00,
      0x61,
      0x73,
      0x6d,
      1,
      0,
      0,
      0, // "\0asm", version 1
      ...section(
        1,
        types.map((t) => t.split(',').map(Number)),
      ),
      ...section(2, [
        [...utf8('env'), ...utf8('memory'), 0x02, ...limits],
        ...this.imports.map((f, i) => [...utf8('env'), ...utf8(f.name), 0x00, ...uleb(importTypes[i])]),
      ]),
      ...section(
        3,
        typeIndex.map((i) => uleb(i)),
      ),
      ...section(
        7,
        this.funcs.map((f) => [...utf8(f.name), 0x00, ...uleb(f.index)]),
      ),
      ...section(
        10,
        this.funcs.map((f) => f.encode()),
      ),
    ]);
  }
}

// ---------------------------------------------------------------- control flow

/** `if (cond) { then } else { otherwise }`, as a statement. */
export function if_(cond: Code, then: Code, otherwise: Code = []): Code {
  return [cond, 0x04, 0x40, then, otherwise.length ? [0x05, otherwise] : [], 0x0b];
}

/**
 * `for (i = start; i < end; i += step) body`, comparing unsigned (addresses
 * may pass 2 GiB). `end` and `step` are evaluated on every iteration, so
 * pass locals or constants. Branch depths: br 1 leaves the loop, br 0 repeats.
 */
export function for_(i: Local, start: Code, end: Code, step: Code | number, body: Code): Code {
  const inc = typeof step === 'number' ? i32.const(step) : step;
  return [
    i.set(start),
    0x02,
    0x40,
    0x03,
    0x40, // block, loop
    i32.geU(i.get(), end),
    0x0d,
    1, // br_if 1: done
    body,
    i.set(i32.add(i.get(), inc)),
    0x0c,
    0,
    0x0b,
    0x0b, // br 0, end loop, end block
  ];
}

/** A call to another function of the module. */
export function call(f: Func, ...args: Code[]): Code {
  return [args, 0x10, ...uleb(f.index)];
}

/** `cond ? then : otherwise` as a value of `type`; only the chosen side runs. */
export function choose(type: ValType, cond: Code, then: Code, otherwise: Code): Code {
  return [cond, 0x04, TYPE_BYTE[type], then, 0x05, otherwise, 0x0b];
}

/** `do { body } while (cond)`: one test per iteration, for loops known to run at least once. */
export function doWhile(body: Code, cond: Code): Code {
  return [0x03, 0x40, body, cond, 0x0d, 0, 0x0b];
}

// ---------------------------------------------------------------- instructions

const op =
  (...bytes: number[]) =>
  (...args: Code[]): Code => [args, bytes];
/** SIMD instructions: the 0xfd prefix, then the opcode as LEB128. */
const simd = (code: number) => op(0xfd, ...uleb(code));
/** Memory access immediates: alignment (log2 bytes) and a constant offset. */
const memarg = (align: number, offset = 0) => [align, ...uleb(offset)];

/** i32 instructions (addresses, counters). */
export const i32 = {
  const: (n: number): Code => [0x41, ...sleb(n)],
  add: op(0x6a),
  sub: op(0x6b),
  mul: op(0x6c),
  shl: op(0x74),
  and: op(0x71),
  or: op(0x72),
  xor: op(0x73),
  shrU: op(0x76),
  eq: op(0x46),
  ne: op(0x47),
  eqz: op(0x45),
  ltU: op(0x49),
  geU: op(0x4f),
  gtU: op(0x4b),
  ltS: op(0x48),
  gtS: op(0x4a),
  /** Unsigned minimum, via select. */
  minU: (a: Code, b: Code): Code => [a, b, a, b, 0x49, 0x1b],
  load: (addr: Code, offset = 0): Code => [addr, 0x28, ...memarg(2, offset)],
  /** A u16, zero-extended. */
  load16U: (addr: Code, offset = 0): Code => [addr, 0x2f, ...memarg(1, offset)],
};

/** Scalar f32 instructions (edges, reductions). */
export const f32 = {
  const: (x: number): Code => [0x43, ...new Uint8Array(new Float32Array([x]).buffer)],
  add: op(0x92),
  sub: op(0x93),
  mul: op(0x94),
  div: op(0x95),
  max: op(0x97),
  sqrt: op(0x91),
  eq: op(0x5b),
  /** An unsigned i32 converted to f32. */
  fromI32U: op(0xb3),
  /** The f32 with the bits of an i32. */
  fromBits: op(0xbe),
  load: (addr: Code, offset = 0): Code => [addr, 0x2a, ...memarg(2, offset)],
  store: (addr: Code, value: Code, offset = 0): Code => [addr, value, 0x38, ...memarg(2, offset)],
};

/** 128-bit vector instructions that do not care about lanes. */
export const v128 = {
  load: (addr: Code, offset = 0): Code => [addr, 0xfd, 0x00, ...memarg(4, offset)],
  store: (addr: Code, value: Code, offset = 0): Code => [addr, value, 0xfd, 0x0b, ...memarg(4, offset)],
  /** Loads one f32 into all four lanes. */
  load32Splat: (addr: Code, offset = 0): Code => [addr, 0xfd, 0x09, ...memarg(2, offset)],
  /** a & ~b */
  andNot: simd(0x4f),
  and: simd(0x4e),
  or: simd(0x50),
  not: simd(0x4d),
  /** Bits of a where mask is set, else of b. */
  select: simd(0x52),
};

/** Byte lanes: shuffles. */
export const i8x16 = {
  /** Picks four 32-bit lanes from a (0..3) and b (4..7). */
  shuffle: (a: Code, b: Code, lanes: number[]): Code => [
    a,
    b,
    0xfd,
    0x0d,
    ...lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]),
  ],
};

/** Four f32 lanes. */
export const f32x4 = {
  /** A constant vector with x in every lane. */
  const: (x: number): Code => [0xfd, 0x0c, ...new Uint8Array(new Float32Array([x, x, x, x]).buffer)],
  splat: simd(0x13),
  extractLane: (v: Code, lane: number): Code => [v, 0xfd, 0x1f, lane],
  replaceLane: (v: Code, lane: number, x: Code): Code => [v, x, 0xfd, 0x20, lane],
  add: simd(0xe4),
  sub: simd(0xe5),
  mul: simd(0xe6),
  div: simd(0xe7),
  /** IEEE minimum and maximum: NaN if either lane is NaN (several x86 instructions each). */
  min: simd(0xe8),
  max: simd(0xe9),
  /** b < a ? b : a and a < b ? b : a: one x86 instruction each; a NaN in `a` passes through. */
  pmin: simd(0xea),
  pmax: simd(0xeb),
  neg: simd(0xe1),
  abs: simd(0xe0),
  sqrt: simd(0xe3),
  /** Lanes converted from i32. */
  fromI32x4: simd(0xfa),
  /** Comparisons give all-ones or all-zeros lanes. */
  eq: simd(0x41),
  ne: simd(0x42),
  lt: simd(0x43),
  gt: simd(0x44),
  le: simd(0x45),
  ge: simd(0x46),
  /** a * b + c in one rounding where the CPU has FMA (relaxed SIMD: the engine may also round twice). */
  relaxedMadd: simd(0x105),
};

/** Four i32 lanes (the bit tricks of exp). */
export const i32x4 = {
  const: (n: number): Code => [0xfd, 0x0c, ...new Uint8Array(new Int32Array([n, n, n, n]).buffer)],
  /** Compares lanes with zero: all-ones where a lane is 0. */
  eqz: (v: Code): Code => [v, 0xfd, 0x0c, ...Array(16).fill(0), 0xfd, 0x37],
  eq: simd(0x37),
  ltS: simd(0x39),
  gtS: simd(0x3b),
  /** 1 in lanes where a comparison mask is set, else 0. */
  one: (mask: Code): Code => [mask, 0xfd, 0x0c, ...new Uint8Array(new Int32Array([1, 1, 1, 1]).buffer), 0xfd, 0x4e],
  add: simd(0xae),
  sub: simd(0xb1),
  mul: simd(0xb5),
  /** Shifts every lane left by an i32 count. */
  shl: simd(0xab),
};
