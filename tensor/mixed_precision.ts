// Mixed precision as nanoVLM's bf16 autocast does it, in WebGPU's terms.
// Inside autocast('float16', fn) every matmul rounds its two operands to
// float16 and accumulates in float32 (Backend.matmulF16), and so do the
// products of its backward pass, wherever backward() is called from (as in
// PyTorch, the forward decides): the products carry float16's precision, and
// everything else (norms, softmax, attention, the loss, the optimizer) stays
// float32, as do the parameters (the "master weights") and their gradients.
// WebGPU needs no `shader-f16` for this: its matmul kernels round each
// float32 operand value as they load it, and keep the rounded values in
// float32, or in f16 where the device has the feature
// (webgpu/kernels/matmul.ts). The CPU backend's matmulF16 is the reference:
// its operands rounded by roundToHalf below, then its matmul.
//
// float16 keeps about 3 decimal digits and nothing below 6e-8, so gradients,
// which are often smaller, would vanish in the backward's products: the loss
// is multiplied by a large factor before backward (GradScaler, as
// torch.amp.GradScaler), which lifts every gradient into float16's range,
// and the gradients are divided by it again before clipping and the
// optimizer. When the factor is too large some gradient overflows to Inf:
// that step is skipped and the factor halved; after `growthInterval` good
// steps it is doubled again (dynamic loss scaling). A fixed factor
// (`dynamic: false`) is static loss scaling.
//
//   const scaler = new GradScaler();
//   const loss = autocast('float16', () => model.forward(...).loss);
//   scaler.scaleLoss(loss).backward();
//   scaler.unscale(params);
//   const norm = clipGradNorm(params, 1);       // Inf or NaN if a gradient overflowed
//   if (scaler.update(Number.isFinite(await norm.item()))) optimizer.step();

import { noGrad } from './autograd.ts';
import { contiguousRuns } from './contiguous_runs.ts';
import { copyInto } from './ops.ts';
import { tidy } from './scope.ts';
import type { Tensor } from './tensor.ts';

/** What autocast() rounds matmul operands to: float16, or nothing (float32 throughout). */
export type AutocastDtype = 'float16' | null;

let current: AutocastDtype = null;

/** Runs fn with every matmul's float32 operands rounded to `dtype` (null: none), then restores the previous mode. */
export function autocast<T>(dtype: AutocastDtype, fn: () => T): T {
  const previous = current;
  current = dtype;
  try {
    return fn();
  } finally {
    current = previous;
  }
}

/** The autocast mode in effect (ops.ts matmul reads it). */
export function autocastDtype(): AutocastDtype {
  return current;
}

/** Options of GradScaler (torch.amp.GradScaler's names and defaults). */
export interface GradScalerOptions {
  /** The first loss scale. */
  initScale?: number;
  /** The scale is multiplied by this after growthInterval steps without overflow. */
  growthFactor?: number;
  /** ... and by this after a step whose gradients overflowed. */
  backoffFactor?: number;
  growthInterval?: number;
  /** false: static loss scaling, the scale never changes. */
  dynamic?: boolean;
}

/** What a resumed run needs of a GradScaler: the scale and the good steps since it last changed. */
export interface GradScalerState {
  scale: number;
  goodSteps: number;
}

/** Loss scaling for float16 gradients (see the top of this file). */
export class GradScaler {
  scale: number;
  private readonly growthFactor: number;
  private readonly backoffFactor: number;
  private readonly growthInterval: number;
  private readonly dynamic: boolean;
  private goodSteps = 0;

  constructor(opts: GradScalerOptions = {}) {
    this.scale = opts.initScale ?? 2 ** 16;
    this.growthFactor = opts.growthFactor ?? 2;
    this.backoffFactor = opts.backoffFactor ?? 0.5;
    this.growthInterval = opts.growthInterval ?? 2000;
    this.dynamic = opts.dynamic ?? true;
  }

  /** The loss times the scale: call backward() on this. */
  scaleLoss(loss: Tensor): Tensor {
    return loss.mul(this.scale);
  }

  /**
   * Divides every parameter's gradient by the scale (before clipping and the
   * optimizer step): in place, a bucket at a time where they sit side by side
   * (nn/optim.ts). Exact: the scale is a power of 2.
   */
  unscale(params: Tensor[]): void {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    noGrad(() =>
      tidy(() => {
        for (const [g] of contiguousRuns([grads])) tidy(() => copyInto(g, g.mul(1 / this.scale))); // one at a time
      }),
    );
  }

  /**
   * After a step's gradients were checked (finite: no Inf or NaN, e.g. a finite
   * gradient norm): adjusts the scale, and says whether to take the optimizer
   * step (false: skip it, the gradients are garbage).
   */
  update(finite: boolean): boolean {
    if (!this.dynamic) return finite;
    if (!finite) {
      this.scale *= this.backoffFactor;
      this.goodSteps = 0;
      return false;
    }
    if (++this.goodSteps >= this.growthInterval) {
      this.scale *= this.growthFactor;
      this.goodSteps = 0;
    }
    return true;
  }

  stateDict(): GradScalerState {
    return { scale: this.scale, goodSteps: this.goodSteps };
  }

  loadStateDict(state: GradScalerState): void {
    this.scale = state.scale;
    this.goodSteps = state.goodSteps;
  }
}

/** x rounded to the nearest float16 (ties to even), as a number: what float16 storage keeps of a float32. */
export function roundToHalf(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  if (a >= 65520) return Math.sign(x) * Infinity; // past the largest float16 (65504) by half a step or more
  // the spacing of float16 values around a: 2^(e - 10), subnormals below 2^-14 share 2^-24
  const step = 2 ** (Math.max(Math.floor(Math.log2(a)), -14) - 10);
  const q = a / step;
  const r = Math.floor(q);
  const up = q - r > 0.5 || (q - r === 0.5 && r % 2 === 1);
  return Math.sign(x) * (up ? r + 1 : r) * step;
}
