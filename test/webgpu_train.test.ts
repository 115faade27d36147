// Training on WebGPU: the loss curves of small models match the CPU's step
// for step from the same seed, a long training loop holds a constant number
// of tensors, live bytes, pooled bytes and GPU buffers after warm-up, and a
// nanoVLM step as train.ts takes it creates nothing at steady state.

import { expect, it } from 'vitest';
import { makeDecoder, type DecoderConfig } from '../bench/decoder.ts';
import { AdamW, clipGradNorm } from '../nn/index.ts';
import {
  Generator,
  copyInto,
  crossEntropy,
  manualSeed,
  memory,
  randn,
  stack,
  tensor,
  tidy,
  tidyForward,
  zeros,
  type DeviceName,
  type Tensor,
} from '../tensor/index.ts';
import { webgpuBackend } from '../tensor/webgpu/device.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
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

  it('a nanoVLM step as train.ts takes it (AdamW in place): no buffer or bind group created, few submits', async () => {
    const backend = webgpuBackend()!;
    const cfg: VLMConfig = {
      ...defaultVLMConfig,
      vit_hidden_dim: 32,
      vit_inter_dim: 64,
      vit_patch_size: 8,
      vit_img_size: 16,
      vit_n_heads: 2,
      vit_n_blocks: 1,
      lm_hidden_dim: 32,
      lm_inter_dim: 48,
      lm_n_heads: 4,
      lm_n_kv_heads: 2,
      lm_n_blocks: 2,
      lm_vocab_size: 40,
      mp_pixel_shuffle_factor: 2,
      IMAGE_TOKEN_LENGTH: 1,
      lm_max_length: 8,
      vlm_load_backbone_weights: false,
    };
    manualSeed(0);
    const model = await new VisionLanguageModel(cfg).to('webgpu');
    const mp = model.MP.parameters();
    const opt = new AdamW([
      { params: mp, lr: 1e-3 },
      { params: model.parameters().filter((p) => !mp.includes(p)), lr: 1e-4 },
    ]);
    const [B, T, S] = [2, cfg.lm_max_length, cfg.vit_img_size];
    const g = new Generator(3);
    const ids = Int32Array.from({ length: B * T }, () => g.randint(cfg.lm_vocab_size));
    const pixels = Float32Array.from({ length: B * 3 * S * S }, () => g.random());
    const padding = Int32Array.from({ length: B * T }, (_, i) => (i % T >= (i < T ? 2 : 0) ? 1 : 0));
    const step = async () => {
      // train.ts's step: fresh inputs, tidyForward, backward, clipping, one read, AdamW, zeroGrad
      const loss = tidy(() => {
        const inputIds = tensor(ids, { shape: [B, T], device: 'webgpu' });
        const image = tensor(pixels, { shape: [B, 3, S, S], device: 'webgpu' });
        const mask = tensor(padding, { shape: [B, T], device: 'webgpu' });
        const { loss } = tidyForward(() => model.forward(inputIds, image, mask, inputIds));
        loss!.backward();
        return loss!;
      });
      const norm = clipGradNorm(model.parameters(), 1);
      const logged = tidy(() => stack([loss, norm]));
      const [value] = await logged.data(); // the step's one sync point
      [logged, norm, loss].forEach((t) => t.dispose());
      opt.step();
      opt.zeroGrad();
      return value;
    };
    const losses = [];
    for (let i = 0; i < 3; i++) losses.push(await step()); // warm-up: pipelines, pools, bind groups
    const before = backend.counters();
    for (let i = 0; i < 3; i++) losses.push(await step());
    const after = backend.counters();
    const per = (k: Exclude<keyof typeof before, 'dispatchesByOp'>) => (after[k] - before[k]) / 3;
    expect(losses.at(-1)).toBeLessThan(losses[0]); // it trains
    expect(per('buffersCreated'), 'buffers created per step').toBe(0);
    expect(per('bindGroupsCreated'), 'bind groups created per step').toBe(0);
    expect(per('pipelinesCreated')).toBe(0);
    expect(per('reads')).toBe(1);
    // a submit per 256 dispatches and one for the read
    const submits = Math.ceil(per('dispatches') / 256) + 1;
    expect(per('submits'), `${per('dispatches')} dispatches`).toBeLessThanOrEqual(submits);
    for (const p of model.parameters()) p.dispose();
    opt.zeroGrad();
    opt.dispose();
  });
});
