// The benchmark suite: `npm run bench [-- flags]`. Prints matmul GFLOP/s, one
// forward+backward of a small Llama-style decoder, nanoVLM training steps
// (ms and tokens/s) and generation tokens/s with and without the KV cache,
// naming the machine, the backend and the thread count.
//
//   npm run bench                                   cpu
//   npm run bench -- --device webgpu                webgpu (a real GPU; llvmpipe with --quick)
//   npm run bench -- --config path/config.json --batch 16 --text_len 48
//                                                   one training step of any nanoVLM config

import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { Generator, cpuKernelInfo, getCpuKernels, getCpuThreads, setCpuKernels, setCpuThreads, tensor, tidy, type DeviceName } from '../tensor/index.ts';
import { closeWebGPU } from '../tensor/webgpu/device.ts';
import { defaultVLMConfig, vlmConfigFromJSON, type VLMConfig } from '../vlm/config.ts';
import { makeDecoder, type DecoderConfig } from './decoder.ts';
import { benchMatmul } from './matmul.ts';
import { benchGenerate, benchTrainStep, imageTokens, smallConfig } from './vlm.ts';
import { benchWebGPU } from './webgpu.ts';

const { values: args } = parseArgs({
  options: {
    device: { type: 'string', default: 'cpu' },
    config: { type: 'string' },
    batch: { type: 'string', default: '16' },
    text_len: { type: 'string', default: '48' },
    skip_222m: { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run bench -- [flags]
  --device cpu|webgpu|all   which backends to measure (default cpu)
  --config FILE             also time one training step of this nanoVLM config.json
  --batch N --text_len N    batch size and text tokens for --config (default 16, 48)
  --skip_222m               skip the nanoVLM-222M step (several minutes on a 2-core CPU)
  --quick                   small sizes only (for llvmpipe)`);
  process.exit(0);
}

const devices: DeviceName[] = args.device === 'all' ? ['cpu', 'webgpu'] : [args.device as DeviceName];
const fmt = (x: number, d = 1) => x.toFixed(d);

console.log(`nanovlm-ts benchmark, ${new Date().toISOString().slice(0, 10)}: ${cpus()[0]?.model ?? 'unknown cpu'}, ${cpus().length} cores, node ${process.version}\n`);

/** One forward + backward of the decoder of bench/decoder.ts (median of 3 after a warm-up). */
async function benchDecoder(cfg: DecoderConfig, device: DeviceName): Promise<number> {
  const model = makeDecoder(cfg, device);
  const g = new Generator(1);
  const ids = tensor(Int32Array.from({ length: cfg.batch * cfg.seq }, () => g.randint(cfg.vocab)), { shape: [cfg.batch, cfg.seq], device }).keep();
  const times: number[] = [];
  for (let i = 0; i < 4; i++) {
    const t0 = performance.now();
    const loss = tidy(() => model.step(ids, ids));
    await loss.item(); // sync point
    loss.dispose();
    for (const p of model.params) (p.grad?.dispose(), (p.grad = null));
    if (i > 0) times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[1];
}

async function benchDevice(device: DeviceName): Promise<void> {
  const cpu = cpuKernelInfo();
  const threads = device === 'cpu' ? `, ${getCpuKernels()} kernels${cpu.fma ? ' (relaxed-SIMD FMA)' : ''}, ${getCpuThreads()} threads` : '';
  console.log(`=== ${device}${threads} ===`);
  if (device === 'cpu') await benchMatmul([1, 2], 5, { kernels: ['ts', 'wasm', 'wasm-nofma'] });
  else await benchWebGPU({ quick: args.quick });

  const decoderCfg: DecoderConfig = { blocks: 4, hidden: 128, heads: 4, mlp: 512, vocab: 512, batch: 8, seq: 128 };
  if (device === 'cpu') console.log(`decoder fwd+bwd (4 blocks, hidden 128, 4 heads, MLP 512, batch 8, seq 128, vocab 512): ${fmt(await benchDecoder(decoderCfg, device))} ms`);

  const step = async (name: string, cfg: VLMConfig, batch: number, textLen: number) => {
    const r = await benchTrainStep(cfg, batch, textLen, device, 3);
    const tokens = `${imageTokens(cfg)} image + ${textLen} text tokens`;
    console.log(`train step ${name}, batch ${batch}, ${tokens}: ${fmt(r.ms)} ms [${fmt(r.spread[0])} .. ${fmt(r.spread[1])}], ${fmt(r.tokensPerSec, 0)} tokens/s`);
  };
  if (device === 'cpu') {
    // the readable TypeScript kernels against the generated WebAssembly ones, on one and two threads
    const [kernelsBefore, threadsBefore] = [getCpuKernels(), getCpuThreads()];
    for (const k of ['ts', 'wasm'] as const) {
      for (const t of [1, 2]) {
        setCpuKernels(k);
        setCpuThreads(t);
        await step(`small config (hidden 128, 4+4 blocks, 64px), ${k} kernels, ${t} thread${t > 1 ? 's' : ''}`, smallConfig, 16, 48);
      }
    }
    setCpuKernels(kernelsBefore);
    setCpuThreads(threadsBefore);
  } else {
    await step('small config (hidden 128, 4+4 blocks, 64px)', smallConfig, 16, 48);
  }
  if (args.config) {
    const cfg = vlmConfigFromJSON(JSON.parse(readFileSync(args.config, 'utf8')), args.config);
    await step(args.config, cfg, Number(args.batch), Number(args.text_len));
  }
  if (!args.skip_222m && !args.quick) await step('nanoVLM-222M', defaultVLMConfig, 1, defaultVLMConfig.lm_max_length);
  for (const kv of [true, false]) {
    console.log(`generate (small config, batch 1, 16-token prompt, 32 new tokens) ${kv ? 'with' : 'without'} KV cache: ${fmt(await benchGenerate(smallConfig, device, kv))} tokens/s`);
  }
  console.log('');
}

for (const device of devices) await benchDevice(device);
closeWebGPU();
