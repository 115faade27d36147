// Memory management without destructors (tfjs's model). JavaScript frees
// memory when the garbage collector decides to, which is too late for GPU
// buffers in a training loop. So every tensor created inside tidy(fn) is
// disposed when fn returns, except what fn returns and what was keep()'d
// (parameters, optimizer state, gradients). A training step wrapped in tidy
// therefore ends with exactly the tensors it started with.

import type { Tensor } from './tensor.ts';

const scopes: Set<Tensor>[] = [];
let liveTensors = 0;

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
 * Runs fn and disposes every tensor it created, except the ones it returns
 * (which move to the enclosing scope) and the ones marked with keep().
 * fn must be synchronous: an await inside would let tensors escape the scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) throw new Error('tidy: fn must be synchronous (it returned a Promise)');
  } catch (e) {
    // Nothing escapes a failed step: free what it made, then rethrow.
    scopes.pop();
    for (const t of scope) if (!t.kept) t.dispose();
    throw e;
  }
  scopes.pop();
  const returned = tensorsIn(result, new Set());
  for (const t of scope) if (!returned.has(t) && !t.kept) t.dispose();
  for (const t of returned) scopes[scopes.length - 1]?.add(t);
  return result;
}
