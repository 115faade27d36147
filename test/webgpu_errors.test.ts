// Device errors are never silent. Dawn reports validation errors,
// out-of-memory and device loss asynchronously and drops the whole submit
// that contained a bad command; the backend turns each into one error that
// names the op, thrown by the next read and by every op after it. Each kind
// is provoked here for real: a kernel that does not compile, a binding past
// the end of its buffer, an allocation under a memory limit (in a child
// process), and a device destroyed behind the backend's back.

import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { closeWebGPU, initWebGPU, tensor } from '../tensor/index.ts';
import type { WebGPUBackend } from '../tensor/webgpu/backend.ts';
import { fillKernel } from '../tensor/webgpu/kernels/elementwise.ts';
import { describeWebGPU } from './webgpu_helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const lib = fileURLToPath(new URL('../tensor/index.ts', import.meta.url));
const dawn = fileURLToPath(new URL('../node/dawn.ts', import.meta.url));

/** A fresh device for a test that breaks it. */
async function fresh(): Promise<WebGPUBackend> {
  closeWebGPU();
  return initWebGPU({ quiet: true });
}

describeWebGPU('webgpu device errors', () => {
  it('a kernel that does not compile: the next read fails naming the op, and so does every later op', async () => {
    const b = await fresh();
    const x = await tensor([1, 2, 3]).to('webgpu');
    const out = b.rec.newStorage('float32', 4);
    const broken = { key: 'broken:1', code: 'fn main( {', workgroupSize: 1, storage: ['read_write' as const] };
    b.rec.run('broken', broken, [], [{ storage: out, offset: 0, size: 16 }], [1, 1, 1]);
    const y = x.add(1); // recorded in the same submit: dropped with it
    await expect(y.data()).rejects.toThrow(/^webgpu broken: validation error, .*later results are invalid: .*WGSL/);
    expect(() => x.mul(2)).toThrow(/^webgpu broken: validation error/);
    await expect(x.data()).rejects.toThrow(/^webgpu broken: validation error/);
    await fresh(); // closing and opening again gives a working device
    expect(Array.from(await (await tensor([1, 2]).to('webgpu')).add(1).data())).toEqual([2, 3]);
  });

  it('a binding past the end of its buffer (a validation error in a bind group) names the op', async () => {
    const b = await fresh();
    const out = b.rec.newStorage('float32', 4);
    b.rec.run(
      'fill',
      fillKernel('float32'),
      [4, 0],
      [{ storage: out, offset: 0, size: out.buffer.size + 256 }],
      [1, 1, 1],
    );
    await expect(b.sync()).rejects.toThrow(/^webgpu fill: validation error, .*binding/i);
  });

  it('too many workgroups for one dispatch is refused before it reaches the GPU', async () => {
    const b = await fresh();
    const out = b.rec.newStorage('float32', 4);
    const args = [{ storage: out, offset: 0, size: 256 }];
    expect(() => b.rec.run('fill', fillKernel('float32'), [4, 0], args, [70000, 1, 1])).toThrow(
      /^webgpu fill: 70000 x 1 x 1 workgroups, over/,
    );
    b.rec.release(out);
  });

  it('device loss: a pending read rejects instead of hanging, later ops throw, reopening works', async () => {
    const b = await fresh();
    const x = await tensor([1, 2, 3]).to('webgpu');
    const pending = x.mul(2).data();
    b.device.destroy(); // what a driver reset or a removed GPU looks like from here
    await expect(pending).rejects.toThrow(/^webgpu: the device was lost \(destroyed\)/);
    expect(() => x.add(1)).toThrow(/^webgpu: the device was lost/);
    await fresh();
    expect(Array.from(await (await tensor([4]).to('webgpu')).add(1).data())).toEqual([5]);
  });

  it('out of memory (software adapters: memory capped by ulimit -d in a child process) names the op', async (ctx) => {
    const b = await fresh();
    // a GPU's own memory is not capped by ulimit; only adapters that allocate host memory can be run out of it here
    if (!b.adapter.software) ctx.skip();
    // lavapipe (llvmpipe's Vulkan driver) allocates memory that ulimit -d does not charge: 64 x 64 MiB fit under
    // the 2 GB cap there (measured), so it cannot be run out of memory this way; llvmpipe's GLES and SwiftShader can
    if (b.adapter.backend === 'vulkan' && /llvmpipe/.test(b.adapter.name)) ctx.skip();
    const code = `
      const T = await import(${JSON.stringify(lib)});
      (await import(${JSON.stringify(dawn)})).useDawn();
      const b = await T.initWebGPU({ quiet: true });
      const keep = [];
      try {
        // 64 MiB at a time (zeros are cleared lazily: only the buffer is created), each followed by a read
        for (let i = 0; i < 64; i++) {
          keep.push(T.zeros([1 << 24], { device: 'webgpu' }));
          await (await T.tensor([1]).to('webgpu')).add(1).data();
        }
        console.log('no error after', keep.length);
      } catch (e) { console.log('error:', e.message); }
      process.exit(0);`;
    const r = spawnSync(
      'bash',
      ['-c', `ulimit -d 2000000 && exec "${process.execPath}" --import tsx --input-type=module -e "$CODE"`],
      {
        cwd: root,
        env: { ...process.env, CODE: code },
        encoding: 'utf8',
        timeout: 90_000,
      },
    );
    expect(r.stdout, r.stderr).toMatch(
      /error: webgpu (alloc|add|fill|zeros): out-of-memory error, .*later results are invalid/,
    );
  });
});
