// The page's model, in a Web Worker: it trains the default model on the built-in shapes set,
// answers questions, loads and saves checkpoints, and looks inside the answers. The page
// (main.ts) only draws; this worker holds every tensor, so a long step never freezes the page.
// It runs the same library code as train.ts and generate.ts: the model, the dataset, the
// tokenizer, the optimizer. Only where the files come from differs (the page's File objects).

import { buildBuiltinTokenizer, builtinQuestionsAndAnswers, BuiltinVQADataset, COLORS } from '../data/builtin.ts';
import { VQACollator, toTensors, type VQABatch, type VQAItem } from '../data/collators.ts';
import { evaluate } from '../evaluate.ts';
import { DataLoader, type LoadedBatch } from '../data/loader.ts';
import { getImageProcessor, type RGBImage } from '../data/processors.ts';
import { createTokenizer, type Tokenizer } from '../data/tokenizer.ts';
import { AdamW, clipGradNorm, getLr } from '../nn/index.ts';
import { parseSafetensors } from '../nn/safetensors.ts';
import {
  getCpuThreads,
  noGrad,
  resolveDevice,
  stack,
  tensor,
  tidy,
  tidyForward,
  type DeviceName,
  type TypedArray,
  type Tensor,
} from '../tensor/index.ts';
import { describeAdapter, webgpuBackend } from '../tensor/webgpu/device.ts';
import { modelConfig, resolveRun } from '../train_config.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { answerAttention } from './inspect.ts';
import type { CheckpointFiles, Inside, ModelInfo, Reply, Request, Sample } from './protocol.ts';

// The default preset of train.ts: the same model, learning rates, batch size and schedule.
const run = resolveRun({ preset: 'default' });
const EVAL_INTERVAL = 100; // steps between evaluations (train.ts: 500, on a faster machine)
const VAL_SIZE = 128; // held-out samples per evaluation (train.ts: 500)
const SHOWN = 4; // held-out pictures whose answers the page shows

const post = (reply: Reply) => self.postMessage(reply);

/** Everything the worker holds: the device, the model, its tokenizer, and the training run's state. */
let device: DeviceName = 'cpu';
let deviceName = '';
let model: VisionLanguageModel;
let modelName = 'the default model';
let tokenizer: Tokenizer;
let tokenizerJson: object;
let training: Training | null = null;
let trainingRuns = false;
let stopRequested = false;
let busy: Promise<unknown> = Promise.resolve(); // requests run one at a time, in order
const betweenSteps: Request[] = []; // questions and saves that came during training: served after the step

/** The optimizer, data and position of the training run (made on the first Train). */
interface Training {
  optimizer: AdamW;
  batches: AsyncGenerator<LoadedBatch<VQABatch>>;
  loader: DataLoader<VQAItem, VQABatch>;
  val: DataLoader<VQAItem, VQABatch>;
  epoch: number;
  step: number;
}

self.onmessage = (event: MessageEvent<Request>) => {
  const request = event.data;
  if (request.type === 'pause') {
    stopRequested = true; // seen between two steps
    return;
  }
  if (trainingRuns && (request.type === 'ask' || request.type === 'save')) {
    betweenSteps.push(request); // the training loop serves it after the step it is in
    return;
  }
  if (trainingRuns && request.type === 'train') return; // it already does
  if (trainingRuns && request.type === 'load') stopRequested = true; // a new model: the training stops first
  busy = busy.then(() => serve(request));
};

/** Handles a request; an error becomes a message in the page, and the worker goes on. */
async function serve(request: Request): Promise<void> {
  try {
    await handle(request);
  } catch (e) {
    post({ type: 'error', during: request.type, message: e instanceof Error ? e.message : String(e) });
  }
}

async function handle(request: Request): Promise<void> {
  switch (request.type) {
    case 'start':
      return start(request.device);
    case 'train':
      return train();
    case 'ask':
      return ask(request.id, request.image, request.question);
    case 'load':
      return load(request.checkpoint);
    case 'save':
      return save();
  }
}

// ------------------------------------------------------------------ device and model

async function start(requested: 'auto' | 'webgpu' | 'cpu'): Promise<void> {
  // auto: WebGPU where the browser has a hardware adapter (a software one, such as SwiftShader, is
  // slower than the CPU backend), else the CPU backend's WebAssembly kernels; ?device=webgpu takes any
  device = await resolveDevice(requested, { quiet: true });
  const adapter = webgpuBackend()?.adapter;
  const threads = getCpuThreads();
  const cpu = `the CPU (WebAssembly, ${threads} thread${threads > 1 ? 's' : ''})`;
  deviceName = device === 'webgpu' && adapter ? `WebGPU: ${describeAdapter(adapter)}` : cpu;
  tokenizerJson = buildBuiltinTokenizer();
  tokenizer = createTokenizer(tokenizerJson);
  const cfg = { ...modelConfig(run), lm_eos_token_id: tokenizer.eosTokenId };
  await useModel(new VisionLanguageModel(cfg), 'the default model');
  post({ type: 'ready', device: deviceName, model: info(), samples: await heldOutSamples(), colors: COLORS });
}

/** Puts a model on the device and makes it the page's; training starts over with it. */
async function useModel(next: VisionLanguageModel, name: string): Promise<void> {
  if (device !== 'cpu') next = await next.to(device);
  next.eval();
  model = next;
  modelName = name;
  await training?.loader.close();
  training?.optimizer.dispose(); // its moments, and on WebGPU its buckets
  training = null;
}

function info(): ModelInfo {
  const cfg = model.cfg;
  const { questions } = builtinQuestionsAndAnswers();
  return {
    name: modelName,
    parameters: model.numParameters(),
    imgSize: cfg.vit_img_size,
    questions: questions.filter((q) => tokenizer.unknownWords(prompt(q)).length === 0),
  };
}

// ------------------------------------------------------------------ training

async function train(): Promise<void> {
  stopRequested = false;
  training ??= newTraining();
  const t = training;
  const cfg = model.cfg;
  const stopAt = run.max_steps;
  post({ type: 'training', running: true, step: t.step });
  trainingRuns = true;
  let unreported: StepReport | null = null; // the last step queued, whose loss is not read yet
  try {
    while (t.step < stopAt && !stopRequested) {
      model.train();
      const stepStart = performance.now();
      // the same schedule as train.ts: warmup, then cosine decay over the preset's max_steps
      t.optimizer.paramGroups[0].lr = getLr(t.step, run.lr_mp, run.max_steps);
      t.optimizer.paramGroups[1].lr = getLr(t.step, run.lr_backbones, run.max_steps);
      let next = await t.batches.next();
      if (next.done) {
        t.batches = t.loader.epoch(++t.epoch);
        next = await t.batches.next();
      }
      const batch = next.value!.batch;
      const loss = tidy(() => {
        const x = toTensors(batch, cfg.vit_img_size, device);
        const { loss } = tidyForward(() => model.forward(x.inputIds, x.image, x.attentionMask, x.labels));
        loss!.backward();
        return loss!;
      });
      const norm = clipGradNorm(model.parameters(), run.max_grad_norm);
      await t.optimizer.settle(); // the step before's flag (sync point, but the device is done with it by now)
      const logged = noGrad(() =>
        tidy(() => {
          // the update is skipped on the device if the loss or a gradient is Inf or NaN: the model trained so
          // far survives, though the host learns of it only after the next step is queued (report)
          t.optimizer.step(loss.isfinite().mul(norm.isfinite()));
          return stack([loss, norm]);
        }),
      );
      t.optimizer.zeroGrad();
      // the read starts now, behind this step's work, and is awaited after the next step is queued: the
      // GPU never idles while the worker waits (train.ts does the same)
      const values = logged.data();
      values.catch(() => {}); // thrown where it is awaited
      [logged, loss, norm].forEach((x) => x.dispose());
      t.step++;
      const textTokens = batch.attention_mask.reduce((s: number, m: number) => s + m, 0);
      const tokens = textTokens + batch.batchSize * cfg.IMAGE_TOKEN_LENGTH;
      if (unreported) await report(unreported);
      // on a GPU, paced by the read of the step before (one step ahead)
      unreported = { values, step: t.step, tokensPerSec: (tokens * 1000) / (performance.now() - stepStart) };
      if (t.step % EVAL_INTERVAL === 0 || t.step === stopAt) {
        await report(unreported);
        unreported = null;
        await evaluateAndShow(t);
      }
      // let messages in (a worker sees them only between tasks), then answer what came
      await new Promise((resolve) => setTimeout(resolve, 0));
      while (betweenSteps.length) await serve(betweenSteps.shift()!);
    }
    if (unreported) await report(unreported);
  } finally {
    trainingRuns = false;
    model.eval();
    post({ type: 'training', running: false, step: t.step });
    while (betweenSteps.length) await serve(betweenSteps.shift()!);
  }
}

/** A queued step: its loss and gradient norm (being read), and its speed. */
interface StepReport {
  values: Promise<TypedArray>;
  step: number;
  tokensPerSec: number;
}

/** Waits for a step's loss and shows it; stops the training at a non-finite loss or gradient. */
async function report(s: StepReport): Promise<void> {
  const [loss, norm] = await s.values; // sync point: the step's loss and gradient norm, for the curve
  if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
    const what = Number.isFinite(loss) ? `the gradient norm is ${norm}` : `the loss is ${loss}`;
    throw new Error(`${what} at step ${s.step}: training stopped (that update was skipped)`);
  }
  post({ type: 'step', step: s.step, maxSteps: run.max_steps, loss, tokensPerSec: s.tokensPerSec });
}

function newTraining(): Training {
  const { seed, batch_size: batchSize } = run;
  const imgSize = model.cfg.vit_img_size;
  const trainSet = new BuiltinVQADataset(tokenizer, { split: 'train', size: run.builtin_train_size, seed, imgSize });
  const valSet = new BuiltinVQADataset(tokenizer, { split: 'val', size: VAL_SIZE, seed, imgSize });
  const collator = new VQACollator(tokenizer, model.cfg.lm_max_length);
  const collate = (items: VQAItem[]) => collator.call(items);
  const loader = new DataLoader(trainSet, { batchSize, collate, shuffle: true, seed, dropLast: true });
  const val = new DataLoader(valSet, { batchSize, collate });
  // two learning rates, as in train.ts: the projector's and the backbones'
  const mpParams = model.MP.parameters();
  const backbones = model.parameters().filter((p) => !mpParams.includes(p));
  const optimizer = new AdamW([
    { params: mpParams, lr: run.lr_mp },
    { params: backbones, lr: run.lr_backbones },
  ]);
  return { optimizer, loader, val, batches: loader.epoch(0), epoch: 0, step: 0 };
}

/** Validation loss and exact-match accuracy (train.ts's evaluation), and the shown answers. */
async function evaluateAndShow(t: Training): Promise<void> {
  const { loss, accuracy } = await evaluate(model, t.val, device);
  model.eval();
  const samples = await heldOutSamples();
  post({ type: 'eval', step: t.step, loss, accuracy, samples });
}

// ------------------------------------------------------------------ answering

/** The first held-out pictures with the model's current answers (greedy). */
async function heldOutSamples(): Promise<Sample[]> {
  const imgSize = Math.max(32, model.cfg.vit_img_size);
  const val = new BuiltinVQADataset(tokenizer, { split: 'val', size: SHOWN, seed: run.seed, imgSize });
  const samples: Sample[] = [];
  for (let i = 0; i < SHOWN; i++) {
    const { image, question, answer } = val.sample(i);
    const answered = await greedyAnswer(image, question, 3); // a word and the end token
    answered.imageTensor.dispose();
    samples.push({ image, question, truth: answer, answer: answered.text });
  }
  return samples;
}

/** nanoVLM's prompt template. */
function prompt(question: string): string {
  return `Question: ${question} Answer:`;
}

/** Greedy generation, as generate.ts --greedy does; `onText` gets the answer so far after each token. */
async function greedyAnswer(image: RGBImage, question: string, maxNewTokens: number, onText?: (text: string) => void) {
  const cfg = model.cfg;
  const pixels = getImageProcessor(cfg.vit_img_size)(image);
  const imageTensor = tensor(pixels, { shape: [1, 3, cfg.vit_img_size, cfg.vit_img_size], device });
  const promptIds = tokenizer.encode(prompt(question));
  const inputIds = tensor(new Int32Array(promptIds), { shape: [1, promptIds.length], device });
  const answerIds: number[] = [];
  await model.generate(inputIds, imageTensor, null, {
    greedy: true,
    maxNewTokens,
    eosTokenId: tokenizer.eosTokenId,
    onTokens: ([token]) => {
      if (token === tokenizer.eosTokenId) return;
      answerIds.push(token);
      onText?.(tokenizer.decode(answerIds, { skipSpecialTokens: true }));
    },
  });
  inputIds.dispose();
  return { text: tokenizer.decode(answerIds, { skipSpecialTokens: true }), imageTensor, promptIds, answerIds };
}

async function ask(id: number, image: RGBImage, question: string): Promise<void> {
  model.eval(); // between two training steps too (the loop sets train() again)
  const unknown = tokenizer.unknownWords(prompt(question));
  if (unknown.length) {
    const words = unknown.map((w) => `"${w}"`).join(', ');
    const what = `the word${unknown.length > 1 ? 's' : ''} ${words}`;
    throw new Error(`the model does not know ${what}: try a question from the list`);
  }
  const answered = await greedyAnswer(image, question, 10, (text) => post({ type: 'token', id, text }));
  try {
    const layers = await answerAttention(model, answered.imageTensor, answered.promptIds, answered.answerIds);
    const cfg = model.cfg;
    const side = cfg.vit_img_size;
    const inside: Inside = {
      image: await resizedImage(answered.imageTensor, side),
      tokensPerSide: Math.floor(side / cfg.vit_patch_size) / cfg.mp_pixel_shuffle_factor,
      shuffle: cfg.mp_pixel_shuffle_factor,
      patchSize: cfg.vit_patch_size,
      layers,
    };
    post({ type: 'answer', id, text: answered.text, inside });
  } finally {
    answered.imageTensor.dispose();
  }
}

/** The picture the model saw (CHW floats in [0, 1]) back as RGB bytes. sync point: reads it back. */
async function resizedImage(image: Tensor, side: number): Promise<RGBImage> {
  const chw = await image.data();
  const data = new Uint8Array(side * side * 3);
  for (let p = 0; p < side * side; p++) {
    for (let c = 0; c < 3; c++) data[p * 3 + c] = Math.round(chw[c * side * side + p] * 255);
  }
  return { width: side, height: side, data };
}

// ------------------------------------------------------------------ checkpoints

/** A checkpoint folder's files (as train.ts or nanoVLM saves them) become the page's model. */
async function load(files: CheckpointFiles): Promise<void> {
  const where = (file: string) => `${files.name}/${file}`;
  const config = parseJSON(files.config, where('config.json')) as Record<string, unknown>;
  if (files.tokenizer === null) {
    throw new Error(
      `${files.name} has no tokenizer.json: add the tokenizer the model was trained with ` +
        "(train.ts saves it beside config.json; for a nanoVLM checkpoint, SmolLM2's tokenizer.json)",
    );
  }
  const json = parseJSON(files.tokenizer, where('tokenizer.json')) as object;
  const tokenizerConfig = files.tokenizerConfig ? parseJSON(files.tokenizerConfig, where('tokenizer_config.json')) : {};
  let nextTokenizer: Tokenizer;
  try {
    nextTokenizer = createTokenizer(json, tokenizerConfig as Record<string, unknown>);
  } catch (e) {
    throw new Error(`${where('tokenizer.json')}: ${(e as Error).message}`);
  }
  const weights = parseSafetensors(new Uint8Array(files.weights), where('model.safetensors'));
  const next = VisionLanguageModel.fromPretrained({ source: files.name, config, weights });
  if (nextTokenizer.vocabSize > next.cfg.lm_vocab_size) {
    const vocab = next.cfg.lm_vocab_size;
    const sizes = `the tokenizer has ${nextTokenizer.vocabSize} tokens but the model's vocabulary has ${vocab}`;
    throw new Error(`${sizes}: this tokenizer.json does not fit the model (add the one it was trained with)`);
  }
  tokenizer = nextTokenizer;
  tokenizerJson = json;
  await useModel(next, files.name);
  post({ type: 'loaded', model: info(), samples: model.cfg.vit_img_size >= 32 ? await heldOutSamples() : [] });
}

function parseJSON(text: string, source: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${source}: invalid JSON (${(e as Error).message})`);
  }
}

/** The model as the files train.ts writes: config.json, model.safetensors, tokenizer.json. */
async function save(): Promise<void> {
  const files = { ...(await model.savePretrained()), 'tokenizer.json': JSON.stringify(tokenizerJson) };
  post({ type: 'saved', files: Object.entries(files).map(([name, content]) => ({ name, content })) });
}
