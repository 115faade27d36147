// Many small tensors as a few large ones. An optimizer step touches every
// parameter and its gradient, and on a GPU each kernel call costs host time
// (a dispatch from Node, tens of microseconds), so doing it once per tensor
// costs more than the arithmetic: nanoVLM-222M has 422 parameter tensors.
// PyTorch groups them with pointer tables ("multi-tensor apply"); a WebGPU
// kernel binds buffers, not lists of them. So the optimizer lays parameters
// out back to back in a few large buffers (nn/optim.ts), and these helpers
// see that: consecutive tensors that sit one after the other in one storage
// become one 1-d view of it, which one kernel call covers. Tensors that do
// not line up (the CPU's, which each have their own buffer) stay one each.

import { alias } from './ops.ts';
import { isContiguous } from './shape.ts';
import type { Tensor } from './tensor.ts';

/**
 * Splits parallel lists of tensors (lists[k][i] belong together: a
 * parameter, its gradient, its moments) into runs of consecutive positions
 * where every list's tensors are contiguous and each starts where the one
 * before it ends, in the same storage. Returns, per run, one view per list:
 * 1-d over the run, or for a run of one, the tensor's own view (fresh
 * tensors, no gradient: dispose them, or make them in a tidy()).
 */
export function contiguousRuns(lists: Tensor[][]): Tensor[][] {
  const runs: Tensor[][] = [];
  const n = lists[0]?.length ?? 0;
  const dense = (t: Tensor) => isContiguous(t.shape, t.strides);
  const follows = (a: Tensor, b: Tensor) =>
    dense(a) && dense(b) && b.storage === a.storage && b.offset === a.offset + a.size;
  let start = 0;
  for (let i = 1; i <= n; i++) {
    if (i < n && lists.every((l) => follows(l[i - 1], l[i]))) continue;
    if (i - start === 1) runs.push(lists.map((l) => l[start].detach()));
    else {
      const length = lists[0].slice(start, i).reduce((sum, t) => sum + t.size, 0);
      runs.push(lists.map((l) => alias(l[start], [length], [1], l[start].offset)));
    }
    start = i;
  }
  return runs;
}
