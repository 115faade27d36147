// The public surface of the tensor library. Import from here.

export { Tensor, type NestedArray } from './tensor.ts';
export { tensor, zeros, ones, full, arange, rand, randn, type TensorOptions } from './creation.ts';
export {
  crossEntropy,
  softmax,
  logSoftmax,
  dropout,
  chunk,
  stack,
  repeatInterleave,
  sort,
  topk,
  tril,
  conv2dPatch,
  mean,
} from './composite.ts';
export {
  cat,
  split,
  where,
  matmul,
  embedding,
  layerNorm,
  rmsNorm,
  rope,
  copyInto,
  scaledDotProductAttention,
} from './ops.ts';
export { noGrad, isGradEnabled } from './autograd.ts';
export { tidy, tidyForward } from './scope.ts';
export { autocast, GradScaler, roundToHalf } from './mixed_precision.ts';
export type { AutocastDtype, GradScalerOptions, GradScalerState } from './mixed_precision.ts';
export { memory } from './memory.ts';
export { Generator, manualSeed, defaultGenerator } from './random.ts';
export { getBackend, setDefaultDevice, getDefaultDevice, registerBackend } from './device.ts';
export { setCpuKernels, getCpuKernels, cpuKernelInfo, type CpuKernels } from './cpu/wasm/kernels.ts';
export { setCpuThreads, getCpuThreads } from './cpu/threads.ts';
export { keepBf16Copies, dropBf16Copies } from './cpu/backend.ts';
export type { DType, TypedArray } from './dtype.ts';
export type { DeviceName, Backend, Storage, View } from './backend.ts';
export { initWebGPU, closeWebGPU, resolveDevice, type WebGPUOptions } from './webgpu/device.ts';
