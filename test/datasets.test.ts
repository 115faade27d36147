// VQADataset and MMStarDataset over the real layouts (the cauldron's and
// MMStar's parquet samples in the gold set, JSONL files made here), the
// skipping of malformed rows, the train/val split, and the MMStar scoring regex.

import { GOLD } from './fixtures.ts';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { asyncBufferFromFile, parquetMetadata, parquetReadObjects } from 'hyparquet';
import { PNG } from 'pngjs';
import { afterAll, afterEach, beforeEach, describe, expect, test, vi, type MockInstance } from 'vitest';
import {
  checkMultipleChoiceWithRegex,
  concatenateRows,
  MMStarDataset,
  ParquetFile,
  selectRows,
  trainValSplit,
  VQADataset,
  type VQARow,
  type VQARows,
} from '../data/datasets.ts';
import { getImageProcessor } from '../data/processors.ts';
import { openMMStarRows, openParquet, openVQARows } from '../node/datasets.ts';
import { type Compressor, writeCauldronParquet } from '../bench/data.ts';

const CAULDRON = `${GOLD}parquet/cauldron_sample.parquet`;
const MMSTAR = `${GOLD}parquet/mmstar_sample.parquet`;
const tokenizer = { eosToken: '<|endoftext|>' };
const S = 32;
const processImage = getImageProcessor(S);

let warn: MockInstance<typeof console.warn>;
beforeEach(() => {
  warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
});
afterEach(() => {
  warn.mockRestore();
});

/** The cauldron sample's image bytes, read straight with hyparquet. */
async function cauldronImages(): Promise<Uint8Array[][]> {
  const rows = await parquetReadObjects({ file: await asyncBufferFromFile(CAULDRON), utf8: false });
  return rows.map((row) => row.images.map((image: { bytes: Uint8Array }) => image.bytes));
}

/** A small PNG of one colour. */
function png(rgb: [number, number, number]): Buffer {
  const image = new PNG({ width: 5, height: 4 });
  for (let p = 0; p < 20; p++) image.data.set([...rgb, 255], p * 4);
  return PNG.sync.write(image);
}

/** In-memory rows numbered 0..n-1 (the question is the number), for split tests. */
function numberedRows(n: number): VQARows {
  return {
    length: n,
    read: async (i) => ({ image: new Uint8Array(), question: String(i), answer: '', where: `row ${i}` }),
  };
}

async function readAll(rows: VQARows): Promise<VQARow[]> {
  return Promise.all(Array.from({ length: rows.length }, (_, i) => rows.read(i)));
}

describe('the cauldron parquet layout', () => {
  test('row counts come from the metadata; row groups of 2', async () => {
    const file = await ParquetFile.open(await openParquet(CAULDRON), CAULDRON, ['images', 'texts'], 'a cauldron file');
    expect(file.numRows).toBe(5);
    const rows = await openVQARows([CAULDRON]);
    expect(rows.length).toBe(5);
  });

  test('items: first image, first turn, prompt and eos as nanoVLM makes them', async () => {
    const dataset = new VQADataset(await openVQARows([CAULDRON]), tokenizer, S);
    const images = await cauldronImages();
    const item0 = await dataset.get(0);
    expect(item0).toEqual({
      image: processImage(images[0][0]),
      text_data: 'Question: What animal is this? Answer:',
      answer: 'A cat.<|endoftext|>',
    });
    expect(item0!.image.length).toBe(3 * S * S);
    // Row 1 has two turns: only the first is used.
    const item1 = await dataset.get(1);
    expect(item1!.text_data).toBe('Question: What is in the cup? Answer:');
    expect(item1!.answer).toBe('Coffee.<|endoftext|>');
    // Row 3 has two images: only the first is used.
    expect(images[3].length).toBe(2);
    const item3 = await dataset.get(3);
    expect(item3!.image).toEqual(processImage(images[3][0]));
    expect(item3!.image).not.toEqual(processImage(images[3][1]));
    expect(item3!.answer).toBe('Two.<|endoftext|>');
    expect(dataset.skipped).toBe(0);
  });

  test('an undecodable image is skipped with a warning naming file and row, counted once', async () => {
    const dataset = new VQADataset(await openVQARows([CAULDRON]), tokenizer, S);
    expect(await dataset.get(2)).toBeNull();
    expect(dataset.skipped).toBe(1);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0][0]).toMatch(/^skipping .*cauldron_sample\.parquet row 2: not an image/);
    // A second epoch meets the row again: no new warning, no new count.
    expect(await dataset.get(2)).toBeNull();
    expect(dataset.skipped).toBe(1);
    expect(warn).toHaveBeenCalledTimes(1);
    // The rows around it still load, in any order.
    for (const i of [4, 0, 3, 1]) expect(await dataset.get(i)).not.toBeNull();
    expect(dataset.skipped).toBe(1);
  });

  test('rows read concurrently in shuffled order come out right', async () => {
    const rows = await openVQARows([CAULDRON]);
    const order = [4, 1, 3, 0, 2, 4, 0];
    const read = await Promise.all(order.map((i) => rows.read(i)));
    expect(read.map((row) => row.where)).toEqual(order.map((i) => `${CAULDRON} row ${i}`));
    expect(read[0].question).toBe('What does the picture show?');
    expect(read[3].question).toBe('What animal is this?');
  });

  test('a bad index is an error, not a skipped row', async () => {
    const dataset = new VQADataset(await openVQARows([CAULDRON]), tokenizer, S);
    await expect(dataset.get(5)).rejects.toThrow('index 5 out of range [0, 5)');
  });
});

describe('unreadable files are errors with one clear line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nanovlm-datasets-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('missing parquet file', async () => {
    await expect(openVQARows([join(dir, 'nope.parquet')])).rejects.toThrow(/^parquet file not found: .*nope\.parquet$/);
  });

  test('a file that is not parquet', async () => {
    const fake = join(dir, 'fake.parquet');
    writeFileSync(fake, 'this is not a parquet file at all');
    await expect(openVQARows([fake])).rejects.toThrow(/fake\.parquet is not a parquet file/);
  });

  test('a parquet file of another layout', async () => {
    await expect(openVQARows([MMSTAR])).rejects.toThrow(
      /mmstar_sample\.parquet lacks the column\(s\) images, texts \(it has index, question, image, answer/,
    );
    await expect(openMMStarRows(CAULDRON)).rejects.toThrow(/lacks the column\(s\) question, image, answer/);
  });

  test('missing JSONL file, unknown file type, empty folder', async () => {
    await expect(openVQARows([join(dir, 'nope.jsonl')])).rejects.toThrow(/^JSONL file not found: .*nope\.jsonl$/);
    writeFileSync(join(dir, 'data.csv'), 'a,b\n');
    await expect(openVQARows([join(dir, 'data.csv')])).rejects.toThrow(/expected a \.parquet or \.jsonl file/);
    await expect(openVQARows([join(dir, 'no-such-folder')])).rejects.toThrow(/^not found: .*no-such-folder$/);
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    await expect(openVQARows([empty])).rejects.toThrow(/^no \.parquet or \.jsonl files in /);
  });
});

describe('JSONL files with images beside them', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nanovlm-jsonl-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'images'));
  writeFileSync(join(dir, 'images', 'red.png'), png([255, 0, 0]));
  writeFileSync(join(dir, 'images', 'blue.png'), png([0, 0, 255]));
  writeFileSync(join(dir, 'images', 'broken.png'), 'not a png');
  const lines = [
    JSON.stringify({ image: 'images/red.png', question: 'What color is it?', answer: 'Red.' }),
    '{"image": "images/blue.png", "question": "Broken JSON', // line 2: malformed JSON
    JSON.stringify({ image: 'images/missing.png', question: 'Where?', answer: 'Nowhere.' }), // line 3
    '', // blank lines are not rows
    JSON.stringify({ image: 'images/blue.png', question: 'No answer here' }), // line 5: missing field
    JSON.stringify({ image: 'images/broken.png', question: 'Q', answer: 'A' }), // line 6: undecodable
    JSON.stringify({ image: 'images/blue.png', question: 'And this one?', answer: 'Blue.' }), // line 7
  ];
  const jsonl = join(dir, 'data.jsonl');
  writeFileSync(jsonl, lines.join('\n') + '\n');

  test('good lines load; each malformed line is skipped with a warning and counted', async () => {
    const dataset = new VQADataset(await openVQARows([jsonl]), tokenizer, S);
    expect(dataset.length).toBe(6);
    const items = await Promise.all(Array.from({ length: 6 }, (_, i) => dataset.get(i)));
    expect(items[0]).toEqual({
      image: processImage(png([255, 0, 0])),
      text_data: 'Question: What color is it? Answer:',
      answer: 'Red.<|endoftext|>',
    });
    expect(items[5]!.answer).toBe('Blue.<|endoftext|>');
    expect(items[5]!.image[2 * S * S]).toBe(1); // the blue plane
    expect(items.slice(1, 5)).toEqual([null, null, null, null]);
    expect(dataset.skipped).toBe(4);
    const messages = warn.mock.calls.map((call) => String(call[0])).sort();
    expect(messages).toHaveLength(4);
    expect(messages[0]).toMatch(/^skipping .*data\.jsonl line 2: .*JSON/);
    expect(messages[1]).toMatch(/^skipping .*data\.jsonl line 3: image not found: .*images\/missing\.png$/);
    expect(messages[2]).toMatch(/^skipping .*data\.jsonl line 5: missing answer$/);
    expect(messages[3]).toMatch(/^skipping .*data\.jsonl line 6: not an image/);
  });

  test('a folder mixes its parquet and JSONL files, in sorted order', async () => {
    const folder = join(dir, 'mix');
    mkdirSync(join(folder, 'sub'), { recursive: true });
    copyFileSync(CAULDRON, join(folder, 'a.parquet'));
    mkdirSync(join(folder, 'sub', 'images'));
    copyFileSync(join(dir, 'images', 'red.png'), join(folder, 'sub', 'images', 'red.png'));
    writeFileSync(join(folder, 'sub', 'b.jsonl'), lines[0]);
    const rows = await openVQARows([folder, jsonl]);
    expect(rows.length).toBe(5 + 1 + 6);
    expect((await rows.read(0)).question).toBe('What animal is this?');
    expect((await rows.read(5)).question).toBe('What color is it?');
    expect((await rows.read(11)).question).toBe('And this one?');
  });
});

describe('mixing, shuffling and splitting', () => {
  test('concatenateRows and selectRows', async () => {
    const rows = concatenateRows([numberedRows(3), numberedRows(2)]);
    expect((await readAll(rows)).map((row) => row.question)).toEqual(['0', '1', '2', '0', '1']);
    const selected = selectRows(rows, [4, 0, 2]);
    expect((await readAll(selected)).map((row) => row.question)).toEqual(['1', '0', '2']);
    await expect(rows.read(5)).rejects.toThrow(RangeError);
  });

  test("nanoVLM's split: shuffled by seed, cut at data_cutoff_idx, val_ratio off the end", async () => {
    const rows = numberedRows(100);
    const { train, val } = trainValSplit(rows, { valRatio: 0.1, seed: 0 });
    expect([train.length, val.length]).toEqual([90, 10]);
    const ids = async (r: VQARows) => (await readAll(r)).map((row) => Number(row.question));
    const all = [...(await ids(train)), ...(await ids(val))];
    expect([...all].sort((a, b) => a - b)).toEqual([...Array(100).keys()]);
    expect(all).not.toEqual([...Array(100).keys()]); // shuffled

    // Same seed, same split; another seed, another one.
    const again = trainValSplit(rows, { valRatio: 0.1, seed: 0 });
    expect(await ids(again.val)).toEqual(await ids(val));
    expect(await ids(trainValSplit(rows, { valRatio: 0.1, seed: 1 }).val)).not.toEqual(await ids(val));

    // The cutoff keeps the first rows of the same shuffle; val is int(total * ratio).
    const cut = trainValSplit(rows, { valRatio: 0.15, dataCutoffIdx: 30, seed: 0 });
    expect([cut.train.length, cut.val.length]).toEqual([26, 4]);
    expect([...(await ids(cut.train)), ...(await ids(cut.val))]).toEqual(all.slice(0, 30));
  });
});

describe('MMStar', () => {
  const gold = JSON.parse(readFileSync(`${GOLD}text.json`, 'utf8')).mmstar_collator;

  test('prompt and answer match the gold strings', async () => {
    // The gold prompts were made from these questions (options included) and answers.
    const rows: VQARows = {
      length: 2,
      read: async (i) => ({
        image: png([0, 0, 0]),
        question: ['Which is larger? A: 1 B: 2', 'Pick one. A: cat B: dog C: bird'][i],
        answer: ['B', 'C'][i],
        where: `row ${i}`,
      }),
    };
    const dataset = new MMStarDataset(rows, tokenizer, S);
    const items = await Promise.all([dataset.get(0), dataset.get(1)]);
    expect(items.map((item) => item!.text_data)).toEqual(gold.questions);
    expect(items.map((item) => item!.answer)).toEqual(gold.answers);
  });

  test("MMStar's parquet layout", async () => {
    const dataset = new MMStarDataset(await openMMStarRows(MMSTAR), tokenizer, S);
    expect(dataset.length).toBe(3);
    const items = await Promise.all([0, 1, 2].map((i) => dataset.get(i)));
    expect(items[0]!.text_data).toBe(
      'Question: Which animal is shown?\nOptions: A: dog, B: cat, C: bird, ' +
        'D: fish \nAnswer only with the letter! \nAnswer:',
    );
    expect(items.map((item) => item!.answer)).toEqual(['B<|endoftext|>', 'A<|endoftext|>', 'C<|endoftext|>']);
    expect(items[2]!.image.length).toBe(3 * S * S);
    expect(dataset.skipped).toBe(0);
  });

  test('checkMultipleChoiceWithRegex', () => {
    const cases: [string, string, boolean][] = [
      ['B', 'B', true],
      ['B', 'b', true], // the answer is upper-cased
      ['b', 'B', false], // the output is not (nor in nanoVLM)
      ['The answer is B.', 'B', true],
      ['Answer: C, probably', 'C', true],
      ['(the best is C here)', 'C', true],
      ['A', 'B', false],
      ['Because', 'B', false],
      ['ABC', 'B', false],
      ['', 'A', false],
    ];
    expect(
      checkMultipleChoiceWithRegex(
        cases.map((c) => c[0]),
        cases.map((c) => c[1]),
      ),
    ).toEqual(cases.map((c) => c[2]));
    expect(() => checkMultipleChoiceWithRegex(['A', 'B'], ['A'])).toThrow('2 outputs but 1 answers');
  });
});

/**
 * A zstd frame of raw (stored) blocks: valid zstd that every decoder reads,
 * made without a zstd compressor (Node 20 has none). Enough to check that the
 * codec reaches the decompressor.
 */
function zstdStored(input: Uint8Array): Uint8Array {
  const MAX_BLOCK = 1 << 17;
  // magic; single segment, 4-byte size
  const parts: number[] = [0x28, 0xb5, 0x2f, 0xfd, 0xa0, ...new Uint8Array(new Uint32Array([input.length]).buffer)];
  for (let at = 0; at < input.length || at === 0; at += MAX_BLOCK) {
    const size = Math.min(MAX_BLOCK, input.length - at);
    const header = (size << 3) | (at + size >= input.length ? 1 : 0); // block type 0 (raw), last-block bit
    parts.push(header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, ...input.subarray(at, at + size));
    if (input.length === 0) break;
  }
  return new Uint8Array(parts);
}

describe('compressed parquet', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nanovlm-codecs-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const rowsOf = async (file: string) => readAll(await openVQARows([file]));

  test('gzip, brotli and zstd files read as the snappy original', async () => {
    const original = await rowsOf(CAULDRON);
    const rows = original.map((r) => ({ image: r.image, question: r.question, answer: r.answer }));
    const codecs: Record<string, Compressor> = {
      GZIP: (b) => gzipSync(b),
      BROTLI: (b) => brotliCompressSync(b),
      ZSTD: zstdStored,
    };
    for (const [codec, compress] of Object.entries(codecs)) {
      const file = join(dir, `${codec}.parquet`);
      writeCauldronParquet(file, rows, { rowGroupSize: 2, codec, compressors: { [codec]: compress } });
      const metadata = parquetMetadata(new Uint8Array(readFileSync(file)).buffer);
      expect(metadata.row_groups[0].columns[0].meta_data?.codec).toBe(codec);
      const got = await rowsOf(file);
      expect(
        got.map((r) => [r.question, r.answer, Array.from(r.image)]),
        codec,
      ).toEqual(original.map((r) => [r.question, r.answer, Array.from(r.image)]));
    }
  });

  test('LZO, which no reader here has, is refused at open with the codec named', async () => {
    const file = join(dir, 'lzo.parquet');
    writeCauldronParquet(file, [{ image: png([1, 2, 3]), question: 'q', answer: 'a' }], {
      codec: 'LZO',
      compressors: { LZO: (b) => b },
    });
    await expect(openVQARows([file])).rejects.toThrow(
      /lzo\.parquet is compressed with LZO; nanovlm-ts reads uncompressed, snappy, gzip, brotli, zstd/,
    );
  });
});

describe('row groups', () => {
  test('a parquet file lists its row groups; concatenation and selection keep them', async () => {
    const file = await openVQARows([CAULDRON]); // row groups of 2, 2 and 1
    expect(file.groups!()).toEqual([[0, 1], [2, 3], [4]]);
    const two = concatenateRows([file, await openVQARows([CAULDRON])]);
    expect(two.groups!()).toEqual([[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]);
    // selected rows 4, 1, 0, 3: positions grouped by the group their row is in
    expect(selectRows(file, [4, 1, 0, 3]).groups!()).toEqual([[1, 2], [3], [0]]);
    // rows read on their own (JSONL, in memory) have none; mixed with a file, each is its own group
    expect(numberedRows(3).groups).toBeUndefined();
    expect(concatenateRows([numberedRows(2), file]).groups!()).toEqual([[0], [1], [2, 3], [4, 5], [6]]);
    expect(new VQADataset(file, tokenizer, S).groups()).toEqual([[0, 1], [2, 3], [4]]);
  });
});
