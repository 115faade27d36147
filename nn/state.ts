// Modules to safetensors entries: the bridge between nn/ and the file format. A state dict
// becomes named raw arrays (read back from the device); raw arrays go back into a module through
// Module.loadStateDict. Files on disk are node/safetensors.ts's (saveModule, loadModule).

import type { Tensor } from '../tensor/index.ts';
import type { WriteTensor } from './safetensors.ts';

/** Reads tensors back from their device as F32 (or BF16, halving the file) / I32 entries. */
export async function toWriteTensors(
  tensors: Map<string, Tensor>,
  dtype: 'F32' | 'BF16' = 'F32',
): Promise<Record<string, WriteTensor>> {
  const out: Record<string, WriteTensor> = {};
  for (const [name, t] of tensors) {
    const data = await t.data();
    out[name] =
      data instanceof Int32Array
        ? { dtype: 'I32', shape: t.shape, data }
        : { dtype, shape: t.shape, data: data instanceof Float32Array ? data : Float32Array.from(data) };
  }
  return out;
}
