// Evaluation during training (nanoVLM's train.py evaluates the same way): the validation loss and
// exact-match answer accuracy of a VQA split in one teacher-forced pass, and MMStar's
// multiple-choice accuracy by generating a short answer.

import { toTensors, type MMStarBatch, type VQABatch, type VQAItem } from './data/collators.ts';
import { checkMultipleChoiceWithRegex } from './data/datasets.ts';
import type { DataLoader } from './data/loader.ts';
import type { Tokenizer } from './data/tokenizer.ts';
import { noGrad, tidy, type DeviceName } from './tensor/index.ts';
import type { VisionLanguageModel } from './vlm/vision_language_model.ts';

/**
 * Validation loss and exact-match answer accuracy. With teacher forcing, a sample whose every
 * answer token is the argmax is exactly one that greedy decoding answers right: one forward pass.
 */
export async function evaluate(model: VisionLanguageModel, loader: DataLoader<VQAItem, VQABatch>, device: DeviceName) {
  model.eval();
  let [lossSum, batches, correct, counted] = [0, 0, 0, 0];
  for await (const { batch } of loader.epoch(0)) {
    const [loss, misses, scored] = noGrad(() =>
      tidy(() => {
        const t = toTensors(batch, model.cfg.vit_img_size, device);
        const { logits, loss } = model.forward(t.inputIds, t.image, t.attentionMask, t.labels);
        const answer = t.labels!.ne(-100);
        const misses = logits.argmax(-1).ne(t.labels!).mul(answer).sum(1); // (B) wrong answer tokens
        return [loss!, misses, answer.sum(1)];
      }),
    );
    lossSum += await loss.item(); // sync point: the loss and the counts of the batch
    const [wrong, answered] = [await misses.data(), await scored.data()];
    for (let i = 0; i < wrong.length; i++) {
      if (answered[i] === 0) continue; // a sample too long to have its answer scored
      counted++;
      if (wrong[i] === 0) correct++;
    }
    batches++;
    [loss, misses, scored].forEach((t) => t.dispose());
  }
  model.train();
  return { loss: lossSum / Math.max(batches, 1), accuracy: correct / Math.max(counted, 1) };
}

/** MMStar: generate a short answer, then nanoVLM's multiple-choice regex check. */
export async function evaluateMMStar(
  model: VisionLanguageModel,
  loader: DataLoader<VQAItem, MMStarBatch>,
  tokenizer: Tokenizer,
  device: DeviceName,
) {
  model.eval();
  let [correct, total] = [0, 0];
  const decode = (ids: ArrayLike<number>) => tokenizer.decode(ids, { skipSpecialTokens: true });
  for await (const { batch } of loader.epoch(0)) {
    const t = toTensors(batch, model.cfg.vit_img_size, device);
    const options = { greedy: true, maxNewTokens: 5, eosTokenId: tokenizer.eosTokenId };
    const { tokens } = await model.generate(t.inputIds, t.image, t.attentionMask, options); // sync point per token
    [t.image, t.inputIds, t.attentionMask].forEach((x) => x.dispose());
    const { labels, labelLen } = batch;
    const answer = (i: number) => decode(labels.subarray(i * labelLen, (i + 1) * labelLen));
    const answers = Array.from({ length: batch.batchSize }, (_, i) => answer(i));
    correct += checkMultipleChoiceWithRegex(tokens.map(decode), answers).filter(Boolean).length;
    total += batch.batchSize;
  }
  model.train();
  return correct / Math.max(total, 1);
}
