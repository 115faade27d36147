// The messages between the page (main.ts) and the worker that holds the model (worker.ts).
// The model trains and answers in a Web Worker so that the page never freezes, on either backend.

import type { RGBImage } from '../data/processors.ts';

/** What the page asks the worker to do. */
export type Request =
  /** Open a device ('auto': WebGPU where the browser has an adapter, else the CPU) and build the default model. */
  | { type: 'start'; device: 'auto' | 'webgpu' | 'cpu' }
  /** Train (again) from where it stopped, until paused or the preset's max_steps. */
  | { type: 'train' }
  | { type: 'pause' }
  /** Answer a question about a picture, streaming the answer, then look inside. */
  | { type: 'ask'; id: number; image: RGBImage; question: string }
  /** Replace the model with a checkpoint folder's files. */
  | { type: 'load'; checkpoint: CheckpointFiles }
  /** The current model as a checkpoint folder (config.json, model.safetensors, tokenizer.json). */
  | { type: 'save' };

/** A checkpoint folder as the page read it from disk. */
export interface CheckpointFiles {
  /** The folder's name, for messages. */
  name: string;
  config: string;
  weights: ArrayBuffer;
  tokenizer: string | null;
  tokenizerConfig: string | null;
}

/** A held-out picture with its question, the true answer and the model's. */
export interface Sample {
  image: RGBImage;
  question: string;
  truth: string;
  answer: string;
}

/** What the worker tells the page. */
export type Reply =
  /** `colors`: the built-in pictures' colours, for the drawing brush. */
  | { type: 'ready'; device: string; model: ModelInfo; samples: Sample[]; colors: Record<string, readonly number[]> }
  | { type: 'step'; step: number; maxSteps: number; loss: number; tokensPerSec: number }
  | { type: 'eval'; step: number; loss: number; accuracy: number; samples: Sample[] }
  | { type: 'training'; running: boolean; step: number }
  | { type: 'token'; id: number; text: string }
  | { type: 'answer'; id: number; text: string; inside: Inside }
  | { type: 'saved'; files: { name: string; content: string | Uint8Array[] }[] }
  | { type: 'loaded'; model: ModelInfo; samples: Sample[] }
  | { type: 'error'; during: Request['type']; message: string };

/** What the page shows about the model. */
export interface ModelInfo {
  name: string;
  parameters: number;
  imgSize: number;
  /** The questions the tokenizer knows every word of (the built-in set's), for the question box. */
  questions: string[];
}

/** Where the answer looked: for each decoder layer, the attention of the answer tokens over the image tokens. */
export interface Inside {
  /** The picture as the model saw it (resized to imgSize), RGB. */
  image: RGBImage;
  /** Image tokens per side (the patch grid divided by the pixel-shuffle factor). */
  tokensPerSide: number;
  /** Patches per image token per side: the pixel-shuffle factor. */
  shuffle: number;
  patchSize: number;
  /** [layer][image token]: mean over heads and answer tokens of the attention weight on that token. */
  layers: number[][];
}
