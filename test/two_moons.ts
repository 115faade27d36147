// Two interleaved half circles with noise: a small 2-D classification task
// that no linear model can solve, used by the MLP test.

import type { Generator } from '../tensor/index.ts';

/** n points (x: [n, 2] row-major, y: labels 0/1), drawn from a seeded generator. */
export function twoMoons(n: number, g: Generator): { x: Float32Array; y: Int32Array } {
  const x = new Float32Array(n * 2);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const label = i % 2;
    const a = Math.PI * g.random();
    x[2 * i] = (label ? 1 - Math.cos(a) : Math.cos(a)) + 0.1 * g.normal();
    x[2 * i + 1] = (label ? 0.5 - Math.sin(a) : Math.sin(a)) + 0.1 * g.normal();
    y[i] = label;
  }
  return { x, y };
}
