// Training loops must not leak: after each tidy()'d step, the live tensor
// count and the bytes held return to the same values.

import { describe, expect, it } from 'vitest';
import { heapStats, resetHeapPeak } from '../tensor/cpu/heap.ts';
import { memory, randn, tidy, tidyForward, zeros, type Tensor } from '../tensor/index.ts';

describe('memory', () => {
  it('tidy frees intermediates but keeps returned and kept tensors', () => {
    const before = memory();
    const kept: Tensor[] = [];
    const out = tidy(() => {
      const a = zeros([10]);
      const b = a.add(1).mul(2);
      kept.push(a.add(5).keep());
      return b;
    });
    expect(out.disposed).toBe(false);
    expect(kept[0].disposed).toBe(false);
    expect(memory().numTensors).toBe(before.numTensors + 2);
    out.dispose();
    kept[0].dispose();
    expect(memory()).toEqual(before);
  });
  it('tidy frees everything when the step throws', () => {
    const before = memory();
    expect(() =>
      tidy(() => {
        zeros([5]).add(1);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(memory()).toEqual(before);
  });
  it('views keep their storage alive until the last one is disposed', () => {
    const before = memory().numBytes;
    const x = zeros([4, 4]);
    const v = x.transpose(0, 1);
    x.dispose();
    expect(Array.from(v.dataSync()).length).toBe(16);
    v.dispose();
    expect(memory().numBytes).toBe(before);
  });
  it('a 200-step training loop holds the same tensors and bytes after every step', () => {
    // A two-layer net trained with plain SGD; parameters are updated with assign().
    const w1 = randn([8, 16], { std: 0.3 }).setRequiresGrad().keep();
    const w2 = randn([16, 1], { std: 0.3 }).setRequiresGrad().keep();
    const x = randn([32, 8]).keep();
    const y = randn([32, 1]).keep();
    const seen: { numTensors: number; numBytes: number }[] = [];
    for (let step = 0; step < 200; step++) {
      const loss = tidy(() => {
        const l = x.matmul(w1).gelu().matmul(w2).sub(y).square().mean();
        l.backward();
        for (const p of [w1, w2]) {
          p.assign(p.sub(p.grad!.mul(0.05)));
          p.grad!.dispose();
          p.grad = null;
        }
        return l;
      });
      loss.dispose();
      seen.push(memory());
    }
    for (const m of seen.slice(1)) expect(m).toEqual(seen[0]);
    expect(w1.grad).toBeNull();
  });
  it('tidyForward hands the forward pass to backward, which frees it as it goes: same gradients, lower peak', () => {
    // activations ([128, 128] per layer) as large as the weights' gradients: without the hand-over both are
    // alive at the end
    const ws = Array.from({ length: 12 }, () => randn([128, 128], { std: 0.09 }).setRequiresGrad().keep());
    const x = randn([128, 128]).keep();
    const deep = () =>
      ws
        .reduce((h, w) => h.matmul(w), x)
        .square()
        .mean();
    const run = (handOver: boolean) => {
      const before = memory();
      resetHeapPeak();
      let intermediate: Tensor | null = null;
      tidy(() => {
        const loss = handOver
          ? tidyForward(() => {
              const h = deep();
              intermediate = h;
              return h.sqrt(); // the returned tensor stays readable after backward
            })
          : deep().sqrt();
        loss.backward();
        expect(loss.dataSync()[0]).toBeGreaterThan(0);
        if (handOver) expect(() => intermediate!.dataSync()).toThrow(/after dispose/);
      });
      const peak = heapStats().peakInUseBytes - heapStats().inUseBytes;
      const grads = ws.map((w) => Array.from(w.grad!.dataSync()));
      for (const w of ws) {
        w.grad!.dispose();
        w.grad = null;
      }
      expect(memory()).toEqual(before);
      return { peak, grads };
    };
    const [plain, handed] = [run(false), run(true)];
    expect(handed.grads).toEqual(plain.grads);
    expect(handed.peak).toBeLessThan(0.7 * plain.peak);
  });
  it("tidyForward disposes at once what backward will not read (a frozen part's activations)", () => {
    const frozen = randn([8, 8]).keep(); // no gradient: the part before the trainable weight
    const w = randn([8, 8]).setRequiresGrad().keep();
    const x = randn([4, 8]).keep();
    const seen: Tensor[] = [];
    tidy(() => {
      const loss = tidyForward(() => {
        const hidden = x.matmul(frozen); // outside the graph, read by nothing in it
        const features = hidden.tanh(); // outside the graph, but the trainable matmul reads it
        seen.push(hidden, features);
        return features.matmul(w).sum();
      });
      expect(seen.map((t) => t.disposed)).toEqual([true, false]);
      loss.backward();
    });
    expect(w.grad!.shape).toEqual([8, 8]);
    for (const t of [frozen, w, x, w.grad!]) t.dispose();
    w.grad = null;
  });
});
