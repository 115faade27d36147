// A training run's folder (--out) and what lets a run continue after Ctrl-C or a crash:
//
//   out/config.json, model.safetensors, tokenizer.json   the best checkpoint (generate.ts reads it)
//   out/metrics.jsonl, loss.svg                          one record per step and per evaluation
//   out/resume/                                          weights, AdamW moments, run state and flags
//
// Nothing of an earlier run is replaced unless asked: a fresh run refuses a folder that holds a run
// (--resume continues it, --overwrite replaces it), and every save goes to a temporary name first.

import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { UsageError, parseFlags } from './cli.ts';
import type { AdamW, AdamWState } from './nn/index.ts';
import type { WriteTensor } from './nn/safetensors.ts';
import { writeModelFolder } from './node/model_folder.ts';
import { openSafetensors, saveSafetensors } from './node/safetensors.ts';
import { defaultGenerator, type GradScalerState } from './tensor/index.ts';
import { allFlags, resolveRun, runFlags, trainHelp, type TrainRun } from './train_config.ts';
import type { VisionLanguageModel } from './vlm/vision_language_model.ts';

/** Everything besides weights and moments that a resumed run needs to continue identically. */
export interface RunState {
  /** Every flag of the run (train_config.ts): --resume continues with these. */
  config: Record<string, unknown>;
  step: number; // optimizer steps done
  epoch: number;
  batchInEpoch: number; // batches of `epoch` consumed
  bestAccuracy: number;
  elapsedMs: number;
  tokens: number;
  /** --dtype float16: the loss scale and its count of good steps (GradScaler.stateDict()). */
  gradScaler?: GradScalerState;
}

// What a run writes into --out (loss.png: the plot of older versions). Other files are left alone.
const RUN_FILES = [
  'config.json',
  'model.safetensors',
  'tokenizer.json',
  'metrics.jsonl',
  'loss.svg',
  'loss.png',
  'resume',
];

/**
 * train.ts's command line: the run's configuration, and its saved state on --resume. Every flag
 * is checked, and --out too (checkOutDir), before anything is written; --help prints and exits.
 */
export function configure(argv: string[], command: string): { run: TrainRun; resumed: RunState | null } {
  const { given, help } = parseFlags(allFlags, argv);
  if (help) {
    console.log(trainHelp(command, given.preset));
    process.exit(0);
  }
  const out = given.out ?? runFlags.out.default; // on --resume too: the folder may have moved since
  const resumed = checkOutDir(out, given);
  return { run: resolveRun({ ...given, out }, resumed?.config), resumed };
}

/**
 * Checks --out before anything is written: a fresh run needs a folder without a run in it (or
 * --overwrite), --resume one with a run to resume, whose saved state it returns.
 */
export function checkOutDir(out: string, opts: { resume?: boolean; overwrite?: boolean }): RunState | null {
  let existing = out; // the folder, or the nearest folder above it that exists: mkdir will need one
  while (!existsSync(existing)) existing = dirname(existing);
  if (!statSync(existing).isDirectory()) {
    const what = existing === out ? 'is a file, not a folder' : `is inside ${existing}, a file`;
    throw new UsageError(`--out ${out} ${what}`);
  }
  const stateFile = join(out, 'resume', 'state.json');
  if (opts.resume) {
    if (opts.overwrite) throw new UsageError('--resume continues the run in --out, --overwrite replaces it: pass one');
    if (!existsSync(stateFile)) throw new UsageError(`--resume: no run to resume in ${out} (no ${stateFile})`);
    const state = readJSON(stateFile) as RunState;
    if (!state.config) throw new Error(`${stateFile} has no record of the run's flags (an older nanovlm-ts wrote it)`);
    return state;
  }
  const found = RUN_FILES.filter((name) => existsSync(join(out, name)));
  if (found.length > 0 && !opts.overwrite) {
    throw new UsageError(
      `${out} already holds a run (${found.join(', ')}): continue it with --resume, ` +
        'choose another --out, or pass --overwrite to replace it',
    );
  }
  return null;
}

/** Makes --out ready for a fresh run: the folder exists and holds none of an earlier run's files. */
export function prepareOutDir(out: string): void {
  mkdirSync(out, { recursive: true });
  for (const name of [...RUN_FILES, 'resume.tmp', 'resume.old']) {
    rmSync(join(out, name), { recursive: true, force: true });
  }
}

/**
 * Saves weights, tokenizer, AdamW moments and run state into out/resume/: written into a
 * temporary folder, then swapped in, so an interrupted save leaves the previous state whole.
 */
export async function saveResumeState(
  out: string,
  run: { model: VisionLanguageModel; optimizer: AdamW; state: RunState; tokenizerJson: object | null },
): Promise<void> {
  const dir = join(out, 'resume');
  const tmp = `${dir}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  writeModelFolder(tmp, await run.model.savePretrained()); // sync point: reads the weights back
  if (run.tokenizerJson) writeFileSync(join(tmp, 'tokenizer.json'), JSON.stringify(run.tokenizerJson));
  saveOptimizer(join(tmp, 'optimizer.safetensors'), await run.optimizer.stateDict()); // sync point: reads the moments
  // the default generator draws dropout masks: its state is part of where the run is
  writeFileSync(join(tmp, 'state.json'), JSON.stringify({ ...run.state, generator: defaultGenerator.getState() }));
  rmSync(`${dir}.old`, { recursive: true, force: true });
  if (existsSync(dir)) renameSync(dir, `${dir}.old`);
  renameSync(tmp, dir);
  rmSync(`${dir}.old`, { recursive: true, force: true });
}

/** Restores what saveResumeState saved besides the weights: AdamW's moments and the generator. */
export function loadResumeState(out: string, optimizer: AdamW): void {
  const dir = join(out, 'resume');
  optimizer.loadStateDict(loadOptimizer(join(dir, 'optimizer.safetensors')));
  const saved = readJSON(join(dir, 'state.json')) as { generator: ReturnType<typeof defaultGenerator.getState> };
  defaultGenerator.setState(saved.generator);
}

/** AdamW.stateDict() as a safetensors file: the moments as tensors, step counts and learning rates as metadata. */
function saveOptimizer(file: string, saved: AdamWState): void {
  const tensors: Record<string, WriteTensor> = {};
  saved.params.forEach((p, i) => {
    if (!p) return; // a parameter that has had no update yet has no moments
    tensors[`exp_avg.${i}`] = { dtype: 'F32', shape: [p.expAvg.length], data: p.expAvg };
    tensors[`exp_avg_sq.${i}`] = { dtype: 'F32', shape: [p.expAvgSq.length], data: p.expAvgSq };
  });
  const steps = saved.params.map((p) => p?.step ?? null);
  saveSafetensors(file, tensors, { lrs: JSON.stringify(saved.lrs), steps: JSON.stringify(steps) });
}

/** What saveOptimizer wrote, for AdamW.loadStateDict. */
function loadOptimizer(file: string): AdamWState {
  const f = openSafetensors(file);
  try {
    const steps = JSON.parse(f.metadata.steps ?? 'null') as (number | null)[] | null;
    if (!Array.isArray(steps)) throw new Error(`${file}: no step counts in its metadata (not written by train.ts?)`);
    const moment = (name: string) => f.get(name).data as Float32Array;
    return {
      lrs: JSON.parse(f.metadata.lrs ?? '[]'),
      params: steps.map((step, i) =>
        step === null ? null : { step, expAvg: moment(`exp_avg.${i}`), expAvgSq: moment(`exp_avg_sq.${i}`) },
      ),
    };
  } finally {
    f.close();
  }
}

/** A metrics.jsonl record: the step, then losses, accuracies, learning rates and so on. */
export type MetricsRecord = { step: number } & Record<string, number>;

/**
 * The records of metrics.jsonl up to `step`; the file is rewritten without the later ones (logged
 * after the checkpoint being resumed, they will be logged again). A line that is not JSON is dropped, with a warning.
 */
export function trimMetrics(file: string, step: number): MetricsRecord[] {
  if (!existsSync(file)) return [];
  const kept: MetricsRecord[] = [];
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '') return;
      try {
        const record = JSON.parse(line) as MetricsRecord;
        if (record.step <= step) kept.push(record);
      } catch {
        console.warn(`${file} line ${i + 1} is not JSON: dropped`);
      }
    });
  writeAtomic(file, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
  return kept;
}

/** The loss and accuracy curves of metrics.jsonl records, for the plot. */
export function curvesOf(records: MetricsRecord[]) {
  const curve = (key: string) => records.filter((r) => key in r).map((r): [number, number] => [r.step, r[key]]);
  return { train: curve('loss'), val: curve('val_loss'), accuracy: curve('accuracy') };
}

/** Appends one record to metrics.jsonl. */
export function appendMetrics(file: string, record: MetricsRecord): void {
  appendFileSync(file, `${JSON.stringify(record)}\n`);
}

/** Writes a file whole or not at all: into a temporary file, then renamed over the target. */
export function writeAtomic(file: string, text: string): void {
  writeFileSync(`${file}.tmp-${process.pid}`, text);
  renameSync(`${file}.tmp-${process.pid}`, file);
}

/** A JSON file's contents, or an error naming the file. */
export function readJSON(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file} is not valid JSON (${(e as Error).message})`);
  }
}
