// The CPU backend where the platform lacks what the fast path needs: no
// WebAssembly at all (node --jitless), WebAssembly without SIMD, and no
// SharedArrayBuffer (no threads, and a private memory whose buffer is
// detached when it grows); and on a web page's platform (no `process`, Web
// Workers). Each runs in a fresh process; the results must be the same, and
// the fallback must be announced once.

import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Tensors made before a large allocation (which grows the memory) must still
// read and compute correctly after it.
const SCRIPT = `
  const { tensor, softmax, zeros } = await import('./tensor/index.ts');
  const { cpuKernelInfo } = await import('./tensor/cpu/wasm/kernels.ts');
  const a = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
  const big = zeros([64, 1 << 20]); // 256 MiB: the memory must grow
  const c = a.matmul(a.transpose(0, 1)).add(1).dataSync();
  const s = softmax(a, -1).sum(-1).dataSync();
  big.dispose();
  const rounded = Array.from(s, (x) => Math.round(x * 1e6) / 1e6);
  console.log(JSON.stringify({ info: cpuKernelInfo(), c: Array.from(c), s: rounded }));`;

/** Runs SCRIPT under node with `flags`, after `prelude`: its result, and the lines it warned with. */
function runScript(
  flags: string[],
  prelude = '',
): { info: Record<string, unknown>; c: number[]; s: number[]; warnings: string[] } {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const r = spawnSync(process.execPath, [...flags, '--import', 'tsx', '--input-type=module', '-e', prelude + SCRIPT], {
    cwd: root,
    timeout: 60_000,
    encoding: 'utf8',
  });
  expect(r.status, r.stderr).toBe(0);
  const warnings = r.stderr.split('\n').filter((line) => line.startsWith('cpu '));
  return { ...JSON.parse(r.stdout.trim().split('\n').pop()!), warnings };
}

const EXPECTED = { c: [15, 33, 33, 78], s: [1, 1] };

describe('fallbacks', () => {
  it('without WebAssembly: TypeScript kernels on plain typed arrays, announced once', () => {
    const r = runScript(['--jitless']);
    expect(r.info).toMatchObject({ kernels: 'ts', simd: false, threads: 1 });
    expect({ c: r.c, s: r.s }).toEqual(EXPECTED);
    expect(r.warnings).toEqual(['cpu backend: WebAssembly is not available, using the TypeScript kernels']);
  });

  it('without WebAssembly SIMD: TypeScript kernels on the shared memory, announced once', () => {
    const prelude = 'WebAssembly.validate = () => false;';
    const r = runScript([], prelude);
    expect(r.info).toMatchObject({ kernels: 'ts', simd: false, sharedMemory: true });
    expect({ c: r.c, s: r.s }).toEqual(EXPECTED);
    expect(r.warnings).toEqual(['cpu backend: WebAssembly SIMD is not available, using the TypeScript kernels']);
  });

  it('without SharedArrayBuffer: wasm kernels on one thread over a private memory that grows', () => {
    const r = runScript([], 'delete globalThis.SharedArrayBuffer;');
    expect(r.info).toMatchObject({ kernels: 'wasm', simd: true, sharedMemory: false, threads: 1 });
    expect({ c: r.c, s: r.s }).toEqual(EXPECTED);
    expect(r.warnings).toEqual([]);
  });
});

// A web page's platform, imitated in Node: no \`process\`, a Web Worker class
// (a module worker that starts only after the page's code has returned to the
// event loop, and gets messages through addEventListener), and a main thread
// on which Atomics.wait throws. Kernel calls made before the worker is up run
// on the calling thread alone; later ones are shared.
const PAGE = `
  const wt = process.getBuiltinModule('node:worker_threads');
  const tsx = import.meta.resolve('tsx/esm/api');
  globalThis.navigator = { hardwareConcurrency: 2 };
  let workers = 0;
  globalThis.Worker = class {
    constructor(url, options) {
      if (options?.type !== 'module') throw new Error('not a module worker');
      const boot = \`
        const { parentPort } = process.getBuiltinModule('node:worker_threads');
        import(\${JSON.stringify(tsx)}).then((tsx) => {
          tsx.register();
          globalThis.addEventListener = (type, fn) => parentPort.on(type, (data) => fn({ data }));
          delete globalThis.process;
          return import(\${JSON.stringify(url.href)});
        });\`;
      this.queue = [];
      setTimeout(() => {
        workers++;
        this.worker = new wt.Worker(boot, { eval: true });
        this.worker.unref();
        for (const m of this.queue) this.worker.postMessage(m);
      }, 100);
    }
    postMessage(m) { if (this.worker) this.worker.postMessage(m); else this.queue.push(m); }
    addEventListener() {}
  };
  Atomics.wait = () => { throw new TypeError('Atomics.wait cannot be called in this context'); };
  delete globalThis.process;
  const { ones } = await import('./tensor/creation.ts');
  const { cpuKernelInfo, wasmStats } = await import('./tensor/cpu/wasm/kernels.ts');
  const product = () => ones([300, 200]).matmul(ones([200, 100])).add(1).sum().dataSync()[0];
  const before = product(); // the worker has not started yet
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const after = [product(), product(), product()];
  console.log(JSON.stringify({ info: cpuKernelInfo(), parallel: wasmStats.parallelCalls, before, after, workers }));`;

describe('a web page', () => {
  it('without process: wasm kernels, Web Workers that join once started, a main thread that never waits', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', PAGE], {
      cwd: root,
      timeout: 60_000,
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.info).toMatchObject({ kernels: 'wasm', simd: true, sharedMemory: true, threads: 2 });
    expect(out.parallel).toBe(4); // each matmul was split into tasks
    expect({ before: out.before, after: out.after, workers: out.workers }).toEqual({
      before: 6030000,
      after: [6030000, 6030000, 6030000],
      workers: 1,
    });
    expect(r.stderr).toBe('');
  });
});
