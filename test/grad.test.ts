// Every differentiable op against central finite differences (float64, CPU),
// including broadcasting, non-contiguous views and reductions over each dim.

import { describe, expect, it } from 'vitest';
import {
  Generator,
  cat,
  conv2dPatch,
  crossEntropy,
  layerNorm,
  rmsNorm,
  rope,
  scaledDotProductAttention,
  stack,
  tensor,
  where,
  type Tensor,
} from '../tensor/index.ts';
import { gradCheck, randomValues } from './helpers.ts';

describe('gradients of unary ops', () => {
  const ops: [string, (x: Tensor) => Tensor, number, number][] = [
    ['neg', (x) => x.neg(), -2, 2],
    ['abs', (x) => x.abs(), -2, 2],
    ['exp', (x) => x.exp(), -2, 2],
    ['log', (x) => x.log(), 0.2, 3],
    ['sqrt', (x) => x.sqrt(), 0.2, 3],
    ['rsqrt', (x) => x.rsqrt(), 0.2, 3],
    ['sin', (x) => x.sin(), -3, 3],
    ['cos', (x) => x.cos(), -3, 3],
    ['tanh', (x) => x.tanh(), -2, 2],
    ['sigmoid', (x) => x.sigmoid(), -4, 4],
    ['relu', (x) => x.relu(), -2, 2],
    ['silu', (x) => x.silu(), -4, 4],
    ['gelu', (x) => x.gelu(), -4, 4],
    ['square', (x) => x.square(), -2, 2],
    ['reciprocal', (x) => x.reciprocal(), 0.5, 2],
  ];
  for (const [name, f, lo, hi] of ops) {
    it(name, () => gradCheck(f, [[3, 4]], { lo, hi }));
  }
  it('on a non-contiguous (transposed) input', () => gradCheck((x) => x.transpose(0, 1).tanh(), [[3, 5]]));
});

describe('gradients of binary ops with broadcasting', () => {
  const ops: [string, (a: Tensor, b: Tensor) => Tensor][] = [
    ['add', (a, b) => a.add(b)],
    ['sub', (a, b) => a.sub(b)],
    ['mul', (a, b) => a.mul(b)],
    ['div', (a, b) => a.div(b.abs().add(0.5))],
    ['pow', (a, b) => a.abs().add(0.5).pow(b)],
    ['maximum', (a, b) => a.maximum(b)],
    ['minimum', (a, b) => a.minimum(b)],
  ];
  const shapes: [number[], number[]][] = [
    [
      [2, 3],
      [2, 3],
    ],
    [[2, 3], [3]],
    [
      [4, 1, 3],
      [2, 1],
    ],
    [[3], []],
  ];
  for (const [name, f] of ops) {
    for (const [sa, sb] of shapes)
      it(`${name} ${JSON.stringify(sa)} ${JSON.stringify(sb)}`, () => gradCheck(f, [sa, sb]));
  }
  it('with a scalar operand', () => gradCheck((a) => a.mul(3).add(1).div(2).sub(0.5).pow(2), [[2, 2]]));
  it('where', () => gradCheck((a, b) => where(a.gt(0), a, b.mul(2)), [[3, 4], [4]]));
  it('maskedFill', () => gradCheck((a) => a.maskedFill(a.lt(0), 0).mul(a), [[3, 4]]));
});

describe('gradients of reductions', () => {
  for (const dim of [0, 1, 2, -1]) {
    it(`sum over dim ${dim}`, () => gradCheck((x) => x.sum(dim), [[2, 3, 4]]));
    it(`sum over dim ${dim} keepdim`, () => gradCheck((x) => x.sum(dim, true).mul(x), [[2, 3, 4]]));
    it(`mean over dim ${dim}`, () => gradCheck((x) => x.mean(dim), [[2, 3, 4]]));
    it(`max over dim ${dim}`, () => gradCheck((x) => x.max(dim), [[2, 3, 4]]));
    it(`softmax over dim ${dim}`, () => gradCheck((x) => x.softmax(dim), [[2, 3, 4]]));
    it(`logSoftmax over dim ${dim}`, () => gradCheck((x) => x.logSoftmax(dim), [[2, 3, 4]]));
  }
  it('sum over several dims and over everything', () => {
    gradCheck((x) => x.sum([0, 2]), [[2, 3, 4]]);
    gradCheck((x) => x.sum(), [[2, 3, 4]]);
    gradCheck((x) => x.mean([1, 2], true), [[2, 3, 4]]);
    // adjacent dims of a contiguous tensor are summed as one; of a permuted one, one at a time
    gradCheck((x) => x.sum([0, 1]), [[2, 3, 4]]);
    gradCheck((x) => x.sum([2, 1, 0], true), [[2, 3, 4]]);
    gradCheck((x) => x.permute(1, 0, 2).sum([0, 1]), [[2, 3, 4]]);
  });
  it('max over everything', () => gradCheck((x) => x.max(), [[3, 4]]));
});

describe('gradients of matmul', () => {
  it('2-d', () =>
    gradCheck(
      (a, b) => a.matmul(b),
      [
        [3, 4],
        [4, 5],
      ],
    ));
  it('batched', () =>
    gradCheck(
      (a, b) => a.matmul(b),
      [
        [2, 3, 4],
        [2, 4, 5],
      ],
    ));
  it('broadcast batch dims', () =>
    gradCheck(
      (a, b) => a.matmul(b),
      [
        [2, 1, 3, 4],
        [3, 4, 2],
      ],
    ));
  it('transposed operands', () =>
    gradCheck(
      (a, b) => a.transpose(0, 1).matmul(b.transpose(0, 1)),
      [
        [4, 3],
        [5, 4],
      ],
    ));
  it('vector operands', () => gradCheck((a, b) => a.matmul(b), [[4], [4, 3]]));
});

describe('gradients of views and joins', () => {
  it('reshape', () => gradCheck((x) => x.reshape([4, 3]).mul(x.reshape([4, 3])), [[2, 6]]));
  it('reshape of a transposed view (copies)', () =>
    gradCheck((x) => x.transpose(0, 1).reshape([2, 6]).sin(), [[3, 4]]));
  it('permute', () => gradCheck((x) => x.permute(2, 0, 1), [[2, 3, 4]]));
  it('expand', () => gradCheck((x) => x.expand([3, 2, 4]), [[2, 1]]));
  it('slice with step', () => gradCheck((x) => x.slice(1, 1, 5, 2), [[3, 6]]));
  it('slice with negative bounds', () => gradCheck((x) => x.slice(0, -2), [[4, 3]]));
  it('narrow', () => gradCheck((x) => x.narrow(1, 1, 2), [[3, 4]]));
  it('cat', () =>
    gradCheck(
      (a, b) => cat([a, b, a], 1),
      [
        [2, 3],
        [2, 1],
      ],
    ));
  it('stack', () =>
    gradCheck(
      (a, b) => stack([a, b], 1),
      [
        [2, 3],
        [2, 3],
      ],
    ));
  it('split and chunk', () => {
    gradCheck(
      (x) => {
        const [a, b] = x.split([1, 3], 1);
        return a.mul(b.sum(1, true));
      },
      [[2, 4]],
    );
    gradCheck(
      (x) => {
        const [a, b] = x.chunk(2, 0);
        return a.mul(b);
      },
      [[4, 3]],
    );
  });
  it('split, one op with several outputs: unused pieces, pieces read twice, split again, x read beside it', () => {
    // the middle piece is unused (its part of the gradient is zeros); the last is read by two ops
    gradCheck(
      (x) => {
        const [a, , c] = x.split(2, 1);
        return a.mul(c).add(c.exp());
      },
      [[3, 6]],
    );
    // a piece split again, x itself read beside its pieces, and a piece that is the whole of x
    gradCheck(
      (x) => {
        const [a, b] = x.split([4, 2], 1);
        const [a1, a2] = a.split(1, 0).slice(1);
        const bRow = b.sum(1, true).slice(0, 2, 3); // [1, 1]
        return a2
          .mul(bRow)
          .sum(1)
          .add(x.sum())
          .add(a1.sum().mul(x.split(6, 1)[0].sum()));
      },
      [[3, 6]],
    );
  });
  it('repeatInterleave', () => gradCheck((x) => x.repeatInterleave(3, 1), [[2, 2, 3]]));
  it('contiguous of a permuted view', () => gradCheck((x) => x.permute(1, 0).contiguous(), [[3, 4]]));
  it('unsqueeze, squeeze, flatten', () => gradCheck((x) => x.unsqueeze(1).flatten(0, 1).squeeze(), [[3, 4]]));
});

describe('gradients of nn ops', () => {
  it('embedding with repeated ids (scatter-add backward)', () => {
    const ids = tensor(new Int32Array([1, 3, 1, 0, 1]), { shape: [5] });
    gradCheck((t) => t.embedding(ids), [[4, 3]]);
  });
  it('layerNorm', () => gradCheck((x, w, b) => layerNorm(x, w, b, 1e-5), [[3, 5], [5], [5]]));
  it('rmsNorm', () => gradCheck((x, w) => rmsNorm(x, w, 1e-5), [[3, 5], [5]]));
  it('layerNorm and rmsNorm of a permuted 3-d input', () => {
    gradCheck((x, w, b) => layerNorm(x.permute(1, 0, 2), w, b, 1e-5), [[2, 3, 4], [4], [4]]);
    gradCheck((x, w) => rmsNorm(x.permute(1, 0, 2), w, 1e-5), [[2, 3, 4], [4]]);
  });
  it('rope, with broadcast tables and a permuted input (cos and sin are constants)', () => {
    const table = (seed: number) => tensor(randomValues(4 * 6, seed, -1, 1), { shape: [4, 6], dtype: 'float64' });
    const [cos, sin] = [table(11), table(12)];
    gradCheck((x) => rope(x, cos, sin), [[2, 3, 4, 6]]);
    gradCheck((x) => rope(x.permute(0, 2, 1, 3), cos, sin), [[2, 4, 3, 6]]);
  });
  it('crossEntropy with ignored targets', () => {
    const targets = tensor(new Int32Array([2, -100, 0, 4]), { shape: [2, 2] });
    gradCheck((x) => crossEntropy(x, targets), [[2, 2, 5]], { lo: -3, hi: 3 });
  });
  it('conv2d with stride == kernel', () =>
    gradCheck((x, w, b) => conv2dPatch(x, w, b), [[2, 3, 4, 4], [5, 3, 2, 2], [5]]));
  it('conv2d with a ragged edge', () =>
    gradCheck((x, w, b) => conv2dPatch(x, w, b), [[1, 2, 5, 3], [3, 2, 2, 2], [3]]));
  it('dropout (same mask for every evaluation)', () =>
    gradCheck((x) => x.dropout(0.3, true, new Generator(7)), [[4, 5]]));
  it('sort and topk values', () => {
    gradCheck((x) => x.sort(-1, true).values, [[3, 5]]);
    gradCheck((x) => x.topk(2, 0).values, [[4, 3]]);
  });
  it('a tensor used twice gets the sum of both gradients', () => gradCheck((x) => x.mul(x).add(x), [[3]]));
});

describe('gradients of fused attention', () => {
  const sdpa =
    (opts: Parameters<typeof scaledDotProductAttention>[3] = {}) =>
    (q: Tensor, k: Tensor, v: Tensor) =>
      scaledDotProductAttention(q, k, v, opts);
  it('bidirectional (the ViT)', () =>
    gradCheck(sdpa(), [
      [2, 2, 3, 4],
      [2, 2, 3, 4],
      [2, 2, 3, 4],
    ]));
  it('causal, fewer queries than keys (a KV cache), grouped heads', () => {
    gradCheck(sdpa({ isCausal: true }), [
      [1, 4, 2, 3],
      [1, 2, 5, 3],
      [1, 2, 5, 3],
    ]);
  });
  it('with a broadcast key-padding mask and a custom scale', () => {
    // (B, 1, 1, Tk)
    const attnMask = tensor([0, -1e9, 0, 0.5, 0, 0, -1e9, 0], { dtype: 'float64' }).reshape([2, 1, 1, 4]);
    gradCheck(sdpa({ attnMask, isCausal: true, scale: 0.7 }), [
      [2, 2, 4, 3],
      [2, 1, 4, 3],
      [2, 1, 4, 3],
    ]);
  });
  it('with dropout (the same seed gives the same mask)', () => {
    gradCheck(
      (q, k, v) => scaledDotProductAttention(q, k, v, { dropoutP: 0.3, generator: new Generator(9) }),
      [
        [1, 2, 3, 2],
        [1, 2, 4, 2],
        [1, 2, 4, 2],
      ],
    );
  });
  it('through non-contiguous (head-transposed) inputs', () => {
    const heads = (x: Tensor) => x.reshape([2, 3, 2, 2]).transpose(1, 2); // (B, T, H*D) -> (B, H, T, D)
    gradCheck(
      (q, k, v) => scaledDotProductAttention(heads(q), heads(k), heads(v), { isCausal: true }).transpose(1, 2),
      [
        [2, 3, 4],
        [2, 3, 4],
        [2, 3, 4],
      ],
    );
  });
});

describe('backward() frees the graph it walked', () => {
  it('a second backward through it is an error naming what was freed, not a silent zero gradient', () => {
    const x = tensor([1, 2, 3], { requiresGrad: true });
    const y = x.mul(2);
    const loss = y.sum();
    loss.backward();
    expect(() => loss.backward()).toThrow(
      'backward: this tensor was differentiated by an earlier backward(), which freed its graph: run the forward again',
    );
    // another loss over y: before this check, y counted as a leaf and x got nothing
    expect(() => y.mul(y).sum().backward()).toThrow(
      'backward: the mul output [3] it depends on was differentiated by an earlier backward(), which freed its graph',
    );
    expect(Array.from(x.grad!.dataSync())).toEqual([2, 2, 2]); // untouched by the refused calls
    x.mul(2).sum().backward(); // the forward again: fine, and the gradients add up
    expect(Array.from(x.grad!.dataSync())).toEqual([4, 4, 4]);
  });
});
