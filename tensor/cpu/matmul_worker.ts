// A matmul worker thread: it computes the band of C it is handed, straight
// from shared memory, then counts itself off the shared busy counter and wakes
// the caller's thread, which is blocked in Atomics.wait.

import { gemmF32, type GemmJob } from './matmul.ts';
import { onParentMessage } from './threads.ts';

onParentMessage(({ sync, job }: { sync: Int32Array; job: GemmJob }) => {
  try {
    gemmF32(job);
  } catch {
    Atomics.store(sync, 1, 1);
  }
  Atomics.sub(sync, 0, 1);
  Atomics.notify(sync, 0);
});
