// Forward values against hand-computed results and independent reference
// loops, plus edge cases and error messages.

import { describe, expect, it } from 'vitest';
import {
  Generator,
  arange,
  cat,
  conv2dPatch,
  crossEntropy,
  full,
  layerNorm,
  ones,
  rand,
  randn,
  rmsNorm,
  rope,
  scaledDotProductAttention,
  stack,
  tensor,
  tril,
  where,
  zeros,
  type Tensor,
} from '../tensor/index.ts';
import { dropoutKeeps } from '../tensor/random.ts';
import { expectClose, randomValues } from './helpers.ts';

const t = (v: number[][] | number[]) => tensor(v);

describe('elementwise', () => {
  it('computes the unary ops', () => {
    const x = t([-1, 0, 0.5, 2]);
    expectClose(x.neg().dataSync(), [1, -0, -0.5, -2]);
    expectClose(x.relu().dataSync(), [0, 0, 0.5, 2]);
    expectClose(x.exp().dataSync(), [Math.exp(-1), 1, Math.exp(0.5), Math.exp(2)]);
    expectClose(x.sigmoid().dataSync(), [1 / (1 + Math.E), 0.5, 1 / (1 + Math.exp(-0.5)), 1 / (1 + Math.exp(-2))]);
    expectClose(x.silu().dataSync(), [-1 / (1 + Math.E), 0, 0.5 / (1 + Math.exp(-0.5)), 2 / (1 + Math.exp(-2))]);
    // GELU tanh approximation values from torch.nn.functional.gelu(x, approximate='tanh')
    expectClose(x.gelu().dataSync(), [-0.15880801, 0, 0.34571401, 1.95459769]);
  });
  it('broadcasts like NumPy', () => {
    const a = t([[1], [2], [3]]); // [3,1]
    const b = t([10, 20]); // [2]
    expect(a.add(b).shape).toEqual([3, 2]);
    expect(Array.from(a.add(b).dataSync())).toEqual([11, 21, 12, 22, 13, 23]);
    expect(Array.from(a.mul(2).dataSync())).toEqual([2, 4, 6]);
  });
  it('names the op and both shapes when shapes do not broadcast', () => {
    expect(() => t([[1, 2, 3]]).add(t([1, 2]))).toThrow('add: shapes [1,3] and [2] cannot be broadcast together');
    expect(() => zeros([2, 3]).matmul(zeros([4, 5]))).toThrow('matmul: cannot multiply [2,3] by [4,5]');
  });
  it('compares and selects', () => {
    const x = t([1, 2, 3]);
    expect(Array.from(x.gt(1.5).dataSync())).toEqual([0, 1, 1]);
    expect(Array.from(where(x.lt(2), x, x.neg()).dataSync())).toEqual([1, -2, -3]);
    const picked = where(tensor(new Int32Array([1, 0, 1])), 2, 0.5); // two numbers: float32, beside cond
    expect([picked.dtype, Array.from(picked.dataSync())]).toEqual(['float32', [2, 0.5, 2]]);
    expect(Array.from(x.maskedFill(x.eq(2), -Infinity).dataSync())).toEqual([1, -Infinity, 3]);
    expect(Array.from(t([0, -2.5, Infinity, -Infinity, NaN, 3e38]).isfinite().dataSync())).toEqual([1, 1, 0, 0, 0, 1]);
  });
  it('promotes int to float like PyTorch', () => {
    const ids = tensor(new Int32Array([1, 2, 3]));
    expect(ids.add(1).dtype).toBe('int32');
    expect(ids.mul(0.5).dtype).toBe('float32');
    expect(Array.from(ids.mul(0.5).dataSync())).toEqual([0.5, 1, 1.5]);
  });
});

describe('reductions', () => {
  const x = t([
    [1, 5, 3],
    [4, 2, 6],
  ]);
  it('sum, mean, max, argmax over each dim with keepdim', () => {
    expect(Array.from(x.sum(0).dataSync())).toEqual([5, 7, 9]);
    expect(Array.from(x.sum(-1).dataSync())).toEqual([9, 12]);
    expect(x.sum(1, true).shape).toEqual([2, 1]);
    expect(Array.from(x.mean(1).dataSync())).toEqual([3, 4]);
    expect(Array.from(x.max(0).dataSync())).toEqual([4, 5, 6]);
    expect(Array.from(x.argmax(1).dataSync())).toEqual([1, 2]);
    expect(x.argmax(1, true).shape).toEqual([2, 1]);
    expect(x.sum().dataSync()[0]).toBe(21);
    expect(x.max().dataSync()[0]).toBe(6);
  });
  it('handles size-0 and size-1 dims', () => {
    expect(Array.from(zeros([0, 3]).sum(0).dataSync())).toEqual([0, 0, 0]);
    expect(zeros([2, 0]).sum(1).shape).toEqual([2]);
    expect(Array.from(ones([3, 1]).sum(1).dataSync())).toEqual([1, 1, 1]);
    expect(() => zeros([2, 0]).max(1)).toThrow(/empty dim/);
  });
  it('softmax and logSoftmax do not overflow on large inputs', () => {
    const big = t([
      [1000, 1001, 1002],
      [-1000, -1000, -1000],
    ]);
    const e = [Math.exp(-2), Math.exp(-1), 1];
    const s = e[0] + e[1] + e[2];
    expectClose(big.softmax(-1).dataSync(), [e[0] / s, e[1] / s, 1 / s, 1 / 3, 1 / 3, 1 / 3]);
    expectClose(big.logSoftmax(-1).dataSync(), [
      -2 - Math.log(s),
      -1 - Math.log(s),
      -Math.log(s),
      -Math.log(3),
      -Math.log(3),
      -Math.log(3),
    ]);
    expectClose(big.softmax(0).dataSync(), [1, 1, 1, 0, 0, 0]);
  });
});

describe('matmul', () => {
  const ref = (a: Float64Array, b: Float64Array, M: number, K: number, N: number) => {
    const c = new Float64Array(M * N);
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) c[i * N + j] += a[i * K + k] * b[k * N + j];
    return c;
  };
  it('matches a reference loop, batched with broadcast', () => {
    const [B, M, K, N] = [3, 5, 7, 4];
    const a = randomValues(B * M * K, 1);
    const b = randomValues(K * N, 2);
    const out = tensor(a, { shape: [B, M, K] }).matmul(tensor(b, { shape: [K, N] }));
    expect(out.shape).toEqual([B, M, N]);
    const expected = [0, 1, 2].flatMap((i) => Array.from(ref(a.subarray(i * M * K, (i + 1) * M * K), b, M, K, N)));
    expectClose(out.dataSync(), expected, 1e-5, 1e-5);
  });
  it('multiplies transposed views without copying them', () => {
    const a = randomValues(12, 3);
    const x = tensor(a, { shape: [4, 3] });
    const xt = x.transpose(0, 1); // [3, 4] view
    expect(xt.storage).toBe(x.storage);
    expectClose(xt.matmul(x).dataSync(), ref(Float64Array.from(xt.contiguous().dataSync()), a, 3, 4, 3), 1e-5, 1e-5);
  });
});

describe('views', () => {
  const x = arange(24).reshape([2, 3, 4]);
  it('share storage and read the right elements', () => {
    const p = x.permute(2, 0, 1);
    expect(p.shape).toEqual([4, 2, 3]);
    expect(p.storage).toBe(x.storage);
    expect(Array.from(p.contiguous().dataSync().slice(0, 6))).toEqual([0, 4, 8, 12, 16, 20]);
    expect(Array.from(x.slice(2, 1, 4, 2).dataSync())).toEqual([1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]);
    expect(Array.from(x.slice(1, -1).reshape([-1]).dataSync())).toEqual([8, 9, 10, 11, 20, 21, 22, 23]);
    expect(x.transpose(0, 2).reshape([4, 6]).shape).toEqual([4, 6]);
    expect(Array.from(t([1, 2]).expand([2, 2]).dataSync())).toEqual([1, 2, 1, 2]);
  });
  it('reshape copies only when the layout requires it', () => {
    expect(x.reshape([6, 4]).storage).toBe(x.storage);
    expect(x.transpose(1, 2).reshape([2, 12]).storage).not.toBe(x.storage);
    expect(() => x.reshape([5, 5])).toThrow('reshape: cannot reshape [2,3,4] (24 elements) into [5,5]');
  });
  it('cat, stack, split, chunk, repeatInterleave', () => {
    const a = t([[1, 2]]);
    const b = t([
      [3, 4],
      [5, 6],
    ]);
    expect(Array.from(cat([a, b], 0).dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(cat([b, b], 1).dataSync())).toEqual([3, 4, 3, 4, 5, 6, 5, 6]);
    expect(stack([a, a], 0).shape).toEqual([2, 1, 2]);
    expect(() => cat([a, t([[1, 2, 3]])], 0)).toThrow(/cat: cannot join \[1,2\]/);
    const [p, q] = arange(5).split([2, 3]);
    expect(Array.from(q.dataSync())).toEqual([2, 3, 4]);
    expect(p.shape).toEqual([2]);
    expect(
      arange(5)
        .chunk(2)
        .map((c) => c.size),
    ).toEqual([3, 2]);
    expect(Array.from(t([1, 2]).repeatInterleave(2, 0).dataSync())).toEqual([1, 1, 2, 2]);
  });
});

describe('nn ops', () => {
  it("rope gives the bits of nanoVLM's x * cos + rotate_half(x) * sin, and its backward those of its gradient", () => {
    const g = new Generator(3);
    // (B, H, T, hd) viewed from (B, T, H, hd) as the attention does; tables (T, hd) broadcast
    const x = randn([2, 5, 3, 8], { generator: g }).setRequiresGrad();
    const [cos, sin] = [randn([5, 8], { generator: g }), randn([5, 8], { generator: g })];
    const rotateHalf = (v: Tensor) => {
      const [v1, v2] = v.chunk(2, -1);
      return cat([v2.neg(), v1], -1);
    };
    const q = () => x.transpose(1, 2); // a graph of its own for each backward
    const w = randn([2, 3, 5, 8], { generator: g });
    const fused = rope(q(), cos, sin);
    const composite = q().mul(cos).add(rotateHalf(q()).mul(sin));
    expect(Array.from(fused.dataSync())).toEqual(Array.from(composite.dataSync()));
    fused.mul(w).sum().backward();
    const dFused = Array.from(x.grad!.dataSync());
    x.grad = null;
    composite.mul(w).sum().backward();
    expect(dFused).toEqual(Array.from(x.grad!.dataSync()));
    expect(() => rope(randn([2, 4]), cos, sin)).toThrow(/rope: shapes \[2,4\] and \[5,8\] cannot be broadcast/);
    expect(() => rope(randn([8]), cos, sin)).toThrow(/rope: cos \[5,8\] does not broadcast to x \[8\]/);
    expect(() => rope(randn([5, 7]), randn([7]), randn([7]))).toThrow(/must be even/);
    expect(() => rope(q(), cos.setRequiresGrad(), sin)).toThrow(/cos is a table of positions/);
  });
  it('layerNorm and rmsNorm match their definitions', () => {
    const v = [1, 2, 4, -1];
    const x = tensor([v]);
    const mean = 1.5;
    const variance = v.reduce((s, a) => s + (a - mean) ** 2, 0) / 4;
    const w = t([1, 2, 3, 4]);
    const b = t([0, 1, 0, 1]);
    expectClose(
      layerNorm(x, w, b, 1e-5).dataSync(),
      v.map((a, i) => ((a - mean) / Math.sqrt(variance + 1e-5)) * [1, 2, 3, 4][i] + [0, 1, 0, 1][i]),
    );
    const rms = Math.sqrt(v.reduce((s, a) => s + a * a, 0) / 4 + 1e-5);
    expectClose(
      rmsNorm(x, w, 1e-5).dataSync(),
      v.map((a, i) => (a / rms) * [1, 2, 3, 4][i]),
    );
  });
  it('crossEntropy averages over counted targets and ignores -100', () => {
    const logits = t([
      [1, 2, 3],
      [1, 1, 1],
      [0, 0, 10],
    ]);
    const targets = tensor(new Int32Array([2, -100, 0]));
    const l0 = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3;
    const l2 = Math.log(2 + Math.exp(10)) - 0;
    expectClose(crossEntropy(logits, targets).dataSync(), [(l0 + l2) / 2]);
    // every target ignored: 0, not NaN
    expect(crossEntropy(logits, tensor(new Int32Array([-100, -100, -100]))).dataSync()[0]).toBe(0);
    expect(() => crossEntropy(logits, tensor(new Int32Array([5, 0, 0])))).toThrow(
      'crossEntropy: target 5 is out of range for 3 classes',
    );
  });
  it('embedding gathers rows and rejects bad ids', () => {
    const table = arange(6, undefined, 1, { dtype: 'float32' }).reshape([3, 2]);
    expect(Array.from(table.embedding(tensor(new Int32Array([2, 0]))).dataSync())).toEqual([4, 5, 0, 1]);
    expect(() => table.embedding(tensor(new Int32Array([3])))).toThrow(
      'embedding: index 3 is out of range for a table of 3 rows',
    );
  });
  it('conv2d with stride == kernel matches a direct convolution (a ragged edge is ignored, as in PyTorch)', () => {
    for (const [H, W] of [
      [4, 6],
      [5, 7],
    ]) {
      const [B, C, O, P] = [2, 3, 5, 2];
      const [h, w] = [Math.floor(H / P), Math.floor(W / P)];
      const xv = randomValues(B * C * H * W, 4);
      const wv = randomValues(O * C * P * P, 5);
      const out = conv2dPatch(tensor(xv, { shape: [B, C, H, W] }), tensor(wv, { shape: [O, C, P, P] }), null);
      expect(out.shape).toEqual([B, O, h, w]);
      const expected: number[] = [];
      for (let b = 0; b < B; b++)
        for (let o = 0; o < O; o++)
          for (let i = 0; i < h; i++)
            for (let j = 0; j < w; j++) {
              let s = 0;
              for (let c = 0; c < C; c++)
                for (let di = 0; di < P; di++)
                  for (let dj = 0; dj < P; dj++) {
                    s += xv[((b * C + c) * H + i * P + di) * W + j * P + dj] * wv[((o * C + c) * P + di) * P + dj];
                  }
              expected.push(s);
            }
      expectClose(out.dataSync(), expected, 1e-5, 1e-5);
    }
  });
  it('dropout keeps the expectation and is the identity in eval mode', () => {
    const x = ones([10000]);
    const y = x.dropout(0.25, true, new Generator(1)).dataSync();
    const kept = Array.from(y).filter((v) => v !== 0);
    expect(kept.every((v) => Math.abs(v - 4 / 3) < 1e-6)).toBe(true);
    expect(Math.abs(kept.length / 10000 - 0.75)).toBeLessThan(0.02);
    expect(x.dropout(0.25, false)).toBe(x);
  });
  it('tril', () => {
    expect(Array.from(tril(ones([3, 3], { dtype: 'int32' })).dataSync())).toEqual([1, 0, 0, 1, 1, 0, 1, 1, 1]);
    expect(Array.from(tril(full([2, 3], 2)).dataSync())).toEqual([2, 0, 0, 2, 2, 0]);
  });
});

describe('sorting and sampling', () => {
  it('sort and topk', () => {
    const x = t([
      [3, 1, 2],
      [0, 5, 5],
    ]);
    const s = x.sort(-1);
    expect(Array.from(s.values.dataSync())).toEqual([1, 2, 3, 0, 5, 5]);
    expect(Array.from(s.indices.dataSync())).toEqual([1, 2, 0, 0, 1, 2]);
    const k = x.topk(2);
    expect(Array.from(k.values.dataSync())).toEqual([3, 2, 5, 5]);
    expect(Array.from(k.indices.dataSync())).toEqual([0, 2, 1, 2]);
  });
  it('rand and randn are reproducible and have the right moments', () => {
    const a = Array.from(randn([20000], { generator: new Generator(5) }).dataSync());
    const b = randn([20000], { generator: new Generator(5) }).dataSync();
    expect(a.slice(0, 10)).toEqual(Array.from(b.slice(0, 10)));
    const m = a.reduce((s, v) => s + v, 0) / a.length;
    const v = a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length;
    expect(Math.abs(m)).toBeLessThan(0.03);
    expect(Math.abs(v - 1)).toBeLessThan(0.05);
    const u = rand([1000], { generator: new Generator(1) }).dataSync();
    expect(Array.from(u).every((x) => x >= 0 && x < 1)).toBe(true);
  });
});

describe('reading values', () => {
  it('data, item and toArray', async () => {
    const x = t([
      [1, 2],
      [3, 4],
    ]);
    expect(Array.from(await x.data())).toEqual([1, 2, 3, 4]);
    expect(await x.sum().item()).toBe(10);
    expect(await x.transpose(0, 1).toArray()).toEqual([
      [1, 3],
      [2, 4],
    ]);
    await expect(x.item()).rejects.toThrow('item: the tensor has 4 elements, expected 1');
  });
  it('refuses a tensor used after dispose', () => {
    const x = t([1, 2]);
    x.dispose();
    expect(() => x.add(1)).toThrow('add: tensor [2] was used after dispose()');
  });
});

describe('fused attention', () => {
  /** The unfused computation: scores, causal -inf, mask, softmax, dropout, weighted sum; heads repeated for GQA. */
  function reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: { mask?: Tensor; causal?: boolean; p?: number; seed?: number },
  ): Tensor {
    const [B, H, T, D] = q.shape;
    const [Hkv, Tk] = [k.shape[1], k.shape[2]];
    const kr = k.repeatInterleave(H / Hkv, 1);
    const vr = v.repeatInterleave(H / Hkv, 1);
    let s = q.matmul(kr.transpose(2, 3)).mul(1 / Math.sqrt(D));
    if (o.causal)
      s = s.maskedFill(
        tensor(
          Int32Array.from({ length: T * Tk }, (_, n) => (n % Tk > Math.floor(n / Tk) + Tk - T ? 1 : 0)),
          { shape: [T, Tk] },
        ),
        -Infinity,
      );
    if (o.mask) s = s.add(o.mask);
    let pr = s.softmax(-1);
    if (o.p) {
      const threshold = Math.floor(o.p * 2 ** 32);
      const keep = Float32Array.from({ length: B * H * T * Tk }, (_, n) =>
        dropoutKeeps(n, o.seed!, threshold) ? 1 / (1 - o.p!) : 0,
      );
      pr = pr.mul(tensor(keep, { shape: [B, H, T, Tk] }));
    }
    return pr.matmul(vr);
  }
  const cases: [string, number[], number[], { causal?: boolean; mask?: boolean; p?: number }][] = [
    ['one query, one key', [1, 1, 1, 3], [1, 1, 1, 3], {}],
    ['the ViT: bidirectional, head dim 24', [2, 3, 17, 24], [2, 3, 17, 24], {}],
    ['GQA 4:1, causal, head dim 20, padding mask', [2, 8, 5, 20], [2, 2, 5, 20], { causal: true, mask: true }],
    ['a KV-cache step: 1 query over 9 keys', [3, 4, 1, 6], [3, 2, 9, 6], { causal: true, mask: true }],
    ['with dropout', [2, 2, 4, 5], [2, 1, 6, 5], { causal: true, p: 0.25 }],
  ];
  for (const [name, qs, ks, o] of cases) {
    it(name, () => {
      const q = randn(qs, { generator: new Generator(1) });
      const [k, v] = [randn(ks, { generator: new Generator(2) }), randn(ks, { generator: new Generator(3) })];
      const maskValues = Float32Array.from({ length: qs[0] * ks[2] }, (_, n) =>
        n % 3 === 1 ? -3.4028234663852886e38 : 0,
      );
      const mask = o.mask ? tensor(maskValues, { shape: [qs[0], 1, 1, ks[2]] }) : undefined;
      const seed = Math.floor(new Generator(4).random() * 2 ** 32); // what the op draws from the same generator
      const out = scaledDotProductAttention(q, k, v, {
        attnMask: mask,
        isCausal: o.causal,
        dropoutP: o.p,
        generator: new Generator(4),
      });
      expect(out.shape).toEqual(qs);
      expectClose(out.dataSync(), reference(q, k, v, { ...o, mask, seed }).dataSync(), 1e-5, 1e-6);
    });
  }
  it('says what is wrong with the shapes', () => {
    const q = zeros([1, 3, 2, 4]);
    expect(() => scaledDotProductAttention(q, zeros([1, 2, 2, 4]), zeros([1, 2, 2, 4]))).toThrow(
      'attention: 3 query heads cannot share 2 key/value heads (q [1,3,2,4], k [1,2,2,4], v [1,2,2,4])',
    );
    expect(() => scaledDotProductAttention(q, zeros([1, 3, 2, 5]), zeros([1, 3, 2, 5]))).toThrow(
      'attention: expected q (B, H, T, D) and k, v (B, Hkv, Tk, D), got q [1,3,2,4], k [1,3,2,5], v [1,3,2,5]',
    );
    expect(() => scaledDotProductAttention(q, zeros([1, 3, 1, 4]), zeros([1, 3, 1, 4]), { isCausal: true })).toThrow(
      'attention: causal attention needs at least as many keys as queries',
    );
  });
});
