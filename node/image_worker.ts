// The body of a DataLoader worker thread (data/loader.ts, numWorkers): it decodes and resizes
// the images the main thread sends, so that this work overlaps with the training step. A Node
// worker thread, so it lives here with the other Node-only code.

import { parentPort } from 'node:worker_threads';
import type { ImageReply, ImageRequest } from '../data/loader.ts';
import { getImageProcessor } from '../data/processors.ts';
import { workerInput } from '../tensor/cpu/threads.ts';

const processImage = getImageProcessor(workerInput<{ imgSize: number }>().imgSize);
const port = parentPort!;

port.on('message', ({ id, image, source }: ImageRequest) => {
  try {
    const pixels = processImage(image, source);
    // toTensor made `pixels` with its own buffer: hand it over rather than copy it.
    port.postMessage({ id, pixels } satisfies ImageReply, [pixels.buffer as ArrayBuffer]);
  } catch (err) {
    port.postMessage({ id, error: err instanceof Error ? err.message : String(err) } satisfies ImageReply);
  }
});
