// train.ts and generate.ts end to end on the CPU: a tiny model trains for a
// few dozen steps on the built-in data, the loss falls, the checkpoint loads,
// generate.ts answers from it, and a run interrupted with Ctrl-C and resumed
// gives exactly the losses of an uninterrupted run.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { renderBuiltinExample } from '../data/builtin.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { ASSETS, NANOVLM_GOLD, SMOLLM2_TOKENIZER } from './fixtures.ts';

const root = new URL('..', import.meta.url).pathname;
// `npm run train` runs train.ts this way: plain node with tsx's loader, so
// Ctrl-C reaches the script itself (see the README).
const node = [process.execPath, '--import', 'tsx'];
const work = mkdtempSync(join(tmpdir(), 'train-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// A tiny model and a short run: seconds on one core.
const tiny = [
  '--device', 'cpu', '--max_steps', '24', '--eval_interval', '12', '--batch_size', '8', '--builtin_train_size', '400',
  '--builtin_val_size', '16', '--vit_hidden_dim', '32', '--vit_inter_dim', '64', '--vit_patch_size', '8', '--vit_n_blocks', '1',
  '--lm_hidden_dim', '32', '--lm_inter_dim', '64', '--lm_n_blocks', '1', '--lr_mp', '1e-2', '--lr_backbones', '1e-2',
];

function run(script: string, args: string[]) {
  const r = spawnSync(node[0], [...node.slice(1), join(root, script), ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const losses = (dir: string) =>
  readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => 'loss' in m);

describe('train.ts and generate.ts', () => {
  const out = join(work, 'run');

  it('trains: the loss falls, metrics, plot and checkpoint are written', () => {
    const r = run('train.ts', [...tiny, '--out', out]);
    expect(r.err).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    const lastLine = r.out.trim().split('\n').pop()!;
    expect(lastLine).toMatch(/^done: 24 steps in \d+:\d\d, val loss [\d.]+, accuracy [\d.]+% .* tokens\/s on cpu/);
    const l = losses(out).map((m) => m.loss);
    expect(l.length).toBe(24);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(l.slice(-5))).toBeLessThan(mean(l.slice(0, 5)));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'loss.png', 'resume/state.json', 'resume/optimizer.safetensors']) {
      expect(existsSync(join(out, f)), f).toBe(true);
    }
  });

  it('writes a checkpoint that loads back', async () => {
    const model = await VisionLanguageModel.fromPretrained(out);
    expect(model.cfg.vit_hidden_dim).toBe(32);
    expect(model.cfg.lm_n_blocks).toBe(1);
  });

  it('generate.ts answers from the checkpoint', () => {
    const r = run('generate.ts', ['--checkpoint', out, '--device', 'cpu', '--greedy', '--generations', '2', '--max_new_tokens', '3']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('What color is the circle?');
    expect(r.out).toMatch(/>> Generation 1: .*\n  >> Generation 2: /);
  });

  it('generate.ts refuses a tokenizer larger than the model\'s vocabulary, with a hint', () => {
    const r = run('generate.ts', ['--checkpoint', join(NANOVLM_GOLD, 'checkpoint'), '--tokenizer', SMOLLM2_TOKENIZER, '--device', 'cpu']);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toBe('error: the tokenizer has 49152 tokens but the model\'s vocabulary has 512: pass --tokenizer with the tokenizer the model was trained with');
  });

  it('resumes after Ctrl-C exactly where an uninterrupted run would be', async () => {
    const stopped = join(work, 'stopped');
    // interrupt once a few steps are logged: the run saves, then exits
    await new Promise<void>((resolve, reject) => {
      const child = spawn(node[0], [...node.slice(1), join(root, 'train.ts'), ...tiny, '--out', stopped], { cwd: root });
      const timer = setInterval(() => {
        if (existsSync(join(stopped, 'metrics.jsonl')) && readFileSync(join(stopped, 'metrics.jsonl'), 'utf8').split('\n').length > 6) {
          clearInterval(timer);
          child.kill('SIGINT');
        }
      }, 20);
      child.on('exit', () => (clearInterval(timer), resolve()));
      child.on('error', reject);
    });
    const partial = losses(stopped).length;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(24);
    const r = run('train.ts', [...tiny, '--out', stopped, '--resume']);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`resuming ${stopped} at step ${partial}`);
    expect(losses(stopped)).toEqual(losses(out).map((m) => ({ ...m, tokens_per_s: expect.any(Number) })));
  });

  it('stops at a NaN loss with a message naming the step', () => {
    const r = run('train.ts', [...tiny, '--out', join(work, 'nan'), '--lr_mp', '1e30', '--lr_backbones', '1e30']);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(/^error: loss is (NaN|-?Infinity) at step \d+: stopping before training on garbage/);
  });

  it('says how to get a checkpoint when there is none', () => {
    const r = run('generate.ts', ['--checkpoint', join(work, 'nothing'), '--device', 'cpu']);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toBe(`error: no checkpoint at ${join(work, 'nothing')}: pass --checkpoint path/to/a/folder with config.json and model.safetensors`);
  });

  it('keeps the example image in assets/ equal to what the built-in set draws', () => {
    expect(Buffer.compare(readFileSync(join(ASSETS, 'shapes.png')), Buffer.from(renderBuiltinExample(8).png))).toBe(0);
  });
});
