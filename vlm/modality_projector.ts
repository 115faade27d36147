// The bridge from vision to language (nanoVLM's models/modality_projector.py).
// The ViT gives one vector per patch (196 for a 224px image), too many tokens
// for a small language model's context. Pixel shuffle trades sequence length
// for width: each s x s group of neighbouring patches is folded into one
// token s^2 times wider (196 -> 49 tokens at s = 2), then one linear layer
// maps that width to the language model's hidden size.
//
// Reference: https://github.com/huggingface/smollm/blob/main/vision/m4/models/vllama3/modeling_vllama3.py#L1281

import { Linear, Module } from '../nn/index.ts';
import type { Tensor } from '../tensor/index.ts';
import type { VLMConfig } from './config.ts';

/**
 * Pixel shuffle + a linear projection into the language model's embedding space.
 *
 * nanoVLM: ModalityProjector in https://github.com/huggingface/nanoVLM/blob/30b842b/models/modality_projector.py
 * transformers: Idefics3Connector in models/idefics3/modeling_idefics3.py
 */
export class ModalityProjector extends Module {
  scaleFactor: number;
  proj: Linear;

  constructor(cfg: VLMConfig) {
    super();
    // nanoVLM asserts these when the first image arrives; we say so before any weight is built
    if (cfg.vit_cls_flag)
      throw new Error(
        'vit_cls_flag: the projector needs every patch vector, but a ViT with a CLS token returns one vector',
      );
    const side = Math.floor(cfg.vit_img_size / cfg.vit_patch_size);
    if (side % cfg.mp_pixel_shuffle_factor !== 0) {
      throw new Error(
        `mp_pixel_shuffle_factor (${cfg.mp_pixel_shuffle_factor}) must divide the ${side}x${side} patch grid ` +
          `(vit_img_size ${cfg.vit_img_size} / vit_patch_size ${cfg.vit_patch_size})`,
      );
    }
    this.scaleFactor = cfg.mp_pixel_shuffle_factor;
    const inputDim = cfg.vit_hidden_dim * this.scaleFactor ** 2;
    this.proj = new Linear(inputDim, cfg.lm_hidden_dim, false);
  }

  /** (B, S, D) -> (B, S / s^2, D * s^2), folding s x s neighbourhoods of the patch grid. */
  pixelShuffle(x: Tensor): Tensor {
    const [B, seq, D] = x.shape;
    const side = Math.round(Math.sqrt(seq));
    const s = this.scaleFactor;
    if (side * side !== seq) throw new Error(`pixel shuffle: ${seq} patches do not form a square grid`);
    if (side % s !== 0) throw new Error(`pixel shuffle: a ${side}x${side} grid is not divisible by the factor ${s}`);
    const out = side / s;
    return x
      .reshape([B, out, s, out, s, D]) // (B, h_out, s, w_out, s, D)
      .permute(0, 1, 3, 2, 4, 5) // (B, h_out, w_out, s, s, D): the s x s block becomes adjacent
      .reshape([B, out * out, D * s * s]); // (B, S / s^2, D * s^2)
  }

  forward(x: Tensor): Tensor {
    return this.proj.forward(this.pixelShuffle(x));
  }
}
