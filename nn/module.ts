// Module: the base class of every layer, as in PyTorch. Parameters are found
// by walking the module's own properties (arrays included), so the state-dict
// key of a weight is simply its property path: `blocks.0.attn.q_proj.weight`.
// That is what lets a nanoVLM checkpoint load with no name-mapping table.

import { Tensor, type DeviceName } from '../tensor/index.ts';
import type { RawTensor } from './safetensors.ts';

// Which tensors are trainable parameters and which are buffers (state that is
// saved with the model but not trained, like RoPE's inverse frequencies).
const parameters = new WeakSet<Tensor>();
const buffers = new WeakSet<Tensor>();

/** Marks a tensor as a trainable parameter (requires grad, survives tidy()). */
export function parameter(t: Tensor): Tensor {
  parameters.add(t);
  return t.setRequiresGrad().keep();
}

/** Marks a tensor as a saved, untrained buffer. */
export function buffer(t: Tensor): Tensor {
  buffers.add(t);
  return t.keep();
}

/** A value that can be loaded into a module: a tensor, or raw arrays read from a file. */
export type StateValue = Tensor | RawTensor;

/** Base class of all layers and models. */
export class Module {
  /** Dropout and friends behave differently while training. */
  training = true;

  /** Every [name, tensor] pair of parameters and buffers, in property order. A tied tensor appears under each name. */
  namedTensors(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const visit = (value: unknown, name: string): void => {
      if (value instanceof Tensor) {
        if (parameters.has(value) || buffers.has(value)) out.push([name, value]);
      } else if (value instanceof Module) {
        for (const [key, child] of Object.entries(value)) visit(child, name ? `${name}.${key}` : key);
      } else if (Array.isArray(value)) {
        value.forEach((child, i) => visit(child, `${name}.${i}`));
      }
    };
    visit(this, '');
    return out;
  }

  /** [name, parameter] pairs (buffers excluded), each tensor once even when tied. */
  namedParameters(): [string, Tensor][] {
    const seen = new Set<Tensor>();
    return this.namedTensors().filter(([, t]) => parameters.has(t) && !seen.has(t) && seen.add(t));
  }

  /** The trainable tensors, each once. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /**
   * Freezes (false) or unfreezes (true) every parameter here and below, as
   * PyTorch's requires_grad_: a frozen parameter gets no gradient, so
   * backward skips its weight-gradient matmuls (and everything before it
   * that only it needed), and AdamW never makes moments for it.
   * `model.vision_encoder.setRequiresGrad(false)` trains the rest on a frozen ViT.
   */
  setRequiresGrad(flag: boolean): this {
    for (const p of this.parameters()) p.setRequiresGrad(flag);
    return this;
  }

  /** Number of trainable scalars. */
  numParameters(): number {
    return this.parameters().reduce((n, p) => n + p.size, 0);
  }

  /** name -> tensor for every parameter and buffer (tied tensors under each name, as PyTorch). */
  stateDict(): Map<string, Tensor> {
    return new Map(this.namedTensors());
  }

  /** Every tensor once, with all the names it goes by (a tied weight has several). */
  tensorNames(): Map<Tensor, string[]> {
    const names = new Map<Tensor, string[]>();
    for (const [name, t] of this.namedTensors()) names.set(t, [...(names.get(t) ?? []), name]);
    return names;
  }

  /**
   * The state dict as a file holds it: a tied tensor once, under the
   * alphabetically first of its names (the rule of PyTorch's safetensors
   * save_model, so nanoVLM's files hold decoder.head.weight, not the embedding).
   */
  stateDictForSaving(): Map<string, Tensor> {
    return new Map([...this.tensorNames()].map(([t, names]) => [[...names].sort()[0], t]));
  }

  /**
   * Copies values into the module's tensors. Strict by default: any missing or
   * unexpected key, or a wrong shape, is an error that lists them all. A tied
   * tensor counts as present when any one of its names is given (PyTorch's
   * save drops one of two tied names).
   */
  loadStateDict(state: Map<string, StateValue>, strict = true): void {
    const own = this.namedTensors();
    const names = this.tensorNames();
    const missing: string[] = [];
    const wrongShape: string[] = [];
    const unexpected = [...state.keys()].filter((k) => !own.some(([name]) => name === k));
    for (const [t, aliases] of names) {
      const key = aliases.find((n) => state.has(n));
      if (key === undefined) {
        missing.push(aliases.join(' / '));
        continue;
      }
      const v = state.get(key)!;
      if (v.shape.join(',') !== t.shape.join(',')) wrongShape.push(`${key}: expected [${t.shape}], got [${v.shape}]`);
    }
    const problems = [
      ...(wrongShape.length ? [`wrong shape: ${wrongShape.join('; ')}`] : []),
      ...(strict && missing.length ? [`missing keys: ${missing.join(', ')}`] : []),
      ...(strict && unexpected.length ? [`unexpected keys: ${unexpected.join(', ')}`] : []),
    ];
    if (problems.length) throw new Error(`loadStateDict: ${problems.join(' | ')}`);
    // Everything checked: only now write, so a failed load changes nothing.
    for (const [t, aliases] of names) {
      const key = aliases.find((n) => state.has(n));
      if (key !== undefined) writeInto(t, state.get(key)!);
    }
  }

  /** Sets training mode here and in every submodule. */
  train(mode = true): this {
    const visit = (value: unknown): void => {
      if (value instanceof Module) {
        value.training = mode;
        Object.values(value).forEach(visit);
      } else if (Array.isArray(value)) value.forEach(visit);
    };
    visit(this);
    return this;
  }

  /** Evaluation mode (dropout off). */
  eval(): this {
    return this.train(false);
  }

  /**
   * Moves every parameter and buffer to `device`, replacing the properties
   * that hold them (tied tensors stay tied: each tensor is moved once).
   */
  async to(device: DeviceName): Promise<this> {
    const moved = new Map<Tensor, Tensor>();
    for (const [, t] of this.namedTensors()) {
      if (moved.has(t)) continue;
      const m = await t.to(device);
      if (m !== t) {
        if (parameters.has(t)) parameter(m).requiresGrad = t.requiresGrad;
        else buffer(m);
        t.dispose();
      }
      moved.set(t, m);
    }
    const visit = (holder: object): void => {
      for (const [key, value] of Object.entries(holder)) {
        if (value instanceof Tensor && moved.has(value)) (holder as Record<string, unknown>)[key] = moved.get(value);
        else if (value instanceof Module || Array.isArray(value)) visit(value);
      }
    };
    visit(this);
    return this;
  }
}

/** Writes loaded values into an existing tensor (converting dtype on the host if needed). */
function writeInto(t: Tensor, v: StateValue): void {
  if (!(v instanceof Tensor)) return void t.setData(v.data);
  if (v.device === t.device) return void t.assign(v.dtype === t.dtype ? v : v.cast(t.dtype));
  // from another device: CPU values can be read synchronously; a GPU's cannot (await tensor.data() first)
  if (v.device !== 'cpu')
    throw new Error(`loadStateDict: cannot copy a ${v.device} tensor into a ${t.device} module synchronously`);
  t.setData(v.dataSync());
}
