// The text tokenizer: nanoVLM's get_tokenizer (data/processors.py) on top of
// Hugging Face's tokenizers.js, which reads the same tokenizer.json as the
// Rust library and gives the same ids.
// https://github.com/huggingface/nanoVLM/blob/main/data/processors.py
//
// Also here: buildWordTokenizer, a word-level tokenizer.json made from a
// list of texts, for a model trained from scratch on a small vocabulary.
//
// Nothing here touches the file system, so it also runs in a browser: a tokenizer
// is made from the parsed tokenizer.json (and tokenizer_config.json). nanoVLM's
// get_tokenizer, which finds the files of a folder or hub name on disk, is in
// node/tokenizer.ts.

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
  /** Id of the unknown token (word-level tokenizers); undefined where any text encodes (byte-level BPE). */
  unkTokenId: number | undefined;
  /** The words of `text` that encode to the unknown token, in order; [] for tokenizers without one. */
  unknownWords(text: string): string[];
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
export function createTokenizer(tokenizerJson: object, tokenizerConfig: Record<string, unknown> = {}): Tokenizer {
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
  const unk = (tokenizerJson as { model?: { unk_token?: unknown } }).model?.unk_token;
  const unkTokenId = typeof unk === 'string' ? tok.token_to_id(unk) : undefined;

  return {
    encode,
    // tokenizers.js throws on an empty list; an empty generation decodes to ''.
    decode: (ids, options = {}) =>
      ids.length === 0 ? '' : tok.decode(Array.from(ids), { skip_special_tokens: options.skipSpecialTokens ?? false }),
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
    unkTokenId,
    unknownWords(text) {
      if (unkTokenId === undefined) return [];
      // Each word with the whitespace before it, encoded alone: pre-tokenizers split at whitespace.
      const words = [...text.matchAll(/\s*\S+/g)].map((m) => m[0]);
      return words.filter((word) => encode(word).includes(unkTokenId)).map((word) => word.trim());
    },
  };
}

// Splits text into words with their leading space, numbers, punctuation and
// whitespace (GPT-2's pattern without its contractions): "is the triangle? Answer:red"
// -> "is", " the", " triangle", "?", " Answer", ":", "red". Each piece is one token, and
// the pieces joined give back the text exactly.
const SPLIT_PATTERN = ' ?[A-Za-z]+| ?[0-9]+| ?[^\\sA-Za-z0-9]+|\\s+';

/**
 * A word-level tokenizer.json object, for createTokenizer: one token per distinct piece of
 * `texts` (ids in order of first appearance), `<|endoftext|>` = 0 (eos and padding) and
 * `<unk>` = 1 for anything else. The pieces are WordPiece's whole words (it never needs its
 * "##" continuations here) and the Fuse decoder joins them back without adding spaces.
 */
export function buildWordTokenizer(texts: Iterable<string>): object {
  const vocab: Record<string, number> = { '<|endoftext|>': 0, '<unk>': 1 };
  let size = 2;
  for (const text of texts) {
    for (const piece of text.match(new RegExp(SPLIT_PATTERN, 'g')) ?? []) {
      if (!(piece in vocab)) vocab[piece] = size++;
    }
  }
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<|endoftext|>'), special(1, '<unk>')],
    normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { Regex: SPLIT_PATTERN }, behavior: 'Isolated', invert: false },
    post_processor: null,
    decoder: { type: 'Fuse' },
    model: {
      type: 'WordPiece',
      unk_token: '<unk>',
      continuing_subword_prefix: '##',
      max_input_chars_per_word: 100,
      vocab,
    },
  };
}

// tokenizer_config.json writes special tokens either as a plain string or, in
// older files, as an AddedToken object with a `content` field.
function configEosToken(config: Record<string, unknown>): string | undefined {
  const eos = config.eos_token;
  if (typeof eos === 'string') return eos;
  if (eos && typeof eos === 'object' && 'content' in eos) return String(eos.content);
  return undefined;
}
