// GPU buffers are expensive to create and a training step frees and
// reallocates the same sizes every time, so released buffers are kept in
// free lists keyed by a rounded size ("bucket") and handed out again
// (tfjs's BufferManager, tinygrad's LRUAllocator). Sizes round up to one of
// four steps per power of two (at most 25% waste), so a tensor that changes
// length a little still reuses a buffer. Each bucket keeps at most
// `maxPerBucket` buffers and the whole pool at most `maxPooledBytes`; beyond
// that a released buffer is destroyed.
//
// The pool knows nothing about pending GPU work: the backend only returns a
// buffer here once no unsubmitted command can still read it.

/** Smallest bucket: tiny tensors share one size. */
const MIN_BUCKET = 256;

/** The bucket a request of `bytes` is served from: 4 steps per octave, min 256 B. */
export function bucketSize(bytes: number): number {
  if (bytes <= MIN_BUCKET) return MIN_BUCKET;
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / 4;
  return Math.ceil(bytes / step) * step;
}

/** A size-bucketed free list of GPU buffers of one usage. */
export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  /** Bytes sitting in free lists. */
  pooledBytes = 0;
  /** Bytes of every buffer this pool created and has not destroyed (free or in use). */
  allocatedBytes = 0;
  /** Buffers created and not destroyed. */
  allocatedCount = 0;

  constructor(
    private device: GPUDevice,
    private usage: GPUBufferUsageFlags,
    private label: string,
    private maxPerBucket = 32,
    private maxPooledBytes = 1 << 30,
  ) {}

  /** A buffer of at least `bytes` (its size is the bucket size). */
  acquire(bytes: number): GPUBuffer {
    const size = bucketSize(bytes);
    const list = this.free.get(size);
    const reused = list?.pop();
    if (reused) {
      this.pooledBytes -= size;
      return reused;
    }
    this.allocatedBytes += size;
    this.allocatedCount++;
    return this.device.createBuffer({ size, usage: this.usage, label: `${this.label} ${size}` });
  }

  /** Returns a buffer for reuse (or destroys it when its bucket or the pool is full). */
  release(buffer: GPUBuffer): void {
    const size = buffer.size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    if (list.length >= this.maxPerBucket || this.pooledBytes + size > this.maxPooledBytes) {
      this.destroy(buffer);
      return;
    }
    list.push(buffer);
    this.pooledBytes += size;
  }

  /** Destroys every free buffer (on allocation pressure, and at close). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) this.destroy(b);
    this.free.clear();
    this.pooledBytes = 0;
  }

  private destroy(buffer: GPUBuffer): void {
    this.allocatedBytes -= buffer.size;
    this.allocatedCount--;
    buffer.destroy();
  }
}
