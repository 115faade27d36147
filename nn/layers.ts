// The standard layers, each holding its weights as properties named exactly
// as in PyTorch (weight, bias), so state-dict keys match. Default inits are
// nanoVLM's: normal(0, 0.02) weights, zero biases, unit norm weights.

import { conv2dPatch, layerNorm, rmsNorm, type Tensor } from '../tensor/index.ts';
import * as init from './init.ts';
import { Module, parameter } from './module.ts';

/** y = x W^T + b, with W stored [out, in] as in PyTorch. */
export class Linear extends Module {
  weight: Tensor;
  bias: Tensor | null;
  constructor(inFeatures: number, outFeatures: number, bias = true) {
    super();
    this.weight = parameter(init.normal([outFeatures, inFeatures], 0.02));
    this.bias = bias ? parameter(init.zeros([outFeatures])) : null;
  }
  forward(x: Tensor): Tensor {
    const y = x.matmul(this.weight.transpose(0, 1)); // a transposed view: no copy
    return this.bias ? y.add(this.bias) : y;
  }
}

/** A lookup table: row i is the vector of token i. */
export class Embedding extends Module {
  weight: Tensor;
  constructor(numEmbeddings: number, embeddingDim: number) {
    super();
    this.weight = parameter(init.normal([numEmbeddings, embeddingDim], 0.02));
  }
  forward(ids: Tensor): Tensor {
    return this.weight.embedding(ids);
  }
}

/** Normalises the last dim to zero mean and unit variance, then scales and shifts. */
export class LayerNorm extends Module {
  weight: Tensor;
  bias: Tensor;
  constructor(
    dim: number,
    public eps = 1e-5,
  ) {
    super();
    this.weight = parameter(init.ones([dim]));
    this.bias = parameter(init.zeros([dim]));
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/** Llama's norm: divides by the root mean square (no mean subtraction, no bias). */
export class RMSNorm extends Module {
  weight: Tensor;
  constructor(
    dim: number,
    public eps = 1e-5,
  ) {
    super();
    this.weight = parameter(init.ones([dim]));
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/** Randomly zeroes activations while training (regularisation); the identity in eval mode. */
export class Dropout extends Module {
  constructor(public p: number) {
    super();
  }
  forward(x: Tensor): Tensor {
    return x.dropout(this.p, this.training);
  }
}

/** GELU with the tanh approximation (PyTorch's nn.GELU(approximate='tanh'), SigLIP's activation). */
export class GELU extends Module {
  forward(x: Tensor): Tensor {
    return x.gelu();
  }
}

/** A Conv2d whose stride equals its kernel (ViT's patch embedding); weight [out, in, k, k] as PyTorch. */
export class Conv2d extends Module {
  weight: Tensor;
  bias: Tensor | null;
  constructor(inChannels: number, outChannels: number, kernelSize: number, stride: number, bias = true) {
    super();
    if (stride !== kernelSize)
      throw new Error(
        `Conv2d: only stride == kernel_size is supported (patch embedding), got kernel ${kernelSize}, stride ${stride}`,
      );
    this.weight = parameter(init.kaimingNormalFanOut([outChannels, inChannels, kernelSize, kernelSize]));
    this.bias = bias ? parameter(init.zeros([outChannels])) : null;
  }
  forward(x: Tensor): Tensor {
    return conv2dPatch(x, this.weight, this.bias);
  }
}
