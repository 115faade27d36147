// Making tensors: from host values, filled with constants, ranges, and
// seeded random numbers (drawn on the host so every backend sees the same
// numbers for the same seed).

import type { DeviceName } from './backend.ts';
import { getBackend } from './device.ts';
import { type DType, type TypedArray, dtypeOf, isFloat, toTypedArray } from './dtype.ts';
import { defaultGenerator, type Generator } from './random.ts';
import { fmt, numel } from './shape.ts';
import { type NestedArray, Tensor } from './tensor.ts';

/** Where and how to create a tensor. */
export interface TensorOptions {
  dtype?: DType;
  device?: DeviceName;
  requiresGrad?: boolean;
}

function make(values: TypedArray, shape: number[], opts: TensorOptions): Tensor {
  const backend = getBackend(opts.device);
  const dtype = dtypeOf(values);
  const t = new Tensor(backend, backend.alloc(dtype, values.length), shape, dtype);
  backend.write(t.storage, values);
  return opts.requiresGrad ? t.setRequiresGrad() : t;
}

/** Shape of nested arrays, checking that they are rectangular. */
function shapeOf(values: NestedArray): number[] {
  const shape: number[] = [];
  let v = values;
  while (Array.isArray(v)) {
    shape.push(v.length);
    v = v[0];
  }
  return shape;
}

/**
 * A tensor from numbers: a scalar, nested arrays, or a flat typed array with
 * a shape. Floats default to float32, Int32Array to int32.
 */
export function tensor(values: NestedArray | TypedArray, opts: TensorOptions & { shape?: number[] } = {}): Tensor {
  let flat: TypedArray;
  let shape: number[];
  const dtype =
    opts.dtype ?? (values instanceof Int32Array ? 'int32' : values instanceof Float64Array ? 'float64' : 'float32');
  if (ArrayBuffer.isView(values)) {
    flat = dtypeOf(values) === dtype ? values : toTypedArray(dtype, values);
    shape = opts.shape ?? [values.length];
  } else {
    shape = shapeOf(values);
    const nums: number[] = [];
    const walk = (v: NestedArray): void => void (Array.isArray(v) ? v.forEach(walk) : nums.push(v));
    walk(values);
    if (nums.length !== numel(shape))
      throw new Error(`tensor: nested arrays are not rectangular (expected shape ${fmt(shape)})`);
    flat = toTypedArray(dtype, nums);
    if (opts.shape) shape = opts.shape;
  }
  if (numel(shape) !== flat.length) throw new Error(`tensor: ${flat.length} values do not fill shape ${fmt(shape)}`);
  return make(flat, shape, opts);
}

/** A tensor of `shape` filled with `value`. */
export function full(shape: number[], value: number, opts: TensorOptions = {}): Tensor {
  const dtype = opts.dtype ?? 'float32';
  const backend = getBackend(opts.device);
  const t = new Tensor(backend, backend.fill(dtype, numel(shape), value), shape, dtype);
  return opts.requiresGrad ? t.setRequiresGrad() : t;
}

/** All zeros. */
export function zeros(shape: number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

/** All ones. */
export function ones(shape: number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** start, start+step, ... < end (int32 unless a dtype is given); arange(n) is 0..n-1. */
export function arange(start: number, end?: number, step = 1, opts: TensorOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  const n = Math.max(0, Math.ceil((end - start) / step));
  const dtype = opts.dtype ?? 'int32';
  return make(
    toTypedArray(
      dtype,
      Array.from({ length: n }, (_, i) => start + i * step),
    ),
    [n],
    opts,
  );
}

/** Uniform samples in [0, 1). */
export function rand(shape: number[], opts: TensorOptions & { generator?: Generator } = {}): Tensor {
  const g = opts.generator ?? defaultGenerator;
  return randomTensor(shape, opts, () => g.random());
}

/** Standard normal samples (times std plus mean when given). */
export function randn(
  shape: number[],
  opts: TensorOptions & { generator?: Generator; mean?: number; std?: number } = {},
): Tensor {
  const g = opts.generator ?? defaultGenerator;
  const [mean, std] = [opts.mean ?? 0, opts.std ?? 1];
  return randomTensor(shape, opts, () => mean + std * g.normal());
}

function randomTensor(shape: number[], opts: TensorOptions, draw: () => number): Tensor {
  const dtype = opts.dtype ?? 'float32';
  if (!isFloat(dtype)) throw new Error(`random tensors must be float, got ${dtype}`);
  const values = toTypedArray(dtype, Array.from({ length: numel(shape) }, draw));
  return make(values, shape, opts);
}
