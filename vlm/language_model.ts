// The language model: a Llama-style decoder, as SmolLM2 (nanoVLM's
// models/language_model.py). Tokens (and, in the VLM, image embeddings) flow
// through blocks of causal self-attention and a gated MLP; RMSNorm keeps the
// activations in range; rotary embeddings tell attention how far apart two
// tokens are. Generation keeps a KV cache so each new token costs one pass
// over one position instead of the whole sequence.
//
// Reference: https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py

import { Dropout, Embedding, Linear, Module, RMSNorm, buffer, init } from '../nn/index.ts';
import { arange, cat, rope, scaledDotProductAttention, tensor, type Tensor } from '../tensor/index.ts';
import type { RawTensor } from '../nn/safetensors.ts';
import type { VLMConfig } from './config.ts';
import type { ModelFiles } from './pretrained.ts';

export { RMSNorm };

// The most negative float32: nanoVLM adds it to padded keys' logits rather
// than -inf, so a query whose keys are all padding still gets a finite softmax.
const FLOAT32_MIN = -3.4028234663852886e38;

/** The keys and values of one block: (B, n_kv_heads, T, head_dim) each. */
export interface KeysValues {
  k: Tensor;
  v: Tensor;
}

/** Keys and values of every earlier position, per block, so a new token attends without recomputing them. */
export interface KVCache {
  layers: (KeysValues | null)[];
  /** Number of positions already cached. */
  length: number;
}

/** An empty cache for a model of `nBlocks` blocks. */
export function emptyKVCache(nBlocks: number): KVCache {
  return { layers: Array(nBlocks).fill(null), length: 0 };
}

/** Frees a cache's tensors. */
export function disposeKVCache(cache: KVCache): void {
  for (const kv of cache.layers) {
    kv?.k.dispose();
    kv?.v.dispose();
  }
  cache.layers.fill(null);
}

/**
 * Rotary position embeddings (RoPE): instead of adding a position vector, each
 * pair of features in q and k is rotated by an angle proportional to the
 * position, so q . k depends only on the distance between the two tokens.
 *
 * nanoVLM: RotaryEmbedding in https://github.com/huggingface/nanoVLM/blob/30b842b/models/language_model.py
 * transformers: LlamaRotaryEmbedding in models/llama/modeling_llama.py
 */
export class RotaryEmbedding extends Module {
  inv_freq: Tensor;
  originalMaxSeqLen: number;
  attentionScaling: number;

  constructor(cfg: VLMConfig) {
    super();
    if (cfg.lm_hidden_dim % cfg.lm_n_heads !== 0) {
      throw new Error(`lm_hidden_dim (${cfg.lm_hidden_dim}) must be divisible by lm_n_heads (${cfg.lm_n_heads})`);
    }
    const dim = cfg.lm_hidden_dim / cfg.lm_n_heads;
    // RoPE rotates pairs of features (nanoVLM's cos/sin tables would not match an odd head dim)
    if (dim % 2 !== 0)
      throw new Error(`the language model's head dim (lm_hidden_dim / lm_n_heads = ${dim}) must be even`);
    // freq_i = 1 / base^(2i / dim): fast rotations for the first pairs, slow for the last
    const invFreq = Float32Array.from(
      { length: dim / 2 },
      (_, i) => 1 / Math.pow(cfg.lm_re_base, Math.fround((2 * i) / dim)),
    );
    this.inv_freq = buffer(tensor(invFreq));
    this.originalMaxSeqLen = cfg.lm_max_position_embeddings;
    this.attentionScaling = cfg.lm_attn_scaling;
  }

  /** cos and sin tables for positions start..start+T-1: each (T, head_dim). */
  forward(start: number, T: number): [Tensor, Tensor] {
    // positions beyond the trained range: slow every frequency down by the overshoot
    const maxSeq = start + T;
    const invFreq =
      maxSeq > this.originalMaxSeqLen ? this.inv_freq.div(maxSeq / this.originalMaxSeqLen) : this.inv_freq;
    const positions = arange(start, start + T, 1, { dtype: 'float32', device: this.inv_freq.device });
    const freqs = positions.unsqueeze(-1).mul(invFreq.unsqueeze(0)); // (T, head_dim / 2)
    const emb = cat([freqs, freqs], -1); // (T, head_dim)
    return [emb.cos().mul(this.attentionScaling), emb.sin().mul(this.attentionScaling)];
  }
}

/**
 * Rotates q and k by their positions' angles: nanoVLM's
 * q * cos + rotate_half(q) * sin, where rotate_half([x1, x2]) = [-x2, x1]
 * turns each pair (x[i], x[i + head_dim / 2]) by 90 degrees. One fused op
 * (tensor/ops.ts rope), the same arithmetic.
 */
export function applyRotaryPosEmbd(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor): [Tensor, Tensor] {
  return [rope(q, cos, sin), rope(k, cos, sin)];
}

/** Where the padding is: built once per forward pass, shared by every block. */
export interface AttentionMasks {
  /** Added to the attention scores: 0 at real keys, float32 min at padded ones: (B, 1, 1, Tk). */
  keyPadding: Tensor | null;
  /** Padded query positions, whose outputs are zeroed: (B, T, 1, 1). */
  queryPadding: Tensor | null;
}

/**
 * The masks for T new queries over Tk keys (the last T of which are the
 * queries themselves); attentionMask: (B, Tk), 1 = real token, 0 = padding.
 * The causal part (no token sees a later one) is the attention op's isCausal.
 */
export function attentionMasks(T: number, Tk: number, attentionMask: Tensor | null): AttentionMasks {
  if (!attentionMask) return { keyPadding: null, queryPadding: null };
  const B = attentionMask.shape[0];
  return {
    keyPadding: attentionMask.reshape([B, 1, 1, Tk]).float().neg().add(1).mul(FLOAT32_MIN), // (1 - m) * min
    queryPadding: attentionMask
      .slice(1, Tk - T)
      .reshape([B, T, 1, 1])
      .eq(0),
  };
}

/**
 * Causal self-attention with grouped queries: n_heads query heads share
 * n_kv_heads key/value heads (each K/V head serves n_heads / n_kv_heads query
 * heads), which shrinks the K/V projections and the cache.
 *
 * nanoVLM: LanguageModelGroupedQueryAttention in
 * https://github.com/huggingface/nanoVLM/blob/30b842b/models/language_model.py
 * transformers: LlamaAttention in models/llama/modeling_llama.py
 */
export class LanguageModelGroupedQueryAttention extends Module {
  nHeads: number;
  nKvHeads: number;
  nKvGroups: number;
  headDim: number;
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  out_proj: Linear;
  /** Dropout of the attention probabilities (nanoVLM's attn_dropout). */
  dropout: number;
  resid_dropout: Dropout;

  constructor(cfg: VLMConfig) {
    super();
    if (cfg.lm_n_heads % cfg.lm_n_kv_heads !== 0) {
      throw new Error(`lm_n_heads (${cfg.lm_n_heads}) must be divisible by lm_n_kv_heads (${cfg.lm_n_kv_heads})`);
    }
    this.nHeads = cfg.lm_n_heads;
    this.nKvHeads = cfg.lm_n_kv_heads;
    this.nKvGroups = cfg.lm_n_heads / cfg.lm_n_kv_heads;
    this.headDim = cfg.lm_hidden_dim / cfg.lm_n_heads;
    this.q_proj = new Linear(cfg.lm_hidden_dim, cfg.lm_hidden_dim, false);
    this.k_proj = new Linear(cfg.lm_hidden_dim, this.headDim * this.nKvHeads, false);
    this.v_proj = new Linear(cfg.lm_hidden_dim, this.headDim * this.nKvHeads, false);
    this.out_proj = new Linear(cfg.lm_hidden_dim, cfg.lm_hidden_dim, false);
    this.dropout = cfg.lm_dropout;
    this.resid_dropout = new Dropout(cfg.lm_dropout);
  }

  /**
   * x: (B, T, C) new positions; past: the keys/values of earlier positions (KV cache). Returns the output and
   * the keys/values of all positions, which the caller may cache.
   */
  forward(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    masks: AttentionMasks,
    past: KeysValues | null = null,
  ): [Tensor, KeysValues] {
    const [B, T, C] = x.shape;
    const heads = (t: Tensor, n: number) => t.reshape([B, T, n, this.headDim]).transpose(1, 2);
    let q = heads(this.q_proj.forward(x), this.nHeads); // (B, n_heads, T, hd)
    let k = heads(this.k_proj.forward(x), this.nKvHeads); // (B, n_kv_heads, T, hd)
    let v = heads(this.v_proj.forward(x), this.nKvHeads);
    [q, k] = applyRotaryPosEmbd(q, k, cos, sin);
    if (past) [k, v] = [cat([past.k, k], 2), cat([past.v, v], 2)]; // (B, n_kv, T_past + T, hd)
    // Each query mixes the values of the keys at or before its position, weighted by softmax(q . k / sqrt(hd));
    // query head h reads key/value head h / n_kv_groups. One fused kernel, no (T, Tk) weights in memory.
    const dropoutP = this.training ? this.dropout : 0;
    // (B, n_heads, T, hd)
    let y = scaledDotProductAttention(q, k, v, { attnMask: masks.keyPadding, isCausal: true, dropoutP });
    y = y.transpose(1, 2); // (B, T, n_heads, hd): free, the kernel wrote this layout
    // padded query positions output zeros (their attention rows are meaningless)
    if (masks.queryPadding) y = y.maskedFill(masks.queryPadding, 0);
    y = y.reshape([B, T, C]); // (B, T, C)
    return [this.resid_dropout.forward(this.out_proj.forward(y)), { k, v }];
  }
}

/**
 * SwiGLU: a SiLU-gated linear unit, down-projected back to the hidden size.
 *
 * nanoVLM: LanguageModelMLP in https://github.com/huggingface/nanoVLM/blob/30b842b/models/language_model.py
 * transformers: LlamaMLP in models/llama/modeling_llama.py
 */
export class LanguageModelMLP extends Module {
  gate_proj: Linear;
  up_proj: Linear;
  down_proj: Linear;

  constructor(cfg: VLMConfig) {
    super();
    this.gate_proj = new Linear(cfg.lm_hidden_dim, cfg.lm_inter_dim, false);
    this.up_proj = new Linear(cfg.lm_hidden_dim, cfg.lm_inter_dim, false);
    this.down_proj = new Linear(cfg.lm_inter_dim, cfg.lm_hidden_dim, false);
  }

  forward(x: Tensor): Tensor {
    return this.down_proj.forward(this.gate_proj.forward(x).silu().mul(this.up_proj.forward(x)));
  }
}

/**
 * Pre-norm decoder block with residual connections around attention and MLP.
 *
 * nanoVLM: LanguageModelBlock in https://github.com/huggingface/nanoVLM/blob/30b842b/models/language_model.py
 * transformers: LlamaDecoderLayer in models/llama/modeling_llama.py
 */
export class LanguageModelBlock extends Module {
  mlp: LanguageModelMLP;
  attn: LanguageModelGroupedQueryAttention;
  norm1: RMSNorm;
  norm2: RMSNorm;

  constructor(cfg: VLMConfig) {
    super();
    this.mlp = new LanguageModelMLP(cfg);
    this.attn = new LanguageModelGroupedQueryAttention(cfg);
    this.norm1 = new RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps);
    this.norm2 = new RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps);
  }

  forward(x: Tensor, cos: Tensor, sin: Tensor, masks: AttentionMasks, past: KeysValues | null): [Tensor, KeysValues] {
    const [attn, kv] = this.attn.forward(this.norm1.forward(x), cos, sin, masks, past);
    x = x.add(attn);
    return [x.add(this.mlp.forward(this.norm2.forward(x))), kv];
  }
}

/**
 * The decoder: embeddings in, final-normed hidden states (or logits with lm_use_tokens) out.
 *
 * nanoVLM: LanguageModel in https://github.com/huggingface/nanoVLM/blob/30b842b/models/language_model.py
 * transformers: LlamaModel and the LlamaForCausalLM head in models/llama/modeling_llama.py
 */
export class LanguageModel extends Module {
  lmUseTokens: boolean;
  token_embedding: Embedding;
  rotary_embd: RotaryEmbedding;
  blocks: LanguageModelBlock[];
  norm: RMSNorm;
  head: Linear;

  constructor(cfg: VLMConfig) {
    super();
    this.lmUseTokens = cfg.lm_use_tokens;
    this.token_embedding = new Embedding(cfg.lm_vocab_size, cfg.lm_hidden_dim);
    this.rotary_embd = new RotaryEmbedding(cfg);
    this.blocks = Array.from({ length: cfg.lm_n_blocks }, () => new LanguageModelBlock(cfg));
    this.norm = new RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps);
    this.head = new Linear(cfg.lm_hidden_dim, cfg.lm_vocab_size, false);
    // tying: the head scores each token by its similarity to that token's embedding
    if (cfg.lm_tie_weights) this.head.weight = this.token_embedding.weight;
  }

  /**
   * x: token ids (B, T) when lm_use_tokens, else embeddings (B, T, C). With a
   * cache, x holds only the new positions and attends to the cached ones.
   */
  forward(x: Tensor, attentionMask: Tensor | null = null, cache?: KVCache): Tensor {
    if (this.lmUseTokens) x = this.token_embedding.forward(x);
    const start = cache?.length ?? 0;
    const T = x.shape[1];
    // position ids run 0..T-1 for every sequence, padding included, as in nanoVLM
    const [cos, sin] = this.rotary_embd.forward(start, T);
    const masks = attentionMasks(T, start + T, attentionMask);
    this.blocks.forEach((block, i) => {
      const [out, kv] = block.forward(x, cos, sin, masks, cache?.layers[i] ?? null);
      x = out;
      if (!cache) return;
      // the cache owns its tensors: the old keys/values are replaced, the new ones outlive this pass's tidy()
      cache.layers[i]?.k.dispose();
      cache.layers[i]?.v.dispose();
      cache.layers[i] = { k: kv.k.keep(), v: kv.v.keep() };
    });
    if (cache) cache.length += T;
    x = this.norm.forward(x);
    return this.lmUseTokens ? this.head.forward(x) : x;
  }
}

/** nanoVLM's LanguageModel.from_pretrained, config half: the lm_ fields from a Llama config.json. */
export function lmConfigFromLlama(json: Record<string, unknown>, cfg: VLMConfig): VLMConfig {
  const h = json as Record<string, number | undefined>;
  const vocab = h.vocab_size ?? 32000;
  // our vocabulary may be larger than the file's (extra tokens), never smaller
  if (cfg.lm_vocab_size < vocab)
    throw new Error(`lm_vocab_size ${cfg.lm_vocab_size} is smaller than the model's vocabulary (${vocab})`);
  return {
    ...cfg,
    lm_hidden_dim: h.hidden_size ?? 4096,
    lm_inter_dim: h.intermediate_size ?? 11008,
    lm_rms_eps: h.rms_norm_eps ?? 1e-6,
    lm_re_base: h.rope_theta ?? 10000,
    lm_max_position_embeddings: h.max_position_embeddings ?? 2048,
    lm_n_heads: h.num_attention_heads ?? 32,
    lm_n_kv_heads: h.num_key_value_heads ?? h.num_attention_heads ?? 32,
    lm_dropout: h.attention_dropout ?? 0,
    lm_n_blocks: h.num_hidden_layers ?? 32,
  };
}

/**
 * nanoVLM's LanguageModel.from_pretrained, weights half: LlamaForCausalLM keys
 * renamed to ours. When our vocabulary is larger, the file's rows are copied
 * over the first rows of `init` (the freshly initialised embedding) and the
 * extra tokens keep their random init.
 */
export function llamaToLMStateDict(
  hf: Map<string, RawTensor>,
  cfg: VLMConfig,
  init: () => Float32Array,
): Map<string, RawTensor> {
  const missing: string[] = [];
  const get = (key: string): RawTensor | undefined => {
    const t = hf.get(key);
    if (!t) missing.push(key);
    return t;
  };
  const out = new Map<string, RawTensor>();
  const extend = (t: RawTensor | undefined): RawTensor | undefined => {
    if (!t || t.shape[0] === cfg.lm_vocab_size) return t;
    const data = init();
    data.set(t.data);
    return { dtype: 'float32', shape: [cfg.lm_vocab_size, t.shape[1]], data };
  };
  const set = (ours: string, t: RawTensor | undefined) => t && out.set(ours, t);
  set('token_embedding.weight', extend(get('model.embed_tokens.weight')));
  set('norm.weight', get('model.norm.weight'));
  const rename: [string, string][] = [
    ['self_attn.q_proj', 'attn.q_proj'],
    ['self_attn.k_proj', 'attn.k_proj'],
    ['self_attn.v_proj', 'attn.v_proj'],
    ['self_attn.o_proj', 'attn.out_proj'],
    ['mlp.gate_proj', 'mlp.gate_proj'],
    ['mlp.up_proj', 'mlp.up_proj'],
    ['mlp.down_proj', 'mlp.down_proj'],
    ['input_layernorm', 'norm1'],
    ['post_attention_layernorm', 'norm2'],
  ];
  for (let i = 0; i < cfg.lm_n_blocks; i++) {
    for (const [a, b] of rename) set(`blocks.${i}.${b}.weight`, get(`model.layers.${i}.${a}.weight`));
  }
  if (missing.length) throw new Error(`Llama weights: missing keys ${missing.join(', ')}`);
  // an untied checkpoint carries its own head
  if (!cfg.lm_tie_weights && hf.has('lm_head.weight')) set('head.weight', extend(hf.get('lm_head.weight')));
  return out;
}

/** Loads a SmolLM2 / Llama language model from a Hugging Face folder's files. */
export function lmFromPretrained(cfg: VLMConfig, files: ModelFiles): { cfg: VLMConfig; model: LanguageModel } {
  const lmCfg = lmConfigFromLlama(files.config, cfg);
  const model = init.skipInit(() => new LanguageModel(lmCfg)); // the file's weights replace these zeros...
  // ...except the rows of a vocabulary larger than the file's, which keep nanoVLM's init (normal, std 0.02)
  const fresh = () => init.normal(model.token_embedding.weight.shape, 0.02).dataSync() as Float32Array;
  try {
    const state = llamaToLMStateDict(files.weights, lmCfg, fresh);
    // the rotary frequencies are computed, not stored, in Hugging Face files
    state.set('rotary_embd.inv_freq', {
      dtype: 'float32',
      shape: model.rotary_embd.inv_freq.shape,
      data: model.rotary_embd.inv_freq.dataSync() as Float32Array,
    });
    if (!lmCfg.lm_tie_weights && !state.has('head.weight')) {
      const shape = model.head.weight.shape; // an untied head the file lacks starts from nanoVLM's init
      state.set('head.weight', { dtype: 'float32', shape, data: init.normal(shape, 0.02).dataSync() as Float32Array });
    }
    model.loadStateDict(state);
  } catch (e) {
    throw new Error(`${files.source}: ${(e as Error).message}`);
  }
  return { cfg: lmCfg, model };
}
