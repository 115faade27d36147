// The data a training run reads (the part of nanoVLM's train.py before the loop): the rows of
// --train_data, --val_data and --test_data or the built-in shapes set, the tokenizer, warnings
// about text the model cannot learn, and the batches of every set (get_dataloaders).

import { join } from 'node:path';
import { BuiltinVQADataset, buildBuiltinTokenizer } from './data/builtin.ts';
import { MMStarCollator, VQACollator, type VQAItem } from './data/collators.ts';
import { MMStarDataset, VQADataset, trainValSplit } from './data/datasets.ts';
import type { Dataset, VQARows } from './data/datasets.ts';
import { DataLoader } from './data/loader.ts';
import { buildWordTokenizer, createTokenizer, type Tokenizer } from './data/tokenizer.ts';
import { openMMStarRows, openVQARows } from './node/datasets.ts';
import { getTokenizer } from './node/tokenizer.ts';
import { readJSON } from './run_state.ts';
import type { TrainRun } from './train_config.ts';

/** The rows of each set; null for the built-in set, whose samples are drawn when asked for. */
export type Splits = { train: VQARows; val: VQARows; test: VQARows | null } | null;

/** The rows of --train_data, --val_data (else a --val_ratio split, never empty) and --test_data. */
export async function openSplits(run: TrainRun): Promise<Splits> {
  if (run.train_data.length === 0) return null;
  const rows = await openVQARows(run.train_data);
  const test = run.test_data ? await openVQARows([run.test_data]) : null;
  if (run.val_data.length) {
    const val = await openVQARows(run.val_data);
    if (val.length === 0) throw new Error(`no rows in --val_data ${run.val_data.join(' ')}`);
    return { train: rows, val, test };
  }
  const total = Math.min(rows.length, run.data_cutoff_idx || rows.length);
  if (total === 0) throw new Error(`no rows in --train_data ${run.train_data.join(' ')}`);
  const valRows = Math.max(1, Math.floor(total * run.val_ratio));
  // nanoVLM's split takes floor(total * valRatio) rows: asking for valRows + 0.5 gets valRows exactly
  const split = trainValSplit(rows, { valRatio: (valRows + 0.5) / total, dataCutoffIdx: total, seed: run.seed });
  return { ...split, test };
}

/**
 * The tokenizer: --tokenizer, else the --lm folder's, else a word-level one of the training text
 * (the built-in set's, or one built from --train_data), which is saved with the checkpoints.
 */
export async function runTokenizer(run: TrainRun, splits: Splits, resumeDir: string | null) {
  const path = run.tokenizer ?? run.lm;
  if (path) return { tokenizer: getTokenizer(path), tokenizerJson: null };
  let json: object;
  if (resumeDir) json = readJSON(join(resumeDir, 'tokenizer.json')) as object;
  else if (!splits) json = buildBuiltinTokenizer();
  else {
    json = buildWordTokenizer((await readTexts(splits.train)).flatMap((t) => [t.prompt, t.text]));
    console.log('tokenizer: a word-level one built from the training text (--tokenizer chooses another)');
  }
  return { tokenizer: createTokenizer(json), tokenizerJson: json };
}

/** Warns about words that become <unk> and samples longer than lm_max_length (left out of the loss). */
export async function checkTexts(splits: Splits, tokenizer: Tokenizer, maxLength: number): Promise<void> {
  if (!splits || tokenizer.unkTokenId === undefined) return; // a byte-level tokenizer encodes any text
  for (const [what, rows] of [
    ['training', splits.train],
    ['validation', splits.val],
    ['test', splits.test],
  ] as const) {
    if (!rows) continue;
    const texts = await readTexts(rows);
    const unknown = [...new Set(texts.flatMap((t) => tokenizer.unknownWords(t.text)))];
    if (unknown.length) {
      const words = `${unknown.length} words of the ${what} text (${unknown.slice(0, 5).join(' ')})`;
      console.warn(`warning: the tokenizer does not know ${words}: they become <unk>`);
    }
    const long = texts.filter((t) => tokenizer.encode(t.text + tokenizer.eosToken).length > maxLength).length;
    if (long) {
      const samples = `${long} of ${texts.length} ${what} samples`;
      console.warn(`warning: ${samples} are longer than --lm_max_length ${maxLength} tokens: they are not learned`);
    }
  }
}

/** The prompt and the whole text of every row that reads (a bad row is reported when training meets it). */
async function readTexts(rows: VQARows): Promise<{ prompt: string; text: string }[]> {
  const texts = [];
  for (let i = 0; i < rows.length; i++) {
    const row = await rows.read(i).catch(() => null);
    if (!row) continue;
    const prompt = `Question: ${row.question} Answer:`; // what VQADataset makes of a row
    texts.push({ prompt, text: prompt + row.answer });
  }
  return texts;
}

/** nanoVLM's get_dataloaders: batches of the training, validation, test and MMStar sets. */
export async function getDataloaders(
  run: TrainRun,
  splits: Splits,
  tokenizer: Tokenizer,
  imgSize: number,
  maxLength: number,
) {
  const { seed } = run;
  const set = (rows: VQARows | undefined, split: 'train' | 'val', size: number): Dataset<VQAItem> =>
    rows ? new VQADataset(rows, tokenizer, imgSize) : new BuiltinVQADataset(tokenizer, { split, size, seed, imgSize });
  const trainSet = set(splits?.train, 'train', run.builtin_train_size);
  const valSet = set(splits?.val, 'val', run.builtin_val_size);
  const collator = new VQACollator(tokenizer, maxLength);
  const collate = (items: VQAItem[]) => collator.call(items);
  const options = { batchSize: run.batch_size, collate, numWorkers: run.num_workers };
  const train = new DataLoader(trainSet, { ...options, shuffle: true, seed, dropLast: true });
  if (train.length === 0) {
    const size = `the training set (${trainSet.length} samples) is smaller than one batch`;
    throw new Error(`${size}: lower --batch_size ${run.batch_size}`);
  }
  const test = splits?.test ? new DataLoader(new VQADataset(splits.test, tokenizer, imgSize), options) : null;
  const mmstarCollator = new MMStarCollator(tokenizer);
  const mmstarOptions = { batchSize: run.mmstar_batch_size, collate: (items: VQAItem[]) => mmstarCollator.call(items) };
  const mmstar = run.mmstar
    ? new DataLoader(new MMStarDataset(await openMMStarRows(run.mmstar), tokenizer, imgSize), mmstarOptions)
    : null;
  return { train, val: new DataLoader(valSet, options), test, mmstar, sizes: [trainSet.length, valSet.length] };
}
