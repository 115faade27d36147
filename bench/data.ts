// Timing data loading: parquet files in the two layouts the issues measure,
// made here (nothing is downloaded), read through VQADataset and a shuffling
// DataLoader exactly as train.ts reads them.
//
//  - Fashion-MNIST as VQA: 40 row groups of 500 rows, 28 x 28 grayscale PNGs
//    (small images, many rows per group: decoding a group per row was the cost)
//  - the cauldron: JPEG photos of 224 x 224, row groups of 100
//
// Both use the cauldron's columns (images: list<struct<bytes, path>>, texts:
// list<struct<user, assistant, source>>). The images are synthetic but cost
// what real ones cost to decode: PNGs of shapes with noise, JPEGs of smooth
// gradients with texture.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parquetWriteBuffer } from 'hyparquet-writer';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { VQACollator, type VQABatch, type VQAItem } from '../data/collators.ts';
import { VQADataset } from '../data/datasets.ts';
import { openVQARows } from '../node/datasets.ts';
import { DataLoader } from '../data/loader.ts';
import type { Tokenizer } from '../data/tokenizer.ts';
import { Generator } from '../tensor/random.ts';

/** One VQA row to write: encoded image bytes, a question and its answer. */
export interface RowToWrite {
  image: Uint8Array;
  question: string;
  answer: string;
}

/** The cauldron's schema: images list<struct<bytes, path>>, texts list<struct<user, assistant, source>>. */
const CAULDRON_SCHEMA = [
  { name: 'schema', repetition_type: 'REQUIRED', num_children: 2 },
  { name: 'images', repetition_type: 'OPTIONAL', num_children: 1, converted_type: 'LIST' },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', repetition_type: 'OPTIONAL', num_children: 2 },
  { name: 'bytes', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL' },
  { name: 'path', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL', converted_type: 'UTF8' },
  { name: 'texts', repetition_type: 'OPTIONAL', num_children: 1, converted_type: 'LIST' },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', repetition_type: 'OPTIONAL', num_children: 3 },
  { name: 'user', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL', converted_type: 'UTF8' },
  { name: 'assistant', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL', converted_type: 'UTF8' },
  { name: 'source', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL', converted_type: 'UTF8' },
] as const;

/** A compressor for a parquet codec: page bytes in, compressed bytes out. */
export type Compressor = (input: Uint8Array) => Uint8Array;

/** Writes rows as a parquet file in the cauldron's layout (hyparquet-writer), with row groups of `rowGroupSize`. */
export function writeCauldronParquet(
  file: string,
  rows: RowToWrite[],
  {
    rowGroupSize = 500,
    codec = 'SNAPPY',
    compressors,
  }: { rowGroupSize?: number; codec?: string; compressors?: Record<string, Compressor> } = {},
): void {
  const buffer = parquetWriteBuffer({
    columnData: [
      { name: 'images', data: rows.map((r) => [{ bytes: r.image, path: null }]) },
      { name: 'texts', data: rows.map((r) => [{ user: r.question, assistant: r.answer, source: 'synthetic' }]) },
    ],
    // hyparquet-writer's types name the codecs and schema fields as parquet's thrift file does
    schema: CAULDRON_SCHEMA as unknown as Parameters<typeof parquetWriteBuffer>[0]['schema'],
    codec: codec as 'SNAPPY',
    compressors,
    rowGroupSize,
  });
  writeFileSync(file, new Uint8Array(buffer));
}

const CLOTHES = ['T-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot'];

/** Fashion-MNIST-like rows: 28 x 28 grayscale PNGs of a blob with noise, "What is this?" and a class name. */
export function fashionRows(n: number, seed = 0): RowToWrite[] {
  const g = new Generator(seed);
  return Array.from({ length: n }, () => {
    const image = new PNG({ width: 28, height: 28 });
    const [cx, cy, r] = [8 + 12 * g.random(), 8 + 12 * g.random(), 5 + 6 * g.random()];
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r;
        const v = inside ? 120 + Math.floor(130 * g.random()) : Math.floor(20 * g.random());
        image.data.set([v, v, v, 255], 4 * (y * 28 + x));
      }
    }
    const bytes = PNG.sync.write(image, { colorType: 0 }); // grayscale, as Fashion-MNIST's PNGs
    return { image: new Uint8Array(bytes), question: 'What is this?', answer: CLOTHES[g.randint(CLOTHES.length)] };
  });
}

/** Photo-like rows: 224 x 224 JPEGs (quality 85) of smooth colour gradients with texture, like the cauldron's. */
export function photoRows(n: number, seed = 0): RowToWrite[] {
  const g = new Generator(seed);
  return Array.from({ length: n }, () => {
    const S = 224;
    const data = new Uint8Array(S * S * 4);
    const [a, b, c] = [g.random(), g.random(), g.random()];
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const p = 4 * (y * S + x);
        const t = 18 * g.random();
        data[p] = 255 * (0.5 + 0.4 * Math.sin(a * 9 + x / 37)) - t;
        data[p + 1] = 255 * (0.5 + 0.4 * Math.cos(b * 9 + y / 29)) - t;
        data[p + 2] = 255 * (0.5 + 0.4 * Math.sin(c * 9 + (x + y) / 53)) - t;
        data[p + 3] = 255;
      }
    }
    const image = jpeg.encode({ data, width: S, height: S }, 85).data;
    return { image: new Uint8Array(image), question: 'What is in the picture?', answer: 'A landscape.' };
  });
}

/** The time to load batches of one layout, shuffled, on the main thread: ms per batch and per sample. */
export interface LoadTiming {
  name: string;
  batchSize: number;
  imgSize: number;
  batches: number;
  msPerBatch: number;
  msPerSample: number;
  spread: [number, number];
}

/**
 * Writes a layout's file to a temporary folder and reads `batches` shuffled
 * batches through VQADataset + DataLoader (no worker threads: the time the
 * training loop waits when loading is not overlapped), after one warm-up
 * batch. Each batch's time is measured alone.
 */
export async function benchLoading(
  name: string,
  rows: RowToWrite[],
  rowGroupSize: number,
  tokenizer: Tokenizer,
  {
    batchSize,
    imgSize,
    batches,
    maxLength = 64,
  }: { batchSize: number; imgSize: number; batches: number; maxLength?: number },
): Promise<LoadTiming> {
  const dir = mkdtempSync(join(tmpdir(), 'nanovlm-bench-data-'));
  try {
    const file = join(dir, 'data.parquet');
    writeCauldronParquet(file, rows, { rowGroupSize });
    const dataset = new VQADataset(await openVQARows([file]), tokenizer, imgSize);
    const collator = new VQACollator(tokenizer, maxLength);
    const loader = new DataLoader<VQAItem, VQABatch>(dataset, {
      batchSize,
      collate: (items) => collator.call(items),
      shuffle: true,
      prefetch: 0,
    });
    const times: number[] = [];
    let t0 = performance.now();
    for await (const { step } of loader.epoch(0)) {
      const now = performance.now();
      if (step > 0) times.push(now - t0); // batch 0 warms up
      if (step === batches) break;
      t0 = performance.now();
    }
    await loader.close();
    const sorted = [...times].sort((x, y) => x - y);
    const msPerBatch = sorted[sorted.length >> 1];
    return {
      name,
      batchSize,
      imgSize,
      batches: times.length,
      msPerBatch,
      msPerSample: msPerBatch / batchSize,
      spread: [sorted[0], sorted[sorted.length - 1]],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
