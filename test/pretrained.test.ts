// Finding model folders: a plain folder, the Hugging Face hub cache layout
// (models--org--name/snapshots/<hash>), and clear errors for what is missing.

import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readModelFolder, writeModelFolder } from '../node/model_folder.ts';
import { parseSafetensors } from '../nn/safetensors.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { NANOVLM_GOLD } from './fixtures.ts';

const work = mkdtempSync(join(tmpdir(), 'pretrained-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** nanoVLM's from_pretrained on a folder: the files read from disk, then the model. */
const load = (nameOrPath: string) => VisionLanguageModel.fromPretrained(readModelFolder(nameOrPath));

describe('fromPretrained', () => {
  it('reads a checkpoint from the Hugging Face cache layout, by folder and by hub name', async () => {
    const repo = join(work, 'hub', 'models--someone--nanoVLM-tiny');
    const snapshot = join(repo, 'snapshots', '0123abc');
    mkdirSync(join(repo, 'refs'), { recursive: true });
    cpSync(join(NANOVLM_GOLD, 'checkpoint'), snapshot, { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), '0123abc\n');
    const direct = load(join(NANOVLM_GOLD, 'checkpoint'));
    const viaFolder = load(repo);
    expect(Array.from(viaFolder.MP.proj.weight.dataSync())).toEqual(Array.from(direct.MP.proj.weight.dataSync()));
    process.env.HF_HUB_CACHE = join(work, 'hub');
    try {
      const viaName = load('someone/nanoVLM-tiny');
      expect(viaName.cfg).toEqual(direct.cfg);
    } finally {
      delete process.env.HF_HUB_CACHE;
    }
  });

  it('says what is missing, without downloading', () => {
    expect(() => load('lusxvr/nanoVLM-222M')).toThrow(
      'model folder not found: lusxvr/nanoVLM-222M (nanovlm-ts does not download from the Hugging ' +
        'Face Hub: pass a local folder with config.json and model.safetensors)',
    );
    const empty = join(work, 'empty');
    mkdirSync(empty);
    expect(() => load(empty)).toThrow(`${join(empty, 'config.json')}: not found`);
  });

  it('names the keys a checkpoint lacks', async () => {
    const partial = join(work, 'partial');
    cpSync(join(NANOVLM_GOLD, 'checkpoint', 'config.json'), join(partial, 'config.json'));
    const { loadSafetensors, saveSafetensors } = await import('../node/safetensors.ts');
    const all = loadSafetensors(join(NANOVLM_GOLD, 'checkpoint', 'model.safetensors'));
    const kept: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const [k, v] of all)
      if (k !== 'MP.proj.weight') kept[k] = { dtype: 'F32', shape: v.shape, data: v.data as Float32Array };
    saveSafetensors(join(partial, 'model.safetensors'), kept);
    expect(() => load(partial)).toThrow(/model\.safetensors: loadStateDict: missing keys: MP\.proj\.weight$/);
  });

  it('refuses a checkpoint of a later nanoVLM version in one line', async () => {
    const later = join(work, 'later');
    cpSync(join(NANOVLM_GOLD, 'checkpoint'), later, { recursive: true });
    const config = JSON.parse(readFileSync(join(later, 'config.json'), 'utf8'));
    const v02 = {
      ...config,
      extra_token_amount: 66,
      lm_chat_template: '{% for message in messages %}',
      mp_image_token_length: 64,
    };
    writeFileSync(join(later, 'config.json'), JSON.stringify(v02));
    expect(() => load(later)).toThrow(
      `${join(later, 'config.json')}: this checkpoint comes from nanoVLM v0.2 or later (it has extra_token_amount, ` +
        'lm_chat_template, mp_image_token_length: image tokens in a chat template, extra vocabulary, image tiling); ' +
        'nanovlm-ts supports the blog-era nanoVLM (v0.1, e.g. nanoVLM-222M)',
    );
  });

  it('takes files from anywhere: parsed bytes give the same model, savePretrained the same bytes', async () => {
    // what the web page does with a dropped folder: the bytes in memory, no file system
    const dir = join(NANOVLM_GOLD, 'checkpoint');
    const bytes = readFileSync(join(dir, 'model.safetensors'));
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    const fromBytes = VisionLanguageModel.fromPretrained({
      source: 'dropped',
      config,
      weights: parseSafetensors(bytes, 'dropped'),
    });
    const fromDisk = load(dir);
    expect(fromBytes.cfg).toEqual(fromDisk.cfg);
    for (const [name, t] of fromDisk.stateDict()) {
      expect(Array.from(fromBytes.stateDict().get(name)!.dataSync()), name).toEqual(Array.from(t.dataSync()));
    }
    const files = await fromBytes.savePretrained();
    expect(Object.keys(files)).toEqual(['model.safetensors', 'config.json']);
    writeModelFolder(join(work, 'saved'), files);
    for (const name of ['config.json', 'model.safetensors']) {
      expect(readFileSync(join(work, 'saved', name)).equals(readFileSync(join(dir, name))), name).toBe(true);
    }
  });
});
