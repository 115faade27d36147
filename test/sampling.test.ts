// The sampling helpers of generation (vlm/utils.ts): nanoVLM's top_k_top_p_filtering
// and the seeded draw, on small rows whose answer PyTorch gave, and on whole
// vocabularies against a plain full-sort restatement of the same rule.

import { describe, expect, it } from 'vitest';
import { Generator } from '../tensor/index.ts';
import { sampleToken, topKTopPFiltering } from '../vlm/utils.ts';

const kept = (logits: Float32Array) => [...logits.keys()].filter((i) => logits[i] > -Infinity);

/** nanoVLM's rule written out with full sorts (torch.topk, then sort + softmax + cumsum, shifted by one). */
function reference(row: Float32Array, topK: number, topP: number): Float32Array {
  const out = row.slice();
  const k = Math.min(topK, out.length);
  if (k > 0) {
    const kth = Float32Array.from(out).sort().reverse()[k - 1];
    out.forEach((l, i) => l < kth && (out[i] = -Infinity));
  }
  if (topP < 1) {
    const order = [...out.keys()].sort((a, b) => out[b] - out[a] || a - b);
    const exps = order.map((i) => Math.exp(out[i] - out[order[0]]));
    const total = exps.reduce((s, e) => s + e, 0);
    let cumulative = 0;
    order.forEach((i, rank) => {
      if (rank > 0 && cumulative > topP) out[i] = -Infinity;
      cumulative += exps[rank] / total;
    });
  }
  return out;
}

describe('topKTopPFiltering', () => {
  it("keeps the tokens nanoVLM's top_k_top_p_filtering keeps (PyTorch 2.13's answers)", () => {
    const row = [2.0, -1.0, 0.5, 3.0, 3.0, -4.0, 1.5, 0.0, 2.5, -0.5, 1.0, 0.25]; // a tie at the top
    const cases: [number, number, number[]][] = [
      [5, 1.0, [0, 3, 4, 6, 8]],
      [0, 0.8, [0, 3, 4, 8]],
      [5, 0.8, [3, 4, 8]], // top_p over the 5 kept, renormalised
      [3, 0.5, [3, 4]],
      [50, 0.9, [0, 3, 4, 6, 8, 10]], // top_k past the row's length keeps everything
      [2, 0.999, [3, 4]],
    ];
    for (const [k, p, want] of cases) {
      expect(kept(topKTopPFiltering(Float32Array.from(row), k, p)), `top_k ${k}, top_p ${p}`).toEqual(want);
    }
  });

  it('matches the full-sort rule on whole vocabularies: ties, removed tokens, every k', () => {
    const g = new Generator(3);
    for (const [n, k, p, levels] of [
      [49152, 50, 0.9, 0], // SmolLM2's vocabulary, the defaults of generate.ts
      [49152, 50, 0.9, 64], // few distinct values: ties at the k-th
      [5000, 1, 0.5, 0],
      [5000, 0, 0.95, 16], // top_p alone sorts everything
      [300, 300, 1.0, 8],
      [1, 5, 0.3, 0],
    ]) {
      const row = Float32Array.from({ length: n }, () => {
        const x = g.random() * 16 - 8;
        return levels ? Math.round(x * (levels / 16)) : x;
      });
      for (let i = 0; i < n; i += 7) if (g.random() < 0.3) row[i] = -Infinity; // already removed
      const got = topKTopPFiltering(row.slice(), k, p);
      expect(Array.from(got), `n ${n}, top_k ${k}, top_p ${p}, ${levels} levels`).toEqual(
        Array.from(reference(row, k, p)),
      );
    }
  });
});

describe('sampleToken', () => {
  it('draws from softmax(logits / temperature), never a removed token, the same for the same seed', () => {
    const logits = Float32Array.from([1, -Infinity, 0, 2, -Infinity]);
    const temperature = 0.5;
    const weights = Array.from(logits, (l) => Math.exp(l / temperature));
    const total = weights.reduce((a, b) => a + b, 0);
    const n = 20_000;
    const counts = new Array(logits.length).fill(0);
    const g = new Generator(7);
    const draws = Array.from({ length: n }, () => sampleToken(logits, temperature, g));
    for (const d of draws) counts[d]++;
    expect(counts[1] + counts[4], 'removed tokens').toBe(0);
    // each frequency within 4 standard deviations of its probability (at most 0.0035 here)
    for (const i of [0, 2, 3]) expect(Math.abs(counts[i] / n - weights[i] / total), `token ${i}`).toBeLessThan(0.014);
    const again = new Generator(7);
    expect(draws.slice(0, 100)).toEqual(Array.from({ length: 100 }, () => sampleToken(logits, temperature, again)));
  });
});
