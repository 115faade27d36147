// The model beyond the gold cases: configurations nanoVLM accepts (GQA ratios,
// head dims that are not multiples of 4 or 8, pixel-shuffle factors 2 to 5, a
// ragged patch grid, several left-padded images) run, generate the same tokens
// and logits with and without the KV cache at any length (past the RoPE limit
// too), and give the CPU's numbers on WebGPU; configurations nanoVLM rejects
// fail with one line that says why.

import { describe, expect, it } from 'vitest';
import { Generator, manualSeed, randn, tensor, tidyForward, type DeviceName, type Tensor } from '../tensor/index.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { describeWebGPU, expectAllClose } from './webgpu_helpers.ts';

/** A tiny VLM config; `over` changes a few fields. */
function config(over: Partial<VLMConfig> = {}): VLMConfig {
  return {
    ...defaultVLMConfig,
    vit_hidden_dim: 24,
    vit_inter_dim: 40,
    vit_patch_size: 4,
    vit_img_size: 16,
    vit_n_heads: 2,
    vit_n_blocks: 1,
    lm_hidden_dim: 24,
    lm_inter_dim: 40,
    lm_n_heads: 4,
    lm_n_kv_heads: 2,
    lm_n_blocks: 2,
    lm_vocab_size: 50,
    lm_max_position_embeddings: 64,
    mp_pixel_shuffle_factor: 2,
    vlm_load_backbone_weights: false,
    ...over,
  };
}

/** Three images and left-padded prompts (0, 2 and 4 padded positions). */
function batch(cfg: VLMConfig, device: DeviceName = 'cpu') {
  const [B, T] = [3, 7];
  const S = cfg.vit_img_size;
  const g = new Generator(7);
  const ids = Int32Array.from({ length: B * T }, () => 1 + Math.floor(g.random() * (cfg.lm_vocab_size - 1)));
  const mask = Int32Array.from({ length: B * T }, (_, i) => (i % T >= [0, 2, 4][Math.floor(i / T)] ? 1 : 0));
  return {
    image: randn([B, 3, S, S], { generator: g, device }).keep(),
    ids: tensor(ids, { shape: [B, T], device }).keep(),
    mask: tensor(mask, { shape: [B, T], device }).keep(),
  };
}

const accepted: [string, Partial<VLMConfig>][] = [
  ['multi-head attention (GQA 1:1), head dim 6', { lm_hidden_dim: 48, lm_n_heads: 8, lm_n_kv_heads: 8 }],
  ['GQA 2:1, head dim 6', { lm_hidden_dim: 48, lm_n_heads: 8, lm_n_kv_heads: 4 }],
  ['GQA 4:1, head dim 10', { lm_hidden_dim: 80, lm_n_heads: 8, lm_n_kv_heads: 2 }],
  ['GQA 8:1 (one KV head), head dim 14', { lm_hidden_dim: 112, lm_n_heads: 8, lm_n_kv_heads: 1 }],
  [
    'pixel shuffle 3, ViT head dim 9',
    { vit_img_size: 18, vit_patch_size: 2, vit_hidden_dim: 18, mp_pixel_shuffle_factor: 3 },
  ],
  ['pixel shuffle 4', { vit_img_size: 16, vit_patch_size: 2, mp_pixel_shuffle_factor: 4 }],
  ['pixel shuffle 5 on a ragged grid (22 px, patch 4: 5x5 patches)', { vit_img_size: 22, mp_pixel_shuffle_factor: 5 }],
];

/** The decoder's input length at each call: shows whether generation used the cache. */
function recordDecoderLengths(model: VisionLanguageModel): number[] {
  const lengths: number[] = [];
  const forward = model.decoder.forward.bind(model.decoder);
  model.decoder.forward = (x, mask, cache) => {
    lengths.push(x.shape[1]);
    return forward(x, mask, cache);
  };
  return lengths;
}

describe('configurations nanoVLM accepts', () => {
  for (const [name, over] of accepted) {
    it(`${name}: the KV cache gives the tokens and logits of a full recompute, past the RoPE limit too`, async () => {
      manualSeed(1);
      const limit = 20;
      const cfg = config({ ...over, lm_max_position_embeddings: limit });
      const model = new VisionLanguageModel(cfg).eval();
      const { image, ids, mask } = batch(cfg);
      const nImage = (Math.floor(cfg.vit_img_size / cfg.vit_patch_size) / cfg.mp_pixel_shuffle_factor) ** 2;
      const steps = limit + 6 - (nImage + ids.shape[1]); // ends 6 positions past the limit
      const opts = { greedy: true, maxNewTokens: steps, eosTokenId: null, returnLogits: true };
      const lengths = recordDecoderLengths(model);
      const cached = await model.generate(ids, image, mask, opts);
      const prefill = nImage + ids.shape[1];
      // below the limit one new position per step; past it the whole sequence, as nanoVLM computes it
      const want = Array.from({ length: steps }, (_, s) => (s === 0 ? prefill : prefill + s > limit ? prefill + s : 1));
      expect(lengths).toEqual(want);
      const full = await model.generate(ids, image, mask, { ...opts, kvCache: false });
      expect(cached.tokens).toEqual(full.tokens);
      cached.logits.forEach((l, s) => expectAllClose(l, full.logits[s], 1e-5, `step ${s}`));
      for (const t of [image, ids, mask]) t.dispose();
    });
  }
});

describe('configurations nanoVLM rejects', () => {
  const rejected: [Partial<VLMConfig>, string][] = [
    [{ lm_n_heads: 5 }, 'lm_hidden_dim (24) must be divisible by lm_n_heads (5)'],
    [{ lm_n_heads: 4, lm_n_kv_heads: 3 }, 'lm_n_heads (4) must be divisible by lm_n_kv_heads (3)'],
    [
      { lm_hidden_dim: 36, lm_n_heads: 4 },
      "the language model's head dim (lm_hidden_dim / lm_n_heads = 9) must be even",
    ],
    [{ vit_n_heads: 5 }, 'vit_hidden_dim (24) must be divisible by vit_n_heads (5)'],
    [
      { mp_pixel_shuffle_factor: 3 },
      'mp_pixel_shuffle_factor (3) must divide the 4x4 patch grid (vit_img_size 16 / vit_patch_size 4)',
    ],
    [
      { vit_cls_flag: true },
      'vit_cls_flag: the projector needs every patch vector, but a ViT with a CLS token returns one vector',
    ],
  ];
  for (const [over, message] of rejected) {
    it(message, () => expect(() => new VisionLanguageModel(config(over))).toThrow(message));
  }
});

describeWebGPU('configurations on webgpu', () => {
  for (const [name, over] of accepted.filter((_, i) => i % 2 === 1 || i === accepted.length - 1)) {
    it(`${name}: logits, loss and gradients match the cpu`, async () => {
      manualSeed(2);
      const cfg = config(over);
      const cpuModel = new VisionLanguageModel(cfg);
      const gpuModel = await new VisionLanguageModel(cfg).to('webgpu');
      gpuModel.loadStateDict(cpuModel.stateDict());
      const results: { logits: Float32Array; grads: Float32Array[] }[] = [];
      for (const [model, device] of [
        [cpuModel, 'cpu'],
        [gpuModel, 'webgpu'],
      ] as const) {
        const { image, ids, mask } = batch(cfg, device);
        const targets = ids.mul(mask).sub(mask.neg().add(1).mul(100)); // -100 at padded positions
        // tidyForward, as train.ts runs a step: backward frees the forward's intermediates as it goes
        const { logits, loss } = tidyForward(() => model.forward(ids, image, mask, targets));
        loss!.backward();
        results.push({
          logits: (await logits.data()) as Float32Array,
          grads: await Promise.all(model.parameters().map(async (p: Tensor) => (await p.grad!.data()) as Float32Array)),
        });
      }
      expectAllClose(results[1].logits, results[0].logits, 1e-4, 'logits');
      results[0].grads.forEach((g, i) => expectAllClose(results[1].grads[i], g, 1e-3, `gradient ${i}`));
    });
  }
});
