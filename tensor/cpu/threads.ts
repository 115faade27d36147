// The one seam between the CPU backend and the platform it runs on: Node's
// worker_threads, or a web page's Web Workers. Nothing here is imported: in
// Node the built-in modules come from process.getBuiltinModule, and where
// there is no `process` (a browser) the kernel threads are Web Workers. Both
// need SharedArrayBuffer (in a page: cross-origin isolation, i.e. the COOP and
// COEP headers); without it this file reports one core and no workers, and
// the kernels simply run on the calling thread.
//
// Two browser rules shape the code: a page's main thread may not block
// (Atomics.wait throws there), and a Web Worker starts only once the page has
// gone back to its event loop. So in a page nothing waits for a worker to
// load; a kernel call is shared with the workers that are running by then.

const nodeProcess = (globalThis as { process?: NodeJS.Process }).process;
const builtin = typeof nodeProcess?.getBuiltinModule === 'function' ? nodeProcess : undefined;
const shared = typeof SharedArrayBuffer === 'function';
const os = builtin && shared ? builtin.getBuiltinModule('node:os') : undefined;
const wt = builtin && shared ? builtin.getBuiltinModule('node:worker_threads') : undefined;
/** Web Workers over shared memory: a cross-origin isolated page (or a worker of one). */
const web = !wt && shared && typeof Worker === 'function';
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
 * compiled. Harmless where the flag is unknown or already on; a no-op in a
 * browser (which has relaxed SIMD or not).
 */
export function enableRelaxedSimd(): void {
  builtin?.getBuiltinModule('node:v8').setFlagsFromString('--experimental-wasm-relaxed-simd');
}

/** Cores usable for compute: 1 where there are no worker threads or no shared memory. */
export function cpuCount(): number {
  if (os && wt) return os.availableParallelism();
  return web ? Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1) : 1;
}

/** The CPU's model name, for benchmark reports. */
export function cpuModel(): string {
  return os?.cpus()[0]?.model ?? 'unknown CPU';
}

/** An Int32Array in shared memory, for Atomics.wait / Atomics.notify. */
export function sharedInt32(length: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(length * 4));
}

/** Whether this thread may block in Atomics.wait (not a page's main thread). */
export const canBlock = ((): boolean => {
  if (!shared) return false;
  try {
    Atomics.wait(sharedInt32(1), 0, 1, 0); // returns 'not-equal' at once where waiting is allowed
    return true;
  } catch {
    return false;
  }
})();

/**
 * Starts a Node worker thread on a TypeScript module: the one Node worker
 * bootstrap of the project (the kernel threads here, the DataLoader's image
 * threads). Node 20 ignores loader flags in a worker's execArgv, so the
 * worker boots from a small script that registers tsx's loader itself, then
 * imports the module (the same under `npx tsx` and vitest). The script
 * avoids `require` and `import` statements: workers inherit flags like
 * --input-type, so it must parse as CommonJS and as a module. `input` reaches
 * the module as workerInput(); `loaded`, if given, is set to 1 once the
 * module has loaded (2 if it failed) and notified, for a caller that waits.
 * Null where there are no worker threads (a browser: see spawnWorker).
 */
export function startWorker(url: string | URL, input?: unknown, loaded?: Int32Array) {
  if (!wt) return null;
  const boot = `
    const { workerData } = process.getBuiltinModule('node:worker_threads');
    const report = (s) => {
      if (!workerData.loaded) return;
      Atomics.store(workerData.loaded, 0, s);
      Atomics.notify(workerData.loaded, 0);
    };
    import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
      .then((tsx) => { tsx.register(); return import(${JSON.stringify(String(url))}); })
      .then(() => report(1), (e) => { report(2); throw e; });`;
  return new wt.Worker(boot, { eval: true, workerData: { input, loaded } });
}

/** Inside a Node worker started by startWorker: its `input`. */
export function workerInput<T>(): T {
  return wt?.workerData?.input as T;
}

/** A running kernel worker. `failed` turns true if it crashes (or, in a page, fails to load). */
export interface WorkerHandle {
  post(message: unknown): void;
  readonly failed: boolean;
}

/**
 * How to start one kind of worker: `node` gives the module's URL for a Node
 * worker thread (`import.meta.resolve('./x.ts')`), `web` makes the page's Web
 * Worker, written `new Worker(new URL('./x.ts', import.meta.url), { type:
 * 'module' })` in the module beside x.ts: the form a bundler (Vite) recognises
 * and bundles with the worker's imports.
 */
export interface WorkerSource {
  node: () => string;
  web: () => Worker;
}

/**
 * Starts a kernel worker; null where workers are unavailable (or, in Node,
 * the module failed to load). In Node it blocks until the module has loaded;
 * the worker is unref'd, so an idle worker never keeps the process alive. In
 * a page the worker starts later, and messages posted to it wait until then.
 */
export function spawnWorker(source: WorkerSource, timeoutMs = 30_000): WorkerHandle | null {
  try {
    if (web) {
      const worker = source.web();
      const handle = { failed: false, post: (m: unknown) => worker.postMessage(m) };
      worker.addEventListener('error', () => {
        handle.failed = true;
      });
      return handle;
    }
    const status = sharedInt32(1); // 0: loading, 1: loaded, 2: failed
    const worker = startWorker(source.node(), undefined, status);
    if (!worker) return null;
    const handle = { failed: false, post: (m: unknown) => worker.postMessage(m) };
    worker.on('error', () => {
      handle.failed = true;
    });
    worker.on('exit', () => {
      handle.failed = true;
    });
    worker.unref();
    Atomics.wait(status, 0, 0, timeoutMs);
    if (Atomics.load(status, 0) === 1) return handle;
    void worker.terminate();
  } catch {
    // no worker then: the caller stays on its own thread
  }
  return null;
}

/** Inside a worker (Node's or a page's): calls `handler` with every message the parent posts. */
export function onParentMessage<T>(handler: (message: T) => void): void {
  if (wt) wt.parentPort?.on('message', handler);
  else globalThis.addEventListener('message', (e) => handler((e as MessageEvent<T>).data));
}
