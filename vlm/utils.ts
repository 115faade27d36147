// Sampling helpers (nanoVLM's models/utils.py). They run on the host over one
// row of logits per sequence: generation reads the last position's logits
// back anyway. A row is SmolLM2's whole vocabulary (49,152 logits), so they
// never sort all of it: sorting it twice per token took 14 ms, a quarter of a
// 222M decoding step on the CPU and several GPU ones.

import type { Generator } from '../tensor/index.ts';

/**
 * nanoVLM's top_k_top_p_filtering on one row of logits, in place: keeps the
 * top_k largest, then the smallest set of tokens whose probabilities add up
 * to more than top_p (always at least the most likely one); the rest -> -inf.
 */
export function topKTopPFiltering(logits: Float32Array, topK = 0, topP = 1.0): Float32Array {
  const k = Math.min(topK, logits.length);
  if (k > 0) {
    const kth = kthLargest(logits, k);
    for (let i = 0; i < logits.length; i++) if (logits[i] < kth) logits[i] = -Infinity;
  }
  if (topP < 1.0) {
    // only the tokens still in the running are sorted (after top_k, about k of them): a removed one adds
    // nothing to the probability mass and stays removed
    const order: number[] = [];
    for (let i = 0; i < logits.length; i++) if (logits[i] > -Infinity) order.push(i);
    order.sort((a, b) => logits[b] - logits[a] || a - b);
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

/**
 * The k-th largest of xs, repeats counted (torch.topk(xs, k).values[-1]): one
 * pass keeping the k largest seen so far, in order. Most of a vocabulary is
 * below the k-th largest seen, one comparison each.
 */
function kthLargest(xs: Float32Array, k: number): number {
  const top = new Float32Array(k).fill(-Infinity); // descending
  for (const x of xs) {
    if (!(x > top[k - 1])) continue;
    let i = k - 1;
    for (; i > 0 && top[i - 1] < x; i--) top[i] = top[i - 1]; // shift the smaller ones down a place
    top[i] = x;
  }
  return top[k - 1];
}

/** softmax(logits / temperature), then one seeded draw. */
export function sampleToken(logits: Float32Array, temperature: number, generator: Generator): number {
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l / temperature);
  const probs = new Float64Array(logits.length); // a typed array and plain loops: a vocabulary's length
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    probs[i] = Math.exp(logits[i] / temperature - max);
    total += probs[i];
  }
  let u = generator.random() * total;
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i];
    if (u < 0 && probs[i] > 0) return i;
  }
  // rounding left u just above zero: take the last token that had any mass
  for (let i = probs.length - 1; i >= 0; i--) if (probs[i] > 0) return i;
  return 0;
}
