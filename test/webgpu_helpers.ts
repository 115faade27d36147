// Shared by the WebGPU test files: opening the device once per file, and
// running one function on CPU tensors and on WebGPU tensors to compare the
// outputs and the gradients of every input.

import { afterAll, beforeAll, describe, expect } from 'vitest';
import { Generator, Tensor, closeWebGPU, initWebGPU, tensor } from '../tensor/index.ts';
import { numel } from '../tensor/shape.ts';

/** Set NANOVLM_SKIP_WEBGPU=1 to skip the WebGPU suites explicitly; otherwise a missing adapter fails them. */
export const SKIP_WEBGPU = process.env.NANOVLM_SKIP_WEBGPU === '1';

/** A describe() whose tests run with the WebGPU device open (opened in beforeAll, closed in afterAll). */
export function describeWebGPU(name: string, fn: () => void, opts: { quiet?: boolean } = {}): void {
  (SKIP_WEBGPU ? describe.skip : describe)(name, () => {
    beforeAll(async () => {
      try {
        await initWebGPU({ quiet: opts.quiet ?? true });
      } catch (e) {
        throw new Error(
          `${(e as Error).message}\n(the WebGPU tests need an adapter; set ` +
            'NANOVLM_SKIP_WEBGPU=1 to skip them explicitly)',
        );
      }
    });
    afterAll(() => closeWebGPU());
    fn();
  });
}

/** One input of a comparison: a shape, or a shape with a dtype, a value range or fixed values. */
export interface InputSpec {
  shape: number[];
  dtype?: 'float32' | 'int32';
  lo?: number;
  hi?: number;
  values?: ArrayLike<number>;
  /** Float inputs require grad unless this is false. */
  grad?: boolean;
}

type Outputs = Tensor | Tensor[] | Record<string, Tensor>;

function outputsOf(o: Outputs): Tensor[] {
  if (o instanceof Tensor) return [o];
  return Array.isArray(o) ? o : Object.values(o);
}

/**
 * Asserts |actual - expected| <= rtol * (|expected| + max |expected|) + atol elementwise:
 * relative per element, with an absolute floor scaled to the tensor's size so
 * that sums which cancel to ~0 are judged against the magnitude of their terms.
 * `atol` is for a tensor that is zero up to rounding as a whole (nothing to scale by).
 * NaN must match NaN, infinities must match exactly.
 */
export function expectAllClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  label = '',
  atol = 0,
): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  let scale = 0;
  for (let i = 0; i < expected.length; i++)
    if (Number.isFinite(expected[i])) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < actual.length; i++) {
    const [a, b] = [actual[i], expected[i]];
    if (
      Number.isNaN(b)
        ? Number.isNaN(a)
        : !Number.isFinite(b)
          ? a === b
          : Math.abs(a - b) <= rtol * (Math.abs(b) + scale) + atol
    )
      continue;
    expect.fail(`${label} element ${i}: webgpu ${a}, cpu ${b} (rtol ${rtol}, scale ${scale}, atol ${atol})`);
  }
}

/**
 * Asserts |actual - expected| <= rtol * |expected| for every element (no
 * absolute floor: for values of very different magnitudes, such as special
 * values or exp over its range). NaN must match NaN, infinities and zeros exactly.
 */
export function expectRelClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, label = ''): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  for (let i = 0; i < actual.length; i++) {
    const [a, b] = [actual[i], expected[i]];
    if (Number.isNaN(b) ? Number.isNaN(a) : Math.abs(a - b) <= rtol * Math.abs(b) || a === b) continue;
    expect.fail(`${label} element ${i}: webgpu ${a}, cpu ${b} (rtol ${rtol})`);
  }
}

/** Values for an input: fixed ones, or seeded uniform draws (integers for int32). */
function valuesFor(spec: InputSpec, seed: number): Float32Array | Int32Array {
  const n = numel(spec.shape);
  if (spec.values) return spec.dtype === 'int32' ? Int32Array.from(spec.values) : Float32Array.from(spec.values);
  const g = new Generator(seed);
  const [lo, hi] = [spec.lo ?? -1, spec.hi ?? 1];
  if (spec.dtype === 'int32') return Int32Array.from({ length: n }, () => lo + Math.floor(g.random() * (hi - lo + 1)));
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * g.random());
}

/**
 * Runs fn on CPU tensors and on the same values moved to WebGPU, then checks
 * that every output matches (int outputs exactly) and, when any output
 * carries a gradient, that backpropagating sum(out_k * w_k) for random w_k
 * gives every input the same gradient on both devices.
 */
export async function compareDevices(
  fn: (...xs: Tensor[]) => Outputs,
  inputs: (InputSpec | number[])[],
  opts: { rtol?: number; gradRtol?: number; gradAtol?: number; seed?: number } = {},
): Promise<void> {
  const { rtol = 1e-5, seed = 1 } = opts;
  const gradRtol = opts.gradRtol ?? rtol;
  const specs = inputs.map((s) => (Array.isArray(s) ? { shape: s } : s));
  const values = specs.map((s, i) => valuesFor(s, seed + i));
  const cpuIn = specs.map((s, i) => {
    const t = tensor(values[i], { shape: s.shape });
    return t.dtype === 'float32' && s.grad !== false ? t.setRequiresGrad() : t;
  });
  const gpuIn = await Promise.all(cpuIn.map((t) => t.to('webgpu')));
  const cpuOut = outputsOf(fn(...cpuIn));
  const gpuOut = outputsOf(fn(...gpuIn));
  expect(gpuOut.length).toBe(cpuOut.length);
  for (let k = 0; k < cpuOut.length; k++) {
    expect(gpuOut[k].device).toBe('webgpu');
    expect(gpuOut[k].shape, `output ${k} shape`).toEqual(cpuOut[k].shape);
    expect(gpuOut[k].dtype, `output ${k} dtype`).toBe(cpuOut[k].dtype);
    const [a, b] = [await gpuOut[k].data(), await cpuOut[k].data()];
    if (cpuOut[k].dtype === 'int32') expect(Array.from(a), `output ${k}`).toEqual(Array.from(b));
    else expectAllClose(a, b, rtol, `output ${k}`);
  }
  const differentiable = cpuOut.map((_, k) => k).filter((k) => cpuOut[k].requiresGrad);
  if (differentiable.length === 0) return;
  const g = new Generator(seed + 100);
  const weights = differentiable.map((k) => Float32Array.from({ length: cpuOut[k].size }, () => g.random() * 2 - 1));
  const lossOf = async (outs: Tensor[], device: 'cpu' | 'webgpu') => {
    let loss: Tensor | null = null;
    for (let j = 0; j < differentiable.length; j++) {
      const out = outs[differentiable[j]];
      const w = await tensor(weights[j], { shape: out.shape }).to(device);
      const term = out.mul(w).sum();
      loss = loss ? loss.add(term) : term;
    }
    return loss!;
  };
  (await lossOf(cpuOut, 'cpu')).backward();
  (await lossOf(gpuOut, 'webgpu')).backward();
  for (let i = 0; i < cpuIn.length; i++) {
    const [gc, gg] = [cpuIn[i].grad, gpuIn[i].grad];
    expect(gg === null, `input ${i} has a gradient on one device only`).toBe(gc === null);
    if (gc && gg) expectAllClose(await gg.data(), await gc.data(), gradRtol, `grad of input ${i}`, opts.gradAtol);
  }
}
