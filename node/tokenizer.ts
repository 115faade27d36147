// nanoVLM's get_tokenizer in Node: finds a tokenizer's files on disk and makes the tokenizer
// (data/tokenizer.ts's createTokenizer, which runs in a browser too).

import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createTokenizer, type Tokenizer } from '../data/tokenizer.ts';
import { hubCachePath, isHubName, resolveLocalDir } from './model_folder.ts';

// Loading parses a 2 MB JSON file, so like nanoVLM's TOKENIZERS_CACHE each
// name is loaded once per process.
const tokenizersCache = new Map<string, Tokenizer>();

/** nanoVLM's `get_tokenizer`: loads a local tokenizer folder, file or cached hub name. */
export function getTokenizer(nameOrPath: string): Tokenizer {
  let tokenizer = tokenizersCache.get(nameOrPath);
  if (!tokenizer) {
    const { tokenizerJson, tokenizerConfig } = readTokenizerFiles(nameOrPath);
    tokenizer = createTokenizer(tokenizerJson, tokenizerConfig);
    tokenizersCache.set(nameOrPath, tokenizer);
  }
  return tokenizer;
}

// Accepts a folder holding tokenizer.json, the tokenizer.json file itself, a Hugging Face cache
// folder (models--Org--Name), or a hub name ("Org/Name") already in the local cache (resolved as
// for model folders): there is no download, so anything else is an error that says what to pass.
function readTokenizerFiles(nameOrPath: string): {
  tokenizerJson: object;
  tokenizerConfig: Record<string, unknown>;
} {
  const fix = 'pass --tokenizer path/to/folder-with-tokenizer.json';
  const isFile = existsSync(nameOrPath) && statSync(nameOrPath).isFile();
  const dir = isFile ? dirname(nameOrPath) : resolveLocalDir(nameOrPath, 'tokenizer.json');
  if (!dir) {
    const cache = isHubName(nameOrPath) ? ` (nor in the Hugging Face cache at ${hubCachePath(nameOrPath)})` : '';
    throw new Error(`tokenizer not found at ${nameOrPath}${cache}; hub downloads are not supported: ${fix}`);
  }
  const file = isFile ? nameOrPath : join(dir, 'tokenizer.json');
  if (!existsSync(file)) throw new Error(`tokenizer not found at ${file}: ${fix}`);
  const configFile = join(dir, 'tokenizer_config.json');
  return {
    tokenizerJson: JSON.parse(readFileSync(file, 'utf8')),
    tokenizerConfig: existsSync(configFile) ? JSON.parse(readFileSync(configFile, 'utf8')) : {},
  };
}
