// The CPU tensor memory: size classes, reuse of released blocks, growth that
// leaves no stale views, and the live-bytes count that memory() reports.

import { describe, expect, it } from 'vitest';
import { getBackend, memory as liveMemory, tensor, tidy, zeros } from '../tensor/index.ts';
import { CpuStorage, compactHeap, free, heapStats, malloc, memory, sizeClass } from '../tensor/cpu/heap.ts';

describe('size classes', () => {
  it('are multiples of 64 bytes, at most 25% above the request, and fixed points of themselves', () => {
    for (const bytes of [1, 4, 63, 64, 65, 500, 512, 513, 4096, 4097, 1e5, 3e6 + 1]) {
      const size = sizeClass(bytes);
      expect(size % 64).toBe(0);
      expect(size).toBeGreaterThanOrEqual(bytes);
      expect(size).toBeLessThanOrEqual(Math.max(64, bytes * 1.25 + 64));
      expect(sizeClass(size)).toBe(size);
    }
  });
});

describe('allocator', () => {
  it('hands a released block to the next request of its class', () => {
    const a = malloc(1000);
    free(a, 1000);
    expect(malloc(1001)).toBe(a); // same class
    free(a, 1001);
  });

  it('keeps blocks 64-byte aligned', () => {
    const ptrs = [3, 100, 4096, 70000].map((n) => malloc(n));
    expect(ptrs.every((p) => p > 0 && p % 64 === 0)).toBe(true);
    [3, 100, 4096, 70000].forEach((n, i) => free(ptrs[i], n));
  });

  it('grows the memory, and storages made before see their data through fresh views', () => {
    const s = CpuStorage.create('float32', 1000, true);
    s.data.set([1, 2, 3]);
    const before = s.data;
    const grows = heapStats().grows;
    const big = CpuStorage.create('float32', (memory!.buffer.byteLength / 4) * 2, false); // more than the memory has
    expect(heapStats().grows).toBe(grows + 1);
    expect(s.data).not.toBe(before); // re-made over the new buffer
    expect(s.data.buffer).toBe(memory!.buffer);
    expect(Array.from(s.data.subarray(0, 4))).toEqual([1, 2, 3, 0]);
    big.data[big.length - 1] = 7; // the whole new block is addressable
    expect(big.data[big.length - 1]).toBe(7);
    s.free();
    big.free();
  });

  it('alloc() zero-fills a reused block; float64 lives outside the memory', () => {
    const backend = getBackend('cpu');
    const x = backend.alloc('float32', 333);
    (x as CpuStorage).data.fill(5);
    backend.release(x);
    const y = backend.alloc('float32', 333) as CpuStorage;
    expect(y.ptr).toBe((x as CpuStorage).ptr);
    expect(y.data.every((v) => v === 0)).toBe(true);
    backend.release(y);
    const d = backend.alloc('float64', 10) as CpuStorage;
    expect(d.ptr).toBe(-1);
    expect(d.data).toBeInstanceOf(Float64Array);
    backend.release(d);
  });
});

describe('live bytes', () => {
  it('count the requested bytes of live storages and return to the same value after tidy()', () => {
    const before = liveMemory().numBytes;
    const t = tensor(new Float32Array(100), { shape: [100] });
    expect(liveMemory().numBytes).toBe(before + 400);
    t.dispose();
    expect(liveMemory().numBytes).toBe(before);
    for (let step = 0; step < 3; step++) {
      tidy(
        () =>
          void zeros([64, 65])
            .add(1)
            .matmul(zeros([65, 3]))
            .softmax(-1)
            .sum(),
      );
      expect(liveMemory().numBytes).toBe(before);
    }
  });

  it('a training-like loop allocates nothing new after its first step', () => {
    const w = zeros([48, 48]).keep();
    const step = () => tidy(() => w.matmul(w).gelu().add(w).mul(0.5).sum().dispose());
    step();
    const fresh = heapStats().fresh;
    for (let i = 0; i < 5; i++) step();
    expect(heapStats().fresh).toBe(fresh);
    w.dispose();
  });

  it('merges free blocks of other sizes when compacted, and gives the top back', () => {
    // four neighbouring 64 KiB blocks, freed, then compacted: one 256 KiB run (or the top lowered)
    const blocks = [0, 1, 2, 3].map(() => malloc(65536));
    for (let i = 1; i < 4; i++) expect(blocks[i]).toBe(blocks[i - 1] + 65536);
    const guard = malloc(64); // keeps the run from touching the top
    for (const p of blocks) free(p, 65536);
    compactHeap();
    const before = heapStats();
    const big = malloc(200_000); // size class 229376: no free list has it, a merged run does
    expect(heapStats()).toMatchObject({
      carved: before.carved + 1,
      fresh: before.fresh,
      reservedBytes: before.reservedBytes,
    });
    expect(big).toBeLessThanOrEqual(blocks[0]);
    free(big, 200_000);
    free(guard, 64);
    // a block made at the top, freed: compaction gives its bytes back to the top
    const reserved = heapStats().reservedBytes;
    const top = malloc(1 << 26);
    expect(top).toBe(reserved);
    free(top, 1 << 26);
    compactHeap();
    expect(heapStats().reservedBytes).toBeLessThanOrEqual(reserved);
  });
});
