// Gradients through the fast path. grad.test.ts checks every backward rule
// in float64, which runs the TypeScript kernels; here the same functions run
// in float32 through the WebAssembly kernels, and their gradients must match
// the float64 ones to float32 accuracy. Last, one forward and backward pass of
// a small nanoVLM with the wasm kernels against the TypeScript kernels.

import { afterAll, describe, expect, it } from 'vitest';
import {
  Generator,
  crossEntropy,
  layerNorm,
  manualSeed,
  rmsNorm,
  softmax,
  tensor,
  tidy,
  where,
  type Tensor,
} from '../tensor/index.ts';
import { setCpuThreads } from '../tensor/cpu/threads.ts';
import { setCpuKernels, wasmStats } from '../tensor/cpu/wasm/kernels.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { randomValues, smallVLMConfig } from './helpers.ts';

/** Each gradient within atol + rtol * (its largest magnitude) of the other's. */
function expectGradsClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  what: string,
  rtol: number,
  atol = 1e-6,
): void {
  expect(got.length).toBe(want.length);
  let [scale, worst, at] = [0, 0, 0];
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= worst)) [worst, at] = [err, i];
  }
  expect(worst, `${what}: element ${at} is ${got[at]}, float64 says ${want[at]}`).toBeLessThanOrEqual(
    atol + rtol * scale,
  );
}

/**
 * The gradients of sum(fn(...) * w) for random inputs and weights w, in
 * float32 (wasm kernels) and in float64 (TypeScript kernels).
 */
function gradAgree(fn: (...xs: Tensor[]) => Tensor, shapes: number[][], { lo = -1, hi = 1, rtol = 1e-4 } = {}): void {
  const values = shapes.map((s, i) =>
    randomValues(
      s.reduce((a, b) => a * b, 1),
      1 + i,
      lo,
      hi,
    ),
  );
  const grads = (dtype: 'float32' | 'float64') => {
    const xs = values.map((v, i) => tensor(v, { shape: shapes[i], dtype, requiresGrad: true }));
    const y = fn(...xs);
    const w = tensor(randomValues(y.size, 100), { shape: y.shape, dtype });
    y.mul(w).sum().backward();
    return xs.map((x) => x.grad!.dataSync());
  };
  const [g32, g64] = [grads('float32'), grads('float64')];
  g32.forEach((g, i) => expectGradsClose(g, g64[i], `input ${i}`, rtol));
}

afterAll(() => setCpuThreads(2));

for (const threads of [1, 2]) {
  describe(`float32 gradients through the wasm kernels, ${threads} thread(s)`, () => {
    const setup = () => {
      setCpuKernels('wasm');
      setCpuThreads(threads);
    };
    // with two threads, sizes that split (2^18 elements, 2^21 multiply-adds);
    // fewer cases there, as the float64 reference is slow at that size
    const [R, C] = threads === 1 ? [7, 13] : [513, 513];
    const [D, many] = threads === 1 ? [3, true] : [1, false];

    it('unary ops', () => {
      setup();
      const ops = many
        ? (['neg', 'abs', 'exp', 'tanh', 'sigmoid', 'relu', 'silu', 'gelu', 'square'] as const)
        : (['silu', 'gelu'] as const);
      for (const op of ops) gradAgree((x) => x[op](), [[R, C]], { lo: -3, hi: 3 });
      if (many)
        for (const op of ['sqrt', 'rsqrt', 'log', 'reciprocal'] as const)
          gradAgree((x) => x[op](), [[R, C]], { lo: 0.5, hi: 3 });
    });

    it('binary ops with broadcasting, and where', () => {
      setup();
      const pairs = [
        [
          [R, C],
          [R, C],
        ],
        [[R, C], [C]],
        [
          [R, 1],
          [1, C],
        ],
        [[R, C], []],
      ] as [number[], number[]][];
      for (const [sa, sb] of many ? pairs : pairs.slice(1, 2)) {
        gradAgree((a, b) => a.add(b).mul(a.sub(b)).div(b.abs().add(0.5)), [sa, sb]);
        gradAgree((a, b) => a.maximum(b).add(a.minimum(b.mul(2))), [sa, sb]);
      }
      gradAgree((a, b) => where(a.gt(0), a, b.mul(2)), [[R, C], [C]]);
    });

    it('reductions and row ops over each dim', () => {
      setup();
      for (const dim of many ? [0, 1, -1] : [-1]) {
        gradAgree((x) => x.sum(dim, true).mul(x), [[D, R, C]]);
        gradAgree((x) => x.mean(dim), [[D, R, C]]);
        gradAgree((x) => softmax(x, dim), [[D, R, C]], { lo: -3, hi: 3 });
        gradAgree((x) => x.logSoftmax(dim), [[D, R, C]], { lo: -3, hi: 3 });
      }
      gradAgree((x, w, b) => layerNorm(x, w, b, 1e-5), [[R, C], [C], [C]], { rtol: 3e-4 });
      gradAgree((x, w) => rmsNorm(x, w, 1e-5), [[R, C], [C]], { rtol: 3e-4 });
    });

    it('matmul: plain, transposed, batched, and a batch times a shared weight', () => {
      setup();
      const before = wasmStats.parallelCalls;
      const M = many ? R : 257; // 257 x 16 x 513: just over 2^21 multiply-adds
      gradAgree(
        (a, b) => a.matmul(b),
        [
          [M, 16],
          [16, C],
        ],
      );
      gradAgree(
        (a, b) => a.transpose(0, 1).matmul(b.transpose(0, 1)),
        [
          [16, M],
          [C, 16],
        ],
      );
      if (many)
        gradAgree(
          (a, b) => a.matmul(b),
          [
            [3, R, 17],
            [3, 17, C],
          ],
        );
      gradAgree(
        (x, w) => x.matmul(w.transpose(0, 1)).gelu(),
        [
          [2, M, 9],
          [C, 9],
        ],
      ); // a Linear layer
      if (threads > 1) expect(wasmStats.parallelCalls).toBeGreaterThan(before);
    });

    it('attention with a causal mask, and cross-entropy with ignored targets', () => {
      setup();
      const T = threads === 1 ? 6 : 96;
      const mask = tensor(
        Float32Array.from({ length: T * T }, (_, i) => (i % T > Math.floor(i / T) ? 1 : 0)),
        { shape: [T, T] },
      );
      gradAgree(
        (q, k, v) => {
          const scores = q.matmul(k.transpose(-1, -2)).mul(1 / Math.sqrt(8));
          const masked = where(mask.cast(q.dtype).gt(0), -Infinity, scores);
          return softmax(masked, -1).matmul(v);
        },
        [
          [2, 2, T, 8],
          [2, 2, T, 8],
          [2, 2, T, 8],
        ],
      );
      const g = new Generator(3);
      const targets = tensor(
        Int32Array.from({ length: 4 * R }, () => (g.random() < 0.2 ? -100 : g.randint(C))),
        { shape: [4, R] },
      );
      gradAgree((x) => crossEntropy(x, targets), [[4, R, C]], { lo: -3, hi: 3 });
    });
  });
}

describe('a small nanoVLM, wasm kernels against TypeScript kernels', () => {
  const cfg = smallVLMConfig;

  /** Loss and every parameter's gradient after one forward and backward pass. */
  function pass(kernels: 'ts' | 'wasm'): { loss: number; grads: Map<string, Float32Array> } {
    setCpuKernels(kernels);
    manualSeed(0);
    const model = new VisionLanguageModel(cfg);
    const g = new Generator(1);
    const ids = tensor(
      Int32Array.from({ length: 2 * 12 }, () => g.randint(64)),
      { shape: [2, 12] },
    );
    const image = tensor(
      Float32Array.from({ length: 2 * 3 * 32 * 32 }, () => g.random()),
      { shape: [2, 3, 32, 32] },
    );
    const loss = tidy(() => {
      const { loss } = model.forward(ids, image, null, ids);
      loss!.backward();
      return loss!.dataSync()[0];
    });
    const grads = new Map(model.namedParameters().map(([k, p]) => [k, p.grad!.dataSync() as Float32Array]));
    return { loss, grads };
  }

  it('gives the same loss and gradients', () => {
    const [ref, fast] = [pass('ts'), pass('wasm')];
    expect(Math.abs(fast.loss - ref.loss)).toBeLessThan(1e-5 * Math.abs(ref.loss));
    expect([...fast.grads.keys()]).toEqual([...ref.grads.keys()]);
    for (const [k, g] of fast.grads) expectGradsClose(g, ref.grads.get(k)!, k, 1e-3);
  });
});
