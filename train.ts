// Train a vision-language model (nanoVLM's train.py).
//
//   npm run train                                      # built-in shapes data, a small VLM, no downloads
//   npm run train -- --train_data my/vqa.jsonl --out runs/mine    # your own images and questions
//   npm run train -- --preset nanovlm-222m --vit path/to/siglip --lm path/to/smollm2 \
//     --train_data path/to/the_cauldron --mmstar path/to/mmstar.parquet --out runs/222m
//
// Reading order: the flags (train_config.ts, or --help), then main(): data and tokenizer
// (dataloaders.ts), model, optimizer, the loop; evaluate.ts scores the model. run_state.ts keeps
// the run folder and --resume.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError, minutes, openDevice, progress, reportError } from './cli.ts';
import { toTensors } from './data/collators.ts';
import { checkTexts, getDataloaders, openSplits, runTokenizer } from './dataloaders.ts';
import { evaluate, evaluateMMStar } from './evaluate.ts';
import { readModelFolder, writeModelFolder } from './node/model_folder.ts';
import { AdamW, clipGradNorm, getLr } from './nn/index.ts';
import { plotTrainingCurves } from './plot.ts';
import { appendMetrics, configure, curvesOf, loadResumeState, prepareOutDir, saveResumeState } from './run_state.ts';
import { trimMetrics, writeAtomic, type MetricsRecord, type RunState } from './run_state.ts';
import { GradScaler, autocast, manualSeed, stack, tidy, tidyForward, zeros } from './tensor/index.ts';
import type { Tensor, TypedArray } from './tensor/index.ts';
import { closeWebGPU } from './tensor/webgpu/device.ts';
import { frozenParts, modelConfig } from './train_config.ts';
import { VisionLanguageModel } from './vlm/vision_language_model.ts';

const COMMAND = 'npm run train --';

async function main(): Promise<void> {
  // every flag checked, and --out (a fresh run's must hold no run), before anything is written
  const { run, resumed } = configure(process.argv.slice(2), COMMAND);
  const out = run.out;
  const device = await openDevice(run);
  if (run.dtype === 'float16' && device !== 'webgpu') {
    throw new UsageError('--dtype float16 runs on WebGPU only: add --device webgpu, or train in float32 on the CPU');
  }
  manualSeed(run.seed);

  // --- data and tokenizer
  const splits = await openSplits(run);
  const { tokenizer, tokenizerJson } = await runTokenizer(run, splits, resumed ? join(out, 'resume') : null);
  let cfg = { ...modelConfig(run), lm_eos_token_id: tokenizer.eosTokenId };
  if (tokenizer.vocabSize > cfg.lm_vocab_size) {
    const sizes = `the tokenizer has ${tokenizer.vocabSize} tokens, lm_vocab_size is ${cfg.lm_vocab_size}`;
    if (!tokenizerJson) throw new Error(`${sizes}: raise --lm_vocab_size`);
    cfg.lm_vocab_size = Math.ceil(tokenizer.vocabSize / 64) * 64; // the tokenizer was built here: the model follows it
    console.log(`${sizes}: raised to ${cfg.lm_vocab_size}`);
  }
  await checkTexts(splits, tokenizer, cfg.lm_max_length);

  // --- model: resumed, from pretrained backbones, or from scratch
  let model: VisionLanguageModel;
  if (resumed) model = VisionLanguageModel.fromPretrained(readModelFolder(join(out, 'resume')));
  else if (run.vit && run.lm)
    model = VisionLanguageModel.fromBackbones(cfg, readModelFolder(run.vit), readModelFolder(run.lm));
  else model = new VisionLanguageModel(cfg);
  if (device !== 'cpu') model = await model.to(device);
  cfg = model.cfg;
  const imgSize = cfg.vit_img_size;
  const loaders = await getDataloaders(run, splits, tokenizer, imgSize, cfg.lm_max_length);

  // --- frozen parts train nothing: no gradients (nor the matmuls that make them), no optimizer state
  const parts = { vit: model.vision_encoder, mp: model.MP, lm: model.decoder };
  for (const part of frozenParts(run)) parts[part as keyof typeof parts].setRequiresGrad(false);

  // --- optimizer: two learning rates, one for the fresh projector, one for the backbones
  const mpParams = model.MP.parameters();
  const backboneParams = model.parameters().filter((p) => !mpParams.includes(p));
  const optimizer = new AdamW([
    { params: mpParams, lr: run.lr_mp },
    { params: backboneParams, lr: run.lr_backbones },
  ]);
  const accumulation = run.gradient_accumulation_steps;
  const maxSteps = run.max_steps || Math.floor(loaders.train.length / accumulation) * run.epochs;
  if (maxSteps === 0) {
    throw new Error(`an epoch has fewer than --gradient_accumulation_steps ${accumulation} batches: set --max_steps`);
  }

  // --- the run folder, continued or fresh: only now, with everything checked, is anything written
  const metricsFile = join(out, 'metrics.jsonl');
  let state: RunState = { config: run, step: 0, epoch: 0, batchInEpoch: 0, bestAccuracy: -1, elapsedMs: 0, tokens: 0 };
  let records: MetricsRecord[] = [];
  if (resumed) {
    state = { ...resumed, config: run };
    loadResumeState(out, optimizer);
    records = trimMetrics(metricsFile, state.step);
    console.log(`resuming ${out} at step ${state.step} (epoch ${state.epoch}, batch ${state.batchInEpoch})`);
  } else prepareOutDir(out);
  const curves = curvesOf(records);
  // --dtype float16: matmuls on float16 operands inside autocast, the loss scaled so that small gradients
  // survive them, and a step whose gradients overflowed skipped (tensor/mixed_precision.ts)
  const half = run.dtype === 'float16' ? 'float16' : null;
  const scaler = half ? new GradScaler(device) : null;
  if (scaler && state.gradScaler) scaler.loadStateDict(state.gradScaler);

  /** Evaluate, log, plot, keep the best model (by accuracy) where generate.ts looks, save resume/. */
  async function evaluateAndSave(): Promise<{ step: number; loss: number; accuracy: number }> {
    const val = await evaluate(model, loaders.val, device);
    const record: MetricsRecord = { step: state.step, val_loss: val.loss, accuracy: val.accuracy };
    if (loaders.test) record.test_accuracy = (await evaluate(model, loaders.test, device)).accuracy;
    if (loaders.mmstar) record.mmstar_accuracy = await evaluateMMStar(model, loaders.mmstar, tokenizer, device);
    appendMetrics(metricsFile, record);
    curves.val.push([state.step, val.loss]);
    curves.accuracy.push([state.step, val.accuracy]);
    const title = `nanovlm-ts ${run.preset} run, ${device}`;
    writeAtomic(join(out, 'loss.svg'), plotTrainingCurves({ ...curves, title }));
    if (val.accuracy > state.bestAccuracy) {
      state.bestAccuracy = val.accuracy;
      writeModelFolder(out, await model.savePretrained()); // sync point: reads the weights back
      if (tokenizerJson) writeAtomic(join(out, 'tokenizer.json'), JSON.stringify(tokenizerJson));
    }
    if (scaler) state.gradScaler = await scaler.stateDict();
    await saveResumeState(out, { model, optimizer, state, tokenizerJson });
    const others = ['test_accuracy', 'mmstar_accuracy'].filter((k) => k in record);
    const extra = others.map((k) => `, ${k} ${percent(record[k])}`);
    const scores = `val loss ${val.loss.toFixed(4)}, accuracy ${percent(val.accuracy)}${extra.join('')}`;
    if (process.stdout.isTTY) process.stdout.write('\n');
    console.log(`eval at step ${state.step}: ${scores}`);
    return { step: state.step, ...val };
  }

  // Ctrl-C: finish the current step, save a resumable checkpoint, then exit; a second Ctrl-C exits at once.
  let stopRequested = false;
  process.on('SIGINT', () => {
    if (stopRequested) process.exit(130);
    stopRequested = true;
    console.log('\ninterrupted: saving a resumable checkpoint (Ctrl-C again to quit without saving)');
  });

  const [trainSize, valSize] = loaders.sizes;
  const what = `${(model.numParameters() / 1e6).toFixed(2)}M parameters on ${device}`;
  const data = `${trainSize} samples (${valSize} for validation)`;
  console.log(`training ${what}, ${data}, ${maxSteps} steps of ${run.batch_size * accumulation}`);
  model.train();
  const started = performance.now() - state.elapsedMs;
  let lastEval = { step: -1, loss: NaN, accuracy: NaN };
  let unlogged: StepLog | null = null;

  /** The log line and metrics of a finished step; stops the run at a non-finite loss. */
  async function logStep(s: StepLog): Promise<void> {
    const [lossValue, normValue, lossScale] = await s.values; // sync point: the step's loss, gradient norm, scale
    const saved = existsSync(join(out, 'resume')) ? `; the last good checkpoint is in ${join(out, 'resume')}` : '';
    if (!Number.isFinite(lossValue)) {
      const fix = '(try lower --lr_mp/--lr_backbones or --max_grad_norm 1)';
      throw new Error(`loss is ${lossValue} at step ${s.step}: stopping before training on garbage ${fix}${saved}`);
    }
    if (scaler && lossScale < 1) {
      throw new Error(`step ${s.step}: the gradients overflow float16 even unscaled: try --dtype float32${saved}`);
    }
    const tokensPerSec = (s.tokens * 1000) / s.ms;
    const record: MetricsRecord = { step: s.step, loss: lossValue, ...s.lrs, tokens_per_s: tokensPerSec };
    // float16: an overflowed step (skipped) has no norm to log
    if (run.max_grad_norm > 0 && Number.isFinite(normValue)) record.grad_norm = normValue;
    if (scaler) record.loss_scale = lossScale;
    appendMetrics(metricsFile, record);
    curves.train.push([s.step, lossValue]);
    state.elapsedMs = performance.now() - started;
    const eta = minutes((state.elapsedMs / s.step) * (maxSteps - s.step));
    const [loss, lr] = [lossValue.toFixed(4), s.lrs.lr_backbones.toExponential(1)];
    progress(s.step, maxSteps, `loss ${loss} lr ${lr} ${Math.round(tokensPerSec)} tok/s ETA ${eta}`);
  }
  let batches = loaders.train.epoch(state.epoch, state.batchInEpoch);
  while (state.step < maxSteps && !stopRequested) {
    if (run.max_minutes && performance.now() - started > run.max_minutes * 60_000) {
      console.log(`\nreached --max_minutes ${run.max_minutes}: stopping`);
      break;
    }
    const stepStart = performance.now();
    optimizer.paramGroups[0].lr = getLr(state.step, run.lr_mp, maxSteps);
    optimizer.paramGroups[1].lr = getLr(state.step, run.lr_backbones, maxSteps);
    const losses: Tensor[] = [];
    let stepTokens = 0;
    for (let micro = 0; micro < accumulation; micro++) {
      let next = await batches.next();
      if (next.done) {
        state.epoch++;
        batches = loaders.train.epoch(state.epoch);
        next = await batches.next();
      }
      const { batch, step } = next.value!;
      state.batchInEpoch = step + 1;
      const loss = tidy(() => {
        const t = toTensors(batch, imgSize, device);
        // tidyForward: backward frees each activation as soon as it is done with it (what fits 222M in memory)
        const forward = () => model.forward(t.inputIds, t.image, t.attentionMask, t.labels);
        const { loss } = tidyForward(() => autocast(half, forward));
        // averaging over micro-batches: the accumulated gradient equals one big batch's
        const share = loss!.div(accumulation);
        (scaler ? scaler.scaleLoss(share) : share).backward();
        return loss!;
      });
      losses.push(loss);
      const textTokens = batch.attention_mask.reduce((s: number, m: number) => s + m, 0);
      stepTokens += textTokens + batch.batchSize * cfg.IMAGE_TOKEN_LENGTH;
    }
    scaler?.unscale(model.parameters());
    const clip = run.max_grad_norm || Infinity; // float16 needs the norm (Inf if a gradient overflowed) anyway
    const gradNorm = run.max_grad_norm > 0 || scaler ? clipGradNorm(model.parameters(), clip) : null;
    // float16: the update is skipped on the device if a gradient overflowed, and the loss scale adjusted there
    if (scaler) await scaler.step(optimizer, gradNorm!);
    else optimizer.step();
    optimizer.zeroGrad();
    const stepLoss = (): Tensor => losses.reduce((a, b) => a.add(b)).div(accumulation);
    const logged = tidy(() =>
      stack([stepLoss(), gradNorm ?? zeros([], { device }), scaler?.scale ?? zeros([], { device })]),
    );
    // the read starts now, behind this step's work, and is awaited only after the next step is queued
    // (logStep): the GPU never idles while the host waits. The price: a non-finite loss stops the run one
    // update late, before anything is saved.
    const values = logged.data();
    values.catch(() => {}); // thrown where it is awaited
    [logged, gradNorm, ...losses].forEach((t) => t?.dispose());
    state.step++;
    state.tokens += stepTokens;
    if (unlogged) await logStep(unlogged);
    const lrs = { lr_mp: optimizer.paramGroups[0].lr, lr_backbones: optimizer.paramGroups[1].lr };
    const ms = performance.now() - stepStart; // on a GPU, paced by the read of the step before (one step ahead)
    unlogged = { values, step: state.step, tokens: stepTokens, ms, lrs };
    if (state.step % run.eval_interval === 0 && state.step < maxSteps) {
      await logStep(unlogged);
      unlogged = null;
      lastEval = await evaluateAndSave();
    }
    // The CPU backend never waits on I/O, so without this the loop would never
    // let the event loop run, and Ctrl-C (a signal event) would not be seen.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await batches.return(undefined);
  if (unlogged) await logStep(unlogged);
  if (lastEval.step !== state.step) lastEval = await evaluateAndSave();
  if (stopRequested) {
    console.log(`stopped at step ${state.step} of ${maxSteps}: continue with ${COMMAND} --resume --out ${out}`);
  }
  const elapsed = performance.now() - started;
  const speed = `${Math.round((state.tokens * 1000) / elapsed)} tokens/s on ${device}`;
  const accuracy = `accuracy ${percent(lastEval.accuracy)} (best ${percent(state.bestAccuracy)})`;
  const scores = `val loss ${lastEval.loss.toFixed(4)}, ${accuracy}`;
  console.log(`done: ${state.step} steps in ${minutes(elapsed)}, ${scores}, ${speed}; checkpoint in ${out}`);
  await Promise.all([loaders.train, loaders.val, loaders.test, loaders.mmstar].map((l) => l?.close()));
}

/** A finished step whose loss, gradient norm and loss scale are on their way back from the device. */
interface StepLog {
  values: Promise<TypedArray>;
  step: number;
  tokens: number;
  /** Wall time of the step (evaluations and saving not included). */
  ms: number;
  lrs: { lr_mp: number; lr_backbones: number };
}

function percent(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

main()
  .catch((e: Error) => {
    if (process.stdout.isTTY) process.stdout.write('\n');
    reportError(e, COMMAND);
  })
  .finally(closeWebGPU);
