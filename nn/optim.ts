// AdamW exactly as torch.optim.AdamW computes it, with parameter groups
// (nanoVLM trains the freshly initialised projector at a high learning rate
// and the pretrained backbones at a low one, so they are not wrecked early),
// plus gradient clipping and nanoVLM's learning-rate schedule.

import { noGrad, tidy, type Tensor, zeros } from '../tensor/index.ts';

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

interface ParamState {
  step: number;
  expAvg: Tensor; // first moment: a running mean of gradients
  expAvgSq: Tensor; // second moment: a running mean of squared gradients
}

/** Saved optimizer state (host arrays), for resuming a run exactly. */
export interface AdamWState {
  lrs: number[];
  params: ({ step: number; expAvg: Float32Array; expAvgSq: Float32Array } | null)[];
}

/** Adam with decoupled weight decay (Loshchilov & Hutter), matching torch.optim.AdamW. */
export class AdamW {
  readonly paramGroups: ParamGroup[];
  readonly betas: [number, number];
  readonly eps: number;
  private readonly state = new Map<Tensor, ParamState>();

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
  }

  /**
   * One update of every parameter that has a gradient, each by one fused
   * kernel (the backend's adamw). Per element, as torch.optim.AdamW:
   *   p <- p (1 - lr wd)                         decoupled weight decay: shrink the weight itself
   *   m <- beta1 m + (1 - beta1) g               a running mean of gradients
   *   v <- beta2 v + (1 - beta2) g^2             ... and of their squares
   *   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
   * where the 1 - beta^t factors undo the bias of moments that start at 0.
   */
  step(): void {
    const [beta1, beta2] = this.betas;
    for (const group of this.paramGroups) {
      for (const p of group.params) {
        if (!p.grad) continue;
        const s = this.stateOf(p);
        s.step += 1;
        const hyper = { lr: group.lr, beta1, beta2, eps: this.eps, weightDecay: group.weightDecay!, step: s.step };
        p.backend.adamw(p.view(), p.grad.view(), s.expAvg.view(), s.expAvgSq.view(), hyper);
      }
    }
  }

  /** Frees every gradient (they are recreated by the next backward). */
  zeroGrad(): void {
    for (const p of this.paramGroups.flatMap((g) => g.params)) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Frees both moments of every parameter (an optimizer that will not step again). */
  dispose(): void {
    for (const s of this.state.values()) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
    }
    this.state.clear();
  }

  private stateOf(p: Tensor): ParamState {
    let s = this.state.get(p);
    if (!s) {
      s = {
        step: 0,
        expAvg: zeros(p.shape, { device: p.device }).keep(),
        expAvgSq: zeros(p.shape, { device: p.device }).keep(),
      };
      this.state.set(p, s);
    }
    return s;
  }

  /** Everything needed to resume: learning rates, step counts and both moments, per parameter in group order. */
  async stateDict(): Promise<AdamWState> {
    const params: AdamWState['params'] = [];
    for (const p of this.paramGroups.flatMap((g) => g.params)) {
      const s = this.state.get(p);
      params.push(
        s
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
    all.forEach((p, i) => {
      const saved = state.params[i];
      if (!saved) return;
      const s = this.stateOf(p);
      s.step = saved.step;
      s.expAvg.setData(saved.expAvg);
      s.expAvgSq.setData(saved.expAvgSq);
    });
  }
}

/**
 * Scales all gradients down together when their global L2 norm exceeds
 * maxNorm (the direction is kept, only the step length is capped). Returns
 * the norm before clipping, as a tensor: reading it is a sync point.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  return noGrad(() => {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    if (grads.length === 0) return zeros([]);
    const total = tidy(() =>
      grads
        .map((g) => g.mul(g).sum())
        .reduce((a, b) => a.add(b))
        .sqrt(),
    );
    tidy(() => {
      const coef = total.add(1e-6).reciprocal().mul(maxNorm).minimum(1); // PyTorch's clip_coef_clamped
      for (const p of params) if (p.grad) p.grad.assign(p.grad.mul(coef));
    });
    return total;
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
