// The page: three panels (Train, Ask, Look inside) that talk to the model in worker.ts. This file
// only draws and reads input; every tensor lives in the worker (see protocol.ts for the messages).
//
// ?device=webgpu|cpu picks the backend (default auto: WebGPU where the browser has a hardware adapter).

import type { RGBImage } from '../data/processors.ts';
import type { CheckpointFiles, Inside, ModelInfo, Reply, Request, Sample } from './protocol.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/** What the page has seen, in one place (also for the browser tests and the curious: nanovlmPage in the console). */
const page = {
  ready: false,
  training: false,
  losses: [] as [number, number][], // [step, training loss]
  evals: [] as { step: number; loss: number; accuracy: number }[],
  answers: [] as string[], // every finished answer, in order
  streamed: [] as string[], // the current answer after each of its tokens
  model: null as ModelInfo | null,
  chosen: null as RGBImage | null, // the picture the next question is about
};
(globalThis as unknown as { nanovlmPage: typeof page }).nanovlmPage = page;

const worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' });
const send = (request: Request, transfer: Transferable[] = []) => worker.postMessage(request, transfer);
const requested = new URLSearchParams(location.search).get('device') ?? 'auto';
if (!['auto', 'webgpu', 'cpu'].includes(requested)) {
  showError('train', `?device=${requested}: use auto, webgpu or cpu`);
} else {
  send({ type: 'start', device: requested as 'auto' | 'webgpu' | 'cpu' });
}

worker.onmessage = ({ data: reply }: MessageEvent<Reply>) => {
  switch (reply.type) {
    case 'ready':
      page.ready = true;
      $('device').textContent = `running on ${reply.device}.`;
      showModel(reply.model, reply.samples);
      showColors(reply.colors);
      for (const id of ['train', 'save', 'ask']) $<HTMLButtonElement>(id).disabled = false;
      break;
    case 'step':
      page.losses.push([reply.step, reply.loss]);
      $('step').textContent = `${reply.step} of ${reply.maxSteps}`;
      $('loss').textContent = reply.loss.toFixed(4);
      $('speed').textContent = Math.round(reply.tokensPerSec).toLocaleString('en');
      drawCurves();
      break;
    case 'eval':
      page.evals.push({ step: reply.step, loss: reply.loss, accuracy: reply.accuracy });
      $('accuracy').textContent = `${(100 * reply.accuracy).toFixed(1)}%`;
      showSamples(reply.samples);
      drawCurves();
      break;
    case 'training':
      page.training = reply.running;
      $<HTMLButtonElement>('train').disabled = reply.running;
      $<HTMLButtonElement>('pause').disabled = !reply.running;
      $('train').textContent = reply.step > 0 ? 'Resume' : 'Train';
      if (page.model) showModelLine(page.model);
      break;
    case 'token':
      page.streamed.push(reply.text);
      $('answer').textContent = reply.text;
      break;
    case 'answer':
      $('answer').textContent = reply.text || '(nothing: the model ended at once)';
      page.answers.push(reply.text);
      showInside(reply.inside);
      break;
    case 'saved':
      showDownloads(reply.files);
      break;
    case 'loaded':
      page.losses = [];
      page.evals = [];
      drawCurves();
      showModel(reply.model, reply.samples);
      $('ask-message').textContent = '';
      break;
    case 'error':
      showError(reply.during, reply.message);
      break;
  }
};
worker.onerror = (e) => showError('start', `the model's worker failed: ${e.message}`);

function showError(during: Request['type'], message: string): void {
  const panel = during === 'ask' || during === 'load' ? 'ask-message' : 'train-message';
  $(panel).textContent = message;
  if (during === 'load' && page.model) showModelLine(page.model); // the model in use is still the old one
}

// ------------------------------------------------------------------ Train

$('train').onclick = () => {
  $('train-message').textContent = '';
  send({ type: 'train' });
};
$('pause').onclick = () => send({ type: 'pause' });
$('save').onclick = () => send({ type: 'save' });

function showModel(model: ModelInfo, samples: Sample[]): void {
  page.model = model;
  showModelLine(model);
  const list = $('questions');
  list.replaceChildren(...model.questions.map((q) => Object.assign(document.createElement('option'), { value: q })));
  showSamples(samples);
  showGallery(samples);
}

function showModelLine(model: ModelInfo): void {
  const size = `${(model.parameters / 1e6).toFixed(2)}M parameters, ${model.imgSize}x${model.imgSize} pictures`;
  const steps = page.losses.at(-1)?.[0];
  const trained = steps ? `, trained in this page for ${steps} steps` : '';
  $('model-line').textContent = `Model: ${model.name} (${size})${trained}.`;
}

function showSamples(samples: Sample[]): void {
  $('samples').replaceChildren(
    ...samples.map((s) => {
      const div = document.createElement('div');
      div.className = 'sample';
      const right = s.answer === s.truth;
      div.append(pictureCanvas(s.image));
      div.insertAdjacentHTML(
        'beforeend',
        `<div>${escape(s.question)}</div>` +
          `<div class="${right ? 'right' : 'wrong'}">model: ${escape(s.answer || '(nothing)')}</div>` +
          `<div>truth: ${escape(s.truth)}</div>`,
      );
      return div;
    }),
  );
}

/** Training loss (log scale, left) and held-out accuracy (0 to 100%, right) against the step. */
function drawCurves(): void {
  const canvas = $<HTMLCanvasElement>('curves');
  const g = canvas.getContext('2d')!;
  const [W, H, pad] = [canvas.width, canvas.height, 40];
  g.clearRect(0, 0, W, H);
  g.font = '12px system-ui';
  g.strokeStyle = '#ccc';
  g.strokeRect(pad, 10, W - 2 * pad, H - pad - 10);
  const losses = page.losses;
  if (losses.length === 0) return;
  const lastStep = Math.max(losses[losses.length - 1][0], 10);
  const logs = losses.map(([, l]) => Math.log10(Math.max(l, 1e-4)));
  const [lo, hi] = [Math.floor(Math.min(...logs)), Math.ceil(Math.max(...logs) + 1e-9)];
  const x = (step: number) => pad + ((W - 2 * pad) * step) / lastStep;
  const yLoss = (l: number) => 10 + ((H - pad - 10) * (hi - Math.log10(Math.max(l, 1e-4)))) / Math.max(hi - lo, 1);
  const yAcc = (a: number) => 10 + (H - pad - 10) * (1 - a);
  g.fillStyle = '#555';
  for (let e = lo; e <= hi; e++) g.fillText(`${10 ** e}`, 2, yLoss(10 ** e) + 4);
  g.fillText('step', W / 2, H - 8);
  g.fillText(`${lastStep}`, x(lastStep) - 20, H - pad + 14);
  g.fillText('100%', W - pad + 4, yAcc(1) + 4);
  g.fillText('0%', W - pad + 4, yAcc(0));
  const line = (points: [number, number][], color: string) => {
    g.strokeStyle = color;
    g.beginPath();
    points.forEach(([px, py], i) => (i === 0 ? g.moveTo(px, py) : g.lineTo(px, py)));
    g.stroke();
  };
  line(
    losses.map(([s, l]) => [x(s), yLoss(l)]),
    '#2a6df4',
  );
  line(
    page.evals.map((e) => [x(e.step), yAcc(e.accuracy)]),
    '#11823b',
  );
  page.evals.forEach((e) => g.fillRect(x(e.step) - 2, yAcc(e.accuracy) - 2, 4, 4));
  g.fillStyle = '#2a6df4';
  g.fillText('training loss', pad + 8, 26);
  g.fillStyle = '#11823b';
  g.fillText('held-out accuracy', pad + 100, 26);
}

/** Links for the checkpoint's files: the same three that train.ts writes into its run folder. */
function showDownloads(files: { name: string; content: string | Uint8Array[] }[]): void {
  $('downloads').replaceChildren(
    ...files.map(({ name, content }) => {
      const blob = new Blob(typeof content === 'string' ? [content] : (content as BlobPart[]));
      const a = Object.assign(document.createElement('a'), { href: URL.createObjectURL(blob), download: name });
      a.textContent = `${name} (${(blob.size / 1024).toFixed(1)} kB)`;
      a.style.marginRight = '12px';
      return a;
    }),
  );
}

// ------------------------------------------------------------------ Ask

let askId = 0;
$('ask').onclick = () => {
  $('ask-message').textContent = '';
  if (!page.chosen) return showError('ask', 'choose a picture first: a held-out one, a drawing or an image file');
  const question = $<HTMLInputElement>('question').value.trim();
  if (!question) return showError('ask', 'type a question, e.g. "What color is the circle?"');
  $('answer').textContent = '…';
  page.streamed = [];
  send({ type: 'ask', id: ++askId, image: page.chosen, question });
};

function choose(image: RGBImage): void {
  page.chosen = image;
  const chosen = $<HTMLCanvasElement>('chosen');
  drawPicture(chosen, image);
}

function showGallery(samples: Sample[]): void {
  const canvases = samples.map((s) => {
    const c = pictureCanvas(s.image);
    c.title = `${s.question} (${s.truth})`;
    c.onclick = () => {
      document.querySelectorAll('.gallery canvas').forEach((other) => other.classList.remove('chosen'));
      c.classList.add('chosen');
      choose(s.image);
      $<HTMLInputElement>('question').value = s.question;
    };
    return c;
  });
  $('gallery').replaceChildren(...canvases);
  if (!page.chosen) canvases[0]?.click();
}

// Drawing: a brush in the dataset's colours on black, like the built-in pictures.
const drawing = $<HTMLCanvasElement>('draw');
const pen = drawing.getContext('2d', { willReadFrequently: true })!;
let brush = '#fff';
pen.fillStyle = '#000';
pen.fillRect(0, 0, drawing.width, drawing.height);
function showColors(colors: Record<string, readonly number[]>): void {
  brush = `rgb(${Object.values(colors)[0].join(',')})`;
  $('colors').replaceChildren(
    ...Object.entries(colors).map(([name, rgb]) => {
      const b = Object.assign(document.createElement('button'), { title: name });
      b.style.background = `rgb(${rgb.join(',')})`;
      b.onclick = () => {
        brush = b.style.background;
        document.querySelectorAll('.colors button').forEach((o) => o.classList.toggle('on', o === b));
      };
      return b;
    }),
    Object.assign(document.createElement('button'), {
      textContent: 'clear',
      style: 'width:auto',
      onclick: () => {
        pen.fillStyle = '#000';
        pen.fillRect(0, 0, drawing.width, drawing.height);
        useDrawing();
      },
    }),
  );
  $('colors').firstElementChild?.classList.add('on');
}
drawing.onpointerdown = (e) => {
  drawing.setPointerCapture(e.pointerId);
  paint(e);
};
drawing.onpointermove = (e) => {
  if (e.buttons) paint(e);
};
drawing.onpointerup = () => useDrawing();
function paint(e: PointerEvent): void {
  const r = drawing.getBoundingClientRect();
  const px = ((e.clientX - r.left) * drawing.width) / r.width;
  const py = ((e.clientY - r.top) * drawing.height) / r.height;
  pen.fillStyle = brush;
  pen.beginPath();
  pen.arc(px, py, drawing.width / 24, 0, 2 * Math.PI);
  pen.fill();
}
function useDrawing(): void {
  const { data, width, height } = pen.getImageData(0, 0, drawing.width, drawing.height);
  document.querySelectorAll('.gallery canvas').forEach((other) => other.classList.remove('chosen'));
  choose(rgbOf(data, width, height));
}

// Image files: the browser decodes them (PNG, JPEG, and whatever else it reads).
$<HTMLInputElement>('image-file').onchange = (e) => {
  const file = (e.target as HTMLInputElement).files?.[0];
  if (file) void openImageFile(file);
};
dropZone($('image-drop'), async (items) => {
  const file = (await filesOf(items))[0];
  if (file) await openImageFile(file);
});

async function openImageFile(file: File): Promise<void> {
  $('ask-message').textContent = '';
  try {
    // colorSpaceConversion 'none': the file's pixel values as stored, as PIL reads them
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const g = canvas.getContext('2d')!;
    g.drawImage(bitmap, 0, 0);
    document.querySelectorAll('.gallery canvas').forEach((other) => other.classList.remove('chosen'));
    choose(rgbOf(g.getImageData(0, 0, bitmap.width, bitmap.height).data, bitmap.width, bitmap.height));
  } catch {
    showError('ask', `${file.name} is not an image this browser can read: choose a PNG or JPEG file`);
  }
}

// Checkpoints: a folder picked or dropped; its files go to the worker, which checks them.
$<HTMLInputElement>('checkpoint-files').onchange = (e) => {
  const files = [...((e.target as HTMLInputElement).files ?? [])];
  void openCheckpoint(files);
};
dropZone($('checkpoint-drop'), async (items) => openCheckpoint(await filesOf(items)));

async function openCheckpoint(files: File[]): Promise<void> {
  $('ask-message').textContent = '';
  if (files.length === 0) return;
  const path = (f: File) => (f as File & { relativePath?: string }).relativePath || f.webkitRelativePath || f.name;
  const name = path(files[0]).split('/')[0] || 'the dropped files';
  const find = (file: string) => files.find((f) => f.name === file);
  const config = find('config.json');
  const weights = find('model.safetensors');
  const fix = 'drop a checkpoint folder (config.json, model.safetensors, tokenizer.json)';
  if (!config) return showError('load', `${name} has no config.json: ${fix}`);
  if (!weights) return showError('load', `${name} has no model.safetensors: ${fix}`);
  const text = async (file: string) => (await find(file)?.text()) ?? null;
  const checkpoint: CheckpointFiles = {
    name,
    config: await config.text(),
    weights: await weights.arrayBuffer(),
    tokenizer: await text('tokenizer.json'),
    tokenizerConfig: await text('tokenizer_config.json'),
  };
  $('model-line').textContent = `Loading ${name}…`;
  send({ type: 'load', checkpoint }, [checkpoint.weights]);
}

/** Makes an element accept drops; `onDrop` gets the dropped items. */
function dropZone(el: HTMLElement, onDrop: (items: DataTransfer) => Promise<void>): void {
  el.ondragover = (e) => {
    e.preventDefault();
    el.classList.add('over');
  };
  el.ondragleave = () => el.classList.remove('over');
  el.ondrop = (e) => {
    e.preventDefault();
    el.classList.remove('over');
    if (e.dataTransfer) void onDrop(e.dataTransfer);
  };
}

/** The files of a drop, a dropped folder's files included (each knows its path in `relativePath`). */
async function filesOf(dropped: DataTransfer): Promise<File[]> {
  const entries = [...dropped.items].map((item) => item.webkitGetAsEntry()).filter((e) => e !== null);
  if (entries.length === 0) return [...dropped.files];
  const files: File[] = [];
  const walk = async (entry: FileSystemEntry, prefix: string): Promise<void> => {
    if (entry.isFile) {
      const file = await new Promise<File>((ok, fail) => (entry as FileSystemFileEntry).file(ok, fail));
      files.push(Object.assign(file, { relativePath: prefix + file.name }));
      return;
    }
    const reader = (entry as FileSystemDirectoryEntry).createReader();
    for (;;) {
      const batch = await new Promise<FileSystemEntry[]>((ok, fail) => reader.readEntries(ok, fail));
      if (batch.length === 0) break;
      for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
    }
  };
  for (const entry of entries) await walk(entry, '');
  return files;
}

// ------------------------------------------------------------------ Look inside

/** The grouping of patches into image tokens, and each layer's attention over those tokens. */
function showInside(inside: Inside): void {
  const { tokensPerSide: n, shuffle: s, patchSize } = inside;
  const grouping = $<HTMLCanvasElement>('grouping');
  drawPicture(grouping, inside.image);
  const g = grouping.getContext('2d')!;
  const patch = grouping.width / (n * s); // one patch, in canvas pixels
  for (let i = 0; i <= n * s; i++) {
    const thick = i % s === 0;
    g.strokeStyle = thick ? '#fff' : 'rgba(255,255,255,0.45)';
    g.lineWidth = thick ? 3 : 1;
    g.beginPath();
    g.moveTo(i * patch, 0);
    g.lineTo(i * patch, grouping.height);
    g.moveTo(0, i * patch);
    g.lineTo(grouping.width, i * patch);
    g.stroke();
  }
  g.fillStyle = '#fff';
  g.font = 'bold 14px system-ui';
  for (let t = 0; t < n * n; t++) g.fillText(`${t + 1}`, (t % n) * s * patch + 6, Math.floor(t / n) * s * patch + 18);
  $('grouping-caption').textContent =
    `${(n * s) ** 2} patches of ${patchSize}x${patchSize} px; pixel shuffle folds each ${s}x${s} block ` +
    `(${s * s} -> 1) into one of ${n * n} image tokens`;

  $('layers').replaceChildren(
    ...inside.layers.map((weights, layer) => {
      const fig = document.createElement('figure');
      const c = document.createElement('canvas');
      c.width = c.height = 160;
      drawPicture(c, inside.image);
      const h = c.getContext('2d')!;
      const cell = c.width / n;
      const max = Math.max(...weights, 1e-9);
      h.fillStyle = 'rgba(0,0,0,0.55)'; // dim the picture, then light each token by its share
      h.fillRect(0, 0, c.width, c.height);
      weights.forEach((w, t) => {
        h.fillStyle = `rgba(255,196,0,${(0.8 * w) / max})`;
        h.fillRect((t % n) * cell, Math.floor(t / n) * cell, cell, cell);
      });
      const share = weights.reduce((a, b) => a + b, 0);
      fig.append(
        c,
        Object.assign(document.createElement('figcaption'), {
          textContent: `layer ${layer + 1}: ${(100 * share).toFixed(0)}% on the picture`,
        }),
      );
      return fig;
    }),
  );
}

// ------------------------------------------------------------------ pictures

function rgbOf(rgba: Uint8ClampedArray, width: number, height: number): RGBImage {
  const data = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) data.set(rgba.subarray(p * 4, p * 4 + 3), p * 3);
  return { width, height, data };
}

/** Draws an RGB image over the whole canvas, pixels as squares. */
function drawPicture(canvas: HTMLCanvasElement, image: RGBImage): void {
  const rgba = new Uint8ClampedArray(image.width * image.height * 4);
  for (let p = 0; p < image.width * image.height; p++) {
    rgba.set(image.data.subarray(p * 3, p * 3 + 3), p * 4);
    rgba[p * 4 + 3] = 255;
  }
  const source = new OffscreenCanvas(image.width, image.height);
  source.getContext('2d')!.putImageData(new ImageData(rgba, image.width, image.height), 0, 0);
  const g = canvas.getContext('2d')!;
  g.imageSmoothingEnabled = false;
  g.drawImage(source, 0, 0, canvas.width, canvas.height);
}

function pictureCanvas(image: RGBImage): HTMLCanvasElement {
  const c = document.createElement('canvas');
  c.width = c.height = 96;
  drawPicture(c, image);
  return c;
}

function escape(text: string): string {
  return text.replace(/[&<>"]/g, (ch) => `&#${ch.charCodeAt(0)};`);
}
