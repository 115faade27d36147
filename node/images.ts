// Image files in Node: reading one from disk (decoding and resizing, data/processors.ts, take the
// bytes wherever they came from), and a built-in picture as a PNG file's bytes (assets/shapes.png).

import { readFileSync } from 'node:fs';
import { PNG } from 'pngjs';
import { BUILTIN_IMG_SIZE, builtinSample } from '../data/builtin.ts';
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

/** A PNG of one built-in sample (for the README's examples), with its question and answer. */
export function renderBuiltinExample(
  seed: number,
  imgSize = BUILTIN_IMG_SIZE,
): { png: Uint8Array; question: string; answer: string } {
  const { image, question, answer } = builtinSample('train', 0, seed, imgSize);
  const png = new PNG({ width: image.width, height: image.height });
  for (let p = 0; p < image.width * image.height; p++) {
    png.data.set(image.data.subarray(p * 3, p * 3 + 3), p * 4);
    png.data[p * 4 + 3] = 255;
  }
  return { png: PNG.sync.write(png, { colorType: 2 }), question, answer };
}
