// Pure shape arithmetic: no storage, no backend. Everything that decides
// which element of which buffer an op reads lives here, so it can be unit
// tested on its own.

/** Number of elements of a shape (1 for a scalar shape []). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides: the last dim moves fastest. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** True when (shape, strides) describes a dense row-major block. */
export function isContiguous(shape: readonly number[], strides: readonly number[]): boolean {
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && strides[i] !== s) return false;
    s *= shape[i];
  }
  return true;
}

/** Turns a possibly negative dim into 0..rank-1, or throws naming the op. */
export function normalizeDim(dim: number, rank: number, op: string): number {
  const d = dim < 0 ? dim + rank : dim;
  if (d < 0 || d >= rank || !Number.isInteger(d)) {
    throw new Error(`${op}: dim ${dim} is out of range for a tensor of rank ${rank}`);
  }
  return d;
}

/** Formats a shape the way error messages print it: [2,3]. */
export function fmt(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

/** NumPy broadcasting: align from the right, dims must match or be 1. */
export function broadcastShapes(op: string, ...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const o = rank - s.length + i;
      const d = s[i];
      if (d === 1) continue;
      if (out[o] !== 1 && out[o] !== d) {
        throw new Error(`${op}: shapes ${shapes.map(fmt).join(' and ')} cannot be broadcast together`);
      }
      out[o] = d;
    }
  }
  return out;
}

/**
 * Strides that read a tensor of `shape` as if it had `target` shape:
 * broadcast dims get stride 0, so an expanded view costs no copy.
 */
export function broadcastStrides(
  shape: readonly number[],
  strides: readonly number[],
  target: readonly number[],
): number[] {
  const out = new Array<number>(target.length).fill(0);
  const lead = target.length - shape.length;
  for (let i = 0; i < shape.length; i++) {
    out[lead + i] = shape[i] === 1 && target[lead + i] !== 1 ? 0 : strides[i];
  }
  return out;
}

/**
 * The dims a gradient of `target` shape must be summed over to get back to
 * `shape` (the inverse of broadcasting): leading extra dims, and dims where
 * `shape` had 1 but `target` did not.
 */
export function broadcastReduceDims(shape: readonly number[], target: readonly number[]): number[] {
  const dims: number[] = [];
  const lead = target.length - shape.length;
  for (let i = 0; i < target.length; i++) {
    if (i < lead || (shape[i - lead] === 1 && target[i] !== 1)) dims.push(i);
  }
  return dims;
}

/** Resolves one -1 in a reshape target, checking the element count. */
export function inferReshape(from: readonly number[], to: readonly number[]): number[] {
  const n = numel(from);
  const out = [...to];
  const unknown = out.indexOf(-1);
  if (unknown !== -1) {
    const known = numel(out.filter((_, i) => i !== unknown));
    if (known === 0 || n % known !== 0) {
      throw new Error(`reshape: cannot reshape ${fmt(from)} into ${fmt(to)}`);
    }
    out[unknown] = n / known;
  }
  if (numel(out) !== n || out.some((d) => d < 0 || !Number.isInteger(d))) {
    throw new Error(`reshape: cannot reshape ${fmt(from)} (${n} elements) into ${fmt(to)}`);
  }
  return out;
}

/**
 * Strides for viewing (shape, strides) as `to` without copying, or null when
 * the memory layout does not allow it (then reshape must copy first). This is
 * PyTorch's rule (ATen's computeStride): walking from the innermost dim,
 * source dims that are laid out densely one after another form a chunk, and
 * the target dims must split each chunk exactly.
 */
export function viewStrides(
  shape: readonly number[],
  strides: readonly number[],
  to: readonly number[],
): number[] | null {
  if (shape.length === 0 || numel(shape) === 0) return contiguousStrides(to);
  const out = new Array<number>(to.length);
  let viewD = to.length - 1;
  let chunkBase = strides[strides.length - 1];
  let tensorNumel = 1;
  let viewNumel = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    tensorNumel *= shape[d];
    const chunkEnds = d === 0 || (shape[d - 1] !== 1 && strides[d - 1] !== tensorNumel * chunkBase);
    if (!chunkEnds) continue;
    while (viewD >= 0 && (viewNumel < tensorNumel || to[viewD] === 1)) {
      out[viewD] = viewNumel * chunkBase;
      viewNumel *= to[viewD];
      viewD--;
    }
    if (viewNumel !== tensorNumel) return null;
    if (d > 0) {
      chunkBase = strides[d - 1];
      tensorNumel = 1;
      viewNumel = 1;
    }
  }
  return viewD === -1 ? out : null;
}
