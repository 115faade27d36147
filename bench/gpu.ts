// The GPU benchmark, in one call: what a lent GPU machine runs. It prints
// the adapter and its features, the host cost of a dispatch, matmul TFLOP/s
// at 4096 (float32 through each tile size, and float16 storage), and for a
// nanoVLM training step the host-side counters (dispatches, compute passes,
// submits, buffers and bind groups created, bytes written and read back)
// and the time per step, for the default preset's small model and for
// nanoVLM-222M. Each line is also one JSON record (--json FILE).
//
//   npx tsx bench/gpu.ts             everything (on a real GPU)
//   npx tsx bench/gpu.ts --quick     matmul at 256, the small model only (llvmpipe, SwiftShader)
//
// On a GPU machine without Node (see ../shared/device/README.md):
//   bash ../shared/device/make-bundle.sh bench/gpu.ts     # here: builds .gpu/ (git-ignored)
//   bash .gpu/run.sh gpu.mjs                              # there, with .gpu carried
//
// The counters are taken twice: from the backend (counters()) and by wrapping
// the Dawn device's own methods, so the figures do not depend on the
// backend counting itself right. Every timing ends with a device sync.

import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { AdamW, clipGradNorm } from '../nn/index.ts';
import { useDawn } from '../node/dawn.ts';
import {
  Generator,
  closeWebGPU,
  initWebGPU,
  manualSeed,
  setCpuThreads,
  tensor,
  tidy,
  type Tensor,
  type View,
} from '../tensor/index.ts';
import { contiguousStrides } from '../tensor/shape.ts';
import type { MatmulPlan, WebGPUBackend } from '../tensor/webgpu/backend.ts';
import { describeAdapter } from '../tensor/webgpu/device.ts';
import { defaultVLMConfig, type VLMConfig } from '../vlm/config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    size: { type: 'string' },
    steps: { type: 'string' },
    skip_222m: { type: 'boolean', default: false },
    backend: { type: 'string' },
    adapter: { type: 'string' },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: npx tsx bench/gpu.ts [flags]
  --quick          matmul at 256 and the small model only (for software adapters)
  --size N         matmul size (default 4096, 256 with --quick)
  --steps N        measured training steps (default 10, 3 with --quick)
  --skip_222m      no nanoVLM-222M training step
  --backend NAME   a Dawn backend (vulkan, metal, d3d12, opengles)
  --adapter TEXT   the first adapter whose name contains TEXT
  --json FILE      also write every record to FILE`);
  process.exit(0);
}

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

/** b - a, per step, for every numeric field. */
function perStep<T extends object>(a: T, b: T, steps: number): T {
  const out: Record<string, number> = {};
  for (const k of Object.keys(b))
    out[k] = +(((b as Record<string, number>)[k] - (a as Record<string, number>)[k]) / steps).toFixed(1);
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

/** float32 -> float16 -> float32 (ties to even): what the float16-storage kernel multiplies. */
function roundHalf(x: number): number {
  const e = Math.floor(Math.log2(Math.abs(x)));
  if (!Number.isFinite(e)) return x;
  const step = 2 ** (Math.max(e, -14) - 10);
  const q = Math.abs(x) / step;
  const r = Math.floor(q);
  return Math.sign(x) * (q - r > 0.5 || (q - r === 0.5 && r % 2 === 1) ? r + 1 : r) * step;
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
  const [ra, rb] = half ? [A.host.map(roundHalf), B.host.map(roundHalf)] : [A.host, B.host];
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
  const time = async () => {
    const t0 = performance.now();
    for (let i = 0; i < ops; i++) tidy(() => void x.add(1));
    await b.sync();
    return ((performance.now() - t0) * 1000) / ops;
  };
  await time();
  const us = Math.min(await time(), await time());
  const t0 = performance.now();
  await x.sum().item();
  const readMs = performance.now() - t0;
  x.dispose();
  return { usPerOp: +us.toFixed(1), readbackMs: +readMs.toFixed(2) };
}

// ---------------------------------------------------------------- a training step

/** train.ts's default preset: the small VLM of `npm run train` (copied: importing train.ts would run it). */
const defaultPreset: Partial<VLMConfig> = {
  vit_hidden_dim: 64,
  vit_inter_dim: 256,
  vit_patch_size: 8,
  vit_img_size: 32,
  vit_n_heads: 4,
  vit_n_blocks: 2,
  lm_hidden_dim: 64,
  lm_inter_dim: 192,
  lm_n_heads: 4,
  lm_n_kv_heads: 2,
  lm_n_blocks: 2,
  lm_vocab_size: 64,
  IMAGE_TOKEN_LENGTH: 4,
  lm_max_length: 16,
  TOTAL_SEQUENCE_LENGTH: 20,
  vlm_load_backbone_weights: false,
};

/**
 * Training steps as train.ts does them (fresh inputs uploaded, forward,
 * backward, gradient clipping, AdamW), measured two ways: reading the loss
 * and the gradient norm every step (train.ts today), and summing the losses
 * on the device and reading the sum once after all the steps (the target: a
 * read only per log line, as nanoGPT does).
 */
async function trainSteps(
  b: WebGPUBackend,
  calls: DawnCalls,
  name: string,
  cfg: VLMConfig,
  batch: number,
  steps: number,
) {
  manualSeed(0);
  const model = await new VisionLanguageModel(cfg).to('webgpu');
  const mp = model.MP.parameters();
  const opt = new AdamW([
    { params: mp, lr: 1e-3 },
    { params: model.parameters().filter((p) => !mp.includes(p)), lr: 1e-3 },
  ]);
  const g = new Generator(1);
  const T = cfg.lm_max_length;
  const S = cfg.vit_img_size;
  const ids = Int32Array.from({ length: batch * T }, () => g.randint(cfg.lm_vocab_size));
  const pixels = Float32Array.from({ length: batch * 3 * S * S }, () => g.random());
  const step = (): { loss: Tensor; norm: Tensor } => {
    const out = tidy(() => {
      const idsT = tensor(ids, { shape: [batch, T], device: 'webgpu' });
      const image = tensor(pixels, { shape: [batch, 3, S, S], device: 'webgpu' });
      const mask = tensor(new Int32Array(batch * T).fill(1), { shape: [batch, T], device: 'webgpu' });
      const { loss } = model.forward(idsT, image, mask, idsT);
      loss!.backward();
      return loss!;
    });
    const norm = clipGradNorm(model.parameters(), 1);
    opt.step();
    opt.zeroGrad();
    return { loss: out, norm };
  };
  const tokens = batch * (cfg.IMAGE_TOKEN_LENGTH + T);
  for (const mode of ['read every step', 'one read per run'] as const) {
    const lossSum = tensor([0], { device: 'webgpu' }).keep();
    const run = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const s = step();
        if (mode === 'read every step') {
          await s.loss.item(); // sync point: as train.ts reads the loss ...
          await s.norm.item(); // ... and the gradient norm each step
        } else tidy(() => void lossSum.assign(lossSum.add(s.loss)));
        s.loss.dispose();
        s.norm.dispose();
      }
      await lossSum.item(); // sync point: once, after the steps
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
      `(Dawn calls seen: ${dawn.dispatchWorkgroups} dispatches, ${dawn.beginComputePass} passes, ${dawn.submit} submits,`,
      `${dawn.createBuffer} createBuffer, ${dawn.createBindGroup} createBindGroup,`,
      `${kib(dawn.writeBufferBytes)} writeBuffer, ${dawn.mapAsync} maps)`,
    ].join(' ');
    report(`train ${name}`, { mode, batch, msPerStep: ms, tokensPerSec: (tokens * 1000) / ms, backend, dawn }, line);
  }
  for (const p of model.parameters()) p.dispose();
  opt.zeroGrad();
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
    `${l.maxComputeInvocationsPerWorkgroup} invocations and ${l.maxComputeWorkgroupStorageSize} B workgroup memory per workgroup`,
);
const cost = await dispatchCost(b);
report(
  'host overhead',
  cost,
  `${cost.usPerOp} us per small op (2000 in a row), ${cost.readbackMs} ms for a submit + 4-byte readback`,
);

const n = Number(args.size ?? (args.quick ? 256 : 4096));
const plans: [string, MatmulPlan | undefined, boolean][] = [
  ['planned', undefined, false],
  ...(['small', 'medium', 'large'] as const).map((tile): [string, MatmulPlan, boolean] => [
    tile,
    { kind: 'tiled', tile, splits: 1 },
    false,
  ]),
  ['f16 storage, planned', undefined, true],
];
for (const [label, plan, half] of plans) {
  if (plan && plan.tile !== 'small' && l.maxComputeInvocationsPerWorkgroup < 256) continue;
  const r = await timeMatmul(b, n, plan, half);
  report(
    `matmul ${n} ${label}`,
    { n, plan: plan ?? b.planMatmul(n, n, n, 1, false, !half), half, ...r },
    `${(r.gflops / 1000).toFixed(3)} TFLOP/s = ${r.gflops} GFLOP/s (${r.ms} ms), max error / sqrt(K) ${r.maxErrOverSqrtK}`,
  );
}

const steps = Number(args.steps ?? (args.quick ? 3 : 10));
await trainSteps(b, calls, 'default preset', { ...defaultVLMConfig, ...defaultPreset }, 32, steps);
if (!args.quick && !args.skip_222m)
  await trainSteps(b, calls, 'nanoVLM-222M', { ...defaultVLMConfig, vlm_load_backbone_weights: false }, 8, steps);

if (args.json) writeFileSync(args.json, JSON.stringify(records, null, 1));
closeWebGPU();
