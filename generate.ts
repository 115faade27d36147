// Answer a question about an image with a trained VLM (nanoVLM's generate.py).
//
//   npx tsx generate.ts                                     # the default model on an example image
//   npx tsx generate.ts --image cat.png --prompt "What is this?" --checkpoint path/to/nanoVLM-222M

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadImageFile } from './data/image_file.ts';
import { getImageProcessor } from './data/processors.ts';
import { getTokenizer } from './data/tokenizer.ts';
import { Generator, cpuKernelInfo, getCpuThreads, setCpuKernels, setCpuThreads, tensor, type CpuKernels, type DeviceName } from './tensor/index.ts';
import { closeWebGPU, resolveDevice } from './tensor/webgpu/device.ts';
import { VisionLanguageModel } from './vlm/vision_language_model.ts';

// The default model (what `npx tsx train.ts` saves) and an image it can answer about.
const DEFAULT_CHECKPOINT = 'checkpoints/default';
const DEFAULT_IMAGE = 'assets/shapes.png';
const DEFAULT_IMAGE_PROMPT = 'What color is the circle?';

const options = {
  checkpoint: { type: 'string', default: DEFAULT_CHECKPOINT, help: 'checkpoint folder (config.json + model.safetensors)' },
  image: { type: 'string', default: DEFAULT_IMAGE, help: 'PNG or JPEG to ask about' },
  prompt: { type: 'string', help: `the question (default: "${DEFAULT_IMAGE_PROMPT}" for the default image, else "What is this?")` },
  tokenizer: { type: 'string', help: 'tokenizer folder (default: the checkpoint folder if it has tokenizer.json, else the config\'s lm_tokenizer)' },
  generations: { type: 'string', default: '5', help: 'how many answers to sample' },
  max_new_tokens: { type: 'string', default: '20', help: 'longest answer, in tokens' },
  greedy: { type: 'boolean', default: false, help: 'always take the most likely token' },
  top_k: { type: 'string', default: '50', help: 'sample among the k most likely tokens' },
  top_p: { type: 'string', default: '0.9', help: 'sample among the most likely tokens covering this much probability' },
  temperature: { type: 'string', default: '0.5', help: 'below 1: more confident, above 1: more varied' },
  seed: { type: 'string', default: '0', help: 'seed of the sampling' },
  device: { type: 'string', default: 'auto', help: 'auto | webgpu | cpu' },
  cpu_kernels: { type: 'string', help: 'ts | wasm: the CPU kernels (default wasm where WebAssembly SIMD exists)' },
  threads: { type: 'string', help: 'threads for large CPU kernels (default min(2, cores))' },
  help: { type: 'boolean', default: false, help: 'show this help' },
} as const;

const args = parseFlags();

/** The command line, or one line saying what is wrong with it. */
function parseFlags() {
  try {
    return parseArgs({ options }).values;
  } catch (e) {
    console.error(`error: ${(e as Error).message} (npm run generate -- --help lists the flags)`);
    process.exit(2);
  }
}
if (args.help) {
  console.log('usage: npx tsx generate.ts [options]\n');
  for (const [name, o] of Object.entries(options)) {
    console.log(`  --${name.padEnd(15)} ${o.help}${'default' in o && o.type === 'string' ? ` (default: ${o.default})` : ''}`);
  }
  process.exit(0);
}

/** A numeric flag's value, or a clear error. */
function num(name: 'seed' | 'generations' | 'max_new_tokens' | 'top_k' | 'top_p' | 'temperature'): number {
  const value = Number(args[name]);
  if (!Number.isFinite(value)) throw new Error(`--${name} expects a number, got ${args[name]}`);
  return value;
}

/** --cpu_kernels and --threads: the plain-TypeScript kernels are the readable reference, WebAssembly SIMD the fast path. */
function useCpuFlags(): void {
  if (args.cpu_kernels) setCpuKernels(args.cpu_kernels as CpuKernels);
  if (args.threads) setCpuThreads(Number(args.threads));
  const cpu = cpuKernelInfo();
  const threads = getCpuThreads();
  console.log(`cpu kernels: ${cpu.kernels}${cpu.kernels === 'wasm' && cpu.fma ? ' (relaxed-SIMD FMA)' : ''}, ${threads} thread${threads > 1 ? 's' : ''}`);
}

async function main(): Promise<void> {
  const [generations, maxNewTokens, topK, topP, temperature, seed] = (
    ['generations', 'max_new_tokens', 'top_k', 'top_p', 'temperature', 'seed'] as const
  ).map(num);
  if (!existsSync(join(args.checkpoint, 'config.json'))) {
    const hint = args.checkpoint === DEFAULT_CHECKPOINT ? 'train the default model first: npm run train' : 'pass --checkpoint path/to/a/folder with config.json and model.safetensors';
    throw new Error(`no checkpoint at ${args.checkpoint}: ${hint}`);
  }
  const device = (await resolveDevice(args.device as 'auto' | DeviceName)) as DeviceName;
  if (device === 'cpu') useCpuFlags();
  let model = await VisionLanguageModel.fromPretrained(args.checkpoint);
  if (device !== 'cpu') model = await model.to(device);
  model.eval();
  const cfg = model.cfg;
  const tokenizerPath = args.tokenizer ?? (existsSync(join(args.checkpoint, 'tokenizer.json')) ? args.checkpoint : cfg.lm_tokenizer);
  const tokenizer = getTokenizer(tokenizerPath);
  if (tokenizer.vocabSize > cfg.lm_vocab_size) {
    throw new Error(`the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary has ${cfg.lm_vocab_size}: pass --tokenizer with the tokenizer the model was trained with`);
  }

  const pixels = getImageProcessor(cfg.vit_img_size)(loadImageFile(args.image), args.image);
  const image = tensor(pixels, { shape: [1, 3, cfg.vit_img_size, cfg.vit_img_size], device });
  const prompt = args.prompt ?? (args.image === DEFAULT_IMAGE ? DEFAULT_IMAGE_PROMPT : 'What is this?');
  const ids = tokenizer.encode(`Question: ${prompt} Answer:`); // nanoVLM's prompt template
  const inputIds = tensor(new Int32Array(ids), { shape: [1, ids.length], device });
  console.log(`Input:\n  ${prompt}\n\nOutputs:`);

  const generator = new Generator(seed);
  for (let g = 0; g < generations; g++) {
    // stream: print each token's text as soon as it is chosen (decode the whole answer, print what is new)
    const answer: number[] = [];
    let printed = '';
    process.stdout.write(`  >> Generation ${g + 1}: `);
    await model.generate(inputIds, image, null, {
      maxNewTokens,
      greedy: args.greedy,
      topK,
      topP,
      temperature,
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
  .catch((e: Error) => {
    console.error(`error: ${e.message}`);
    process.exitCode = 1;
  })
  .finally(closeWebGPU);
