// VQA rows from files and folders on disk, in Node: the cauldron's parquet files, JSONL files with
// images beside them, MMStar's parquet file. What the rows are and how they are read is
// data/datasets.ts's (which runs in a browser too); here is only finding and opening the files.

import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, resolve } from 'node:path';
import { asyncBufferFromFile, type AsyncBuffer } from 'hyparquet';
import { JsonlRows, cauldronRows, concatenateRows, errorMessage, mmstarRows, type VQARows } from '../data/datasets.ts';

/**
 * Opens VQA rows from files: the cauldron's parquet files (`images`, `texts` columns),
 * JSONL files of {"image", "question", "answer"} lines (image paths relative to the file),
 * or folders holding such files. Several paths are concatenated in order.
 */
export async function openVQARows(paths: string[]): Promise<VQARows> {
  const files = paths.flatMap((path) => dataFiles(path, ['.parquet', '.jsonl']));
  const open = async (file: string) =>
    extname(file) === '.jsonl' ? openJsonl(file) : cauldronRows(await openParquet(file), file);
  const parts = await Promise.all(files.map(open));
  return concatenateRows(parts);
}

/** Opens MMStar's parquet file (or a folder of them) as rows for MMStarDataset. */
export async function openMMStarRows(path: string): Promise<VQARows> {
  const files = dataFiles(path, ['.parquet']);
  const parts = await Promise.all(files.map(async (file) => mmstarRows(await openParquet(file), file)));
  return concatenateRows(parts);
}

/** A parquet file's bytes, read on demand; a missing or unreadable file is an error with one clear line. */
export async function openParquet(path: string): Promise<AsyncBuffer> {
  try {
    return await asyncBufferFromFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`parquet file not found: ${path}`);
    throw new Error(`cannot read ${path} (${errorMessage(err)})`);
  }
}

/** A JSONL file's rows; their images are read from paths relative to the file. */
async function openJsonl(path: string): Promise<JsonlRows> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `JSONL file not found: ${path}` : `cannot read ${path} (${errorMessage(err)})`);
  }
  return new JsonlRows(path, text, (image) => readImageFile(resolve(dirname(path), image)));
}

/** The bytes of an image file; errors say which file. */
async function readImageFile(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `image not found: ${path}` : `cannot read image ${path} (${code})`);
  }
}

/** `path` itself, or the files with one of `extensions` found under the folder `path`, sorted. */
function dataFiles(path: string, extensions: string[]): string[] {
  // A file of a known type goes to its reader, which reports it if missing or unreadable.
  if (extensions.includes(extname(path))) return [path];
  const kinds = extensions.join(' or ');
  let names: string[];
  try {
    names = readdirSync(path, { recursive: true, encoding: 'utf8' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`not found: ${path}`);
    throw new Error(`cannot read ${path}: expected a ${kinds} file or a folder of them`);
  }
  const files = names
    .filter((name) => extensions.includes(extname(name)))
    .sort()
    .map((name) => join(path, name));
  if (files.length === 0) throw new Error(`no ${kinds} files in ${path}`);
  return files;
}
