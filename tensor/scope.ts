// Memory management without destructors (tfjs's model). JavaScript frees
// memory when the garbage collector decides to, which is too late for GPU
// buffers in a training loop. So every tensor created inside tidy(fn) is
// disposed when fn returns, except what fn returns and what was keep()'d
// (parameters, optimizer state, gradients). A training step wrapped in tidy
// therefore ends with exactly the tensors it started with.

import type { Tensor } from './tensor.ts';

const scopes: Set<Tensor>[] = [];
let liveTensors = 0;
// Intermediates of a tidyForward() pass: backward() disposes each once it is done with it.
const ownedByGraph = new WeakSet<Tensor>();

/** Called by the Tensor constructor: counts the tensor and files it in the current scope. */
export function track(t: Tensor): void {
  liveTensors++;
  scopes[scopes.length - 1]?.add(t);
}

/** Called by Tensor.dispose(). */
export function untrack(): void {
  liveTensors--;
}

/** Number of tensors created and not yet disposed. */
export function liveTensorCount(): number {
  return liveTensors;
}

/** Collects the tensors in a returned value (a tensor, an array, or a plain object of them). */
function tensorsIn(value: unknown, out: Set<Tensor>): Set<Tensor> {
  if (value && typeof value === 'object') {
    if ('storage' in value && 'shape' in value && 'dispose' in value) out.add(value as Tensor);
    else if (Array.isArray(value)) value.forEach((v) => tensorsIn(v, out));
    else if (Object.getPrototypeOf(value) === Object.prototype) Object.values(value).forEach((v) => tensorsIn(v, out));
  }
  return out;
}

/**
 * Runs fn in a scope of its own: the tensors it made, and those it returned.
 * Nothing escapes a failed fn: what it made is freed, and the error rethrown.
 */
function runInScope<T>(name: string, fn: () => T): { result: T; made: Set<Tensor>; returned: Set<Tensor> } {
  const made = new Set<Tensor>();
  scopes.push(made);
  try {
    const result = fn();
    if (result instanceof Promise) throw new Error(`${name}: fn must be synchronous (it returned a Promise)`);
    return { result, made, returned: tensorsIn(result, new Set()) };
  } catch (e) {
    for (const t of made) if (!t.kept) t.dispose();
    throw e;
  } finally {
    scopes.pop();
  }
}

/**
 * Runs fn and disposes every tensor it created, except the ones it returns
 * (which move to the enclosing scope) and the ones marked with keep().
 * fn must be synchronous: an await inside would let tensors escape the scope.
 */
export function tidy<T>(fn: () => T): T {
  const { result, made, returned } = runInScope('tidy', fn);
  for (const t of made) if (!returned.has(t) && !t.kept) t.dispose();
  for (const t of returned) scopes[scopes.length - 1]?.add(t);
  return result;
}

/**
 * tidy() for the forward pass of a training step. The tensors fn creates and
 * does not return are not disposed when it returns: the autograd graph still
 * needs them. They are handed to it instead, and backward() disposes each one
 * as soon as the gradients below it are computed, the way PyTorch frees a
 * graph's saved activations. So the memory of a step peaks at about the
 * activations or the gradients, not both: what makes nanoVLM-222M train in
 * the CPU backend's 4 GiB. Tensors outside the graph that backward does not
 * read (the activations of a frozen part that feeds nothing trainable) are
 * disposed when fn returns. Whatever backward never reaches (no gradient
 * flows through it, or backward is not called) goes with the enclosing tidy().
 *
 *   const loss = tidy(() => {
 *     const { loss } = tidyForward(() => model.forward(ids, image, mask, targets));
 *     loss!.backward();
 *     return loss!;
 *   });
 *
 * Only what fn returns may be read after backward.
 */
export function tidyForward<T>(fn: () => T): T {
  const { result, made, returned } = runInScope('tidyForward', fn);
  // what backward reads: every backward rule reads its op's inputs, its output and what it saved
  const read = new Set<Tensor>();
  const saved = new Set<Tensor>();
  for (const t of made) for (const input of t.ctx?.inputs ?? []) read.add(input);
  for (const t of made) for (const s of t.ctx?.saved ?? []) saved.add(s);
  for (const t of made) {
    if (t.kept) continue;
    if (returned.has(t) || read.has(t) || saved.has(t) || t.ctx) {
      // graph nodes and saved tensors go with backward; inputs it reads that are not nodes (masks, tables)
      // stay for the enclosing tidy
      if ((t.ctx || saved.has(t)) && !returned.has(t)) ownedByGraph.add(t);
      scopes[scopes.length - 1]?.add(t);
    } else {
      t.dispose(); // outside the graph and read by none of it (a frozen ViT's activations, say): garbage already
    }
  }
  return result;
}

/** True for an intermediate of a tidyForward() pass: backward() disposes it once it is done with it. */
export function isOwnedByGraph(t: Tensor): boolean {
  return ownedByGraph.has(t);
}
