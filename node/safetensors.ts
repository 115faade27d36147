// safetensors files on disk, in Node (the format itself is nn/safetensors.ts, which a browser
// also runs). Opening reads only the header; each tensor is read into its own buffer when asked
// for, so a model of several hundred MB never sits in memory twice, and one tensor can be read
// without touching the rest. Writing is atomic: a temporary file, flushed, then renamed.

import fs from 'node:fs';
import type { Module } from '../nn/module.ts';
import { decodeTensor, headerLength, parseHeader, serialize } from '../nn/safetensors.ts';
import type { Header, RawTensor, TensorEntry, WriteTensor } from '../nn/safetensors.ts';
import { toWriteTensors } from '../nn/state.ts';

// readSync and writeSync take at most 2 GiB per call.
const MAX_IO = 1 << 30;

function readAt(fd: number, position: number, length: number, file: string): Uint8Array {
  const out = new Uint8Array(length);
  for (let done = 0; done < length;) {
    const n = fs.readSync(fd, out, done, Math.min(length - done, MAX_IO), position + done);
    if (n === 0)
      throw new Error(
        `${file}: file ended at byte ${position + done}, expected ${position + length} (changed while open?)`,
      );
    done += n;
  }
  return out;
}

/** An open safetensors file: the header is read and validated up front, tensor bytes only on demand. */
export class SafetensorsFile {
  /** The path it was opened with (named in every error). */
  readonly file: string;
  /** The file's __metadata__ strings ({} if it has none). */
  readonly metadata: Record<string, string>;
  private readonly header: Header;
  private fd: number | null;

  /** Opens `file` and validates its whole header; throws one clear line if anything is wrong. */
  constructor(file: string) {
    this.file = file;
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const n = headerLength(readAt(fd, 0, Math.min(8, size), file), size, file);
      this.header = parseHeader(readAt(fd, 8, n, file), size, file);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    this.fd = fd;
    this.metadata = this.header.metadata;
  }

  /** Tensor names, in file order. */
  keys(): string[] {
    return [...this.header.tensors.keys()];
  }

  /** The stored dtype (e.g. 'BF16') and shape of one tensor, without reading it. */
  info(name: string): { dtype: string; shape: number[] } {
    const { dtype, shape } = this.entry(name);
    return { dtype, shape: [...shape] };
  }

  /** Reads and decodes one tensor, touching only its bytes. */
  get(name: string): RawTensor {
    const e = this.entry(name);
    if (this.fd === null) throw new Error(`${this.file}: already closed`);
    return decodeTensor(e, readAt(this.fd, e.begin, e.end - e.begin, this.file), this.file);
  }

  /** Reads every tensor, one buffer each, in file order. */
  getAll(): Map<string, RawTensor> {
    return new Map(this.keys().map((name) => [name, this.get(name)]));
  }

  /** Closes the file; calling it twice is harmless. */
  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private entry(name: string): TensorEntry {
    const e = this.header.tensors.get(name);
    if (!e) throw new Error(`${this.file}: no tensor named ${JSON.stringify(name)}`);
    return e;
  }
}

/** Opens a safetensors file for reading (close it when done). */
export function openSafetensors(file: string): SafetensorsFile {
  return new SafetensorsFile(file);
}

/** Reads every tensor of a safetensors file. */
export function loadSafetensors(file: string): Map<string, RawTensor> {
  const f = openSafetensors(file);
  try {
    return f.getAll();
  } finally {
    f.close();
  }
}

/**
 * Writes tensors to `file` atomically: into a temporary file in the same
 * folder, flushed to disk, then renamed over the target. A crash or error
 * midway leaves the previous file as it was, and no temporary file behind.
 */
export function saveSafetensors(
  file: string,
  tensors: Record<string, WriteTensor>,
  metadata?: Record<string, string>,
): void {
  writeFileAtomic(file, serialize(tensors, metadata)); // serialize validates before touching the disk
}

/** Writes `chunks` (their concatenation is the file) to `file` atomically, as saveSafetensors does. */
export function writeFileAtomic(file: string, chunks: (Uint8Array | string)[]): void {
  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | null = fs.openSync(tmp, 'w');
  try {
    for (const part of chunks) {
      const chunk = typeof part === 'string' ? new TextEncoder().encode(part) : part;
      for (let done = 0; done < chunk.length;) {
        done += fs.writeSync(fd, chunk, done, Math.min(chunk.length - done, MAX_IO));
      }
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Saves a module's state dict, tied weights once (atomically: temp file, then rename). */
export async function saveModule(file: string, module: Module, opts: { dtype?: 'F32' | 'BF16' } = {}): Promise<void> {
  saveSafetensors(file, await toWriteTensors(module.stateDictForSaving(), opts.dtype), { format: 'pt' });
}

/** Loads a safetensors file into a module (strict unless told otherwise). */
export function loadModule(file: string, module: Module, strict = true): void {
  try {
    module.loadStateDict(loadSafetensors(file), strict);
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
}
