// Collators turn a list of dataset items into one batch: token ids, masks and
// training labels as flat row-major typed arrays, plus the images unchanged.
// https://github.com/huggingface/nanoVLM/blob/main/data/collators.py

import { tensor, type DeviceName } from '../tensor/index.ts';
import type { Tokenizer } from './tokenizer.ts';

/** A dataset item, as nanoVLM's VQADataset and MMStarDataset return it. */
export interface VQAItem {
  /** The processed image, CHW floats (from the image processor). */
  image: Float32Array;
  /** The prompt: "Question: {question} Answer:" (MMStar adds its own instructions). */
  text_data: string;
  /** The answer with the eos token appended, e.g. "Three.<|endoftext|>". */
  answer: string;
}

/** A training batch; `input_ids`, `attention_mask`, `labels` are (batchSize, seqLen). */
export interface VQABatch {
  input_ids: Int32Array;
  /** 1 for real tokens, 0 for the left padding. */
  attention_mask: Int32Array;
  /** The next token to predict at each position, -100 where no loss is taken. */
  labels: Int32Array;
  batchSize: number;
  seqLen: number;
  /** The items' images in batch order (nanoVLM stacks them into "image"). */
  images: Float32Array[];
}

/** An evaluation batch: prompts (batchSize, seqLen), answers (batchSize, labelLen). */
export interface MMStarBatch {
  input_ids: Int32Array;
  attention_mask: Int32Array;
  /** The answers' token ids, left-padded with the pad id (no mask: eval decodes them). */
  labels: Int32Array;
  batchSize: number;
  seqLen: number;
  labelLen: number;
  images: Float32Array[];
}

/** Loss positions ignored by cross-entropy (PyTorch's `ignore_index`). */
export const IGNORE_INDEX = -100;

/** Training collator: question + answer in one sequence, loss on the answer only. */
export class VQACollator {
  constructor(
    readonly tokenizer: Tokenizer,
    readonly maxLength: number,
  ) {}

  /** nanoVLM's `__call__`: collates items into rows of exactly `maxLength` tokens. */
  call(batch: VQAItem[]): VQABatch {
    const { tokenizer, maxLength } = this;
    const inputSequences = batch.map((item) => `${item.text_data}${item.answer}`);
    const { input_ids, attention_mask, lengths, seqLen } = tokenizer.batchEncodePlus(inputSequences, { maxLength });

    // Causal LM labels: position t predicts token t+1, the last one nothing.
    // Shifting the flat array carries each row's first token into the end of
    // the row before, which the loop overwrites with IGNORE_INDEX.
    const labels = new Int32Array(input_ids.length);
    labels.set(input_ids.subarray(1));
    for (let b = 0; b < batch.length; b++) {
      const row = b * seqLen;
      labels[row + seqLen - 1] = IGNORE_INDEX;
      // Truncation cuts the answer (and maybe its eos) from the right end, so a
      // truncated sample is left out of the loss entirely.
      if (lengths[b] > maxLength) {
        labels.fill(IGNORE_INDEX, row, row + seqLen);
        continue;
      }
      // Left padding puts the first real token at seqLen - length. Labels are
      // shifted by one, so the last question position already predicts the
      // first answer token and stays: mask padding + question - 1 positions.
      const firstTokenPos = seqLen - lengths[b];
      const questionLength = tokenizer.encode(batch[b].text_data).length;
      const questionEnd = firstTokenPos + questionLength - 1;
      labels.fill(IGNORE_INDEX, row, row + Math.max(0, questionEnd));
    }

    const images = batch.map((item) => item.image);
    return { input_ids, attention_mask, labels, batchSize: batch.length, seqLen, images };
  }
}

/** Evaluation collator for MMStar: prompts and answers tokenized separately. */
export class MMStarCollator {
  constructor(readonly tokenizer: Tokenizer) {}

  /** nanoVLM's `__call__`: prompts and answers each left-padded to their longest. */
  call(batch: VQAItem[]): MMStarBatch {
    const questions = this.tokenizer.batchEncodePlus(batch.map((item) => item.text_data));
    const answers = this.tokenizer.batchEncodePlus(batch.map((item) => item.answer));
    return {
      input_ids: questions.input_ids,
      attention_mask: questions.attention_mask,
      labels: answers.input_ids,
      batchSize: batch.length,
      seqLen: questions.seqLen,
      labelLen: answers.seqLen,
      images: batch.map((item) => item.image),
    };
  }
}

/** A collated batch as tensors on the device. */
export function toTensors(batch: VQABatch | MMStarBatch, imgSize: number, device: DeviceName) {
  const [B, T] = [batch.batchSize, batch.seqLen];
  const pixels = new Float32Array(B * 3 * imgSize * imgSize);
  batch.images.forEach((img, i) => pixels.set(img, i * img.length));
  return {
    image: tensor(pixels, { shape: [B, 3, imgSize, imgSize], device }),
    inputIds: tensor(batch.input_ids, { shape: [B, T], device }),
    attentionMask: tensor(batch.attention_mask, { shape: [B, T], device }),
    labels: 'labelLen' in batch ? null : tensor(batch.labels, { shape: [B, T], device }),
  };
}
