// The vision encoder: a SigLIP-style Vision Transformer (nanoVLM's
// models/vision_transformer.py). An image is cut into P x P patches, each
// patch becomes a vector (a strided conv), a learned position embedding says
// where it came from, and pre-LayerNorm transformer blocks let every patch
// attend to every other. The output is one vector per patch.
//
// Reference: https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/modeling_siglip.py

import { Conv2d, Dropout, GELU, LayerNorm, Linear, Module, init, parameter } from '../nn/index.ts';
import { cat, scaledDotProductAttention, zeros, type Tensor } from '../tensor/index.ts';
import type { RawTensor } from '../nn/safetensors.ts';
import type { VLMConfig } from './config.ts';
import type { ModelFiles } from './pretrained.ts';

/**
 * Patches -> vectors, plus a learned position embedding (and an optional CLS token).
 *
 * nanoVLM: ViTPatchEmbeddings in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_transformer.py
 * transformers: SiglipVisionEmbeddings in models/siglip/modeling_siglip.py
 */
export class ViTPatchEmbeddings extends Module {
  conv: Conv2d;
  cls_token: Tensor | null;
  position_embedding: Tensor;
  numPatches: number;

  constructor(cfg: VLMConfig) {
    super();
    // a ragged edge of the image (img_size not a multiple of patch_size) is not seen, as in a strided conv
    this.numPatches = Math.floor(cfg.vit_img_size / cfg.vit_patch_size) ** 2;
    // stride == kernel: each output position sees exactly one patch, no overlap
    this.conv = new Conv2d(3, cfg.vit_hidden_dim, cfg.vit_patch_size, cfg.vit_patch_size);
    this.cls_token = cfg.vit_cls_flag ? parameter(zeros([1, 1, cfg.vit_hidden_dim])) : null;
    const positions = this.numPatches + (cfg.vit_cls_flag ? 1 : 0);
    this.position_embedding = parameter(init.uniform([1, positions, cfg.vit_hidden_dim]));
  }

  forward(x: Tensor): Tensor {
    x = this.conv.forward(x); // (B, C, H/P, W/P)
    x = x.flatten(2).transpose(1, 2); // (B, num_patches, C)
    if (this.cls_token) x = cat([this.cls_token.expand([x.shape[0], -1, -1]), x], 1);
    return x.add(this.position_embedding);
  }
}

/**
 * Bidirectional multi-head self-attention with one fused q/k/v projection.
 *
 * nanoVLM: ViTMultiHeadAttention in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_transformer.py
 * transformers: SiglipAttention in models/siglip/modeling_siglip.py
 */
export class ViTMultiHeadAttention extends Module {
  nHeads: number;
  headDim: number;
  qkv_proj: Linear;
  out_proj: Linear;
  /** Dropout of the attention probabilities (nanoVLM's attn_dropout). */
  dropout: number;
  resid_dropout: Dropout;

  constructor(cfg: VLMConfig) {
    super();
    if (cfg.vit_hidden_dim % cfg.vit_n_heads !== 0) {
      throw new Error(`vit_hidden_dim (${cfg.vit_hidden_dim}) must be divisible by vit_n_heads (${cfg.vit_n_heads})`);
    }
    this.nHeads = cfg.vit_n_heads;
    this.headDim = cfg.vit_hidden_dim / cfg.vit_n_heads;
    this.qkv_proj = new Linear(cfg.vit_hidden_dim, 3 * cfg.vit_hidden_dim);
    this.out_proj = new Linear(cfg.vit_hidden_dim, cfg.vit_hidden_dim);
    this.dropout = cfg.vit_dropout;
    this.resid_dropout = new Dropout(cfg.vit_dropout);
  }

  forward(x: Tensor): Tensor {
    const [B, T, C] = x.shape;
    const heads = (t: Tensor) => t.reshape([B, T, this.nHeads, this.headDim]).transpose(1, 2); // (B, H, T, hd)
    const [q, k, v] = this.qkv_proj.forward(x).split(C, 2).map(heads);
    // Every patch mixes the values of all patches, weighted by softmax(q . k / sqrt(hd)) (dividing by sqrt(hd)
    // keeps the scores' variance near 1). One fused kernel: the (T, T) weights are never stored.
    const dropoutP = this.training ? this.dropout : 0;
    const y = scaledDotProductAttention(q, k, v, { dropoutP }).transpose(1, 2).reshape([B, T, C]); // (B, T, C)
    return this.resid_dropout.forward(this.out_proj.forward(y));
  }
}

/**
 * Two linear layers with a GELU between them: the per-patch "thinking" step.
 *
 * nanoVLM: ViTMLP in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_transformer.py
 * transformers: SiglipMLP in models/siglip/modeling_siglip.py
 */
export class ViTMLP extends Module {
  activation_fn = new GELU();
  fc1: Linear;
  fc2: Linear;
  dropout: Dropout;

  constructor(cfg: VLMConfig) {
    super();
    this.fc1 = new Linear(cfg.vit_hidden_dim, cfg.vit_inter_dim);
    this.fc2 = new Linear(cfg.vit_inter_dim, cfg.vit_hidden_dim);
    this.dropout = new Dropout(cfg.vit_dropout);
  }

  forward(x: Tensor): Tensor {
    return this.dropout.forward(this.fc2.forward(this.activation_fn.forward(this.fc1.forward(x))));
  }
}

/**
 * Pre-LN transformer block: normalise, attend, add; normalise, MLP, add.
 *
 * nanoVLM: ViTBlock in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_transformer.py
 * transformers: SiglipEncoderLayer in models/siglip/modeling_siglip.py
 */
export class ViTBlock extends Module {
  ln1: LayerNorm;
  attn: ViTMultiHeadAttention;
  ln2: LayerNorm;
  mlp: ViTMLP;

  constructor(cfg: VLMConfig) {
    super();
    this.ln1 = new LayerNorm(cfg.vit_hidden_dim, cfg.vit_ln_eps);
    this.attn = new ViTMultiHeadAttention(cfg);
    this.ln2 = new LayerNorm(cfg.vit_hidden_dim, cfg.vit_ln_eps);
    this.mlp = new ViTMLP(cfg);
  }

  forward(x: Tensor): Tensor {
    x = x.add(this.attn.forward(this.ln1.forward(x)));
    return x.add(this.mlp.forward(this.ln2.forward(x)));
  }
}

/**
 * The vision encoder: images (B, 3, S, S) -> patch vectors (B, num_patches, vit_hidden_dim).
 *
 * nanoVLM: ViT in https://github.com/huggingface/nanoVLM/blob/30b842b/models/vision_transformer.py
 * transformers: SiglipVisionTransformer in models/siglip/modeling_siglip.py
 */
export class ViT extends Module {
  patch_embedding: ViTPatchEmbeddings;
  clsFlag: boolean;
  dropout: Dropout;
  blocks: ViTBlock[];
  layer_norm: LayerNorm;

  constructor(cfg: VLMConfig) {
    super();
    this.patch_embedding = new ViTPatchEmbeddings(cfg);
    this.clsFlag = cfg.vit_cls_flag;
    this.dropout = new Dropout(cfg.vit_dropout);
    this.blocks = Array.from({ length: cfg.vit_n_blocks }, () => new ViTBlock(cfg));
    this.layer_norm = new LayerNorm(cfg.vit_hidden_dim, cfg.vit_ln_eps);
  }

  forward(x: Tensor): Tensor {
    x = this.dropout.forward(this.patch_embedding.forward(x));
    for (const block of this.blocks) x = block.forward(x);
    // with a CLS token only its vector summarises the image; SigLIP keeps every patch
    return this.layer_norm.forward(this.clsFlag ? x.slice(1, 0, 1).squeeze(1) : x);
  }
}

/**
 * nanoVLM's ViT.from_pretrained, config half: the vit_ fields from a SigLIP
 * config.json (a SiglipModel's nested vision_config, or a flat
 * SiglipVisionModel config). Absent fields take SigLIP's defaults.
 */
export function vitConfigFromSiglip(json: Record<string, unknown>, cfg: VLMConfig): VLMConfig {
  const v = (json.vision_config ?? json) as Record<string, number | undefined>;
  return {
    ...cfg,
    vit_dropout: v.attention_dropout ?? 0,
    vit_hidden_dim: v.hidden_size ?? 768,
    vit_img_size: v.image_size ?? 224,
    vit_inter_dim: v.intermediate_size ?? 3072,
    vit_ln_eps: v.layer_norm_eps ?? 1e-6,
    vit_n_heads: v.num_attention_heads ?? 12,
    vit_n_blocks: v.num_hidden_layers ?? 12,
    vit_patch_size: v.patch_size ?? 16,
  };
}

/**
 * nanoVLM's ViT.from_pretrained, weights half: SigLIP's vision tower renamed
 * to our keys. SigLIP keeps q, k and v separate; we stack them into one qkv
 * projection (one matmul instead of three). The text tower and the pooling
 * head are not needed and are ignored.
 */
export function siglipToViTStateDict(hf: Map<string, RawTensor>, cfg: VLMConfig): Map<string, RawTensor> {
  const p = 'vision_model.';
  const missing: string[] = [];
  const get = (key: string): RawTensor => {
    const t = hf.get(p + key);
    if (!t) missing.push(p + key);
    return t ?? { dtype: 'float32', shape: [0], data: new Float32Array(0) };
  };
  const out = new Map<string, RawTensor>([
    ['patch_embedding.conv.weight', get('embeddings.patch_embedding.weight')],
    ['patch_embedding.conv.bias', get('embeddings.patch_embedding.bias')],
    ['layer_norm.weight', get('post_layernorm.weight')],
    ['layer_norm.bias', get('post_layernorm.bias')],
  ]);
  const pos = get('embeddings.position_embedding.weight');
  // (1, N, C): nanoVLM keeps a batch dim
  out.set('patch_embedding.position_embedding', { ...pos, shape: [1, ...pos.shape] });
  for (let i = 0; i < cfg.vit_n_blocks; i++) {
    const [src, dst] = [`encoder.layers.${i}.`, `blocks.${i}.`];
    const rename: [string, string][] = [
      ['layer_norm1', 'ln1'],
      ['layer_norm2', 'ln2'],
      ['mlp.fc1', 'mlp.fc1'],
      ['mlp.fc2', 'mlp.fc2'],
      ['self_attn.out_proj', 'attn.out_proj'],
    ];
    for (const [a, b] of rename) for (const w of ['weight', 'bias']) out.set(`${dst}${b}.${w}`, get(`${src}${a}.${w}`));
    for (const w of ['weight', 'bias']) {
      const parts = ['q', 'k', 'v'].map((n) => get(`${src}self_attn.${n}_proj.${w}`));
      const data = new Float32Array(parts.reduce((n, t) => n + t.data.length, 0));
      let at = 0;
      for (const t of parts) {
        data.set(t.data, at);
        at += t.data.length;
      }
      out.set(`${dst}attn.qkv_proj.${w}`, {
        dtype: 'float32',
        shape: [3 * parts[0].shape[0], ...parts[0].shape.slice(1)],
        data,
      });
    }
  }
  if (missing.length) throw new Error(`SigLIP weights: missing keys ${missing.join(', ')}`);
  return out;
}

/** Loads a SigLIP vision tower from a Hugging Face folder's files; returns the config it implies and the model. */
export function vitFromPretrained(cfg: VLMConfig, files: ModelFiles): { cfg: VLMConfig; model: ViT } {
  const vitCfg = vitConfigFromSiglip(files.config, cfg);
  const model = init.skipInit(() => new ViT(vitCfg)); // every weight comes from the file
  try {
    model.loadStateDict(siglipToViTStateDict(files.weights, vitCfg));
  } catch (e) {
    throw new Error(`${files.source}: ${(e as Error).message}`);
  }
  return { cfg: vitCfg, model };
}
