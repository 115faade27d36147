// The DataLoader: batch shapes through the collators, per-epoch shuffling by
// seed, exact resumption, skipped rows, image decoding in worker threads that
// overlaps with the consumer's work, and threads that never hold the process.

import { GOLD } from './fixtures.ts';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import jpeg from 'jpeg-js';
import { afterEach, beforeEach, describe, expect, test, vi, onTestFinished, type MockInstance } from 'vitest';
import { BuiltinVQADataset, buildBuiltinTokenizer } from '../data/builtin.ts';
import { MMStarCollator, VQACollator, type VQAItem } from '../data/collators.ts';
import { parquetStats, VQADataset, type Dataset } from '../data/datasets.ts';
import { openVQARows } from '../node/datasets.ts';
import { writeCauldronParquet } from '../bench/data.ts';
import { PNG } from 'pngjs';
import { DataLoader, type LoadedBatch } from '../data/loader.ts';
import { createTokenizer } from '../data/tokenizer.ts';

const CAULDRON = `${GOLD}parquet/cauldron_sample.parquet`;
const tok = createTokenizer(buildBuiltinTokenizer());
const collator = new VQACollator(tok, 16);
const collate = (items: VQAItem[]) => collator.call(items);
const TINY_PNG = (() => {
  const image = new PNG({ width: 4, height: 4 });
  image.data.fill(200);
  return new Uint8Array(PNG.sync.write(image));
})();

let warn: MockInstance<typeof console.warn>;
beforeEach(() => {
  warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
});
afterEach(() => {
  warn.mockRestore();
});

async function collect<B>(batches: AsyncIterable<LoadedBatch<B>>): Promise<LoadedBatch<B>[]> {
  const all: LoadedBatch<B>[] = [];
  for await (const batch of batches) all.push(batch);
  return all;
}

/** A dataset whose item i is the number i (null where `skip` says so), logging every get. */
class NumberDataset implements Dataset<number> {
  readonly imgSize = 1;
  readonly calls: number[] = [];
  constructor(
    readonly length: number,
    readonly skip: (i: number) => boolean = () => false,
  ) {}
  async get(i: number): Promise<number | null> {
    this.calls.push(i);
    return this.skip(i) ? null : i;
  }
}

describe('DataLoader', () => {
  test('batches of the built-in set through VQACollator and MMStarCollator', async () => {
    const dataset = new BuiltinVQADataset(tok, { size: 10 });
    const loader = new DataLoader(dataset, { batchSize: 4, collate, shuffle: true });
    const batches = await collect(loader.epoch(0));
    expect(batches.map((b) => [b.step, b.batch.batchSize])).toEqual([
      [0, 4],
      [1, 4],
      [2, 2],
    ]);
    const { batch } = batches[0];
    expect([batch.input_ids.length, batch.attention_mask.length, batch.labels.length]).toEqual([64, 64, 64]);
    expect(batch.images.map((image) => image.length)).toEqual([3072, 3072, 3072, 3072]);

    const mmstar = new MMStarCollator(tok);
    const evalLoader = new DataLoader(dataset, { batchSize: 3, collate: (items) => mmstar.call(items) });
    const first = (await evalLoader.epoch(0).next()).value!.batch;
    expect([first.batchSize, first.labelLen]).toEqual([3, 2]); // one word and eos
  });

  test('length and dropLast', async () => {
    const dataset = new NumberDataset(10);
    const keep = new DataLoader(dataset, { batchSize: 4, collate: (items) => items });
    const drop = new DataLoader(dataset, { batchSize: 4, collate: (items) => items, dropLast: true });
    expect([keep.length, drop.length]).toEqual([3, 2]);
    expect((await collect(keep.epoch(0))).map((b) => b.batch)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [8, 9],
    ]);
    expect((await collect(drop.epoch(0))).map((b) => b.batch)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ]);
    expect(() => new DataLoader(dataset, { batchSize: 0, collate: (items) => items })).toThrow(/positive integer/);
  });

  test('a new order each epoch, fixed by (seed, epoch)', async () => {
    const loader = (seed: number) =>
      new DataLoader(new NumberDataset(50), { batchSize: 8, collate: (i) => i, shuffle: true, seed });
    const [a, b] = [loader(0), loader(0)];
    const identity = [...Array(50).keys()];
    for (const epoch of [0, 1, 5]) {
      expect([...a.order(epoch)].sort((x, y) => x - y)).toEqual(identity);
      expect(a.order(epoch)).toEqual(b.order(epoch));
    }
    expect(a.order(0)).not.toEqual(a.order(1));
    expect(a.order(0)).not.toEqual(loader(1).order(0));
    expect(loader(1).order(0)).not.toEqual(a.order(1));
    const batches = await collect(a.epoch(1));
    expect(batches.flatMap((b) => b.batch)).toEqual(a.order(1));
  });

  test('resuming at (epoch, step) gives exactly the batches the run would have seen', async () => {
    const make = () =>
      new DataLoader(new BuiltinVQADataset(tok, { size: 30, seed: 4 }), {
        batchSize: 4,
        collate,
        shuffle: true,
        seed: 9,
      });
    const full = await collect(make().epoch(2));
    // A fresh loader (as after a restart) asked for epoch 2 from step 3 on.
    const resumed = await collect(make().epoch(2, 3));
    expect(resumed.map((b) => b.step)).toEqual([3, 4, 5, 6, 7]);
    expect(resumed).toEqual(full.slice(3));
  });

  test('skipped rows make a batch shorter; a batch with nothing left is not yielded', async () => {
    const dataset = new NumberDataset(10, (i) => i === 1 || i === 4 || i === 5);
    const loader = new DataLoader(dataset, { batchSize: 2, collate: (items) => items });
    expect(await collect(loader.epoch(0))).toEqual([
      { step: 0, batch: [0] },
      { step: 1, batch: [2, 3] },
      { step: 3, batch: [6, 7] },
      { step: 4, batch: [8, 9] },
    ]);
  });

  test('the next batches load while the current one is in use', async () => {
    const dataset = new NumberDataset(20);
    const loader = new DataLoader(dataset, { batchSize: 2, collate: (items) => items, prefetch: 2 });
    const batches = loader.epoch(0);
    expect((await batches.next()).value).toEqual({ step: 0, batch: [0, 1] });
    // While step 0 is being used, steps 1 and 2 are loaded, and no further.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(dataset.calls).toEqual([0, 1, 2, 3, 4, 5]);
    await batches.return(undefined);
  });
});

describe('DataLoader over row groups', () => {
  /** NumberDataset stored in groups of `size` (the last one shorter). */
  class GroupedDataset extends NumberDataset {
    constructor(
      length: number,
      readonly size: number,
    ) {
      super(length);
    }
    groups(): number[][] {
      return Array.from({ length: Math.ceil(this.length / this.size) }, (_, g) =>
        Array.from({ length: Math.min(this.size, this.length - g * this.size) }, (_, i) => g * this.size + i),
      );
    }
  }

  test('shuffles the groups, then the items within each window of groups', () => {
    const dataset = new GroupedDataset(1003, 50); // 21 groups
    const loader = new DataLoader(dataset, {
      batchSize: 8,
      collate: (items) => items,
      shuffle: true,
      seed: 3,
      shuffleWindow: 4,
    });
    const order = loader.order(0);
    expect([...order].sort((a, b) => a - b)).toEqual([...Array(1003).keys()]); // every item once
    const windows: number[][] = [];
    for (let at = 0; at < order.length;) {
      const groupsHere = new Set<number>();
      let end = at;
      while (end < order.length && (groupsHere.has(Math.floor(order[end] / 50)) || groupsHere.size < 4))
        groupsHere.add(Math.floor(order[end++] / 50));
      windows.push(order.slice(at, end));
      at = end;
    }
    expect(windows.length).toBe(6); // ceil(21 / 4) windows of at most 4 groups
    expect(order.slice(0, 50)).not.toEqual([...order.slice(0, 50)].sort((a, b) => a - b)); // shuffled within
    expect(loader.order(0)).toEqual(order);
    expect(loader.order(1)).not.toEqual(order);
  });

  test('a shuffled epoch over parquet row groups decodes each group once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nanovlm-groups-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'groups.parquet');
    const rows = Array.from({ length: 120 }, (_, i) => ({ image: TINY_PNG, question: `q${i}`, answer: 'a' }));
    writeCauldronParquet(file, rows, { rowGroupSize: 10 }); // 12 groups
    const dataset = new VQADataset(await openVQARows([file]), tok, 8);
    const loader = new DataLoader(dataset, { batchSize: 8, collate, shuffle: true });
    const before = parquetStats.rowGroupsDecoded;
    const batches = await collect(loader.epoch(0));
    expect(batches.reduce((n, b) => n + b.batch.batchSize, 0)).toBe(120);
    expect(parquetStats.rowGroupsDecoded - before).toBe(12);
  });
});

describe('DataLoader with worker threads', () => {
  test('same batches as decoding on the main thread; undecodable rows skipped with a warning', async () => {
    const dataset = new VQADataset(await openVQARows([CAULDRON]), tok, 32);
    const options = { batchSize: 2, collate: (items: VQAItem[]) => items, shuffle: true, seed: 3 };
    const local = new DataLoader(dataset, options);
    const threaded = new DataLoader(dataset, { ...options, numWorkers: 2 });
    try {
      for (const epoch of [0, 1]) {
        expect(await collect(threaded.epoch(epoch))).toEqual(await collect(local.epoch(epoch)));
      }
      expect(dataset.skipped).toBe(1);
      expect(warn).toHaveBeenCalledTimes(1);
      expect(warn.mock.calls[0][0]).toMatch(/^skipping .*cauldron_sample\.parquet row 2: not an image/);
    } finally {
      await threaded.close();
    }
  });

  test('worker threads decode the next batch while the main thread is busy, with the same pixels', async () => {
    // Cauldron-sized photos: each takes tens of milliseconds to decode and resize.
    const dir = mkdtempSync(join(tmpdir(), 'nanovlm-loader-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const lines = [];
    for (let k = 0; k < 8; k++) {
      const [width, height] = [640, 480];
      const rgba = Buffer.alloc(width * height * 4);
      for (let p = 0; p < width * height; p++)
        rgba.set([(p * 7 + k) & 255, (p >> 9) & 255, (p >> 3) & 255, 255], p * 4);
      writeFileSync(join(dir, `${k}.jpg`), jpeg.encode({ data: rgba, width, height }, 90).data);
      lines.push(JSON.stringify({ image: `${k}.jpg`, question: 'What is this?', answer: 'no' }));
    }
    writeFileSync(join(dir, 'data.jsonl'), lines.join('\n'));
    const dataset = new VQADataset(await openVQARows([join(dir, 'data.jsonl')]), tok, 224);

    // Batch 1 after a synchronous "training step" on batch 0. How long the wait is depends on
    // how busy the machine is, so it is printed, not asserted (timings never fail tests).
    const afterBusyStep = async (numWorkers: number) => {
      const loader = new DataLoader(dataset, {
        batchSize: 4,
        collate: (items: VQAItem[]) => items,
        numWorkers,
        prefetch: 1,
      });
      const batches = loader.epoch(0);
      await batches.next();
      const busyUntil = performance.now() + 500;
      while (performance.now() < busyUntil); // a training step that never yields
      const start = performance.now();
      const { value } = await batches.next();
      const waited = performance.now() - start;
      await loader.close();
      return { images: value!.batch.map((item: VQAItem) => item.image), waited };
    };
    const main = await afterBusyStep(0);
    const threaded = await afterBusyStep(1);
    console.log(
      `wait for the next batch after a busy step: ${main.waited.toFixed(1)} ms ` +
        `without workers, ${threaded.waited.toFixed(1)} ms with one`,
    );
    expect(threaded.images).toEqual(main.images);
  });

  test('worker threads never keep the process alive, closed or not', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nanovlm-exit-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const script = join(dir, 'run.mts');
    const data = (file: string) => JSON.stringify(fileURLToPath(new URL(`../data/${file}`, import.meta.url)));
    writeFileSync(
      script,
      `import { VQADataset } from ${data('datasets.ts')};
       import { openVQARows } from ${JSON.stringify(fileURLToPath(new URL('../node/datasets.ts', import.meta.url)))};
       import { DataLoader } from ${data('loader.ts')};
       const dataset = new VQADataset(await openVQARows([${JSON.stringify(CAULDRON)}]), { eosToken: '' }, 32);
       const loader = new DataLoader(dataset, { batchSize: 2, collate: (items) => items.length, numWorkers: 2 });
       for await (const { step, batch } of loader.epoch(0)) console.log(step, batch);
       if (process.argv[2] === 'close') await loader.close();
       console.log('done');`,
    );
    const tsx = fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url));
    for (const mode of ['close', 'leave open']) {
      const { stdout } = await promisify(execFile)(tsx, [script, mode], { timeout: 30_000 });
      expect(stdout).toBe('0 2\n1 1\n2 1\ndone\n');
    }
  });
});
