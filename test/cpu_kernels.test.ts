// Every generated WebAssembly kernel against the TypeScript kernel it
// replaces, on random inputs whose sizes are not multiples of four (so the
// row tails run), broadcast and strided views, on one thread and on two.
// Two-thread cases are large enough (2^18 elements or more) to be split.

import { afterAll, describe, expect, it } from 'vitest';
import {
  Generator,
  cat,
  crossEntropy,
  getBackend,
  layerNorm,
  rmsNorm,
  softmax,
  tensor,
  where,
  type Tensor,
} from '../tensor/index.ts';
import { crossEntropyRows } from '../tensor/ops.ts';
import { setCpuThreads } from '../tensor/cpu/threads.ts';
import { CpuStorage } from '../tensor/cpu/heap.ts';
import { cpuKernelInfo, getCpuKernels, mergeDims, setCpuKernels, wasmStats } from '../tensor/cpu/wasm/kernels.ts';

/** A float32 tensor of uniform values in [lo, hi), seeded. */
function rand(shape: number[], seed: number, lo = -3, hi = 3): Tensor {
  const g = new Generator(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tensor(
    Float32Array.from({ length: n }, () => lo + (hi - lo) * g.random()),
    { shape },
  );
}

/** Runs fn with the TypeScript kernels and with the wasm kernels; returns both results' values. */
function both(fn: () => Tensor): [Float32Array | Int32Array, Float32Array | Int32Array] {
  const run = (kind: 'ts' | 'wasm') => {
    setCpuKernels(kind);
    const out = fn();
    const data = out.dataSync() as Float32Array | Int32Array;
    out.dispose();
    return data;
  };
  const ref = run('ts');
  return [run('wasm'), ref];
}

/** wasm and ts agree within atol + rtol * |ts| (equal infinities and NaN where ts has NaN). */
function agree(fn: () => Tensor, rtol = 2e-6, atol = 1e-6): void {
  const [got, want] = both(fn);
  expect(got.length).toBe(want.length);
  for (let i = 0; i < got.length; i++) {
    const [a, b] = [got[i], want[i]];
    const ok = a === b || (Number.isNaN(a) && Number.isNaN(b)) || Math.abs(a - b) <= atol + rtol * Math.abs(b);
    if (!ok) expect.fail(`element ${i}: wasm ${a}, ts ${b} (rtol ${rtol}, atol ${atol})`);
  }
}

afterAll(() => {
  setCpuKernels('wasm');
  setCpuThreads(2);
});

it('the wasm kernels are on by default here', () => {
  expect(getCpuKernels()).toBe('wasm');
  expect(cpuKernelInfo().simd).toBe(true);
});

describe('mergeDims', () => {
  it('merges dims every operand walks contiguously and drops size-1 dims', () => {
    // [2, 3, 4] plus a [4] bias broadcast to it: rows of 4, bias stride 0 between rows
    expect(
      mergeDims(
        [2, 3, 4],
        [
          [12, 4, 1],
          [0, 0, 1],
        ],
      ),
    ).toEqual({
      shape: [6, 4],
      strides: [
        [4, 1],
        [0, 1],
      ],
    });
    expect(mergeDims([2, 1, 3], [[3, 3, 1]])).toEqual({ shape: [6], strides: [[1]] });
    // a transpose cannot merge
    expect(mergeDims([3, 2], [[1, 3]])).toEqual({ shape: [3, 2], strides: [[1, 3]] });
  });
});

for (const threads of [1, 2]) {
  // sizes with tails; with two threads, big enough to be split
  const shapes =
    threads === 1
      ? [[1], [3], [5, 7], [67, 129], [2, 3, 5, 7]]
      : [
          [513, 515],
          [3, 260, 347],
        ];
  describe(`elementwise kernels, ${threads} thread(s)`, () => {
    const setup = () => setCpuThreads(threads);
    const parallel = (fn: () => void) => {
      const before = wasmStats.parallelCalls;
      fn();
      if (threads > 1) expect(wasmStats.parallelCalls, 'split across threads').toBeGreaterThan(before);
    };

    it('unary ops', () => {
      setup();
      parallel(() => {
        for (const shape of shapes) {
          const x = rand(shape, 1, -6, 6);
          for (const op of ['neg', 'abs', 'exp', 'tanh', 'sigmoid', 'relu', 'silu', 'gelu'] as const) {
            agree(() => x[op](), 3e-6, 1e-7);
          }
          const pos = rand(shape, 2, 0.01, 5);
          for (const op of ['sqrt', 'rsqrt', 'log'] as const) agree(() => pos[op](), 3e-6, 1e-7);
          agree(() => x.sin());
          x.dispose();
          pos.dispose();
        }
      });
    });

    it('unary ops at special values: 0, -0, +-inf, NaN, under- and overflow, the tanh switch', () => {
      setup();
      const special = [
        0,
        -0,
        Infinity,
        -Infinity,
        NaN,
        100,
        -100,
        88,
        -87,
        -90,
        0.6249,
        0.6251,
        -0.6251,
        1e-30,
        -1e-30,
        20,
      ];
      const x = tensor(Float32Array.from(special), { shape: [special.length] });
      for (const op of ['exp', 'tanh', 'sigmoid', 'relu', 'silu', 'gelu', 'neg', 'abs'] as const)
        agree(() => x[op](), 3e-6, 1e-30);
    });

    it('binary ops with broadcasting and strided operands', () => {
      setup();
      parallel(() => {
        const last = shapes[shapes.length - 1];
        const pairs: [number[], number[]][] = [
          [last, last],
          [last, [last[last.length - 1]]], // a bias row
          [last, [...last.slice(0, -1), 1]], // a per-row statistic
          [last, []], // a scalar
          [
            [1, last[last.length - 1]],
            [last[0], 1],
          ], // outer broadcast
        ];
        for (const [sa, sb] of pairs) {
          const a = rand(sa, 3);
          const b = rand(sb, 4);
          for (const op of [
            'add',
            'sub',
            'mul',
            'div',
            'maximum',
            'minimum',
            'eq',
            'ne',
            'lt',
            'le',
            'gt',
            'ge',
          ] as const) {
            agree(() => a[op](b), 2e-6, 1e-7);
          }
          a.dispose();
          b.dispose();
        }
        const m = rand(last.slice(-2), 5);
        agree(() => m.transpose(0, 1).mul(m.transpose(0, 1).exp())); // both operands transposed
        agree(() => m.transpose(0, 1).add(rand([last[last.length - 2]], 6))); // one transposed
      });
    });

    it('int32 comparisons and arithmetic', () => {
      setup();
      const g = new Generator(7);
      const n = threads === 1 ? 37 : 270001;
      const ints = (len: number) =>
        tensor(
          Int32Array.from({ length: len }, () => g.randint(9) - 4),
          { shape: [len] },
        );
      const [a, b] = [ints(n), ints(n)];
      for (const op of ['add', 'sub', 'mul', 'eq', 'ne', 'lt', 'le', 'gt', 'ge'] as const) agree(() => a[op](b));
      agree(() => a.reshape([n, 1]).eq(tensor(Int32Array.from([0, 1, 2, 3, 4]), { shape: [1, 5] })));
    });

    it('where with float and int conditions, broadcast', () => {
      setup();
      const last = shapes[shapes.length - 1];
      const x = rand(last, 8);
      const y = rand(last, 9);
      const cond = rand([last[last.length - 1]], 10).gt(0);
      agree(() => where(cond, x, y));
      agree(() => where(cond.cast('int32'), x, -1e9));
      agree(() => where(x.gt(0.5), 0, y.transpose(-1, -2).transpose(-1, -2)));
    });

    it('copies: permuted views, casts, and writes into strided views', () => {
      setup();
      parallel(() => {
        const x = rand(threads === 1 ? [2, 5, 3, 7] : [4, 129, 3, 170], 11);
        agree(() => x.permute(0, 2, 1, 3).contiguous());
        agree(() => x.permute(3, 1, 0, 2).contiguous());
        // six dims that do not merge (image to patches): more than the kernel's four, looped over outside
        agree(() => rand([4, 6, 6, 3], 16).reshape([4, 2, 3, 2, 3, 3]).permute(0, 1, 3, 5, 2, 4).contiguous());
        agree(() => x.gt(0).cast('int32').cast('float32'));
        agree(() => x.mul(100).cast('int32')); // float to int stays on the TypeScript path (it wraps)
        // cat and slice-backward write into strided views of a larger buffer
        agree(() => cat([x.permute(0, 2, 1, 3), x.permute(0, 2, 1, 3).neg()], 3));
      });
    });
  });

  describe(`row kernels, ${threads} thread(s)`, () => {
    const rowShapes =
      threads === 1
        ? [
            [1, 1],
            [5, 7],
            [67, 129],
            [2, 3, 33],
            [4, 8],
          ]
        : [
            [2063, 129],
            [16, 4, 64, 67],
          ];
    it('sum over every axis, contiguous or not', () => {
      setCpuThreads(threads);
      for (const shape of rowShapes) {
        const x = rand(shape, 12);
        // float32 sums (in lanes, or row after row) against a float64 accumulator
        const atol = (n: number) => 3e-7 * n;
        for (let d = 0; d < shape.length; d++) {
          agree(() => x.sum(d), 1e-5, atol(shape[d]));
          agree(() => x.transpose(0, -1).sum(d), 1e-5, atol(x.transpose(0, -1).shape[d]));
        }
        agree(() => x.mean(), 1e-5, atol(x.size) / x.size);
      }
    });

    it('softmax, layerNorm and rmsNorm over the last axis', () => {
      setCpuThreads(threads);
      for (const shape of rowShapes) {
        const D = shape[shape.length - 1];
        const x = rand(shape, 13, -8, 8);
        const [w, b] = [rand([D], 14), rand([D], 15)];
        agree(() => softmax(x, -1), 3e-6, 1e-8);
        agree(() => softmax(x.transpose(0, -1), -1), 3e-6, 1e-8); // non-contiguous rows
        agree(() => x.logSoftmax(-1), 1e-6, 1e-5);
        agree(() => layerNorm(x, w, b, 1e-5), 2e-5, 2e-5);
        agree(() => rmsNorm(x, w, 1e-6), 2e-5, 2e-5);
      }
    });

    it('layerNorm and rmsNorm backward: dx, and the weight and bias gradients summed over the rows', () => {
      setCpuThreads(threads);
      for (const shape of rowShapes) {
        const D = shape[shape.length - 1];
        const [x, w, b, r] = [rand(shape, 20, -4, 4), rand([D], 21), rand([D], 22), rand(shape, 23)];
        /** The gradients of sum(norm(x) * r) with respect to x, w (and b), as one flat tensor. */
        const grads = (layer: boolean) => () => {
          const leaves = (layer ? [x, w, b] : [x, w]).map((t) => t.detach().setRequiresGrad());
          const y = layer ? layerNorm(leaves[0], leaves[1], leaves[2], 1e-5) : rmsNorm(leaves[0], leaves[1], 1e-6);
          y.mul(r).sum().backward();
          return cat(leaves.map((t) => t.grad!.reshape([-1])));
        };
        // float32 lanes against float64 rows; the weight gradients sum over up to 2063 rows
        agree(grads(true), 1e-4, 1e-4);
        agree(grads(false), 1e-4, 1e-4);
      }
    });

    it('cross-entropy rows, with ignored targets and strided logits', () => {
      setCpuThreads(threads);
      const [N, V] = threads === 1 ? [7, 13] : [1031, 257];
      const g = new Generator(17);
      const logits = rand([N, V], 18, -8, 8);
      const targets = tensor(
        Int32Array.from({ length: N }, () => (g.random() < 0.2 ? -100 : g.randint(V))),
        { shape: [N] },
      );
      agree(() => crossEntropy(logits, targets), 1e-6, 1e-5);
      agree(() => crossEntropy(rand([V, N], 19).transpose(0, 1), targets), 1e-6, 1e-5);
      // the gradient (softmax - onehot, scaled; zero rows where ignored), through the mean and through a
      // weighting per row (a strided gradient)
      const weights = rand([N], 24);
      for (const loss of [
        (l: Tensor) => crossEntropy(l, targets),
        (l: Tensor) => crossEntropyRows(l, targets, -100).mul(weights).sum(),
      ]) {
        agree(
          () => {
            const l = logits.detach().setRequiresGrad();
            loss(l).backward();
            return l.grad!;
          },
          1e-5,
          1e-7,
        );
      }
      const bad = tensor(
        Int32Array.from({ length: N }, () => V),
        { shape: [N] },
      );
      for (const kind of ['ts', 'wasm'] as const) {
        setCpuKernels(kind);
        expect(() => crossEntropy(logits, bad), kind).toThrow(/out of range/);
      }
    });

    it('softmax of rows holding -inf (masked attention) and rows of one value', () => {
      setCpuThreads(threads);
      const x = tensor(Float32Array.from([0, -Infinity, 1, -Infinity, 5, 5, 5, 5, 5]), { shape: [3, 3] });
      agree(() => softmax(x, -1), 1e-6, 0);
      const [got] = both(() => softmax(x, -1));
      expect(got[1]).toBe(0); // exp(-inf) is exactly 0
    });
  });
}

describe('fused AdamW', () => {
  it('updates in place exactly as the tensor ops of nn/optim.ts do, on both kernel sets', () => {
    const h = { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    const backend = getBackend('cpu') as ReturnType<typeof getBackend> & {
      adamw(p: unknown, g: unknown, m: unknown, v: unknown, h: unknown): void;
    };
    // 200,000 elements: the moments (kept outside the WebAssembly memory) stream through it in seven chunks,
    // on two threads with the copies beside the update; 1027: they stay in it
    for (const [kind, n, threads] of [
      ['ts', 1027, 1],
      ['wasm', 1027, 1],
      ['ts', 200_000, 1],
      ['wasm', 200_000, 1],
      ['wasm', 200_000, 2],
    ] as const) {
      setCpuKernels(kind);
      setCpuThreads(threads);
      const parallelBefore = wasmStats.parallelCalls;
      const steps = 3;
      let p = rand([n], 20);
      let [m, v] = [rand([n], 21).mul(0), rand([n], 22).mul(0)];
      const [pf, mf, vf] = [p.mul(1), m.mul(1), v.mul(1)];
      for (let step = 1; step <= steps; step++) {
        const g = rand([n], 30 + step);
        // nn/optim.ts, op for op
        const decayed = p.mul(1 - h.lr * h.weightDecay);
        m = m.add(g.sub(m).mul(1 - h.beta1));
        v = v.mul(h.beta2).add(g.mul(g).mul(1 - h.beta2));
        const denom = v
          .sqrt()
          .div(Math.sqrt(1 - h.beta2 ** step))
          .add(h.eps);
        p = decayed.sub(m.div(denom).mul(h.lr / (1 - h.beta1 ** step)));
        backend.adamw(pf.view(), g.view(), mf.view(), vf.view(), { ...h, step });
      }
      const outside = (mf.storage as CpuStorage).ptr < 0 && (vf.storage as CpuStorage).ptr < 0;
      expect(outside, 'moments outside the memory').toBe(n >= 1 << 17);
      expect((pf.storage as CpuStorage).ptr, 'the parameter stays in it').toBeGreaterThan(0);
      expect(wasmStats.parallelCalls > parallelBefore, 'the copies beside the update').toBe(threads > 1);
      expect(Array.from(pf.dataSync()), `${kind}, ${n}, ${threads} threads`).toEqual(Array.from(p.dataSync()));
      expect(Array.from(mf.dataSync())).toEqual(Array.from(m.dataSync()));
      expect(Array.from(vf.dataSync())).toEqual(Array.from(v.dataSync()));
    }
  });
});

describe('kernel switch', () => {
  it('setCpuKernels and cpuKernelInfo report what runs; the backend result does not depend on it', () => {
    setCpuKernels('ts');
    expect(cpuKernelInfo()).toMatchObject({ kernels: 'ts', fma: false });
    setCpuKernels('wasm', { fma: false });
    expect(cpuKernelInfo()).toMatchObject({ kernels: 'wasm', fma: false });
    setCpuKernels('wasm');
    expect(cpuKernelInfo().fma).toBe(cpuKernelInfo().relaxedSimd);
    expect(getBackend('cpu').name).toBe('cpu');
  });
});
