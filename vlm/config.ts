// nanoVLM's configuration (models/config.py): one flat object whose field
// prefixes say which part owns a value (vit_ vision encoder, lm_ language
// model, mp_ modality projector). Field names are snake_case because they are
// the keys of nanoVLM's config.json, which we read and write unchanged.

/** The model's shape and backbones. Defaults are nanoVLM-222M's. */
export interface VLMConfig {
  vit_hidden_dim: number;
  vit_inter_dim: number;
  vit_patch_size: number;
  vit_img_size: number;
  vit_n_heads: number;
  vit_dropout: number;
  vit_n_blocks: number;
  vit_ln_eps: number;
  vit_cls_flag: boolean;
  vit_model_type: string;

  lm_hidden_dim: number;
  lm_inter_dim: number;
  lm_rms_eps: number;
  lm_re_base: number;
  lm_max_position_embeddings: number;
  lm_vocab_size: number;
  lm_n_heads: number;
  lm_n_kv_heads: number;
  lm_dropout: number;
  lm_n_blocks: number;
  lm_attn_scaling: number;
  IMAGE_TOKEN_LENGTH: number;
  TOTAL_SEQUENCE_LENGTH: number;
  lm_max_length: number;
  lm_use_tokens: boolean;
  lm_tie_weights: boolean;
  lm_model_type: string;
  lm_tokenizer: string;
  lm_eos_token_id: number;

  mp_pixel_shuffle_factor: number;

  vlm_load_backbone_weights: boolean;
  vlm_checkpoint_path: string;
  hf_repo_name: string;
}

/** nanoVLM-222M: SigLIP-B/16 at 224px + SmolLM2-135M, 49 image tokens. */
export const defaultVLMConfig: VLMConfig = {
  vit_hidden_dim: 768,
  vit_inter_dim: 4 * 768,
  vit_patch_size: 16,
  vit_img_size: 224,
  vit_n_heads: 12,
  vit_dropout: 0.0,
  vit_n_blocks: 12,
  vit_ln_eps: 1e-6,
  vit_cls_flag: false,
  vit_model_type: 'google/siglip-base-patch16-224',

  lm_hidden_dim: 576,
  lm_inter_dim: 1536,
  lm_rms_eps: 1e-5,
  lm_re_base: 100000,
  lm_max_position_embeddings: 8192,
  lm_vocab_size: 49152,
  lm_n_heads: 9,
  lm_n_kv_heads: 3,
  lm_dropout: 0.0,
  lm_n_blocks: 30,
  lm_attn_scaling: 1.0,
  IMAGE_TOKEN_LENGTH: 49,
  TOTAL_SEQUENCE_LENGTH: 128,
  lm_max_length: 128 - 49, // the text budget: total sequence minus the image tokens
  lm_use_tokens: false,
  lm_tie_weights: true,
  lm_model_type: 'HuggingFaceTB/SmolLM2-135M',
  lm_tokenizer: 'HuggingFaceTB/cosmo2-tokenizer',
  lm_eos_token_id: 0,

  mp_pixel_shuffle_factor: 2,

  vlm_load_backbone_weights: true,
  vlm_checkpoint_path: 'checkpoints/nanoVLM-222M',
  hf_repo_name: 'nanoVLM',
};

// Keys that only nanoVLM v0.2 and later write. Those versions put the image embeddings in place of
// <|image|> tokens inside a chat template, add tokens to the vocabulary and cut large images into tiles:
// the same weight names, but another model. Loading one into the blog-era model would run silently wrong.
const LATER_VERSION_KEYS = [
  'extra_token_amount',
  'lm_base_vocab_size',
  'lm_chat_template',
  'vlm_extra_tokens',
  'mp_image_token_length',
  'max_img_size',
];

/**
 * A config from a parsed config.json: missing keys take the defaults, unknown
 * keys are reported (once, through `warn`) and ignored, and a value of the
 * wrong type is an error naming the key. A later nanoVLM's config is refused.
 */
export function vlmConfigFromJSON(
  json: Record<string, unknown>,
  source = 'config.json',
  warn: (msg: string) => void = console.warn,
): VLMConfig {
  const later = LATER_VERSION_KEYS.filter((key) => key in json);
  if (later.length) {
    throw new Error(
      `${source}: this checkpoint comes from nanoVLM v0.2 or later (it has ${later.join(', ')}: image tokens in a ` +
        'chat template, extra vocabulary, image tiling); ' +
        'nanovlm-ts supports the blog-era nanoVLM (v0.1, e.g. nanoVLM-222M)',
    );
  }
  const cfg: VLMConfig = { ...defaultVLMConfig };
  const unknown: string[] = [];
  for (const [key, value] of Object.entries(json)) {
    if (!(key in defaultVLMConfig)) {
      unknown.push(key);
      continue;
    }
    const expected = typeof defaultVLMConfig[key as keyof VLMConfig];
    if (typeof value !== expected)
      throw new Error(`${source}: ${key} should be a ${expected}, got ${JSON.stringify(value)}`);
    (cfg as unknown as Record<string, unknown>)[key] = value;
  }
  if (unknown.length) warn(`${source}: ignoring unknown keys ${unknown.join(', ')}`);
  return cfg;
}

// Fields that are floats in nanoVLM's dataclass: Python's json writes them as 0.0 and 1e-06.
const FLOAT_FIELDS = new Set(['vit_dropout', 'vit_ln_eps', 'lm_rms_eps', 'lm_dropout', 'lm_attn_scaling']);

/** A number as Python's repr(float) prints it, so our config.json is byte-identical to nanoVLM's. */
function pythonFloat(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return `${x}.0`;
  if (x !== 0 && (Math.abs(x) < 1e-4 || Math.abs(x) >= 1e16)) {
    return x.toExponential().replace(/e([+-])(\d)$/, 'e$10$2'); // 1e-6 -> 1e-06
  }
  return String(x);
}

/** The config.json text nanoVLM writes (json.dumps(asdict(cfg), indent=4)). */
export function vlmConfigToJSON(cfg: VLMConfig): string {
  const lines = Object.keys(defaultVLMConfig).map((key) => {
    const value = cfg[key as keyof VLMConfig];
    const text = FLOAT_FIELDS.has(key) ? pythonFloat(value as number) : JSON.stringify(value);
    return `    ${JSON.stringify(key)}: ${text}`;
  });
  return `{\n${lines.join(',\n')}\n}`;
}
