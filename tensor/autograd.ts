// Reverse-mode automatic differentiation, micrograd's algorithm on whole
// tensors: every op that needs a gradient records a GradCtx on its output
// (its inputs and a backward rule written with ordinary tensor ops).
// backward() sorts the recorded graph topologically, walks it from the loss
// back to the leaves, and sums the gradients that reach each tensor. An op
// with several outputs (split, as PyTorch's SplitBackward0) records one
// GradCtx shared by all of them, and its rule runs once, with all their
// gradients.

import { isOwnedByGraph, tidy } from './scope.ts';
import { fmt } from './shape.ts';
import type { Tensor } from './tensor.ts';

/** What an op remembers for its backward pass. */
export interface GradCtx {
  op: string;
  inputs: Tensor[];
  /** What the op made: one tensor, or several (split's pieces), each of which has this GradCtx. */
  outputs: Tensor[];
  /**
   * Given dLoss/dOutput for each output (null: the loss does not depend on
   * it), returns dLoss/dInput for each input (null: no gradient).
   */
  backward: (gradOuts: (Tensor | null)[]) => (Tensor | null)[];
  /** What the rule reads besides the inputs and the output (attention's log-sum-exp), freed with the graph. */
  saved: Tensor[];
}

let gradDisabled = 0;

// Tensors whose graph an earlier backward() freed, with the op that made them. A second backward through
// one would stop there as if it were a leaf (a silent zero gradient below it): an error instead.
const freedGraph = new WeakMap<Tensor, string>();

/** True unless we are inside noGrad(). */
export function isGradEnabled(): boolean {
  return gradDisabled === 0;
}

/**
 * Runs fn without recording gradients (evaluation, generation, optimizer
 * steps): no graph is kept, so intermediates can be freed at once. An async
 * fn keeps gradients off until its promise settles.
 */
export function noGrad<T>(fn: () => T): T {
  gradDisabled++;
  let result: T;
  try {
    result = fn();
  } catch (e) {
    gradDisabled--;
    throw e;
  }
  if (result instanceof Promise) {
    return result.finally(() => gradDisabled--) as T;
  }
  gradDisabled--;
  return result;
}

/** Attaches a backward rule (dLoss/dOut -> dLoss/dInputs) to `out` when any input needs a gradient. */
export function recordGrad(
  out: Tensor,
  op: string,
  inputs: Tensor[],
  backward: (gradOut: Tensor) => (Tensor | null)[],
  saved: Tensor[] = [],
): Tensor {
  recordGradOfOutputs([out], op, inputs, ([g]) => backward(g!), saved);
  return out;
}

/** recordGrad for an op with several outputs: one rule, given all their gradients at once. */
export function recordGradOfOutputs(
  outputs: Tensor[],
  op: string,
  inputs: Tensor[],
  backward: GradCtx['backward'],
  saved: Tensor[] = [],
): Tensor[] {
  if (isGradEnabled() && inputs.some((t) => t.requiresGrad)) {
    const ctx = { op, inputs, outputs, backward, saved };
    for (const out of outputs) {
      out.requiresGrad = true;
      out.ctx = ctx;
    }
  }
  return outputs;
}

/**
 * Topological order of the graph below `root`, inputs before outputs. An
 * explicit stack, not recursion: a 30-block transformer's graph has
 * thousands of nodes, and each node is visited once however many times it is
 * used.
 */
function topoSort(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, childrenDone] = stack.pop()!;
    if (childrenDone) {
      order.push(t);
      continue;
    }
    if (visited.has(t)) continue;
    visited.add(t);
    stack.push([t, true]);
    for (const input of t.ctx?.inputs ?? []) {
      if (input.requiresGrad && !visited.has(input)) stack.push([input, false]);
    }
  }
  return order;
}

/**
 * Backpropagates from `root` (a scalar unless `gradient` is given). Leaves
 * that require grad accumulate into `.grad` (so gradient accumulation over
 * micro-batches is just calling backward() again); the graph is released.
 */
export function backward(root: Tensor, gradient: Tensor): void {
  if (!root.requiresGrad) throw new Error('backward: the tensor does not require grad (nothing to differentiate)');
  const order = topoSort(root);
  for (const t of order) {
    const op = freedGraph.get(t);
    if (op !== undefined) {
      const what = t === root ? 'this tensor' : `the ${op} output ${fmt(t.shape)} it depends on`;
      throw new Error(
        `backward: ${what} was differentiated by an earlier backward(), which freed its graph: run the forward again`,
      );
    }
  }
  const position = new Map(order.map((t, i) => [t, i]));
  // Every tensor in `grads` is owned by this map: disposed once consumed.
  const grads = new Map<Tensor, Tensor>([[root, gradient]]);
  const take = (t: Tensor): Tensor | null => {
    const g = grads.get(t) ?? null;
    grads.delete(t);
    return g;
  };
  gradDisabled++; // backward rules are not themselves differentiated
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const ctx = t.ctx;
      if (!ctx) {
        // A leaf: the parameter owns its gradient from now on.
        const g = take(t);
        if (g) accumulateLeaf(t, g);
        continue;
      }
      // An op with several outputs waits for the last of them in this walk (the first in the order): every
      // output's gradient is complete by then, all its readers being behind us. Until then they wait in `grads`.
      if (ctx.outputs.length > 1 && i !== Math.min(...ctx.outputs.map((o) => position.get(o) ?? Infinity))) continue;
      const gradOuts = ctx.outputs.map(take);
      if (gradOuts.every((g) => !g)) continue;
      // a rule's own temporaries go as soon as it returns; only the gradients it gives are kept
      const inputGrads = tidy(() => ctx.backward(gradOuts));
      const seen = new Set<Tensor>();
      ctx.inputs.forEach((input, k) => {
        let gi = inputGrads[k];
        if (!gi) return;
        if (!input.requiresGrad) {
          // a rule computed more than was needed: free it now, unless it is shared
          if (!gradOuts.includes(gi) && !inputGrads.some((other, j) => j !== k && other === gi)) gi.dispose();
          return;
        }
        // A rule may hand the same tensor to two inputs (add) or pass g through:
        // give each owner its own view so disposing one leaves the other intact.
        if (gradOuts.includes(gi) || seen.has(gi)) gi = gi.view(gi.shape);
        seen.add(gi);
        const prev = grads.get(input);
        if (prev) {
          grads.set(input, prev.add(gi));
          prev.dispose();
          gi.dispose();
        } else {
          grads.set(input, gi);
        }
      });
      // release the graph: saved activations can be freed
      for (const out of ctx.outputs) {
        out.ctx = null;
        freedGraph.set(out, ctx.op);
      }
      for (const g of gradOuts) g?.dispose();
      // every op that read the outputs is behind us (they come later in the order): an
      // intermediate of a tidyForward() pass can go now, with what only its rule read
      for (const out of ctx.outputs) if (isOwnedByGraph(out)) out.dispose();
      for (const s of ctx.saved) if (isOwnedByGraph(s)) s.dispose();
    }
  } finally {
    gradDisabled--;
  }
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  const buffer = leaf.gradBuffer;
  if (buffer) {
    // the optimizer keeps this gradient beside the others (nn/optim.ts): written into its place
    const sum = leaf.grad ? leaf.grad.add(g) : g;
    buffer.backend.copyInto(buffer.view(), sum.view());
    if (sum !== g) sum.dispose();
    if (leaf.grad !== buffer) leaf.grad?.dispose();
    g.dispose();
    leaf.grad = buffer;
  } else if (leaf.grad) {
    const sum = leaf.grad.add(g);
    leaf.grad.dispose();
    g.dispose();
    leaf.grad = sum.keep();
  } else {
    leaf.grad = g.contiguous().keep();
    if (leaf.grad !== g) g.dispose();
  }
}
