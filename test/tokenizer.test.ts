// The tokenizer against ids from Hugging Face's Rust tokenizers (gold), plus
// the ways getTokenizer finds its files and the errors when it cannot.

import { GOLD, SMOLLM2_TOKENIZER } from './fixtures.ts';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { getTokenizer } from '../data/tokenizer.ts';

const smollm2 = SMOLLM2_TOKENIZER;
const gold = JSON.parse(readFileSync(join(GOLD, 'text.json'), 'utf8'));

// A fresh folder holding a copy of the SmolLM2 tokenizer.json at `sub`.
function tokenizerFolder(sub = ''): { root: string; dir: string } {
  const root = mkdtempSync(join(tmpdir(), 'nanovlm-tok-'));
  const dir = join(root, sub);
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(smollm2, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  return { root, dir };
}

afterEach(() => {
  vi.unstubAllEnvs();
});

describe('SmolLM2 tokenizer matches the Rust tokenizer', () => {
  const tok = getTokenizer(smollm2);

  test.each(gold.encode as { text: string; ids: number[]; decoded: string }[])(
    'encode and decode $text',
    ({ text, ids, decoded }) => {
      expect(tok.encode(text)).toEqual(ids);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(decoded);
      // Without skipping, special tokens survive and decoding round-trips.
      expect(tok.decode(ids)).toBe(text);
    },
  );

  test('pad = eos = <|endoftext|> (id 0), as nanoVLM sets it', () => {
    expect(tok.eosToken).toBe('<|endoftext|>');
    expect(tok.eosTokenId).toBe(0);
    expect(tok.padTokenId).toBe(0);
    expect(tok.vocabSize).toBe(49152);
  });

  test('decode keeps spaces before punctuation and accepts typed arrays', () => {
    const ids = tok.encode('a , b . c !');
    expect(tok.decode(Int32Array.from(ids))).toBe('a , b . c !');
    expect(tok.decode([])).toBe('');
  });

  test('batchEncodePlus pads left, and truncates the right end to maxLength', () => {
    const a = tok.encode('Hello world, 12345 tokens!');
    const b = tok.encode('Hello');
    const longest = tok.batchEncodePlus(['Hello world, 12345 tokens!', 'Hello']);
    expect(longest.seqLen).toBe(a.length);
    expect(Array.from(longest.input_ids)).toEqual([...a, ...Array(a.length - 1).fill(0), ...b]);
    expect(Array.from(longest.attention_mask.subarray(a.length))).toEqual([
      ...Array(a.length - 1).fill(0),
      1,
    ]);
    const cut = tok.batchEncodePlus(['Hello world, 12345 tokens!'], { maxLength: 4 });
    expect(Array.from(cut.input_ids)).toEqual(a.slice(0, 4));
    expect(cut.lengths).toEqual([a.length]);
  });
});

describe('getTokenizer finds the files', () => {
  test('a direct path to tokenizer.json', () => {
    const tok = getTokenizer(join(smollm2, 'tokenizer.json'));
    expect(tok.encode(gold.encode[0].text)).toEqual(gold.encode[0].ids);
  });

  test("tokenizer_config.json's eos_token sets eos and pad", () => {
    const { dir } = tokenizerFolder();
    const config = join(smollm2, 'instruct_reference/tokenizer_config.json');
    copyFileSync(config, join(dir, 'tokenizer_config.json'));
    const tok = getTokenizer(dir);
    expect(tok.eosToken).toBe('<|im_end|>');
    expect(tok.eosTokenId).toBe(2);
    expect(tok.padTokenId).toBe(2);
  });

  test('a Hugging Face cache folder (no refs), by path and by hub name', () => {
    const { root } = tokenizerFolder('hub/models--TestOrg--tok-a/snapshots/abc123');
    expect(getTokenizer(join(root, 'hub/models--TestOrg--tok-a')).eosTokenId).toBe(0);
    vi.stubEnv('HF_HUB_CACHE', join(root, 'hub'));
    expect(getTokenizer('TestOrg/tok-a').encode('Hello')).toEqual([19556]);
  });

  test('the cache under $HF_HOME/hub, following refs/main', () => {
    const { root } = tokenizerFolder('hub/models--TestOrg--tok-b/snapshots/def456');
    mkdirSync(join(root, 'hub/models--TestOrg--tok-b/refs'));
    writeFileSync(join(root, 'hub/models--TestOrg--tok-b/refs/main'), 'def456');
    vi.stubEnv('HF_HUB_CACHE', undefined);
    vi.stubEnv('HF_HOME', root);
    expect(getTokenizer('TestOrg/tok-b').vocabSize).toBe(49152);
  });
});

describe('getTokenizer explains what is missing', () => {
  test('a folder that does not exist', () => {
    expect(() => getTokenizer('/no/such/folder')).toThrow(
      /tokenizer not found at \/no\/such\/folder.*--tokenizer/,
    );
  });

  test('a folder without tokenizer.json', () => {
    const empty = mkdtempSync(join(tmpdir(), 'nanovlm-tok-'));
    expect(() => getTokenizer(empty)).toThrow(
      `tokenizer not found at ${join(empty, 'tokenizer.json')}: pass --tokenizer`,
    );
  });

  test('a hub name that is not in the local cache cannot be downloaded', () => {
    vi.stubEnv('HF_HUB_CACHE', mkdtempSync(join(tmpdir(), 'nanovlm-hub-')));
    const load = () => getTokenizer('HuggingFaceTB/cosmo2-tokenizer');
    expect(load).toThrow(/not found at HuggingFaceTB\/cosmo2-tokenizer/);
    expect(load).toThrow(/models--HuggingFaceTB--cosmo2-tokenizer.*not supported.*--tokenizer/);
  });
});
