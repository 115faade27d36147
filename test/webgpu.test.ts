// Every op on WebGPU against the CPU backend, forward and backward, on random
// inputs of several shapes, including non-contiguous views (transposed,
// sliced with a step, expanded) and broadcasting. Runs in CI on Mesa's
// llvmpipe through Dawn's OpenGL ES backend; without any adapter the suite
// fails (set NANOVLM_SKIP_WEBGPU=1 to skip it explicitly).

import { expect, it } from 'vitest';
import {
  Generator,
  cat,
  conv2dPatch,
  copyInto,
  crossEntropy,
  full,
  layerNorm,
  ones,
  rmsNorm,
  rope,
  stack,
  tensor,
  tril,
  where,
  zeros,
  randn,
  type Tensor,
} from '../tensor/index.ts';
import { webgpuBackend } from '../tensor/webgpu/device.ts';
import { compareDevices, describeWebGPU, expectAllClose, expectRelClose } from './webgpu_helpers.ts';

const gpu = (t: Tensor) => t.to('webgpu');

describeWebGPU('webgpu unary ops', () => {
  const ops: [string, (x: Tensor) => Tensor, number, number][] = [
    ['neg', (x) => x.neg(), -2, 2],
    ['abs', (x) => x.abs(), -2, 2],
    ['exp', (x) => x.exp(), -4, 4],
    ['log', (x) => x.log(), 0.01, 5],
    ['sqrt', (x) => x.sqrt(), 0.01, 5],
    ['rsqrt', (x) => x.rsqrt(), 0.2, 5],
    ['sin', (x) => x.sin(), -10, 10],
    ['cos', (x) => x.cos(), -10, 10],
    ['tanh', (x) => x.tanh(), -4, 4],
    ['sigmoid', (x) => x.sigmoid(), -6, 6],
    ['relu', (x) => x.relu(), -2, 2],
    ['silu', (x) => x.silu(), -6, 6],
    ['gelu', (x) => x.gelu(), -6, 6],
    ['square', (x) => x.square(), -2, 2],
    ['reciprocal', (x) => x.reciprocal(), 0.5, 2],
  ];
  for (const [name, f, lo, hi] of ops) {
    it(name, async () => {
      await compareDevices(f, [{ shape: [3, 5], lo, hi }]);
      // a transposed, a sliced-with-step and a broadcast input
      await compareDevices((x) => f(x.transpose(0, 1)), [{ shape: [4, 3], lo, hi }]);
      await compareDevices((x) => f(x.slice(1, 1, 7, 2)), [{ shape: [2, 8], lo, hi }]);
      await compareDevices((x) => f(x.expand([3, 2, 4])), [{ shape: [2, 1], lo, hi }]);
    });
  }
  it('is accurate where GPU builtins are not: tanh and log near 0 and 1, exp over its range', async () => {
    const x = tensor([1e-6, -3e-5, 0.001, 0.29, 0.31, 1, 20, -20]);
    expectAllClose(await (await gpu(x)).tanh().data(), await x.tanh().data(), 1e-6);
    const y = tensor([1 + 1e-6, 1 - 3e-5, 1.001, 0.5, 2, 1e-20, 1e20]);
    expectAllClose(await (await gpu(y)).log().data(), await y.log().data(), 1e-6);
    // relative error per element: a few float32 ulp from -87 to 88
    const e = tensor(Float32Array.from({ length: 400 }, (_, i) => -87 + (175 * i) / 399));
    expectRelClose(await (await gpu(e)).exp().data(), await e.exp().data(), 5e-7, 'exp');
  });
  it('sin and cos within 2 ulp of 1 for every float32, however large (exact range reduction)', async () => {
    const g = new Generator(5);
    const values = [
      ...Array.from({ length: 300 }, () => (g.random() * 2 - 1) * 10),
      ...Array.from({ length: 300 }, () => (g.random() * 2 - 1) * 1e4), // RoPE angles reach thousands
      ...Array.from({ length: 300 }, () => (g.random() * 2 - 1) * 3e38 * g.random() ** 30),
      0.7853982,
      0.7853981,
      1.5707964,
      3.1415927,
      6.2831855,
      127.5,
      -300,
      1e30,
      -1e30,
      3.4028235e38,
      1e-30,
    ];
    const x = tensor(values);
    const gx = await gpu(x);
    expectAllClose(await gx.sin().data(), await x.sin().data(), 1.2e-7, 'sin');
    expectAllClose(await gx.cos().data(), await x.cos().data(), 1.2e-7, 'cos');
  });
  it('int32 neg, abs and relu stay int32', async () => {
    await compareDevices((x) => [x.neg(), x.abs(), x.relu()], [{ shape: [7], dtype: 'int32', lo: -5, hi: 5 }]);
  });
  it('special values match the CPU (Inf, NaN, division by zero)', async () => {
    const v = [0, -0, 1, -1, Infinity, -Infinity, NaN, 1e-30, 88, -100];
    const ops = (x: Tensor) => [
      x.exp(),
      x.log(),
      x.sqrt(),
      x.sigmoid(),
      x.relu(),
      x.tanh(),
      x.reciprocal(),
      x.rsqrt(),
      x.sin(),
      x.cos(),
      x.abs(),
      x.neg(),
    ];
    await compareDevices(ops, [{ shape: [10], values: v, grad: false }]);
    expect(Array.from(await (await gpu(tensor([NaN, NaN]))).silu().data()).every(Number.isNaN)).toBe(true);
    expect(Array.from(await (await gpu(tensor([NaN, NaN]))).gelu().data()).every(Number.isNaN)).toBe(true);
  });
  it('special values in div and pow match the CPU (Math.pow: 1^Inf is NaN)', async () => {
    const s = [0, -0, 1, -1, 2, -2, 0.5, -3, 1e30, Infinity, -Infinity, NaN];
    const [a, b] = [tensor(s, { shape: [s.length, 1] }), tensor(s, { shape: [1, s.length] })];
    const [ga, gb] = [await gpu(a), await gpu(b)];
    expectRelClose(await ga.div(gb).data(), await a.div(b).data(), 1e-6, 'div');
    expectRelClose(await ga.pow(gb).data(), await a.pow(b).data(), 1e-6, 'pow');
    // a divisor beyond 2^126, where the WGSL builtin may be inaccurate (quotients stay above the denormals)
    const big = tensor([1e30, -3e30, 5, -2, Infinity, NaN, 0]);
    expectRelClose(await (await gpu(big)).div(1e38).data(), await big.div(1e38).data(), 1e-6, 'div by 1e38');
  });
});

describeWebGPU('webgpu binary ops with broadcasting', () => {
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
    it(name, async () => {
      for (const [sa, sb] of shapes) await compareDevices(f, [sa, sb]);
      await compareDevices(
        (a, b) => f(a.transpose(0, 1), b.slice(0, 0, 6, 2)),
        [
          [3, 2],
          [3, 3],
        ],
      );
    });
  }
  it('with scalar operands, including integer powers of negative numbers', async () => {
    await compareDevices((a) => a.mul(3).add(1).div(2).sub(0.5).pow(2), [[2, 2]]);
    await compareDevices(
      (a) => [a.pow(3), a.pow(-2), a.pow(0.5), a.pow(0)],
      [{ shape: [6], values: [-2, -0.5, 0, 0.5, 2, 3], grad: false }],
    );
  });
  it('a number in an op becomes a constant made once: no fill the next time, and at most 256 are kept', async () => {
    const b = webgpuBackend()!;
    const x = await tensor([1, 2, 3]).to('webgpu');
    const fills = (fn: () => Tensor) => {
      const before = b.counters().dispatchesByOp.fill ?? 0;
      const y = fn();
      const n = (b.counters().dispatchesByOp.fill ?? 0) - before;
      return { y, n };
    };
    const first = fills(() => x.mul(0.37).add(-0));
    const second = fills(() => x.mul(0.37).add(-0));
    expect([first.n, second.n]).toEqual([2, 0]);
    expect(Array.from(await second.y.data())).toEqual(Array.from(await first.y.data()));
    // 0 and -0 are two constants: 1 / -0 is -Infinity
    expect(
      Array.from(
        await tensor([1])
          .to('webgpu')
          .then((o) => o.div(-0).data()),
      ),
    ).toEqual([-Infinity]);
    // many different numbers (a value computed per step, say) do not pile up
    const live = b.liveBytes();
    for (let i = 0; i < 600; i++) x.add(i + 0.5).dispose();
    expect(b.liveBytes() - live).toBeLessThanOrEqual(256 * 4 * 64); // 256 constants, however the pool rounds them
    [x, first.y, second.y].forEach((t) => t.dispose());
  });
  it('maximum and minimum: NaN wins, ties split the gradient', async () => {
    await compareDevices(
      (a, b) => [a.maximum(b), a.minimum(b)],
      [
        { shape: [5], values: [1, NaN, 3, 2, NaN], grad: false },
        { shape: [5], values: [NaN, 2, 3, 1, NaN], grad: false },
      ],
    );
    await compareDevices(
      (a, b) => a.maximum(b),
      [
        { shape: [3], values: [1, 2, 3] },
        { shape: [3], values: [1, 0, 3] },
      ],
    );
  });
  it("comparisons give 1/0 in the inputs' dtype, NaN compares false", async () => {
    const a = { shape: [6], values: [1, 2, NaN, -0, Infinity, 3], grad: false };
    const b = { shape: [6], values: [1, 3, NaN, 0, Infinity, 2], grad: false };
    await compareDevices((x, y) => [x.eq(y), x.ne(y), x.lt(y), x.le(y), x.gt(y), x.ge(y)], [a, b]);
    await compareDevices(
      (x, y) => [x.eq(y), x.ne(y), x.lt(y), x.le(y), x.gt(y), x.ge(y)],
      [
        { shape: [3, 4], dtype: 'int32', lo: -2, hi: 2 },
        { shape: [4], dtype: 'int32', lo: -2, hi: 2 },
      ],
    );
  });
  it('int32 arithmetic: wrap-around, truncating division (x / 0 = 0), integer powers', async () => {
    const a = { shape: [8], dtype: 'int32' as const, values: [7, -7, 7, -7, 5, 0, 2147483647, -3] };
    const b = { shape: [8], dtype: 'int32' as const, values: [2, 2, -2, -2, 0, 0, 1, 3] };
    await compareDevices((x, y) => [x.add(y), x.sub(y), x.mul(y), x.div(y), x.maximum(y), x.minimum(y)], [a, b]);
    await compareDevices(
      (x, y) => x.pow(y),
      [
        { shape: [6], dtype: 'int32', values: [2, -3, 1, -1, 0, 5] },
        { shape: [6], dtype: 'int32', values: [10, 3, -4, -3, -1, 0] },
      ],
    );
    await compareDevices((x) => [x.add(1), x.mul(0.5)], [{ shape: [4], dtype: 'int32', lo: -9, hi: 9 }]);
  });
  it('where and maskedFill broadcast all operands', async () => {
    await compareDevices((a, b) => where(a.gt(0), a, b.mul(2)), [[3, 4], [4]]);
    await compareDevices((a) => a.maskedFill(a.lt(0), 0).mul(a), [[3, 4]]);
    await compareDevices(
      (a) => a.maskedFill(tril(ones([3, 3], { dtype: 'int32', device: a.device })).eq(0), -Infinity).softmax(-1),
      [[2, 3, 3]],
    );
    await compareDevices(
      (c, a, b) => where(c, a, b),
      [{ shape: [2, 1, 3], dtype: 'int32', lo: 0, hi: 1 }, [4, 1], [2, 4, 3]],
    );
  });
});

describeWebGPU('webgpu reductions', () => {
  for (const dim of [0, 1, 2, -1]) {
    it(`sum, mean, max, argmax, softmax, logSoftmax over dim ${dim}`, async () => {
      await compareDevices((x) => [x.sum(dim), x.sum(dim, true).mul(x), x.mean(dim), x.max(dim)], [[2, 3, 4]], {
        rtol: 1e-4,
      });
      await compareDevices((x) => [x.softmax(dim), x.logSoftmax(dim)], [[2, 3, 4]], { rtol: 1e-4 });
      await compareDevices((x) => x.argmax(dim), [[2, 3, 4]]);
    });
  }
  it('over several dims, everything, and permuted views', async () => {
    await compareDevices((x) => [x.sum([0, 2]), x.sum(), x.mean([1, 2], true), x.max()], [[2, 3, 4]], { rtol: 1e-4 });
    // a bias gradient's sum over batch and tokens: adjacent dims of a contiguous tensor, one dispatch
    await compareDevices((x) => [x.sum([0, 1]), x.permute(1, 0, 2).sum([0, 1])], [[4, 70, 6]], { rtol: 1e-4 });
    const b = webgpuBackend()!;
    const x = await gpu(randn([4, 70, 6]));
    const before = b.counters().dispatches;
    x.sum([0, 1]).dispose();
    expect(b.counters().dispatches - before).toBe(1);
    x.dispose();
    await compareDevices(
      (x) => [x.permute(2, 0, 1).sum(1), x.transpose(0, 2).max(0), x.slice(2, 0, 4, 3).softmax(-1)],
      [[2, 3, 4]],
      { rtol: 1e-4 },
    );
  });
  it('long axes use the workgroup reduction', async () => {
    await compareDevices((x) => [x.sum(1), x.max(1), x.sum(0), x.softmax(-1), x.logSoftmax(0)], [[5, 700]], {
      rtol: 1e-4,
    });
    await compareDevices((x) => [x.argmax(1), x.argmax(0)], [[5, 700]]);
    await compareDevices((x) => x.transpose(0, 1).sum(-1), [[300, 3]], { rtol: 1e-4 });
  });
  it('very long axes are cut into chunks (sum and max), strided too, with NaN in a late chunk', async () => {
    // 3 chunks and a partial one; a strided axis; max sees NaN in the last chunk
    await compareDevices((x) => [x.sum(1), x.max(1), x.transpose(0, 1).sum(0)], [[2, 3 * 4096 + 5]], { rtol: 1e-4 });
    const late = Array.from({ length: 9000 }, (_, i) => (i === 8999 ? NaN : i % 11));
    await compareDevices((x) => x.max(0), [{ shape: [9000], values: late, grad: false }]);
    // a whole bucket of gradients' worth (gradient clipping sums one): one workgroup got this wrong on llvmpipe
    const n = (4 << 20) + 3;
    const g = new Generator(7);
    const host = Float32Array.from({ length: n }, () => g.random());
    const want = host.reduce((a, v) => a + v, 0); // float64
    const x = tensor(host, { device: 'webgpu' });
    expectRelClose([await x.sum().item()], [want], 1e-5, 'sum of 4 Mi + 3 elements');
    x.dispose();
  });
  it('max/argmax: NaN wins, first index on ties (short and long axes)', async () => {
    const ties = [1, 3, 3, 0, 2, 2, NaN, 5, 5, 5, NaN, NaN];
    await compareDevices((x) => [x.max(1), x.argmax(1)], [{ shape: [4, 3], values: ties, grad: false }]);
    const long = Array.from({ length: 2 * 300 }, (_, i) => (i % 300 === 17 || i % 300 === 250 ? 9 : i % 7));
    long[420] = NaN;
    long[500] = NaN;
    await compareDevices((x) => [x.max(1), x.argmax(1)], [{ shape: [2, 300], values: long, grad: false }]);
    await compareDevices(
      (x) => [x.max(0), x.argmax(0)],
      [{ shape: [4, 3], dtype: 'int32', values: [1, 3, 3, 3, 2, 3, 0, 5, 5, 3, 5, 1] }],
    );
  });
  it('softmax of large and masked rows does not overflow', async () => {
    await compareDevices(
      (x) => [x.softmax(-1), x.logSoftmax(-1)],
      [{ shape: [2, 3], values: [1000, 1001, 1002, -1000, -Infinity, -1000], grad: false }],
    );
  });
  it('empty reductions: sum over a size-0 dim is 0, max throws', async () => {
    const z = await gpu(zeros([0, 3]));
    expect(Array.from(await z.sum(0).data())).toEqual([0, 0, 0]);
    expect(() => zeros([2, 0], { device: 'webgpu' }).max(1)).toThrow(/empty dim/);
  });
});

describeWebGPU('webgpu matmul', () => {
  const opts = { rtol: 1e-4 };
  it('2-d, batched, broadcast batch dims, vectors', async () => {
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [3, 4],
        [4, 5],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [2, 3, 4],
        [2, 4, 5],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [2, 1, 3, 4],
        [3, 4, 2],
      ],
      opts,
    );
    await compareDevices((a, b) => a.matmul(b), [[4], [4, 3]], opts);
    await compareDevices((a, b) => a.matmul(b), [[2, 5, 4], [4]], opts);
  });
  it('transposed and sliced operands, read in place', async () => {
    await compareDevices(
      (a, b) => a.transpose(0, 1).matmul(b.transpose(0, 1)),
      [
        [4, 3],
        [5, 4],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.slice(1, 0, 10, 2).matmul(b.slice(0, 1, 6)),
      [
        [3, 10],
        [6, 4],
      ],
      opts,
    );
    // attention: q @ k^T per head on permuted views
    await compareDevices(
      (q, k) => q.permute(0, 2, 1, 3).matmul(k.permute(0, 2, 3, 1)),
      [
        [2, 5, 3, 4],
        [2, 5, 3, 4],
      ],
      opts,
    );
  });
  it('sizes that are not multiples of the tiles, both tilings', async () => {
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [70, 45],
        [45, 90],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [3, 33, 17],
        [17, 70],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.transpose(-1, -2).matmul(b),
      [
        [2, 65, 33],
        [2, 65, 40],
      ],
      opts,
    );
    await compareDevices(
      (a, b) => a.matmul(b),
      [
        [1, 129],
        [129, 1],
      ],
      opts,
    );
  });
  it('K = 0 gives zeros; int32 is refused', async () => {
    const out = (await gpu(zeros([2, 0]))).matmul(await gpu(zeros([0, 3])));
    expect(Array.from(await out.data())).toEqual([0, 0, 0, 0, 0, 0]);
    const i = await gpu(tensor(new Int32Array([1, 2, 3, 4]), { shape: [2, 2] }));
    expect(() => i.matmul(i)).toThrow(/int32 is not supported/);
  });
});

describeWebGPU('webgpu views and joins', () => {
  it('reshape, permute, expand, slice, narrow', async () => {
    await compareDevices((x) => x.reshape([4, 3]).mul(x.reshape([4, 3])), [[2, 6]]);
    await compareDevices((x) => x.transpose(0, 1).reshape([2, 6]).sin(), [[3, 4]]);
    await compareDevices((x) => x.permute(2, 0, 1).contiguous(), [[2, 3, 4]]);
    await compareDevices((x) => x.expand([3, 2, 4]).contiguous(), [[2, 1]]);
    await compareDevices((x) => [x.slice(1, 1, 5, 2), x.slice(0, -2), x.narrow(1, 1, 2)], [[4, 6]]);
    await compareDevices((x) => x.unsqueeze(1).flatten(0, 1).squeeze().mul(2), [[3, 4]]);
  });
  it('cat writes every element of its output: no clear first, and a reused buffer shows nothing old', async () => {
    const b = webgpuBackend()!;
    const old = await full([6, 5], 7).to('webgpu');
    await old.data();
    old.dispose(); // its buffer goes back to the pool, 7s and all
    const [x, y] = await Promise.all(
      [tensor([1, 2, 3, 4, 5, 6], { shape: [6, 1] }), zeros([6, 4])].map((t) => t.to('webgpu')),
    );
    await Promise.all([x.data(), y.data()]);
    const clears = () => b.counters().dispatchesByOp.zeros ?? 0;
    const before = clears();
    const joined = cat([x, y], 1);
    expect(clears() - before).toBe(0);
    const expected = [1, 2, 3, 4, 5, 6].flatMap((v) => [v, 0, 0, 0, 0]);
    expect(Array.from(await joined.data())).toEqual(expected);
    [x, y, joined].forEach((t) => t.dispose());
  });
  it('cat, stack, split, chunk, repeatInterleave', async () => {
    await compareDevices(
      (a, b) => cat([a, b, a], 1),
      [
        [2, 3],
        [2, 1],
      ],
    );
    await compareDevices(
      (a, b) => cat([a.transpose(0, 1), b], 0),
      [
        [3, 2],
        [4, 3],
      ],
    );
    await compareDevices(
      (a, b) => stack([a, b], 1),
      [
        [2, 3],
        [2, 3],
      ],
    );
    await compareDevices(
      (x) => {
        const [a, b] = x.split([1, 3], 1);
        return a.mul(b.sum(1, true));
      },
      [[2, 4]],
    );
    await compareDevices(
      (x) => {
        const [a, b] = x.chunk(2, 0);
        return a.mul(b);
      },
      [[4, 3]],
    );
    await compareDevices((x) => x.repeatInterleave(3, 1), [[2, 2, 3]]);
    await compareDevices(
      (x) => {
        const [a, , c] = x.split(2, 1); // the middle piece unused: zeros in its part of the gradient
        return a.mul(c).add(c.exp());
      },
      [[3, 6]],
    );
  });
  it("split's backward is one cat of the pieces' gradients: no clear, no full-width sum", async () => {
    // the ViT's fused qkv projection split into q, k and v: before, each piece's backward cleared a gradient of
    // the whole width and copied its part in, and the three were summed
    const x = await randn([2, 5, 12]).to('webgpu');
    x.requiresGrad = true;
    const [q, k, v] = x.split(4, 2);
    const y = q.mul(k).add(v).sum(); // in the backward: the pieces' gradients, then split's
    const seed = await ones([]).to('webgpu');
    const b = webgpuBackend()!;
    const before = { ...b.counters().dispatchesByOp };
    y.backward(seed);
    const counts = b.counters().dispatchesByOp;
    const made = (op: string) => (counts[op] ?? 0) - (before[op] ?? 0);
    expect(made('zeros') + made('fill'), 'clears').toBe(0);
    expect(made('add'), 'sums').toBe(0);
    const grad = Array.from(await x.grad!.data());
    const [qs, ks] = await Promise.all([q.data(), k.data()]);
    // d/dq = k, d/dk = q, d/dv = 1, interleaved along the last dim
    const expected = Array.from({ length: 10 }, (_, r) => [
      ...ks.slice(4 * r, 4 * r + 4),
      ...qs.slice(4 * r, 4 * r + 4),
      ...[1, 1, 1, 1],
    ]).flat();
    expect(grad).toEqual(expected);
    [x, q, k, v, y].forEach((t) => t.dispose());
  });
  it('cast float32 <-> int32 like a typed-array store (truncation, wrap, NaN -> 0)', async () => {
    const v = [1.7, -1.7, 0.5, -0.5, 1e10, -3e9, NaN, Infinity, 2147483647, 123456.9];
    await compareDevices((x) => [x.int(), x.int().float()], [{ shape: [10], values: v, grad: false }]);
    await compareDevices((x) => x.float().mul(2), [{ shape: [5], dtype: 'int32', lo: -100, hi: 100 }]);
    await compareDevices((x) => x.transpose(0, 1).cast('float32').mul(x.transpose(0, 1).cast('float32')), [[3, 4]]);
  });
  it('copyInto a strided destination, including from the same storage', async () => {
    await compareDevices(
      (x, y) => {
        const out = zeros([4, 6], { device: x.device });
        copyInto(out.slice(1, 0, 6, 2), x.transpose(0, 1));
        copyInto(out.slice(0, 3), y);
        return out;
      },
      [
        { shape: [3, 4], grad: false },
        { shape: [1, 6], grad: false },
      ],
    );
    await compareDevices(
      (x) => {
        const out = x.contiguous().mul(1);
        copyInto(out.slice(0, 0, 2), out.slice(0, 2, 4)); // overlapping storage
        return out;
      },
      [{ shape: [4, 3], grad: false }],
    );
  });
  it('fill with special values and tril', async () => {
    for (const v of [0, -0, 3.5, -Infinity, NaN])
      expectAllClose(await full([3], v, { device: 'webgpu' }).data(), await full([3], v).data(), 0);
    expect(Array.from(await full([2], -7, { dtype: 'int32', device: 'webgpu' }).data())).toEqual([-7, -7]);
    await compareDevices((x) => tril(x, 1), [[3, 4]]);
  });
  it('empty tensors', async () => {
    const e = await gpu(zeros([0, 4]));
    expect(e.add(1).shape).toEqual([0, 4]);
    expect((await e.exp().data()).length).toBe(0);
    expect((await e.softmax(-1).data()).length).toBe(0);
  });
});

describeWebGPU('webgpu nn ops', () => {
  it('embedding with repeated ids (scatter-add backward, bit-identical sums)', async () => {
    const ids = { shape: [5], dtype: 'int32' as const, values: [1, 3, 1, 0, 1] };
    await compareDevices((t, i) => t.embedding(i), [[4, 3], ids], { rtol: 0 });
    await compareDevices((t, i) => t.embedding(i), [[50, 8], { shape: [3, 40], dtype: 'int32', lo: 0, hi: 49 }], {
      rtol: 0,
    });
    // a transposed table and strided ids
    await compareDevices(
      (t, i) => t.transpose(0, 1).embedding(i.slice(1, 0, 6, 2)),
      [[3, 6], { shape: [2, 6], dtype: 'int32', lo: 0, hi: 5 }],
    );
  });
  it('embedding with an out-of-range id reads zeros (the GPU cannot throw)', async () => {
    const table = await gpu(
      tensor([
        [1, 2],
        [3, 4],
      ]),
    );
    const ids = await gpu(tensor(new Int32Array([1, 5, -1])));
    expect(Array.from(await table.embedding(ids).data())).toEqual([3, 4, 0, 0, 0, 0]);
  });
  it('rope on head dims 2, 20, 24, 40, 64, broadcast tables and strided inputs, forward and backward', async () => {
    const table = { grad: false };
    for (const [T, hd] of [
      [1, 2],
      [3, 20],
      [17, 24],
      [5, 40],
      [7, 64],
    ]) {
      // q as the attention makes it: (B, T, H, hd) transposed to (B, H, T, hd)
      await compareDevices(
        (x, c, s) => rope(x.transpose(1, 2), c, s),
        [[2, T, 3, hd], { shape: [T, hd], ...table }, { shape: [T, hd], ...table }],
      );
    }
    // tables with their own batch dim, and a sliced input
    await compareDevices(
      (x, c, s) => rope(x.slice(3, 0, 32, 2), c, s),
      [[2, 4, 3, 32], { shape: [2, 1, 3, 16], ...table }, { shape: [2, 1, 3, 16], ...table }],
    );
  });
  it('layerNorm and rmsNorm, also on non-contiguous inputs and long rows', async () => {
    await compareDevices((x, w, b) => layerNorm(x, w, b, 1e-5), [[3, 5], [5], [5]], { rtol: 1e-4 });
    await compareDevices((x, w) => rmsNorm(x, w, 1e-5), [[3, 5], [5]], { rtol: 1e-4 });
    await compareDevices((x, w, b) => layerNorm(x.transpose(0, 1), w, b, 1e-5), [[6, 4], [6], [6]], { rtol: 1e-4 });
    await compareDevices((x, w) => rmsNorm(x.permute(1, 0, 2), w.slice(0, 0, 600, 2), 1e-6), [[2, 3, 300], [600]], {
      rtol: 1e-4,
    });
    await compareDevices((x, w, b) => layerNorm(x, w, b, 1e-5), [{ shape: [2, 400], lo: 5, hi: 7 }, [400], [400]], {
      rtol: 1e-4,
    });
  });
  it('crossEntropy with ignored targets; all ignored gives 0', async () => {
    const targets = { shape: [2, 2], dtype: 'int32' as const, values: [2, -100, 0, 4] };
    await compareDevices((x, t) => crossEntropy(x, t), [{ shape: [2, 2, 5], lo: -3, hi: 3 }, targets], { rtol: 1e-4 });
    await compareDevices(
      (x, t) => crossEntropy(x, t),
      [
        { shape: [6, 700], lo: -3, hi: 3 },
        { shape: [6], dtype: 'int32', lo: 0, hi: 699 },
      ],
      { rtol: 1e-4 },
    );
    await compareDevices((x, t) => crossEntropy(x, t, 3), [[2, 4], { shape: [2], dtype: 'int32', values: [3, 3] }]);
  });
  it('fused backward of the norms and cross-entropy: 1, 3, 17, 67 rows, the 49,152 vocabulary', async () => {
    for (const [rows, cols] of [
      [1, 3],
      [17, 67],
      [67, 17],
    ]) {
      await compareDevices((x, w, b) => layerNorm(x, w, b, 1e-5), [[rows, cols], [cols], [cols]], { rtol: 1e-4 });
      await compareDevices((x, w) => rmsNorm(x, w, 1e-5), [[rows, cols], [cols]], { rtol: 1e-4 });
    }
    // a frozen weight: only dx is asked for
    await compareDevices((x, w) => rmsNorm(x, w, 1e-5), [[3, 67], { shape: [67], grad: false }], { rtol: 1e-4 });
    const targets = { shape: [3], dtype: 'int32' as const, values: [49151, -100, 17] };
    await compareDevices((x, t) => crossEntropy(x, t), [{ shape: [3, 49152], lo: -8, hi: 8 }, targets], {
      rtol: 1e-4,
    });
  });
  it('crossEntropy with an out-of-range target gives NaN (the GPU cannot throw)', async () => {
    const logits = await gpu(tensor([[1, 2, 3]]));
    const loss = crossEntropy(logits, await gpu(tensor(new Int32Array([5]))));
    expect(Number.isNaN(await loss.item())).toBe(true);
  });
  it('conv2d with stride == kernel', async () => {
    await compareDevices((x, w, b) => conv2dPatch(x, w, b), [[2, 3, 4, 4], [5, 3, 2, 2], [5]], { rtol: 1e-4 });
  });
  it('dropout with a fixed generator draws the same mask', async () => {
    await compareDevices((x) => x.dropout(0.3, true, new Generator(7)), [[4, 5]]);
  });
  it('sort and topk: values, indices (stable on ties, NaN last) and gradients', async () => {
    await compareDevices(
      (x) => {
        const s = x.sort(-1, true);
        return [s.values, s.indices];
      },
      [[3, 5]],
    );
    await compareDevices(
      (x) => {
        const s = x.topk(2, 0);
        return [s.values, s.indices];
      },
      [[4, 3]],
    );
    const ties = [2, 1, 2, NaN, 1, -0, 0, Infinity, NaN, -Infinity, 2, 1];
    for (const desc of [false, true]) {
      await compareDevices(
        (x) => {
          const s = x.sort(-1, desc);
          return [s.values, s.indices];
        },
        [{ shape: [2, 6], values: ties, grad: false }],
      );
    }
    await compareDevices(
      (x) => {
        const s = x.sort(-1);
        return [s.values, s.indices];
      },
      [{ shape: [2, 150], dtype: 'int32', lo: -20, hi: 20 }],
    );
    await compareDevices(
      (x) => {
        const s = x.transpose(0, 1).sort(0, true);
        return [s.values, s.indices];
      },
      [[70, 3]],
    );
    await compareDevices(
      (x) => {
        const s = x.sort(-1);
        return [s.values, s.indices];
      },
      [{ shape: [2, 1000], grad: false }],
    );
  });
});

describeWebGPU('webgpu backend', () => {
  it('opens the device with every limit at the adapter maximum and the optional features it offers', async () => {
    const b = webgpuBackend()!;
    const adapter = (await b.gpu!.requestAdapter(
      b.adapter.featureLevel === 'compatibility' ? { featureLevel: 'compatibility' } : {},
    ))!;
    for (const k of [
      'maxStorageBufferBindingSize',
      'maxBufferSize',
      'maxComputeWorkgroupStorageSize',
      'maxComputeInvocationsPerWorkgroup',
    ] as const) {
      expect(b.device.limits[k], k).toBe(adapter.limits[k]);
    }
    for (const f of ['shader-f16', 'subgroups', 'timestamp-query']) {
      expect(b.device.features.has(f), f).toBe(adapter.features.has(f));
      expect(b.adapter.features.includes(f), f).toBe(adapter.features.has(f));
    }
  });
  it('refuses float64 with a clear error', async () => {
    await expect(tensor(new Float64Array([1, 2])).to('webgpu')).rejects.toThrow(/float64 is not supported on the GPU/);
  });
  it('write() after pending work that reads a pooled buffer does not clobber it', async () => {
    const results: Tensor[] = [];
    for (let i = 0; i < 20; i++) {
      const a = await gpu(full([64], i));
      results.push(a.mul(2)); // pending: reads a
      a.dispose(); // released while pending: must not be rewritten before the submit
    }
    for (let i = 0; i < 20; i++) expect(Array.from(await results[i].data())).toEqual(new Array(64).fill(2 * i));
  });
  it('write() into a storage that pending work reads lands after that work (staged, or submitted first)', async () => {
    const b = webgpuBackend()!;
    // 4 values go through the recorder's staging arena; 2^21 (8 MiB) are too many for it
    for (const n of [4, 1 << 21]) {
      const s = b.alloc('float32', n);
      b.write(
        s,
        Float32Array.from({ length: n }, (_, i) => i + 1),
      );
      const view = { storage: s, shape: [n], strides: [1], offset: 0, dtype: 'float32' as const };
      const negated = b.unary('neg', view);
      b.write(s, new Float32Array(n).fill(9));
      const got = await b.read({ ...view, storage: negated });
      expect(got.every((v, i) => v === -(i + 1))).toBe(true);
      expect((await b.read(view)).every((v) => v === 9)).toBe(true);
      b.release(s);
      b.release(negated);
    }
  });
  it('alloc() is zero-filled even when it reuses a dirty pooled buffer', async () => {
    const a = await gpu(full([100], 5));
    await a.data();
    a.dispose();
    const b = webgpuBackend()!;
    b.flush();
    const s = b.alloc('float32', 100);
    expect(Array.from(await b.read({ storage: s, shape: [100], strides: [1], offset: 0, dtype: 'float32' }))).toEqual(
      new Array(100).fill(0),
    );
    b.write(s, new Float32Array([1, 2])); // a partial write keeps the rest zero
    const s2 = b.alloc('float32', 3);
    b.write(s2, new Float32Array([7]));
    expect(Array.from(await b.read({ storage: s2, shape: [3], strides: [1], offset: 0, dtype: 'float32' }))).toEqual([
      7, 0, 0,
    ]);
    b.release(s);
    b.release(s2);
  });
  it('caches pipelines: a repeated op compiles nothing new', async () => {
    const b = webgpuBackend()!;
    const x = await gpu(
      tensor([
        [1, 2],
        [3, 4],
      ]),
    );
    await x.matmul(x).exp().sum(0).data();
    const before = b.memoryStats().pipelines;
    const y = await gpu(
      tensor([
        [1, 2, 3],
        [3, 4, 5],
        [6, 7, 8],
      ]),
    );
    await y.matmul(y).exp().sum(0).data();
    expect(b.memoryStats().pipelines).toBe(before);
  });
  it('a use after dispose fails clearly', async () => {
    const x = await gpu(tensor([1, 2]));
    const v = x.view([2]);
    x.dispose();
    v.dispose();
    expect(() => v.add(1)).toThrow(/after dispose/);
  });
  it('binds views of buffers larger than a binding through a window, names the op where that fails', async () => {
    const { webgpuBackend } = await import('../tensor/webgpu/device.ts');
    const limits = webgpuBackend()!.device.limits;
    const n = limits.maxStorageBufferBindingSize / 4 + 1024;
    if (n * 4 > 600 * 2 ** 20) return; // a real GPU with a large binding limit: too big to test cheaply
    const big = zeros([n], { device: 'webgpu' });
    const tail = big.slice(0, n - 8);
    expect(Array.from(await tail.add(1).data())).toEqual(new Array(8).fill(1));
    expect(() => big.add(1)).toThrow(/webgpu add: .*maxStorageBufferBindingSize/);
    tail.dispose();
    big.dispose();
  });
});
