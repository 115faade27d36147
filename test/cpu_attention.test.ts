// The WebAssembly attention kernels (tensor/cpu/wasm/attention.ts) against
// the TypeScript reference loops of the CPU backend, forward and backward, on
// sizes that are not multiples of the register tile or of a block (1, 3, 17,
// 67 rows; more than one block of queries and of keys), head dims 6 to 64,
// grouped heads, causal attention with fewer queries than keys, masks
// broadcast by strides, dropout, and head-transposed inputs; on one thread
// and on two. Twice: with the WebAssembly GEMM's block products, and (where
// OpenBLAS is installed) with OpenBLAS's, whose blocks are larger.

import { afterAll, describe, expect, it } from 'vitest';
import { Generator, randn, scaledDotProductAttention, tensor, type Tensor } from '../tensor/index.ts';
import { setCpuThreads } from '../tensor/cpu/threads.ts';
import { blas } from '../tensor/cpu/blas.ts';
import { setCpuKernels, wasmStats } from '../tensor/cpu/wasm/kernels.ts';
import { expectClose } from './helpers.ts';

afterAll(() => {
  setCpuKernels('wasm');
  setCpuThreads(2);
});

interface Case {
  q: number[]; // (B, H, T, D)
  k: number[]; // (B, Hkv, Tk, D)
  causal?: boolean;
  /** 'keys': a (B, 1, 1, Tk) padding mask; 'full': a (B, H, T, Tk) one, read through a transposed view. */
  mask?: 'keys' | 'full';
  p?: number;
  /** q, k and v as the model makes them: (B, T, H, D) memory seen as (B, H, T, D). */
  transposed?: boolean;
  /** The loss is out.sum(): the gradient reaching attention is one value broadcast (stride 0). */
  sum?: boolean;
  /** Every position's key and value the same, expanded from one (row stride 0: operands cblas cannot take). */
  sameKeys?: boolean;
}

/** The kernels of a pass: the TypeScript reference, WebAssembly, WebAssembly with OpenBLAS's block products. */
type Kernels = 'ts' | 'wasm' | 'blas';

/** out, dq, dk and dv of one forward and backward pass with the given kernels. */
function pass(kernels: Kernels, c: Case): Float32Array[] {
  if (kernels === 'ts') setCpuKernels('ts');
  else setCpuKernels('wasm', { blas: kernels === 'blas' });
  const [B, H, T] = c.q;
  const Tk = c.k[2];
  const leaves: Tensor[] = [];
  const make = (shape: number[], seed: number) => {
    const [b, h, t, d] = shape;
    const leaf = randn(c.transposed ? [b, t, h, d] : shape, { generator: new Generator(seed), requiresGrad: true });
    leaves.push(leaf);
    return c.transposed ? leaf.transpose(1, 2) : leaf;
  };
  const keys = (seed: number) => (c.sameKeys ? make([c.k[0], c.k[1], 1, c.k[3]], seed).expand(c.k) : make(c.k, seed));
  const [q, k, v] = [make(c.q, 1), keys(2), keys(3)];
  let mask: Tensor | undefined;
  if (c.mask === 'keys') {
    const padded = Float32Array.from({ length: B * Tk }, (_, n) => (n % 3 === 1 ? -3.4028234663852886e38 : 0));
    mask = tensor(padded, { shape: [B, 1, 1, Tk] });
  } else if (c.mask === 'full') {
    mask = randn([B, H, Tk, T], { generator: new Generator(5) }).transpose(2, 3); // key stride T, not 1
  }
  const opts = { attnMask: mask, isCausal: c.causal, dropoutP: c.p, generator: new Generator(4) };
  const out = scaledDotProductAttention(q, k, v, opts);
  if (c.sum) out.sum().backward();
  else
    out
      .mul(randn(out.shape, { generator: new Generator(6) }))
      .sum()
      .backward();
  return [out.dataSync() as Float32Array, ...leaves.map((x) => x.grad!.dataSync() as Float32Array)];
}

/** wasm against ts: values within atol + rtol * |ts|. */
function agree(c: Case, kernels: Kernels, rtol = 2e-5, atol = 2e-5): void {
  const ref = pass('ts', c);
  const got = pass(kernels, c);
  ['out', 'dq', 'dk', 'dv'].forEach((name, i) => {
    try {
      expectClose(got[i], ref[i], rtol, atol);
    } catch (e) {
      throw new Error(`${name}: ${(e as Error).message}`);
    }
  });
}

const cases: [string, Case][] = [
  ['one query, one key, head dim 3', { q: [1, 1, 1, 3], k: [1, 1, 1, 3] }],
  ['the ViT: bidirectional, 17 patches, head dim 24', { q: [2, 3, 17, 24], k: [2, 3, 17, 24] }],
  ['67 rows, head dim 64, head-transposed inputs', { q: [1, 2, 67, 64], k: [1, 2, 67, 64], transposed: true }],
  ['GQA 4:1, causal, head dim 20, key padding', { q: [2, 8, 3, 20], k: [2, 2, 3, 20], causal: true, mask: 'keys' }],
  [
    'a KV-cache step: 1 query over 9 keys, head dim 6',
    { q: [3, 4, 1, 6], k: [3, 2, 9, 6], causal: true, mask: 'keys' },
  ],
  [
    'a KV-cache step of the 222M decoder: GQA 3:1, head dim 64, 145 keys, a full mask, head-transposed inputs',
    { q: [2, 9, 1, 64], k: [2, 3, 145, 64], causal: true, mask: 'full', transposed: true },
  ],
  [
    '3 queries over 17 keys, causal, a full mask with key stride T',
    { q: [2, 2, 3, 40], k: [2, 1, 17, 40], causal: true, mask: 'full' },
  ],
  [
    'several blocks of queries and keys (130 x 300), causal, head dim 10',
    { q: [1, 2, 130, 10], k: [1, 1, 300, 10], causal: true },
  ],
  [
    'several blocks of queries and keys at OpenBLAS block sizes (260 x 600), causal, GQA, key padding',
    { q: [1, 2, 260, 8], k: [1, 1, 600, 8], causal: true, mask: 'keys' },
  ],
  ['dropout, GQA, causal', { q: [2, 2, 17, 5], k: [2, 1, 19, 5], causal: true, p: 0.25 }],
  [
    'dropout, GQA, causal, a head large enough for OpenBLAS (40 x 44 x 24)',
    { q: [2, 2, 40, 24], k: [2, 1, 44, 24], causal: true, p: 0.25 },
  ],
  ['dropout over several key blocks', { q: [1, 1, 7, 8], k: [1, 1, 600, 8], p: 0.5, mask: 'keys' }],
  ['a broadcast gradient (the loss is a plain sum)', { q: [1, 3, 17, 24], k: [1, 3, 17, 24], sum: true }],
];

describe('wasm attention against the TypeScript reference, one thread', () => {
  for (const [name, c] of cases) {
    it(name, () => {
      setCpuThreads(1);
      agree(c, 'wasm');
    });
  }
});

describe.skipIf(!blas)('wasm attention with OpenBLAS block products against the TypeScript reference', () => {
  for (const [name, c] of cases) {
    it(name, () => {
      setCpuThreads(1);
      agree(c, 'blas');
    });
  }
  it('makes the block products with OpenBLAS', () => {
    setCpuThreads(1);
    const before = wasmStats.blasBlockProducts;
    agree({ q: [1, 2, 40, 24], k: [1, 2, 40, 24] }, 'blas');
    expect(wasmStats.blasBlockProducts - before).toBe(2 * 2 + 5 * 2); // per head: 2 forward, 5 backward
  });
  it('leaves tiny heads (under 2^15 multiply-adds a product) to the WebAssembly GEMM', () => {
    setCpuThreads(1);
    const before = wasmStats.blasBlockProducts;
    agree({ q: [1, 2, 17, 24], k: [1, 2, 17, 24] }, 'blas');
    expect(wasmStats.blasBlockProducts - before).toBe(0);
  });
  it('leaves block products cblas cannot describe (keys with row stride 0) to the WebAssembly GEMM', () => {
    setCpuThreads(1);
    const before = wasmStats.blasBlockProducts;
    agree({ q: [2, 2, 40, 24], k: [2, 1, 40, 24], sameKeys: true }, 'blas');
    // the products that read K or V go to gemm_block; dV += P^T dO and dK += dS^T Q to OpenBLAS, per query head
    expect(wasmStats.blasBlockProducts - before).toBe(2 * 2 * 2);
  });
  it('two threads: the tasks split across our threads, each calling OpenBLAS', () => {
    setCpuThreads(2);
    const before = wasmStats.parallelCalls;
    agree({ q: [2, 4, 67, 64], k: [2, 2, 67, 64], causal: true, mask: 'keys', transposed: true }, 'blas');
    expect(wasmStats.parallelCalls - before).toBeGreaterThanOrEqual(2); // forward and backward
  });
});

describe('wasm attention, two threads', () => {
  it('splits a large call across threads, same results', () => {
    setCpuThreads(2);
    const before = wasmStats.parallelCalls;
    agree({ q: [2, 4, 67, 64], k: [2, 2, 67, 64], causal: true, mask: 'keys', transposed: true }, 'wasm');
    expect(wasmStats.parallelCalls - before).toBeGreaterThanOrEqual(2); // forward and backward
  });
});
