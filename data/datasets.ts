// Datasets: nanoVLM's VQADataset and MMStarDataset, over rows read from the
// cauldron's parquet files, from JSONL files with images beside them, or from
// MMStar's parquet file. nanoVLM gets its rows from Hugging Face `datasets`
// (Arrow, memory-mapped); here a parquet file is read one row group at a time,
// so a dataset far larger than memory still has random access by index. Row
// groups are the unit of reading: rows say which of them belong together
// (`groups`), and a shuffling DataLoader visits the groups in random order and
// shuffles rows within a window of decoded groups, so each group is decoded
// once per epoch instead of once per row.
// Nothing here opens a file, so it runs in a browser too: rows are read from an
// AsyncBuffer (hyparquet's random-access bytes) or from a JSONL file's text;
// node/datasets.ts opens files and folders on disk (openVQARows, openMMStarRows).
// https://github.com/huggingface/nanoVLM/blob/main/data/datasets.py

import {
  parquetMetadataAsync,
  parquetReadObjects,
  parquetSchema,
  type AsyncBuffer,
  type FileMetaData,
} from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { Generator } from '../tensor/random.ts';
import type { VQAItem } from './collators.ts';
import { getImageProcessor, type ImageProcessor } from './processors.ts';
import type { Tokenizer } from './tokenizer.ts';

/** One question about one image, before any processing; `where` names the file and row. */
export interface VQARow {
  /** The encoded image (PNG or JPEG bytes). */
  image: Uint8Array;
  question: string;
  answer: string;
  where: string;
}

/** Rows that can be read by index: one file, several files, or a selection of rows. */
export interface VQARows {
  readonly length: number;
  /** Reads row i; a malformed row throws an error whose message starts with its file and row. */
  read(i: number): Promise<VQARow>;
  /**
   * Runs of row indices that are cheap to read together (a parquet row
   * group), covering every row once; absent when each row is read on its own.
   */
  groups?(): number[][];
}

/** Decodes and resizes encoded image bytes; the DataLoader passes one that runs in worker threads. */
export type AsyncImageProcessor = (image: Uint8Array, source: string) => Promise<Float32Array>;

/** What a DataLoader reads: items by index, null for a row that had to be skipped. */
export interface Dataset<T> {
  readonly length: number;
  /** Side of the square images the items hold. */
  readonly imgSize: number;
  get(i: number, processImage?: AsyncImageProcessor): Promise<T | null>;
  /** Item indices best read together (see VQARows.groups); absent when any order costs the same. */
  groups?(): number[][] | undefined;
}

/**
 * nanoVLM's VQADataset. Like nanoVLM (blog era) it keeps the first image and
 * the first (user, assistant) turn of each row: the cauldron's later turns and
 * images are ignored. A row that cannot be used (a missing field, an image that
 * does not decode) is skipped with a warning naming its file and row; nanoVLM
 * would train on a black image instead.
 */
export class VQADataset implements Dataset<VQAItem> {
  private readonly imageProcessor: ImageProcessor;
  // Messages of the rows skipped so far: each row is warned about and counted once,
  // however many epochs meet it.
  private readonly skippedRows = new Set<string>();

  constructor(
    readonly rows: VQARows,
    readonly tokenizer: Pick<Tokenizer, 'eosToken'>,
    readonly imgSize: number,
  ) {
    this.imageProcessor = getImageProcessor(imgSize);
  }

  /** Number of rows, skipped ones included (they are only found when read). */
  get length(): number {
    return this.rows.length;
  }

  /** The rows' row groups: a shuffling DataLoader reads the items group by group. */
  groups(): number[][] | undefined {
    return this.rows.groups?.();
  }

  /** Number of distinct rows skipped so far. */
  get skipped(): number {
    return this.skippedRows.size;
  }

  /** nanoVLM's `__getitem__`: the processed image, the prompt and the answer; null if row i is skipped. */
  async get(i: number, processImage?: AsyncImageProcessor): Promise<VQAItem | null> {
    checkIndex(i, this.length); // a bad index is the caller's bug, not a bad row
    try {
      const row = await this.rows.read(i);
      const image = processImage ? await processImage(row.image, row.where) : this.imageProcessor(row.image, row.where);
      return { image, ...this.format(row) };
    } catch (err) {
      const message = errorMessage(err);
      if (!this.skippedRows.has(message)) {
        this.skippedRows.add(message);
        console.warn(`skipping ${message}`);
      }
      return null;
    }
  }

  /** The prompt and the answer the model learns, ending in eos so that generation learns to stop. */
  protected format(row: VQARow): Pick<VQAItem, 'text_data' | 'answer'> {
    return { text_data: `Question: ${row.question} Answer:`, answer: row.answer + this.tokenizer.eosToken };
  }
}

/** nanoVLM's MMStarDataset: MMStar's questions already list the options; the answer is a letter. */
export class MMStarDataset extends VQADataset {
  protected override format(row: VQARow): Pick<VQAItem, 'text_data' | 'answer'> {
    return {
      text_data: `Question: ${row.question} \nAnswer only with the letter! \nAnswer:`,
      answer: row.answer + this.tokenizer.eosToken,
    };
  }
}

/**
 * nanoVLM's utils.check_multiple_choice_with_regex: for each output, whether it names the
 * correct letter (as a word, followed by punctuation, or inside parentheses).
 */
export function checkMultipleChoiceWithRegex(outputs: string[], answers: string[]): boolean[] {
  // Python's zip would quietly drop the extra entries; a mismatch is a bug worth hearing about.
  if (outputs.length !== answers.length) {
    throw new Error(`${outputs.length} outputs but ${answers.length} answers`);
  }
  return outputs.map((output, i) => {
    // nanoVLM puts the answer into the patterns unescaped; escaping changes nothing for letters.
    const answer = answers[i].toUpperCase().replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const patterns = [`\\b${answer}\\b`, `\\b${answer}[.,)]`, `\\(.*${answer}.*\\)`];
    return patterns.some((pattern) => new RegExp(pattern).test(output));
  });
}

/** Several row sources read as one, in order (Hugging Face datasets' concatenate_datasets). */
export function concatenateRows(parts: VQARows[]): VQARows {
  const starts: number[] = [];
  let length = 0;
  for (const part of parts) {
    starts.push(length);
    length += part.length;
  }
  return {
    length,
    async read(i) {
      checkIndex(i, length);
      let p = parts.length - 1;
      while (starts[p] > i) p--;
      return parts[p].read(i - starts[p]);
    },
    groups: parts.some((part) => part.groups)
      ? () => parts.flatMap((part, p) => ownGroups(part).map((g) => g.map((i) => i + starts[p])))
      : undefined,
  };
}

/** A part's groups, or one group per row when it reads rows on their own. */
function ownGroups(rows: VQARows): number[][] {
  return rows.groups?.() ?? Array.from({ length: rows.length }, (_, i) => [i]);
}

/** The rows at `indices`, in that order (Hugging Face datasets' select). */
export function selectRows(rows: VQARows, indices: number[]): VQARows {
  return {
    length: indices.length,
    async read(i) {
      checkIndex(i, indices.length);
      return rows.read(indices[i]);
    },
    // the selected rows of each underlying group form a group
    groups:
      rows.groups &&
      (() => {
        const groupOf = new Int32Array(rows.length);
        const groups = rows.groups!();
        groups.forEach((g, k) => g.forEach((i) => (groupOf[i] = k)));
        const selected: number[][] = groups.map(() => []);
        indices.forEach((row, i) => selected[groupOf[row]].push(i));
        return selected.filter((g) => g.length > 0);
      }),
  };
}

/** Options of trainValSplit, named as in nanoVLM's TrainConfig. */
export interface SplitOptions {
  /** Fraction of the rows that goes to validation. */
  valRatio: number;
  /** Use at most this many rows (all if undefined). */
  dataCutoffIdx?: number;
  /** Seed of the shuffle before splitting. */
  seed?: number;
}

/**
 * nanoVLM train.py's split: shuffle the (concatenated) rows with a seed so that train and
 * val get equal shares of every source, keep the first data_cutoff_idx, and take the last
 * int(total * val_ratio) of those for validation.
 */
export function trainValSplit(rows: VQARows, options: SplitOptions): { train: VQARows; val: VQARows } {
  const order = new Generator(options.seed ?? 0).shuffle([...Array(rows.length).keys()]);
  const total = Math.min(rows.length, options.dataCutoffIdx ?? rows.length);
  const trainSize = total - Math.floor(total * options.valRatio);
  return {
    train: selectRows(rows, order.slice(0, trainSize)),
    val: selectRows(rows, order.slice(trainSize, total)),
  };
}

// How many decoded row groups are kept, over all parquet files: a DataLoader's
// shuffle window (8 groups by default) and the groups its prefetched batches
// reach into. Reading goes in row-group units (parquet has no cheaper way to
// reach one row without a page index), so a row whose group is not kept costs
// a whole group's decoding.
const CACHED_ROW_GROUPS = 12;
const decodedGroups = new Map<string, Promise<Record<string, unknown>[]>>(); // least recently used first
/** Row groups decoded so far, over all files (benchmarks and tests read this). */
export const parquetStats = { rowGroupsDecoded: 0 };

/** A parquet file read one row group at a time, the last groups read kept decoded. */
export class ParquetFile {
  // The last read queued. Reads go one at a time: a shuffled batch touches many row
  // groups, and reading them all at once would hold them all in memory.
  private reading: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly file: AsyncBuffer,
    private readonly metadata: FileMetaData,
    private readonly columns: string[],
    private readonly groupStarts: number[],
    readonly numRows: number,
  ) {}

  /** Opens the parquet bytes `file` (named `path` in errors) for reading `columns`, `what` they should hold. */
  static async open(file: AsyncBuffer, path: string, columns: string[], what: string): Promise<ParquetFile> {
    let metadata: FileMetaData;
    try {
      metadata = await parquetMetadataAsync(file);
    } catch (err) {
      throw new Error(`${path} is not a parquet file (${errorMessage(err)})`);
    }
    const names = parquetSchema(metadata).children.map((child) => child.element.name);
    const missing = columns.filter((column) => !names.includes(column));
    if (missing.length > 0) {
      throw new Error(`${path} lacks the column(s) ${missing.join(', ')} (it has ${names.join(', ')}): is it ${what}?`);
    }
    // hyparquet-compressors reads every codec but LZO (deprecated in parquet); say so now rather than at every row.
    for (const group of metadata.row_groups) {
      for (const chunk of group.columns) {
        const codec = chunk.meta_data?.codec ?? 'UNCOMPRESSED';
        if (codec !== 'UNCOMPRESSED' && !(codec in compressors)) {
          throw new Error(
            `${path} is compressed with ${codec}; ` +
              'nanovlm-ts reads uncompressed, snappy, gzip, brotli, zstd and lz4 parquet',
          );
        }
      }
    }
    const groupStarts: number[] = [];
    let numRows = 0;
    for (const group of metadata.row_groups) {
      groupStarts.push(numRows);
      numRows += Number(group.num_rows);
    }
    return new ParquetFile(path, file, metadata, columns, groupStarts, numRows);
  }

  /** Row i as an object of its columns; binary columns come as Uint8Array. */
  async readRow(i: number): Promise<Record<string, unknown>> {
    checkIndex(i, this.numRows);
    let g = this.groupStarts.length - 1;
    while (this.groupStarts[g] > i) g--;
    const rows = await this.rowGroup(g);
    return rows[i - this.groupStarts[g]];
  }

  /** Row indices of each row group, in order. */
  groups(): number[][] {
    return this.groupStarts.map((start, g) => {
      const n = Number(this.metadata.row_groups[g].num_rows);
      return Array.from({ length: n }, (_, i) => start + i);
    });
  }

  private rowGroup(g: number): Promise<Record<string, unknown>[]> {
    const key = `${this.path}#${this.columns.join(',')}#${g}`;
    let rows = decodedGroups.get(key);
    if (rows) {
      decodedGroups.delete(key); // re-inserted below as the most recently used
    } else {
      const rowStart = this.groupStarts[g];
      const rowEnd = rowStart + Number(this.metadata.row_groups[g].num_rows);
      const { file, metadata, columns } = this;
      // utf8: false keeps unannotated byte arrays (the image bytes) as bytes.
      const read = () => {
        parquetStats.rowGroupsDecoded++;
        return parquetReadObjects({ file, metadata, columns, rowStart, rowEnd, utf8: false, compressors });
      };
      rows = this.reading.then(read, read);
      this.reading = rows;
      rows.catch(() => decodedGroups.delete(key)); // a failed read is not kept: the next one tries again
    }
    decodedGroups.set(key, rows);
    if (decodedGroups.size > CACHED_ROW_GROUPS) decodedGroups.delete(decodedGroups.keys().next().value!);
    return rows;
  }
}

/** Rows of one parquet file, each turned into a VQARow by `convert`. */
class ParquetRows implements VQARows {
  constructor(
    private readonly file: ParquetFile,
    private readonly convert: (row: Record<string, unknown>) => Omit<VQARow, 'where'>,
  ) {}

  get length(): number {
    return this.file.numRows;
  }

  groups(): number[][] {
    return this.file.groups();
  }

  async read(i: number): Promise<VQARow> {
    const where = `${this.file.path} row ${i}`;
    try {
      return { ...this.convert(await this.file.readRow(i)), where };
    } catch (err) {
      throw new Error(`${where}: ${errorMessage(err)}`);
    }
  }
}

/**
 * A cauldron parquet file's rows (images list<struct<bytes, path>>, texts list<struct<user,
 * assistant, source>>), from its bytes; `path` names it in errors.
 */
export async function cauldronRows(bytes: AsyncBuffer, path: string): Promise<VQARows> {
  const file = await ParquetFile.open(bytes, path, ['images', 'texts'], 'a cauldron file (images, texts)');
  return new ParquetRows(file, (row) => ({
    image: bytesAt(row, ['images', 0, 'bytes']),
    question: textAt(row, ['texts', 0, 'user']),
    answer: textAt(row, ['texts', 0, 'assistant']),
  }));
}

/** MMStar's parquet file's rows (question with the options, image struct<bytes, path>, answer letter). */
export async function mmstarRows(bytes: AsyncBuffer, path: string): Promise<VQARows> {
  const what = 'an MMStar file (question, image, answer)';
  const file = await ParquetFile.open(bytes, path, ['question', 'image', 'answer'], what);
  return new ParquetRows(file, (row) => ({
    image: bytesAt(row, ['image', 'bytes']),
    question: textAt(row, ['question']),
    answer: textAt(row, ['answer']),
  }));
}

/**
 * A JSONL file of {"image": "relative/path.png", "question": "...", "answer": "..."} lines, from
 * its text; `readImage` gets each line's image path as written and returns the image's bytes.
 */
export class JsonlRows implements VQARows {
  // The non-blank lines with their 1-based line numbers; each is parsed when read.
  private readonly lines: { text: string; number: number }[];

  constructor(
    private readonly path: string,
    text: string,
    private readonly readImage: (imagePath: string) => Promise<Uint8Array>,
  ) {
    this.lines = text
      .split('\n')
      .map((line, i) => ({ text: line, number: i + 1 }))
      .filter((line) => line.text.trim() !== '');
  }

  get length(): number {
    return this.lines.length;
  }

  async read(i: number): Promise<VQARow> {
    checkIndex(i, this.lines.length);
    const line = this.lines[i];
    const where = `${this.path} line ${line.number}`;
    try {
      const record: unknown = JSON.parse(line.text);
      const imagePath = textAt(record, ['image']);
      const question = textAt(record, ['question']);
      const answer = textAt(record, ['answer']);
      return { image: await this.readImage(imagePath), question, answer, where };
    } catch (err) {
      throw new Error(`${where}: ${errorMessage(err)}`);
    }
  }
}

/** The value at `path` inside nested objects and arrays, or undefined. */
function valueAt(value: unknown, path: (string | number)[]): unknown {
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<string | number, unknown>)[key];
  }
  return value;
}

/** A text field; parquet files that do not mark a column as UTF-8 give its bytes. */
function textAt(value: unknown, path: (string | number)[]): string {
  const found = valueAt(value, path);
  if (typeof found === 'string') return found;
  if (found instanceof Uint8Array) return new TextDecoder().decode(found);
  throw new Error(`missing ${fieldName(path)}`);
}

/** A binary field (image bytes). */
function bytesAt(value: unknown, path: (string | number)[]): Uint8Array {
  const found = valueAt(value, path);
  if (found instanceof Uint8Array) return found;
  throw new Error(`missing ${fieldName(path)}`);
}

/** ['texts', 0, 'user'] -> "texts[0].user". */
function fieldName(path: (string | number)[]): string {
  return path.map((key, i) => (typeof key === 'number' ? `[${key}]` : i === 0 ? key : `.${key}`)).join('');
}

function checkIndex(i: number, length: number): void {
  if (!Number.isInteger(i) || i < 0 || i >= length) throw new RangeError(`index ${i} out of range [0, ${length})`);
}

/** An error's message (or the thrown value as text). */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
