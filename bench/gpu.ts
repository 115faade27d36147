// The GPU benchmark, in one call: what a lent GPU machine runs. It prints
// the adapter and its features, the host cost of a dispatch, matmul TFLOP/s
// at 4096 (float32 through each tile size, and float16 operands: in WGSL f16
// slabs where the device has shader-f16, and in float32 ones), attention forward and
// forward + backward at nanoVLM-222M's decoder shapes, and for nanoVLM
// training steps (batch 8 and 32, --dtype float32 and float16, as train.ts
// takes them) the time per step, tokens/s and the host-side counters
// (dispatches, compute passes, submits, buffers and bind groups created,
// bytes written and read back), for the default preset's small model and for
// nanoVLM-222M; then generation tokens/s and one decoded token's counters.
// Each line is also one JSON record (--json FILE).
//
//   npx tsx bench/gpu.ts             everything (on a real GPU)
//   npx tsx bench/gpu.ts --quick     tiny sizes, the small model only (llvmpipe, SwiftShader: proves it runs)
//   npx tsx bench/gpu.ts --quick --batch_222m 1    and nanoVLM-222M's step at batch 1 and its generation (minutes)
//
// On a GPU machine without Node (see ../shared/device/README.md):
//   bash ../shared/device/make-bundle.sh bench/gpu.ts     # here: builds .gpu/ (git-ignored)
//   bash .gpu/run.sh gpu.mjs                              # there, with .gpu carried
//
// The counters are taken twice: from the backend (counters()) and by wrapping
// the Dawn device's own methods, so the figures do not depend on the
// backend counting itself right. Every timing ends with a device sync.

import { writeFileSync } from 'node:fs';
import { defineFlags, parseCommandLine } from '../cli.ts';
import { AdamW, clipGradNorm } from '../nn/index.ts';
import { useDawn } from '../node/dawn.ts';
import {
  Generator,
  GradScaler,
  autocast,
  closeWebGPU,
  initWebGPU,
  manualSeed,
  randn,
  roundToHalf,
  scaledDotProductAttention,
  setCpuThreads,
  stack,
  tensor,
  tidy,
  tidyForward,
  type Tensor,
  type View,
} from '../tensor/index.ts';
import { contiguousStrides } from '../tensor/shape.ts';
import type { GpuCounters, MatmulPlan, WebGPUBackend } from '../tensor/webgpu/backend.ts';
import { describeAdapter } from '../tensor/webgpu/device.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { modelConfig, resolveRun } from '../train_config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { benchGenerate, disposeModel, makeModel } from './vlm.ts';

const flags = defineFlags({
  quick: { type: 'switch', help: 'matmul at 256 and the small model only (for software adapters)' },
  size: { type: 'int', min: 16, help: 'matmul size (default 4096, 256 with --quick)' },
  steps: { type: 'int', min: 1, help: 'measured training steps (default 10, 3 with --quick)' },
  seq: { type: 'int', min: 1, help: 'attention sequence length (default 1024, 64 with --quick)' },
  skip_222m: { type: 'switch', help: 'no nanoVLM-222M training step' },
  batch_222m: {
    type: 'int',
    min: 1,
    help: 'the nanoVLM-222M steps at this batch only (default 8 and 32); with --quick they and its generation run too',
  },
  backend: { type: 'string', metavar: 'NAME', help: 'a Dawn backend (vulkan, metal, d3d12, opengles)' },
  adapter: { type: 'string', metavar: 'TEXT', help: 'the first adapter whose name contains TEXT' },
  json: { type: 'string', metavar: 'FILE', help: 'also write every record to FILE' },
});
const args = parseCommandLine(flags, 'npx tsx bench/gpu.ts');

const records: object[] = [];
/** Prints a labelled line and keeps the record for --json. */
function report(what: string, record: Record<string, unknown>, line: string): void {
  records.push({ what, ...record });
  console.log(`${what.padEnd(28)} ${line}`);
}

// ---------------------------------------------------------------- counting Dawn calls

/** Device calls counted by wrapping the device's methods (independent of the backend's own counters). */
interface DawnCalls {
  createBuffer: number;
  createBindGroup: number;
  submit: number;
  beginComputePass: number;
  dispatchWorkgroups: number;
  writeBufferBytes: number;
  mapAsync: number;
  mapBytes: number;
}

function countDawnCalls(device: GPUDevice): DawnCalls {
  const n: DawnCalls = {
    createBuffer: 0,
    createBindGroup: 0,
    submit: 0,
    beginComputePass: 0,
    dispatchWorkgroups: 0,
    writeBufferBytes: 0,
    mapAsync: 0,
    mapBytes: 0,
  };
  const d = device as unknown as Record<string, (...a: unknown[]) => unknown>;
  const wrap = <T extends object>(obj: T, name: string, after: (result: unknown, a: unknown[]) => void) => {
    const o = obj as unknown as Record<string, (...a: unknown[]) => unknown>;
    const original = o[name].bind(obj);
    o[name] = (...a: unknown[]) => {
      const r = original(...a);
      after(r, a);
      return r;
    };
  };
  wrap(d, 'createBuffer', (buffer) => {
    n.createBuffer++;
    wrap(buffer as object, 'mapAsync', (_, a) => {
      n.mapAsync++;
      n.mapBytes += (a[2] as number | undefined) ?? (buffer as GPUBuffer).size;
    });
  });
  wrap(d, 'createBindGroup', () => n.createBindGroup++);
  wrap(device.queue, 'submit', () => n.submit++);
  wrap(
    device.queue,
    'writeBuffer',
    (_, a) => (n.writeBufferBytes += (a[4] as number | undefined) ?? (a[2] as ArrayBuffer).byteLength),
  );
  wrap(d, 'createCommandEncoder', (encoder) => {
    wrap(encoder as object, 'beginComputePass', (pass) => {
      n.beginComputePass++;
      wrap(pass as object, 'dispatchWorkgroups', () => n.dispatchWorkgroups++);
    });
  });
  return n;
}

/** Where the dispatches go, the most first. */
function byOp(c: GpuCounters): string {
  const ops = Object.entries(c.dispatchesByOp).filter(([, n]) => n > 0);
  return ops
    .sort((x, y) => y[1] - x[1])
    .map(([op, n]) => `${op} ${n}`)
    .join(', ');
}

/** b - a, per step, for every numeric field. */
function perStep<T extends object>(a: T, b: T, steps: number): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(b)) {
    const before = (a as Record<string, unknown>)[k];
    out[k] =
      typeof v === 'number'
        ? +((v - (before as number)) / steps).toFixed(1)
        : perStep((before ?? {}) as Record<string, number>, v as Record<string, number>, steps); // dispatchesByOp
  }
  return out as T;
}

// ---------------------------------------------------------------- matmul

/** A host matrix of uniform values in [-1, 1) and its device copy, as a view. */
async function matrix(
  b: WebGPUBackend,
  rows: number,
  cols: number,
  seed: number,
): Promise<{ host: Float32Array; view: View }> {
  const g = new Generator(seed);
  const host = Float32Array.from({ length: rows * cols }, () => g.random() * 2 - 1);
  const storage = b.alloc('float32', host.length);
  b.write(storage, host);
  return { host, view: { storage, shape: [rows, cols], strides: [cols, 1], offset: 0, dtype: 'float32' } };
}

/** Times one matmul plan at n x n x n: TFLOP/s, and the worst error of 64 sampled outputs against float64. */
async function timeMatmul(b: WebGPUBackend, n: number, plan: MatmulPlan | undefined, half: boolean) {
  const [A, B] = [await matrix(b, n, n, 1), await matrix(b, n, n, 2)];
  const run = () => (half ? b.matmulF16(A.view, B.view, plan) : b.matmul(A.view, B.view, plan));
  const first = run();
  const got = await b.read({
    storage: first,
    shape: [n, n],
    strides: contiguousStrides([n, n]),
    offset: 0,
    dtype: 'float32',
  });
  b.release(first);
  // error per output over sqrt(K) (a float32 dot product of K terms drifts like sqrt(K) ulp)
  const [ra, rb] = half ? [A.host.map(roundToHalf), B.host.map(roundToHalf)] : [A.host, B.host];
  let err = 0;
  for (let s = 0; s < 64; s++) {
    const [i, j] = [(s * 7919) % n, (s * 104729) % n];
    let ref = 0;
    for (let k = 0; k < n; k++) ref += ra[i * n + k] * rb[k * n + j];
    err = Math.max(err, Math.abs(got[i * n + j] - ref) / Math.sqrt(n));
  }
  // as many runs as take about a second, in one sync
  const t0 = performance.now();
  b.release(run());
  await b.sync();
  const once = performance.now() - t0;
  const reps = Math.max(1, Math.min(50, Math.round(1000 / once)));
  const t1 = performance.now();
  for (let r = 0; r < reps; r++) b.release(run());
  await b.sync();
  const ms = (performance.now() - t1) / reps;
  for (const m of [A, B]) b.release(m.view.storage);
  const gflops = (2 * n ** 3) / ms / 1e6;
  return { ms: +ms.toFixed(3), gflops: +gflops.toPrecision(4), maxErrOverSqrtK: +err.toExponential(2) };
}

// ---------------------------------------------------------------- host overhead

async function dispatchCost(b: WebGPUBackend) {
  const x = (await tensor(new Float32Array(1024)).to('webgpu')).keep();
  const ops = 2000;
  // the host's part (recording, and the submits on the way) and the whole, until the device is done
  const time = async () => {
    const t0 = performance.now();
    for (let i = 0; i < ops; i++) tidy(() => void x.add(1));
    const recorded = performance.now();
    await b.sync();
    return [recorded - t0, performance.now() - t0].map((ms) => (ms * 1000) / ops);
  };
  await time();
  const [first, second] = [await time(), await time()];
  const [recordUs, us] = [0, 1].map((k) => Math.min(first[k], second[k]));
  const t0 = performance.now();
  await x.sum().item();
  const readMs = performance.now() - t0;
  x.dispose();
  return { usPerOp: +us.toFixed(1), recordUsPerOp: +recordUs.toFixed(1), readbackMs: +readMs.toFixed(2) };
}

// ---------------------------------------------------------------- a training step

/**
 * Training steps as train.ts takes them (fresh inputs uploaded, forward
 * under tidyForward, backward, gradient clipping, AdamW; with float16,
 * autocast and GradScaler, the update skipped on the device on overflow),
 * measured with the loss and the norm read every step, one step late as
 * train.ts does, and, in float32, also with one read per run (a read only per
 * log line, as nanoGPT does).
 */
async function trainSteps(
  b: WebGPUBackend,
  calls: DawnCalls,
  name: string,
  cfg: VLMConfig,
  batch: number,
  steps: number,
  dtype: 'float32' | 'float16',
  oneReadToo: boolean,
) {
  manualSeed(0);
  const model = await new VisionLanguageModel(cfg).to('webgpu');
  const mp = model.MP.parameters();
  const opt = new AdamW([
    { params: mp, lr: 1e-3 },
    { params: model.parameters().filter((p) => !mp.includes(p)), lr: 1e-3 },
  ]);
  const scaler = dtype === 'float16' ? new GradScaler('webgpu') : null;
  const g = new Generator(1);
  const T = cfg.lm_max_length;
  const S = cfg.vit_img_size;
  const ids = Int32Array.from({ length: batch * T }, () => g.randint(cfg.lm_vocab_size));
  const pixels = Float32Array.from({ length: batch * 3 * S * S }, () => g.random());
  const step = async (): Promise<Tensor> => {
    const loss = tidy(() => {
      const idsT = tensor(ids, { shape: [batch, T], device: 'webgpu' });
      const image = tensor(pixels, { shape: [batch, 3, S, S], device: 'webgpu' });
      const mask = tensor(new Int32Array(batch * T).fill(1), { shape: [batch, T], device: 'webgpu' });
      const forward = () => model.forward(idsT, image, mask, idsT);
      const { loss } = tidyForward(() => autocast(scaler ? 'float16' : null, forward));
      (scaler ? scaler.scaleLoss(loss!) : loss!).backward();
      return loss!;
    });
    scaler?.unscale(model.parameters());
    const norm = clipGradNorm(model.parameters(), 1);
    if (scaler)
      await scaler.step(opt, norm); // waits for the previous step's overflow flag only
    else opt.step();
    opt.zeroGrad();
    const logged = tidy(() => stack([loss, norm])).keep();
    loss.dispose();
    norm.dispose();
    return logged;
  };
  const tokens = batch * (cfg.IMAGE_TOKEN_LENGTH + T);
  const modes = oneReadToo ? (['read every step', 'one read per run'] as const) : (['read every step'] as const);
  for (const mode of modes) {
    const lossSum = tensor([0, 0], { device: 'webgpu' }).keep();
    const run = async (n: number) => {
      let previous: Promise<unknown> | null = null;
      for (let i = 0; i < n; i++) {
        const logged = await step();
        if (mode === 'read every step') {
          // as train.ts: the read starts behind this step's work, and is awaited once the next step is queued
          const values = logged.data();
          if (previous) await previous; // sync point: the loss and the norm of the step before
          previous = values;
        } else tidy(() => void lossSum.assign(lossSum.add(logged)));
        logged.dispose();
      }
      await previous;
      await lossSum.data(); // sync point: once, after the steps
    };
    await run(3); // warm-up: pipelines compiled, pools and the bind group cache filled
    const [c0, d0, t0] = [b.counters(), { ...calls }, performance.now()];
    await run(steps);
    const ms = (performance.now() - t0) / steps;
    const backend = perStep(c0, b.counters(), steps);
    const dawn = perStep(d0, calls, steps);
    lossSum.dispose();
    const c = backend;
    const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;
    const line = [
      `${mode}: ${ms.toFixed(1)} ms/step, ${Math.round((tokens * 1000) / ms)} tokens/s; per step:`,
      `${c.dispatches} dispatches, ${c.computePasses} passes, ${c.submits} submits,`,
      `${c.buffersCreated} buffers and ${c.bindGroupsCreated} bind groups created,`,
      `${kib(c.bytesWritten)} written, ${c.bytesRead} B read in ${c.reads} reads`,
      `(Dawn calls seen: ${dawn.dispatchWorkgroups} dispatches, ` +
        `${dawn.beginComputePass} passes, ${dawn.submit} submits,`,
      `${dawn.createBuffer} createBuffer, ${dawn.createBindGroup} createBindGroup,`,
      `${kib(dawn.writeBufferBytes)} writeBuffer, ${dawn.mapAsync} maps)`,
    ].join(' ');
    const record = { mode, batch, dtype, msPerStep: ms, tokensPerSec: (tokens * 1000) / ms, backend, dawn };
    report(`train ${name} b${batch} ${dtype}`, record, `${line}\n  dispatches by op: ${byOp(c)}`);
  }
  for (const p of model.parameters()) p.dispose();
  opt.dispose();
  scaler?.dispose();
}

// ---------------------------------------------------------------- attention

/**
 * Causal attention at a decoder's shapes: forward alone, and forward +
 * backward (the gradients of q, k and v), timed after a warm-up, with the
 * FLOPs a causal kernel needs (half of the 4 B H T^2 D of QK^T and PV; the
 * backward 2.5 times the forward).
 */
async function timeAttention(b: WebGPUBackend, B: number, H: number, Hkv: number, T: number, D: number) {
  const g = new Generator(3);
  const make = (heads: number) => randn([B, heads, T, D], { generator: g, device: 'webgpu' }).setRequiresGrad().keep();
  const [q, k, v] = [make(H), make(Hkv), make(Hkv)];
  const forward = () => tidy(() => void scaledDotProductAttention(q, k, v, { isCausal: true }));
  const both = () => {
    tidy(() => scaledDotProductAttention(q, k, v, { isCausal: true }).sum().backward());
    for (const x of [q, k, v]) {
      x.grad?.dispose();
      x.grad = null;
    }
  };
  const time = async (fn: () => void) => {
    fn();
    await b.sync();
    const t0 = performance.now();
    fn();
    await b.sync();
    const reps = Math.max(1, Math.min(20, Math.round(500 / (performance.now() - t0))));
    const t1 = performance.now();
    for (let r = 0; r < reps; r++) fn();
    await b.sync();
    return (performance.now() - t1) / reps;
  };
  const [fwdMs, bothMs] = [await time(forward), await time(both)];
  for (const x of [q, k, v]) x.dispose();
  const flops = 2 * B * H * T * T * D;
  return {
    fwdMs: +fwdMs.toFixed(3),
    fwdBwdMs: +bothMs.toFixed(3),
    fwdTflops: +(flops / fwdMs / 1e9).toPrecision(3),
    fwdBwdTflops: +((3.5 * flops) / bothMs / 1e9).toPrecision(3),
  };
}

// ---------------------------------------------------------------- main

setCpuThreads(1); // the host side needs no CPU workers (and a bundle carries none)
useDawn();
const b = await initWebGPU({ quiet: true, backend: args.backend, adapter: args.adapter });
const calls = countDawnCalls(b.device);
const l = b.device.limits;
report('adapter', { ...b.adapter, date: new Date().toISOString() }, describeAdapter(b.adapter));
report(
  'limits',
  {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
  },
  `binding ${l.maxStorageBufferBindingSize} B, buffer ${l.maxBufferSize} B, ` +
    `${l.maxComputeInvocationsPerWorkgroup} invocations and ` +
    `${l.maxComputeWorkgroupStorageSize} B workgroup memory per workgroup`,
);
const cost = await dispatchCost(b);
report(
  'host overhead',
  cost,
  `${cost.usPerOp} us per small op (2000 in a row; the host's part ${cost.recordUsPerOp} us), ` +
    `${cost.readbackMs} ms for a submit + 4-byte readback`,
);

const n = args.size ?? (args.quick ? 256 : 4096);
const halfPaths = b.shaderF16 ? [true, false] : [false]; // with shader-f16: f16 slabs, then float32 ones
const plans: [string, MatmulPlan | undefined, boolean, boolean][] = [
  ['planned', undefined, false, false],
  ...(['small', 'medium', 'large'] as const).map((tile): [string, MatmulPlan, boolean, boolean] => [
    tile,
    { kind: 'tiled', tile, splits: 1 },
    false,
    false,
  ]),
  ...halfPaths.map((f16): [string, undefined, boolean, boolean] => [
    `float16 in ${f16 ? 'f16' : 'float32'} slabs, planned`,
    undefined,
    true,
    f16,
  ]),
];
const hasShaderF16 = b.shaderF16;
for (const [label, plan, half, f16] of plans) {
  if (plan && plan.tile !== 'small' && l.maxComputeInvocationsPerWorkgroup < 256) continue;
  b.shaderF16 = f16;
  const r = await timeMatmul(b, n, plan, half);
  report(
    `matmul ${n} ${label}`,
    { n, plan: plan ?? b.planMatmul(n, n, n, 1, false), half, shaderF16: f16, ...r },
    `${(r.gflops / 1000).toFixed(3)} TFLOP/s = ${r.gflops} GFLOP/s (${r.ms} ` +
      `ms), max error / sqrt(K) ${r.maxErrOverSqrtK}`,
  );
}
b.shaderF16 = hasShaderF16;

// attention at nanoVLM-222M's decoder shapes (SmolLM2-135M: 9 query heads, 3 key/value heads, head dim 64)
const seq = args.seq ?? (args.quick ? 64 : 1024);
for (const batch of args.quick ? [2] : [8, 32]) {
  const r = await timeAttention(b, batch, 9, 3, seq, 64);
  report(
    `attention b${batch} T${seq}`,
    { batch, heads: 9, kvHeads: 3, seq, headDim: 64, causal: true, ...r },
    `forward ${r.fwdMs} ms (${r.fwdTflops} TFLOP/s), forward + backward ${r.fwdBwdMs} ms (${r.fwdBwdTflops} TFLOP/s)`,
  );
}

const steps = args.steps ?? (args.quick ? 3 : 10);
const small = modelConfig(resolveRun({ preset: 'default' })); // the small VLM of `npm run train`
const big = { ...defaultVLMConfig, vlm_load_backbone_weights: false };
for (const dtype of ['float32', 'float16'] as const) {
  await trainSteps(b, calls, 'default preset', small, 32, steps, dtype, dtype === 'float32');
}
// nanoVLM-222M on a GPU; on a software adapter only with --quick --batch_222m 1 (for its counters)
const with222m = (!args.quick || args.batch_222m !== undefined) && !args.skip_222m;
if (with222m) {
  for (const batch of args.batch_222m ? [args.batch_222m] : [8, 32])
    for (const dtype of ['float32', 'float16'] as const)
      await trainSteps(b, calls, 'nanoVLM-222M', big, batch, steps, dtype, false);
}

/**
 * The backend's counters for one decoded token: the third new one (the
 * prompt and the first token behind), from the read of one to the next.
 */
async function countsPerToken(model: VisionLanguageModel, cfg: VLMConfig): Promise<GpuCounters> {
  const ids = tensor(new Int32Array(16).fill(1), { shape: [1, 16], device: 'webgpu' });
  const image = randn([1, 3, cfg.vit_img_size, cfg.vit_img_size], { device: 'webgpu' });
  const seen: GpuCounters[] = [];
  model.eval();
  const onTokens = () => void seen.push(b.counters());
  await model.generate(ids, image, null, { greedy: true, maxNewTokens: 3, eosTokenId: null, onTokens });
  model.train();
  [ids, image].forEach((t) => t.dispose());
  return perStep(seen[1], seen[2], 1);
}

// generation: batch 1, greedy, the KV cache (bench/vlm.ts)
const generations: [string, VLMConfig][] = [['default preset', small]];
if (with222m) generations.push(['nanoVLM-222M', big]);
for (const [name, cfg] of generations) {
  const newTokens = args.quick ? 8 : 32;
  const model = await makeModel(cfg, 'webgpu');
  const r = await benchGenerate(cfg, 'webgpu', true, { newTokens, runs: args.quick ? 1 : 3, model });
  const perToken = await countsPerToken(model, cfg);
  disposeModel(model);
  report(
    `generate ${name}`,
    { newTokens, promptLen: 16, ...r, perToken },
    `${r.tokensPerSec.toFixed(1)} tokens/s after the first, first token in ${r.ttftMs.toFixed(1)} ms ` +
      `(batch 1, 16-token prompt, ${newTokens} new, KV cache); per token ${perToken.dispatches} dispatches, ` +
      `${perToken.submits} submits\n  dispatches by op: ${byOp(perToken)}`,
  );
}

if (args.json) writeFileSync(args.json, JSON.stringify(records, null, 1));
closeWebGPU();
