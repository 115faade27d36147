// Training on WebGPU: the loss curves of small models match the CPU's step
// for step from the same seed, and a long training loop holds a constant
// number of tensors, live bytes, pooled bytes and GPU buffers after warm-up.

import { expect, it } from 'vitest';
import { makeDecoder, type DecoderConfig } from '../bench/decoder.ts';
import {
  Generator,
  copyInto,
  crossEntropy,
  memory,
  randn,
  tensor,
  tidy,
  zeros,
  type DeviceName,
  type Tensor,
} from '../tensor/index.ts';
import { webgpuBackend } from '../tensor/webgpu/device.ts';
import { describeWebGPU, expectAllClose } from './webgpu_helpers.ts';

/** Plain SGD on kept parameters; gradients are disposed after the update. */
function sgd(params: Tensor[], lr: number): void {
  for (const p of params) {
    if (!p.grad) continue;
    // in place, as AdamW updates: a parameter keeps its buffer from step to step
    copyInto(p, p.sub(p.grad.mul(lr)));
    p.grad.dispose();
    p.grad = null;
  }
}

/** A 2-32-32-2 tanh MLP on fixed random data; returns the loss after each step. */
async function mlpCurve(device: DeviceName, steps: number): Promise<number[]> {
  const g = new Generator(0);
  const x = randn([64, 2], { generator: g, device }).keep();
  const y = tensor(
    Int32Array.from({ length: 64 }, () => g.randint(2)),
    { device },
  ).keep();
  const params = [
    randn([2, 32], { std: 0.7, generator: g, device }),
    zeros([32], { device }),
    randn([32, 32], { std: 0.25, generator: g, device }),
    zeros([32], { device }),
    randn([32, 2], { std: 0.25, generator: g, device }),
    zeros([2], { device }),
  ].map((p) => p.setRequiresGrad().keep());
  const losses: number[] = [];
  for (let step = 0; step < steps; step++) {
    const loss = tidy(() => {
      const [w1, b1, w2, b2, w3, b3] = params;
      const l = crossEntropy(x.matmul(w1).add(b1).tanh().matmul(w2).add(b2).tanh().matmul(w3).add(b3), y);
      l.backward();
      sgd(params, 0.5);
      return l;
    });
    losses.push(await loss.item()); // the sync point
    loss.dispose();
  }
  for (const t of [x, y, ...params]) t.dispose();
  return losses;
}

const tinyDecoder: DecoderConfig = { blocks: 2, hidden: 32, heads: 2, mlp: 64, vocab: 40, batch: 2, seq: 8 };

/** bench/decoder.ts at a tiny size, trained with SGD on one fixed batch. */
async function decoderCurve(device: DeviceName, steps: number, onStep?: (step: number) => void): Promise<number[]> {
  const cfg = tinyDecoder;
  const model = makeDecoder(cfg, device);
  const g = new Generator(1);
  const n = cfg.batch * cfg.seq;
  const ids = tensor(
    Int32Array.from({ length: n }, () => g.randint(cfg.vocab)),
    { shape: [cfg.batch, cfg.seq], device },
  ).keep();
  const targets = tensor(
    Int32Array.from({ length: n }, (_, i) => (i % 5 === 4 ? -100 : g.randint(cfg.vocab))),
    { shape: [cfg.batch, cfg.seq], device },
  ).keep();
  const losses: number[] = [];
  for (let step = 0; step < steps; step++) {
    const loss = tidy(() => {
      const l = model.step(ids, targets);
      sgd(model.params, 0.3);
      return l;
    });
    losses.push(await loss.item());
    loss.dispose();
    onStep?.(step);
  }
  for (const t of [ids, targets, ...model.params]) t.dispose();
  return losses;
}

describeWebGPU('training on webgpu', () => {
  it('an MLP: the loss curve matches the CPU step for step (20 steps)', async () => {
    const [cpu, gpu] = [await mlpCurve('cpu', 20), await mlpCurve('webgpu', 20)];
    expect(cpu[19]).toBeLessThan(cpu[0]);
    expectAllClose(gpu, cpu, 1e-4, 'mlp loss');
  });

  it('the decoder of bench/decoder.ts: the loss curve matches the CPU step for step (20 steps)', async () => {
    const [cpu, gpu] = [await decoderCurve('cpu', 20), await decoderCurve('webgpu', 20)];
    expect(cpu[19]).toBeLessThan(cpu[0]);
    expectAllClose(gpu, cpu, 1e-4, 'decoder loss');
  });

  it('memory stays flat over 60 training steps, and nothing is created at steady state', async () => {
    const backend = webgpuBackend()!;
    const seen: string[] = [];
    await decoderCurve('webgpu', 60, (step) => {
      const m = memory();
      const s = backend.memoryStats();
      // buffers and bind groups created so far: flat once warm (pooled buffers, cached bind groups)
      const { buffersCreated, bindGroupsCreated } = backend.counters();
      if (step >= 3)
        seen.push(
          JSON.stringify({
            ...m,
            pooled: s.pooledBytes,
            allocated: s.allocatedBytes,
            buffers: s.buffers,
            buffersCreated,
            bindGroupsCreated,
          }),
        );
    });
    expect(new Set(seen).size, `memory changed between steps:\n${[...new Set(seen)].join('\n')}`).toBe(1);
  });
});
