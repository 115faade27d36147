// Element types. float32 is what models compute in; int32 holds token ids,
// indices and masks; float64 exists on the CPU backend so gradient checks can
// use finite differences without float32 round-off swamping the result.

/** The element types a tensor can hold. */
export type DType = 'float32' | 'int32' | 'float64';

/** A typed array of any supported dtype. */
export type TypedArray = Float32Array | Int32Array | Float64Array;

/** Bytes per element. */
export function bytesPerElement(dtype: DType): number {
  return dtype === 'float64' ? 8 : 4;
}

/** A new zero-filled typed array of the given dtype. */
export function makeTypedArray(dtype: DType, length: number): TypedArray {
  if (dtype === 'float32') return new Float32Array(length);
  if (dtype === 'int32') return new Int32Array(length);
  return new Float64Array(length);
}

/** Converts (copies) any array-like of numbers into a typed array of `dtype`. */
export function toTypedArray(dtype: DType, values: ArrayLike<number>): TypedArray {
  const out = makeTypedArray(dtype, values.length);
  out.set(values as ArrayLike<number>);
  return out;
}

/** True for the floating-point dtypes (the ones that can carry gradients). */
export function isFloat(dtype: DType): boolean {
  return dtype !== 'int32';
}

/** The dtype a typed array holds. */
export function dtypeOf(values: TypedArray): DType {
  return values instanceof Float32Array ? 'float32' : values instanceof Int32Array ? 'int32' : 'float64';
}
