// The built-in dataset: deterministic by seed, answers that agree with the
// pixels drawn, train and held-out split disjoint, a text-only baseline that
// cannot answer; and the built-in tokenizer through the one tokenizer code path.

import { describe, expect, test } from 'vitest';
import {
  BuiltinVQADataset,
  buildBuiltinTokenizer,
  builtinQuestionsAndAnswers,
  builtinSample,
  COLORS,
  SHAPES,
  type BuiltinSample,
  type BuiltinSplit,
  type Color,
  type Shape,
} from '../data/builtin.ts';
import { renderBuiltinExample } from '../node/images.ts';
import { IGNORE_INDEX, VQACollator } from '../data/collators.ts';
import { decodeImage } from '../data/processors.ts';
import { createTokenizer } from '../data/tokenizer.ts';

const eos = '<|endoftext|>';

function samples(split: BuiltinSplit, n: number, seed = 0, imgSize = 32): BuiltinSample[] {
  return Array.from({ length: n }, (_, i) => builtinSample(split, i, seed, imgSize));
}

/** What the pixels show: for each colour drawn, its shape (from how full its bounding box is) and centre. */
function readPixels(sample: BuiltinSample): Map<Color, { shape: Shape; x: number }> {
  const { width, height, data } = sample.image;
  const found = new Map<Color, { shape: Shape; x: number }>();
  for (const [name, rgb] of Object.entries(COLORS) as [Color, readonly number[]][]) {
    let count = 0;
    let sumX = 0;
    let [x0, x1, y0, y1] = [width, -1, height, -1];
    for (let p = 0; p < width * height; p++) {
      if (data[p * 3] !== rgb[0] || data[p * 3 + 1] !== rgb[1] || data[p * 3 + 2] !== rgb[2]) continue;
      const [x, y] = [p % width, Math.floor(p / width)];
      count++;
      sumX += x;
      [x0, x1, y0, y1] = [Math.min(x0, x), Math.max(x1, x), Math.min(y0, y), Math.max(y1, y)];
    }
    if (count === 0) continue;
    // A square fills its box, a circle about pi/4 of it, a triangle about half.
    const fill = count / ((x1 - x0 + 1) * (y1 - y0 + 1));
    found.set(name, { shape: fill > 0.97 ? 'square' : fill > 0.65 ? 'circle' : 'triangle', x: sumX / count });
  }
  return found;
}

/** The answer the pixels give to the sample's question. */
function answerFromPixels(sample: BuiltinSample): string {
  const seen = readPixels(sample);
  const colorOf = (shape: string) => [...seen].find(([, o]) => o.shape === shape)![0];
  const q = sample.question;
  let m: RegExpMatchArray | null;
  if ((m = q.match(/^What color is the (\w+)\?$/))) return colorOf(m[1]);
  if ((m = q.match(/^What shape is the (\w+) object\?$/))) return seen.get(m[1] as Color)!.shape;
  if (q === 'How many shapes are there?') return ['zero', 'one', 'two', 'three'][seen.size];
  m = q.match(/^Is the (\w+) on the left\?$/)!;
  return seen.get(colorOf(m[1]))!.x < sample.image.width / 2 ? 'yes' : 'no';
}

/** A scene's layout (which shape of which colour in which cell) with the question. */
function combination(sample: BuiltinSample): string {
  const layout = [...sample.objects].sort((a, b) => a.cell - b.cell).map((o) => `${o.cell}:${o.color} ${o.shape}`);
  return `${layout.join(',')}|${sample.question}`;
}

describe('the built-in dataset', () => {
  test('a sample is a pure function of (split, index, seed, size)', () => {
    const a = builtinSample('train', 7, 3, 32);
    expect(builtinSample('train', 7, 3, 32)).toEqual(a);
    // Other seeds, other samples.
    // (A scene has few possible layouts, so equal pictures happen by chance: compare the sequences.)
    const images = (seed: number) => samples('train', 50, seed).map((s) => Buffer.from(s.image.data).toString('hex'));
    const [seed0, seed1] = [images(0), images(1)];
    expect(seed1.filter((image, i) => image === seed0[i]).length).toBeLessThan(5);
  });

  test('hand-checked samples', () => {
    // Seed 0, train, size 32: the first few, as drawn and checked by eye.
    expect(samples('train', 4).map((s) => [s.question, s.answer])).toEqual([
      ['Is the square on the left?', 'yes'], // blue square bottom left, yellow circle top left, red triangle top right
      ['Is the circle on the left?', 'yes'], // one blue circle, bottom left
      ['How many shapes are there?', 'three'],
      ['What color is the square?', 'red'], // one red square, top left
    ]);
  });

  test.each([32, 64])('the pixels agree with every answer (%i px)', (imgSize) => {
    for (const split of ['train', 'val'] as const) {
      for (const sample of samples(split, 500, 11, imgSize)) {
        expect(answerFromPixels(sample), sample.question).toBe(sample.answer);
        expect(readPixels(sample).size).toBe(sample.objects.length);
      }
    }
  });

  test('questions and answers are balanced', () => {
    const train = samples('train', 4000);
    const share = (pred: (s: BuiltinSample) => boolean) => train.filter(pred).length / train.length;
    for (const prefix of ['What color', 'What shape', 'How many', 'Is the']) {
      expect(share((s) => s.question.startsWith(prefix))).toBeCloseTo(0.25, 1);
    }
    const onLeft = train.filter((s) => s.question.startsWith('Is the'));
    expect(onLeft.filter((s) => s.answer === 'yes').length / onLeft.length).toBeCloseTo(0.5, 1);
  });

  test('held-out combinations never occur in train, whatever the seeds', () => {
    const train = new Set([...samples('train', 3000, 0), ...samples('train', 3000, 1)].map(combination));
    const val = [...samples('val', 500, 0), ...samples('val', 500, 7)];
    expect(val.filter((s) => train.has(combination(s)))).toEqual([]);
    // The held-out split still asks every kind of question.
    for (const prefix of ['What color', 'What shape', 'How many', 'Is the']) {
      expect(val.some((s) => s.question.startsWith(prefix))).toBe(true);
    }
  });

  test('a text-only model cannot answer: majority answer per question scores near chance', () => {
    // The best a model blind to the image can do: for each question, the answer
    // most often seen with it in train.
    const counts = new Map<string, Map<string, number>>();
    for (const s of samples('train', 20000)) {
      const answers = counts.get(s.question) ?? new Map<string, number>();
      answers.set(s.answer, (answers.get(s.answer) ?? 0) + 1);
      counts.set(s.question, answers);
    }
    const majority = (q: string) => [...counts.get(q)!].sort((a, b) => b[1] - a[1])[0][0];
    const val = samples('val', 2000);
    const accuracy = val.filter((s) => majority(s.question) === s.answer).length / val.length;
    console.log(`text-only baseline on the held-out split: ${(100 * accuracy).toFixed(1)}%`);
    // Chance is 20% (colour), 33% (shape, count), 50% (yes/no): 34% on average.
    expect(accuracy).toBeLessThan(0.4);
  });

  test('items: CHW floats of the drawn image, the VQADataset prompt, the answer with eos', async () => {
    const dataset = new BuiltinVQADataset({ eosToken: eos }, { split: 'val', size: 5, seed: 2, imgSize: 64 });
    expect([dataset.length, dataset.imgSize]).toEqual([5, 64]);
    const item = await dataset.get(3);
    const sample = dataset.sample(3);
    expect(item.text_data).toBe(`Question: ${sample.question} Answer:`);
    expect(item.answer).toBe(`${sample.answer}${eos}`);
    expect(item.image.length).toBe(3 * 64 * 64);
    const plane = 64 * 64;
    for (let p = 0; p < plane; p += 97) {
      for (let c = 0; c < 3; c++)
        expect(item.image[c * plane + p]).toBe(Math.fround(sample.image.data[p * 3 + c] / 255));
    }
    expect(() => dataset.sample(5)).toThrow(RangeError);
    expect(() => new BuiltinVQADataset({ eosToken: eos }, { imgSize: 16 })).toThrow(/at least 32 px/);
  });

  test('renderBuiltinExample: a PNG of the sample, with its question and answer', () => {
    const example = renderBuiltinExample(5);
    const sample = builtinSample('train', 0, 5, 32);
    expect(example.question).toBe(sample.question);
    expect(example.answer).toBe(sample.answer);
    expect(decodeImage(example.png, 'example')).toEqual(sample.image);
  });
});

describe('the built-in tokenizer', () => {
  const json = buildBuiltinTokenizer();
  const tok = createTokenizer(json);
  const { questions, answers } = builtinQuestionsAndAnswers();

  test('a small vocabulary; eos (also padding) is id 0', () => {
    expect(tok.vocabSize).toBeLessThan(64);
    expect([tok.eosToken, tok.eosTokenId, tok.padTokenId]).toEqual([eos, 0, 0]);
    // The same object survives JSON, as a tokenizer.json file on disk.
    expect(createTokenizer(JSON.parse(JSON.stringify(json))).encode('Question: What color is the circle?')).toEqual(
      tok.encode('Question: What color is the circle?'),
    );
  });

  test('every prompt with every answer round-trips, without <unk>', () => {
    for (const question of questions) {
      for (const answer of answers) {
        const text = `Question: ${question} Answer:${answer}${eos}`;
        const ids = tok.encode(text);
        expect(ids).not.toContain(1);
        expect(tok.decode(ids)).toBe(text);
        expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text.slice(0, -eos.length));
        // The prompt's tokens are a prefix of the whole: the collator's labels rely on it.
        const prompt = tok.encode(`Question: ${question} Answer:`);
        expect(ids.slice(0, prompt.length)).toEqual(prompt);
        expect(ids.slice(prompt.length)).toEqual(tok.encode(`${answer}${eos}`));
      }
    }
    // An answer is one token and eos: generation stops after one word.
    for (const answer of answers) expect(tok.encode(answer + eos)).toHaveLength(2);
    expect(SHAPES.every((shape) => answers.includes(shape))).toBe(true);
  });

  test('unknown words become <unk>', () => {
    expect(tok.decode(tok.encode('Question: What color is the dog?'))).toBe('Question: What color is the<unk>?');
  });

  test('VQACollator: loss exactly on the answer word and eos', async () => {
    const dataset = new BuiltinVQADataset(tok, { size: 8 });
    const items = await Promise.all([0, 1, 2, 3].map((i) => dataset.get(i)));
    const batch = new VQACollator(tok, 16).call(items);
    expect([batch.batchSize, batch.seqLen, batch.input_ids.length]).toEqual([4, 16, 64]);
    for (let b = 0; b < 4; b++) {
      const labels = Array.from(batch.labels.subarray(b * 16, (b + 1) * 16)).filter((l) => l !== IGNORE_INDEX);
      expect(labels).toEqual(tok.encode(items[b].answer));
    }
  });
});
