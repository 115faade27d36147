// Getting work onto the GPU: buffers, the command encoder, the pipeline and
// bind group caches, uploads, readback, and device errors. The backend
// (backend.ts) decides what each op computes; this file decides when and how
// it reaches the device, at the lowest host cost we can: every call into Dawn
// from Node costs microseconds (tens for a createBuffer or createBindGroup),
// and a training step records thousands of dispatches.
//
// Recording and submitting. Dispatches go into one compute pass of one
// command encoder, submitted every SUBMIT_EVERY dispatches, on a read and on
// flush(). Nothing ends the pass but a readback copy, so a submit is usually
// one pass. Each dispatch's shapes and strides go into its own 256-byte slot
// of an "arena" buffer, bound with a dynamic offset, so the bind group of a
// dispatch depends only on the buffers it binds and is cached: at steady
// state a step creates neither buffers nor bind groups. The arena is uploaded
// with one writeBuffer right before each submit: queue operations run in call
// order, so it lands after the previous submit's commands ran and before this
// one's.
//
// Uploads. queue.writeBuffer runs at call time, ahead of everything still
// sitting in the unsubmitted encoder. That is harmless for a buffer no
// unsubmitted command uses (the usual case: writeBuffer directly), but a
// buffer the encoder still reads or writes, which a released buffer handed
// out again may be, must get its data in command order: it is staged in the
// arena and a copy kernel moves it. Data too large for the arena submits the
// encoder first. Released buffers go back to the pool at once: a later
// command that overwrites one runs after the earlier commands that read it.
//
// Lazy zeroing. A fresh storage that must start as zeros (alloc(), fill(0))
// is marked `needsZero`; a fill kernel is recorded, in command order, the
// first time a command uses it, unless an upload filled it before.
//
// Errors. Dawn reports validation errors, out-of-memory and internal errors
// asynchronously, and a submit with an invalid command is dropped whole: the
// results silently stay stale. So an error scope is open around every
// submit; when one reports, the recorder fails for good with one error that
// names the op (from the kernel labels in Dawn's message, or the ops of that
// submit), and every later op and read throws it. Device loss fails the same
// way. Reads wait for the error scopes of everything submitted before them.

import type { Storage } from '../backend.ts';
import type { DType } from '../dtype.ts';
import { BufferPool, type PooledBuffer } from './buffer_pool.ts';
import { type Access, type Kernel, MAX_GROUPS_PER_DIM, PARAM_WORDS, wgslType } from './kernels/common.ts';
import { EW_WORKGROUP, fillKernel, uploadKernel } from './kernels/elementwise.ts';

/** Dispatches recorded before the encoder is submitted anyway (one params slot each). */
const SUBMIT_EVERY = 256;
/** Bytes of tensor data staged per submit; larger uploads are written directly. */
const UPLOAD_BYTES = 4 << 20;
/** Bind groups kept (least recently used are dropped first). */
const BIND_GROUP_CACHE = 16384;
const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 };
const MAP_MODE_READ = 0x1;
const COMPUTE_STAGE = 0x4;

/** A GPU buffer holding one tensor storage, with a reference count. */
export class GpuStorage implements Storage {
  refs = 1;
  /** Must read as zeros but was not cleared yet: a fill is recorded when first used. */
  needsZero = false;
  constructor(
    readonly buffer: PooledBuffer,
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

/** Host-side costs since the device was opened (for benchmarks: take differences). */
export interface GpuCounters {
  dispatches: number;
  computePasses: number;
  submits: number;
  buffersCreated: number;
  bindGroupsCreated: number;
  pipelinesCreated: number;
  /** Host-to-device bytes: tensor data and dispatch params. */
  bytesWritten: number;
  /** Device-to-host bytes, and the reads that carried them (each one a sync point). */
  bytesRead: number;
  reads: number;
  /** The dispatches by the op that recorded them (where a step's dispatches go). */
  dispatchesByOp: Record<string, number>;
}

/** A cached bind group and the buffers it binds. */
interface CachedGroup {
  group: GPUBindGroup;
  ids: number[];
}

/** Buffers, command recording, caches, uploads, readback and errors for one device. */
export class CommandRecorder {
  private pool: BufferPool;
  private staging: BufferPool;
  private pipelines = new Map<string, GPUComputePipeline>();
  private layouts = new Map<string, GPUBindGroupLayout>();
  private groups = new Map<string, CachedGroup>();
  private groupsOfBuffer = new Map<number, Set<string>>();
  private arena: PooledBuffer;
  private arenaHost: Uint8Array;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batch = 0;
  /** The ops (name, kernel key) of the batch being recorded: to name the op when a submit fails. */
  private batchOps: [string, string][] = [];
  private slotBytes: number;
  private paramSlot = 0;
  private uploadAt: number;
  private failure: Error | null = null;
  /** Resolves once the error scopes of every submit so far have reported. */
  private checked: Promise<void> = Promise.resolve();
  private lost: Promise<void>;
  private closed = false;
  private n = {
    dispatches: 0,
    computePasses: 0,
    submits: 0,
    bindGroupsCreated: 0,
    bytesWritten: 0,
    bytesRead: 0,
    reads: 0,
  };
  private byOp = new Map<string, number>();
  /** Bytes held by live storages, and their peak (the pool's budget). */
  liveBytes = 0;
  peakLiveBytes = 0;

  constructor(readonly device: GPUDevice) {
    const forget = (b: PooledBuffer) => this.forgetGroups(b.id);
    this.pool = new BufferPool(
      device,
      USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST,
      'tensor',
      forget,
      256 << 20,
      () => this.peakLiveBytes,
    );
    this.staging = new BufferPool(device, USAGE.MAP_READ | USAGE.COPY_DST, 'staging', forget, 64 << 20);
    const align = Math.max(
      device.limits.minUniformBufferOffsetAlignment,
      device.limits.minStorageBufferOffsetAlignment,
    );
    this.slotBytes = Math.ceil((PARAM_WORDS * 4) / align) * align;
    this.uploadAt = SUBMIT_EVERY * this.slotBytes;
    this.openScopes();
    // params slots, then the upload area; created once (id 0 is no pool's)
    this.arenaHost = new Uint8Array(this.uploadAt + UPLOAD_BYTES);
    const size = this.arenaHost.byteLength;
    const gpu = device.createBuffer({ size, usage: USAGE.UNIFORM | USAGE.STORAGE | USAGE.COPY_DST, label: 'arena' });
    this.arena = { gpu, id: 0, size, lastBatch: -1 };
    device.addEventListener('uncapturederror', (e) =>
      this.fail(this.describe('uncaptured', (e as GPUUncapturedErrorEvent).error.message, this.batchOps)),
    );
    this.lost = device.lost.then((info) => {
      if (this.closed) return;
      const what = `the device was lost (${info.reason}): ${info.message.trim() || 'no message'}`;
      this.fail(new Error(`webgpu: ${what}; close it (closeWebGPU()) and open it again`));
    });
  }

  // ------------------------------------------------------------ storages

  /** A new storage of `length` elements (contents undefined unless `zero`) for the output of `op`. */
  newStorage(dtype: DType, length: number, zero = false, op = 'tensor'): GpuStorage {
    this.assertUsable();
    wgslType(dtype); // float64: a clear error
    const bytes = Math.max(4, length * 4);
    const max = this.device.limits.maxBufferSize;
    if (bytes > max)
      throw new Error(`webgpu: a tensor of ${bytes} bytes exceeds this device's maxBufferSize (${max} bytes)`);
    this.liveBytes += length * 4;
    this.peakLiveBytes = Math.max(this.peakLiveBytes, this.liveBytes);
    const s = new GpuStorage(this.pool.acquire(bytes, op), dtype, length);
    s.needsZero = zero;
    return s;
  }

  /** Throws unless `s` is a live storage of this backend. */
  check(s: Storage, op: string): GpuStorage {
    if (!(s instanceof GpuStorage)) throw new Error(`webgpu ${op}: the tensor is not on the webgpu device`);
    if (s.refs <= 0) throw new Error(`webgpu ${op}: use of a freed buffer (a tensor was used after dispose())`);
    return s;
  }

  /** Drops a reference; at zero the buffer returns to the pool. */
  release(s: GpuStorage): void {
    if (--s.refs > 0) return;
    this.liveBytes -= s.length * 4;
    if (!this.closed) this.pool.release(s.buffer);
  }

  /** Copies host data to the start of a storage, in command order. */
  upload(s: GpuStorage, data: Float32Array | Int32Array): void {
    this.assertUsable();
    const bytes = data.byteLength;
    if (s.needsZero && data.length < s.length) this.use(s); // a partial upload over zeros: record the clear first
    s.needsZero = false;
    if (bytes === 0) return;
    if (s.buffer.lastBatch !== this.batch) {
      // no unsubmitted command uses the buffer: writeBuffer, though it runs at once, overtakes none
      this.device.queue.writeBuffer(s.buffer.gpu, 0, data.buffer, data.byteOffset, bytes);
      this.n.bytesWritten += bytes;
      return;
    }
    if (bytes <= UPLOAD_BYTES) {
      if (this.uploadAt + bytes > this.arenaHost.byteLength || this.paramSlot === SUBMIT_EVERY) this.flush();
      const start = SUBMIT_EVERY * this.slotBytes;
      const at = this.uploadAt;
      this.arenaHost.set(new Uint8Array(data.buffer, data.byteOffset, bytes), at);
      this.uploadAt += bytes;
      const dstSize = s.buffer.size <= this.device.limits.maxStorageBufferBindingSize ? s.buffer.size : bytes;
      const args = [
        { storage: s, offset: 0, size: dstSize },
        { storage: null, offset: start, size: UPLOAD_BYTES },
      ];
      const words = bytes / 4;
      this.dispatch(
        'upload',
        uploadKernel(),
        [words, (at - start) / 4],
        args,
        this.groupsFor(Math.ceil(words / EW_WORKGROUP)),
      );
      return;
    }
    this.flush(); // too large to stage: submit the commands that use the buffer before writeBuffer overtakes them
    this.device.queue.writeBuffer(s.buffer.gpu, 0, data.buffer, data.byteOffset, bytes);
    this.n.bytesWritten += bytes;
  }

  // ------------------------------------------------------------ recording

  /** Records the lazy clear of a storage that a command is about to use. */
  use(s: GpuStorage): void {
    if (s.refs <= 0) throw new Error('webgpu: use of a freed buffer (a tensor was used after dispose())');
    if (!s.needsZero) return;
    s.needsZero = false;
    const bytes = Math.max(4, s.length * 4);
    if (bytes <= this.device.limits.maxStorageBufferBindingSize) {
      this.dispatch(
        'zeros',
        fillKernel('int32'),
        [bytes / 4, 0],
        [{ storage: s, offset: 0, size: bytes }],
        this.groupsFor(Math.ceil(bytes / 4 / EW_WORKGROUP)),
      );
    } else {
      this.endPass(); // too large for one binding: a clear command (it ends the compute pass)
      this.commands().clearBuffer(s.buffer.gpu);
      s.buffer.lastBatch = this.batch;
    }
  }

  /** Records one dispatch of `kernel`: params into binding 0, `args` into bindings 1..n. */
  run(op: string, kernel: Kernel, params: number[], args: Arg[], groups: [number, number, number]): void {
    this.assertUsable();
    if (params.length > PARAM_WORDS)
      throw new Error(
        `webgpu ${op}: the view has too many dims for one kernel (${params.length} param words > ${PARAM_WORDS})`,
      );
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (groups.some((g) => g > max))
      throw new Error(`webgpu ${op}: ${groups.join(' x ')} workgroups, over this device's ${max} per dimension`);
    for (const a of args) this.use(a.storage); // may record lazy clears first
    this.dispatch(op, kernel, params, args, groups);
  }

  /** Workgroup counts for `count` workgroups: along x, spilling over into y beyond 65535. */
  groupsFor(count: number): [number, number, number] {
    if (count <= MAX_GROUPS_PER_DIM) return [count, 1, 1];
    const y = Math.ceil(count / MAX_GROUPS_PER_DIM);
    if (y > MAX_GROUPS_PER_DIM) throw new Error(`webgpu: ${count} workgroups are too many for one dispatch`);
    return [MAX_GROUPS_PER_DIM, y, 1];
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.encoder) return;
    this.endPass();
    // this batch's params and staged uploads, in one or two writes that land before its commands
    const start = SUBMIT_EVERY * this.slotBytes;
    if (this.paramSlot) this.write(0, this.paramSlot * this.slotBytes);
    if (this.uploadAt > start) this.write(start, this.uploadAt - start);
    this.device.queue.submit([this.encoder.finish()]);
    this.n.submits++;
    this.encoder = null;
    this.batch++;
    this.watch(this.batchOps);
    this.batchOps = [];
    this.paramSlot = 0;
    this.uploadAt = start;
    this.pool.destroyPending();
    this.staging.destroyPending();
  }

  // ------------------------------------------------------------ readback

  /**
   * Copies `bytes` bytes at `offset` of a storage back to the host, through a
   * pooled MAP_READ staging buffer. This is the host-device sync point: it
   * submits and waits for every op recorded so far, and throws the error of
   * any submit that failed.
   */
  async readBytes(src: GpuStorage, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.assertUsable();
    const staging = this.staging.acquire(bytes);
    this.use(src);
    this.endPass();
    this.commands().copyBufferToBuffer(src.buffer.gpu, offset, staging.gpu, 0, bytes);
    this.batchOps.push(['read', 'staging']);
    this.flush();
    this.n.reads++;
    this.n.bytesRead += bytes;
    const mapped = staging.gpu.mapAsync(MAP_MODE_READ, 0, bytes);
    try {
      await Promise.race([Promise.all([mapped, this.checked]), this.lost.then(() => this.assertUsable())]);
      this.assertUsable();
      return staging.gpu.getMappedRange(0, bytes).slice(0);
    } finally {
      if (staging.gpu.mapState === 'mapped') staging.gpu.unmap();
      if (!this.closed) this.staging.release(staging);
    }
  }

  /** Waits until the GPU has finished everything recorded so far (and throws a device error, if any). */
  async sync(): Promise<void> {
    this.assertUsable();
    this.flush();
    await Promise.race([Promise.all([this.device.queue.onSubmittedWorkDone(), this.checked]), this.lost]);
    this.assertUsable();
  }

  /** Pool and cache statistics (for memory tests and benchmarks). */
  stats(): {
    liveBytes: number;
    pooledBytes: number;
    allocatedBytes: number;
    buffers: number;
    pipelines: number;
    bindGroups: number;
  } {
    return {
      liveBytes: this.liveBytes,
      pooledBytes: this.pool.pooledBytes,
      allocatedBytes: this.pool.allocatedBytes + this.staging.allocatedBytes + this.arena.size,
      buffers: this.pool.allocatedCount + this.staging.allocatedCount + 1,
      pipelines: this.pipelines.size,
      bindGroups: this.groups.size,
    };
  }

  /** Host-side costs since the device was opened. */
  counters(): GpuCounters {
    return {
      ...this.n,
      buffersCreated: this.pool.createdCount + this.staging.createdCount + 1,
      pipelinesCreated: this.pipelines.size,
      dispatchesByOp: Object.fromEntries(this.byOp),
    };
  }

  /** Frees every buffer and the device. */
  destroy(): void {
    if (!this.failure) this.flush();
    this.closed = true;
    this.encoder = null;
    this.pass = null;
    this.pool.trim();
    this.staging.trim();
    this.arena.gpu.destroy();
    this.pipelines.clear();
    this.layouts.clear();
    this.groups.clear();
    this.device.destroy();
  }

  // ------------------------------------------------------------ internals

  /** Throws the recorded device failure, or after close. */
  private assertUsable(): void {
    if (this.failure) throw this.failure;
    if (this.closed)
      throw new Error('webgpu: the device was closed (closeWebGPU()); tensors on it can no longer be used');
  }

  /** Records a dispatch (a null storage binds the arena's upload area). */
  private dispatch(
    op: string,
    kernel: Kernel,
    params: number[],
    args: { storage: GpuStorage | null; offset: number; size: number }[],
    groups: [number, number, number],
  ): void {
    const pipeline = this.pipeline(kernel);
    if (this.paramSlot === SUBMIT_EVERY) this.flush();
    const slot = this.paramSlot++;
    const words = new Uint32Array(this.arenaHost.buffer, slot * this.slotBytes, PARAM_WORDS);
    for (let i = 0; i < params.length; i++) words[i] = params[i] >>> 0;
    const buffers = args.map((a) => (a.storage ? a.storage.buffer : this.arena));
    for (const b of buffers) b.lastBatch = this.batch;
    this.pass ??= this.beginPass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, this.bindGroup(kernel, buffers, args), [slot * this.slotBytes]);
    this.pass.dispatchWorkgroups(...groups);
    this.batchOps.push([op, kernel.key]);
    this.n.dispatches++;
    this.byOp.set(op, (this.byOp.get(op) ?? 0) + 1);
  }

  private beginPass(): GPUComputePassEncoder {
    this.n.computePasses++;
    return this.commands().beginComputePass();
  }

  /** The bind group of a dispatch: cached by the buffers (and windows) it binds. */
  private bindGroup(kernel: Kernel, buffers: PooledBuffer[], args: { offset: number; size: number }[]): GPUBindGroup {
    let key = kernel.storage.join(',');
    for (let i = 0; i < args.length; i++) key += `|${buffers[i].id}@${args[i].offset}+${args[i].size}`;
    const hit = this.groups.get(key);
    if (hit) {
      this.groups.delete(key); // re-inserted: most recently used
      this.groups.set(key, hit);
      return hit.group;
    }
    const group = this.device.createBindGroup({
      layout: this.layout(kernel.storage),
      label: kernel.key,
      entries: [
        { binding: 0, resource: { buffer: this.arena.gpu, offset: 0, size: PARAM_WORDS * 4 } },
        ...args.map((a, i) => ({
          binding: i + 1,
          resource: { buffer: buffers[i].gpu, offset: a.offset, size: a.size },
        })),
      ],
    });
    this.n.bindGroupsCreated++;
    const ids = buffers.map((b) => b.id);
    this.groups.set(key, { group, ids });
    for (const id of ids) {
      let keys = this.groupsOfBuffer.get(id);
      if (!keys) this.groupsOfBuffer.set(id, (keys = new Set()));
      keys.add(key);
    }
    if (this.groups.size > BIND_GROUP_CACHE) this.dropGroup(this.groups.keys().next().value!);
    return group;
  }

  private dropGroup(key: string): void {
    const g = this.groups.get(key);
    if (!g) return;
    this.groups.delete(key);
    for (const id of g.ids) this.groupsOfBuffer.get(id)?.delete(key);
  }

  /** Drops the cached bind groups of a buffer that is being destroyed. */
  private forgetGroups(id: number): void {
    for (const key of this.groupsOfBuffer.get(id) ?? []) this.dropGroup(key);
    this.groupsOfBuffer.delete(id);
  }

  /** Uploads a range of the arena. */
  private write(offset: number, bytes: number): void {
    this.device.queue.writeBuffer(this.arena.gpu, offset, this.arenaHost.buffer, offset, bytes);
    this.n.bytesWritten += bytes;
  }

  private commands(): GPUCommandEncoder {
    return (this.encoder ??= this.device.createCommandEncoder());
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  // --- errors ---

  /** Error scopes stay open around everything recorded between two submits. */
  private openScopes(): void {
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('internal');
  }

  /** Closes the scopes of the batch just submitted (they report asynchronously) and opens the next ones. */
  private watch(ops: [string, string][]): void {
    const scopes = ['internal', 'out-of-memory', 'validation'].map((kind) =>
      this.device.popErrorScope().then((e) => {
        if (e) this.fail(this.describe(kind, e.message, ops));
      }),
    );
    this.openScopes();
    this.checked = Promise.all([this.checked, ...scopes]).then(() => {});
  }

  /** One error naming the op: Dawn's messages carry the labels of the kernels involved. */
  private describe(kind: string, message: string, ops: [string, string][]): Error {
    const unique = [...new Set(ops.map(([op]) => op))];
    // the kernel of a pipeline or bind group, or the op whose output a buffer was created for
    const named =
      ops.find(([, key]) => message.includes(`"${key}"`))?.[0] ??
      /output of ([\w.]+) \(/.exec(message)?.[1] ??
      (unique.length === 1 ? unique[0] : null);
    const where = named
      ? `webgpu ${named}`
      : `webgpu (one of ${unique.slice(0, 12).join(', ')}${unique.length > 12 ? ', ...' : ''})`;
    const text = message
      .trim()
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .join('; ');
    return new Error(
      `${where}: ${kind} error, the GPU dropped the work it was part of and later results are invalid: ${text}`,
    );
  }

  private fail(e: Error): void {
    this.failure ??= e;
  }

  /** The compute pipeline of a kernel: compiled once, then cached by its key. */
  private pipeline(kernel: Kernel): GPUComputePipeline {
    let p = this.pipelines.get(kernel.key);
    if (p) return p;
    // a compile error is reported by the error scope of this batch, labelled with the kernel's key
    const module = this.device.createShaderModule({ code: kernel.code, label: kernel.key });
    const layout = this.device.createPipelineLayout({ bindGroupLayouts: [this.layout(kernel.storage)] });
    p = this.device.createComputePipeline({ layout, compute: { module, entryPoint: 'main' }, label: kernel.key });
    this.pipelines.set(kernel.key, p);
    return p;
  }

  /** The bind group layout of the params slot (dynamic offset) followed by storage bindings of the given access. */
  private layout(storage: Access[]): GPUBindGroupLayout {
    const key = storage.join(',');
    let l = this.layouts.get(key);
    if (!l) {
      const type = (a: Access) => (a === 'read' ? ('read-only-storage' as const) : ('storage' as const));
      l = this.device.createBindGroupLayout({
        entries: [
          { binding: 0, visibility: COMPUTE_STAGE, buffer: { type: 'uniform', hasDynamicOffset: true } },
          ...storage.map((a, i) => ({ binding: i + 1, visibility: COMPUTE_STAGE, buffer: { type: type(a) } })),
        ],
      });
      this.layouts.set(key, l);
    }
    return l;
  }
}
