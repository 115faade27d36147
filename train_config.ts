// Every flag of train.ts, declared once (cli.ts turns the tables into parsing, range checks and
// --help): the run's inputs and outputs, the training hyperparameters (nanoVLM's TrainConfig in
// models/config.py), the model's shape (VLMConfig, vlm/config.ts), and the presets that give
// them starting values. A run's values are the defaults, then its preset's, then the flags given;
// --resume takes the values stored with the run instead. Nothing here touches the disk (configure(), in
// run_state.ts, checks --out), so the web page reads the presets too.

import { UsageError, defaultsOf, defineFlags, deviceFlags, helpText, type FlagValues } from './cli.ts';
import { defaultVLMConfig, type VLMConfig } from './vlm/config.ts';

// What a resumed run may change: how fast it goes, not what it computes.
const CHANGEABLE_ON_RESUME = ['max_minutes', 'device', 'adapter', 'cpu_kernels', 'threads', 'num_workers'];
const changeable = CHANGEABLE_ON_RESUME.map((name) => `--${name}`).join(' ');

/** Where the data and the backbones come from, where the run goes, what it runs on. */
export const runFlags = defineFlags({
  preset: {
    type: 'string',
    default: 'default',
    choices: ['default', 'nanovlm-222m'],
    help: 'starting values of the flags: a small VLM on the built-in shapes data, or SigLIP-B/16 + SmolLM2-135M',
  },
  vit: { type: 'string', metavar: 'PATH', help: 'pretrained SigLIP folder (Hugging Face format): the vision backbone' },
  lm: { type: 'string', metavar: 'PATH', help: 'pretrained SmolLM2 / Llama folder for the language backbone' },
  tokenizer: {
    type: 'string',
    metavar: 'PATH',
    help: "folder with tokenizer.json (default: the --lm folder's; without --lm, one of the training text's words)",
  },
  train_data: {
    type: 'strings',
    help: 'parquet (the cauldron) or JSONL files, or folders of them (default: the built-in shapes set)',
  },
  val_data: { type: 'strings', help: 'validation files (default: --val_ratio of the training rows)' },
  test_data: {
    type: 'string',
    metavar: 'PATH',
    help: 'held-out VQA file, scored by exact-match accuracy at each evaluation',
  },
  mmstar: { type: 'string', metavar: 'PATH', help: 'MMStar parquet: multiple-choice accuracy at each evaluation' },
  out: {
    type: 'string',
    default: 'checkpoints/default',
    metavar: 'DIR',
    help: 'run folder: best checkpoint, metrics.jsonl, loss.svg, resume/. A folder holding a run is refused',
  },
  resume: {
    type: 'switch',
    help: `continue the run in --out where it stopped, with its flags (only ${changeable} may change)`,
  },
  overwrite: { type: 'switch', help: 'replace the run in --out: its checkpoint, metrics and resume state are deleted' },
  ...deviceFlags,
});

/** How to train: nanoVLM's TrainConfig, plus what a local run needs. */
export const trainFlags = defineFlags({
  lr_mp: {
    type: 'float',
    default: 2e-3,
    min: 0,
    help: 'peak learning rate of the projector (it starts random: it may move fast)',
  },
  lr_backbones: {
    type: 'float',
    default: 1e-4,
    min: 0,
    help: 'peak learning rate of the ViT and the decoder (pretrained: small steps, so they are not wrecked early)',
  },
  batch_size: { type: 'int', default: 256, min: 1, help: 'samples per micro-batch' },
  gradient_accumulation_steps: { type: 'int', default: 1, min: 1, help: 'micro-batches per optimizer step' },
  freeze: {
    type: 'string',
    default: '',
    metavar: 'PARTS',
    help:
      'parts that do not train, comma-separated from vit, mp, lm (vit,lm: the projector alone); ' +
      'they get no gradients and no optimizer state',
  },
  max_steps: {
    type: 'int',
    default: 0,
    min: 0,
    help:
      'optimizer steps; the learning rate warms up over the first 3% and decays to a tenth by the last ' +
      '(0: --epochs passes over the training set)',
  },
  epochs: { type: 'int', default: 5, min: 1, help: 'passes over the training set, used when --max_steps is 0' },
  max_minutes: {
    type: 'float',
    default: 0,
    min: 0,
    help: 'stop after this many minutes, evaluating and saving first (0: no limit)',
  },
  dtype: {
    type: 'string',
    default: 'float32',
    choices: ['float32', 'float16'],
    help:
      'float16: mixed precision, every matmul on float16 operands (float32 sums, weights and the rest) ' +
      'with dynamic loss scaling (tensor/mixed_precision.ts); WebGPU only',
  },
  max_grad_norm: {
    type: 'float',
    default: 0,
    min: 0,
    help: "clip the gradients' global L2 norm to this (0: no clipping)",
  },
  eval_interval: {
    type: 'int',
    default: 250,
    min: 1,
    help: 'steps between evaluations (each saves the best checkpoint and resume/)',
  },
  val_ratio: {
    type: 'float',
    default: 0.01,
    above: 0,
    below: 1,
    help: 'share of the training rows kept for validation when there is no --val_data (at least one row)',
  },
  data_cutoff_idx: { type: 'int', default: 0, min: 0, help: 'use at most this many rows of --train_data (0: all)' },
  mmstar_batch_size: { type: 'int', default: 32, min: 1, help: 'batch size of the MMStar evaluation' },
  seed: {
    type: 'int',
    default: 0,
    min: 0,
    max: 2 ** 32 - 1,
    help: 'seed of the initial weights, the data order and the split',
  },
  num_workers: { type: 'int', default: 0, min: 0, help: 'threads decoding images beside the training step (0: none)' },
  builtin_train_size: { type: 'int', default: 20000, min: 1, help: 'samples in the built-in training set' },
  builtin_val_size: { type: 'int', default: 500, min: 1, help: 'samples in the built-in validation set' },
});

const d = defaultVLMConfig;
/** The model's shape: nanoVLM's config.json fields (IMAGE_TOKEN_LENGTH and TOTAL_SEQUENCE_LENGTH follow from them). */
export const modelFlags = defineFlags({
  vit_img_size: { type: 'int', default: d.vit_img_size, min: 1, help: 'images are resized to this side in pixels' },
  vit_patch_size: { type: 'int', default: d.vit_patch_size, min: 1, help: 'side of the patches the image is cut into' },
  vit_hidden_dim: { type: 'int', default: d.vit_hidden_dim, min: 1, help: 'ViT width' },
  vit_inter_dim: { type: 'int', default: d.vit_inter_dim, min: 1, help: 'ViT MLP width' },
  vit_n_heads: { type: 'int', default: d.vit_n_heads, min: 1, help: 'ViT attention heads' },
  vit_n_blocks: { type: 'int', default: d.vit_n_blocks, min: 1, help: 'ViT blocks' },
  vit_dropout: { type: 'float', default: d.vit_dropout, min: 0, below: 1, help: 'ViT dropout probability' },
  vit_ln_eps: { type: 'float', default: d.vit_ln_eps, above: 0, help: 'ViT LayerNorm epsilon' },
  mp_pixel_shuffle_factor: {
    type: 'int',
    default: d.mp_pixel_shuffle_factor,
    min: 1,
    help: 'the projector merges f x f patches into one token',
  },
  lm_hidden_dim: { type: 'int', default: d.lm_hidden_dim, min: 1, help: 'decoder width' },
  lm_inter_dim: { type: 'int', default: d.lm_inter_dim, min: 1, help: 'decoder MLP width' },
  lm_n_heads: { type: 'int', default: d.lm_n_heads, min: 1, help: 'decoder query heads' },
  lm_n_kv_heads: {
    type: 'int',
    default: d.lm_n_kv_heads,
    min: 1,
    help: 'decoder key/value heads, each shared by a group of query heads',
  },
  lm_n_blocks: { type: 'int', default: d.lm_n_blocks, min: 1, help: 'decoder blocks' },
  lm_vocab_size: {
    type: 'int',
    default: d.lm_vocab_size,
    min: 2,
    help: "decoder vocabulary, at least the tokenizer's (raised to fit a tokenizer built from the training text)",
  },
  lm_max_length: {
    type: 'int',
    default: d.lm_max_length,
    min: 1,
    help: 'text tokens per sample; longer samples are left out of the loss',
  },
  lm_max_position_embeddings: {
    type: 'int',
    default: d.lm_max_position_embeddings,
    min: 1,
    help: 'longest sequence RoPE is built for',
  },
  lm_re_base: { type: 'float', default: d.lm_re_base, above: 0, help: 'RoPE base' },
  lm_rms_eps: { type: 'float', default: d.lm_rms_eps, above: 0, help: 'RMSNorm epsilon' },
  lm_dropout: { type: 'float', default: d.lm_dropout, min: 0, below: 1, help: 'decoder dropout probability' },
  lm_attn_scaling: { type: 'float', default: d.lm_attn_scaling, above: 0, help: 'scale of the attention scores' },
  lm_tie_weights: { type: 'bool', default: d.lm_tie_weights, help: 'the output layer shares the token embedding' },
  vlm_load_backbone_weights: {
    type: 'bool',
    default: d.vlm_load_backbone_weights,
    help: 'start from pretrained --vit and --lm (false: random weights)',
  },
});

/** All of train.ts's flags. */
export const allFlags = { ...runFlags, ...trainFlags, ...modelFlags };

/** A run's configuration: the value of every flag. */
export type TrainRun = FlagValues<typeof allFlags>;

/** Starting values for the flags; any flag given overrides them. */
export const presets: Record<TrainRun['preset'], Partial<TrainRun>> = {
  // A small VLM on the built-in shapes dataset: learns on a laptop CPU in minutes.
  default: {
    lr_mp: 1e-3,
    lr_backbones: 1e-3,
    batch_size: 32,
    max_steps: 5000,
    eval_interval: 500,
    max_grad_norm: 1,
    max_minutes: 10,
    builtin_train_size: 160_000,
    vit_hidden_dim: 64,
    vit_inter_dim: 256,
    vit_patch_size: 8,
    vit_img_size: 32,
    vit_n_heads: 4,
    vit_n_blocks: 2,
    lm_hidden_dim: 64,
    lm_inter_dim: 192,
    lm_n_heads: 4,
    lm_n_kv_heads: 2,
    lm_n_blocks: 2,
    lm_vocab_size: 64,
    lm_max_length: 16,
    vlm_load_backbone_weights: false,
  },
  // nanoVLM-222M: SigLIP-B/16 + SmolLM2-135M from local folders (--vit, --lm).
  'nanovlm-222m': {},
};

/**
 * The run's configuration from the flags given: defaults < preset < flags, checked as a whole.
 * With `stored` (--resume), the stored run's values, which a given flag may not change except
 * the few in CHANGEABLE_ON_RESUME (and --out, which names where the run is now).
 */
export function resolveRun(given: Partial<TrainRun>, stored?: Record<string, unknown>): TrainRun {
  if (stored) {
    for (const [name, value] of Object.entries(given)) {
      if (['out', 'resume', ...CHANGEABLE_ON_RESUME].includes(name)) continue;
      if (JSON.stringify(value) === JSON.stringify(stored[name])) continue;
      throw new UsageError(
        `--${name} ${show(value)} differs from the resumed run's ${show(stored[name])}: ` +
          'a resumed run keeps its flags (start a new one with another --out to change it)',
      );
    }
    return { ...defaultsOf(allFlags), ...stored, ...given } as TrainRun;
  }
  const run: TrainRun = { ...defaultsOf(allFlags), ...presets[given.preset ?? 'default'], ...given };
  if (given.epochs !== undefined && given.max_steps === undefined && run.max_steps > 0) {
    const preset = `the ${run.preset} preset sets --max_steps ${run.max_steps}`;
    throw new UsageError(`--epochs counts only with --max_steps 0 (${preset})`);
  }
  const parts = frozenParts(run);
  const unknown = parts.filter((part) => !PARTS.includes(part));
  if (unknown.length) throw new UsageError(`--freeze ${run.freeze}: unknown part ${unknown[0]} (parts: vit, mp, lm)`);
  if (PARTS.every((part) => parts.includes(part))) throw new UsageError('--freeze vit,mp,lm leaves nothing to train');
  if (Boolean(run.vit) !== Boolean(run.lm)) {
    throw new UsageError('pretrained backbones need both --vit path/to/siglip and --lm path/to/smollm2');
  }
  if (run.vlm_load_backbone_weights && !run.vit) {
    throw new UsageError(
      `--preset ${run.preset} starts from pretrained backbones: pass --vit path/to/siglip --lm path/to/smollm2 ` +
        '(local Hugging Face folders), or --vlm_load_backbone_weights false',
    );
  }
  const grid = run.vit_img_size / run.vit_patch_size;
  const multiple = (a: keyof TrainRun, b: keyof TrainRun, what: string) => {
    if ((run[a] as number) % (run[b] as number) !== 0) {
      throw new UsageError(`--${a} ${run[a]} must be a multiple of --${b} ${run[b]} (${what})`);
    }
  };
  multiple('vit_img_size', 'vit_patch_size', 'the image is cut into whole patches');
  if (grid % run.mp_pixel_shuffle_factor !== 0) {
    const factor = run.mp_pixel_shuffle_factor;
    throw new UsageError(`the ${grid}x${grid} patch grid does not divide by --mp_pixel_shuffle_factor ${factor}`);
  }
  multiple('vit_hidden_dim', 'vit_n_heads', 'each head gets an equal share');
  multiple('lm_hidden_dim', 'lm_n_heads', 'each head gets an equal share');
  multiple('lm_n_heads', 'lm_n_kv_heads', 'query heads come in equal groups per key/value head');
  if ((run.lm_hidden_dim / run.lm_n_heads) % 2 !== 0) {
    throw new UsageError('RoPE needs an even head size: lm_hidden_dim / lm_n_heads');
  }
  if (run.train_data.length === 0 && run.vit_img_size < 32) {
    throw new UsageError('the built-in images need --vit_img_size 32 or more');
  }
  return run;
}

// The three parts of the model, as --freeze names them.
const PARTS = ['vit', 'mp', 'lm'];

/** The parts --freeze names. */
export function frozenParts(run: TrainRun): string[] {
  return run.freeze
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean);
}

/** The model's VLMConfig for a run; IMAGE_TOKEN_LENGTH and TOTAL_SEQUENCE_LENGTH follow from the other fields. */
export function modelConfig(run: TrainRun): VLMConfig {
  const cfg: VLMConfig = { ...defaultVLMConfig };
  const fields = cfg as unknown as Record<string, unknown>;
  for (const name of Object.keys(modelFlags) as (keyof typeof modelFlags)[]) fields[name] = run[name];
  cfg.IMAGE_TOKEN_LENGTH = (run.vit_img_size / run.vit_patch_size / run.mp_pixel_shuffle_factor) ** 2;
  cfg.TOTAL_SEQUENCE_LENGTH = cfg.IMAGE_TOKEN_LENGTH + run.lm_max_length;
  const tokenizer = run.tokenizer ?? run.lm;
  if (tokenizer) cfg.lm_tokenizer = tokenizer; // saved in config.json, so generate.ts finds it
  return cfg;
}

/** train.ts --help, with the defaults of the preset asked for. */
export function trainHelp(command: string, preset: TrainRun['preset'] = 'default'): string {
  const sections: [string, typeof runFlags | typeof trainFlags | typeof modelFlags][] = [
    ['run', runFlags],
    [`training (defaults of --preset ${preset}; --preset NAME --help shows another's)`, trainFlags],
    ['model (nanoVLM config.json fields)', modelFlags],
  ];
  return helpText(command, sections, { ...defaultsOf(allFlags), ...presets[preset] });
}

function show(value: unknown): string {
  if (value === undefined) return '(not set)';
  return Array.isArray(value) ? value.join(' ') || '(none)' : String(value);
}
