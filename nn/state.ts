// Modules to and from safetensors files: the bridge between nn/ and the file
// format. A state dict becomes named raw arrays (read back from the device)
// and raw arrays go back into a module through loadStateDict.

import type { Tensor } from '../tensor/index.ts';
import type { Module } from './module.ts';
import type { WriteTensor } from './safetensors.ts';
import { loadSafetensors, saveSafetensors } from './safetensors_fs.ts';

/** Reads tensors back from their device as F32 (or BF16, halving the file) / I32 entries. */
export async function toWriteTensors(tensors: Map<string, Tensor>, dtype: 'F32' | 'BF16' = 'F32'): Promise<Record<string, WriteTensor>> {
  const out: Record<string, WriteTensor> = {};
  for (const [name, t] of tensors) {
    const data = await t.data();
    out[name] = data instanceof Int32Array ? { dtype: 'I32', shape: t.shape, data } : { dtype, shape: t.shape, data: data instanceof Float32Array ? data : Float32Array.from(data) };
  }
  return out;
}

/** Saves a module's state dict, tied weights once (atomically: temp file, then rename). */
export async function saveModule(file: string, module: Module, opts: { dtype?: 'F32' | 'BF16' } = {}): Promise<void> {
  saveSafetensors(file, await toWriteTensors(module.stateDictForSaving(), opts.dtype), { format: 'pt' });
}

/** Loads a safetensors file into a module (strict unless told otherwise). */
export function loadModule(file: string, module: Module, strict = true): void {
  try {
    module.loadStateDict(loadSafetensors(file), strict);
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
}
