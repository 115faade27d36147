// Random-weight backbones of the real shapes. There is no model hub here, so
// this writes what a Hugging Face download would put on disk, with random
// numbers for weights: a SigLIP-B/16-224 folder and a SmolLM2-135M folder,
// each a config.json and a model.safetensors in bf16 under Hugging Face's
// tensor names. VisionLanguageModel.fromBackbones and `npm run train --
// --vit DIR --lm DIR` load them as they load the real ones, so nanoVLM-222M's
// training step, generation and memory can be measured without the weights.
// (Only SigLIP's vision tower is written: nanoVLM never reads the text tower.)
//
//   npx tsx bench/random_backbones.ts --out /tmp/backbones        # writes siglip-base-patch16-224/ and SmolLM2-135M/

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError, defineFlags, parseCommandLine, reportError } from '../cli.ts';
import type { WriteTensor } from '../nn/safetensors.ts';
import { saveSafetensors } from '../node/safetensors.ts';
import { Generator } from '../tensor/random.ts';

/** The vision_config fields of a SigLIP config.json that nanoVLM reads. */
export interface SiglipShape {
  hidden_size: number;
  intermediate_size: number;
  num_attention_heads: number;
  num_hidden_layers: number;
  patch_size: number;
  image_size: number;
}

/** The fields of a Llama config.json that nanoVLM reads. */
export interface LlamaShape {
  hidden_size: number;
  intermediate_size: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  num_hidden_layers: number;
  vocab_size: number;
}

/** google/siglip-base-patch16-224's vision tower. */
export const SIGLIP_B16_224: SiglipShape = {
  hidden_size: 768,
  intermediate_size: 3072,
  num_attention_heads: 12,
  num_hidden_layers: 12,
  patch_size: 16,
  image_size: 224,
};

/** HuggingFaceTB/SmolLM2-135M. */
export const SMOLLM2_135M: LlamaShape = {
  hidden_size: 576,
  intermediate_size: 1536,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  num_hidden_layers: 30,
  vocab_size: 49152,
};

/** How a tensor is filled: normal-like values of std 0.02 (weights), zeros (biases) or ones (norm weights). */
type Fill = 'weight' | 'zeros' | 'ones';

/** Names and shapes of the tensors a SiglipVisionModel stores (the pooling head left out: nanoVLM drops it). */
export function siglipTensors(s: SiglipShape): [string, number[], Fill][] {
  const [D, F, P] = [s.hidden_size, s.intermediate_size, s.patch_size];
  const out: [string, number[], Fill][] = [
    ['vision_model.embeddings.patch_embedding.weight', [D, 3, P, P], 'weight'],
    ['vision_model.embeddings.patch_embedding.bias', [D], 'zeros'],
    ['vision_model.embeddings.position_embedding.weight', [(s.image_size / P) ** 2, D], 'weight'],
  ];
  for (let i = 0; i < s.num_hidden_layers; i++) {
    const l = `vision_model.encoder.layers.${i}.`;
    for (const n of ['layer_norm1', 'layer_norm2'])
      out.push([`${l}${n}.weight`, [D], 'ones'], [`${l}${n}.bias`, [D], 'zeros']);
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj'])
      out.push([`${l}self_attn.${n}.weight`, [D, D], 'weight'], [`${l}self_attn.${n}.bias`, [D], 'zeros']);
    out.push([`${l}mlp.fc1.weight`, [F, D], 'weight'], [`${l}mlp.fc1.bias`, [F], 'zeros']);
    out.push([`${l}mlp.fc2.weight`, [D, F], 'weight'], [`${l}mlp.fc2.bias`, [D], 'zeros']);
  }
  out.push(['vision_model.post_layernorm.weight', [D], 'ones'], ['vision_model.post_layernorm.bias', [D], 'zeros']);
  return out;
}

/** Names and shapes of the tensors a LlamaForCausalLM with tied embeddings stores. */
export function llamaTensors(s: LlamaShape): [string, number[], Fill][] {
  const [D, F] = [s.hidden_size, s.intermediate_size];
  const kv = (D / s.num_attention_heads) * s.num_key_value_heads;
  const out: [string, number[], Fill][] = [['model.embed_tokens.weight', [s.vocab_size, D], 'weight']];
  for (let i = 0; i < s.num_hidden_layers; i++) {
    const l = `model.layers.${i}.`;
    out.push(
      [`${l}self_attn.q_proj.weight`, [D, D], 'weight'],
      [`${l}self_attn.k_proj.weight`, [kv, D], 'weight'],
      [`${l}self_attn.v_proj.weight`, [kv, D], 'weight'],
      [`${l}self_attn.o_proj.weight`, [D, D], 'weight'],
      [`${l}mlp.gate_proj.weight`, [F, D], 'weight'],
      [`${l}mlp.up_proj.weight`, [F, D], 'weight'],
      [`${l}mlp.down_proj.weight`, [D, F], 'weight'],
      [`${l}input_layernorm.weight`, [D], 'ones'],
      [`${l}post_attention_layernorm.weight`, [D], 'ones'],
    );
  }
  out.push(['model.norm.weight', [D], 'ones']);
  return out;
}

/** Random values for the tensors, bf16 on disk. Uniform draws of std 0.02: fast, and all a benchmark needs. */
function randomTensors(specs: [string, number[], Fill][], g: Generator): Record<string, WriteTensor> {
  const half = 0.02 * Math.sqrt(3); // uniform on [-h, h] has std h / sqrt(3)
  const out: Record<string, WriteTensor> = {};
  for (const [name, shape, fill] of specs) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (fill === 'ones') data.fill(1);
    else if (fill === 'weight') for (let i = 0; i < data.length; i++) data[i] = (2 * g.random() - 1) * half;
    out[name] = { dtype: 'BF16', shape, data };
  }
  return out;
}

/** Writes `dir` with a config.json and a model.safetensors; returns dir. */
function writeFolder(dir: string, config: object, tensors: Record<string, WriteTensor>): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  saveSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return dir;
}

/**
 * Writes a SigLIP folder and a SmolLM2 folder of the given shapes (the real
 * ones by default) under `out`, with seeded random weights; returns their paths.
 */
export function writeRandomBackbones(
  out: string,
  {
    siglip = SIGLIP_B16_224,
    llama = SMOLLM2_135M,
    seed = 0,
  }: { siglip?: SiglipShape; llama?: LlamaShape; seed?: number } = {},
): { vit: string; lm: string } {
  const g = new Generator(seed);
  const vit = writeFolder(
    join(out, 'siglip-base-patch16-224'),
    {
      architectures: ['SiglipModel'],
      model_type: 'siglip',
      vision_config: {
        ...siglip,
        layer_norm_eps: 1e-6,
        attention_dropout: 0.0,
        hidden_act: 'gelu_pytorch_tanh',
        model_type: 'siglip_vision_model',
      },
    },
    randomTensors(siglipTensors(siglip), g),
  );
  const lm = writeFolder(
    join(out, 'SmolLM2-135M'),
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      ...llama,
      rms_norm_eps: 1e-5,
      rope_theta: 100000.0,
      max_position_embeddings: 8192,
      tie_word_embeddings: true,
      hidden_act: 'silu',
      attention_dropout: 0.0,
      torch_dtype: 'bfloat16',
      bos_token_id: 0,
      eos_token_id: 0,
    },
    randomTensors(llamaTensors(llama), g),
  );
  return { vit, lm };
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) {
  const flags = defineFlags({
    out: {
      type: 'string',
      metavar: 'DIR',
      help: 'writes DIR/siglip-base-patch16-224 and DIR/SmolLM2-135M (random weights, bf16; about 700 MB)',
    },
    seed: { type: 'int', default: 0, min: 0, help: 'seed of the weights' },
  });
  const command = 'npx tsx bench/random_backbones.ts';
  const args = parseCommandLine(flags, command);
  if (!args.out) {
    reportError(new UsageError('--out DIR is required', true), command);
    process.exit();
  }
  const t0 = performance.now();
  const { vit, lm } = writeRandomBackbones(args.out, { seed: args.seed });
  console.log(`wrote ${vit} and ${lm} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
