// The acceptance test of the model: everything the original PyTorch nanoVLM
// computed for small random checkpoints (every case folder in fixtures/gold/,
// or the one folder in NANOVLM_GOLD) must come out of our port: the processed
// images, ViT and projector outputs, logits, loss, gradients, one AdamW step,
// greedy generation (past the RoPE limit too), and the same weights loaded from
// Hugging Face SigLIP / Llama files. Every size and every input is read from
// the folder, so other configurations run unchanged.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getImageProcessor } from '../data/processors.ts';
import { loadImageFile } from '../node/images.ts';
import { readModelFolder, writeModelFolder } from '../node/model_folder.ts';
import { AdamW } from '../nn/index.ts';
import type { RawTensor } from '../nn/safetensors.ts';
import { loadSafetensors } from '../node/safetensors.ts';
import { tensor, tidy, type DeviceName, type Tensor } from '../tensor/index.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { NANOVLM_GOLD_CASES } from './fixtures.ts';
import { describeWebGPU } from './webgpu_helpers.ts';

/** |actual - expected| <= tol * max|expected| over the selected elements. */
function expectNear(
  actual: ArrayLike<number>,
  want: ArrayLike<number>,
  what: string,
  select?: (i: number) => boolean,
  tol = 1e-4,
): void {
  expect(actual.length, what).toBe(want.length);
  let scale = 0;
  for (let i = 0; i < want.length; i++) if (!select || select(i)) scale = Math.max(scale, Math.abs(want[i]));
  let worst = 0;
  for (let i = 0; i < want.length; i++)
    if (!select || select(i)) worst = Math.max(worst, Math.abs(actual[i] - want[i]));
  expect(worst / scale, `${what}: max error ${worst} vs largest magnitude ${scale}`).toBeLessThanOrEqual(tol);
}

/** The checkpoint, loaded and moved to `device`. */
async function load(dir: string, device: DeviceName): Promise<VisionLanguageModel> {
  const model = VisionLanguageModel.fromPretrained(readModelFolder(dir));
  return device === 'cpu' ? model : model.to(device);
}

for (const folder of NANOVLM_GOLD_CASES) {
  const name = basename(folder);
  describe(`nanoVLM parity on cpu (${name})`, () => parity(folder, 'cpu'));
  describeWebGPU(`nanoVLM parity on webgpu (${name})`, () => parity(folder, 'webgpu'));
}

function parity(folder: string, device: DeviceName): void {
  const gold = loadSafetensors(join(folder, 'expected.safetensors'));
  const manifest = JSON.parse(readFileSync(join(folder, 'manifest.json'), 'utf8'));
  const expected = (name: string): RawTensor => {
    const t = gold.get(name);
    if (!t) throw new Error(`${folder}: the gold file has no ${name}`);
    return t;
  };
  const asTensor = (name: string): Tensor => {
    const t = expected(name);
    return tensor(t.data, { shape: t.shape }).keep();
  };
  const checkpoint = join(folder, 'checkpoint');
  let model: VisionLanguageModel;
  let pixels: Tensor, ids: Tensor, mask: Tensor, targets: Tensor;

  beforeAll(async () => {
    model = await load(checkpoint, device);
    [pixels, ids, mask, targets] = await Promise.all(
      ['pixel_values', 'input_ids', 'attention_mask', 'targets'].map((n) => asTensor(n).to(device)),
    );
  });
  afterAll(() => [pixels, ids, mask, targets].forEach((t) => t.dispose()));

  it('reads the configuration from the checkpoint', () => {
    for (const [key, value] of Object.entries(manifest.config))
      expect(model.cfg[key as keyof typeof model.cfg], key).toBe(value);
  });

  it('processes the images as nanoVLM does', () => {
    const S = model.cfg.vit_img_size;
    const process = getImageProcessor(S);
    const images: string[] = manifest.images;
    expect(images.length, 'manifest.json lists the input images').toBe(expected('pixel_values').shape[0]);
    const ours = images.flatMap((f) => Array.from(process(loadImageFile(join(folder, f)))));
    expectNear(ours, expected('pixel_values').data, 'pixel_values');
  });

  it('matches the ViT and projector outputs', async () => {
    const [vit, mp] = tidy(() => {
      const v = model.vision_encoder.forward(pixels);
      return [v, model.MP.forward(v)];
    });
    expectNear(await vit.data(), expected('vit_out').data, 'vit_out');
    expectNear(await mp.data(), expected('mp_out').data, 'mp_out');
  });

  /** nanoVLM's two AdamW groups (projector, everything else) with the gold run's hyperparameters. */
  const goldOptimizer = (vlm: VisionLanguageModel): AdamW => {
    const { adamw } = manifest;
    const mp = vlm.MP.parameters();
    const rest = vlm.parameters().filter((p) => !mp.includes(p));
    return new AdamW(
      [
        { params: mp, lr: adamw.lr_mp },
        { params: rest, lr: adamw.lr_backbones },
      ],
      { betas: adamw.betas, eps: adamw.eps, weightDecay: adamw.weight_decay },
    );
  };
  const adamwNames = [...gold.keys()]
    .filter((n) => n.startsWith('after_adamw.'))
    .map((n) => n.slice('after_adamw.'.length));

  it('matches logits (where attended), loss, gradients, an AdamW step (where the gradient is determined)', async () => {
    const { logits, loss } = model.forward(ids, pixels, mask, targets);
    const m = expected('attention_mask').data;
    const V = logits.shape[2];
    expectNear(await logits.data(), expected('logits').data, 'logits', (i) => m[Math.floor(i / V)] === 1);
    expectNear(await loss!.data(), expected('loss').data, 'loss');

    loss!.backward();
    const params = new Map(model.namedTensors());
    for (const [name, want] of gold) {
      if (!name.startsWith('grad.')) continue;
      expectNear(await params.get(name.slice(5))!.grad!.data(), want.data, name);
    }
    let sumSq = 0;
    for (const p of model.parameters()) for (const g of await p.grad!.data()) sumSq += g * g;
    expectNear([Math.sqrt(sumSq)], expected('grad_total_norm').data, 'grad_total_norm');

    // Adam's first step moves an element by about lr * g / (|g| + eps): its size depends on |g| only where
    // |g| is well above the gradient check's error bound (1e-4 of the largest |g|). Compare there: where
    // |g| > 1e-3 of the largest, the bound changes the step by at most ~1e-4 of lr. Where the gold has no
    // gradient for a parameter, our own (unchecked) gradient decides.
    const determined = new Map<string, Float32Array>();
    for (const name of adamwNames) {
      const g = gold.get(`grad.${name}`)?.data ?? (await params.get(name)!.grad!.data());
      determined.set(name, Float32Array.from(g));
    }
    goldOptimizer(model).step();
    for (const name of adamwNames) {
      const g = determined.get(name)!;
      const big = 1e-3 * g.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      const picked = (i: number) => Math.abs(g[i]) > big;
      expectNear(await params.get(name)!.data(), expected(`after_adamw.${name}`).data, `after_adamw.${name}`, picked);
    }
  });

  it('one AdamW step from the gold gradients matches torch.optim.AdamW everywhere', async () => {
    const fresh = await load(checkpoint, device);
    const params = new Map(fresh.namedTensors());
    const withGold = adamwNames.filter((name) => gold.has(`grad.${name}`));
    expect(withGold.length, 'parameters with both a gold gradient and an after_adamw value').toBeGreaterThan(0);
    for (const name of withGold) params.get(name)!.grad = (await asTensor(`grad.${name}`).to(device)).keep();
    goldOptimizer(fresh).step(); // only parameters with a gradient move
    for (const name of withGold) {
      expectNear(
        await params.get(name)!.data(),
        expected(`after_adamw.${name}`).data,
        `after_adamw.${name}`,
        undefined,
        1e-6,
      );
    }
  });

  it('generates the same greedy tokens with the same logits, with and without the KV cache', async () => {
    const fresh = await load(checkpoint, device);
    const want = expected('greedy_tokens');
    const [B, steps] = want.shape;
    for (const kvCache of [true, false]) {
      const out = await fresh.generate(ids, pixels, mask, {
        greedy: true,
        maxNewTokens: steps,
        eosTokenId: null,
        kvCache,
        returnLogits: true,
      });
      expect(out.tokens.flat(), `kvCache ${kvCache}`).toEqual(Array.from(want.data));
      const stepLogits = expected('greedy_step_logits');
      const V = stepLogits.shape[2];
      expectNear(
        out.logits.flatMap((l) => Array.from(l)),
        stepLogits.data,
        `greedy_step_logits (kvCache ${kvCache})`,
      );
      expect(out.tokens.length).toBe(B);
      expect(V).toBe(fresh.cfg.lm_vocab_size);
    }
  });

  it('loads the same weights from Hugging Face SigLIP and Llama (bf16) files', async () => {
    const backbones = loadSafetensors(join(folder, 'expected_backbones.safetensors'));
    let vlm = VisionLanguageModel.fromBackbones(
      model.cfg,
      readModelFolder(join(folder, 'hf-siglip')),
      readModelFolder(join(folder, 'hf-smollm2')),
    );
    if (device !== 'cpu') vlm = await vlm.to(device);
    const [vit, logits] = tidy(() => {
      const lmIds = tensor(backbones.get('input_ids')!.data, { shape: backbones.get('input_ids')!.shape, device });
      const dec = vlm.decoder;
      return [vlm.vision_encoder.forward(pixels), dec.head.forward(dec.forward(dec.token_embedding.forward(lmIds)))];
    });
    expectNear(await vit.data(), backbones.get('vit_out')!.data, 'backbone vit_out');
    expectNear(await logits.data(), backbones.get('logits')!.data, 'backbone LM logits');
  });

  it('saves a checkpoint byte-identical to the one nanoVLM wrote', async () => {
    const fresh = await load(checkpoint, device);
    const dir = mkdtempSync(join(tmpdir(), 'nanovlm-'));
    try {
      writeModelFolder(dir, await fresh.savePretrained());
      for (const f of ['config.json', 'model.safetensors']) {
        expect(Buffer.compare(readFileSync(join(dir, f)), readFileSync(join(checkpoint, f))), f).toBe(0);
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
}
