// AdamW's buckets on WebGPU (nn/optim.ts): the parameters it trains move into
// a few large buffers with their gradients and moments, so one kernel call
// updates a bucket and gradient clipping reads a bucket at a time. Checked
// against the CPU's AdamW, where every parameter keeps its own buffers, over
// steps that break the buckets' runs (a parameter without a gradient, one
// moved out by an assign, a gradient set by hand, gradient accumulation,
// steps skipped or taken by a flag on the device), with the dispatch counts
// that are the point of it, and a resume.

import { expect, it } from 'vitest';
import { AdamW, clipGradNorm } from '../nn/index.ts';
import { parameter } from '../nn/module.ts';
import { GradScaler, Generator, randn, tensor, tidy, type Tensor } from '../tensor/index.ts';
import { webgpuBackend } from '../tensor/webgpu/device.ts';
import { describeWebGPU, expectAllClose } from './webgpu_helpers.ts';

// awkward sizes: not multiples of 4, so the buckets have gaps (each parameter starts at a multiple of 4), which
// end the runs one kernel call covers (a gap is never written, so none is read either)
const SHAPES = [[3], [5, 7], [4], [2, 3], [17], [6, 6]];

/** The same parameters on both devices, in two groups with their own learning rates. */
async function setup(device: 'cpu' | 'webgpu', seed = 1) {
  const g = new Generator(seed);
  const params: Tensor[] = [];
  for (const shape of SHAPES) {
    const host = randn(shape, { generator: g });
    params.push(parameter(device === 'cpu' ? host : await host.to('webgpu')));
  }
  const opt = new AdamW([
    { params: params.slice(0, 2), lr: 1e-2 },
    { params: params.slice(2), lr: 3e-3, weightDecay: 0.1 },
  ]);
  return { params, opt };
}

/** A loss whose gradient differs per element and per step; `skip`: parameters it leaves out. */
function backward(params: Tensor[], step: number, skip: number[] = []): void {
  tidy(() => {
    const terms = params
      .filter((_, i) => !skip.includes(i))
      .map((p) =>
        p
          .mul(p)
          .mul(0.5 + step)
          .add(p.mul(p.size - step))
          .sum(),
      );
    terms.reduce((a, b) => a.add(b)).backward();
  });
}

/** A step that a flag on the device takes (1) or skips (0), as GradScaler.step does; its count settled after. */
async function conditionalStep(x: { params: Tensor[]; opt: AdamW }, step: number, flag: number, skip: number[] = []) {
  backward(x.params, step, skip);
  clipGradNorm(x.params, 5).dispose();
  const onlyIf = tensor([flag], { shape: [], device: x.params[0].device });
  x.opt.step(onlyIf);
  onlyIf.dispose(); // the optimizer started reading it already
  x.opt.zeroGrad();
  await x.opt.settle();
}

/** One training step on both devices: backward (twice when accumulating), clipping, the update. */
function trainStep(params: Tensor[], opt: AdamW, step: number, skip: number[] = [], accumulate = false) {
  backward(params, step, skip);
  if (accumulate) backward(params, step + 10, skip);
  clipGradNorm(params, 5).dispose();
  opt.step();
  opt.zeroGrad();
}

async function expectSame(cpu: Tensor[], gpu: Tensor[], what: string) {
  for (let i = 0; i < cpu.length; i++) {
    expectAllClose(await gpu[i].data(), cpu[i].dataSync(), 1e-5, `${what}: parameter ${i}`);
  }
}

describeWebGPU('AdamW buckets on webgpu', () => {
  it("train as the CPU's per-parameter AdamW does, through steps that break the buckets' runs", async () => {
    const cpu = await setup('cpu');
    const gpu = await setup('webgpu');
    // the parameters now live in the buckets: two groups, one bucket (all of it is well under a bucket)
    const home = gpu.params[0].storage;
    expect(gpu.params.every((p) => p.storage === home)).toBe(true);
    await expectSame(cpu.params, gpu.params, 'moved into the bucket');
    const plan: [string, (x: { params: Tensor[]; opt: AdamW }, step: number) => void | Promise<void>][] = [
      ['plain', (x, s) => trainStep(x.params, x.opt, s)],
      ['parameters 1 and 4 get no gradient', (x, s) => trainStep(x.params, x.opt, s, [1, 4])],
      ['gradient accumulation over two backwards', (x, s) => trainStep(x.params, x.opt, s, [], true)],
      [
        'parameter 2 assigned new values, gradient 3 set by hand',
        (x, s) => {
          x.params[2].assign(tensor([1, -2, 3, -4], { device: x.params[2].device }));
          backward(x.params, s, [3]);
          x.params[3].grad = tensor([0.5, 1, -1, 2, 0, 3], { shape: [2, 3], device: x.params[3].device }).keep();
          clipGradNorm(x.params, 5).dispose();
          x.opt.step();
          x.opt.zeroGrad();
        },
      ],
      ['plain again', (x, s) => trainStep(x.params, x.opt, s)],
      ['skipped by a flag on the device', (x, s) => conditionalStep(x, s, 0)],
      ['taken by a flag on the device, parameter 1 without a gradient', (x, s) => conditionalStep(x, s, 1, [1])],
    ];
    for (const [i, [what, run]] of plan.entries()) {
      const before = await Promise.all(gpu.params.map((p) => p.data()));
      await run(cpu, i);
      await run(gpu, i);
      await expectSame(cpu.params, gpu.params, `step ${i}, ${what}`);
      const after = await Promise.all(gpu.params.map((p) => p.data()));
      const unchanged = after.every((a, k) => a.every((x, j) => x === before[k][j]));
      expect(unchanged, `step ${i}, ${what}: the parameters stayed`).toBe(what.startsWith('skipped'));
    }
    // the assigned parameter went back into its place
    expect(gpu.params[2].storage).toBe(home);
    const [a, b] = [await gpu.opt.stateDict(), await cpu.opt.stateDict()];
    // 6, 4 (no gradient twice), ...: the skipped step is not counted
    expect(a.params.map((p) => p?.step)).toEqual(b.params.map((p) => p?.step));
    expect(a.params.map((p) => p?.step)).toEqual([6, 4, 6, 6, 5, 6]);
    [cpu, gpu].forEach((x) => x.opt.dispose());
  });

  it('one adamw dispatch per group, and clipping and unscaling whose dispatches do not grow with the parameters', async () => {
    const b = webgpuBackend()!;
    const dispatches = async (count: number) => {
      const params = await Promise.all(
        Array.from({ length: count }, async (_, i) => parameter(await randn([4 * (i + 1)]).to('webgpu'))),
      );
      const opt = new AdamW(params);
      trainStep(params, opt, 0); // the first use of the moments' buckets clears them (a fill each)
      backward(params, 1);
      const at = () => b.counters().dispatches;
      const scaler = new GradScaler('webgpu', { initScale: 4 });
      const c0 = at();
      scaler.unscale(params);
      const c1 = at();
      clipGradNorm(params, 1).dispose();
      const c2 = at();
      opt.step();
      const c3 = at();
      opt.zeroGrad();
      opt.dispose();
      scaler.dispose();
      return { unscale: c1 - c0, clip: c2 - c1, step: c3 - c2 };
    };
    const few = await dispatches(3);
    const many = await dispatches(40);
    // 40 parameters of sizes that are multiples of 4 (as every one of nanoVLM's): one group, one bucket, one kernel call
    expect(many.step).toBe(1);
    expect(many).toEqual(few); // per bucket, not per parameter
  });

  it('resumes exactly: moments written back into their buckets', async () => {
    const run = async (split: boolean) => {
      let x = await setup('webgpu', 3);
      for (let s = 0; s < 4; s++) {
        if (split && s === 2) {
          const saved = await x.opt.stateDict();
          const values = await Promise.all(x.params.map((p) => p.data()));
          x.opt.dispose();
          x = await setup('webgpu', 4); // other values: everything comes from the saved state
          x.params.forEach((p, i) => p.assign(tensor(values[i] as Float32Array, { shape: p.shape, device: 'webgpu' })));
          x.opt.loadStateDict(saved);
        }
        trainStep(x.params, x.opt, s);
      }
      const out = await Promise.all(x.params.map(async (p) => Array.from(await p.data())));
      x.opt.dispose();
      return out;
    };
    expect(await run(true)).toEqual(await run(false));
  });
});
