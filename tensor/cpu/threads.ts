// The one seam between the CPU backend and Node-only APIs (worker_threads,
// os, v8). Nothing here is imported at load time: the built-in modules are
// fetched with process.getBuiltinModule, so in a browser (no `process`) or
// without SharedArrayBuffer this file reports a single core and no workers,
// and the kernels simply run on the calling thread.

import type { Worker } from 'node:worker_threads';

const node = typeof process !== 'undefined' && typeof process.getBuiltinModule === 'function'
  && typeof SharedArrayBuffer === 'function';
const os = node ? process.getBuiltinModule('node:os') : undefined;
const wt = node ? process.getBuiltinModule('node:worker_threads') : undefined;
let threads = Math.min(2, cpuCount());

/** Sets how many threads large CPU kernels use (the caller's plus n - 1 workers). */
export function setCpuThreads(n: number): void {
  threads = Math.max(1, Math.floor(n));
}

/** How many threads large CPU kernels use; defaults to min(2, available cores). */
export function getCpuThreads(): number {
  return threads;
}

/**
 * Turns on WebAssembly relaxed SIMD (fused multiply-add) where the engine has
 * it behind a flag (Node 20's V8); it must happen before the module is
 * compiled. Harmless where the flag is unknown or already on.
 */
export function enableRelaxedSimd(): void {
  if (typeof process !== 'undefined' && typeof process.getBuiltinModule === 'function') {
    process.getBuiltinModule('node:v8').setFlagsFromString('--experimental-wasm-relaxed-simd');
  }
}

/** Cores usable for compute: 1 where there are no worker threads or no shared memory. */
export function cpuCount(): number {
  return os && wt ? os.availableParallelism() : 1;
}

/** The CPU's model name, for benchmark reports. */
export function cpuModel(): string {
  return os?.cpus()[0]?.model ?? 'unknown CPU';
}

/** An Int32Array in shared memory, for Atomics.wait / Atomics.notify. */
export function sharedInt32(length: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(length * 4));
}

/**
 * Starts a worker thread on a TypeScript module: the one worker bootstrap of
 * the project (the kernel threads here, the DataLoader's image threads).
 * Node 20 ignores loader flags in a worker's execArgv, so the worker boots
 * from a small script that registers tsx's loader itself, then imports the
 * module (the same under `npx tsx` and vitest). The script avoids `require`
 * and `import` statements: workers inherit flags like --input-type, so it
 * must parse as CommonJS and as a module. `input` reaches the module as
 * workerInput(); `loaded`, if given, is set to 1 once the module has loaded
 * (2 if it failed) and notified, for a caller that waits. Null where there
 * are no worker threads.
 */
export function startWorker(url: URL, input?: unknown, loaded?: Int32Array): Worker | null {
  if (!wt) return null;
  const boot = `
    const { workerData } = process.getBuiltinModule('node:worker_threads');
    const report = (s) => { if (workerData.loaded) { Atomics.store(workerData.loaded, 0, s); Atomics.notify(workerData.loaded, 0); } };
    import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
      .then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); })
      .then(() => report(1), (e) => { report(2); throw e; });`;
  return new wt.Worker(boot, { eval: true, workerData: { input, loaded } });
}

/** Inside a worker started by startWorker: its `input`. */
export function workerInput<T>(): T {
  return wt?.workerData?.input as T;
}

/** A running kernel worker. `failed` turns true if it crashes. */
export interface WorkerHandle {
  post(message: unknown): void;
  readonly failed: boolean;
}

/**
 * Starts a worker on a TypeScript module and blocks until the module has
 * loaded; null where workers are unavailable or the module failed to load.
 * The worker is unref'd: an idle worker never keeps the process alive.
 */
export function spawnWorker(url: URL, timeoutMs = 30_000): WorkerHandle | null {
  try {
    const status = sharedInt32(1); // 0: loading, 1: loaded, 2: failed
    const worker = startWorker(url, undefined, status);
    if (!worker) return null;
    const handle = { failed: false, post: (m: unknown) => worker.postMessage(m) };
    worker.on('error', () => { handle.failed = true; });
    worker.on('exit', () => { handle.failed = true; });
    worker.unref();
    Atomics.wait(status, 0, 0, timeoutMs);
    if (Atomics.load(status, 0) === 1) return handle;
    void worker.terminate();
  } catch {
    // no worker then: the caller stays on its own thread
  }
  return null;
}

/** Inside a worker: calls `handler` with every message the parent posts. */
export function onParentMessage<T>(handler: (message: T) => void): void {
  wt?.parentPort?.on('message', handler);
}
