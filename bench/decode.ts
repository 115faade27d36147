// nanoVLM-222M generation on the CPU (issue #15): batch 1, 49 image + 16
// prompt tokens, 32 new tokens with the KV cache; ours with the float32
// weights and with bfloat16 copies of the language model's (generate.ts
// --dtype bfloat16), and PyTorch's (bench/reference.py) in the same run, in
// alternating rounds, so that each figure has its reference measured beside
// it. Random weights of the real shapes (bench/random_backbones.ts). Each
// round prints the medians of 3 generations; the summary is the median of the
// rounds with their spread. Then the host's part of a sampled token (generate.ts's
// default: top_k 50, top_p 0.9) over the 49,152 logits, beside this run's
// decoding step. Pin both sides (the reference inherits it):
//
//   taskset -c 0,1 npx tsx bench/decode.ts --threads 2 --rounds 3

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineFlags, parseCommandLine } from '../cli.ts';
import { readModelFolder } from '../node/model_folder.ts';
import {
  Generator,
  cpuKernelInfo,
  dropBf16Copies,
  getCpuThreads,
  keepBf16Copies,
  setCpuThreads,
} from '../tensor/index.ts';
import { defaultVLMConfig } from '../vlm/config.ts';
import { sampleToken, topKTopPFiltering } from '../vlm/utils.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { writeRandomBackbones } from './random_backbones.ts';
import { benchGenerate, disposeModel, type GenerateTiming } from './vlm.ts';

const flags = defineFlags({
  threads: { type: 'int', default: 2, min: 1, help: "CPU threads, ours and PyTorch's" },
  rounds: { type: 'int', default: 3, min: 1, help: 'alternating rounds of ours float32, ours bfloat16, PyTorch' },
  skip_reference: { type: 'switch', help: 'do not run the PyTorch reference (bench/reference.py)' },
});
const args = parseCommandLine(flags, 'npx tsx bench/decode.ts');
setCpuThreads(args.threads);
const threads = getCpuThreads();
const load = () =>
  loadavg()
    .map((x) => x.toFixed(1))
    .join(' ');
const { fma } = cpuKernelInfo();
console.log(
  `nanoVLM-222M decoding, ${new Date().toISOString().slice(0, 10)}: ${cpus()[0]?.model ?? 'unknown cpu'}, ` +
    `node ${process.version}, wasm kernels${fma ? ' (FMA)' : ''}, ${threads} ` +
    `thread${threads > 1 ? 's' : ''}, load ${load()}`,
);

const dir = mkdtempSync(join(tmpdir(), 'decode-bench-'));
const cfg = defaultVLMConfig;
let model: VisionLanguageModel;
try {
  const { vit, lm } = writeRandomBackbones(dir);
  model = VisionLanguageModel.fromBackbones(cfg, readModelFolder(vit), readModelFolder(lm));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
const weights = model.decoder.parameters();

let noReference = false;
/** PyTorch's figure for the same workload on the same threads, or null where python3 or torch is missing. */
function reference(): GenerateTiming | null {
  if (args.skip_reference || noReference) return null;
  const script = new URL('./reference.py', import.meta.url).pathname;
  const r = spawnSync('python3', [script, '--threads', String(threads), '--what', 'decode222'], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.log(`(no PyTorch reference: ${r.error ? 'python3 not found' : r.stderr.trim().split('\n').pop()})`);
    noReference = true; // say it once
    return null;
  }
  const o = JSON.parse(r.stdout.trim().split('\n').pop()!);
  return { ttftMs: o.ttft_ms, tokensPerSec: o.tokens_per_sec };
}

const results: Record<string, GenerateTiming[]> = { 'ours, float32': [], 'ours, bfloat16': [], PyTorch: [] };
const fmt = (r: GenerateTiming) => `${r.tokensPerSec.toFixed(1)} tokens/s, first token ${r.ttftMs.toFixed(0)} ms`;
for (let round = 1; round <= args.rounds; round++) {
  const line: string[] = [];
  const f32 = await benchGenerate(cfg, 'cpu', true, { model });
  keepBf16Copies(weights);
  const bf16 = await benchGenerate(cfg, 'cpu', true, { model });
  dropBf16Copies(weights);
  const torch = reference();
  for (const [name, r] of [
    ['ours, float32', f32],
    ['ours, bfloat16', bf16],
    ['PyTorch', torch],
  ] as const) {
    if (!r) continue;
    results[name].push(r);
    line.push(`${name} ${fmt(r)}`);
  }
  console.log(`round ${round} (load ${load()}): ${line.join('; ')}`);
}
disposeModel(model);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[], d: number) =>
  `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)} .. ${Math.max(...xs).toFixed(d)}]`;
const torchRate = results.PyTorch.length ? median(results.PyTorch.map((r) => r.tokensPerSec)) : 0;
for (const [name, rs] of Object.entries(results)) {
  if (!rs.length) continue;
  const ratio =
    torchRate && name !== 'PyTorch'
      ? `, ${(median(rs.map((r) => r.tokensPerSec)) / torchRate).toFixed(2)}x PyTorch`
      : '';
  console.log(
    `${name}: ${spread(
      rs.map((r) => r.tokensPerSec),
      1,
    )} tokens/s, ` +
      `first token ${spread(
        rs.map((r) => r.ttftMs),
        0,
      )} ms${ratio}`,
  );
}

// Sampling a token as generate.ts does without --greedy, on the host: random logits of the vocabulary's length,
// each pass over the same 8 rows (copies: the filter works in place), the median of 7 passes
const sampled = new Generator(0);
const rows = Array.from({ length: 8 }, () =>
  Float32Array.from({ length: cfg.lm_vocab_size }, () => sampled.random() * 20 - 10),
);
const passes = Array.from({ length: 7 }, () => {
  const t0 = performance.now();
  for (const row of rows) sampleToken(topKTopPFiltering(row.slice(), 50, 0.9), 0.5, sampled);
  return (performance.now() - t0) / rows.length;
});
const stepMs = 1000 / median(results['ours, float32'].map((r) => r.tokensPerSec));
console.log(
  `sampling a token (top_k 50, top_p 0.9, ${cfg.lm_vocab_size} logits): ${spread(passes, 2)} ms, ` +
    `${((100 * median(passes)) / stepMs).toFixed(1)}% of this run's float32 decoding step (${stepMs.toFixed(1)} ms)`,
);
