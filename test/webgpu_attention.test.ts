// The flash-style attention kernels on WebGPU against the CPU backend's
// plain loops (which test/ops.test.ts checks against unfused attention, and
// test/grad.test.ts against finite differences), forward and backward, on
// sizes that cross every tile edge: query rows of a workgroup spanning two
// heads of a GQA group, key tiles and key workgroups cut mid-way, causal
// queries that are the last T of Tk positions, and the decoding path (one
// query, keys split into chunks, one chunk wholly masked). Head dims 20, 24,
// 40 and 64: each compiles its own kernels, so the cases share them.
//
// No row here has every key it sees masked by a finite value: there the
// CPU's exp(s - lse) loses log(n) in lse's magnitude and sums the values the
// GPU averages (softmax's answer); nanoVLM's padded query rows are such rows,
// and nothing reads them.

import { it } from 'vitest';
import { Generator, scaledDotProductAttention, type Tensor } from '../tensor/index.ts';
import { compareDevices, describeWebGPU, type InputSpec } from './webgpu_helpers.ts';

const NEG = -3.4028234663852886e38; // what the model's padding mask holds

/** A mask input of `shape` (no gradient): values from `value(n)` for the flat index n. */
function mask(shape: number[], value: (n: number, g: Generator) => number): InputSpec {
  const g = new Generator(shape.reduce((a, b) => a + b, 0));
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, values: Float32Array.from({ length: n }, (_, i) => value(i, g)), grad: false };
}

/** Random additive mask values: some -inf, some the padding value, the rest in [-2, 2]; key 0 is never masked. */
const randomMask = (Tk: number) => (n: number, g: Generator) => {
  const r = g.random();
  if (n % Tk === 0) return r * 4 - 2;
  return r < 0.15 ? -Infinity : r < 0.3 ? NEG : r * 4 - 2;
};

interface Case {
  name: string;
  q: number[];
  kv: number[];
  causal?: boolean;
  p?: number;
  mask?: InputSpec;
  /** q, k, v are given as (B, T, H, D) and transposed to (B, H, T, D), as the model does. */
  headsLast?: boolean;
  /** Absolute tolerance of the gradients (see expectAllClose). */
  gradAtol?: number;
}

const cases: Case[] = [
  {
    name: 'bidirectional (the ViT), head dim 24, 3 images of 17 tokens, q, k, v strided as the model passes them',
    q: [3, 3, 17, 24],
    kv: [3, 3, 17, 24],
    headsLast: true,
  },
  {
    name: 'GQA 4:1, causal, head dim 64, 67 tokens: rows of one workgroup span two heads, tiles cut mid-way; dropout',
    q: [1, 4, 67, 64],
    kv: [1, 1, 67, 64],
    causal: true,
    p: 0.1,
    mask: mask([1, 1, 1, 67], (n) => (n >= 20 && n < 25 ? NEG : 0)), // padding (keys every query sees come first)
  },
  {
    name: 'GQA 4:1, causal, head dim 20: 3 queries that are the last of 9 positions (a KV-cache chunk), a random mask',
    q: [2, 8, 3, 20],
    kv: [2, 2, 9, 20],
    causal: true,
    mask: mask([2, 8, 3, 9], randomMask(9)),
  },
  {
    name: 'decoding (one query) over 130 keys in 3 chunks, one chunk wholly masked, head dim 40, GQA 2:1',
    q: [3, 4, 1, 40],
    kv: [3, 2, 130, 40],
    causal: true,
    mask: mask([3, 1, 1, 130], (n) => (n >= 130 + 64 && n < 130 + 128 ? -Infinity : n % 7 === 3 ? NEG : 0)),
  },
  {
    name: 'one query, one key (decoding at the first position)',
    q: [1, 1, 1, 40],
    kv: [1, 1, 1, 40],
    // the one key takes all the weight whatever its score, so the gradient of q is zero up to the rounding
    // of dO.v - dO.o (each ~1 in size): a zero tensor has no scale of its own to be relative to
    gradAtol: 1e-6,
  },
  { name: 'decoding with dropout', q: [1, 2, 1, 40], kv: [1, 2, 70, 40], p: 0.3 },
];

describeWebGPU('flash attention on webgpu against the cpu', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const heads = (x: Tensor) => (c.headsLast ? x.transpose(1, 2) : x);
      const shape = (s: number[]) => (c.headsLast ? [s[0], s[2], s[1], s[3]] : s);
      const sdpa = (q: Tensor, k: Tensor, v: Tensor, m?: Tensor) =>
        scaledDotProductAttention(heads(q), heads(k), heads(v), {
          attnMask: m ?? null,
          isCausal: c.causal,
          dropoutP: c.p,
          generator: new Generator(5),
        });
      const inputs: (InputSpec | number[])[] = [shape(c.q), shape(c.kv), shape(c.kv)];
      if (c.mask) inputs.push(c.mask);
      await compareDevices(sdpa, inputs, { rtol: 1e-4, gradAtol: c.gradAtol });
    });
  }
});
