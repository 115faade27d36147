// AdamW against PyTorch's update rule computed by hand in float64, gradient
// clipping, the learning-rate schedule, saving/restoring optimizer state, and
// the bucket layout AdamW uses on WebGPU (webgpu_optim.test.ts runs it).

import { describe, expect, it } from 'vitest';
import { AdamW, clipGradNorm, getLr } from '../nn/index.ts';
import { bucketLayout } from '../nn/optim.ts';
import { contiguousRuns } from '../tensor/contiguous_runs.ts';
import { alias } from '../tensor/ops.ts';
import { contiguousStrides } from '../tensor/shape.ts';
import { parameter } from '../nn/module.ts';
import { ones, tensor, tidy, type Tensor, zeros } from '../tensor/index.ts';
import { heapStats, resetHeapPeak } from '../tensor/cpu/heap.ts';
import { expectClose } from './helpers.ts';

/** torch.optim.AdamW's step for one parameter, written out in plain numbers. */
function referenceAdamW(
  p: number[],
  grads: number[][],
  lr: number,
  wd: number,
  b1 = 0.9,
  b2 = 0.999,
  eps = 1e-8,
): number[] {
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, t) => {
    const step = t + 1;
    for (let i = 0; i < p.length; i++) {
      p[i] *= 1 - lr * wd;
      m[i] += (g[i] - m[i]) * (1 - b1);
      v[i] = v[i] * b2 + (1 - b2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** step) + eps;
      p[i] -= (lr / (1 - b1 ** step)) * (m[i] / denom);
    }
  });
  return p;
}

function setGrad(p: Tensor, g: number[]): void {
  p.grad?.dispose();
  p.grad = tensor(g, { shape: p.shape }).keep();
}

describe('AdamW', () => {
  it("matches PyTorch's update rule over several steps, per parameter group", () => {
    const a = parameter(tensor([0.5, -1, 2]));
    const b = parameter(
      tensor([
        [1, 2],
        [3, -4],
      ]),
    );
    const opt = new AdamW([
      { params: [a], lr: 2e-3 },
      { params: [b], lr: 1e-4 },
    ]);
    const gradsA = [
      [0.1, -0.2, 0.3],
      [1, 0.5, -0.5],
      [0, 0, 2],
    ];
    const gradsB = [
      [1, 1, -1, 0.5],
      [0.1, 0.2, 0.3, 0.4],
      [-3, 2, 1e-3, 0],
    ];
    for (let t = 0; t < 3; t++) {
      setGrad(a, gradsA[t]);
      setGrad(b, gradsB[t]);
      opt.step();
    }
    expectClose(a.dataSync(), referenceAdamW([0.5, -1, 2], gradsA, 2e-3, 0.01), 1e-6, 1e-7);
    expectClose(b.dataSync(), referenceAdamW([1, 2, 3, -4], gradsB, 1e-4, 0.01), 1e-6, 1e-7);
  });
  it('uses a changed learning rate from the next step on', () => {
    const a = parameter(tensor([1]));
    const opt = new AdamW([a], { lr: 0.1, weightDecay: 0 });
    setGrad(a, [1]);
    opt.paramGroups[0].lr = 0.01;
    opt.step();
    expectClose(a.dataSync(), [1 - 0.01], 1e-5);
  });
  it("on the CPU, the first step moves each large parameter's moments out of the memory before making the next's", () => {
    // nanoVLM-222M's moments (1.8 GB) fit the 4 GiB WebAssembly memory only one parameter at a time
    const n = 1 << 17; // from this size on, moments live outside the memory (cpu/backend.ts)
    const params = Array.from({ length: 8 }, () => parameter(zeros([n])));
    const opt = new AdamW(params);
    for (const p of params) p.grad = ones([n]).keep();
    resetHeapPeak();
    const before = heapStats().inUseBytes;
    opt.step();
    // at most one parameter's two moments in the memory at once (8 would be 8 MiB)
    expect(heapStats().peakInUseBytes - before).toBeLessThanOrEqual(2 * 4 * n);
    opt.dispose();
  });
  it('refuses a parameter listed twice', () => {
    const a = parameter(tensor([1]));
    expect(
      () =>
        new AdamW([
          { params: [a], lr: 1 },
          { params: [a], lr: 2 },
        ]),
    ).toThrow(/appears twice/);
  });
  it('resumes exactly from a saved state', async () => {
    const run = async (split: boolean) => {
      const p = parameter(tensor([0.3, -0.7]));
      let opt = new AdamW([p], { lr: 0.05 });
      const grads = [
        [1, -1],
        [0.5, 2],
        [-1, 0.1],
        [0.2, 0.2],
      ];
      for (let t = 0; t < grads.length; t++) {
        if (split && t === 2) {
          const saved = await opt.stateDict();
          opt = new AdamW([p], { lr: 0.05 });
          opt.loadStateDict(saved);
        }
        setGrad(p, grads[t]);
        opt.step();
      }
      return Array.from(p.dataSync());
    };
    expect(await run(true)).toEqual(await run(false));
  });
  it('a step a flag skips (onlyIf 0) changes nothing and is not counted; settle() must come before the next', async () => {
    const p = parameter(tensor([0.5, -1, 2]));
    const opt = new AdamW([p], { lr: 2e-3 });
    const grads = [
      [0.1, -0.2, 0.3],
      [1e30, NaN, -1], // an overflowed step: skipped
      [1, 0.5, -0.5],
      [0, 0, 2],
    ];
    const flags = [1, 0, 1, 1];
    let before = Array.from(p.dataSync());
    for (let t = 0; t < grads.length; t++) {
      setGrad(p, grads[t]);
      opt.step(tensor([flags[t]], { shape: [] }));
      expect(() => opt.step()).toThrow('await optimizer.settle() first');
      await opt.settle();
      const now = Array.from(p.dataSync());
      expect(
        now.every((x, i) => x === before[i]),
        `step ${t}`,
      ).toBe(flags[t] === 0);
      before = now;
    }
    // the taken steps are steps 1, 2 and 3 of AdamW's bias corrections
    const taken = grads.filter((_, t) => flags[t] === 1);
    expectClose(p.dataSync(), referenceAdamW([0.5, -1, 2], taken, 2e-3, 0.01), 1e-6, 1e-7);
    expect((await opt.stateDict()).params[0]!.step).toBe(3);
  });
  it('zeroGrad frees the gradients', () => {
    const a = parameter(tensor([1, 2]));
    const opt = new AdamW([a]);
    a.mul(a).sum().backward();
    const g = a.grad!;
    opt.zeroGrad();
    expect(a.grad).toBeNull();
    expect(g.disposed).toBe(true);
  });
});

describe('clipGradNorm', () => {
  it('scales gradients to the max norm and returns the norm before clipping', () => {
    const a = parameter(tensor([0, 0]));
    const b = parameter(tensor([0]));
    setGrad(a, [3, 0]);
    setGrad(b, [4]);
    const norm = tidy(() => clipGradNorm([a, b], 1));
    expect(norm.dataSync()[0]).toBeCloseTo(5, 5);
    expectClose(a.grad!.dataSync(), [0.6, 0], 1e-5);
    expectClose(b.grad!.dataSync(), [0.8], 1e-5);
  });
  it('leaves small gradients alone', () => {
    const a = parameter(tensor([0, 0]));
    setGrad(a, [0.3, 0.4]);
    expect(clipGradNorm([a], 1).dataSync()[0]).toBeCloseTo(0.5, 5);
    expectClose(a.grad!.dataSync(), [0.3, 0.4], 1e-5);
  });
});

describe('getLr (nanoVLM schedule)', () => {
  it('warms up linearly over 3% of the steps, then decays by cosine to 10%', () => {
    const [maxLr, steps] = [1e-3, 1000];
    expect(getLr(0, maxLr, steps)).toBeCloseTo(maxLr / 30, 12);
    expect(getLr(29, maxLr, steps)).toBeCloseTo(maxLr, 12);
    expect(getLr(30, maxLr, steps)).toBeCloseTo(maxLr, 12);
    expect(getLr(515, maxLr, steps)).toBeCloseTo(0.55 * maxLr, 12); // halfway through the decay
    expect(getLr(1000, maxLr, steps)).toBeCloseTo(0.1 * maxLr, 12);
    expect(getLr(5000, maxLr, steps)).toBe(0.1 * maxLr);
  });
});

describe('buckets (the layout AdamW gives parameters on WebGPU)', () => {
  it('bucketLayout: back to back at multiples of 4, a new bucket when the next does not fit', () => {
    expect(bucketLayout([4, 3, 8, 5], 16)).toEqual({
      places: [
        { bucket: 0, offset: 0 },
        { bucket: 0, offset: 4 },
        { bucket: 0, offset: 8 },
        { bucket: 1, offset: 0 },
      ],
      lengths: [16, 8],
    });
    // a tensor larger than a bucket has one of its own
    expect(bucketLayout([20, 4], 16).lengths).toEqual([20, 4]);
    expect(bucketLayout([], 16)).toEqual({ places: [], lengths: [] });
  });

  it('contiguousRuns: tensors back to back in one storage become one view; gaps, other storages, strides end runs', () => {
    const base = tensor(Float32Array.from({ length: 16 }, (_, i) => i));
    const viewAt = (offset: number, shape: number[]) => alias(base, shape, contiguousStrides(shape), offset);
    const [a, b, c] = [viewAt(0, [2, 2]), viewAt(4, [3]), viewAt(7, [5])];
    const [whole] = contiguousRuns([[a, b, c]]);
    expect(whole[0].shape).toEqual([12]);
    expect(Array.from(whole[0].dataSync())).toEqual(Array.from({ length: 12 }, (_, i) => i));
    // a gap (13 is skipped), another storage, a transposed view: runs of one, each its own view
    const gap = viewAt(13, [3]);
    const other = tensor([1, 2]);
    const t = viewAt(0, [2, 3]).transpose(0, 1);
    const runs = contiguousRuns([[a, b, c, gap, other, t]]);
    expect(runs.map(([r]) => r.shape)).toEqual([[12], [3], [2], [3, 2]]);
    expect(Array.from(runs[3][0].dataSync())).toEqual([0, 3, 1, 4, 2, 5]);
    // parallel lists: a run needs every list to line up
    const other2 = [tensor([0, 0, 0, 0]).reshape([2, 2]), tensor([0, 0, 0]), tensor([0, 0, 0, 0, 0])];
    expect(contiguousRuns([[a, b, c], other2]).length).toBe(3);
  });
});
