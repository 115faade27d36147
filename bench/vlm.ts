// Timing the VLM: one full training step (forward, backward, AdamW) and
// generation with and without the KV cache, on random weights and inputs.

import { AdamW } from '../nn/index.ts';
import { Generator, manualSeed, rand, tensor, tidy, type DeviceName } from '../tensor/index.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';

/** The small configuration the issues compare against PyTorch: hidden 128, 4 blocks, 64px, 16 + 48 tokens. */
export const smallConfig: VLMConfig = {
  ...defaultVLMConfig,
  vit_hidden_dim: 128, vit_inter_dim: 512, vit_patch_size: 8, vit_img_size: 64, vit_n_heads: 4, vit_n_blocks: 4,
  lm_hidden_dim: 128, lm_inter_dim: 384, lm_n_heads: 4, lm_n_kv_heads: 2, lm_n_blocks: 4, lm_vocab_size: 512,
  IMAGE_TOKEN_LENGTH: 16, TOTAL_SEQUENCE_LENGTH: 64, lm_max_length: 48,
};

/** Number of image tokens the projector emits for a config. */
export function imageTokens(cfg: VLMConfig): number {
  return (cfg.vit_img_size / cfg.vit_patch_size) ** 2 / cfg.mp_pixel_shuffle_factor ** 2;
}

async function makeModel(cfg: VLMConfig, device: DeviceName): Promise<VisionLanguageModel> {
  manualSeed(0);
  const model = new VisionLanguageModel(cfg);
  return device === 'cpu' ? model : model.to(device);
}

function randomBatch(cfg: VLMConfig, batch: number, textLen: number, device: DeviceName) {
  const g = new Generator(1);
  const ids = Int32Array.from({ length: batch * textLen }, () => g.randint(cfg.lm_vocab_size));
  return {
    ids: tensor(ids, { shape: [batch, textLen], device }).keep(),
    targets: tensor(ids, { shape: [batch, textLen], device }).keep(),
    image: rand([batch, 3, cfg.vit_img_size, cfg.vit_img_size], { generator: g, device }).keep(),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median ms of one training step, and tokens/s counting image + text tokens as nanoVLM does. */
export async function benchTrainStep(cfg: VLMConfig, batch: number, textLen: number, device: DeviceName, runs = 3): Promise<{ ms: number; tokensPerSec: number; spread: [number, number] }> {
  const model = await makeModel(cfg, device);
  const mp = model.MP.parameters();
  const opt = new AdamW([{ params: mp, lr: 2e-3 }, { params: model.parameters().filter((p) => !mp.includes(p)), lr: 1e-4 }]);
  const { ids, targets, image } = randomBatch(cfg, batch, textLen, device);
  const times: number[] = [];
  for (let i = 0; i <= runs; i++) {
    const t0 = performance.now();
    const loss = tidy(() => {
      const { loss } = model.forward(ids, image, null, targets);
      loss!.backward();
      opt.step();
      return loss!;
    });
    await loss.item(); // waits for the device to finish the step
    loss.dispose();
    opt.zeroGrad();
    if (i > 0) times.push(performance.now() - t0); // the first step warms up (JIT, pipelines, pools)
  }
  const ms = median(times);
  return { ms, tokensPerSec: (batch * (imageTokens(cfg) + textLen) * 1000) / ms, spread: [Math.min(...times), Math.max(...times)] };
}

/** Generated tokens per second for one sequence (batch 1), with or without the KV cache. */
export async function benchGenerate(cfg: VLMConfig, device: DeviceName, kvCache: boolean, newTokens = 32, promptLen = 16): Promise<number> {
  const model = await makeModel(cfg, device);
  model.eval();
  const { ids, image } = randomBatch(cfg, 1, promptLen, device);
  await model.generate(ids, image, null, { greedy: true, maxNewTokens: 2, eosTokenId: null, kvCache }); // warm-up
  const t0 = performance.now();
  await model.generate(ids, image, null, { greedy: true, maxNewTokens: newTokens, eosTokenId: null, kvCache });
  return (newTokens * 1000) / (performance.now() - t0);
}
