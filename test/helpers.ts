// Shared test helpers: closeness checks, a finite-difference gradient check, a small model config.

import { expect } from 'vitest';
import { Generator, Tensor, tensor, type NestedArray } from '../tensor/index.ts';
import { numel } from '../tensor/shape.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';

/** Asserts |a - b| <= atol + rtol * |b| elementwise, reporting the worst element. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol = 1e-5, atol = 1e-6): void {
  expect(actual.length).toBe(expected.length);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const [a, b] = [actual[i], expected[i]];
    if (Number.isNaN(a) && Number.isNaN(b)) continue;
    const excess = Math.abs(a - b) - (atol + rtol * Math.abs(b));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(excess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    expect.fail(`element ${worst}: got ${actual[worst]}, expected ${expected[worst]} (rtol ${rtol}, atol ${atol})`);
  }
}

/** Flattens nested arrays. */
export function flat(v: NestedArray): number[] {
  return Array.isArray(v) ? v.flatMap(flat) : [v];
}

/** Random float64 values in [lo, hi), from a seeded generator. */
export function randomValues(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const g = new Generator(seed);
  return Float64Array.from({ length: n }, () => lo + (hi - lo) * g.random());
}

/**
 * Checks the gradients of fn against central finite differences in float64.
 * The loss is sum(fn(...) * w) for a random w, so the check covers a general
 * vector-Jacobian product, not only the gradient of a plain sum.
 */
export function gradCheck(
  fn: (...xs: Tensor[]) => Tensor,
  shapes: number[][],
  opts: {
    seed?: number;
    lo?: number;
    hi?: number;
    eps?: number;
    rtol?: number;
    atol?: number;
    values?: Float64Array[];
  } = {},
): void {
  const { seed = 1, lo = -1, hi = 1, eps = 1e-6, rtol = 1e-5, atol = 1e-7 } = opts;
  const values = opts.values ?? shapes.map((s, i) => randomValues(numel(s), seed + i, lo, hi));
  const make = (vals: Float64Array[], grad: boolean) =>
    vals.map((v, i) => tensor(v, { shape: shapes[i], dtype: 'float64', requiresGrad: grad }));
  const probe = fn(...make(values, false));
  const w = tensor(randomValues(probe.size, seed + 100), { shape: probe.shape, dtype: 'float64' });
  const loss = (xs: Tensor[]) =>
    fn(...xs)
      .mul(w)
      .sum()
      .dataSync()[0];

  const xs = make(values, true);
  fn(...xs)
    .mul(w)
    .sum()
    .backward();
  values.forEach((v, i) => {
    const numeric = new Float64Array(v.length);
    for (let k = 0; k < v.length; k++) {
      const orig = v[k];
      v[k] = orig + eps;
      const up = loss(make(values, false));
      v[k] = orig - eps;
      const down = loss(make(values, false));
      v[k] = orig;
      numeric[k] = (up - down) / (2 * eps);
    }
    const analytic = xs[i].grad ? xs[i].grad!.dataSync() : new Float64Array(v.length);
    expectClose(analytic, numeric, rtol, atol);
  });
}

/** A small nanoVLM for in-process tests: two blocks each side, grouped queries (4 heads over 2), 4 image tokens. */
export const smallVLMConfig: VLMConfig = {
  ...defaultVLMConfig,
  vit_hidden_dim: 32,
  vit_inter_dim: 64,
  vit_patch_size: 8,
  vit_img_size: 32,
  vit_n_heads: 2,
  vit_n_blocks: 2,
  lm_hidden_dim: 32,
  lm_inter_dim: 48,
  lm_n_heads: 4,
  lm_n_kv_heads: 2,
  lm_n_blocks: 2,
  lm_vocab_size: 64,
  IMAGE_TOKEN_LENGTH: 4,
  TOTAL_SEQUENCE_LENGTH: 16,
  lm_max_length: 12,
};
