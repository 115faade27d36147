// Reading an image from disk. Kept apart from processors.ts so that the
// decoding and resizing code stays free of Node's fs (and usable in a browser).

import { readFileSync } from 'node:fs';
import { decodeImage, type RGBImage } from './processors.ts';

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
