// "Look inside": where the answer looked in the picture. Attention runs through one fused op
// (scaledDotProductAttention) that never materialises its weights, so here they are recomputed
// for the few rows drawn: each decoder block's queries and keys (after RoPE) from the block's own
// layers, then softmax(q k^T / sqrt(head_dim) + causal mask), then the block itself runs as in
// the model's forward pass to give the next block its input. Nothing in the model changes.

import { cat, noGrad, repeatInterleave, softmax, tensor, tidy, type Tensor } from '../tensor/index.ts';
import { applyRotaryPosEmbd, attentionMasks } from '../vlm/language_model.ts';
import type { VisionLanguageModel } from '../vlm/vision_language_model.ts';

/**
 * For each decoder layer, the attention that the answer's tokens pay to each image token (the
 * mean over heads and over the positions that chose the answer's tokens). `promptIds` is the
 * prompt, `answerIds` the generated answer (without the end token); image: (1, 3, S, S).
 * sync point: reads the weights back (once per layer).
 */
export async function answerAttention(
  model: VisionLanguageModel,
  image: Tensor,
  promptIds: number[],
  answerIds: number[],
): Promise<number[][]> {
  if (answerIds.length === 0) return [];
  const maps = noGrad(() =>
    tidy(() => {
      const device = model.device;
      const ids = [...promptIds, ...answerIds.slice(0, -1)]; // the last token chose nothing we show
      const tokens = tensor(new Int32Array(ids), { shape: [1, ids.length], device });
      // the model's embed(): image tokens, then text tokens
      const imageEmbd = model.MP.forward(model.vision_encoder.forward(image)); // (1, n_img, C)
      let x = cat([imageEmbd, model.decoder.token_embedding.forward(tokens)], 1); // (1, T, C)
      const nImg = imageEmbd.shape[1];
      const T = x.shape[1];
      const first = nImg + promptIds.length - 1; // the position whose output chose the first answer token
      const rows = T - first;
      const [cos, sin] = model.decoder.rotary_embd.forward(0, T);
      const masks = attentionMasks(T, T, null);
      // causal mask of the drawn rows: row r (position first + r) sees positions <= first + r
      const causal = new Float32Array(rows * T).map((_, i) => (i % T <= first + Math.floor(i / T) ? 0 : -Infinity));
      const mask = tensor(causal, { shape: [1, 1, rows, T], device });
      const perLayer: Tensor[] = [];
      for (const block of model.decoder.blocks) {
        const attn = block.attn;
        const h = block.norm1.forward(x);
        const heads = (t: Tensor, n: number) => t.reshape([1, T, n, attn.headDim]).transpose(1, 2);
        let q = heads(attn.q_proj.forward(h), attn.nHeads); // (1, n_heads, T, hd)
        let k = heads(attn.k_proj.forward(h), attn.nKvHeads); // (1, n_kv_heads, T, hd)
        [q, k] = applyRotaryPosEmbd(q, k, cos, sin);
        k = repeatInterleave(k, attn.nKvGroups, 1); // query head h reads key head h / n_kv_groups
        const scores = q.slice(2, first).matmul(k.transpose(2, 3)).div(Math.sqrt(attn.headDim)); // (1, H, rows, T)
        const weights = softmax(scores.add(mask), -1);
        perLayer.push(weights.slice(3, 0, nImg).mean([0, 1, 2])); // (n_img)
        [x] = block.forward(x, cos, sin, masks, null); // the block as the model runs it
      }
      return perLayer;
    }),
  );
  const out: number[][] = [];
  for (const m of maps) {
    out.push(Array.from(await m.data())); // sync point: one small read per layer
    m.dispose();
  }
  return out;
}
