// The body of a DataLoader worker thread: it decodes and resizes the images
// the main thread sends, so that this work overlaps with the training step.

import { parentPort } from 'node:worker_threads';
import { workerInput } from '../tensor/cpu/threads.ts';
import { getImageProcessor } from './processors.ts';

/** A request: encoded image bytes, and the file and row they came from (for error messages). */
export interface ImageRequest {
  id: number;
  image: Uint8Array;
  source: string;
}

/** The reply: the image as CHW floats, or why it could not be decoded. */
export type ImageReply = { id: number; pixels: Float32Array } | { id: number; error: string };

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
