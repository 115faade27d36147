// Train a vision-language model (nanoVLM's train.py).
//
//   npm run train                        # the built-in shapes dataset, a small VLM, no downloads
//   npm run train -- --preset nanovlm-222m --vit path/to/siglip --lm path/to/smollm2 \
//     --tokenizer path/to/smollm2 --train_data path/to/the_cauldron/*.parquet --mmstar path/to/mmstar.parquet
//
// Reading order: the config block, then main(): data, model, optimizer, the loop.

import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BuiltinVQADataset, buildBuiltinTokenizer } from './data/builtin.ts';
import { MMStarCollator, VQACollator, type MMStarBatch, type VQABatch, type VQAItem } from './data/collators.ts';
import { MMStarDataset, VQADataset, checkMultipleChoiceWithRegex, openMMStarRows, openVQARows, trainValSplit, type Dataset } from './data/datasets.ts';
import { DataLoader } from './data/loader.ts';
import { createTokenizer, getTokenizer, type Tokenizer } from './data/tokenizer.ts';
import { AdamW, clipGradNorm, getLr } from './nn/index.ts';
import { saveSafetensors, loadSafetensors } from './nn/safetensors_fs.ts';
import { plotTrainingCurves } from './plot.ts';
import { cpuKernelInfo, defaultGenerator, getCpuThreads, manualSeed, noGrad, setCpuKernels, setCpuThreads, tensor, tidy, type CpuKernels, type DeviceName } from './tensor/index.ts';
import { closeWebGPU, resolveDevice } from './tensor/webgpu/device.ts';
import { defaultVLMConfig, type VLMConfig } from './vlm/config.ts';
import { VisionLanguageModel } from './vlm/vision_language_model.ts';

// ---------------------------------------------------------------- config
// TrainConfig with nanoVLM's names, plus what a local run needs.
const trainDefaults = {
  lr_mp: 2e-3, // the projector starts random: it may move fast
  lr_backbones: 1e-4, // pretrained backbones: small steps, so they are not wrecked early
  data_cutoff_idx: 0, // use at most this many rows (0: all)
  val_ratio: 0.01,
  batch_size: 256,
  gradient_accumulation_steps: 1,
  mmstar_batch_size: 32,
  max_grad_norm: 0, // 0: no clipping
  eval_interval: 250,
  epochs: 5,
  max_steps: 0, // 0: epochs x batches per epoch
  max_minutes: 0, // 0: no time limit
  seed: 0,
  num_workers: 0, // image decoding threads
  builtin_train_size: 20000,
  builtin_val_size: 500,
};
type TrainConfig = typeof trainDefaults;

// --preset: starting points; any flag overrides them.
const presets: Record<string, { train: Partial<TrainConfig>; vlm: Partial<VLMConfig> }> = {
  // A small VLM on the built-in shapes dataset: learns on a laptop CPU in minutes.
  default: {
    train: { lr_mp: 1e-3, lr_backbones: 1e-3, batch_size: 32, eval_interval: 500, epochs: 1, max_grad_norm: 1, max_minutes: 10, builtin_train_size: 160000 },
    vlm: {
      vit_hidden_dim: 64, vit_inter_dim: 256, vit_patch_size: 8, vit_img_size: 32, vit_n_heads: 4, vit_n_blocks: 2,
      lm_hidden_dim: 64, lm_inter_dim: 192, lm_n_heads: 4, lm_n_kv_heads: 2, lm_n_blocks: 2, lm_vocab_size: 64,
      IMAGE_TOKEN_LENGTH: 4, lm_max_length: 16, TOTAL_SEQUENCE_LENGTH: 20, vlm_load_backbone_weights: false,
    },
  },
  // nanoVLM-222M: SigLIP-B/16 + SmolLM2-135M from local folders (--vit, --lm, --tokenizer).
  'nanovlm-222m': { train: {}, vlm: {} },
};

const vlmDefaults = defaultVLMConfig;
const options = {
  preset: { type: 'string', default: 'default' },
  vit: { type: 'string' },
  lm: { type: 'string' },
  tokenizer: { type: 'string' },
  train_data: { type: 'string', multiple: true },
  val_data: { type: 'string', multiple: true },
  test_data: { type: 'string' },
  mmstar: { type: 'string' },
  device: { type: 'string', default: 'auto' },
  cpu_kernels: { type: 'string' },
  threads: { type: 'string' },
  resume: { type: 'boolean', default: false },
  out: { type: 'string', default: 'checkpoints/default' },
  help: { type: 'boolean', default: false },
  // every config field is a flag too; values are parsed by resolveConfig
  ...Object.fromEntries(Object.keys({ ...trainDefaults, ...vlmDefaults }).map((k) => [k, { type: 'string' as const }])),
} as const;
const args = parseFlags();

/** The command line, or one line saying what is wrong with it. */
function parseFlags() {
  try {
    return parseArgs({ options }).values;
  } catch (e) {
    console.error(`error: ${(e as Error).message} (npm run train -- --help lists the flags)`);
    process.exit(2);
  }
}

if (args.help) {
  console.log(`usage: npx tsx train.ts [--preset default|nanovlm-222m] [flags]

  --preset NAME        default (built-in shapes data, small model) or nanovlm-222m
  --vit PATH --lm PATH pretrained SigLIP / SmolLM2 folders (Hugging Face format) for the backbones
  --tokenizer PATH     folder with tokenizer.json (default: built-in for the default preset)
  --train_data PATH    parquet (the cauldron) or JSONL files; repeat the flag for several
  --val_data PATH      validation files (default: val_ratio of the training rows)
  --test_data PATH     an extra held-out VQA file, scored by exact-match answer accuracy
  --mmstar PATH        MMStar parquet: multiple-choice accuracy at each evaluation
  --device D           auto | webgpu | cpu (default auto)
  --cpu_kernels K      ts | wasm: the CPU backend's kernels (default wasm where WebAssembly SIMD exists)
  --threads N          threads for large CPU kernels (default min(2, cores))
  --out DIR            run folder: best checkpoint, resume state, metrics.jsonl, loss.png (default checkpoints/default)
  --resume             continue the run in --out exactly where it stopped

training (defaults of the chosen preset shown by --preset NAME --help):`);
  const preset = presets[args.preset ?? 'default'] ?? presets.default;
  for (const [k, v] of Object.entries({ ...trainDefaults, ...preset.train })) console.log(`  --${k.padEnd(28)} ${v}`);
  console.log('\nmodel (nanoVLM config.json fields):');
  for (const [k, v] of Object.entries({ ...vlmDefaults, ...preset.vlm })) console.log(`  --${k.padEnd(28)} ${v}`);
  process.exit(0);
}

/** Defaults < preset < flags, each value parsed as its default's type. */
function resolveConfig<T extends object>(defaults: T, preset: Partial<T>): T {
  const out = { ...defaults, ...preset } as Record<string, unknown>;
  for (const key of Object.keys(defaults)) {
    const raw = (args as Record<string, unknown>)[key];
    if (raw === undefined) continue;
    const want = typeof (defaults as Record<string, unknown>)[key];
    if (want === 'number' && !Number.isFinite(Number(raw))) throw new Error(`--${key} expects a number, got ${raw}`);
    if (want === 'boolean' && raw !== 'true' && raw !== 'false') throw new Error(`--${key} expects true or false, got ${raw}`);
    out[key] = want === 'number' ? Number(raw) : want === 'boolean' ? raw === 'true' : raw;
  }
  return out as T;
}

// ---------------------------------------------------------------- helpers

/** A collated batch as tensors on the device. */
function toTensors(batch: VQABatch | MMStarBatch, imgSize: number, device: DeviceName) {
  const [B, T] = [batch.batchSize, batch.seqLen];
  const pixels = new Float32Array(B * 3 * imgSize * imgSize);
  batch.images.forEach((img, i) => pixels.set(img, i * img.length));
  return {
    image: tensor(pixels, { shape: [B, 3, imgSize, imgSize], device }),
    inputIds: tensor(batch.input_ids, { shape: [B, T], device }),
    attentionMask: tensor(batch.attention_mask, { shape: [B, T], device }),
    labels: 'labelLen' in batch ? null : tensor(batch.labels, { shape: [B, T], device }),
  };
}

/**
 * Validation loss and exact-match answer accuracy. With teacher forcing, a
 * sample whose every answer token is the argmax is exactly the sample greedy
 * decoding would answer right, so one forward pass gives both numbers.
 */
async function evaluate(model: VisionLanguageModel, loader: DataLoader<VQAItem, VQABatch>, device: DeviceName) {
  model.eval();
  let [lossSum, batches, correct, counted] = [0, 0, 0, 0];
  for await (const { batch } of loader.epoch(0)) {
    const [loss, wrong, answered] = noGrad(() =>
      tidy(() => {
        const t = toTensors(batch, model.cfg.vit_img_size, device);
        const { logits, loss } = model.forward(t.inputIds, t.image, t.attentionMask, t.labels);
        const scored = t.labels!.ne(-100);
        const misses = logits.argmax(-1).ne(t.labels!).mul(scored).sum(1); // (B) wrong answer tokens
        return [loss!, misses, scored.sum(1)];
      }),
    );
    lossSum += await loss.item(); // sync point
    const [w, a] = [await wrong.data(), await answered.data()];
    for (let i = 0; i < w.length; i++) if (a[i] > 0) (counted++, w[i] === 0 && correct++);
    batches++;
    [loss, wrong, answered].forEach((t) => t.dispose());
  }
  model.train();
  return { loss: lossSum / Math.max(batches, 1), accuracy: correct / Math.max(counted, 1) };
}

/** MMStar: generate a short answer, then nanoVLM's multiple-choice regex check. */
async function evaluateMMStar(model: VisionLanguageModel, loader: DataLoader<VQAItem, MMStarBatch>, tokenizer: Tokenizer, device: DeviceName) {
  model.eval();
  let [correct, total] = [0, 0];
  for await (const { batch } of loader.epoch(0)) {
    const t = toTensors(batch, model.cfg.vit_img_size, device);
    const { tokens } = await model.generate(t.inputIds, t.image, t.attentionMask, { greedy: true, maxNewTokens: 5, eosTokenId: tokenizer.eosTokenId });
    [t.image, t.inputIds, t.attentionMask].forEach((x) => x.dispose());
    const answers = Array.from({ length: batch.batchSize }, (_, i) =>
      tokenizer.decode(batch.labels.subarray(i * batch.labelLen, (i + 1) * batch.labelLen), { skipSpecialTokens: true }));
    const outputs = tokens.map((ids) => tokenizer.decode(ids, { skipSpecialTokens: true }));
    correct += checkMultipleChoiceWithRegex(outputs, answers).filter(Boolean).length;
    total += batch.batchSize;
  }
  model.train();
  return correct / Math.max(total, 1);
}

/** One line that redraws itself on a terminal (and prints every `every` steps elsewhere). */
function progress(step: number, total: number, text: string, every: number): void {
  const width = 24;
  const filled = Math.round((width * step) / total);
  const line = `step ${String(step).padStart(String(total).length)}/${total} [${'='.repeat(filled)}${' '.repeat(width - filled)}] ${text}`;
  if (process.stdout.isTTY) process.stdout.write(`\r${line}`);
  else if (step % every === 0 || step === total) console.log(line);
}

function minutes(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

// ---------------------------------------------------------------- the run

/** Everything besides weights and moments that a resumed run needs to continue identically. */
interface RunState {
  step: number; // optimizer steps done
  epoch: number;
  batchInEpoch: number; // batches of `epoch` consumed
  bestAccuracy: number;
  elapsedMs: number;
  tokens: number;
  generator: ReturnType<typeof defaultGenerator.getState>;
  optimizer: { lrs: number[]; steps: (number | null)[] };
}

/** --cpu_kernels and --threads: the plain-TypeScript kernels are the readable reference, WebAssembly SIMD the fast path. */
function useCpuFlags(): void {
  if (args.cpu_kernels) setCpuKernels(args.cpu_kernels as CpuKernels);
  if (args.threads) setCpuThreads(Number(args.threads));
  const cpu = cpuKernelInfo();
  const threads = getCpuThreads();
  console.log(`cpu kernels: ${cpu.kernels}${cpu.kernels === 'wasm' && cpu.fma ? ' (relaxed-SIMD FMA)' : ''}, ${threads} thread${threads > 1 ? 's' : ''}`);
}

async function main(): Promise<void> {
  const preset = presets[args.preset!];
  if (!preset) throw new Error(`unknown --preset ${args.preset} (choose ${Object.keys(presets).join(' or ')})`);
  const tc = resolveConfig(trainDefaults, preset.train);
  let cfg = resolveConfig(vlmDefaults, preset.vlm);
  const out = args.out!;
  const resumeDir = join(out, 'resume');
  if (args.resume && !existsSync(join(resumeDir, 'state.json'))) throw new Error(`--resume: no resumable run in ${out} (expected ${resumeDir}/state.json)`);
  const device = await resolveDevice(args.device as 'auto' | DeviceName);
  if (device === 'cpu') useCpuFlags();
  manualSeed(tc.seed);

  // --- tokenizer and data
  const builtin = !args.train_data;
  const builtinTokenizer = builtin && !args.tokenizer ? buildBuiltinTokenizer() : null;
  const tokenizer = builtinTokenizer ? createTokenizer(builtinTokenizer) : getTokenizer(args.tokenizer ?? cfg.lm_tokenizer);
  if (args.tokenizer) cfg.lm_tokenizer = args.tokenizer; // saved in config.json, so generate.ts finds it
  if (tokenizer.vocabSize > cfg.lm_vocab_size) throw new Error(`the tokenizer has ${tokenizer.vocabSize} tokens but lm_vocab_size is ${cfg.lm_vocab_size}: raise --lm_vocab_size`);

  // --- model: resumed, from pretrained backbones, or from scratch
  let model: VisionLanguageModel;
  if (args.resume) model = await VisionLanguageModel.fromPretrained(resumeDir);
  else if (args.vit || args.lm) {
    if (!args.vit || !args.lm) throw new Error('pretrained backbones need both --vit path/to/siglip and --lm path/to/smollm2');
    model = await VisionLanguageModel.fromBackbones(cfg, args.vit, args.lm);
  } else if (cfg.vlm_load_backbone_weights) {
    throw new Error(`--preset ${args.preset} starts from pretrained backbones: pass --vit path/to/siglip --lm path/to/smollm2 (local Hugging Face folders), or --vlm_load_backbone_weights false`);
  } else model = new VisionLanguageModel(cfg);
  cfg = model.cfg;
  if (device !== 'cpu') model = await model.to(device);
  const imgSize = cfg.vit_img_size;

  let trainSet: Dataset<VQAItem>, valSet: Dataset<VQAItem>;
  if (builtin) {
    trainSet = new BuiltinVQADataset(tokenizer, { split: 'train', size: tc.builtin_train_size, seed: tc.seed, imgSize });
    valSet = new BuiltinVQADataset(tokenizer, { split: 'val', size: tc.builtin_val_size, seed: tc.seed, imgSize });
  } else {
    const rows = await openVQARows(args.train_data!);
    const split = args.val_data
      ? { train: rows, val: await openVQARows(args.val_data) }
      : trainValSplit(rows, { valRatio: tc.val_ratio, dataCutoffIdx: tc.data_cutoff_idx || undefined, seed: tc.seed });
    trainSet = new VQADataset(split.train, tokenizer, imgSize);
    valSet = new VQADataset(split.val, tokenizer, imgSize);
  }
  const collator = new VQACollator(tokenizer, cfg.lm_max_length);
  const collate = (items: VQAItem[]) => collator.call(items);
  const loaderOpts = { batchSize: tc.batch_size, collate, numWorkers: tc.num_workers };
  const trainLoader = new DataLoader(trainSet, { ...loaderOpts, shuffle: true, seed: tc.seed, dropLast: true });
  const valLoader = new DataLoader(valSet, loaderOpts);
  const testLoader = args.test_data ? new DataLoader(new VQADataset(await openVQARows([args.test_data]), tokenizer, imgSize), loaderOpts) : null;
  const mmstarCollator = new MMStarCollator(tokenizer);
  const mmstarLoader = args.mmstar
    ? new DataLoader(new MMStarDataset(await openMMStarRows(args.mmstar), tokenizer, imgSize), { batchSize: tc.mmstar_batch_size, collate: (items: VQAItem[]) => mmstarCollator.call(items) })
    : null;
  if (trainLoader.length === 0) throw new Error(`the training set (${trainSet.length} samples) is smaller than one batch of ${tc.batch_size}`);

  // --- optimizer: two learning rates, one for the fresh projector, one for the backbones
  const mpParams = model.MP.parameters();
  const backboneParams = model.parameters().filter((p) => !mpParams.includes(p));
  const optimizer = new AdamW([{ params: mpParams, lr: tc.lr_mp }, { params: backboneParams, lr: tc.lr_backbones }]);
  const stepsPerEpoch = Math.floor(trainLoader.length / tc.gradient_accumulation_steps);
  const maxSteps = tc.max_steps || stepsPerEpoch * tc.epochs;

  let state: RunState = { step: 0, epoch: 0, batchInEpoch: 0, bestAccuracy: -1, elapsedMs: 0, tokens: 0, generator: defaultGenerator.getState(), optimizer: { lrs: [], steps: [] } };
  const metricsFile = join(out, 'metrics.jsonl');
  const curves = { train: [] as [number, number][], val: [] as [number, number][], accuracy: [] as [number, number][] };
  if (args.resume) {
    state = JSON.parse(readFileSync(join(resumeDir, 'state.json'), 'utf8'));
    defaultGenerator.setState(state.generator);
    const moments = loadSafetensors(join(resumeDir, 'optimizer.safetensors'));
    optimizer.loadStateDict({
      lrs: state.optimizer.lrs,
      params: state.optimizer.steps.map((step, i) => (step === null ? null : { step, expAvg: moments.get(`exp_avg.${i}`)!.data as Float32Array, expAvgSq: moments.get(`exp_avg_sq.${i}`)!.data as Float32Array })),
    });
    // keep the metrics of the steps the checkpoint contains, drop any logged after it
    const kept = readFileSync(metricsFile, 'utf8').split('\n').filter((l) => l && JSON.parse(l).step <= state.step);
    writeFileSync(metricsFile, kept.map((l) => `${l}\n`).join(''));
    for (const m of kept.map((l) => JSON.parse(l))) {
      if ('loss' in m) curves.train.push([m.step, m.loss]);
      if ('val_loss' in m) (curves.val.push([m.step, m.val_loss]), curves.accuracy.push([m.step, m.accuracy]));
    }
    console.log(`resuming ${out} at step ${state.step} (epoch ${state.epoch}, batch ${state.batchInEpoch})`);
  } else {
    mkdirSync(out, { recursive: true });
    writeFileSync(metricsFile, '');
  }
  const log = (record: object) => appendFileSync(metricsFile, `${JSON.stringify(record)}\n`);

  /** Weights, moments and run state into resume/, via a temporary folder renamed into place. */
  async function saveResumable(): Promise<void> {
    const tmp = `${resumeDir}.tmp`;
    await model.savePretrained(tmp);
    if (builtinTokenizer) writeFileSync(join(tmp, 'tokenizer.json'), JSON.stringify(builtinTokenizer));
    const saved = await optimizer.stateDict();
    const moments: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    saved.params.forEach((p, i) => {
      if (!p) return;
      moments[`exp_avg.${i}`] = { dtype: 'F32', shape: [p.expAvg.length], data: p.expAvg };
      moments[`exp_avg_sq.${i}`] = { dtype: 'F32', shape: [p.expAvgSq.length], data: p.expAvgSq };
    });
    saveSafetensors(join(tmp, 'optimizer.safetensors'), moments);
    state.generator = defaultGenerator.getState();
    state.optimizer = { lrs: saved.lrs, steps: saved.params.map((p) => p?.step ?? null) };
    writeFileSync(join(tmp, 'state.json'), JSON.stringify(state));
    rmSync(`${resumeDir}.old`, { recursive: true, force: true });
    if (existsSync(resumeDir)) renameSync(resumeDir, `${resumeDir}.old`);
    renameSync(tmp, resumeDir);
    rmSync(`${resumeDir}.old`, { recursive: true, force: true });
  }

  /** Evaluate, log, plot, and keep the best model (by accuracy) where generate.ts looks for it. */
  async function evaluateAndSave(): Promise<{ step: number; loss: number; accuracy: number }> {
    const val = await evaluate(model, valLoader, device);
    const record: Record<string, number> = { step: state.step, val_loss: val.loss, accuracy: val.accuracy };
    if (testLoader) record.test_accuracy = (await evaluate(model, testLoader, device)).accuracy;
    if (mmstarLoader) record.mmstar_accuracy = await evaluateMMStar(model, mmstarLoader, tokenizer, device);
    log(record);
    curves.val.push([state.step, val.loss]);
    curves.accuracy.push([state.step, val.accuracy]);
    writeFileSync(join(out, 'loss.png'), plotTrainingCurves({ ...curves, title: `nanovlm-ts ${args.preset} run, ${device}` }));
    if (val.accuracy > state.bestAccuracy) {
      state.bestAccuracy = val.accuracy;
      await model.savePretrained(out);
      if (builtinTokenizer) writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(builtinTokenizer));
    }
    await saveResumable();
    const extra = Object.entries(record).filter(([k]) => !['step', 'val_loss', 'accuracy'].includes(k)).map(([k, v]) => `, ${k} ${(100 * v).toFixed(1)}%`).join('');
    if (process.stdout.isTTY) process.stdout.write('\n');
    console.log(`eval at step ${state.step}: val loss ${val.loss.toFixed(4)}, accuracy ${(100 * val.accuracy).toFixed(1)}%${extra}`);
    return { step: state.step, ...val };
  }

  // Ctrl-C: finish the current step, save a resumable checkpoint, then exit; a second Ctrl-C exits at once.
  let stopRequested = false;
  process.on('SIGINT', () => {
    if (stopRequested) process.exit(130);
    stopRequested = true;
    console.log('\ninterrupted: saving a resumable checkpoint (Ctrl-C again to quit without saving)');
  });

  console.log(`training ${(model.numParameters() / 1e6).toFixed(2)}M parameters on ${device}, ${trainSet.length} samples, ${maxSteps} steps of ${tc.batch_size * tc.gradient_accumulation_steps}`);
  model.train();
  const imageTokens = cfg.IMAGE_TOKEN_LENGTH;
  const started = performance.now() - state.elapsedMs;
  let lastEval = { step: -1, loss: NaN, accuracy: NaN };
  let batches = trainLoader.epoch(state.epoch, state.batchInEpoch);
  while (state.step < maxSteps && !stopRequested) {
    if (tc.max_minutes && performance.now() - started > tc.max_minutes * 60_000) {
      console.log(`\nreached --max_minutes ${tc.max_minutes}: stopping`);
      break;
    }
    const stepStart = performance.now();
    optimizer.paramGroups[0].lr = getLr(state.step, tc.lr_mp, maxSteps);
    optimizer.paramGroups[1].lr = getLr(state.step, tc.lr_backbones, maxSteps);
    let [lossSum, stepTokens] = [0, 0];
    for (let micro = 0; micro < tc.gradient_accumulation_steps; micro++) {
      let next = await batches.next();
      if (next.done) {
        [state.epoch, state.batchInEpoch] = [state.epoch + 1, 0];
        batches = trainLoader.epoch(state.epoch);
        next = await batches.next();
      }
      const batch = next.value!.batch;
      state.batchInEpoch = next.value!.step + 1;
      const loss = tidy(() => {
        const t = toTensors(batch, imgSize, device);
        const { loss } = model.forward(t.inputIds, t.image, t.attentionMask, t.labels);
        // averaging over micro-batches: the accumulated gradient equals one big batch's
        loss!.div(tc.gradient_accumulation_steps).backward();
        return loss!;
      });
      lossSum += await loss.item(); // sync point: waits for the device to finish the step
      loss.dispose();
      stepTokens += batch.attention_mask.reduce((s: number, m: number) => s + m, 0) + batch.batchSize * imageTokens;
    }
    const lossValue = lossSum / tc.gradient_accumulation_steps;
    if (!Number.isFinite(lossValue)) {
      const saved = existsSync(join(resumeDir, 'state.json')) ? `; the last good checkpoint is in ${resumeDir}` : '';
      throw new Error(`loss is ${lossValue} at step ${state.step}: stopping before training on garbage (try lower --lr_mp/--lr_backbones or --max_grad_norm 1)${saved}`);
    }
    const gradNorm = tc.max_grad_norm > 0 ? clipGradNorm(model.parameters(), tc.max_grad_norm) : null;
    optimizer.step();
    optimizer.zeroGrad();
    state.step++;
    state.tokens += stepTokens;
    const now = performance.now();
    const tokensPerSec = (stepTokens * 1000) / (now - stepStart);
    const record: Record<string, number> = { step: state.step, loss: lossValue, lr_mp: optimizer.paramGroups[0].lr, lr_backbones: optimizer.paramGroups[1].lr, tokens_per_s: tokensPerSec };
    if (gradNorm) (record.grad_norm = await gradNorm.item(), gradNorm.dispose());
    log(record);
    curves.train.push([state.step, lossValue]);
    state.elapsedMs = now - started;
    const eta = (state.elapsedMs / state.step) * (maxSteps - state.step);
    progress(state.step, maxSteps, `loss ${lossValue.toFixed(4)} lr ${optimizer.paramGroups[1].lr.toExponential(1)} ${Math.round(tokensPerSec)} tok/s ETA ${minutes(eta)}`, tc.eval_interval);
    if (state.step % tc.eval_interval === 0 && state.step < maxSteps) lastEval = await evaluateAndSave();
    // The CPU backend never waits on I/O, so without this the loop would never
    // let the event loop run, and Ctrl-C (a signal event) would not be seen.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await batches.return(undefined);
  if (lastEval.step !== state.step) lastEval = await evaluateAndSave();
  if (stopRequested) console.log(`stopped at step ${state.step} of ${maxSteps}: continue with --resume --out ${out}`);
  const elapsed = performance.now() - started;
  console.log(`done: ${state.step} steps in ${minutes(elapsed)}, val loss ${lastEval.loss.toFixed(4)}, accuracy ${(100 * lastEval.accuracy).toFixed(1)}% (best ${(100 * state.bestAccuracy).toFixed(1)}%), ${Math.round((state.tokens * 1000) / elapsed)} tokens/s on ${device}; checkpoint in ${out}`);
  await Promise.all([trainLoader, valLoader, testLoader, mmstarLoader].map((l) => l?.close()));
}

main()
  .catch((e: Error) => {
    if (process.stdout.isTTY) process.stdout.write('\n');
    console.error(`error: ${e.message}`);
    process.exitCode = 1;
  })
  .finally(closeWebGPU);
