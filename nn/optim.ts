// AdamW exactly as torch.optim.AdamW computes it, with parameter groups
// (nanoVLM trains the freshly initialised projector at a high learning rate
// and the pretrained backbones at a low one, so they are not wrecked early),
// plus gradient clipping and nanoVLM's learning-rate schedule.
//
// Buckets. On a GPU every kernel call costs host time, and an update is the
// same arithmetic for every parameter, so on WebGPU the optimizer moves the
// parameters it trains into a few large buffers ("buckets", as PyTorch's DDP
// keeps gradients), back to back, with their gradients (backward() writes
// them in place: Tensor.gradBuffer) and both moments laid out the same way
// in buckets of their own. Then one kernel call updates a whole bucket, and
// gradient clipping reads a bucket at a time (tensor/contiguous_runs.ts):
// a handful of dispatches for nanoVLM-222M's 422 parameters instead of
// thousands. On the CPU a kernel call costs nothing and memory is what is
// scarce (nanoVLM-222M must fit 4 GiB of WebAssembly memory, and a bucket of
// gradients would live through the forward pass), so every parameter keeps
// its own buffers.

import { contiguousRuns } from '../tensor/contiguous_runs.ts';
import { alias } from '../tensor/ops.ts';
import { contiguousStrides } from '../tensor/shape.ts';
import { copyInto, noGrad, tensor, tidy, type Backend, type Tensor, zeros } from '../tensor/index.ts';

/** Elements per bucket: 128 MiB of float32, a binding size every WebGPU device allows. */
const BUCKET_ELEMENTS = 1 << 25;

/** A set of parameters sharing hyperparameters; lr may be changed between steps. */
export interface ParamGroup {
  params: Tensor[];
  lr: number;
  weightDecay?: number;
}

/** Hyperparameters; the defaults are PyTorch's. */
export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** A step taken only if a flag on the device said so, until the flag is read (AdamW.settle). */
interface PendingStep {
  /** The flag's value, being read back. */
  taken: Promise<number>;
  backend: Backend;
  /** The states whose step counts it raised. */
  counted: ParamState[];
}

interface ParamState {
  step: number;
  expAvg: Tensor; // first moment: a running mean of gradients
  expAvgSq: Tensor; // second moment: a running mean of squared gradients
  /** Where the parameter lives in its bucket (WebGPU), or null: it keeps its own buffer. */
  home: Tensor | null;
}

/** Saved optimizer state (host arrays), for resuming a run exactly. */
export interface AdamWState {
  lrs: number[];
  params: ({ step: number; expAvg: Float32Array; expAvgSq: Float32Array } | null)[];
}

/**
 * Adam with decoupled weight decay (Loshchilov & Hutter), matching
 * torch.optim.AdamW. On WebGPU the constructor moves the parameters that
 * require grad into the optimizer's buckets (see the top of this file).
 */
export class AdamW {
  readonly paramGroups: ParamGroup[];
  readonly betas: [number, number];
  readonly eps: number;
  private readonly state = new Map<Tensor, ParamState>();
  /** The buckets of parameters, gradients and moments (WebGPU; see the top of this file). */
  private readonly buckets: Tensor[] = [];
  private pending: PendingStep | null = null;

  constructor(groups: ParamGroup[] | Tensor[], opts: AdamWOptions = {}) {
    const lr = opts.lr ?? 1e-3;
    const weightDecay = opts.weightDecay ?? 0.01;
    const list =
      groups.length && !('params' in groups[0]) ? [{ params: groups as Tensor[], lr }] : (groups as ParamGroup[]);
    this.paramGroups = list.map((g) => ({ ...g, weightDecay: g.weightDecay ?? weightDecay }));
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    const seen = new Set<Tensor>();
    for (const p of this.paramGroups.flatMap((g) => g.params)) {
      if (seen.has(p)) throw new Error('AdamW: a parameter appears twice (tied weights must be passed once)');
      seen.add(p);
    }
    this.fillBuckets(this.paramGroups.flatMap((g) => g.params).filter((p) => p.requiresGrad && p.device === 'webgpu'));
  }

  /** Moves the parameters into buckets (bucketLayout), and gives them gradients and moments beside them. */
  private fillBuckets(params: Tensor[]): void {
    const { places, lengths } = bucketLayout(params.map((p) => p.size));
    // per bucket of the layout, four buffers: parameters, gradients, first moments, second moments
    const sets = lengths.map((n) => [0, 1, 2, 3].map(() => zeros([n], { device: 'webgpu' }).keep()));
    this.buckets.push(...sets.flat());
    params.forEach((p, i) => {
      const { bucket, offset } = places[i];
      const [home, grad, expAvg, expAvgSq] = sets[bucket].map((b) =>
        alias(b, p.shape, contiguousStrides(p.shape), offset).keep(),
      );
      copyInto(home, p);
      p.assign(home);
      p.gradBuffer = grad;
      this.state.set(p, { step: 0, expAvg, expAvgSq, home });
    });
  }

  /**
   * One update of every parameter that has a gradient, by the backend's fused
   * adamw kernel, one call per bucket (per parameter on the CPU). Per element,
   * as torch.optim.AdamW:
   *   p <- p (1 - lr wd)                         decoupled weight decay: shrink the weight itself
   *   m <- beta1 m + (1 - beta1) g               a running mean of gradients
   *   v <- beta2 v + (1 - beta2) g^2             ... and of their squares
   *   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
   * where the 1 - beta^t factors undo the bias of moments that start at 0.
   *
   * With `onlyIf` (a one-element tensor), the update happens only if it is
   * nonzero, decided on the device: the host need not wait for the flag
   * (GradScaler.step skips an overflowed float16 step so). The host learns
   * it later, in settle(), which must come before the next step: t counts the
   * updates taken.
   */
  step(onlyIf?: Tensor): void {
    if (this.pending) throw new Error('AdamW.step: the last step was conditional: await optimizer.settle() first');
    const [beta1, beta2] = this.betas;
    const flag = onlyIf?.view() ?? null;
    const counted: ParamState[] = [];
    for (const group of this.paramGroups) {
      // [parameters, gradients, moments] of consecutive parameters at the same step, updated together
      let run: Tensor[][] = [[], [], [], []];
      let runStep = 0;
      const update = () => {
        const [lr, eps, weightDecay] = [group.lr, this.eps, group.weightDecay!];
        const hyper = { lr, beta1, beta2, eps, weightDecay, step: runStep };
        tidy(() => {
          // one kernel call per stretch of them side by side in a bucket (a whole bucket, as a rule)
          for (const [p, g, m, v] of contiguousRuns(run))
            p.backend.adamw(p.view(), g.view(), m.view(), v.view(), hyper, flag);
        });
        run = [[], [], [], []];
      };
      for (const p of group.params) {
        if (!p.grad) continue;
        if (onlyIf && onlyIf.device !== p.device)
          throw new Error(`AdamW.step: onlyIf is on ${onlyIf.device}, a parameter on ${p.device}`);
        const s = this.stateOf(p);
        this.placeInBucket(p, s);
        s.step += 1;
        counted.push(s);
        if (run[0].length && s.step !== runStep) update();
        [p, p.gradBuffer ?? p.grad, s.expAvg, s.expAvgSq].forEach((t, k) => run[k].push(t));
        runStep = s.step;
        // a parameter with buffers of its own is updated at once: on the CPU its moments then leave the
        // WebAssembly memory (cpu/backend.ts adamw) before the next parameter's are made
        if (!s.home) update();
      }
      if (run[0].length) update();
    }
    if (onlyIf) {
      // the read starts now, behind this step's work: it is done when the device is, not when the host asks
      const taken = onlyIf.item();
      taken.catch(() => {}); // its error, if any, is thrown by settle()
      this.pending = { taken, backend: onlyIf.backend, counted };
    }
  }

  /**
   * Reads the flag of a conditional step (sync point, but by the next step the
   * device is done with it) and takes back its step counts if it was skipped.
   */
  async settle(): Promise<void> {
    if (!this.pending) return;
    const { taken, backend, counted } = this.pending;
    this.pending = null;
    backend.flush(); // what is queued since goes to the device before the host waits
    if ((await taken) === 0) for (const s of counted) s.step -= 1;
  }

  /**
   * Puts a bucketed parameter and its gradient back in their places where
   * something moved them (a load_state_dict's assign, a gradient set by hand).
   */
  private placeInBucket(p: Tensor, s: ParamState): void {
    const home = s.home;
    if (home && (p.storage !== home.storage || p.offset !== home.offset)) {
      copyInto(home, p);
      p.assign(home);
    }
    const buffer = p.gradBuffer;
    if (buffer && p.grad && p.grad !== buffer) copyInto(buffer, p.grad);
  }

  /** Frees every gradient (they are recreated by the next backward; bucketed ones stay in their buckets). */
  zeroGrad(): void {
    for (const p of this.paramGroups.flatMap((g) => g.params)) {
      if (p.grad !== p.gradBuffer) p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Frees both moments of every parameter and the buckets (an optimizer that will not step again). */
  dispose(): void {
    for (const [p, s] of this.state) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
      s.home?.dispose(); // the parameter keeps its storage alive
      if (p.grad === p.gradBuffer) p.grad = null;
      p.gradBuffer?.dispose();
      p.gradBuffer = null;
    }
    this.state.clear();
    for (const b of this.buckets) b.dispose();
    this.buckets.length = 0;
  }

  private stateOf(p: Tensor): ParamState {
    let s = this.state.get(p);
    if (!s) {
      s = {
        step: 0,
        expAvg: zeros(p.shape, { device: p.device }).keep(),
        expAvgSq: zeros(p.shape, { device: p.device }).keep(),
        home: null,
      };
      this.state.set(p, s);
    }
    return s;
  }

  /** Everything needed to resume: learning rates, step counts and both moments, per parameter in group order. */
  async stateDict(): Promise<AdamWState> {
    await this.settle();
    const params: AdamWState['params'] = [];
    for (const p of this.paramGroups.flatMap((g) => g.params)) {
      const s = this.state.get(p);
      params.push(
        s && s.step > 0 // a parameter never updated has no state, as in PyTorch (bucketed ones have zeros ready)
          ? {
              step: s.step,
              expAvg: (await s.expAvg.data()) as Float32Array,
              expAvgSq: (await s.expAvgSq.data()) as Float32Array,
            }
          : null,
      );
    }
    return { lrs: this.paramGroups.map((g) => g.lr), params };
  }

  /** Restores a stateDict() (same parameter order and shapes). */
  loadStateDict(state: AdamWState): void {
    const all = this.paramGroups.flatMap((g) => g.params);
    if (state.params.length !== all.length)
      throw new Error(`AdamW.loadStateDict: state has ${state.params.length} parameters, the optimizer ${all.length}`);
    state.lrs.forEach((lr, i) => (this.paramGroups[i].lr = lr));
    this.pending = null; // the saved counts are what they are
    all.forEach((p, i) => {
      const saved = state.params[i];
      if (!saved) return;
      const s = this.stateOf(p);
      s.step = saved.step;
      // written in place: bucketed moments must stay in their buckets
      tidy(() => {
        copyInto(s.expAvg, tensor(saved.expAvg, { shape: p.shape, device: p.device }));
        copyInto(s.expAvgSq, tensor(saved.expAvgSq, { shape: p.shape, device: p.device }));
      });
    });
  }
}

/**
 * Where tensors of these sizes go in buckets of `capacity` elements: back to
 * back, in order, each at a multiple of 4 elements (so the matmul kernels
 * still read a weight as vec4s), a new bucket when the next one does not fit
 * (a tensor larger than a bucket gets one of its own). Returns each tensor's
 * bucket and offset, and each bucket's length. A size that is not a multiple
 * of 4 leaves a gap, which ends a run of tensors side by side: the gap is
 * never read or written (every parameter of nanoVLM's models is a multiple
 * of 4 long).
 */
export function bucketLayout(
  sizes: number[],
  capacity = BUCKET_ELEMENTS,
): { places: { bucket: number; offset: number }[]; lengths: number[] } {
  const places: { bucket: number; offset: number }[] = [];
  const lengths: number[] = [];
  for (const size of sizes) {
    let end = lengths.length ? lengths[lengths.length - 1] : 0;
    if (!lengths.length || (end > 0 && end + size > capacity)) lengths.push((end = 0));
    places.push({ bucket: lengths.length - 1, offset: end });
    lengths[lengths.length - 1] = Math.ceil((end + size) / 4) * 4;
  }
  return { places, lengths };
}

/**
 * Scales all gradients down together when their global L2 norm exceeds
 * maxNorm (the direction is kept, only the step length is capped). Returns
 * the norm before clipping, as a tensor: reading it is a sync point. Reads
 * and writes the gradients a bucket at a time where they sit side by side
 * (nn/optim.ts's buckets), in place.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  return noGrad(() => {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    if (grads.length === 0) return zeros([]);
    return tidy(() => {
      const runs = contiguousRuns([grads]).map(([run]) => run);
      // each run's temporaries freed as soon as it is done: together they would be the size of every gradient
      const total = runs
        .map((g) => tidy(() => g.mul(g).sum()))
        .reduce((a, b) => a.add(b))
        .sqrt();
      const coef = total.add(1e-6).reciprocal().mul(maxNorm).minimum(1); // PyTorch's clip_coef_clamped
      for (const g of runs) tidy(() => copyInto(g, g.mul(coef)));
      return total;
    });
  });
}

/** nanoVLM's get_lr: linear warmup over the first 3% of steps, then cosine decay to 10% of maxLr. */
export function getLr(it: number, maxLr: number, maxSteps: number): number {
  const minLr = maxLr * 0.1;
  const warmupSteps = maxSteps * 0.03;
  if (it < warmupSteps) return (maxLr * (it + 1)) / warmupSteps;
  if (it > maxSteps) return minLr;
  const decayRatio = (it - warmupSteps) / (maxSteps - warmupSteps);
  const coeff = 0.5 * (1 + Math.cos(Math.PI * decayRatio)); // 1 at the start of decay, 0 at the end
  return minLr + coeff * (maxLr - minLr);
}
