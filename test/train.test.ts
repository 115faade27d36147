// train.ts and generate.ts end to end on the CPU: a tiny model trains for a
// few dozen steps on the built-in data, the loss falls, the checkpoint loads,
// generate.ts answers from it, a run interrupted with Ctrl-C and resumed gives
// exactly the losses of an uninterrupted run, an earlier run is never replaced
// unless asked, a bad value is one line and exit status 2, and a small JSONL
// folder with words of its own trains with a tokenizer built from them.

import { spawn } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { afterAll, describe, expect, it } from 'vitest';
import { renderBuiltinExample } from '../node/images.ts';
import { readModelFolder } from '../node/model_folder.ts';
import { manualSeed } from '../tensor/index.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { ASSETS, NANOVLM_GOLD, SMOLLM2_TOKENIZER } from './fixtures.ts';
import { NODE, TINY_MODEL, argv, runScript } from './scripts.ts';

const root = new URL('..', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'train-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// A tiny model and a short run: seconds on one core.
const tiny = [
  ...argv('--device cpu --max_steps 24 --eval_interval 12 --batch_size 8 --builtin_train_size 400'),
  ...argv('--builtin_val_size 16 --lr_mp 1e-2 --lr_backbones 1e-2'),
  ...TINY_MODEL,
];

/** Like runScript, without waiting: several of these run side by side. */
function start(script: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE[0], [...NODE.slice(1), join(root, script), ...args], { cwd: root });
    const [out, err]: string[][] = [[], []];
    child.stdout.on('data', (d) => out.push(String(d)));
    child.stderr.on('data', (d) => err.push(String(d)));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out: out.join(''), err: err.join('') }));
  });
}

/** Every file of a folder (recursively) with its bytes, to see that nothing changed. */
function snapshot(dir: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const name of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    const path = join(dir, name);
    if (statSync(path).isFile()) files[name] = readFileSync(path).toString('base64');
  }
  return files;
}

const metrics = (dir: string) =>
  readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
const losses = (dir: string) => metrics(dir).filter((m) => 'loss' in m);

describe('train.ts and generate.ts', () => {
  const out = join(work, 'run');

  it('trains: the loss falls, metrics, plot and checkpoint are written', () => {
    const r = runScript('train.ts', [...tiny, '--out', out]);
    expect(r.err).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    const lastLine = r.out.trim().split('\n').pop()!;
    expect(lastLine).toMatch(/^done: 24 steps in \d+:\d\d, val loss [\d.]+, accuracy [\d.]+% .* tokens\/s on cpu/);
    const l = losses(out).map((m) => m.loss);
    expect(l.length).toBe(24);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(l.slice(-5))).toBeLessThan(mean(l.slice(0, 5)));
    const checkpoint = ['config.json', 'model.safetensors', 'tokenizer.json'];
    const files = [...checkpoint, 'metrics.jsonl', 'loss.svg', 'resume/state.json', 'resume/optimizer.safetensors'];
    for (const f of files) expect(existsSync(join(out, f)), f).toBe(true);
  });

  it('writes a checkpoint that loads back', async () => {
    const model = VisionLanguageModel.fromPretrained(readModelFolder(out));
    expect(model.cfg.vit_hidden_dim).toBe(32);
    expect(model.cfg.lm_n_blocks).toBe(1);
  });

  it('generate.ts answers from the checkpoint', () => {
    const flags = ['--device', 'cpu', '--greedy', '--generations', '2', '--max_new_tokens', '3'];
    const r = runScript('generate.ts', ['--checkpoint', out, ...flags]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('What color is the circle?');
    expect(r.out).toMatch(/>> Generation 1: .*\n  >> Generation 2: /);
  });

  it("generate.ts refuses a tokenizer larger than the model's vocabulary, with a hint", () => {
    const checkpoint = join(NANOVLM_GOLD, 'checkpoint');
    const r = runScript('generate.ts', [
      '--checkpoint',
      checkpoint,
      '--tokenizer',
      SMOLLM2_TOKENIZER,
      '--device',
      'cpu',
    ]);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toBe(
      "error: the tokenizer has 49152 tokens but the model's vocabulary has 512: " +
        'pass --tokenizer with the tokenizer the model was trained with',
    );
  });

  it('resumes after Ctrl-C exactly where an uninterrupted run would be, and refuses a changed flag', async () => {
    const stopped = join(work, 'stopped');
    // interrupt once a few steps are logged: the run saves, then exits
    await new Promise<void>((resolve, reject) => {
      const args = [...NODE.slice(1), join(root, 'train.ts'), ...tiny, '--out', stopped];
      const child = spawn(NODE[0], args, { cwd: root });
      const file = join(stopped, 'metrics.jsonl');
      const logged = () => existsSync(file) && readFileSync(file, 'utf8').split('\n').length > 6;
      const timer = setInterval(() => {
        if (!logged()) return;
        clearInterval(timer);
        child.kill('SIGINT');
      }, 20);
      child.on('exit', () => {
        clearInterval(timer);
        resolve();
      });
      child.on('error', reject);
    });
    const partial = losses(stopped).length;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(24);
    // a flag that changes what the run computes is refused, naming it, and nothing is touched
    const before = snapshot(stopped);
    const changed = runScript('train.ts', [...tiny, '--out', stopped, '--resume', '--batch_size', '4']);
    expect(changed.code).toBe(2);
    expect(changed.err.trim()).toBe(
      "error: --batch_size 4 differs from the resumed run's 8: " +
        'a resumed run keeps its flags (start a new one with another --out to change it)',
    );
    expect(snapshot(stopped)).toEqual(before);
    // the hint printed at Ctrl-C (--resume --out) continues the same run; --threads may change, but bit for bit
    // only with the same count (OpenBLAS's products round differently on 1 and 2 threads), here the default
    const threads = String(Math.min(2, availableParallelism()));
    const r = runScript('train.ts', ['--out', stopped, '--resume', '--threads', threads]);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`resuming ${stopped} at step ${partial}`);
    expect(losses(stopped)).toEqual(losses(out).map((m) => ({ ...m, tokens_per_s: expect.any(Number) })));
  });

  it('refuses a fresh run into an occupied --out; --overwrite replaces it, after checking every flag', async () => {
    const copy = join(work, 'copy');
    cpSync(out, copy, { recursive: true });
    const before = snapshot(copy);
    const [again, badFlag] = await Promise.all([
      start('train.ts', [...tiny, '--out', copy]),
      start('train.ts', [...tiny, '--out', copy, '--overwrite', '--gradient_accumulation_steps', '0']),
    ]);
    expect(again.code).toBe(2);
    expect(again.err.trim().split('\n')).toEqual([
      `error: ${copy} already holds a run (config.json, model.safetensors, tokenizer.json, metrics.jsonl, loss.svg, ` +
        'resume): continue it with --resume, choose another --out, or pass --overwrite to replace it',
    ]);
    expect(badFlag.code).toBe(2);
    expect(badFlag.err).toContain('error: --gradient_accumulation_steps must be at least 1, got 0');
    expect(snapshot(copy)).toEqual(before);
    const short = ['--max_steps', '3', '--eval_interval', '3'];
    const replaced = runScript('train.ts', [...tiny, '--out', copy, '--overwrite', ...short]);
    expect(replaced.code).toBe(0);
    expect(losses(copy)).toHaveLength(3);
  });

  it('--freeze vit,lm trains the projector alone: optimizer state for it only, the backbones unchanged', async () => {
    const frozen = join(work, 'frozen');
    const r = runScript('train.ts', [
      ...tiny,
      '--max_steps',
      '4',
      '--eval_interval',
      '2',
      '--freeze',
      'vit,lm',
      '--out',
      frozen,
    ]);
    expect(r.code, r.err).toBe(0);
    const { loadSafetensors } = await import('../node/safetensors.ts');
    const moments = [...loadSafetensors(join(frozen, 'resume', 'optimizer.safetensors')).keys()].sort();
    expect(moments).toEqual(['exp_avg.0', 'exp_avg_sq.0']); // the projector's weight: first in AdamW's groups
    const model = VisionLanguageModel.fromPretrained(readModelFolder(join(frozen, 'resume')));
    // after 4 steps the backbones are what --seed 0 initialised, the projector is not
    manualSeed(0);
    const initial = new VisionLanguageModel(model.cfg);
    const same = (part: 'vision_encoder' | 'decoder' | 'MP') => {
      const [a, b] = [initial[part].parameters(), model[part].parameters()];
      return a.every((p, i) => p.dataSync().every((x, j) => x === b[i].dataSync()[j]));
    };
    expect([same('vision_encoder'), same('decoder'), same('MP')]).toEqual([true, true, false]);
    expect(runScript('train.ts', [...tiny, '--freeze', 'vit,eyes', '--out', join(work, 'never2')]).err.trim()).toBe(
      'error: --freeze vit,eyes: unknown part eyes (parts: vit, mp, lm)',
    );
  });

  it('answers a bad value with one line and exit status 2, before writing anything', async () => {
    // test/cli.test.ts checks every flag's range in-process; these check what a user sees
    const never = join(work, 'never');
    const cases: [string, string[], string][] = [
      ['train', ['--threads', 'abc', '--out', never], '--threads expects a whole number, got abc'],
      ['train', ['--max_steps', '-5', '--out', never], '--max_steps must be at least 0, got -5'],
      ['generate', ['--temperature', '-1'], '--temperature must be at least 0, got -1'],
      ['generate', ['--max_new_tokens=-1'], '--max_new_tokens must be at least 1, got -1'],
    ];
    const results = await Promise.all(cases.map(([script, args]) => start(`${script}.ts`, args)));
    results.forEach((r, i) => {
      const [script, args, message] = cases[i];
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err.trim().split('\n')).toEqual([`error: ${message} (npm run ${script} -- --help lists the flags)`]);
      expect(r.out).toBe('');
    });
    expect(existsSync(never)).toBe(false);
  });

  it('trains on a JSONL folder of 40 rows with its own words, validating on a non-empty split', () => {
    const data = join(work, 'fruit');
    mkdirSync(data);
    const fruits: [string, number[]][] = [
      ['apple', [220, 30, 30]],
      ['banana', [240, 220, 40]],
      ['lime', [60, 200, 60]],
      ['grape', [120, 40, 160]],
    ];
    const rows = Array.from({ length: 40 }, (_, i) => {
      const [fruit, rgb] = fruits[i % 4];
      const png = new PNG({ width: 32, height: 32 });
      for (let p = 0; p < 32 * 32; p++) png.data.set([...rgb, 255], p * 4);
      writeFileSync(join(data, `${i}.png`), PNG.sync.write(png));
      return JSON.stringify({ image: `${i}.png`, question: 'Which fruit has this colour?', answer: fruit });
    });
    writeFileSync(join(data, 'fruit.jsonl'), `${rows.join('\n')}\n`);
    const fruitOut = join(work, 'fruit-run');
    const short = ['--max_steps', '6', '--eval_interval', '3'];
    const r = runScript('train.ts', [...tiny, '--train_data', data, '--out', fruitOut, ...short]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('tokenizer: a word-level one built from the training text');
    expect(r.out).toContain('39 samples (1 for validation)');
    const evals = metrics(fruitOut).filter((m) => 'val_loss' in m);
    expect(evals.map((m) => m.step)).toEqual([3, 6]);
    for (const m of evals) expect(m.val_loss).toBeGreaterThan(0);
    const vocab = JSON.parse(readFileSync(join(fruitOut, 'tokenizer.json'), 'utf8')).model.vocab;
    for (const word of [' fruit', ' colour', 'apple', 'banana', 'lime', 'grape']) {
      expect(vocab, word).toHaveProperty([word]);
    }
    // a prompt with words the model never saw is answered, with a warning naming them
    const image = join(data, '0.png');
    const g = runScript('generate.ts', [
      '--checkpoint',
      fruitOut,
      '--image',
      image,
      '--device',
      'cpu',
      '--generations',
      '1',
    ]);
    expect(g.code).toBe(0);
    expect(g.err).toContain('warning: the tokenizer does not know "What", "is": the model sees <unk> there');
  });

  it('stops at a NaN loss with a message naming the step', () => {
    const r = runScript('train.ts', [...tiny, '--out', join(work, 'nan'), '--lr_mp', '1e30', '--lr_backbones', '1e30']);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(/^error: loss is (NaN|-?Infinity) at step \d+: stopping before training on garbage/);
  });

  it('says how to get a checkpoint when there is none', () => {
    const r = runScript('generate.ts', ['--checkpoint', join(work, 'nothing'), '--device', 'cpu']);
    expect(r.code).toBe(1);
    const fix = 'pass --checkpoint path/to/a/folder with config.json and model.safetensors';
    expect(r.err.trim()).toBe(`error: no checkpoint at ${join(work, 'nothing')}: ${fix}`);
  });

  it('keeps the example image in assets/ equal to what the built-in set draws', () => {
    const example = Buffer.from(renderBuiltinExample(8).png);
    expect(Buffer.compare(readFileSync(join(ASSETS, 'shapes.png')), example)).toBe(0);
  });
});
