// Getting work onto the GPU: buffers, the command encoder, the pipeline
// cache and readback. The backend (backend.ts) decides what each op
// computes; this file decides when and how it reaches the device.
//
// Recording and submitting. Dispatches go into one command encoder (one
// compute pass) and are submitted together: on a read, on flush(), and
// every SUBMIT_EVERY dispatches. Each dispatch's shapes/strides go into its
// own slot of one uniform "params arena", uploaded with a single writeBuffer
// right before the submit: queue operations run in call order, so the upload
// lands before this batch's dispatches and after the previous batch's.
//
// Why releases can be pending. queue.writeBuffer runs at call time, ahead of
// everything still sitting in the unsubmitted encoder. So a buffer released
// while the encoder references it waits in `pending` until the submit; only
// then does it go back to the pool, where a new tensor may get it and
// writeBuffer may overwrite it. For the same reason, an upload into a storage
// that the unsubmitted batch uses submits that batch first.
//
// Lazy zeroing. A fresh storage that must start as zeros (alloc(), fill(0))
// is marked `needsZero`; a clearBuffer is recorded, in command order, the
// first time a command uses it, unless an upload filled it before.

import type { Storage } from '../backend.ts';
import type { DType } from '../dtype.ts';
import { BufferPool } from './buffer_pool.ts';
import { type Access, type Kernel, MAX_GROUPS_PER_DIM, PARAM_WORDS, wgslType } from './kernels/common.ts';

/** Dispatches recorded before the encoder is submitted anyway. */
const SUBMIT_EVERY = 32;
const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 };
const MAP_MODE_READ = 0x1;
const COMPUTE_STAGE = 0x4;

/** A GPU buffer holding one tensor storage, with a reference count. */
export class GpuStorage implements Storage {
  refs = 1;
  /** Must read as zeros but was not cleared yet: a clearBuffer is recorded when first used. */
  needsZero = false;
  /** The command batch that last referenced this buffer. */
  lastBatch = -1;
  constructor(
    readonly buffer: GPUBuffer,
    readonly dtype: DType,
    readonly length: number,
  ) {}
}

/** One storage binding: the window [offset, offset + size) bytes of a storage's buffer. */
export interface Arg {
  storage: GpuStorage;
  offset: number;
  size: number;
}

/** Buffers, command recording, pipelines and readback for one device. */
export class CommandRecorder {
  private pool: BufferPool;
  private staging: BufferPool;
  private pipelines = new Map<string, GPUComputePipeline>();
  private layouts = new Map<string, GPUBindGroupLayout>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batch = 0;
  private pending: GPUBuffer[] = [];
  private params: Uint32Array;
  private paramsBuffer: GPUBuffer;
  private paramSlot = 0;
  private slotWords: number;
  private errors: string[] = [];
  /** Bytes held by live storages. */
  liveBytes = 0;
  /** Dispatches recorded since the device was opened. */
  dispatchCount = 0;

  constructor(readonly device: GPUDevice) {
    this.pool = new BufferPool(device, USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST, 'tensor');
    this.staging = new BufferPool(device, USAGE.MAP_READ | USAGE.COPY_DST, 'staging', 4);
    const align = device.limits.minUniformBufferOffsetAlignment;
    this.slotWords = Math.ceil((PARAM_WORDS * 4) / align) * (align / 4);
    this.params = new Uint32Array(this.slotWords * SUBMIT_EVERY);
    this.paramsBuffer = device.createBuffer({ size: this.params.byteLength, usage: USAGE.UNIFORM | USAGE.COPY_DST, label: 'params' });
    device.addEventListener('uncapturederror', (e) => this.error((e as GPUUncapturedErrorEvent).error.message));
  }

  // ------------------------------------------------------------ storages

  /** A new storage of `length` elements (contents undefined unless `zero`). */
  newStorage(dtype: DType, length: number, zero = false): GpuStorage {
    wgslType(dtype); // float64: a clear error
    const bytes = Math.max(4, length * 4);
    const max = this.device.limits.maxBufferSize;
    if (bytes > max) throw new Error(`webgpu: a tensor of ${bytes} bytes exceeds this device's maxBufferSize (${max} bytes)`);
    this.liveBytes += length * 4;
    const s = new GpuStorage(this.pool.acquire(bytes), dtype, length);
    s.needsZero = zero;
    return s;
  }

  /** Throws unless `s` is a live storage of this backend. */
  check(s: Storage, op: string): GpuStorage {
    if (!(s instanceof GpuStorage)) throw new Error(`webgpu ${op}: the tensor is not on the webgpu device`);
    if (s.refs <= 0) throw new Error(`webgpu ${op}: use of a freed buffer (a tensor was used after dispose())`);
    return s;
  }

  /** Drops a reference; at zero the buffer returns to the pool (after the submit if pending work uses it). */
  release(s: GpuStorage): void {
    if (--s.refs > 0) return;
    this.liveBytes -= s.length * 4;
    if (s.lastBatch === this.batch) this.pending.push(s.buffer);
    else this.pool.release(s.buffer);
  }

  /** Copies host data to the start of a storage. */
  upload(s: GpuStorage, data: Float32Array | Int32Array): void {
    if (s.needsZero && data.length < s.length) this.use(s); // a partial upload over zeros: record the clear
    if (s.lastBatch === this.batch) this.flush(); // unsubmitted commands use it: submit them before writeBuffer overtakes them
    s.needsZero = false;
    if (data.length) this.device.queue.writeBuffer(s.buffer, 0, data.buffer, data.byteOffset, data.byteLength);
  }

  // ------------------------------------------------------------ recording

  /** Marks a storage as used by the batch being recorded, recording its lazy clear first. */
  use(s: GpuStorage): void {
    if (s.refs <= 0) throw new Error('webgpu: use of a freed buffer (a tensor was used after dispose())');
    if (s.needsZero) {
      this.endPass();
      this.commands().clearBuffer(s.buffer);
      s.needsZero = false;
    }
    s.lastBatch = this.batch;
  }

  /** Records a buffer-to-buffer copy of `bytes` bytes. */
  copy(src: GpuStorage, srcOffset: number, dst: GpuStorage, dstOffset: number, bytes: number): void {
    this.use(src);
    this.use(dst);
    this.endPass();
    this.commands().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, bytes);
  }

  /** Records one dispatch of `kernel`: params into binding 0, `args` into bindings 1..n. */
  run(op: string, kernel: Kernel, params: number[], args: Arg[], groups: [number, number, number]): void {
    if (params.length > PARAM_WORDS) throw new Error(`webgpu ${op}: the view has too many dims for one kernel (${params.length} param words > ${PARAM_WORDS})`);
    const pipeline = this.pipeline(kernel);
    if (this.paramSlot === SUBMIT_EVERY) this.flush();
    for (const a of args) this.use(a.storage); // after the flush: they belong to this batch
    const slot = this.paramSlot++;
    for (let i = 0; i < params.length; i++) this.params[slot * this.slotWords + i] = params[i] >>> 0;
    const bindGroup = this.device.createBindGroup({
      layout: this.layout(kernel.storage),
      entries: [
        { binding: 0, resource: { buffer: this.paramsBuffer, offset: slot * this.slotWords * 4, size: PARAM_WORDS * 4 } },
        ...args.map((a, i) => ({ binding: i + 1, resource: { buffer: a.storage.buffer, offset: a.offset, size: a.size } })),
      ],
    });
    this.pass ??= this.commands().beginComputePass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(...groups);
    this.dispatchCount++;
  }

  /** Workgroup counts for `count` workgroups: along x, spilling over into y beyond 65535. */
  groups(count: number): [number, number, number] {
    if (count <= MAX_GROUPS_PER_DIM) return [count, 1, 1];
    const y = Math.ceil(count / MAX_GROUPS_PER_DIM);
    if (y > MAX_GROUPS_PER_DIM) throw new Error(`webgpu: ${count} workgroups are too many for one dispatch`);
    return [MAX_GROUPS_PER_DIM, y, 1];
  }

  /** Submits everything recorded, then recycles the buffers released meanwhile. */
  flush(): void {
    if (!this.encoder) return;
    this.endPass();
    if (this.paramSlot) this.device.queue.writeBuffer(this.paramsBuffer, 0, this.params.buffer, 0, this.paramSlot * this.slotWords * 4);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.paramSlot = 0;
    this.batch++;
    for (const b of this.pending) this.pool.release(b);
    this.pending = [];
  }

  // ------------------------------------------------------------ readback

  /**
   * Copies `bytes` bytes at `offset` of a storage back to the host, through a
   * pooled MAP_READ staging buffer. This is the host-device sync point: it
   * submits and waits for every op recorded so far.
   */
  async readBytes(src: GpuStorage, offset: number, bytes: number): Promise<ArrayBuffer> {
    const staging = this.staging.acquire(bytes);
    this.use(src);
    this.endPass();
    this.commands().copyBufferToBuffer(src.buffer, offset, staging, 0, bytes);
    this.flush();
    await staging.mapAsync(MAP_MODE_READ, 0, bytes);
    const out = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    this.staging.release(staging);
    if (this.errors.length) throw new Error(`webgpu: ${this.errors.splice(0).join('\n')}`);
    return out;
  }

  /** Waits until the GPU has finished everything recorded so far. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
  }

  /** Pool and cache statistics (for memory tests and benchmarks). */
  stats(): { liveBytes: number; pooledBytes: number; pendingBuffers: number; allocatedBytes: number; buffers: number; pipelines: number } {
    return {
      liveBytes: this.liveBytes,
      pooledBytes: this.pool.pooledBytes,
      pendingBuffers: this.pending.length,
      allocatedBytes: this.pool.allocatedBytes + this.staging.allocatedBytes,
      buffers: this.pool.allocatedCount + this.staging.allocatedCount,
      pipelines: this.pipelines.size,
    };
  }

  /** Frees every buffer and the device. */
  destroy(): void {
    this.flush();
    this.pool.trim();
    this.staging.trim();
    this.paramsBuffer.destroy();
    this.pipelines.clear();
    this.layouts.clear();
    this.device.destroy();
  }

  // ------------------------------------------------------------ internals

  private commands(): GPUCommandEncoder {
    return (this.encoder ??= this.device.createCommandEncoder());
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  private error(message: string): void {
    this.errors.push(message);
    console.error(`webgpu error: ${message}`);
  }

  /** The compute pipeline of a kernel: compiled once, then cached by its key. */
  private pipeline(kernel: Kernel): GPUComputePipeline {
    let p = this.pipelines.get(kernel.key);
    if (p) return p;
    // compile errors arrive asynchronously; they name the kernel and fail the next read
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ code: kernel.code, label: kernel.key });
    const layout = this.device.createPipelineLayout({ bindGroupLayouts: [this.layout(kernel.storage)] });
    p = this.device.createComputePipeline({ layout, compute: { module, entryPoint: 'main' }, label: kernel.key });
    void this.device.popErrorScope().then((e) => e && this.error(`kernel ${kernel.key}: ${e.message}`));
    this.pipelines.set(kernel.key, p);
    return p;
  }

  /** The bind group layout of a uniform block followed by storage bindings of the given access. */
  private layout(storage: Access[]): GPUBindGroupLayout {
    const key = storage.join(',');
    let l = this.layouts.get(key);
    if (!l) {
      const type = (a: Access) => (a === 'read' ? ('read-only-storage' as const) : ('storage' as const));
      l = this.device.createBindGroupLayout({
        entries: [
          { binding: 0, visibility: COMPUTE_STAGE, buffer: { type: 'uniform' } },
          ...storage.map((a, i) => ({ binding: i + 1, visibility: COMPUTE_STAGE, buffer: { type: type(a) } })),
        ],
      });
      this.layouts.set(key, l);
    }
    return l;
  }
}
