// The image processor against what PIL + torchvision produced (shared/gold/images),
// plus the PNG variants, progressive JPEG, resize arithmetic and error messages
// that the gold set does not cover.

import { ASSETS, GOLD as FIXTURE_GOLD } from './fixtures.ts';
import { readFileSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';
import { PNG } from 'pngjs';
import { describe, expect, it } from 'vitest';
import { loadImageFile } from '../node/images.ts';
import { decodeImage, getImageProcessor, resizeBilinear, type RGBImage } from '../data/processors.ts';

const GOLD = `${FIXTURE_GOLD}images/`;

/** The F32 tensors of a safetensors file: an 8-byte little-endian header length, a JSON header, the data. */
function readF32Tensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const file = readFileSync(path);
  const headerLength = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + headerLength).toString('utf8'));
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, entry] of Object.entries<{ dtype: string; shape: number[]; data_offsets: [number, number] }>(
    header,
  )) {
    if (name === '__metadata__') continue;
    expect(entry.dtype).toBe('F32');
    const [begin, end] = entry.data_offsets.map((o) => 8 + headerLength + o);
    // Copy into a fresh buffer: the data need not be 4-byte aligned inside the file.
    const data = new Float32Array(Uint8Array.from(file.subarray(begin, end)).buffer);
    tensors.set(name, { shape: entry.shape, data });
  }
  return tensors;
}

/** Largest and mean absolute difference of two equal-length arrays. */
function diffStats(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; mean: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

/** An RGBImage whose pixel (x, y) is rgb(x, y). */
function makeImage(width: number, height: number, rgb: (x: number, y: number) => number[]): RGBImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) data.set(rgb(x, y), (y * width + x) * 3);
  }
  return { width, height, data };
}

/** A PNG assembled by hand: IHDR, `extra` chunks, one IDAT of unfiltered `rows`, IEND. */
function pngFile(
  width: number,
  height: number,
  bitDepth: number,
  colorType: number,
  rows: number[][],
  extra: [string, number[]][] = [],
): Uint8Array {
  const chunk = (type: string, data: Uint8Array) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(data.length + 12);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13); // compression, filter and interlace methods stay 0
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = bitDepth;
  ihdr[9] = colorType;
  const scanlines = Buffer.concat(rows.map((row) => Buffer.from([0, ...row]))); // filter type 0: none
  return Buffer.concat([
    Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'),
    chunk('IHDR', ihdr),
    ...extra.map(([type, data]) => chunk(type, Buffer.from(data))),
    chunk('IDAT', deflateSync(scanlines)),
    chunk('IEND', new Uint8Array(0)),
  ]);
}

describe('gold: PIL convert("RGB") + torchvision Resize((S, S)) + ToTensor', () => {
  const manifest = JSON.parse(readFileSync(GOLD + 'manifest.json', 'utf8')) as {
    cases: { key: string; file: string; size: number }[];
  };
  const expected = readF32Tensors(GOLD + 'expected.safetensors');

  for (const { key, file, size } of manifest.cases) {
    it(key, () => {
      const path = ['gray.png', 'rgba.png', 'palette.png'].includes(file) ? GOLD + file : ASSETS + file;
      const want = expected.get(key)!;
      expect(want.shape).toEqual([3, size, size]);
      const got = getImageProcessor(size)(readFileSync(path), path);
      const { max, mean } = diffStats(got, want.data);
      if (file.endsWith('.png')) {
        expect(max).toBe(0); // same samples, same fixed-point resize: bit-exact
      } else {
        // jpeg-js' inverse DCT differs from libjpeg's by a level here and there (measured: max 1/255, mean 4.9e-4).
        expect(max).toBeLessThanOrEqual(2 / 255 + 1e-7);
        expect(mean).toBeLessThanOrEqual(1e-3);
      }
    });
  }
});

describe('decodeImage: PNG', () => {
  it('drops alpha without compositing (grey + alpha, 8-bit)', () => {
    const grey = [0, 90, 200, 255];
    const alpha = [255, 0, 128, 0];
    const bytes = PNG.sync.write(
      { width: 4, height: 1, data: Buffer.from(grey.flatMap((g, i) => [g, alpha[i]])) } as PNG,
      { colorType: 4, inputColorType: 4 },
    );
    const img = decodeImage(bytes, 'la.png');
    expect([img.width, img.height]).toEqual([4, 1]);
    expect(Array.from(img.data)).toEqual(grey.flatMap((g) => [g, g, g]));
  });

  it('keeps the high byte of 16-bit samples (RGB and grey)', () => {
    // 0xff00 -> 255 and 0x01ff -> 1, where rounding v * 255 / 65535 would give 254 and 2.
    const samples = [0xff00, 0x01ff, 0x8000, 0x00ff, 0xffff, 0x1234];
    const rgb16 = PNG.sync.write({ width: 2, height: 1, data: Buffer.from(Uint16Array.from(samples).buffer) } as PNG, {
      colorType: 2,
      inputColorType: 2,
      bitDepth: 16,
    });
    expect(Array.from(decodeImage(rgb16, 'rgb16.png').data)).toEqual(samples.map((v) => v >> 8));
    const grey16 = PNG.sync.write({ width: 6, height: 1, data: Buffer.from(Uint16Array.from(samples).buffer) } as PNG, {
      colorType: 0,
      inputColorType: 0,
      bitDepth: 16,
    });
    expect(Array.from(decodeImage(grey16, 'grey16.png').data)).toEqual(
      samples.flatMap((v) => [v >> 8, v >> 8, v >> 8]),
    );
  });

  it('stretches 2-bit grey to 0..255', () => {
    const bytes = pngFile(4, 1, 2, 0, [[0b00011011]]); // samples 0, 1, 2, 3
    expect(Array.from(decodeImage(bytes, 'grey2.png').data)).toEqual([0, 85, 170, 255].flatMap((g) => [g, g, g]));
  });

  it('keeps the colour of a tRNS-transparent pixel, as PIL does', () => {
    const trns: [string, number[]] = ['tRNS', [0, 10, 0, 20, 0, 30]]; // rgb(10, 20, 30) is transparent
    const bytes = pngFile(2, 1, 8, 2, [[10, 20, 30, 40, 50, 60]], [trns]);
    expect(Array.from(decodeImage(bytes, 'trns.png').data)).toEqual([10, 20, 30, 40, 50, 60]);
  });
});

describe('decodeImage: JPEG', () => {
  // A 21 x 13 gradient rgb(12x, 19y, 255 - 7(x + y)) made by libjpeg-turbo 2.1.5:
  // `cjpeg -quality 95 -sample 2x2` (baseline, 4:2:0 chroma), then `jpegtran -progressive`
  // (a lossless rewrite as progressive scans), and `djpeg` output of it (what PIL decodes).
  const baseline = Buffer.from(
    '/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAIBAQEBAQIBAQECAgICAgQDAgICAgUEBAMEBgUGBgYFBgYGBwkIBgcJBwYGCAsICQoK' +
      'CgoKBggLDAsKDAkKCgr/2wBDAQICAgICAgUDAwUKBwYHCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoK' +
      'CgoKCgoKCgr/wAARCAANABUDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUF' +
      'BAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW' +
      'V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi' +
      '4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAEC' +
      'AxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVm' +
      'Z2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq' +
      '8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD4r8Gfshfc/wCJX/45XrXgz9kL7n/Er/8AHK+0vBnwO8IfJ+7/APIYr1rwZ8DvCPy/J/5D' +
      'FfoPjL9J/Mf3nvS69z8f8B/HjG/uvefTufEegfshf6H/AMgv0/gor9LdB+B3hEWY+T0/5Ziiv8+Mz+k/mP1+p70t/M/04ynx4xv9' +
      'm0velt5n/9k=',
    'base64',
  );
  const progressive = Buffer.from(
    '/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAIBAQEBAQIBAQECAgICAgQDAgICAgUEBAMEBgUGBgYFBgYGBwkIBgcJBwYGCAsICQoK' +
      'CgoKBggLDAsKDAkKCgr/2wBDAQICAgICAgUDAwUKBwYHCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoK' +
      'CgoKCgoKCgr/wgARCAANABUDASIAAhEBAxEB/8QAFwAAAwEAAAAAAAAAAAAAAAAAAAYHCP/EABUBAQEAAAAAAAAAAAAAAAAAAAYI' +
      '/9oADAMBAAIQAxAAAAGKttpbUA+ImlifKc//xAAaEAACAwEBAAAAAAAAAAAAAAAABAMFBhIi/9oACAEBAAEFAk8gJ5AgyHhOjUE6' +
      'NQgo1OP/xAAcEQABAwUAAAAAAAAAAAAAAAAGAAMhAQIEFCL/2gAIAQMBAT8BAzx7mViHj2tbNV//xAAcEQAABgMAAAAAAAAAAAAA' +
      'AAAAAQIEByEGEyL/2gAIAQIBAT8BzKT3HVmHMnuN6rMf/8QAGBABAAMBAAAAAAAAAAAAAAAAADEz4aH/2gAIAQEABj8CqVKkcYx/' +
      '/8QAGRABAAMBAQAAAAAAAAAAAAAAACExwUHx/9oACAEBAAE/IasKsPIRRFg5R//aAAwDAQACAAMAAAAQCM//xAAXEQADAQAAAAAA' +
      'AAAAAAAAAAAAQWFR/9oACAEDAQE/EGZaQpT/xAAXEQADAQAAAAAAAAAAAAAAAAAAUWGB/9oACAECAQE/EN4ZfFP/xAAaEAACAgMA' +
      'AAAAAAAAAAAAAAAAARDhQXGh/9oACAEBAAE/EI73mGvCshJNcD//2Q==',
    'base64',
  );
  const libjpegPixels = Buffer.from(
    'AALzBgPwFQTpIATiLAPbOATTQwTPTwPHXAO9aAS2dASxfwSqiwOjlwSbpQOWsASOvQKHygOA1AN73QN06gRwBBH1DRLyGRLrJRPj' +
      'MRLcPBLURxPPVBPHYRO/bRK3eBOxhBOrkROlmxKdqhKYtRKPwRKJzROC2RF74xN17RNxBSXsCybpGSfiJSfcMCbVPCfOSSbIUya/' +
      'YCa4bSaweCeqgyekjyadmyeWqSaOtCeHvyaAyyh71yZ04CZt6yhqBTfmDDjhGDncJDnUMTjOPDnIRznAUzm4YDmwbTmoeDmihDqd' +
      'jziWmzmOqDmGtTmBvzl4yjly1jls3zpl6jtiB0rhDUvcGkvWJUzPMkzHPEvASU27VEyzY0urbkyjeUydhU2YkUyPnUuJqkyBtkx8' +
      'wExzzExt101n4E1g7E5dBV3ZC17WGF7OJV7HMV3APF64SV+1U16tYV6jbl6cel6YhV+QkV6JnF+BqV58tl50wF5tzF9l1l5f4F9a' +
      '7F9VA3HQC3LOGHLIJHPAL3K5O3KyRnOuU3OmYXKdbHKUeHORgnOIj3OCnHN7qXJ1tXJswHJlzXJf13FY4XNS7XNOBIXJCobGF4XA' +
      'Ioa4LoWyOoaqRoenUoaeYIWVa4aNd4aJhIaBjoZ7m4ZzqIZttIZlwIVdzIZV1oVQ4oVK7YVGA5bBCpi+Fpi4IpmxLpeqOpiiRZie' +
      'UpiWX5mNa5iEd5mBg5h5jphzm5hrppllsphdwJdVzJhN15hJ4ZlE7Zk/Baq9C6u5GayzJKyqMKykPKyeSayYU6yQYa2JbayBeqx7' +
      'haxzkatsnKxlqaxftqxXwqtOzqxK2KxD4q097q05Bru2DLyyGr2sJb2kMbydPL2WSL2QVLyHYr2Abb14eb1yhL1skLxlnbxeqrxY' +
      'tLxPwbxHzb1D2L084r427L8yCc6yEM+uHM+nKNCfNc+ZP8+SS9COV8+FZM99cM91e89vh9BnlM9hn9BarNBUuM9Lw89FztA+2tA6' +
      '49Ez7dItCd+sD+CpHeGjKOKbNOCUP+GOTOCIWN+AZuF5cOBwfeBriOFjlOBcoOBWrOBPuOFHw+FBz+I52eE05OIv7uMp',
    'base64',
  );

  it('decodes a progressive JPEG exactly as its baseline twin', () => {
    expect(progressive.includes(Buffer.from([0xff, 0xc2]))).toBe(true); // SOF2: progressive
    expect(baseline.includes(Buffer.from([0xff, 0xc0]))).toBe(true); // SOF0: baseline
    const p = decodeImage(progressive, 'progressive.jpg');
    expect([p.width, p.height]).toEqual([21, 13]);
    expect(Array.from(p.data)).toEqual(Array.from(decodeImage(baseline, 'baseline.jpg').data));
  });

  it('matches libjpeg up to inverse-DCT rounding, subsampled chroma included', () => {
    // jpeg-js alone (repeated chroma, truncating colour conversion) is off by up to 16, mean 5.7.
    const { max, mean } = diffStats(decodeImage(progressive, 'progressive.jpg').data, libjpegPixels);
    expect(max).toBeLessThanOrEqual(3);
    expect(mean).toBeLessThan(0.25);
  });
});

describe('resizeBilinear', () => {
  /** A one-row (or one-column) grey image from the given values. */
  const line = (values: number[], vertical = false): RGBImage => ({
    width: vertical ? 1 : values.length,
    height: vertical ? values.length : 1,
    data: Uint8Array.from(values.flatMap((v) => [v, v, v])),
  });
  const grey = (img: RGBImage) => Array.from(img.data).filter((_, i) => i % 3 === 0);

  it('upscales 2 -> 4 with the triangle filter and fixed-point rounding, both axes', () => {
    // Centres 0.25, 0.75, 1.25, 1.75: weights (1), (.75, .25), (.25, .75), (1); 57.75 -> 58, 153.25 -> 153.
    expect(grey(resizeBilinear(line([10, 201]), 4, 1))).toEqual([10, 58, 153, 201]);
    expect(grey(resizeBilinear(line([10, 201], true), 1, 4))).toEqual([10, 58, 153, 201]);
  });

  it('downscales 4 -> 2 with the filter widened to 2 pixels (antialiasing)', () => {
    // Weights .75, .75, .25 over 1.75: 70 * 3/7 + 140 * 1/7 = 50; plain bilinear would give 35 and 175.
    expect(grey(resizeBilinear(line([0, 70, 140, 210]), 2, 1))).toEqual([50, 160]);
    expect(grey(resizeBilinear(line([0, 70, 140, 210], true), 1, 2))).toEqual([50, 160]);
  });

  /** Pillow's bilinear resize in plain floating point, rounding to bytes after each pass. */
  function referenceResize(img: RGBImage, width: number, height: number): RGBImage {
    const resample = (values: number[], outSize: number) => {
      const scale = values.length / outSize;
      const filterScale = Math.max(scale, 1);
      return Array.from({ length: outSize }, (_, i) => {
        const center = (i + 0.5) * scale;
        let sum = 0;
        let total = 0;
        values.forEach((v, x) => {
          const w = Math.max(0, 1 - Math.abs(x + 0.5 - center) / filterScale);
          sum += w * v;
          total += w;
        });
        return Math.min(255, Math.round(sum / total));
      });
    };
    const px = (im: RGBImage, x: number, y: number, c: number) => im.data[(y * im.width + x) * 3 + c];
    let out = img;
    if (width !== img.width) {
      const src = out;
      const rows = Array.from({ length: src.height * 3 }, (_, k) =>
        resample(
          Array.from({ length: src.width }, (_, x) => px(src, x, (k / 3) | 0, k % 3)),
          width,
        ),
      );
      out = makeImage(width, src.height, (x, y) => [0, 1, 2].map((c) => rows[y * 3 + c][x]));
    }
    if (height !== img.height) {
      const src = out;
      const cols = Array.from({ length: src.width * 3 }, (_, k) =>
        resample(
          Array.from({ length: src.height }, (_, y) => px(src, (k / 3) | 0, y, k % 3)),
          height,
        ),
      );
      out = makeImage(src.width, height, (x, y) => [0, 1, 2].map((c) => cols[x * 3 + c][y]));
    }
    return out;
  }

  const texture = makeImage(20, 25, (x, y) => [
    (x * 37 + y * 11) % 256,
    (x * y * 7) % 256,
    (200 - x * 9 + y * 3) & 255,
  ]);

  for (const [w, h] of [
    [32, 32],
    [7, 9],
    [13, 40],
    [20, 11],
    [5, 25],
  ]) {
    it(`20x25 -> ${w}x${h} agrees with a floating-point reference to within one level`, () => {
      const got = resizeBilinear(texture, w, h);
      expect([got.width, got.height, got.data.length]).toEqual([w, h, w * h * 3]);
      const { max, mean } = diffStats(got.data, referenceResize(texture, w, h).data);
      // A value on an exact half may round either way: float error here, rounded fixed-point
      // weights in Pillow. A wrong centre, support or pass order would be off by far more.
      expect(max).toBeLessThanOrEqual(1);
      expect(mean).toBeLessThan(0.05);
    });
  }

  it('keeps a flat image flat and copies when the size is unchanged', () => {
    const flat = makeImage(17, 11, () => [7, 128, 255]);
    expect(resizeBilinear(flat, 64, 5).data.every((v, i) => v === [7, 128, 255][i % 3])).toBe(true);
    const same = resizeBilinear(texture, 20, 25);
    expect(same.data).toEqual(texture.data);
    expect(same.data).not.toBe(texture.data);
  });

  it('rejects sizes that are not positive integers', () => {
    expect(() => resizeBilinear(texture, 0, 4)).toThrow('width must be a positive integer, got 0');
    expect(() => resizeBilinear(texture, 4, 2.5)).toThrow('height must be a positive integer, got 2.5');
  });
});

describe('getImageProcessor', () => {
  it('returns CHW floats of byte / 255, from bytes or a decoded image', () => {
    const img = makeImage(2, 2, (x, y) => [x * 100 + y, 255 - x, 17 * y]);
    const out = getImageProcessor(2)(img);
    expect(out).toBeInstanceOf(Float32Array);
    expect(out.length).toBe(3 * 2 * 2);
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < 4; p++) expect(out[c * 4 + p]).toBe(Math.fround(img.data[p * 3 + c] / 255));
    }
    const png = PNG.sync.write({ width: 2, height: 2, data: Buffer.from(img.data) } as PNG, {
      colorType: 2,
      inputColorType: 2,
    });
    expect(getImageProcessor(2)(png)).toEqual(out);
  });

  it('resizes to imgSize x imgSize whatever the aspect ratio', () => {
    expect(getImageProcessor(16)(makeImage(40, 9, () => [1, 2, 3])).length).toBe(3 * 16 * 16);
    expect(() => getImageProcessor(0)).toThrow('image size must be a positive integer, got 0');
  });
});

describe('errors name the source and say what is wrong, on one line', () => {
  const chelsea = readFileSync(ASSETS + 'chelsea.png');
  const hubble = readFileSync(ASSETS + 'hubble_deep_field.jpg');
  const cases: [string, Uint8Array, string | RegExp][] = [
    [
      'cat.gif',
      Buffer.from('GIF89a\x01\x00\x01\x00\x80\x00\x00', 'latin1'),
      'cat.gif: unsupported image format (GIF); nanovlm-ts reads PNG and JPEG',
    ],
    [
      'a.webp',
      Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1'),
      'a.webp: unsupported image format (WebP); nanovlm-ts reads PNG and JPEG',
    ],
    [
      'row 17 of train.parquet',
      chelsea.subarray(0, 50_000),
      'row 17 of train.parquet: corrupt PNG (truncated: the data ends early)',
    ],
    ['cut.jpg', hubble.subarray(0, 100_000), /^cut\.jpg: corrupt JPEG \(.+\)$/],
    [
      'noise.bin',
      Uint8Array.from({ length: 64 }, (_, i) => (i * 97 + 13) & 255),
      /^noise\.bin: not an image \(unrecognised first bytes 0d 6e cf 30 91 f2 53 b4\)/,
    ],
    ['empty.png', new Uint8Array(0), 'empty.png: no image data (0 bytes)'],
  ];
  for (const [source, bytes, message] of cases) {
    it(source, () => {
      let error: unknown;
      try {
        decodeImage(bytes, source);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(Error);
      const text = (error as Error).message;
      if (typeof message === 'string') expect(text).toBe(message);
      else expect(text).toMatch(message);
      expect(text).not.toContain('\n');
    });
  }

  it('the processor passes its source on', () => {
    expect(() => getImageProcessor(8)(new Uint8Array(0), 'item 3')).toThrow('item 3: no image data (0 bytes)');
  });

  it('loadImageFile names the missing path', () => {
    expect(() => loadImageFile('/no/such/dir/cat.png')).toThrow('image not found: /no/such/dir/cat.png');
    expect(loadImageFile(ASSETS + 'coffee.png')).toMatchObject({ width: 600, height: 400 });
  });
});
