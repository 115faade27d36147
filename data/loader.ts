// DataLoader: a dataset in batches, shuffled anew each epoch, collated, and
// loaded a few batches ahead so that the next batch is ready when a training
// step ends. A dataset stored in row groups (parquet) is shuffled as
// streaming datasets shuffle: the groups in random order, and the rows within
// a window of a few groups, so that each group is decoded once per epoch.
// With worker threads, decoding and resizing images (the slow part of loading
// real data) runs beside the training step instead of between steps.
// Plays the part of PyTorch's torch.utils.data.DataLoader in nanoVLM's train.py.

import { startWorker } from '../tensor/cpu/threads.ts';
import { Generator } from '../tensor/random.ts';
import type { AsyncImageProcessor, Dataset } from './datasets.ts';

/** A request to an image worker thread (node/image_worker.ts): encoded image bytes, and where they came from. */
export interface ImageRequest {
  id: number;
  image: Uint8Array;
  source: string;
}

/** The worker's reply: the image as CHW floats, or why it could not be decoded. */
export type ImageReply = { id: number; pixels: Float32Array } | { id: number; error: string };

/** A Node worker thread (worker_threads' Worker), as startWorker returns it. */
type Worker = NonNullable<ReturnType<typeof startWorker>>;

/** DataLoader options, named after PyTorch's. */
export interface DataLoaderOptions<T, B> {
  batchSize: number;
  /** Turns a list of items into a batch, e.g. `(items) => collator.call(items)`. */
  collate: (items: T[]) => B;
  /** Visit the items in a new random order every epoch (default false, as in PyTorch). */
  shuffle?: boolean;
  /** Row groups whose rows are shuffled together, for a dataset stored in groups (default 8). */
  shuffleWindow?: number;
  /** Seed of the shuffles (default 0). */
  seed?: number;
  /** Leave out the last batch of an epoch if it is short (default false). */
  dropLast?: boolean;
  /** Threads that decode and resize images (default 0: the main thread does it). */
  numWorkers?: number;
  /** Batches loaded ahead of the one in use (default 2). */
  prefetch?: number;
}

/** A batch and its position in the epoch: resuming after it means starting at step + 1. */
export interface LoadedBatch<B> {
  step: number;
  batch: B;
}

/** Batches of a dataset, shuffled per epoch, loaded ahead, resumable at any (epoch, step). */
export class DataLoader<T, B> {
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly shuffleWindow: number;
  readonly seed: number;
  readonly dropLast: boolean;
  readonly prefetch: number;
  private readonly collate: (items: T[]) => B;
  private readonly workers: ImageWorkers | null;

  constructor(
    readonly dataset: Dataset<T>,
    options: DataLoaderOptions<T, B>,
  ) {
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1) {
      throw new Error(`batch size must be a positive integer, got ${options.batchSize}`);
    }
    this.batchSize = options.batchSize;
    this.collate = options.collate;
    this.shuffle = options.shuffle ?? false;
    this.shuffleWindow = options.shuffleWindow ?? 8;
    if (!Number.isInteger(this.shuffleWindow) || this.shuffleWindow < 1) {
      throw new Error(
        `shuffleWindow must be a positive integer (row groups shuffled together), got ${options.shuffleWindow}`,
      );
    }
    this.seed = options.seed ?? 0;
    this.dropLast = options.dropLast ?? false;
    this.prefetch = options.prefetch ?? 2;
    const numWorkers = options.numWorkers ?? 0;
    this.workers = numWorkers > 0 ? new ImageWorkers(numWorkers, dataset.imgSize) : null;
  }

  /** Number of batches in an epoch. */
  get length(): number {
    const batches = this.dataset.length / this.batchSize;
    return this.dropLast ? Math.floor(batches) : Math.ceil(batches);
  }

  /**
   * The order in which an epoch visits the items. It depends only on (seed, epoch), not on
   * the epochs before (PyTorch draws each epoch's order from a running generator), so a
   * resumed run needs no saved generator state to see the same orders.
   */
  order(epoch: number): number[] {
    const indices = [...Array(this.dataset.length).keys()];
    if (!this.shuffle) return indices;
    // Mix the seed before adding the epoch, so that seeds 0 and 1 do not share orders one epoch apart.
    const g = new Generator((Math.imul(this.seed, 0x9e3779b1) + epoch) >>> 0);
    const groups = this.dataset.groups?.();
    if (!groups) return g.shuffle(indices);
    // the groups in random order; then the items of each window of groups, shuffled together
    const visit = g.shuffle(groups.map((_, k) => k));
    const order: number[] = [];
    for (let w = 0; w < visit.length; w += this.shuffleWindow) {
      order.push(...g.shuffle(visit.slice(w, w + this.shuffleWindow).flatMap((k) => groups[k])));
    }
    return order;
  }

  /**
   * The batches of an epoch from batch `startStep` on. Items whose row was skipped are left
   * out, so a batch can be short; a batch whose items were all skipped is not yielded.
   */
  async *epoch(epoch: number, startStep = 0): AsyncGenerator<LoadedBatch<B>> {
    const order = this.order(epoch);
    const loading: Promise<B | null>[] = [];
    let next = startStep;
    try {
      for (let step = startStep; step < this.length; step++) {
        // The batch about to be used plus `prefetch` more: those load while this one is in use.
        while (next < this.length && loading.length <= this.prefetch) loading.push(this.loadBatch(order, next++));
        const batch = await loading.shift()!;
        if (this.workers?.failure) throw this.workers.failure;
        if (batch !== null) yield { step, batch };
      }
    } finally {
      // Left early (break, error): nobody will await the batches still loading.
      for (const batch of loading) batch.catch(() => {});
    }
  }

  /** Stops the worker threads. */
  async close(): Promise<void> {
    await this.workers?.close();
  }

  private async loadBatch(order: number[], step: number): Promise<B | null> {
    const indices = order.slice(step * this.batchSize, (step + 1) * this.batchSize);
    const processImage = this.workers?.process;
    const items = await Promise.all(indices.map((i) => this.dataset.get(i, processImage)));
    const kept = items.filter((item) => item !== null);
    return kept.length > 0 ? this.collate(kept) : null;
  }
}

/** A reply the main thread is waiting for. */
interface Pending {
  resolve: (pixels: Float32Array) => void;
  reject: (err: Error) => void;
}

/** Worker threads that turn encoded images into CHW floats; each request goes to the least busy. */
class ImageWorkers {
  private readonly threads: { worker: Worker; pending: Map<number, Pending> }[] = [];
  private nextId = 0;
  private closing = false;
  /** Set if a thread dies: the loader stops with this error. */
  failure: Error | null = null;

  constructor(count: number, imgSize: number) {
    for (let k = 0; k < count; k++) {
      const worker = startWorker(new URL('../node/image_worker.ts', import.meta.url), { imgSize });
      if (!worker) throw new Error('numWorkers needs worker threads, which this platform lacks: use numWorkers 0');
      const thread = { worker, pending: new Map() };
      thread.worker.on('message', (reply: ImageReply) => this.receive(thread, reply));
      thread.worker.on('error', (err) => this.fail(err));
      thread.worker.on('exit', (code) => {
        if (!this.closing) this.fail(new Error(`an image worker thread stopped (exit code ${code})`));
      });
      // An idle thread must not keep the process alive; a thread with work does (see process).
      thread.worker.unref();
      this.threads.push(thread);
    }
  }

  /** Decodes and resizes in the least busy thread; rejects with the decoder's error. */
  readonly process: AsyncImageProcessor = (image, source) => {
    if (this.failure) return Promise.reject(this.failure);
    const thread = this.threads.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    // A copy that owns its buffer: `image` may be a view into a whole decoded parquet
    // page, which posting would copy (or transferring would take away) in full.
    const bytes = image.slice();
    if (thread.pending.size === 0) thread.worker.ref();
    return new Promise((resolve, reject) => {
      thread.pending.set(id, { resolve, reject });
      thread.worker.postMessage({ id, image: bytes, source } satisfies ImageRequest, [bytes.buffer]);
    });
  };

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.threads.map((thread) => thread.worker.terminate()));
  }

  private receive(thread: { worker: Worker; pending: Map<number, Pending> }, reply: ImageReply): void {
    const pending = thread.pending.get(reply.id)!;
    thread.pending.delete(reply.id);
    if (thread.pending.size === 0) thread.worker.unref();
    if ('pixels' in reply) pending.resolve(reply.pixels);
    else pending.reject(new Error(reply.error));
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const thread of this.threads) {
      for (const pending of thread.pending.values()) pending.reject(err);
      thread.pending.clear();
      thread.worker.unref();
    }
  }
}
