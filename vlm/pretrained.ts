// What from_pretrained reads and save_pretrained writes, as data. A model folder (a nanoVLM
// checkpoint, a Hugging Face SigLIP or SmolLM2 folder) is config.json and model.safetensors; the
// model code takes them parsed and gives them back serialised, and never opens a file itself:
// node/model_folder.ts reads and writes folders on disk (the Hugging Face cache layout too), the
// web page reads dropped files and offers downloads. So the same model code runs in Node and in a
// browser:
//
//   const model = VisionLanguageModel.fromPretrained(readModelFolder('path/to/nanoVLM-222M')); // Node
//   writeModelFolder('out/', await model.savePretrained());

import type { RawTensor } from '../nn/safetensors.ts';

/** A model folder's two files, parsed. */
export interface ModelFiles {
  /** Where they came from (a path, a dropped folder's name): errors name it. */
  source: string;
  /** config.json, parsed. */
  config: Record<string, unknown>;
  /** The tensors of model.safetensors (of every shard, for a sharded model), by name. */
  weights: Map<string, RawTensor>;
}

/** Files for a model folder, by name: text, or chunks of bytes whose concatenation is the file. */
export type FolderFiles = Record<string, string | Uint8Array[]>;
