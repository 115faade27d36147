// The flag tables (cli.ts) and train.ts's configuration (train_config.ts), in-process: parsing,
// one-line errors for every kind of bad value, --help, presets, cross-flag checks, and what
// --resume may and may not change. test/train.test.ts checks the same errors end to end.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UsageError, defineFlags, helpText, parseFlags } from '../cli.ts';
import { checkOutDir } from '../run_state.ts';
import { allFlags, modelConfig, presets, resolveRun, trainHelp } from '../train_config.ts';

const flags = defineFlags({
  steps: { type: 'int', default: 10, min: 0, help: 'how many steps (0: none)' },
  rate: { type: 'float', default: 0.5, above: 0, max: 1, help: 'a rate' },
  mode: { type: 'string', default: 'fast', choices: ['fast', 'slow'], help: 'how' },
  data: { type: 'strings', help: 'inputs' },
  fancy: { type: 'bool', default: false, help: 'whether' },
  quiet: { type: 'switch', help: 'say less' },
});

/** The message of the UsageError that parsing argv throws. */
function usageError(argv: string[]): string {
  try {
    parseFlags(flags, argv);
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    return (e as Error).message;
  }
  throw new Error(`no error for ${argv.join(' ')}`);
}

describe('parseFlags', () => {
  it('parses each type, with --x v and --x=v, a value that starts with a dash, and repeated lists', () => {
    const argv = ['--steps', '-0', '--rate=1', '--mode', 'slow', '--data', 'a', '--data=b', '--fancy', 'true'];
    argv.push('--quiet');
    const { given, help } = parseFlags(flags, argv);
    expect(given).toEqual({ steps: -0, rate: 1, mode: 'slow', data: ['a', 'b'], fancy: true, quiet: true });
    expect(help).toBe(false);
    expect(parseFlags(flags, ['-h']).help).toBe(true);
    expect(parseFlags(flags, ['--steps', '1', '--steps', '2']).given.steps).toBe(2); // the last one counts
    expect(parseFlags(flags, []).given).toEqual({}); // defaults are the caller's to fill in
  });

  it('says in one line what is wrong with a flag', () => {
    expect(usageError(['--steps', '-1'])).toBe('--steps must be at least 0, got -1');
    expect(usageError(['--steps=-1'])).toBe('--steps must be at least 0, got -1');
    expect(usageError(['--steps', 'abc'])).toBe('--steps expects a whole number, got abc');
    expect(usageError(['--steps', '1.5'])).toBe('--steps expects a whole number, got 1.5');
    expect(usageError(['--rate', '0'])).toBe('--rate must be above 0 and at most 1, got 0');
    expect(usageError(['--rate', 'NaN'])).toBe('--rate expects a number, got NaN');
    expect(usageError(['--rate', 'Infinity'])).toBe('--rate expects a number, got Infinity');
    expect(usageError(['--mode', 'medium'])).toBe('--mode expects one of fast, slow; got medium');
    expect(usageError(['--fancy', 'yes'])).toBe('--fancy expects true or false, got yes');
    expect(usageError(['--quiet=true'])).toBe('--quiet takes no value');
    expect(usageError(['--steps'])).toBe('--steps needs a value');
    expect(usageError(['--steps', '--quiet'])).toBe('--steps needs a value');
    expect(usageError(['--steps', ''])).toBe('--steps needs a value');
    expect(usageError(['--step', '3'])).toBe('unknown flag --step (did you mean --steps?)');
    expect(usageError(['--colour'])).toBe('unknown flag --colour');
    expect(usageError(['steps'])).toBe("unexpected argument 'steps' (flags start with --)");
  });

  it('writes --help from the table: what each flag does, its default, its range', () => {
    const help = helpText('npm run thing --', [['flags', flags]]);
    expect(help.split('\n')[0]).toBe('usage: npm run thing -- [flags]');
    expect(help).toMatch(/--steps N +how many steps \(0: none\) \(default: 10; at least 0\)/);
    expect(help).toMatch(/--rate X +a rate \(default: 0.5; above 0 and at most 1\)/);
    expect(help).toMatch(/--mode fast\|slow +how \(default: fast\)/);
    expect(help).toMatch(/--data PATH +inputs \(repeat for several\)/);
    for (const line of help.split('\n')) expect(line.length).toBeLessThanOrEqual(100);
  });
});

describe("train.ts's configuration", () => {
  const resolve = (argv: string[]) => resolveRun(parseFlags(allFlags, argv).given);
  const refused = (argv: string[]) => {
    try {
      resolve(argv);
    } catch (e) {
      expect(e).toBeInstanceOf(UsageError);
      return (e as Error).message;
    }
    throw new Error(`no error for ${argv.join(' ')}`);
  };

  it('is the defaults, then the preset, then the flags; the default preset runs 5,000 steps of 32', () => {
    const run = resolve(['--lr_mp', '0.01']);
    const values = [run.max_steps, run.batch_size, run.lr_mp, run.lr_backbones, run.builtin_train_size];
    expect(values).toEqual([5000, 32, 0.01, 1e-3, 160_000]);
    const cfg = modelConfig(run);
    expect([cfg.lm_hidden_dim, cfg.IMAGE_TOKEN_LENGTH, cfg.TOTAL_SEQUENCE_LENGTH]).toEqual([64, 4, 20]);
    const big = resolve(['--preset', 'nanovlm-222m', '--vit', 'v', '--lm', 'l']);
    const expected = { vit_hidden_dim: 768, IMAGE_TOKEN_LENGTH: 49, TOTAL_SEQUENCE_LENGTH: 128, lm_tokenizer: 'l' };
    expect(modelConfig(big)).toMatchObject(expected);
    for (const preset of Object.values(presets)) {
      for (const name of Object.keys(preset)) expect(allFlags).toHaveProperty([name]);
    }
  });

  it('refuses values out of range and flags that do not fit together', () => {
    const accumulation = '--gradient_accumulation_steps must be at least 1, got 0';
    expect(() => resolve(['--gradient_accumulation_steps', '0'])).toThrow(accumulation);
    expect(() => resolve(['--lr_mp', '-1'])).toThrow('--lr_mp must be at least 0, got -1');
    expect(() => resolve(['--val_ratio', '1'])).toThrow('--val_ratio must be above 0 and below 1, got 1');
    expect(() => resolve(['--max_minutes', '-1'])).toThrow('--max_minutes must be at least 0, got -1');
    expect(() => resolve(['--vit_dropout', '1'])).toThrow('--vit_dropout must be at least 0 and below 1, got 1');
    expect(() => resolve(['--device', 'gpu'])).toThrow('--device expects one of auto, webgpu, cpu; got gpu');
    expect(() => resolve(['--vlm_load_backbone_weights', 'yes'])).toThrow('expects true or false');
    expect(refused(['--vit_img_size', '36'])).toBe(
      '--vit_img_size 36 must be a multiple of --vit_patch_size 8 (the image is cut into whole patches)',
    );
    expect(refused(['--vit_img_size', '40'])).toBe('the 5x5 patch grid does not divide by --mp_pixel_shuffle_factor 2');
    expect(refused(['--lm_n_heads', '3'])).toBe(
      '--lm_hidden_dim 64 must be a multiple of --lm_n_heads 3 (each head gets an equal share)',
    );
    expect(refused(['--lm_n_kv_heads', '3'])).toMatch(/^--lm_n_heads 4 must be a multiple of --lm_n_kv_heads 3/);
    const both = 'pretrained backbones need both --vit path/to/siglip and --lm path/to/smollm2';
    expect(refused(['--vit', 'path'])).toBe(both);
    const backbones = /^--preset nanovlm-222m starts from pretrained backbones: pass --vit/;
    expect(refused(['--preset', 'nanovlm-222m'])).toMatch(backbones);
    const epochs = '--epochs counts only with --max_steps 0 (the default preset sets --max_steps 5000)';
    expect(refused(['--epochs', '3'])).toBe(epochs);
    expect(resolve(['--epochs', '3', '--max_steps', '0']).epochs).toBe(3);
    const small = 'the built-in images need --vit_img_size 32 or more';
    expect(refused(['--vit_img_size', '16', '--vit_patch_size', '4'])).toBe(small);
  });

  it('on --resume keeps the stored flags; a given flag may only change what does not change the numbers', () => {
    const stored = resolve(['--max_steps', '3000', '--batch_size', '16']);
    const resumed = (argv: string[]) => resolveRun(parseFlags(allFlags, ['--resume', ...argv]).given, stored);
    expect(resumed([])).toMatchObject({ max_steps: 3000, batch_size: 16, lr_mp: 1e-3 });
    const faster = ['--max_steps', '3000', '--max_minutes', '1', '--device', 'cpu', '--threads', '1'];
    expect(resumed(faster)).toMatchObject({ max_minutes: 1, threads: 1 });
    const longer = "--max_steps 5000 differs from the resumed run's 3000: a resumed run keeps its flags";
    expect(() => resumed(['--max_steps', '5000'])).toThrow(longer);
    expect(() => resumed(['--tokenizer', 'x'])).toThrow("--tokenizer x differs from the resumed run's (not set)");
    const data = "--train_data a.jsonl differs from the resumed run's (none)";
    expect(() => resumed(['--train_data', 'a.jsonl'])).toThrow(data);
  });

  it("--help lists every flag, says what 0 means, and shows the chosen preset's defaults", () => {
    const help = trainHelp('npm run train --').replace(/\s+/g, ' '); // one line: wrapping aside
    expect(help.startsWith('usage: npm run train -- [flags]')).toBe(true);
    for (const name of Object.keys(allFlags)) expect(help).toContain(`--${name} `);
    expect(help).toMatch(/--max_steps N optimizer steps[^-]*\(0: --epochs passes over the training set\)/);
    expect(help).toContain('--max_minutes X stop after this many minutes, evaluating and saving first (0: no limit)');
    expect(help).toContain('(0: no limit) (default: 10;');
    expect(help).toContain('passes over the training set) (default: 5000;');
    expect(help).toContain('--lm_hidden_dim N decoder width (default: 64;');
    expect(trainHelp('npm run train --', 'nanovlm-222m')).toMatch(/--lm_hidden_dim N +decoder width \(default: 576;/);
  });
});

describe('the run folder (--out)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nanovlm-out-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is refused when it is a file, holds a run, or has nothing to resume', () => {
    const file = join(dir, 'file');
    writeFileSync(file, '');
    expect(() => checkOutDir(file, {})).toThrow(`--out ${file} is a file, not a folder`);
    expect(() => checkOutDir(join(file, 'run'), {})).toThrow(`--out ${join(file, 'run')} is inside ${file}, a file`);
    expect(checkOutDir(join(dir, 'new'), {})).toBe(null);
    expect(() => checkOutDir(dir, { resume: true })).toThrow(`--resume: no run to resume in ${dir}`);
    const both = '--resume continues the run in --out, --overwrite replaces it';
    expect(() => checkOutDir(dir, { resume: true, overwrite: true })).toThrow(both);
    writeFileSync(join(dir, 'notes.txt'), 'my own file'); // not a run's: the folder is still free
    expect(checkOutDir(dir, {})).toBe(null);
    writeFileSync(join(dir, 'metrics.jsonl'), '{"step":1,"loss":2}\n');
    expect(() => checkOutDir(dir, {})).toThrow(`${dir} already holds a run (metrics.jsonl): continue it with --resume`);
    expect(checkOutDir(dir, { overwrite: true })).toBe(null);
  });
});
