// Timing the VLM: one full training step (forward, backward, AdamW) and
// generation with and without the KV cache, on random weights and inputs.
// The CPU figures in bench/RESULTS.md come from here.

import { AdamW } from '../nn/index.ts';
import { heapStats, resetHeapPeak } from '../tensor/cpu/heap.ts';
import { Generator, manualSeed, rand, tensor, tidy, tidyForward, type DeviceName } from '../tensor/index.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';

/** The small configuration the issues compare against PyTorch: hidden 128, 4 blocks, 64px, 16 + 48 tokens. */
export const smallConfig: VLMConfig = {
  ...defaultVLMConfig,
  vit_hidden_dim: 128,
  vit_inter_dim: 512,
  vit_patch_size: 8,
  vit_img_size: 64,
  vit_n_heads: 4,
  vit_n_blocks: 4,
  lm_hidden_dim: 128,
  lm_inter_dim: 384,
  lm_n_heads: 4,
  lm_n_kv_heads: 2,
  lm_n_blocks: 4,
  lm_vocab_size: 512,
  IMAGE_TOKEN_LENGTH: 16,
  TOTAL_SEQUENCE_LENGTH: 64,
  lm_max_length: 48,
};

/** Number of image tokens the projector emits for a config. */
export function imageTokens(cfg: VLMConfig): number {
  return (cfg.vit_img_size / cfg.vit_patch_size) ** 2 / cfg.mp_pixel_shuffle_factor ** 2;
}

/** A seeded random model of `cfg` on `device`. */
export async function makeModel(cfg: VLMConfig, device: DeviceName): Promise<VisionLanguageModel> {
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

/** One training step's timing: median ms with the spread, tokens/s, the median of each phase, and the heap's peak. */
export interface StepTiming {
  ms: number;
  tokensPerSec: number;
  spread: [number, number];
  phases: { forward: number; backward: number; optimizer: number };
  /** The most bytes of the CPU backend's WebAssembly memory in use during a step (0 on other devices). */
  peakHeapBytes: number;
}

/**
 * Median ms of one training step (forward, backward, AdamW), as train.ts
 * runs it: the forward pass under tidyForward, so backward frees it as it
 * goes. tokens/s counts image + text tokens as nanoVLM does. `model` may be
 * given (a large one takes long to make); `freeze` leaves parts untrained.
 * `warmup` steps run untimed first: V8 goes on optimizing the host code for
 * a few dozen small steps (on one pinned core, where its compiler thread
 * shares the core, the first ten are 10-20% slower than the steady state a
 * training run spends its time in).
 */
export async function benchTrainStep(
  cfg: VLMConfig,
  batch: number,
  textLen: number,
  device: DeviceName,
  runs = 3,
  {
    model: given,
    freeze = [],
    warmup = 1,
  }: { model?: VisionLanguageModel; freeze?: ('vit' | 'lm')[]; warmup?: number } = {},
): Promise<StepTiming> {
  const model = given ?? (await makeModel(cfg, device));
  model.setRequiresGrad(true);
  if (freeze.includes('vit')) model.vision_encoder.setRequiresGrad(false);
  if (freeze.includes('lm')) model.decoder.setRequiresGrad(false);
  const mp = model.MP.parameters();
  const opt = new AdamW([
    { params: mp, lr: 2e-3 },
    { params: model.parameters().filter((p) => !mp.includes(p)), lr: 1e-4 },
  ]);
  const { ids, targets, image } = randomBatch(cfg, batch, textLen, device);
  const [times, forward, backward, optimizer, peaks]: number[][] = [[], [], [], [], []];
  for (let i = 1 - warmup; i <= runs; i++) {
    if (device === 'cpu') resetHeapPeak();
    const t: number[] = [performance.now()];
    const loss = tidy(() => {
      const { loss } = tidyForward(() => model.forward(ids, image, null, targets));
      t.push(performance.now());
      loss!.backward();
      t.push(performance.now());
      opt.step();
      return loss!;
    });
    await loss.item(); // waits for the device to finish the step
    t.push(performance.now());
    loss.dispose();
    opt.zeroGrad();
    if (i <= 0) continue; // warm-up (JIT, pipelines, pools)
    times.push(t[3] - t[0]);
    forward.push(t[1] - t[0]);
    backward.push(t[2] - t[1]);
    optimizer.push(t[3] - t[2]);
    if (device === 'cpu') peaks.push(heapStats().peakInUseBytes);
  }
  for (const x of [ids, targets, image]) x.dispose();
  opt.dispose();
  if (!given) disposeModel(model);
  const ms = median(times);
  return {
    ms,
    tokensPerSec: (batch * (imageTokens(cfg) + textLen) * 1000) / ms,
    spread: [Math.min(...times), Math.max(...times)],
    phases: { forward: median(forward), backward: median(backward), optimizer: median(optimizer) },
    peakHeapBytes: peaks.length ? Math.max(...peaks) : 0,
  };
}

/** Generation timing: time to the first new token (the prefill: image and prompt) and tokens/s after it. */
export interface GenerateTiming {
  ttftMs: number;
  tokensPerSec: number;
}

/**
 * Generates `newTokens` for one sequence (batch 1), with or without the KV
 * cache: median over `runs` of the time to the first token and of the
 * decoding speed after it, after a warm-up.
 */
export async function benchGenerate(
  cfg: VLMConfig,
  device: DeviceName,
  kvCache: boolean,
  {
    newTokens = 32,
    promptLen = 16,
    runs = 3,
    model: given,
  }: { newTokens?: number; promptLen?: number; runs?: number; model?: VisionLanguageModel } = {},
): Promise<GenerateTiming> {
  const model = given ?? (await makeModel(cfg, device));
  model.eval();
  const { ids, targets, image } = randomBatch(cfg, 1, promptLen, device);
  const once = async (n: number) => {
    const t0 = performance.now();
    let first = 0;
    await model.generate(ids, image, null, {
      greedy: true,
      maxNewTokens: n,
      eosTokenId: null,
      kvCache,
      onTokens: (_, step) => {
        if (step === 0) first = performance.now();
      },
    });
    return { ttftMs: first - t0, tokensPerSec: ((n - 1) * 1000) / (performance.now() - first) };
  };
  await once(3); // warm-up
  const r: GenerateTiming[] = [];
  for (let i = 0; i < runs; i++) r.push(await once(newTokens));
  for (const x of [ids, targets, image]) x.dispose();
  model.train();
  if (!given) disposeModel(model);
  return { ttftMs: median(r.map((x) => x.ttftMs)), tokensPerSec: median(r.map((x) => x.tokensPerSec)) };
}

/** Frees a model's parameters and buffers (a benchmark makes several). */
export function disposeModel(model: VisionLanguageModel): void {
  for (const [, t] of model.namedTensors()) t.dispose();
}
