// GPU buffers are expensive to create (tens of microseconds each from Node,
// plus the driver's allocation) and a training step frees and reallocates the
// same sizes every time, so released buffers are kept in free lists keyed by
// a rounded size ("bucket") and handed out again (tfjs's BufferManager,
// PyTorch's caching allocator). Sizes round up to one of four steps per power
// of two (at most 25% waste), so a tensor that changes length a little still
// reuses a buffer. The pool keeps free buffers up to a byte budget that grows
// with the peak of live bytes: at steady state everything a step frees comes
// back the next step, and nothing is created. Beyond the budget a released
// buffer is destroyed.
//
// Each buffer has a small integer id: bind groups are cached by the ids of
// the buffers they bind. A request gets the free buffer with the smallest id
// of its bucket, not the last one released: then which buffer each tensor of
// a step gets depends only on the set of free buffers when the step starts,
// not on the order earlier steps released them in, so a training step that
// repeats itself gets the same buffers every time and its bind groups hit the
// cache. Each buffer also remembers the last command batch that used it.
// The pool does not know what the GPU is doing: a buffer that unsubmitted
// commands may still use is only destroyed once the recorder says they were
// submitted (`destroyPending`).

/** Smallest bucket: tiny tensors share one size. */
const MIN_BUCKET = 256;

/** The bucket a request of `bytes` is served from: 4 steps per octave, min 256 B. */
export function bucketSize(bytes: number): number {
  if (bytes <= MIN_BUCKET) return MIN_BUCKET;
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / 4;
  return Math.ceil(bytes / step) * step;
}

/** One GPU buffer owned by a pool. */
export interface PooledBuffer {
  readonly gpu: GPUBuffer;
  readonly id: number;
  readonly size: number;
  /** The command batch that last referenced it (-1: none yet). */
  lastBatch: number;
}

let nextId = 1;

/** A size-bucketed free list of GPU buffers of one usage. */
export class BufferPool {
  private free = new Map<number, PooledBuffer[]>();
  private doomed: PooledBuffer[] = [];
  /** Bytes sitting in free lists. */
  pooledBytes = 0;
  /** Bytes of every buffer this pool created and has not destroyed (free or in use). */
  allocatedBytes = 0;
  /** Buffers created and not destroyed. */
  allocatedCount = 0;
  /** Buffers ever created (a counter for benchmarks: flat at steady state). */
  createdCount = 0;

  constructor(
    private device: GPUDevice,
    private usage: GPUBufferUsageFlags,
    private label: string,
    /** Called when a buffer is destroyed (the recorder drops bind groups that use it). */
    private onDestroy: (b: PooledBuffer) => void,
    /** Free bytes kept at least; the budget is max(this, budget()). */
    private minPooledBytes = 256 << 20,
    private budget: () => number = () => 0,
  ) {}

  /**
   * A buffer of at least `bytes` (its size is the bucket size): the free one
   * with the smallest id. A new one is labelled with `what` it was made for
   * (Dawn's out-of-memory messages quote the label).
   */
  acquire(bytes: number, what = ''): PooledBuffer {
    const size = bucketSize(bytes);
    const reused = this.free.get(size)?.pop(); // lists are sorted by descending id
    if (reused) {
      this.pooledBytes -= size;
      return reused;
    }
    this.allocatedBytes += size;
    this.allocatedCount++;
    this.createdCount++;
    const label = `${this.label}${what ? ` output of ${what}` : ''} (${size} bytes)`;
    const gpu = this.device.createBuffer({ size, usage: this.usage, label });
    return { gpu, id: nextId++, size, lastBatch: -1 };
  }

  /**
   * Returns a buffer for reuse, or dooms it when the budget is full. Reuse is
   * safe even if unsubmitted commands still read it: commands run in order,
   * so a later command that overwrites it runs after them.
   */
  release(b: PooledBuffer): void {
    if (this.pooledBytes + b.size > Math.max(this.minPooledBytes, this.budget())) {
      this.doomed.push(b);
      return;
    }
    let list = this.free.get(b.size);
    if (!list) this.free.set(b.size, (list = []));
    // insert keeping ids descending (binary search; free lists are short)
    let [lo, hi] = [0, list.length];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid].id > b.id) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, b);
    this.pooledBytes += b.size;
  }

  /** Destroys the buffers doomed so far (call once the commands that used them are submitted). */
  destroyPending(): void {
    for (const b of this.doomed) this.destroy(b);
    this.doomed = [];
  }

  /** Destroys every free buffer (at close). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) this.destroy(b);
    this.free.clear();
    this.pooledBytes = 0;
    this.destroyPending();
  }

  private destroy(b: PooledBuffer): void {
    this.allocatedBytes -= b.size;
    this.allocatedCount--;
    this.onDestroy(b);
    b.gpu.destroy();
  }
}
