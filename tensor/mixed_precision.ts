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
// All of it happens on the device, as in PyTorch's fused optimizers: the
// factor and the count of good steps are tensors there, and the skip is a
// flag the optimizer's kernel reads. Were the host to decide, it would wait
// for every step's gradients before queueing the update (the GPU idle
// meanwhile); it only learns of a skip a step later, when the device is done
// with it (AdamW.settle).
//
//   const scaler = new GradScaler('webgpu');
//   const loss = autocast('float16', () => model.forward(...).loss);
//   scaler.scaleLoss(loss).backward();
//   scaler.unscale(params);
//   const norm = clipGradNorm(params, 1);       // Inf or NaN if a gradient overflowed
//   await scaler.step(optimizer, norm);         // the update, unless the norm is not finite

import { noGrad } from './autograd.ts';
import { stack } from './composite.ts';
import { contiguousRuns } from './contiguous_runs.ts';
import { tensor } from './creation.ts';
import type { DeviceName } from './backend.ts';
import { copyInto, where } from './ops.ts';
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

/** An optimizer whose update a flag on the device can skip (nn/optim.ts's AdamW). */
export interface SkippableOptimizer {
  step(onlyIf: Tensor): void;
  settle(): Promise<void>;
}

/** Loss scaling for float16 gradients (see the top of this file), on `device`, as torch.amp.GradScaler(device). */
export class GradScaler {
  /** The loss scale, a one-element tensor on the device (reading it is a sync point). */
  readonly scale: Tensor;
  /** 1 / scale, kept beside it: both change by powers of 2 (exact), and the device never divides. */
  private readonly invScale: Tensor;
  /** Steps without overflow since the scale last changed. */
  private readonly goodSteps: Tensor;
  private readonly growthFactor: number;
  private readonly backoffFactor: number;
  private readonly growthInterval: number;
  private readonly dynamic: boolean;

  constructor(device: DeviceName, opts: GradScalerOptions = {}) {
    const make = (x: number) => tensor([x], { shape: [], device }).keep();
    const initScale = opts.initScale ?? 2 ** 16;
    this.scale = make(initScale);
    this.invScale = make(1 / initScale);
    this.goodSteps = make(0);
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
        for (const [g] of contiguousRuns([grads])) tidy(() => copyInto(g, g.mul(this.invScale))); // one at a time
      }),
    );
  }

  /**
   * The optimizer's step unless a gradient overflowed (gradNorm, the norm of
   * the unscaled gradients, is Inf or NaN), then the scale's update: both
   * decided on the device. Waits only for the previous step's flag
   * (optimizer.settle), which the device is done with by now.
   */
  async step(optimizer: SkippableOptimizer, gradNorm: Tensor): Promise<void> {
    await optimizer.settle();
    noGrad(() =>
      tidy(() => {
        const finite = gradNorm.isfinite();
        optimizer.step(finite);
        if (this.dynamic) this.update(finite);
      }),
    );
  }

  /**
   * Halves the scale after an overflow (finite = 0) and restarts the count of
   * good steps; multiplies it by growthFactor when the count reaches growthInterval.
   */
  private update(finite: Tensor): void {
    const good = this.goodSteps.add(1).mul(finite); // 0 after an overflow
    const grow = good.ge(this.growthInterval);
    // what the scale is multiplied by: growth, 1 or backoff (and their inverses for invScale)
    const factor = (growth: number, backoff: number) => where(finite, where(grow, growth, 1), backoff);
    copyInto(this.scale, this.scale.mul(factor(this.growthFactor, this.backoffFactor)));
    copyInto(this.invScale, this.invScale.mul(factor(1 / this.growthFactor, 1 / this.backoffFactor)));
    copyInto(this.goodSteps, where(grow, 0, good));
  }

  /** The scale and the count of good steps (a sync point). */
  async stateDict(): Promise<GradScalerState> {
    const both = stack([this.scale, this.goodSteps]); // one read
    const [scale, goodSteps] = await both.data();
    both.dispose();
    return { scale, goodSteps };
  }

  /** Restores a stateDict(). */
  loadStateDict(state: GradScalerState): void {
    const device = this.scale.device;
    noGrad(() =>
      tidy(() => {
        const values: [Tensor, number][] = [
          [this.scale, state.scale],
          [this.invScale, 1 / state.scale],
          [this.goodSteps, state.goodSteps],
        ];
        for (const [t, x] of values) copyInto(t, tensor([x], { shape: [], device }));
      }),
    );
  }

  /** Frees its tensors (a scaler that will not be used again). */
  dispose(): void {
    [this.scale, this.invScale, this.goodSteps].forEach((t) => t.dispose());
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
