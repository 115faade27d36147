// The built-in dataset: pictures of a few coloured shapes, drawn on the fly
// from a seed, with one-word questions about them. The default training run
// needs no download and fits a 2-core CPU, yet the questions can only be
// answered by looking: asking "What color is the triangle?" names no colour.
// Also here: the built-in tokenizer, a word-level tokenizer.json that covers
// every prompt and answer of the set in a few dozen tokens.

import { Generator } from '../tensor/random.ts';
import type { VQAItem } from './collators.ts';
import type { Dataset } from './datasets.ts';
import { getImageProcessor, type ImageProcessor, type RGBImage } from './processors.ts';
import { buildWordTokenizer, type Tokenizer } from './tokenizer.ts';

/** The shapes drawn. */
export const SHAPES = ['circle', 'square', 'triangle'] as const;

/** A shape name. */
export type Shape = (typeof SHAPES)[number];

/** The colours, named as the answers name them, with their RGB values. */
export const COLORS = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 90, 230],
  yellow: [240, 200, 30],
  purple: [150, 60, 190],
} as const;

/** A colour name. */
export type Color = keyof typeof COLORS;

const COLOR_NAMES = Object.keys(COLORS) as Color[];
// A black background: empty patches are all zeros, so the patch embedding of an
// empty cell is just its bias and every drawn pixel stands out. On white, the
// shapes are small dents in a large constant signal, and a small ViT trained
// from scratch took far longer to notice them at all.
const BACKGROUND = [0, 0, 0];
const NUMBER_WORDS = ['zero', 'one', 'two', 'three'];

/** Default image side: 4x4 patches of 8 px (or 8x8 of 4 px); a shape is 9 to 13 px across. */
export const BUILTIN_IMG_SIZE = 32;

/** The four question templates. */
const QUESTIONS = {
  color: (shape: Shape) => `What color is the ${shape}?`,
  shape: (color: Color) => `What shape is the ${color} object?`,
  count: () => 'How many shapes are there?',
  onLeft: (shape: Shape) => `Is the ${shape} on the left?`,
};

/**
 * One shape of a scene. The picture is a 2x2 grid of cells (0 1 / 2 3) with at most one
 * shape per cell, and every shape in a scene has its own shape and colour, so "the triangle"
 * and "the red object" always name one thing.
 */
export interface SceneObject {
  shape: Shape;
  color: Color;
  cell: number;
  /** Centre and size in pixels: the circle's radius, the triangle's half height. */
  cx: number;
  cy: number;
  r: number;
}

/** A sample of the built-in set: the scene, its picture, one question and its one-word answer. */
export interface BuiltinSample {
  objects: SceneObject[];
  image: RGBImage;
  question: string;
  answer: string;
}

/** The two splits; their question/scene combinations never overlap, whatever the seeds. */
export type BuiltinSplit = 'train' | 'val';

/** Options of BuiltinVQADataset. */
export interface BuiltinOptions {
  split?: BuiltinSplit;
  /** Number of samples (default 10000). */
  size?: number;
  /** Different seeds give different samples (default 0). */
  seed?: number;
  /** Image side in pixels (default 32, at least 32). */
  imgSize?: number;
}

/** The built-in VQA set as a dataset: sample i is drawn from (split, seed, i) when asked for. */
export class BuiltinVQADataset implements Dataset<VQAItem> {
  readonly split: BuiltinSplit;
  readonly length: number;
  readonly seed: number;
  readonly imgSize: number;
  private readonly imageProcessor: ImageProcessor;

  constructor(
    readonly tokenizer: Pick<Tokenizer, 'eosToken'>,
    options: BuiltinOptions = {},
  ) {
    this.split = options.split ?? 'train';
    this.length = options.size ?? 10_000;
    this.seed = options.seed ?? 0;
    this.imgSize = options.imgSize ?? BUILTIN_IMG_SIZE;
    // Below 32 px the smallest circles and triangles lose their shape.
    if (!Number.isInteger(this.imgSize) || this.imgSize < 32) {
      throw new Error(`built-in images need a size of at least 32 px, got ${this.imgSize}`);
    }
    // Drawn at the target size, so the processor only converts to CHW floats.
    this.imageProcessor = getImageProcessor(this.imgSize);
  }

  /** Sample i with its picture as RGB bytes. */
  sample(i: number): BuiltinSample {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) {
      throw new RangeError(`index ${i} out of range [0, ${this.length})`);
    }
    return builtinSample(this.split, i, this.seed, this.imgSize);
  }

  /** The item as VQADataset makes it: image, "Question: ... Answer:", answer + eos. */
  async get(i: number): Promise<VQAItem> {
    const { image, question, answer } = this.sample(i);
    return {
      image: this.imageProcessor(image),
      text_data: `Question: ${question} Answer:`,
      answer: answer + this.tokenizer.eosToken,
    };
  }
}

/** Sample `index` of a split: a pure function of its arguments. */
export function builtinSample(split: BuiltinSplit, index: number, seed: number, imgSize: number): BuiltinSample {
  // A generator per sample: any index is drawn directly, in any order.
  const rng = new Generator(hashString(`${seed}/${split}/${index}`));
  // Every scene/question combination belongs to one split (see isHeldOut): draw until one
  // of this split's comes up (about 1 try in 10 for val).
  for (;;) {
    const { objects, question, answer } = drawQuestion(rng, imgSize);
    if (isHeldOut(objects, question) === (split === 'val')) {
      return { objects, question, answer, image: drawScene(objects, imgSize) };
    }
  }
}

/** Every question the set asks and every answer it gives. */
export function builtinQuestionsAndAnswers(): { questions: string[]; answers: string[] } {
  const questions = [
    ...SHAPES.map(QUESTIONS.color),
    ...COLOR_NAMES.map(QUESTIONS.shape),
    QUESTIONS.count(),
    ...SHAPES.map(QUESTIONS.onLeft),
  ];
  const answers = [...COLOR_NAMES, ...SHAPES, ...NUMBER_WORDS.slice(1), 'yes', 'no'];
  return { questions, answers };
}

/**
 * The built-in tokenizer as a tokenizer.json object, for createTokenizer: a word-level
 * tokenizer of the set's prompts and answers, `<|endoftext|>` = 0 and `<unk>` = 1.
 */
export function buildBuiltinTokenizer(): object {
  const { questions, answers } = builtinQuestionsAndAnswers();
  return buildWordTokenizer([...questions.map((q) => `Question: ${q} Answer:`), ...answers]);
}

/** Draws a question type, a scene it can be asked about, the question and the answer. */
function drawQuestion(rng: Generator, imgSize: number): Omit<BuiltinSample, 'image'> {
  const type = rng.randint(4);
  const objects = drawObjects(rng, 1 + rng.randint(3), imgSize);
  const o = objects[rng.randint(objects.length)];
  if (type === 0) return { objects, question: QUESTIONS.color(o.shape), answer: o.color };
  if (type === 1) return { objects, question: QUESTIONS.shape(o.color), answer: o.shape };
  if (type === 2) return { objects, question: QUESTIONS.count(), answer: NUMBER_WORDS[objects.length] };
  // the cell is random, so "yes" and "no" are equally likely
  return { objects, question: QUESTIONS.onLeft(o.shape), answer: column(o) === 0 ? 'yes' : 'no' };
}

/**
 * `count` shapes of distinct shapes and colours in distinct cells. Each shape
 * sits at its cell's centre at one size: every circle (or square, or triangle)
 * is drawn with the same pixels wherever it is, so telling shapes apart is
 * within a small ViT's reach, and the hard part is left to the model as a
 * whole: finding the shape or colour the question names and reading the answer
 * off that cell.
 */
function drawObjects(rng: Generator, count: number, imgSize: number): SceneObject[] {
  const cells = rng.shuffle([0, 1, 2, 3]);
  const shapes = rng.shuffle([...SHAPES]);
  const colors = rng.shuffle([...COLOR_NAMES]);
  const cellSize = imgSize / 2;
  const r = cellSize * 0.4; // leaves a margin of a tenth of a cell to the cell's edges
  return Array.from({ length: count }, (_, k) => {
    const cx = ((cells[k] % 2) + 0.5) * cellSize;
    const cy = (Math.floor(cells[k] / 2) + 0.5) * cellSize;
    return { shape: shapes[k], color: colors[k], cell: cells[k], cx, cy, r };
  });
}

/** Rasterises a scene: each pixel takes the colour of the shape its centre falls in. */
export function drawScene(objects: SceneObject[], imgSize: number): RGBImage {
  const data = new Uint8Array(imgSize * imgSize * 3);
  for (let y = 0; y < imgSize; y++) {
    for (let x = 0; x < imgSize; x++) {
      const o = objects.find((o) => inside(o, x + 0.5 - o.cx, y + 0.5 - o.cy));
      data.set(o ? COLORS[o.color] : BACKGROUND, (y * imgSize + x) * 3);
    }
  }
  return { width: imgSize, height: imgSize, data };
}

/** Whether the offset (dx, dy) from a shape's centre lies inside it. */
function inside(o: SceneObject, dx: number, dy: number): boolean {
  switch (o.shape) {
    case 'circle':
      return dx * dx + dy * dy <= o.r * o.r;
    case 'square': // a little smaller than the circle's box, so the two look equally big
      return Math.abs(dx) <= 0.85 * o.r && Math.abs(dy) <= 0.85 * o.r;
    case 'triangle': // apex up at (0, -r), base from (-r, r) to (r, r)
      return dy <= o.r && Math.abs(dx) <= (dy + o.r) / 2;
  }
}

/** 0 for the left column of the grid, 1 for the right. */
function column(o: SceneObject): number {
  return o.cell % 2;
}

/**
 * Whether a scene/question combination belongs to the held-out (val) split: one in ten,
 * chosen by a hash of the question and the scene's layout (which shape of which colour in
 * which cell; sizes and offsets left out). Train never asks a held-out question about a
 * held-out layout, even with other seeds.
 */
function isHeldOut(objects: SceneObject[], question: string): boolean {
  const layout = [...objects]
    .sort((a, b) => a.cell - b.cell)
    .map((o) => `${o.cell}:${o.color} ${o.shape}`)
    .join(',');
  return hashString(`${layout}|${question}`) % 10 === 0;
}

/** FNV-1a: a small, well-mixed 32-bit hash of a string. */
function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
