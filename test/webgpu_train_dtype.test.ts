// train.ts --dtype float16 on WebGPU: a short run trains with autocast and loss scaling, keeps the loss
// scale in resume/ and refuses another --dtype on --resume, and a run gone to NaN still stops; the CPU
// backend refuses float16 in one line.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TINY_MODEL, argv, runScript } from './scripts.ts';
import { SKIP_WEBGPU } from './webgpu_helpers.ts';

const work = mkdtempSync(join(tmpdir(), 'train-dtype-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// A tiny model and a short run, as in train.test.ts
const tiny = [
  ...argv('--max_steps 6 --eval_interval 3 --batch_size 8 --builtin_train_size 200 --builtin_val_size 8'),
  ...argv('--lr_mp 1e-2 --lr_backbones 1e-2'),
  ...TINY_MODEL,
];

const train = (args: string[]) => runScript('train.ts', args);

(SKIP_WEBGPU ? describe.skip : describe)('train.ts --dtype', () => {
  it('refuses float16 on the CPU and an unknown dtype, in one line each', () => {
    const cpu = train([...tiny, '--device', 'cpu', '--dtype', 'float16', '--out', join(work, 'cpu')]);
    expect(cpu.code).toBe(2);
    expect(cpu.err.trim()).toBe(
      'error: --dtype float16 runs on WebGPU only: add --device webgpu, or train in float32 on the CPU',
    );
    const bad = train([...tiny, '--dtype', 'bfloat16', '--out', join(work, 'bad')]);
    expect(bad.code).toBe(2);
    expect(bad.err.trim().split('\n')).toHaveLength(1);
    expect(bad.err).toMatch(/--dtype.*float32.*float16/);
  });

  it('trains in float16 on WebGPU, keeps the loss scale for --resume, which keeps the dtype', () => {
    const out = join(work, 'f16');
    const r = train([...tiny, '--device', 'webgpu', '--dtype', 'float16', '--out', out]);
    expect(r.err).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    expect(r.out.trim().split('\n').pop()).toMatch(/^done: 6 steps .* on webgpu/);
    const records = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const steps = records.filter((m) => 'loss' in m);
    expect(steps.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6]);
    // no overflow in so small a model: the scale stays at GradScaler's first, 2^16, and every step has a norm
    for (const m of steps) {
      expect(Number.isFinite(m.loss)).toBe(true);
      expect([m.loss_scale, Number.isFinite(m.grad_norm)]).toEqual([2 ** 16, true]);
    }
    const state = JSON.parse(readFileSync(join(out, 'resume', 'state.json'), 'utf8'));
    expect(state.config.dtype).toBe('float16');
    expect(state.gradScaler).toEqual({ scale: 2 ** 16, goodSteps: 6 });
    const resumed = train(['--resume', '--out', out, '--dtype', 'float32']);
    expect(resumed.code).toBe(2);
    expect(resumed.err).toMatch(/--dtype float32 differs from the resumed run's float16/);
  });

  it('a run gone to NaN still stops at its loss', () => {
    // a learning rate of 1e30 wrecks the weights in one step: the next forward overflows float16
    const lr = ['--lr_mp', '1e30', '--lr_backbones', '1e30'];
    const r = train([...tiny, ...lr, '--device', 'webgpu', '--dtype', 'float16', '--out', join(work, 'nan')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^error: loss is NaN at step 2: stopping before training on garbage/m);
  });
});
