// Sampling helpers (nanoVLM's models/utils.py). They run on the host over one
// row of logits per sequence: generation reads the last position's logits
// back anyway, and sorting 49k floats is cheap next to a decoder pass.

import type { Generator } from '../tensor/index.ts';

/**
 * nanoVLM's top_k_top_p_filtering on one row of logits, in place: keeps the
 * top_k largest, then the smallest set of tokens whose probabilities add up
 * to more than top_p (always at least the most likely one); the rest -> -inf.
 */
export function topKTopPFiltering(logits: Float32Array, topK = 0, topP = 1.0): Float32Array {
  const k = Math.min(topK, logits.length);
  if (k > 0) {
    const kth = Float32Array.from(logits).sort().reverse()[k - 1];
    for (let i = 0; i < logits.length; i++) if (logits[i] < kth) logits[i] = -Infinity;
  }
  if (topP < 1.0) {
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
    const max = logits[order[0]];
    const exps = order.map((i) => Math.exp(logits[i] - max));
    const total = exps.reduce((s, e) => s + e, 0);
    // remove a token once the probability mass before it already exceeds top_p
    let cumulative = 0;
    order.forEach((idx, rank) => {
      const before = cumulative;
      cumulative += exps[rank] / total;
      if (rank > 0 && before > topP) logits[idx] = -Infinity;
    });
  }
  return logits;
}

/** softmax(logits / temperature), then one seeded draw. */
export function sampleToken(logits: Float32Array, temperature: number, generator: Generator): number {
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l / temperature);
  const probs = Array.from(logits, (l) => Math.exp(l / temperature - max));
  const total = probs.reduce((s, p) => s + p, 0);
  let u = generator.random() * total;
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i];
    if (u < 0 && probs[i] > 0) return i;
  }
  // rounding left u just above zero: take the last token that had any mass
  for (let i = probs.length - 1; i >= 0; i--) if (probs[i] > 0) return i;
  return 0;
}
