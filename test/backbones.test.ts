// bench/random_backbones.ts: the folders it writes are what VisionLanguageModel
// .fromBackbones reads. At the real shapes (nanoVLM-222M) only the tensor list
// is checked, against the published parameter counts: training the 222M model
// in a test would take minutes. The whole cycle (load the folders, train two
// micro-batches on the cauldron sample with the SmolLM2 tokenizer, save,
// reload, generate) runs on small shapes through the same code.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type LlamaShape,
  SIGLIP_B16_224,
  SMOLLM2_135M,
  type SiglipShape,
  llamaTensors,
  siglipTensors,
  writeRandomBackbones,
} from '../bench/random_backbones.ts';
import { VQACollator } from '../data/collators.ts';
import { VQADataset } from '../data/datasets.ts';
import { openVQARows } from '../node/datasets.ts';
import { readModelFolder, writeModelFolder } from '../node/model_folder.ts';
import { DataLoader } from '../data/loader.ts';
import { getTokenizer } from '../node/tokenizer.ts';
import { openSafetensors } from '../node/safetensors.ts';
import { AdamW } from '../nn/index.ts';
import { tensor, tidy } from '../tensor/index.ts';
import { defaultVLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';

const dir = mkdtempSync(join(tmpdir(), 'nanovlm-backbones-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const count = (specs: [string, number[], unknown][]) =>
  specs.reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);

describe('random backbones', () => {
  it("have the real models' tensors at the real shapes", () => {
    // SmolLM2-135M's published size; SigLIP-B/16-224's vision tower without its pooling head (92.9M with it)
    expect(count(llamaTensors(SMOLLM2_135M))).toBe(134_515_008);
    expect(count(siglipTensors(SIGLIP_B16_224))).toBe(85_797_120);
  });

  it('fromBackbones, then two micro-batches on the cauldron sample, save, reload and generate', async () => {
    const siglip: SiglipShape = {
      hidden_size: 32,
      intermediate_size: 64,
      num_attention_heads: 2,
      num_hidden_layers: 2,
      patch_size: 8,
      image_size: 32,
    };
    const llama: LlamaShape = {
      ...SMOLLM2_135M,
      hidden_size: 32,
      intermediate_size: 48,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      num_hidden_layers: 2,
    };
    const { vit, lm } = writeRandomBackbones(dir, { siglip, llama });
    const weights = openSafetensors(join(lm, 'model.safetensors'));
    expect(weights.info('model.embed_tokens.weight')).toMatchObject({ dtype: 'BF16', shape: [49152, 32] });
    weights.close();
    expect(JSON.parse(readFileSync(join(vit, 'config.json'), 'utf8')).vision_config.hidden_size).toBe(32);

    const cfg = { ...defaultVLMConfig, IMAGE_TOKEN_LENGTH: 4, TOTAL_SEQUENCE_LENGTH: 68, lm_max_length: 64 };
    const model = VisionLanguageModel.fromBackbones(cfg, readModelFolder(vit), readModelFolder(lm));
    expect(model.cfg).toMatchObject({
      vit_hidden_dim: 32,
      vit_img_size: 32,
      lm_hidden_dim: 32,
      lm_vocab_size: 49152,
      lm_n_blocks: 2,
    });
    const tokenizer = getTokenizer('test/fixtures/tokenizers/smollm2');
    const rows = await openVQARows(['test/fixtures/gold/parquet/cauldron_sample.parquet']);
    const collator = new VQACollator(tokenizer, cfg.lm_max_length);
    const loader = new DataLoader(new VQADataset(rows, tokenizer, model.cfg.vit_img_size), {
      batchSize: 2,
      collate: (items) => collator.call(items),
    });
    const opt = new AdamW(model.parameters(), { lr: 1e-3 });
    // two micro-batches of 2 accumulate into one optimizer step
    const losses: number[] = [];
    let micro = 0;
    for await (const { batch } of loader.epoch(0)) {
      const [B, T, S] = [batch.batchSize, batch.seqLen, model.cfg.vit_img_size];
      const pixels = new Float32Array(B * 3 * S * S);
      batch.images.forEach((img, i) => pixels.set(img, i * img.length));
      const loss = tidy(() => {
        const { loss } = model.forward(
          tensor(batch.input_ids, { shape: [B, T] }),
          tensor(pixels, { shape: [B, 3, S, S] }),
          tensor(batch.attention_mask, { shape: [B, T] }),
          tensor(batch.labels, { shape: [B, T] }),
        );
        loss!.div(2).backward();
        return loss!;
      });
      losses.push(await loss.item());
      loss.dispose();
      if (++micro === 2) break;
    }
    expect(losses.every(Number.isFinite) && losses.length === 2).toBe(true);
    const before = model.MP.proj.weight.dataSync().slice();
    opt.step();
    opt.zeroGrad();
    expect(model.MP.proj.weight.dataSync()).not.toEqual(before);

    writeModelFolder(join(dir, 'trained'), await model.savePretrained());
    const reloaded = VisionLanguageModel.fromPretrained(readModelFolder(join(dir, 'trained')));
    expect(Array.from(reloaded.MP.proj.weight.dataSync())).toEqual(Array.from(model.MP.proj.weight.dataSync()));
    const prompt = tokenizer.encode('Question: What is this? Answer:');
    const image = tensor(new Float32Array(3 * 32 * 32).fill(0.5), { shape: [1, 3, 32, 32] });
    const ids = tensor(Int32Array.from(prompt), { shape: [1, prompt.length] });
    const [a, b] = [model, reloaded].map((m) =>
      m.eval().generate(ids, image, null, { greedy: true, maxNewTokens: 4, eosTokenId: null }),
    );
    const [ta, tb] = [(await a).tokens, (await b).tokens];
    expect(ta[0]).toHaveLength(4);
    expect(tb).toEqual(ta);
    await loader.close();
  }, 60_000);
});
