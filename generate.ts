// Answer a question about an image with a trained VLM (nanoVLM's generate.py).
//
//   npm run generate                                    # the default model on an example image
//   npm run generate -- --image cat.png --prompt "What is this?" --checkpoint path/to/nanoVLM-222M

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { defineFlags, deviceFlags, openDevice, parseCommandLine, reportError } from './cli.ts';
import { getImageProcessor } from './data/processors.ts';
import { loadImageFile } from './node/images.ts';
import { readModelFolder } from './node/model_folder.ts';
import { getTokenizer } from './node/tokenizer.ts';
import { Generator, keepBf16Copies, memory, tensor } from './tensor/index.ts';
import { closeWebGPU } from './tensor/webgpu/device.ts';
import { VisionLanguageModel } from './vlm/vision_language_model.ts';

// The default model (what `npm run train` saves) and an image it can answer about.
const DEFAULT_CHECKPOINT = 'checkpoints/default';
const DEFAULT_IMAGE = 'assets/shapes.png';
const DEFAULT_IMAGE_PROMPT = 'What color is the circle?';
const COMMAND = 'npm run generate --';

const flags = defineFlags({
  checkpoint: {
    type: 'string',
    default: DEFAULT_CHECKPOINT,
    metavar: 'DIR',
    help: 'checkpoint folder (config.json + model.safetensors)',
  },
  image: { type: 'string', default: DEFAULT_IMAGE, metavar: 'PATH', help: 'PNG or JPEG to ask about' },
  prompt: {
    type: 'string',
    help: `the question (default: "${DEFAULT_IMAGE_PROMPT}" for the default image, else "What is this?")`,
  },
  tokenizer: {
    type: 'string',
    metavar: 'PATH',
    help: "tokenizer folder (default: the checkpoint folder if it has tokenizer.json, else the config's lm_tokenizer)",
  },
  generations: { type: 'int', default: 5, min: 1, help: 'how many answers to sample' },
  max_new_tokens: { type: 'int', default: 20, min: 1, help: 'longest answer, in tokens' },
  greedy: { type: 'switch', help: 'always take the most likely token (the same as --temperature 0)' },
  top_k: { type: 'int', default: 50, min: 0, help: 'sample among the k most likely tokens (0: no limit)' },
  top_p: {
    type: 'float',
    default: 0.9,
    above: 0,
    max: 1,
    help: 'sample among the most likely tokens that cover this much probability',
  },
  temperature: {
    type: 'float',
    default: 0.5,
    min: 0,
    help: 'below 1: more confident, above 1: more varied; 0: greedy (the most likely token)',
  },
  seed: { type: 'int', default: 0, min: 0, max: 2 ** 32 - 1, help: 'seed of the sampling' },
  dtype: {
    type: 'string',
    default: 'float32',
    choices: ['float32', 'bfloat16'],
    help:
      "CPU: bfloat16 decodes with a bfloat16 copy of the language model's weights (half the bytes to read " +
      'per token, faster; the numbers change slightly, an answer may too); float32 uses them as saved',
  },
  ...deviceFlags,
});
const args = parseCommandLine(flags, COMMAND);

async function main(): Promise<void> {
  if (!existsSync(join(args.checkpoint, 'config.json'))) {
    const hint =
      args.checkpoint === DEFAULT_CHECKPOINT
        ? 'train the default model first: npm run train'
        : 'pass --checkpoint path/to/a/folder with config.json and model.safetensors';
    throw new Error(`no checkpoint at ${args.checkpoint}: ${hint}`);
  }
  const device = await openDevice(args);
  if (args.dtype === 'bfloat16' && device !== 'cpu') {
    throw new Error(`--dtype bfloat16 is for the CPU backend (the device is ${device}): add --device cpu`);
  }
  let model = VisionLanguageModel.fromPretrained(readModelFolder(args.checkpoint));
  if (device !== 'cpu') model = await model.to(device);
  if (args.dtype === 'bfloat16') {
    const before = memory().numBytes;
    keepBf16Copies(model.decoder.parameters()); // read by the matrix-vector products of each new token
    console.log(
      `decoding with bfloat16 weights (${((memory().numBytes - before) / 2 ** 20).toFixed(1)} MiB of copies)`,
    );
  }
  model.eval();
  const cfg = model.cfg;
  const saved = existsSync(join(args.checkpoint, 'tokenizer.json')) ? args.checkpoint : cfg.lm_tokenizer;
  const tokenizer = getTokenizer(args.tokenizer ?? saved);
  if (tokenizer.vocabSize > cfg.lm_vocab_size) {
    const sizes = `the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary has ${cfg.lm_vocab_size}`;
    throw new Error(`${sizes}: pass --tokenizer with the tokenizer the model was trained with`);
  }

  const pixels = getImageProcessor(cfg.vit_img_size)(loadImageFile(args.image), args.image);
  const image = tensor(pixels, { shape: [1, 3, cfg.vit_img_size, cfg.vit_img_size], device });
  const prompt = args.prompt ?? (args.image === DEFAULT_IMAGE ? DEFAULT_IMAGE_PROMPT : 'What is this?');
  const text = `Question: ${prompt} Answer:`; // nanoVLM's prompt template
  const unknown = tokenizer.unknownWords(text);
  if (unknown.length) {
    const words = unknown.map((w) => `"${w}"`).join(', ');
    console.warn(`warning: the tokenizer does not know ${words}: the model sees <unk> there`);
  }
  const ids = tokenizer.encode(text);
  const inputIds = tensor(new Int32Array(ids), { shape: [1, ids.length], device });
  console.log(`Input:\n  ${prompt}\n\nOutputs:`);

  const generator = new Generator(args.seed);
  for (let g = 0; g < args.generations; g++) {
    // stream: print each token's text as soon as it is chosen (decode the whole answer, print what is new)
    const answer: number[] = [];
    let printed = '';
    process.stdout.write(`  >> Generation ${g + 1}: `);
    // sync point per token: the last position's logits are read back to choose the next token
    await model.generate(inputIds, image, null, {
      maxNewTokens: args.max_new_tokens,
      greedy: args.greedy || args.temperature === 0,
      topK: args.top_k,
      topP: args.top_p,
      temperature: args.temperature,
      generator,
      eosTokenId: tokenizer.eosTokenId,
      onTokens: ([token]) => {
        if (token === tokenizer.eosTokenId) return;
        answer.push(token);
        const text = tokenizer.decode(answer, { skipSpecialTokens: true });
        process.stdout.write(text.slice(printed.length));
        printed = text;
      },
    });
    process.stdout.write('\n');
  }
}

main()
  .catch((e: Error) => reportError(e, COMMAND))
  .finally(closeWebGPU);
