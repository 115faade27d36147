// The text tokenizer: nanoVLM's get_tokenizer (data/processors.py) on top of
// Hugging Face's tokenizers.js, which reads the same tokenizer.json as the
// Rust library and gives the same ids.
// https://github.com/huggingface/nanoVLM/blob/main/data/processors.py
//
// Only readTokenizerFiles touches the file system; everything else also runs
// in a browser (fetch the two JSON files and call createTokenizer).

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';

/** What the collators, training and generation need from a tokenizer. */
export interface Tokenizer {
  /** Token ids of `text`, no special tokens added (nanoVLM's `encode`). */
  encode(text: string): number[];
  /** Text of `ids`; special tokens such as `<|endoftext|>` are kept unless skipped. */
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  /** Left-pads (and with `maxLength`, truncates) a batch, like `batch_encode_plus`. */
  batchEncodePlus(texts: string[], options?: { maxLength?: number }): EncodedBatch;
  /** The end-of-sequence token, e.g. `<|endoftext|>`. */
  eosToken: string;
  /** Id of the end-of-sequence token. */
  eosTokenId: number;
  /** Id used for padding: the eos id, as nanoVLM sets `pad_token = eos_token`. */
  padTokenId: number;
  /** Number of ids, added tokens included (Python's `len(tokenizer)`). */
  vocabSize: number;
}

/** A left-padded batch; `input_ids` and `attention_mask` are (batchSize, seqLen) row-major. */
export interface EncodedBatch {
  input_ids: Int32Array;
  attention_mask: Int32Array;
  /** Token count of each text before truncation: more than seqLen means it was cut. */
  lengths: number[];
  batchSize: number;
  seqLen: number;
}

/** Wraps parsed `tokenizer.json` and `tokenizer_config.json` contents (no file access). */
export function createTokenizer(
  tokenizerJson: object,
  tokenizerConfig: Record<string, unknown> = {},
): Tokenizer {
  // tokenizers.js cleans up spaces before punctuation on decode unless told
  // otherwise; the Rust library never does and transformers no longer does by
  // default, so "a ." must decode to "a ." here too.
  const tok = new HFTokenizer(tokenizerJson, {
    ...tokenizerConfig,
    clean_up_tokenization_spaces: tokenizerConfig.clean_up_tokenization_spaces ?? false,
  });

  const eosToken = configEosToken(tokenizerConfig) ?? '<|endoftext|>';
  const eosTokenId = tok.token_to_id(eosToken);
  if (eosTokenId === undefined) {
    throw new Error(`tokenizer has no eos token: ${eosToken} is not in its vocabulary`);
  }
  const padTokenId = eosTokenId;

  const encode = (text: string) => tok.encode(text, { add_special_tokens: false }).ids;

  return {
    encode,
    // tokenizers.js throws on an empty list; an empty generation decodes to ''.
    decode: (ids, options = {}) =>
      ids.length === 0
        ? ''
        : tok.decode(Array.from(ids), { skip_special_tokens: options.skipSpecialTokens ?? false }),
    batchEncodePlus(texts, options = {}) {
      const encoded = texts.map(encode);
      const lengths = encoded.map((ids) => ids.length);
      // With maxLength every row has exactly that length (padding="max_length",
      // truncation=True); without it rows pad to the longest (padding=True).
      const seqLen = options.maxLength ?? Math.max(0, ...lengths);
      const input_ids = new Int32Array(texts.length * seqLen).fill(padTokenId);
      const attention_mask = new Int32Array(texts.length * seqLen);
      encoded.forEach((ids, b) => {
        // Truncation keeps the start (the right end is cut); padding goes left.
        const kept = ids.slice(0, seqLen);
        const start = b * seqLen + seqLen - kept.length;
        input_ids.set(kept, start);
        attention_mask.fill(1, start, (b + 1) * seqLen);
      });
      return { input_ids, attention_mask, lengths, batchSize: texts.length, seqLen };
    },
    eosToken,
    eosTokenId,
    padTokenId,
    vocabSize: tok.get_vocab(true).size,
  };
}

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

// tokenizer_config.json writes special tokens either as a plain string or, in
// older files, as an AddedToken object with a `content` field.
function configEosToken(config: Record<string, unknown>): string | undefined {
  const eos = config.eos_token;
  if (typeof eos === 'string') return eos;
  if (eos && typeof eos === 'object' && 'content' in eos) return String(eos.content);
  return undefined;
}

// The one function that reads files. Accepts a folder holding tokenizer.json,
// the tokenizer.json file itself, a Hugging Face cache folder
// (models--Org--Name), or a hub name ("Org/Name") already in the local cache:
// there is no download, so anything else is an error that says what to pass.
function readTokenizerFiles(nameOrPath: string): {
  tokenizerJson: object;
  tokenizerConfig: Record<string, unknown>;
} {
  const fix = 'pass --tokenizer path/to/folder-with-tokenizer.json';
  let file: string | undefined;
  if (existsSync(nameOrPath)) {
    file = statSync(nameOrPath).isFile()
      ? nameOrPath
      : (snapshotTokenizer(nameOrPath) ?? join(nameOrPath, 'tokenizer.json'));
    if (!existsSync(file)) throw new Error(`tokenizer not found at ${file}: ${fix}`);
  } else {
    // The cache layout of huggingface_hub: $HF_HUB_CACHE, else $HF_HOME/hub,
    // else ~/.cache/huggingface/hub; "Org/Name" lives in models--Org--Name.
    const cacheHome = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
    const hfHome = process.env.HF_HOME || join(cacheHome, 'huggingface');
    const hub = process.env.HF_HUB_CACHE || join(hfHome, 'hub');
    const cached = join(hub, `models--${nameOrPath.replaceAll('/', '--')}`);
    file = existsSync(cached) ? snapshotTokenizer(cached) : undefined;
    if (!file) {
      throw new Error(
        `tokenizer not found at ${nameOrPath} (nor in the Hugging Face cache at ${cached}); ` +
          `hub downloads are not supported: ${fix}`,
      );
    }
  }
  const configFile = join(dirname(file), 'tokenizer_config.json');
  return {
    tokenizerJson: JSON.parse(readFileSync(file, 'utf8')),
    tokenizerConfig: existsSync(configFile) ? JSON.parse(readFileSync(configFile, 'utf8')) : {},
  };
}

// In a cache folder, refs/main names the snapshot `from_pretrained` would use;
// without it, take any snapshot that has a tokenizer.json.
function snapshotTokenizer(modelDir: string): string | undefined {
  const snapshots = join(modelDir, 'snapshots');
  if (!basename(modelDir).startsWith('models--') || !existsSync(snapshots)) return undefined;
  const ref = join(modelDir, 'refs', 'main');
  const hashes = existsSync(ref) ? [readFileSync(ref, 'utf8').trim()] : [];
  return [...hashes, ...readdirSync(snapshots).sort()]
    .map((hash) => join(snapshots, hash, 'tokenizer.json'))
    .find((file) => existsSync(file));
}
