// Weight initialisers. Every draw comes from a seeded generator (the default
// one unless given), so a model built after manualSeed(s) is the same on
// every run and every device.

import { defaultGenerator, full, rand, randn, type DeviceName, type Generator, type Tensor } from '../tensor/index.ts';

let skipping = 0;

/**
 * Builds modules without drawing their random initial weights (zeros instead),
 * for weights a checkpoint is about to overwrite: drawing nanoVLM-222M's 222M
 * normals would take most of a minute. PyTorch builds on the "meta" device for
 * the same reason.
 */
export function skipInit<T>(build: () => T): T {
  skipping++;
  try {
    return build();
  } finally {
    skipping--;
  }
}

/** Zeros of `shape` while skipInit() runs, else the random draw. */
function drawn(shape: number[], device: DeviceName | undefined, draw: () => Tensor): Tensor {
  return skipping ? full(shape, 0, { device }) : draw();
}

/** Normal(0, std) values of `shape`: nanoVLM initialises Linear and Embedding weights with std 0.02. */
export function normal(
  shape: number[],
  std: number,
  device?: DeviceName,
  generator: Generator = defaultGenerator,
): Tensor {
  return drawn(shape, device, () => randn(shape, { std, generator, device }));
}

/** Uniform [0, 1) values of `shape` (torch.rand: nanoVLM's ViT position embedding). */
export function uniform(shape: number[], device?: DeviceName, generator: Generator = defaultGenerator): Tensor {
  return drawn(shape, device, () => rand(shape, { generator, device }));
}

/**
 * Kaiming-normal for a conv weight [out, in, k, k] with mode 'fan_out' and a
 * ReLU gain (what nanoVLM's ViT uses): std = sqrt(2 / (out * k * k)), which
 * keeps activations from shrinking or growing layer after layer.
 */
export function kaimingNormalFanOut(
  shape: number[],
  device?: DeviceName,
  generator: Generator = defaultGenerator,
): Tensor {
  const fanOut = shape[0] * shape.slice(2).reduce((a, b) => a * b, 1);
  return drawn(shape, device, () => randn(shape, { std: Math.sqrt(2 / fanOut), generator, device }));
}

/** All zeros (biases). */
export function zeros(shape: number[], device?: DeviceName): Tensor {
  return full(shape, 0, { device });
}

/** All ones (norm weights: start as the identity). */
export function ones(shape: number[], device?: DeviceName): Tensor {
  return full(shape, 1, { device });
}
