// The whole VLM (nanoVLM's models/vision_language_model.py). Reading order:
//   image -> vision_encoder (ViT, vision_transformer.ts): one vector per patch
//         -> MP (ModalityProjector, modality_projector.ts): fewer, LM-sized vectors
//   text  -> decoder.token_embedding: one vector per token
//   [image vectors, text vectors] -> decoder (LanguageModel, language_model.ts)
//         -> decoder.head: next-token logits; the loss only counts text positions.

import { Module, init } from '../nn/index.ts';
import { serialize } from '../nn/safetensors.ts';
import { toWriteTensors } from '../nn/state.ts';
import {
  Generator,
  cat,
  crossEntropy,
  noGrad,
  ones,
  tensor,
  tidy,
  type DeviceName,
  type Tensor,
} from '../tensor/index.ts';
import { type VLMConfig, vlmConfigFromJSON, vlmConfigToJSON } from './config.ts';
import { LanguageModel, disposeKVCache, emptyKVCache, lmFromPretrained } from './language_model.ts';
import { ModalityProjector } from './modality_projector.ts';
import type { FolderFiles, ModelFiles } from './pretrained.ts';
import { topKTopPFiltering, sampleToken } from './utils.ts';
import { ViT, vitFromPretrained } from './vision_transformer.ts';

/** Options of generate(); defaults are nanoVLM's. */
export interface GenerateOptions {
  maxNewTokens?: number;
  greedy?: boolean;
  topK?: number;
  topP?: number;
  temperature?: number;
  /** Seeded sampling: the same generator state gives the same tokens. */
  generator?: Generator;
  /** A sequence that produced this token is finished (later positions repeat it); null: never stop. */
  eosTokenId?: number | null;
  /** Reuse keys/values of earlier positions (default); false re-runs the whole sequence per token. */
  kvCache?: boolean;
  /** Called after each step with the chosen token of every sequence (for streaming). */
  onTokens?: (tokens: number[], step: number) => void;
  /** Also return the logits that chose each token ([steps][B * V]). */
  returnLogits?: boolean;
}

/**
 * The vision-language model: ViT + modality projector + language model.
 *
 * nanoVLM: VisionLanguageModel in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_language_model.py
 */
export class VisionLanguageModel extends Module {
  cfg: VLMConfig;
  vision_encoder: ViT;
  decoder: LanguageModel;
  MP: ModalityProjector;

  /** A randomly initialised VLM, or one around already loaded backbones. */
  constructor(cfg: VLMConfig, backbones?: { vision_encoder: ViT; decoder: LanguageModel }) {
    super();
    this.cfg = cfg;
    this.vision_encoder = backbones?.vision_encoder ?? new ViT(cfg);
    this.decoder = backbones?.decoder ?? new LanguageModel(cfg);
    this.MP = new ModalityProjector(cfg);
  }

  /**
   * nanoVLM with load_backbone=True: SigLIP and SmolLM2 weights from Hugging Face
   * folders' files; their configs override the vit_ and lm_ fields. Only the
   * projector starts from random weights.
   */
  static fromBackbones(cfg: VLMConfig, vit: ModelFiles, lm: ModelFiles): VisionLanguageModel {
    const v = vitFromPretrained(cfg, vit);
    const l = lmFromPretrained(v.cfg, lm);
    return new VisionLanguageModel(l.cfg, { vision_encoder: v.model, decoder: l.model });
  }

  /**
   * Loads a checkpoint saved by nanoVLM's save_pretrained (or ours), given its files
   * (config.json + model.safetensors, parsed): node/model_folder.ts reads them from disk,
   * the web page from dropped files.
   */
  static fromPretrained(files: ModelFiles): VisionLanguageModel {
    const { source } = files;
    let model: VisionLanguageModel;
    try {
      const cfg = vlmConfigFromJSON(files.config, `${source}/config.json`);
      model = init.skipInit(() => new VisionLanguageModel(cfg)); // every weight comes from the file
    } catch (e) {
      const message = (e as Error).message;
      throw new Error(message.startsWith(source) ? message : `${source}/config.json: ${message}`);
    }
    try {
      model.loadStateDict(files.weights);
    } catch (e) {
      throw new Error(`${source}/model.safetensors: ${(e as Error).message}`);
    }
    return model;
  }

  /**
   * The files nanoVLM's save_pretrained writes (tied weights once), as data: config.json's text
   * and model.safetensors' bytes. node/model_folder.ts's writeModelFolder puts them on disk.
   */
  async savePretrained(): Promise<FolderFiles> {
    const weights = await toWriteTensors(this.stateDictForSaving()); // sync point: reads the weights back
    // the weights first: a folder whose config.json is new has its new weights too
    return { 'model.safetensors': serialize(weights, { format: 'pt' }), 'config.json': vlmConfigToJSON(this.cfg) };
  }

  /** Where the parameters live. */
  get device(): DeviceName {
    return this.MP.proj.weight.device;
  }

  /** Image tokens followed by text tokens, and the mask extended to cover the image (always attended). */
  private embed(inputIds: Tensor, image: Tensor, attentionMask: Tensor | null): [Tensor, Tensor | null] {
    const imageEmbd = this.MP.forward(this.vision_encoder.forward(image)); // (B, n_img, C)
    const tokenEmbd = this.decoder.token_embedding.forward(inputIds); // (B, T, C)
    const combined = cat([imageEmbd, tokenEmbd], 1); // (B, n_img + T, C)
    if (!attentionMask) return [combined, null];
    const [B, nImg] = imageEmbd.shape;
    const imageMask = ones([B, nImg], { dtype: attentionMask.dtype, device: attentionMask.device });
    return [combined, cat([imageMask, attentionMask], 1)];
  }

  /**
   * input_ids (B, T) int32, image (B, 3, S, S), attention_mask (B, T) 1/0,
   * targets (B, T) with -100 where ignored. Returns the text positions'
   * logits (B, T, V) and, with targets, the mean cross-entropy.
   */
  forward(
    inputIds: Tensor,
    image: Tensor,
    attentionMask: Tensor | null = null,
    targets: Tensor | null = null,
  ): { logits: Tensor; loss: Tensor | null } {
    const [combined, mask] = this.embed(inputIds, image, attentionMask);
    const hidden = this.decoder.forward(combined, mask); // (B, n_img + T, C)
    const nImg = combined.shape[1] - inputIds.shape[1];
    // only text positions predict tokens: drop the image positions before the (large) head
    const logits = this.decoder.head.forward(hidden.slice(1, nImg)); // (B, T, V)
    const loss = targets ? crossEntropy(logits, targets) : null;
    return { logits, loss };
  }

  /**
   * Autoregressive generation: one prefill pass over image + prompt, then one
   * position per step with the KV cache. Returns the new tokens per sequence.
   */
  async generate(
    inputIds: Tensor,
    image: Tensor,
    attentionMask: Tensor | null = null,
    opts: GenerateOptions = {},
  ): Promise<{ tokens: number[][]; logits: Float32Array[] }> {
    const { maxNewTokens = 5, greedy = false, topK = 50, topP = 0.9, temperature = 0.5 } = opts;
    const { generator = new Generator(0), eosTokenId = this.cfg.lm_eos_token_id, kvCache = true } = opts;
    const B = inputIds.shape[0];
    const tokens: number[][] = Array.from({ length: B }, () => []);
    const stepLogits: Float32Array[] = [];
    let cache = kvCache ? emptyKVCache(this.cfg.lm_n_blocks) : null;
    // the whole sequence so far (image + prompt + generated), and the part the cache has not seen yet
    let [sequence, mask] = noGrad(() => tidy(() => this.embed(inputIds, image, attentionMask)));
    let unseen = sequence;
    const finished = new Array<boolean>(B).fill(false);
    try {
      for (let step = 0; step < maxNewTokens && !finished.every(Boolean); step++) {
        // Past lm_max_position_embeddings, nanoVLM's RoPE slows the rotation of *every* position by
        // T / max_position_embeddings, a factor that grows with each new token. The cached keys were
        // rotated at the old factor, and every later layer's keys depend on them: no cache can follow.
        // So from there on we recompute the whole sequence at each step, as nanoVLM always does.
        if (cache && sequence.shape[1] > this.cfg.lm_max_position_embeddings) {
          disposeKVCache(cache);
          cache = null;
        }
        const input = cache ? unseen : sequence;
        const last = noGrad(() =>
          tidy(() => {
            const hidden = this.decoder.forward(input, mask, cache ?? undefined);
            return this.decoder.head.forward(hidden.slice(1, -1).squeeze(1)); // (B, V)
          }),
        );
        const logits = (await last.data()) as Float32Array; // sync point: one read per generated token
        last.dispose();
        if (opts.returnLogits) stepLogits.push(logits.slice());
        const V = logits.length / B;
        const next = tokens.map((_, b) => {
          if (finished[b]) return eosTokenId ?? 0;
          const row = logits.slice(b * V, (b + 1) * V);
          return greedy ? argmax(row) : sampleToken(topKTopPFiltering(row, topK, topP), temperature, generator);
        });
        next.forEach((t, b) => {
          tokens[b].push(t);
          if (t === eosTokenId) finished[b] = true;
        });
        opts.onTokens?.(next, step);
        const [embd, longer, nextMask] = noGrad(() =>
          tidy(() => {
            const ids = tensor(new Int32Array(next), { shape: [B, 1], device: this.device });
            const e = this.decoder.token_embedding.forward(ids); // (B, 1, C)
            const m = mask ? cat([mask, ones([B, 1], { dtype: mask.dtype, device: mask.device })], 1) : null;
            return [e, cat([sequence, e], 1), m] as [Tensor, Tensor, Tensor | null];
          }),
        );
        if (unseen !== sequence) unseen.dispose();
        sequence.dispose();
        mask?.dispose();
        [unseen, sequence, mask] = [embd, longer, nextMask];
      }
    } finally {
      if (unseen !== sequence) unseen.dispose();
      sequence.dispose();
      mask?.dispose();
      if (cache) disposeKVCache(cache);
    }
    return { tokens, logits: stepLogits };
  }
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}
