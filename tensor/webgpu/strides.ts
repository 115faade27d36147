// Host-side view arithmetic for the WebGPU kernels: merging dims so kernels
// run at the lowest rank possible, and the range of elements a view touches
// (to bind only that window of a buffer larger than one binding may be).

/**
 * Drops size-1 dims and merges neighbouring dims that are laid out one after
 * the other in every one of the views (outer stride == inner stride * inner
 * size). The merged views index exactly the same elements in the same order,
 * with fewer div/mod steps per element: a contiguous tensor becomes rank 1,
 * a transposed matrix stays rank 2.
 */
export function collapse(
  shape: readonly number[],
  stridesList: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const out: number[] = [];
  const outStrides: number[][] = stridesList.map(() => []);
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = out.length - 1;
    if (last >= 0 && stridesList.every((s, k) => outStrides[k][last] === s[i] * shape[i])) {
      out[last] *= shape[i];
      stridesList.forEach((s, k) => (outStrides[k][last] = s[i]));
    } else {
      out.push(shape[i]);
      stridesList.forEach((s, k) => outStrides[k].push(s[i]));
    }
  }
  return { shape: out, strides: outStrides };
}

/** The first and last element index a (non-empty) strided view reads. */
export function elementRange(shape: readonly number[], strides: readonly number[], offset: number): [number, number] {
  let hi = offset;
  for (let d = 0; d < shape.length; d++) hi += (shape[d] - 1) * strides[d];
  return [offset, hi];
}

/** The u32 bit pattern of a float32 value (for params). */
export function f32Bits(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0];
}

/** The u32 bit pattern of an int32 value, converted as a typed-array store does (ToInt32). */
export function i32Bits(x: number): number {
  return new Uint32Array(new Int32Array([x]).buffer)[0];
}
