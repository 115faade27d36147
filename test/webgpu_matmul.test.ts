// The WebGPU matmul kernels against the CPU backend, each kernel forced on
// shapes that are not multiples of anything (1, 3, 17, 67, 130, ...), on
// every operand layout (row-major, transposed, sliced, broadcast batches),
// vectorised and scalar loads: GEMV (both variants), the three tile sizes,
// split-K, and float16 operands, rounded as the kernels load them (compared
// with the CPU on the same inputs rounded to float16). Also what the planner picks for the shapes a model has.

import { expect, it } from 'vitest';
import { Generator, randn, roundToHalf, tensor, type Tensor } from '../tensor/index.ts';
import { contiguousStrides } from '../tensor/shape.ts';
import type { MatmulPlan, WebGPUBackend } from '../tensor/webgpu/backend.ts';
import { webgpuBackend } from '../tensor/webgpu/device.ts';
import { describeWebGPU, expectAllClose } from './webgpu_helpers.ts';

/** Operands in the same layout on both devices: base tensors and the views taken of them. */
interface Case {
  a: Tensor;
  b: Tensor;
  views: (a: Tensor, b: Tensor) => [Tensor, Tensor];
}

/** a [.., M, K] and b [.., K, N] in one of four layouts ('t': a transposed view of a [K, M] / [N, K] tensor). */
function operands(M: number, K: number, N: number, layout: string, batch: number[] = [], seed = 1): Case {
  const g = new Generator(seed);
  const a = randn(layout[0] === 't' ? [...batch, K, M] : [...batch, M, K], { generator: g });
  const b = randn(layout[1] === 't' ? [...batch, N, K] : [...batch, K, N], { generator: g });
  const t = (x: Tensor, on: boolean) => (on ? x.transpose(-1, -2) : x);
  return { a, b, views: (x, y) => [t(x, layout[0] === 't'), t(y, layout[1] === 't')] };
}

/** backend.matmul (or matmulF16) with a forced plan against the CPU's matmul (of `ref` operands, if given). */
async function check(
  b: WebGPUBackend,
  c: Case,
  plan: MatmulPlan | undefined,
  opts: { half?: boolean; ref?: [Tensor, Tensor]; rtol?: number } = {},
) {
  const [ca, cb] = c.views(c.a, c.b);
  const [ga, gb] = c.views(await c.a.to('webgpu'), await c.b.to('webgpu'));
  const out = opts.half ? b.matmulF16(ga.view(), gb.view(), plan) : b.matmul(ga.view(), gb.view(), plan);
  const shape = [...ca.shape.slice(0, -1), cb.shape[cb.ndim - 1]];
  const got = await b.read({ storage: out, shape, strides: contiguousStrides(shape), offset: 0, dtype: 'float32' });
  b.release(out);
  const [ra, rb] = opts.ref ?? [ca, cb];
  expectAllClose(
    got,
    await ra.matmul(rb).data(),
    opts.rtol ?? 1e-5,
    `${plan?.kind ?? 'planned'} ${plan?.tile ?? ''} x${plan?.splits ?? 1} ${ca.shape}@${cb.shape}`,
  );
}

describeWebGPU('webgpu matmul kernels', () => {
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [3, 17, 5],
    [17, 67, 3],
    [67, 130, 33],
    [20, 8, 68],
    [130, 67, 140],
  ];
  const layouts = ['nn', 'tn', 'nt', 'tt'];
  const tiled = (tile: MatmulPlan['tile'], splits = 1): MatmulPlan => ({ kind: 'tiled', tile, splits });

  // Every layout on the medium tiles; the other sizes share the load and store code (only the loop counts
  // differ), so two layouts each keep the pipelines to compile, slow on software drivers, few.
  for (const [tile, tested] of [
    ['small', ['nn', 'tt']],
    ['medium', layouts],
    ['large', ['nn', 'tt']],
  ] as const) {
    it(`${tile} tiles on awkward sizes, layouts ${tested.join(' ')}, with and without vec4 loads`, async () => {
      const b = webgpuBackend()!;
      for (const [M, K, N] of shapes)
        for (const layout of tested) await check(b, operands(M, K, N, layout), tiled(tile));
      // multiples of 4: the vectorised loads and stores
      for (const layout of tested) await check(b, operands(36, 44, 40, layout), tiled(tile));
    });
  }

  it('batched and broadcast batches, on each tile size', async () => {
    const b = webgpuBackend()!;
    for (const tile of ['small', 'medium', 'large'] as const) {
      await check(b, operands(17, 12, 9, 'nn', [2, 3]), tiled(tile));
      // a batch dim broadcast (stride 0) in each operand, and a sliced batch
      const c = operands(8, 16, 12, 'nt', [3]);
      await check(
        b,
        {
          ...c,
          views: (x, y) => {
            const [va, vb] = c.views(x, y);
            return [va.unsqueeze(0).expand([2, 3, 8, 16]), vb.unsqueeze(1).expand([3, 3, 16, 12]).slice(0, 1, 3)];
          },
        },
        tiled(tile),
      );
    }
  });

  it('split-K: partial products over K chunks, summed in order', async () => {
    const b = webgpuBackend()!;
    for (const splits of [2, 3, 7]) {
      await check(b, operands(17, 300, 9, 'nn'), tiled('small', splits));
      await check(b, operands(40, 1030, 36, 'tn'), tiled('medium', splits)); // a weight gradient: x^T @ dy
    }
  });

  it('GEMV (one row): both variants, every layout, batched, long and odd K', async () => {
    const b = webgpuBackend()!;
    for (const kind of ['gemv.dot', 'gemv.axpy'] as const) {
      const plan: MatmulPlan = { kind, tile: 'small', splits: 1 };
      for (const [K, N] of [
        [1, 1],
        [3, 5],
        [67, 130],
        [577, 33],
      ])
        for (const layout of layouts) await check(b, operands(1, K, N, layout), plan);
      await check(b, operands(1, 20, 9, 'nt', [2, 3]), plan);
    }
  });

  it('float16 operands, float32 accumulation: equal the CPU on the inputs rounded to float16, on every path', async () => {
    const b = webgpuBackend()!;
    // every kernel rounds as it loads: scalar and vec4 loads, every layout, each tile size, split-K, GEMV
    const cases: [[number, number, number], string[], (MatmulPlan | undefined)[]][] = [
      [[3, 17, 5], layouts, [undefined, tiled('large')]],
      [
        [67, 130, 33],
        ['nn', 'tt'],
        [undefined, tiled('large')],
      ],
      [[36, 44, 40], layouts, [undefined, tiled('small')]],
      [[40, 1030, 36], ['tn'], [tiled('medium', 3)]],
      [[1, 67, 9], layouts, [{ kind: 'gemv.dot', tile: 'small', splits: 1 }]],
      [[1, 64, 40], ['nn', 'nt'], [{ kind: 'gemv.axpy', tile: 'small', splits: 1 }]],
    ];
    for (const [[M, K, N], tested, plans] of cases) {
      for (const layout of tested) {
        const c = operands(M, K, N, layout);
        const rounded = (t: Tensor) =>
          tensor(Float32Array.from(t.contiguous().dataSync(), roundToHalf), { shape: t.shape });
        const ref = c.views(c.a, c.b).map(rounded) as [Tensor, Tensor];
        for (const plan of plans) await check(b, c, plan, { half: true, ref });
      }
    }
  });

  it('the planner: GEMV for one row, big tiles for big products, split-K for weight gradients', () => {
    const b = webgpuBackend()!;
    expect(b.planMatmul(1, 576, 576, 1, true).kind).toBe('gemv.dot'); // decoding through a Linear (x @ W^T)
    expect(b.planMatmul(1, 40, 64, 9, false).kind).toBe('gemv.axpy'); // attention weights @ v, one query
    if (b.device.limits.maxComputeInvocationsPerWorkgroup >= 256) {
      expect(b.planMatmul(2048, 1536, 576, 1, true)).toEqual({ kind: 'tiled', tile: 'large', splits: 1 });
      expect(b.planMatmul(64, 256, 2048, 1, false).splits).toBeGreaterThan(1); // dW = x^T @ dy over 2048 tokens
    }
    expect(b.planMatmul(40, 40, 64, 48, true)).toEqual({ kind: 'tiled', tile: 'small', splits: 1 }); // attention heads
  });
});
