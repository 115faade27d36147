// What is alive right now: the numbers a training loop watches to prove it
// does not leak (they must come back to the same values after every step).

import { allBackends } from './device.ts';
import { liveTensorCount } from './scope.ts';

/** Live tensor objects, and the bytes held by every backend's live buffers. */
export function memory(): { numTensors: number; numBytes: number } {
  const numBytes = allBackends().reduce((sum, b) => sum + b.liveBytes(), 0);
  return { numTensors: liveTensorCount(), numBytes };
}
