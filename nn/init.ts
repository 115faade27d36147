// Weight initialisers. Every draw comes from a seeded generator (the default
// one unless given), so a model built after manualSeed(s) is the same on
// every run and every device.

import { defaultGenerator, full, randn, type DeviceName, type Generator, type Tensor } from '../tensor/index.ts';

/** Normal(0, std) values of `shape`: nanoVLM initialises Linear and Embedding weights with std 0.02. */
export function normal(shape: number[], std: number, device?: DeviceName, generator: Generator = defaultGenerator): Tensor {
  return randn(shape, { std, generator, device });
}

/**
 * Kaiming-normal for a conv weight [out, in, k, k] with mode 'fan_out' and a
 * ReLU gain (what nanoVLM's ViT uses): std = sqrt(2 / (out * k * k)), which
 * keeps activations from shrinking or growing layer after layer.
 */
export function kaimingNormalFanOut(shape: number[], device?: DeviceName, generator: Generator = defaultGenerator): Tensor {
  const fanOut = shape[0] * shape.slice(2).reduce((a, b) => a * b, 1);
  return randn(shape, { std: Math.sqrt(2 / fanOut), generator, device });
}

/** All zeros (biases). */
export function zeros(shape: number[], device?: DeviceName): Tensor {
  return full(shape, 0, { device });
}

/** All ones (norm weights: start as the identity). */
export function ones(shape: number[], device?: DeviceName): Tensor {
  return full(shape, 1, { device });
}
