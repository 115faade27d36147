// The main job until train.ts lands: trains a small MLP on two interleaved
// moons with the library's own autograd and SGD, printing loss, accuracy and
// speed, so a fresh clone can see the tensor library learn something.
//
//   npx tsx bench/moons.ts [--steps 600] [--lr 0.5]

import { parseArgs } from 'node:util';
import { Generator, crossEntropy, randn, tensor, tidy, zeros, type Tensor } from '../tensor/index.ts';
import { twoMoons } from './two_moons.ts';

const { values: args } = parseArgs({
  options: { steps: { type: 'string', default: '600' }, lr: { type: 'string', default: '0.5' }, help: { type: 'boolean' } },
});
if (args.help) {
  console.log('usage: npx tsx bench/moons.ts [--steps 600] [--lr 0.5]\nTrains a 2-32-32-2 MLP on two moons with SGD on the CPU backend.');
  process.exit(0);
}
const steps = Number(args.steps);
const lr = Number(args.lr);

const g = new Generator(0);
const n = 400;
const { x: xs, y: ys } = twoMoons(n, g);
const x = tensor(xs, { shape: [n, 2] }).keep();
const y = tensor(ys).keep();

const params = [
  randn([2, 32], { std: 0.7, generator: g }), zeros([32]),
  randn([32, 32], { std: 0.25, generator: g }), zeros([32]),
  randn([32, 2], { std: 0.25, generator: g }), zeros([2]),
].map((p) => p.setRequiresGrad().keep());

function forward(inp: Tensor): Tensor {
  const [w1, b1, w2, b2, w3, b3] = params;
  return inp.matmul(w1).add(b1).tanh().matmul(w2).add(b2).tanh().matmul(w3).add(b3);
}

const t0 = performance.now();
for (let step = 1; step <= steps; step++) {
  const loss = tidy(() => {
    const l = crossEntropy(forward(x), y);
    l.backward();
    for (const p of params) {
      p.assign(p.sub(p.grad!.mul(lr))); // plain SGD
      p.grad!.dispose();
      p.grad = null;
    }
    return l;
  });
  if (step % 100 === 0 || step === steps) {
    const hits = tidy(() => forward(x).argmax(1).eq(y).sum());
    const correct = hits.dataSync()[0];
    hits.dispose();
    console.log(`step ${step}: loss ${loss.dataSync()[0].toFixed(4)}, accuracy ${((100 * correct) / n).toFixed(1)}%`);
  }
  loss.dispose();
}
const ms = (performance.now() - t0) / steps;
console.log(`trained ${steps} steps in ${((steps * ms) / 1000).toFixed(1)} s (${ms.toFixed(2)} ms/step, cpu backend)`);
