// Image preprocessing: decode PNG/JPEG bytes to RGB, resize to S x S exactly as
// Pillow's bilinear resize does, then scale bytes to [0, 1] floats in CHW order.
// nanoVLM's get_image_processor is torchvision's Compose([Resize((S, S)), ToTensor()])
// applied to a PIL image after convert('RGB'); this file reproduces those three steps.
// https://github.com/huggingface/nanoVLM/blob/main/data/processors.py

import { decode as decodeJpeg } from 'jpeg-js';
import { PNG, type PNGWithMetadata } from 'pngjs';

/** A decoded image: RGB, 3 bytes per pixel, rows top to bottom. */
export interface RGBImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Turns encoded image bytes or a decoded image into CHW floats in [0, 1], length 3 * S * S. */
export type ImageProcessor = (image: Uint8Array | RGBImage, source?: string) => Float32Array;

/** nanoVLM's get_image_processor: resize to (imgSize, imgSize) as torchvision's Resize does, then ToTensor. */
export function getImageProcessor(imgSize: number): ImageProcessor {
  checkSize(imgSize, 'image size');
  return (image, source = 'image') => {
    const rgb = image instanceof Uint8Array ? decodeImage(image, source) : image;
    return toTensor(resizeBilinear(rgb, imgSize, imgSize));
  };
}

/** Decodes PNG or JPEG bytes to RGB like PIL's Image.open(...).convert('RGB'); errors name `source`. */
export function decodeImage(bytes: Uint8Array, source: string): RGBImage {
  if (bytes.length === 0) throw new Error(`${source}: no image data (0 bytes)`);
  const format = sniffFormat(bytes);
  if (format === null) {
    const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new Error(`${source}: not an image (unrecognised first bytes ${head}); nanovlm-ts reads PNG and JPEG`);
  }
  if (format !== 'PNG' && format !== 'JPEG') {
    throw new Error(`${source}: unsupported image format (${format}); nanovlm-ts reads PNG and JPEG`);
  }
  try {
    return format === 'PNG' ? decodePng(bytes) : decodeJpegRgb(bytes);
  } catch (err) {
    // The decoders throw their own internals (stream states, marker codes); keep one readable line.
    const reason = String(err instanceof Error ? err.message : err).split('\n')[0];
    throw new Error(`${source}: corrupt ${format} (${reason})`);
  }
}

/** The format announced by the file's first bytes (its "magic number"), or null if unknown. */
function sniffFormat(bytes: Uint8Array): string | null {
  if (startsWith(bytes, '\x89PNG\r\n\x1a\n')) return 'PNG';
  if (startsWith(bytes, '\xff\xd8\xff')) return 'JPEG';
  if (startsWith(bytes, 'GIF8')) return 'GIF';
  if (startsWith(bytes, 'RIFF') && startsWith(bytes, 'WEBP', 8)) return 'WebP';
  if (startsWith(bytes, 'BM')) return 'BMP';
  if (startsWith(bytes, 'II*\0') || startsWith(bytes, 'MM\0*')) return 'TIFF';
  if (startsWith(bytes, 'ftyp', 4)) return 'HEIF/AVIF';
  return null;
}

/** True if `bytes` holds the character codes of `text` at `offset`. */
function startsWith(bytes: Uint8Array, text: string, offset = 0): boolean {
  for (let i = 0; i < text.length; i++) {
    if (bytes[offset + i] !== text.charCodeAt(i)) return false;
  }
  return true;
}

/** Decodes a PNG of any colour type and bit depth to 8-bit RGB, dropping alpha as PIL does. */
function decodePng(bytes: Uint8Array): RGBImage {
  const png = readPng(withoutTransparencyChunk(bytes));
  const rgba: ArrayLike<number> = png.data; // RGBA at the file's bit depth; a Uint16Array when 16-bit
  // Palette entries are 8-bit whatever the index depth; other samples keep the file's depth.
  const depth = png.palette ? 8 : png.depth;
  // Samples of 1, 2 or 4 bits stretch to 0..255 (x255, x85, x17), as PIL's unpackers do. 16-bit
  // samples keep their high byte, as PIL does for RGB, RGBA and grey+alpha; 16-bit grey becomes
  // PIL's 32-bit mode I, whose convert('RGB') clips at 255 (almost all white), so there we
  // deliberately differ and take the high byte too.
  const toByte = depth === 16 ? (v: number) => v >> 8 : (v: number) => (v * 255) / ((1 << depth) - 1);
  const data = new Uint8Array(png.width * png.height * 3);
  for (let p = 0; p < png.width * png.height; p++) {
    for (let c = 0; c < 3; c++) data[p * 3 + c] = toByte(rgba[p * 4 + c]);
  }
  return { width: png.width, height: png.height, data };
}

/**
 * Removes the tRNS chunk, if any. For grey and RGB PNGs it names one colour as transparent;
 * pngjs then zeroes those pixels' colour, but PIL's convert('RGB') keeps it (alpha is simply
 * dropped), and for palette PNGs it only holds alpha, which we drop anyway.
 */
function withoutTransparencyChunk(bytes: Uint8Array): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Chunks follow the 8-byte signature: 4-byte length, 4-byte type, data, 4-byte CRC.
  for (let at = 8; at + 8 <= bytes.length; at += 12 + view.getUint32(at)) {
    if (startsWith(bytes, 'tRNS', at + 4)) {
      const end = at + 12 + view.getUint32(at);
      return Buffer.concat([bytes.subarray(0, at), bytes.subarray(end)]);
    }
  }
  return bytes;
}

/** pngjs' PNG.sync.read, samples left at their bit depth, with its report of a cut-off file put plainly. */
function readPng(bytes: Uint8Array): PNGWithMetadata {
  // A Buffer view of the same memory (pngjs wants a Buffer). skipRescale: pngjs would round
  // 16-bit samples to v * 255 / 65535, but PIL takes the high byte, so decodePng scales them.
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    return PNG.sync.read(buffer, { skipRescale: true });
  } catch (err) {
    if (err instanceof Error && err.message.includes('read requests'))
      throw new Error('truncated: the data ends early');
    throw err;
  }
}

/**
 * Decodes a baseline or progressive JPEG to RGB as libjpeg (PIL's decoder) does. jpeg-js does
 * the entropy decoding and inverse DCT, but it repeats the samples of subsampled chroma and
 * converts YCbCr to RGB in floating point with truncation; libjpeg interpolates chroma and
 * converts with rounded fixed-point tables. So ask jpeg-js for the raw planes and do those two
 * steps here. Grey images need neither; CMYK images keep jpeg-js' own conversion.
 */
function decodeJpegRgb(bytes: Uint8Array): RGBImage {
  const header = readJpegHeader(bytes);
  if (header.components.length !== 3) {
    const { width, height, data } = decodeJpeg(bytes, { useTArray: true, formatAsRGBA: false });
    return { width, height, data };
  }
  // jpeg-js converts whenever an Adobe marker says YCbCr, whatever colorTransform says: hide the flag.
  let input = bytes;
  if (header.adobeTransformAt >= 0) {
    input = Uint8Array.from(bytes); // a copy (Buffer's slice would be a view)
    input[header.adobeTransformAt] = 0;
  }
  const { width, height, data } = decodeJpeg(input, { useTArray: true, formatAsRGBA: false, colorTransform: false });
  const maxH = Math.max(...header.components.map((c) => c.h));
  const maxV = Math.max(...header.components.map((c) => c.v));
  header.components.forEach((c, channel) => fancyUpsample(data, width, height, channel, maxH / c.h, maxV / c.v));
  if (!isRgbCoded(bytes, header)) yccToRgb(data);
  return { width, height, data };
}

/** What decoding needs from a JPEG's markers: components (id, sampling factors) and colour hints. */
interface JpegHeader {
  components: { id: number; h: number; v: number }[];
  jfif: boolean;
  /** Byte offset of the Adobe marker's colour-transform flag, -1 without an Adobe marker. */
  adobeTransformAt: number;
}

/** Walks the markers before the first scan: each is 0xFF, a code, then a 2-byte length and data. */
function readJpegHeader(bytes: Uint8Array): JpegHeader {
  const header: JpegHeader = { components: [], jfif: false, adobeTransformAt: -1 };
  for (let at = 2; at + 4 <= bytes.length && bytes[at] === 0xff;) {
    const marker = bytes[at + 1];
    const body = at + 4;
    if (marker === 0xda) break; // start of scan: the header is over
    if (marker === 0xe0 && startsWith(bytes, 'JFIF\0', body)) header.jfif = true;
    if (marker === 0xee && startsWith(bytes, 'Adobe', body)) header.adobeTransformAt = body + 11;
    // Start of frame (SOF0..SOF15 less DHT, JPG, DAC): precision, height, width, count, components.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      for (let c = 0; c < bytes[body + 5]; c++) {
        const p = body + 6 + c * 3;
        header.components.push({ id: bytes[p], h: bytes[p + 1] >> 4, v: bytes[p + 1] & 15 });
      }
    }
    at = body + ((bytes[at + 2] << 8) | bytes[at + 3]) - 2;
  }
  return header;
}

/** libjpeg's rule for whether a 3-component JPEG holds RGB rather than the usual YCbCr. */
function isRgbCoded(bytes: Uint8Array, header: JpegHeader): boolean {
  if (header.jfif) return false;
  if (header.adobeTransformAt >= 0) return bytes[header.adobeTransformAt] === 0;
  return header.components.map((c) => String.fromCharCode(c.id)).join('') === 'RGB';
}

/**
 * libjpeg's "fancy" upsampling, in place, of a component stored at half width and/or height.
 * jpeg-js repeats each sample; libjpeg interpolates: 3/4 of the nearest sample plus 1/4 of the
 * next nearest (9/16, 3/16, 3/16, 1/16 when halved both ways), edges repeated, rounding biases
 * alternating so that they cancel out. libjpeg repeats samples for other ratios too.
 */
function fancyUpsample(data: Uint8Array, width: number, height: number, channel: number, rx: number, ry: number): void {
  const w = Math.ceil(width / rx); // the component's own size, in samples
  const h = Math.ceil(height / ry);
  // libjpeg-turbo interpolates horizontally only when a row holds more than 2 samples.
  const interpolates = (rx === 2 && w > 2 && (ry === 1 || ry === 2)) || (rx === 1 && ry === 2);
  if (!interpolates) return;
  // The component's samples with a border that repeats the edges (libjpeg's rule there);
  // jpeg-js left sample (i, j) at pixel (i * rx, j * ry).
  const clamp = (k: number, size: number) => Math.min(Math.max(k, 0), size - 1);
  const stride = w + 2;
  const s = new Int32Array(stride * (h + 2));
  for (let j = -1; j <= h; j++) {
    for (let i = -1; i <= w; i++) {
      s[(j + 1) * stride + i + 1] = data[(clamp(j, h) * ry * width + clamp(i, w) * rx) * 3 + channel];
    }
  }
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const top = y % 2 === 0;
    const row = (Math.floor(y / ry) + 1) * stride + 1;
    // Vertically, the upper output row of a sample leans on the row above, the lower on the row below.
    const other = ry === 1 ? row : top ? row - stride : row + stride;
    const column = (i: number) => (ry === 2 ? 3 * s[row + i] + s[other + i] : s[row + i]);
    for (let x = 0; x < width; x++) {
      const i = Math.floor(x / rx);
      if (rx === 1) {
        out[y * width + x] = (column(i) + (top ? 1 : 2)) >> 2;
      } else {
        // Horizontally likewise: the left output pixel of a sample leans on the sample to its left.
        const left = x % 2 === 0;
        const t = 3 * column(i) + column(left ? i - 1 : i + 1);
        out[y * width + x] = ry === 1 ? (t + (left ? 1 : 2)) >> 2 : (t + (left ? 8 : 7)) >> 4;
      }
    }
  }
  for (let p = 0; p < width * height; p++) data[p * 3 + channel] = out[p];
}

// libjpeg's YCbCr -> RGB constants, fixed point with 16 fraction bits (FIX(x) in jdcolor.c).
const FIX_1_402 = Math.floor(1.402 * 65536 + 0.5);
const FIX_1_772 = Math.floor(1.772 * 65536 + 0.5);
const FIX_0_71414 = Math.floor(0.71414 * 65536 + 0.5);
const FIX_0_34414 = Math.floor(0.34414 * 65536 + 0.5);
const HALF = 1 << 15;

/** YCbCr -> RGB in place, with libjpeg's rounding (jdcolor.c ycc_rgb_convert). */
function yccToRgb(data: Uint8Array): void {
  const clip = (v: number) => Math.min(Math.max(v, 0), 255);
  for (let p = 0; p < data.length; p += 3) {
    const y = data[p];
    const cb = data[p + 1] - 128;
    const cr = data[p + 2] - 128;
    data[p] = clip(y + ((FIX_1_402 * cr + HALF) >> 16));
    data[p + 1] = clip(y + ((-FIX_0_34414 * cb - FIX_0_71414 * cr + HALF) >> 16));
    data[p + 2] = clip(y + ((FIX_1_772 * cb + HALF) >> 16));
  }
}

// Pillow's 8-bit resampling works in fixed point: weights are integers scaled by
// 2^22, which leaves room for 255 * 2^22 plus rounding in a signed 32-bit sum.
const PRECISION_BITS = 32 - 8 - 2;

/**
 * Resizes like Pillow's Image.resize((width, height), Image.BILINEAR) (Pillow >= 7, what
 * torchvision's Resize calls on a PIL image): a horizontal pass then a vertical pass, each
 * skipped when that side keeps its size, with an 8-bit image in between.
 */
export function resizeBilinear(img: RGBImage, width: number, height: number): RGBImage {
  checkSize(width, 'width');
  checkSize(height, 'height');
  let out = img;
  if (width !== img.width) out = resamplePass(out, width, true);
  if (height !== img.height) out = resamplePass(out, height, false);
  return out === img ? { width, height, data: Uint8Array.from(img.data) } : out;
}

/** Resamples along one axis (x if `horizontal`, else y) to `outSize` pixels, as Pillow's 8bpc passes do. */
function resamplePass(img: RGBImage, outSize: number, horizontal: boolean): RGBImage {
  const { starts, counts, weights, maxTaps } = bilinearTaps(horizontal ? img.width : img.height, outSize);
  const width = horizontal ? outSize : img.width;
  const height = horizontal ? img.height : outSize;
  // Bytes between neighbouring input pixels along the axis being filtered.
  const step = horizontal ? 3 : img.width * 3;
  const [src, data] = [img.data, new Uint8Array(width * height * 3)];
  const half = 1 << (PRECISION_BITS - 1); // sums start at half a unit, so the shift rounds to nearest
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = horizontal ? x : y; // the output pixel's filter
      let at = horizontal ? (y * img.width + starts[i]) * 3 : (starts[i] * img.width + x) * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let t = 0; t < counts[i]; t++, at += step) {
        const w = weights[i * maxTaps + t];
        r += src[at] * w;
        g += src[at + 1] * w;
        b += src[at + 2] * w;
      }
      // The sums are never negative (all weights are >= 0) but rounded weights can add up to
      // slightly more than 1, so clip at 255 like Pillow's clip8.
      const o = (y * width + x) * 3;
      data[o] = Math.min(r >> PRECISION_BITS, 255);
      data[o + 1] = Math.min(g >> PRECISION_BITS, 255);
      data[o + 2] = Math.min(b >> PRECISION_BITS, 255);
    }
  }
  return { width, height, data };
}

/**
 * Each output pixel's filter: the first input pixel it reads (starts), how many it reads (counts), and a
 * fixed-point weight for each (weights, maxTaps per output pixel): flat typed arrays, for the inner loop.
 */
interface Taps {
  starts: Int32Array;
  counts: Int32Array;
  weights: Int32Array;
  maxTaps: number;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the triangle filter, inSize -> outSize pixels. */
function bilinearTaps(inSize: number, outSize: number): Taps {
  const scale = inSize / outSize;
  // Downscaling widens the triangle (support 1) to cover `scale` input pixels, so every input
  // pixel contributes to some output (antialiasing); upscaling keeps the plain 1-pixel triangle.
  const filterScale = Math.max(scale, 1);
  const support = filterScale;
  const invFilterScale = 1 / filterScale; // Pillow multiplies by the reciprocal; dividing could round differently
  const maxTaps = Math.ceil(support) * 2 + 1;
  const taps = {
    starts: new Int32Array(outSize),
    counts: new Int32Array(outSize),
    weights: new Int32Array(outSize * maxTaps),
    maxTaps,
  };
  for (let i = 0; i < outSize; i++) {
    // The output pixel's centre in input coordinates uses the true scale, even when upscaling.
    const center = (i + 0.5) * scale;
    const start = Math.max(Math.trunc(center - support + 0.5), 0);
    const end = Math.min(Math.trunc(center + support + 0.5), inSize);
    const raw: number[] = [];
    for (let x = start; x < end; x++) raw.push(triangle((x - center + 0.5) * invFilterScale));
    const total = raw.reduce((a, b) => a + b, 0);
    // Triangle weights are never negative, so Pillow's round-half-up branch is the only one used.
    for (let t = 0; t < raw.length; t++) {
      taps.weights[i * maxTaps + t] = Math.trunc(0.5 + (raw[t] / total) * (1 << PRECISION_BITS));
    }
    taps.starts[i] = start;
    taps.counts[i] = raw.length;
  }
  return taps;
}

/** Pillow's bilinear filter: 1 at distance 0 falling linearly to 0 at distance 1. */
function triangle(x: number): number {
  const d = Math.abs(x);
  return d < 1 ? 1 - d : 0;
}

/** torchvision's ToTensor: HWC bytes to CHW floats, each byte / 255. */
function toTensor(img: RGBImage): Float32Array {
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = img.data[p * 3 + c] / 255;
  }
  return out;
}

/** Throws unless `n` is a positive integer. */
function checkSize(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, got ${n}`);
}
