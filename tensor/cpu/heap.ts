// Where CPU tensors keep their bytes: one WebAssembly.Memory for all of them.
// The WebAssembly kernels read and write it directly (a tensor is a byte
// offset, nothing is copied in or out), and when the memory is shared, worker
// threads see the same bytes. TypeScript code sees it through typed-array
// views.
//
// The allocator is tinygrad's LRU allocator in miniature: a freed block goes
// to a free list for its size class, and the next request of that class
// reuses it. Sizes are rounded up to a class (a multiple of 64 bytes of the
// form 4..7 x 2^k, at most 25% slack), so a training step, which asks for
// the same sizes every time, allocates nothing new after the first step. New
// blocks come from the top of the memory, which grows as needed. Only when
// it cannot grow (32-bit addresses: 4 GiB) are the free blocks of all sizes
// merged with their neighbours, and new blocks cut from those runs.
//
// Float64 tensors (gradient checks only), state moved out on purpose (large
// parameters' AdamW moments: moveToHost) and the rare tensor that does not fit keep their own
// typed array outside the memory; the kernels run the TypeScript path on them.

import type { Storage } from '../backend.ts';
import { type DType, type TypedArray, bytesPerElement, makeTypedArray } from '../dtype.ts';

const PAGE = 65536;
const ALIGN = 64; // a cache line: blocks never share one, so threads never contend for one

/**
 * Creates the memory: shared where the platform has SharedArrayBuffer (threads), else private;
 * null without WebAssembly.
 */
function createMemory(): { memory: WebAssembly.Memory; shared: boolean } | null {
  if (typeof WebAssembly !== 'object') return null;
  // A shared memory reserves its maximum up front: ask for 4 GiB, settle for 1.
  for (const maximum of typeof SharedArrayBuffer === 'function' ? [65536, 16384] : []) {
    try {
      return { memory: new WebAssembly.Memory({ initial: 16, maximum, shared: true }), shared: true };
    } catch {
      // not that much address space: try smaller, then private
    }
  }
  try {
    return { memory: new WebAssembly.Memory({ initial: 16, maximum: 65536 }), shared: false };
  } catch {
    return null;
  }
}

const created = createMemory();
/** The memory every CPU tensor lives in (null where WebAssembly is missing). */
export const memory = created?.memory ?? null;
/** True when the memory is a SharedArrayBuffer that worker threads can use. */
export const sharedMemory = created?.shared ?? false;

let buffer = memory?.buffer; // the current buffer: growing replaces it
let top = ALIGN; // the next unallocated byte; address 0 stays unused
const freeLists = new Map<number, number[]>();
const stats = { grows: 0, reused: 0, fresh: 0, carved: 0, inUseBytes: 0, peakInUseBytes: 0 };

/** The size class of a request: a multiple of 64 of the form 4..7 x 2^k bytes. */
export function sizeClass(bytes: number): number {
  const units = Math.max(1, Math.ceil(bytes / ALIGN));
  if (units <= 8) return units * ALIGN;
  const step = 2 ** (Math.floor(Math.log2(units)) - 2); // 4 steps per doubling
  return Math.ceil(units / step) * step * ALIGN;
}

/** Grows the memory so that `end` bytes fit; false when it cannot. */
function reserve(end: number): boolean {
  const have = memory!.buffer.byteLength;
  if (end <= have) return true;
  // at least double (fewer, larger grows), within what is allowed
  const pages = Math.max(Math.ceil((end - have) / PAGE), Math.ceil(have / PAGE));
  for (const p of [pages, Math.ceil((end - have) / PAGE)]) {
    try {
      memory!.grow(p);
      buffer = memory!.buffer;
      stats.grows++;
      return true;
    } catch {
      // over the maximum: try the bare minimum
    }
  }
  return false;
}

/** Byte offset of a block of at least `bytes` (contents left as they were); -1 when the memory is full. */
export function malloc(bytes: number): number {
  const size = sizeClass(bytes);
  let ptr = freeLists.get(size)?.pop() ?? -1;
  if (ptr >= 0) stats.reused++;
  else if ((ptr = fromRuns(size)) >= 0) stats.carved++;
  else if ((ptr = fromTop(size)) >= 0) stats.fresh++;
  else {
    // The memory is full. Free lists may hold much of it in sizes no longer
    // asked for (a 222M-parameter model's backward pass asks for other sizes
    // than its forward pass): merge them into runs and cut the block from one.
    compactHeap();
    if ((ptr = fromRuns(size)) >= 0) stats.carved++;
    else if ((ptr = fromTop(size)) >= 0) stats.fresh++;
    else return -1;
  }
  stats.inUseBytes += size;
  stats.peakInUseBytes = Math.max(stats.peakInUseBytes, stats.inUseBytes);
  return ptr;
}

/** A new block at the top of the memory (grown if needed); -1 when it cannot grow. */
function fromTop(size: number): number {
  if (!memory || !reserve(top + size)) return -1;
  top += size;
  return top - size;
}

// Free memory outside the size classes' lists: runs of merged free blocks (see compactHeap).
let runs: { ptr: number; size: number }[] = [];

/** `size` bytes cut from the first run long enough; -1 if none is. */
function fromRuns(size: number): number {
  const i = runs.findIndex((r) => r.size >= size);
  if (i < 0) return -1;
  const run = runs[i];
  const ptr = run.ptr;
  [run.ptr, run.size] = [run.ptr + size, run.size - size];
  if (run.size === 0) runs.splice(i, 1);
  return ptr;
}

/**
 * Merges every free block (of every size class) with its free neighbours
 * into runs, and lowers the top when the last run reaches it. malloc does
 * this by itself when the memory is full, and cuts blocks from the runs
 * before it grows the memory.
 */
export function compactHeap(): void {
  const blocks = runs;
  for (const [size, list] of freeLists) for (const ptr of list) blocks.push({ ptr, size });
  freeLists.clear();
  blocks.sort((a, b) => a.ptr - b.ptr);
  runs = [];
  for (const b of blocks) {
    const last = runs[runs.length - 1];
    if (last && last.ptr + last.size === b.ptr) last.size += b.size;
    else runs.push({ ...b });
  }
  const last = runs[runs.length - 1];
  if (last && last.ptr + last.size === top) {
    top = last.ptr;
    runs.pop();
  }
}

/** Returns a block to its size class's free list. */
export function free(ptr: number, bytes: number): void {
  const size = sizeClass(bytes);
  stats.inUseBytes -= size;
  let list = freeLists.get(size);
  if (!list) freeLists.set(size, (list = []));
  list.push(ptr);
}

/**
 * Allocator counters: bytes reserved from the memory (the high-water mark of
 * the blocks ever made), bytes in blocks handed out now and at most so far,
 * blocks handed out new, reused or carved from merged free blocks, memory grows.
 */
export function heapStats(): {
  reservedBytes: number;
  memoryBytes: number;
  inUseBytes: number;
  peakInUseBytes: number;
  fresh: number;
  reused: number;
  carved: number;
  grows: number;
} {
  return { reservedBytes: top, memoryBytes: buffer?.byteLength ?? 0, ...stats };
}

/** Starts a new peak: peakInUseBytes becomes the bytes in use now (benchmarks measure one step's peak). */
export function resetHeapPeak(): void {
  stats.peakInUseBytes = stats.inUseBytes;
}

/** A typed-array view of `length` elements at byte offset `ptr`, over the current buffer. */
function heapView(dtype: DType, ptr: number, length: number): TypedArray {
  return dtype === 'int32' ? new Int32Array(buffer!, ptr, length) : new Float32Array(buffer!, ptr, length);
}

/** The whole memory as float32, and as int32 (re-made after a grow). */
export function heapF32(): Float32Array {
  if (views.buffer !== buffer) views = { buffer, f32: new Float32Array(buffer!), i32: new Int32Array(buffer!) };
  return views.f32;
}
/** The whole memory as int32. */
export function heapI32(): Int32Array {
  heapF32();
  return views.i32;
}
let views = { buffer: undefined as ArrayBufferLike | undefined, f32: new Float32Array(0), i32: new Int32Array(0) };
let warnedFull = false;

/**
 * A CPU buffer with a reference count: a block of the memory at byte offset
 * `ptr`, or (ptr = -1) a typed array of its own. `data` is a view made on
 * demand and re-made when the memory has grown, so it is never stale.
 */
export class CpuStorage implements Storage {
  refs = 1;
  /** Byte offset of a bfloat16 copy of the values in the memory, or -1 (see makeBf16). */
  bf16 = -1;
  private view: TypedArray | null;

  constructor(
    readonly dtype: DType,
    readonly length: number,
    public ptr: number,
    own: TypedArray | null = null,
  ) {
    this.view = own;
  }

  /** A zero-filled or uninitialised storage of `length` elements, in the memory when it can be. */
  static create(dtype: DType, length: number, zeroed: boolean): CpuStorage {
    const bytes = length * bytesPerElement(dtype);
    const ptr = dtype === 'float64' || length === 0 ? -1 : malloc(bytes);
    if (ptr < 0 && memory && dtype !== 'float64' && length > 0 && !warnedFull) {
      console.warn(
        'cpu backend: the WebAssembly memory is full; new tensors get their own arrays and the TypeScript kernels',
      );
      warnedFull = true;
    }
    if (ptr < 0) return new CpuStorage(dtype, length, -1, makeTypedArray(dtype, length));
    const s = new CpuStorage(dtype, length, ptr);
    if (zeroed) s.data.fill(0);
    return s;
  }

  /** The elements, as a typed array (a view of the memory, or the own array). */
  get data(): TypedArray {
    if (this.ptr >= 0 && this.view?.buffer !== buffer) this.view = heapView(this.dtype, this.ptr, this.length);
    return this.view!;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.length * bytesPerElement(this.dtype);
  }

  /**
   * Moves the elements out of the memory into an array of their own, and
   * gives the block back. For cold state (AdamW's moments, see
   * CpuBackend.adamw): the 4 GiB memory is then left to what the kernels
   * touch all the time.
   */
  moveToHost(): void {
    if (this.ptr < 0) return;
    const own = this.data.slice();
    free(this.ptr, this.bytes);
    this.ptr = -1;
    this.view = own;
  }

  /**
   * Makes a bfloat16 copy of the float32 values in the memory, for kernels
   * that read it instead (half the bytes): each value rounded to its top 16
   * bits, to nearest with ties to even (NaN stays NaN). False when the
   * memory has no room.
   */
  makeBf16(): boolean {
    if (this.dtype !== 'float32' || this.ptr < 0) return false;
    if (this.bf16 >= 0) return true;
    const at = malloc(2 * this.length);
    if (at < 0) return false;
    const bits = new Uint32Array(buffer!, this.ptr, this.length);
    const out = new Uint16Array(buffer!, at, this.length);
    for (let i = 0; i < this.length; i++) {
      const x = bits[i];
      out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
    this.bf16 = at;
    return true;
  }

  /** Frees the bfloat16 copy, if there is one (the values are about to change, or the storage goes). */
  dropBf16(): void {
    if (this.bf16 >= 0) free(this.bf16, 2 * this.length);
    this.bf16 = -1;
  }

  /** Gives the block back to the allocator (after the last release). */
  free(): void {
    this.dropBf16();
    if (this.ptr >= 0) free(this.ptr, this.bytes);
    this.view = null;
  }
}
