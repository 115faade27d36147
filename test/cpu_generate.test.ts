// generate.ts --dtype: bfloat16 decodes with bfloat16 copies of the language
// model's weights (the products themselves: test/cpu_matmul.test.ts), and a
// value it does not know is one line and exit status 2.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readModelFolder } from '../node/model_folder.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { argv, runScript } from './scripts.ts';

const work = mkdtempSync(join(tmpdir(), 'generate-dtype-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('generate.ts --dtype', () => {
  it('bfloat16 keeps a copy of the decoder weights and generates', () => {
    const out = join(work, 'run');
    // the decoder wider and deeper than the tiny model's: copies of a size the test can tell apart
    const short = '--device cpu --max_steps 2 --eval_interval 2 --batch_size 8 --builtin_train_size 40';
    const vit = '--vit_hidden_dim 32 --vit_inter_dim 64 --vit_patch_size 8 --vit_n_blocks 1';
    const decoder = '--lm_hidden_dim 64 --lm_inter_dim 128 --lm_n_blocks 2';
    const train = runScript('train.ts', [...argv(`${short} --builtin_val_size 8 ${vit} ${decoder}`), '--out', out]);
    expect(train.code, train.err).toBe(0);
    const model = VisionLanguageModel.fromPretrained(readModelFolder(out));
    const values = model.decoder.parameters().reduce((n, p) => n + p.size, 0);
    const flags = ['--checkpoint', out, '--device', 'cpu', '--generations', '2', '--max_new_tokens', '3'];
    const r = runScript('generate.ts', [...flags, '--dtype', 'bfloat16']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain(`decoding with bfloat16 weights (${((2 * values) / 2 ** 20).toFixed(1)} MiB of copies)`);
    expect(r.out).toMatch(/>> Generation 1: .*\n  >> Generation 2: /);
    expect(runScript('generate.ts', flags).out).not.toContain('bfloat16'); // float32 by default
  });

  it('refuses another value with one line and exit status 2', () => {
    const r = runScript('generate.ts', ['--dtype', 'float16']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toEqual([
      'error: --dtype expects one of float32, bfloat16; got float16 (npm run generate -- --help lists the flags)',
    ]);
    expect(runScript('generate.ts', ['--help']).out).toMatch(/--dtype float32\|bfloat16 +CPU: bfloat16 decodes/);
  });
});
