// Frozen parts, as later nanoVLM versions train them (the projector alone, or
// projector + language model): Module.setRequiresGrad(false) leaves a part's
// parameters without gradients, without AdamW moments and without the
// weight-gradient matmuls, and the parts that train get exactly the gradients
// they get when nothing is frozen.

import { describe, expect, it } from 'vitest';
import { AdamW } from '../nn/index.ts';
import { Generator, getBackend, manualSeed, tensor, tidy } from '../tensor/index.ts';
import { smallVLMConfig } from './helpers.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';

const cfg = smallVLMConfig;

/** One forward + backward + AdamW step with `frozen` parts; the matmuls run during backward, and the model. */
function step(frozen: ('vit' | 'lm')[]): { model: VisionLanguageModel; opt: AdamW; backwardMatmuls: number } {
  manualSeed(0);
  const model = new VisionLanguageModel(cfg);
  if (frozen.includes('vit')) model.vision_encoder.setRequiresGrad(false);
  if (frozen.includes('lm')) model.decoder.setRequiresGrad(false);
  const opt = new AdamW(model.parameters(), { lr: 1e-3 });
  const g = new Generator(1);
  const ids = tensor(
    Int32Array.from({ length: 2 * 12 }, () => g.randint(64)),
    { shape: [2, 12] },
  );
  const image = tensor(
    Float32Array.from({ length: 2 * 3 * 32 * 32 }, () => g.random()),
    { shape: [2, 3, 32, 32] },
  );
  const backend = getBackend('cpu');
  const matmul = backend.matmul;
  let backwardMatmuls = 0;
  tidy(() => {
    const { loss } = model.forward(ids, image, null, ids);
    backend.matmul = (a, b) => (backwardMatmuls++, matmul.call(backend, a, b));
    try {
      loss!.backward();
    } finally {
      backend.matmul = matmul;
    }
    opt.step();
  });
  return { model, opt, backwardMatmuls };
}

describe('frozen parts', () => {
  it('get no gradients and no moments; the rest gets the same gradients as unfrozen', async () => {
    const full = step([]);
    const frozen = step(['vit', 'lm']);
    for (const p of [...frozen.model.vision_encoder.parameters(), ...frozen.model.decoder.parameters()]) {
      expect(p.requiresGrad).toBe(false);
      expect(p.grad).toBeNull();
    }
    const [a, b] = [full.model.MP.proj.weight.grad!.dataSync(), frozen.model.MP.proj.weight.grad!.dataSync()];
    expect(Array.from(b)).toEqual(Array.from(a));
    const state = await frozen.opt.stateDict();
    const params = frozen.model.parameters();
    state.params.forEach((s, i) =>
      expect(s !== null, `moments of parameter ${i}`).toBe(params[i] === frozen.model.MP.proj.weight),
    );
  });

  it('skip the weight-gradient matmul of every frozen linear layer, and all of a frozen ViT', () => {
    const full = step([]).backwardMatmuls;
    // a frozen decoder: per block q, k, v, out, gate, up and down lose their weight gradients; the tied head too
    expect(step(['lm']).backwardMatmuls).toBe(full - (7 * cfg.lm_n_blocks + 1));
    // A frozen ViT receives no gradient at all: none of its backward matmuls run. Each of its
    // forward products (per block qkv, out, fc1, fc2, then the patch embedding; attention is its
    // own fused op) has a dx and a dW product in backward, except the patch embedding (no dx: the
    // image); and the projector's dx is not needed either.
    const vitForward = 4 * cfg.vit_n_blocks + 1;
    expect(step(['vit']).backwardMatmuls).toBe(full - (2 * vitForward - 1) - 1);
  });

  it('unfreeze again', () => {
    manualSeed(0);
    const model = new VisionLanguageModel(cfg);
    model.setRequiresGrad(false).decoder.setRequiresGrad(true);
    expect(model.parameters().filter((p) => p.requiresGrad).length).toBe(model.decoder.parameters().length);
  });
});
