// Worker threads for the WebAssembly kernels. Each worker instantiates the
// same compiled module over the same shared memory, so running a kernel is
// just "call export #f with these numbers": no data is copied and no message
// is posted. A call is a list of tasks (bands of rows of one kernel) written
// into shared memory; the caller and the workers take tasks one at a time
// from a shared counter until none are left, then the caller waits for the
// last ones to finish. Taking tasks as they come, rather than a fixed share
// each, keeps a call from waiting on a worker the OS has paused (the cores of
// a shared machine are often busy with something else).
//
// Waking a thread that sleeps in Atomics.wait took about 90 us on the 2-core
// VM this was tuned on, longer than most kernels, so both sides spin a
// little before they sleep: an idle worker watches for the next call for a
// moment (a training step's kernels often come back to back), and the caller
// watches for the last tasks to finish. The worker's spin is short: when the
// other core is busy with another program (often, on a shared machine), a
// spinning thread only takes time from it and from us. Only large kernels
// are split at all (see kernels.ts).

import { blockGemmImport } from '../blas.ts';
import { canBlock, sharedInt32, spawnWorker, type WorkerHandle } from '../threads.ts';

/** Most arguments a kernel may take. */
const MAX_ARGS = 24;
/** Most tasks in one call (the task index has 12 bits of the NEXT word; index 4095 marks a closed call). */
const MAX_TASKS = 4095;
const CLOSED = 0xfff;
// The control block, int32s:
const NEXT = 0; // (generation << 12) | index of the next task to take
const DONE = 1; // tasks finished in this call
const FAILED = 2; // set when a task threw
const COUNT = 3; // tasks in this call
const FN = 4; // the export to call
const NARGS = 5; // arguments per task
const GEN = 6; // the call's generation: workers wake when it changes
const WORKER_SPIN_MS = 0.05; // how long an idle worker watches for the next call before it sleeps
const CALLER_SPIN_MS = 2; // how long the caller watches for the last tasks before it sleeps

/** What a worker needs to start: the module, the memory, the control block and the task table. */
export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  ctl: Int32Array;
  args: Float64Array;
  /** This worker's index, from 1. */
  thread: number;
}

const workers: WorkerHandle[] = [];
let ctl: Int32Array = new Int32Array(16); // shared once workers start; in a worker, the caller's
let args: Float64Array = new Float64Array(0);
let generation = 0;
let broken = false;

/** Warns once, then stays on one thread for good. */
function giveUp(why: string): false {
  if (!broken) console.warn(`cpu kernels: using one thread (${why})`);
  broken = true;
  return false;
}

/** Makes sure n - 1 workers are up (they start on first need, then stay); false if they cannot. */
export function ensureWorkers(n: number, module: WebAssembly.Module, memory: WebAssembly.Memory): boolean {
  if (broken) return false;
  for (const w of workers) if (w.failed) return giveUp('a worker stopped');
  if (!args.length) {
    ctl = sharedInt32(16);
    args = new Float64Array(new SharedArrayBuffer(MAX_TASKS * MAX_ARGS * 8));
  }
  while (workers.length < n - 1) {
    const w = spawnWorker({
      node: () => import.meta.resolve('./worker.ts'),
      web: () => new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' }),
    });
    if (!w) return giveUp('could not start a worker thread');
    w.post({ module, memory, ctl, args, thread: workers.length + 1 } satisfies WorkerInit);
    workers.push(w);
  }
  return true;
}

/** Spins until ctl[i] is no longer `value`, for at most `ms`; true if it changed. */
function spinWhile(i: number, value: number, ms: number): boolean {
  const end = performance.now() + ms;
  do {
    for (let k = 0; k < 100; k++) if (Atomics.load(ctl, i) !== value) return true;
  } while (performance.now() < end);
  return false;
}

/** Takes the next task of call `gen`: its index, or -1 when none is left (or the call is over). */
function take(gen: number, count: number): number {
  for (;;) {
    const next = Atomics.load(ctl, NEXT);
    if (next >>> 12 !== gen || (next & 0xfff) >= count) return -1;
    if (Atomics.compareExchange(ctl, NEXT, next, next + 1) === next) return next & 0xfff;
  }
}

/** Runs the tasks of call `gen` with `fn` until none are left to take; `thread` is passed as a last argument. */
function work(gen: number, count: number, fn: (...a: number[]) => unknown, nargs: number, thread: number): void {
  for (let t; (t = take(gen, count)) >= 0;) {
    try {
      fn(...args.subarray(t * MAX_ARGS, t * MAX_ARGS + nargs), thread);
    } catch {
      Atomics.store(ctl, FAILED, 1);
    }
    if (Atomics.add(ctl, DONE, 1) === count - 1) Atomics.notify(ctl, DONE);
  }
}

/**
 * Runs export `fn` (`own` on this thread) once per task, spread over this
 * thread and the workers; returns when all are done. Each call gets the index
 * of the thread running it as one more argument (0 here, 1.. on workers), so
 * a kernel can keep per-thread scratch.
 */
export function runParallel(fn: number, own: (...a: number[]) => unknown, tasks: number[][]): void {
  startParallel(fn, tasks);
  work(generation, tasks.length, own, tasks[0].length, 0);
  waitParallel();
}

/**
 * Opens a call of export `fn` for the workers alone: this thread goes on
 * with other work (AdamW copies the next chunk of moments meanwhile), then
 * waits for it with waitParallel().
 */
export function startParallel(fn: number, tasks: number[][]): void {
  const count = tasks.length;
  if (count > MAX_TASKS) throw new Error(`cpu kernels: ${count} tasks in one call, at most ${MAX_TASKS}`);
  tasks.forEach((task, t) => args.set(task, t * MAX_ARGS));
  generation = (generation + 1) & 0x7ffff;
  ctl[FN] = fn;
  ctl[NARGS] = tasks[0].length;
  ctl[COUNT] = count;
  ctl[DONE] = 0;
  ctl[FAILED] = 0;
  Atomics.store(ctl, NEXT, generation << 12); // opens the call: tasks can be taken from here on
  Atomics.store(ctl, GEN, generation);
  Atomics.notify(ctl, GEN);
}

/** Waits until every task of the open call is done, and closes it. */
export function waitParallel(): void {
  const count = ctl[COUNT];
  for (let done; (done = Atomics.load(ctl, DONE)) !== count;) {
    // (a page's main thread may not sleep: it spins until the workers are done)
    if (!spinWhile(DONE, done, CALLER_SPIN_MS) && canBlock) Atomics.wait(ctl, DONE, done);
  }
  // Close the call before the next one changes COUNT: a worker that read this
  // call's generation late must not take a task of the next call's count.
  Atomics.store(ctl, NEXT, (generation << 12) | CLOSED);
  if (Atomics.load(ctl, FAILED)) throw new Error('cpu kernels: a kernel failed on a worker thread');
}

/** The worker's side: serve calls forever (runs in worker.ts). */
export function serve(init: WorkerInit): never {
  // the host function the attention kernels import: OpenBLAS, loaded by this thread too (../blas.ts); it reads
  // `exports` only when a kernel calls it, after the instance exists
  const gemm = blockGemmImport(init.memory, () => exports.gemm_block as (...a: number[]) => unknown);
  const env = { memory: init.memory, gemm };
  const exports = new WebAssembly.Instance(init.module, { env }).exports;
  const fns = WebAssembly.Module.exports(init.module).map((e) => exports[e.name] as (...a: number[]) => unknown);
  [ctl, args] = [init.ctl, init.args];
  const thread = init.thread;
  for (let seen = 0; ;) {
    if (!spinWhile(GEN, seen, WORKER_SPIN_MS)) Atomics.wait(ctl, GEN, seen); // until the next call
    seen = Atomics.load(ctl, GEN);
    work(seen, ctl[COUNT], fns[ctl[FN]], ctl[NARGS], thread);
  }
}
