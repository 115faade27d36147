// The benchmark suite: `npm run bench [-- flags]`. Prints matmul GFLOP/s, one
// forward+backward of a small Llama-style decoder, nanoVLM training steps
// (ms, tokens/s, the forward / backward / optimizer split), data loading
// against the step it feeds, nanoVLM-222M's training step (all of it, and the
// projector alone) and its generation, naming the machine, the backend and
// the thread count. Where python3 with PyTorch is installed, the same
// workloads run in PyTorch (bench/reference.py) in the same run, so that each
// figure has a reference measured beside it (machines of one kind differ up
// to 2x; pin both with taskset for single-thread figures).
//
//   npm run bench                                   cpu
//   taskset -c 0 npm run bench -- --threads 1       one pinned core, ours and PyTorch's
//   npm run bench -- --device webgpu                webgpu (a real GPU; llvmpipe with --quick)
//   npm run bench -- --config path/config.json --batch 16 --text_len 48
//                                                   one training step of any nanoVLM config

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { defineFlags, parseCommandLine } from '../cli.ts';
import { useDawn } from '../node/dawn.ts';
import { getTokenizer } from '../node/tokenizer.ts';
import {
  Generator,
  cpuKernelInfo,
  getCpuKernels,
  getCpuThreads,
  setCpuKernels,
  setCpuThreads,
  tensor,
  tidy,
  type DeviceName,
} from '../tensor/index.ts';
import { closeWebGPU, describeAdapter, initWebGPU } from '../tensor/webgpu/device.ts';
import { defaultVLMConfig, vlmConfigFromJSON, type VLMConfig } from '../vlm/config.ts';
import { benchLoading, fashionRows, photoRows } from './data.ts';
import { makeDecoder, type DecoderConfig } from './decoder.ts';
import { benchMatmul } from './matmul.ts';
import {
  benchGenerate,
  benchTrainStep,
  disposeModel,
  imageTokens,
  makeModel,
  smallConfig,
  type StepTiming,
} from './vlm.ts';

const flags = defineFlags({
  device: { type: 'string', default: 'cpu', choices: ['cpu', 'webgpu', 'all'], help: 'which backends to measure' },
  threads: {
    type: 'int',
    min: 1,
    help: 'CPU threads (default: min(2, cores)); the ts/wasm step table always runs 1 and 2',
  },
  config: { type: 'string', metavar: 'FILE', help: 'also time one training step of this nanoVLM config.json' },
  batch: { type: 'int', default: 16, min: 1, help: 'batch size for --config' },
  text_len: { type: 'int', default: 48, min: 1, help: 'text tokens per sample for --config' },
  skip_222m: { type: 'switch', help: 'skip nanoVLM-222M (several minutes on a 2-core CPU)' },
  skip_reference: {
    type: 'switch',
    help: 'do not run the PyTorch reference (bench/reference.py) even where it is installed',
  },
  quick: { type: 'switch', help: 'small sizes only (for llvmpipe)' },
});
const args = parseCommandLine(flags, 'npm run bench --');
if (args.threads) setCpuThreads(args.threads);

/**
 * Runs bench/reference.py (PyTorch) for `what` on `threads` threads: one
 * parsed JSON object per workload, or null where python3 or torch is missing.
 */
/** What bench/reference.py prints for one workload (parsed JSON). */
type Reference = Record<string, any>;
function reference(what: string[], threads: number): Record<string, Reference> | null {
  if (args.skip_reference) return null;
  const script = new URL('./reference.py', import.meta.url).pathname;
  const r = spawnSync('python3', [script, '--threads', String(threads), '--what', what.join(',')], {
    encoding: 'utf8',
    timeout: 1_800_000,
  });
  if (r.status !== 0) {
    if (!referenceWarned)
      console.log(`(no PyTorch reference: ${r.error ? 'python3 not found' : r.stderr.trim().split('\n').pop()})`);
    referenceWarned = true;
    return null;
  }
  return Object.fromEntries(
    r.stdout
      .trim()
      .split('\n')
      .map((line) => {
        const o = JSON.parse(line);
        return [o.what, o];
      }),
  );
}
let referenceWarned = false;

const devices: DeviceName[] = args.device === 'all' ? ['cpu', 'webgpu'] : [args.device];
const fmt = (x: number, d = 1) => x.toFixed(d);

console.log(
  `nanovlm-ts benchmark, ${new Date().toISOString().slice(0, 10)}: ${cpus()[0]?.model ?? 'unknown cpu'}, ` +
    `${cpus().length} cores, node ${process.version}\n`,
);

/** One forward + backward of the decoder of bench/decoder.ts (median of 3 after a warm-up). */
async function benchDecoder(cfg: DecoderConfig, device: DeviceName): Promise<number> {
  const model = makeDecoder(cfg, device);
  const g = new Generator(1);
  const ids = tensor(
    Int32Array.from({ length: cfg.batch * cfg.seq }, () => g.randint(cfg.vocab)),
    { shape: [cfg.batch, cfg.seq], device },
  ).keep();
  const times: number[] = [];
  for (let i = 0; i < 4; i++) {
    const t0 = performance.now();
    const loss = tidy(() => model.step(ids, ids));
    await loss.item(); // sync point
    loss.dispose();
    for (const p of model.params) {
      p.grad?.dispose();
      p.grad = null;
    }
    if (i > 0) times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[1];
}

async function benchDevice(device: DeviceName): Promise<void> {
  const cpu = cpuKernelInfo();
  const threads =
    device === 'cpu'
      ? `, ${getCpuKernels()} kernels${cpu.fma ? ' (relaxed-SIMD FMA)' : ''}` +
        `${cpu.blas ? `, matmul by ${cpu.blas}` : ''}, ${getCpuThreads()} threads`
      : '';
  console.log(`=== ${device}${threads} ===`);
  if (device === 'cpu') {
    // the TypeScript reference loop runs on one thread; the wasm GEMM on one and two
    await benchMatmul([1], 3, {
      kernels: ['ts'],
      shapes: [
        [256, 256, 256],
        [1024, 576, 1536],
      ],
    });
    await benchMatmul([1, 2], 5, { kernels: ['wasm', 'wasm-nofma', ...(cpu.blas ? ['blas' as const] : [])] });
  } else {
    // the kernels themselves (matmul per tile size, attention, dispatch cost) and the host-side counters: bench/gpu.ts
    useDawn();
    console.log(`webgpu adapter: ${describeAdapter((await initWebGPU({ quiet: true })).adapter)}`);
  }

  const decoderCfg: DecoderConfig = { blocks: 4, hidden: 128, heads: 4, mlp: 512, vocab: 512, batch: 8, seq: 128 };
  const decoderMs = await benchDecoder(decoderCfg, device);
  console.log(
    `decoder fwd+bwd (4 blocks, hidden 128, 4 heads, MLP 512, batch 8, seq 128, vocab 512): ${fmt(decoderMs)} ms`,
  );

  const step = async (
    name: string,
    cfg: VLMConfig,
    batch: number,
    textLen: number,
    opts: Parameters<typeof benchTrainStep>[5] = {},
    runs = 3,
  ) => {
    const r = await benchTrainStep(cfg, batch, textLen, device, runs, opts);
    printStep(name, cfg, batch, textLen, r);
    return r;
  };
  let smallStep = 0;
  if (device === 'cpu') {
    // the readable TypeScript kernels (one thread) against the generated WebAssembly ones (one and two),
    // with their own GEMM and, where installed, with OpenBLAS's (the default then)
    const [kernelsBefore, threadsBefore] = [getCpuKernels(), getCpuThreads()];
    const sets = [['ts', false], ['wasm', false], ...(cpu.blas ? [['wasm', true]] : [])] as ['ts' | 'wasm', boolean][];
    for (const [k, withBlas] of sets) {
      for (const t of k === 'ts' ? [1] : [...new Set([1, 2, threadsBefore])]) {
        setCpuKernels(k, { blas: withBlas });
        setCpuThreads(t);
        // the reference loops take half a minute a step: one timed step after one warm-up step
        const r = await step(
          `small config (hidden 128, 4+4 blocks, 64px), ${k} kernels${withBlas ? ` + ${cpu.blas}` : ''}, ` +
            `${t} thread${t > 1 ? 's' : ''}`,
          smallConfig,
          16,
          48,
          k === 'ts' ? {} : { warmup: 20 },
          k === 'ts' ? 1 : 5,
        );
        if (k === 'wasm' && withBlas === Boolean(cpu.blas) && t === threadsBefore) smallStep = r.ms;
      }
    }
    setCpuKernels(kernelsBefore);
    setCpuThreads(threadsBefore);
  } else {
    smallStep = (await step('small config (hidden 128, 4+4 blocks, 64px)', smallConfig, 16, 48)).ms;
  }
  if (args.config) {
    const cfg = vlmConfigFromJSON(JSON.parse(readFileSync(args.config, 'utf8')), args.config);
    await step(args.config, cfg, args.batch, args.text_len);
  }
  for (const kv of [true, false]) {
    const r = await benchGenerate(smallConfig, device, kv);
    console.log(
      `generate (small config, batch 1, 16-token prompt, 32 new tokens) ${kv ? 'with' : 'without'} KV cache: ` +
        `${fmt(r.tokensPerSec)} tokens/s, first token ${fmt(r.ttftMs)} ms`,
    );
  }

  // Data loading on the main thread (what the training loop waits for), against the step it feeds.
  const tokenizer = getTokenizer(new URL('../test/fixtures/tokenizers/smollm2', import.meta.url).pathname);
  const fashion = await benchLoading(
    'Fashion-MNIST layout (40 row groups of 500, 28px PNG)',
    fashionRows(20_000),
    500,
    tokenizer,
    { batchSize: 16, imgSize: 64, batches: 30 },
  );
  console.log(
    `data loading, ${fashion.name}, shuffled, batch 16 at 64px: ${fmt(fashion.msPerBatch)} ms per batch ` +
      `[${fmt(fashion.spread[0])} .. ${fmt(fashion.spread[1])}], ${fmt(fashion.msPerSample, 2)} ms per sample = ` +
      `${fmt((100 * fashion.msPerBatch) / smallStep)}% of the small-config step`,
  );
  const photos = await benchLoading('cauldron layout (row groups of 40, 224px JPEG)', photoRows(240), 40, tokenizer, {
    batchSize: 2,
    imgSize: 224,
    batches: 30,
  });
  const photoLine =
    `data loading, ${photos.name}, shuffled, batch 2 at 224px: ${fmt(photos.msPerBatch)} ms per batch ` +
    `[${fmt(photos.spread[0])} .. ${fmt(photos.spread[1])}], ${fmt(photos.msPerSample, 2)} ms per sample`;

  if (!args.skip_222m && !args.quick) {
    const cfg = defaultVLMConfig;
    const model = await makeModel(cfg, device);
    const full = await step('nanoVLM-222M', cfg, 2, cfg.lm_max_length, { model });
    console.log(`${photoLine} = ${fmt((100 * photos.msPerBatch) / full.ms, 2)}% of the nanoVLM-222M step`);
    await step('nanoVLM-222M, projector only (--freeze vit,lm)', cfg, 2, cfg.lm_max_length, {
      model,
      freeze: ['vit', 'lm'],
    });
    const gen = await benchGenerate(cfg, device, true, { model });
    console.log(
      'generate nanoVLM-222M (batch 1, 49 image + 16 prompt tokens, 32 new, KV cache): ' +
        `${fmt(gen.tokensPerSec)} tokens/s, first token ${fmt(gen.ttftMs)} ms`,
    );
    disposeModel(model);
  } else {
    console.log(photoLine);
  }
  if (device === 'cpu') printReference(getCpuThreads());
  console.log('');
}

/** One line per training step figure. */
function printStep(name: string, cfg: VLMConfig, batch: number, textLen: number, r: StepTiming): void {
  const tokens = `${imageTokens(cfg)} image + ${textLen} text tokens`;
  const { forward, backward, optimizer } = r.phases;
  const phases = `forward ${fmt(forward)}, backward ${fmt(backward)}, optimizer ${fmt(optimizer)}`;
  const heap = r.peakHeapBytes ? `, heap peak ${fmt(r.peakHeapBytes / 2 ** 30, 2)} GiB` : '';
  console.log(
    `train step ${name}, batch ${batch}, ${tokens}: ${fmt(r.ms)} ms [${fmt(r.spread[0])} .. ` +
      `${fmt(r.spread[1])}] (${phases})${heap}, ${fmt(r.tokensPerSec, 0)} tokens/s`,
  );
}

/** The PyTorch figures of the same workloads in the same run: on one thread, and on `threads` (the 222M ones). */
function printReference(threads: number): void {
  const big = args.skip_222m || args.quick ? [] : ['step222', 'decode222'];
  for (const [n, what] of threads === 1
    ? ([[1, ['matmul', 'small', ...big]]] as const)
    : ([
        [1, ['matmul', 'small']],
        [threads, ['small', ...big]],
      ] as const)) {
    const ref = reference([...what], n);
    if (!ref) return;
    console.log(`PyTorch ${ref.small.torch} reference (bench/reference.py, ${n} thread${n > 1 ? 's' : ''}, same run):`);
    for (const [shape, r] of Object.entries(ref.matmul ?? {}) as [string, Reference][]) {
      if (typeof r === 'object')
        console.log(`  matmul ${shape}: ${fmt(r.median, 2)} GFLOP/s [${fmt(r.min, 2)} .. ${fmt(r.max, 2)}]`);
    }
    const line = (name: string, r: Reference) =>
      console.log(`  train step ${name}: ${fmt(r.ms)} ms [${fmt(r.min)} .. ${fmt(r.max)}]`);
    line('small config, batch 16', ref.small);
    if (ref.step222) line('nanoVLM-222M, batch 2', ref.step222);
    if (ref.decode222)
      console.log(
        `  generate nanoVLM-222M (KV cache): ${fmt(ref.decode222.tokens_per_sec)} tokens/s, ` +
          `first token ${fmt(ref.decode222.ttft_ms)} ms`,
      );
  }
}

for (const device of devices) await benchDevice(device);
closeWebGPU();
