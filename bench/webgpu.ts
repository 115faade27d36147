// WebGPU benchmark: matmul throughput, per-dispatch overhead, and one
// forward + backward pass of the decoder in bench/decoder.ts, on whatever
// adapter initWebGPU() finds (a real GPU, or Mesa llvmpipe in CI).
//
//   npx tsx bench/webgpu.ts            all matmul sizes, decoder at full size
//   npx tsx bench/webgpu.ts --quick    256^3 matmul only, decoder at batch 2, seq 32
//
// Every timing ends with a host-device sync (the GPU's work is included).

import { fileURLToPath } from 'node:url';
import { defineFlags, parseCommandLine } from '../cli.ts';
import { makeDecoder, type DecoderConfig } from './decoder.ts';
import { useDawn } from '../node/dawn.ts';
import { Generator, closeWebGPU, initWebGPU, randn, tensor, tidy, type Tensor } from '../tensor/index.ts';
import type { WebGPUBackend } from '../tensor/webgpu/backend.ts';

/** What benchWebGPU measures. */
export interface WebGPUBenchResult {
  adapter: string;
  matmul: { shape: string; ms: number; gflops: number }[];
  dispatch: { emptyKernelUs: number; tinyOpUs: number };
  decoder: { config: DecoderConfig; msPerStep: number; loss: number };
}

/** Median of a few timed runs of `fn` (ms), after one warm-up. */
async function time(fn: () => Promise<void>, reps: number): Promise<number> {
  await fn();
  const ms: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return ms.sort((a, b) => a - b)[Math.floor(reps / 2)];
}

async function matmulBench(backend: WebGPUBackend, M: number, K: number, N: number, iters: number) {
  const g = new Generator(0);
  const a = (await randn([M, K], { generator: g }).to('webgpu')).keep();
  const b = (await randn([K, N], { generator: g }).to('webgpu')).keep();
  const ms = (await time(async () => {
    for (let i = 0; i < iters; i++) tidy(() => void a.matmul(b));
    await backend.sync();
  }, 3)) / iters;
  a.dispose();
  b.dispose();
  return { shape: `${M}x${K}x${N}`, ms: +ms.toFixed(3), gflops: +((2 * M * N * K) / ms / 1e6).toFixed(2) };
}

/** The cost of one dispatch: an empty kernel 1000 times in one submit, and a tiny tensor op 1000 times. */
async function dispatchBench(backend: WebGPUBackend): Promise<{ emptyKernelUs: number; tinyOpUs: number }> {
  const device = backend.device;
  const module = device.createShaderModule({ code: '@compute @workgroup_size(1) fn main() {}' });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const empty = await time(async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    for (let i = 0; i < 1000; i++) pass.dispatchWorkgroups(1);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  }, 3);
  const x = (await tensor([1]).to('webgpu')).keep();
  const tiny = await time(async () => {
    for (let i = 0; i < 1000; i++) tidy(() => void x.add(1));
    await backend.sync();
  }, 3);
  x.dispose();
  return { emptyKernelUs: +empty.toFixed(2), tinyOpUs: +tiny.toFixed(2) }; // ms per 1000 = us per dispatch
}

async function decoderBench(cfg: DecoderConfig, backend: WebGPUBackend, steps: number) {
  const model = makeDecoder(cfg, 'webgpu');
  const g = new Generator(1);
  const n = cfg.batch * cfg.seq;
  const ids = (await tensor(Int32Array.from({ length: n }, () => g.randint(cfg.vocab)), { shape: [cfg.batch, cfg.seq] }).to('webgpu')).keep();
  const targets = (await tensor(Int32Array.from({ length: n }, () => g.randint(cfg.vocab)), { shape: [cfg.batch, cfg.seq] }).to('webgpu')).keep();
  let loss = 0;
  const step = async () => {
    const l = tidy(() => {
      const out = model.step(ids, targets);
      for (const p of model.params) {
        p.grad?.dispose();
        p.grad = null;
      }
      return out;
    });
    loss = await l.item(); // sync point
    l.dispose();
  };
  const ms = await time(step, steps);
  for (const t of [ids, targets, ...model.params]) (t as Tensor).dispose();
  await backend.sync();
  return { config: cfg, msPerStep: +ms.toFixed(1), loss: +loss.toFixed(4) };
}

/** Runs the WebGPU benchmark (opening the device if needed) and returns the numbers. */
export async function benchWebGPU(opts: { quick?: boolean; log?: (line: string) => void } = {}): Promise<WebGPUBenchResult> {
  const log = opts.log ?? console.log;
  useDawn();
  const backend = await initWebGPU({ quiet: true });
  const adapter = `${backend.adapter.name} (${backend.adapter.backend}, ${backend.adapter.featureLevel})`;
  log(`webgpu adapter: ${adapter}`);
  const sizes: [number, number, number][] = opts.quick
    ? [[256, 256, 256]]
    : [[256, 256, 256], [1024, 1024, 1024], [1024, 576, 1536], [1024, 1536, 576]];
  const matmul = [];
  for (const [M, K, N] of sizes) {
    const r = await matmulBench(backend, M, K, N, M * K * N > 1e8 ? 2 : 10);
    log(`matmul ${r.shape}: ${r.ms} ms, ${r.gflops} GFLOP/s`);
    matmul.push(r);
  }
  const dispatch = await dispatchBench(backend);
  log(`dispatch: empty kernel ${dispatch.emptyKernelUs} us (1000 in one submit), tiny tensor op ${dispatch.tinyOpUs} us`);
  const cfg: DecoderConfig = opts.quick
    ? { blocks: 4, hidden: 128, heads: 4, mlp: 512, vocab: 512, batch: 2, seq: 32 }
    : { blocks: 4, hidden: 128, heads: 4, mlp: 512, vocab: 512, batch: 8, seq: 128 };
  const decoder = await decoderBench(cfg, backend, opts.quick ? 3 : 2);
  log(`decoder fwd+bwd (${cfg.blocks} blocks, hidden ${cfg.hidden}, batch ${cfg.batch}, seq ${cfg.seq}): ${decoder.msPerStep} ms/step, loss ${decoder.loss}`);
  return { adapter, matmul, dispatch, decoder };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const flags = defineFlags({
    quick: { type: 'switch', help: 'only the 256^3 matmul, the decoder at batch 2, seq 32 (for llvmpipe)' },
  });
  const args = parseCommandLine(flags, 'npx tsx bench/webgpu.ts');
  await benchWebGPU({ quick: args.quick });
  closeWebGPU();
}
