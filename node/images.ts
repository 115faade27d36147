// Reading an image from disk, in Node. Decoding and resizing (data/processors.ts) take the bytes,
// wherever they came from.

import { readFileSync } from 'node:fs';
import { decodeImage, type RGBImage } from '../data/processors.ts';

/** Reads and decodes a PNG or JPEG file; errors name the path. */
export function loadImageFile(path: string): RGBImage {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`image not found: ${path}`);
    throw new Error(`cannot read image ${path} (${code ?? String(err)})`);
  }
  return decodeImage(bytes, path);
}
