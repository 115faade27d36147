// The library end to end on a small problem: an MLP trained with plain SGD
// learns two interleaved moons (not linearly separable) to over 95%.

import { describe, expect, it } from 'vitest';
import { twoMoons } from './two_moons.ts';
import { Generator, crossEntropy, randn, tensor, tidy, zeros, type Tensor } from '../tensor/index.ts';

describe('an MLP on two moons', () => {
  it('reaches over 95% accuracy with SGD', () => {
    const g = new Generator(0);
    const data = twoMoons(400, g);
    const x = tensor(data.x, { shape: [400, 2] }).keep();
    const y = tensor(data.y).keep();
    const params = [
      randn([2, 32], { std: 0.7, generator: g }),
      zeros([32]),
      randn([32, 32], { std: 0.25, generator: g }),
      zeros([32]),
      randn([32, 2], { std: 0.25, generator: g }),
      zeros([2]),
    ].map((p) => p.setRequiresGrad().keep());
    const forward = (inp: Tensor) => {
      const [w1, b1, w2, b2, w3, b3] = params;
      return inp.matmul(w1).add(b1).tanh().matmul(w2).add(b2).tanh().matmul(w3).add(b3);
    };
    for (let step = 0; step < 600; step++) {
      tidy(() => {
        crossEntropy(forward(x), y).backward();
        for (const p of params) {
          p.assign(p.sub(p.grad!.mul(0.5)));
          p.grad!.dispose();
          p.grad = null;
        }
      });
    }
    const predicted = tidy(() => forward(x).argmax(1)).dataSync();
    const accuracy = Array.from(predicted).filter((p, i) => p === data.y[i]).length / 400;
    expect(accuracy).toBeGreaterThan(0.95);
  });
});
