// The tokenizer against ids from Hugging Face's Rust tokenizers (gold), the
// word-level tokenizer built from texts, the ways getTokenizer finds its files
// (the same hub-cache resolver as model folders) and the errors when it cannot.

import { GOLD, SMOLLM2_TOKENIZER } from './fixtures.ts';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import { buildWordTokenizer, createTokenizer } from '../data/tokenizer.ts';
import { resolveModelDir } from '../node/model_folder.ts';
import { getTokenizer } from '../node/tokenizer.ts';

const smollm2 = SMOLLM2_TOKENIZER;
const gold = JSON.parse(readFileSync(join(GOLD, 'text.json'), 'utf8'));

// Every temporary folder, removed when the file is done.
const temporary: string[] = [];
afterAll(() => temporary.forEach((dir) => rmSync(dir, { recursive: true, force: true })));
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temporary.push(dir);
  return dir;
}

// A fresh folder holding a copy of the SmolLM2 tokenizer.json at `sub`.
function tokenizerFolder(sub = ''): { root: string; dir: string } {
  const root = tempDir('nanovlm-tok-');
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

  test('byte-level BPE has no unknown token: every word is known', () => {
    expect(tok.unkTokenId).toBeUndefined();
    expect(tok.unknownWords('Zxqv wibble ☃?')).toEqual([]);
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
    expect(Array.from(longest.attention_mask.subarray(a.length))).toEqual([...Array(a.length - 1).fill(0), 1]);
    const cut = tok.batchEncodePlus(['Hello world, 12345 tokens!'], { maxLength: 4 });
    expect(Array.from(cut.input_ids)).toEqual(a.slice(0, 4));
    expect(cut.lengths).toEqual([a.length]);
  });
});

describe('buildWordTokenizer', () => {
  const texts = ['Question: Which fruit is this? Answer:', 'Question: Which fruit is this? Answer:apple', 'kiwi 12!'];
  const tok = createTokenizer(buildWordTokenizer(texts));

  test('one id per distinct piece, in order of first appearance, after <|endoftext|> and <unk>', () => {
    expect(tok.vocabSize).toBe(2 + 12); // Question : _Which _fruit _is _this ? _Answer apple kiwi _12 !
    expect(tok.encode('Question:')).toEqual([2, 3]);
    expect([tok.eosTokenId, tok.padTokenId, tok.unkTokenId]).toEqual([0, 0, 1]);
    for (const text of texts) expect(tok.decode(tok.encode(text))).toBe(text);
  });

  test('names the words it does not know, as they stand in the text', () => {
    expect(tok.unknownWords('Question: Which fruit is this? Answer:')).toEqual([]);
    expect(tok.unknownWords('Question: Which vegetable is that? Answer:')).toEqual(['vegetable', 'that?']);
    expect(tok.unknownWords('Which fruit')).toEqual(['Which']); // only " Which", after "Question:", was seen
    expect(tok.decode(tok.encode('Question: Which vegetable'))).toBe('Question: Which<unk>');
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

  test('the cache under $XDG_CACHE_HOME/huggingface/hub, the first sorted snapshot that has the file', () => {
    const { root } = tokenizerFolder('huggingface/hub/models--TestOrg--tok-c/snapshots/bbb');
    mkdirSync(join(root, 'huggingface/hub/models--TestOrg--tok-c/snapshots/aaa'));
    mkdirSync(join(root, 'huggingface/hub/models--TestOrg--tok-c/snapshots/ccc'));
    writeFileSync(join(root, 'huggingface/hub/models--TestOrg--tok-c/snapshots/ccc/config.json'), '{}');
    vi.stubEnv('HF_HUB_CACHE', undefined);
    vi.stubEnv('HF_HOME', undefined);
    vi.stubEnv('XDG_CACHE_HOME', root);
    expect(getTokenizer('TestOrg/tok-c').vocabSize).toBe(49152);
    // model folders go through the same resolver: the snapshot holding config.json
    expect(resolveModelDir('TestOrg/tok-c')).toBe(join(root, 'huggingface/hub/models--TestOrg--tok-c/snapshots/ccc'));
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
    expect(() => getTokenizer('/no/such/folder')).toThrow(/tokenizer not found at \/no\/such\/folder.*--tokenizer/);
  });

  test('a folder without tokenizer.json', () => {
    const empty = tempDir('nanovlm-tok-');
    expect(() => getTokenizer(empty)).toThrow(
      `tokenizer not found at ${join(empty, 'tokenizer.json')}: pass --tokenizer`,
    );
  });

  test('a hub name that is not in the local cache cannot be downloaded', () => {
    vi.stubEnv('HF_HUB_CACHE', tempDir('nanovlm-hub-'));
    const load = () => getTokenizer('HuggingFaceTB/cosmo2-tokenizer');
    expect(load).toThrow(/not found at HuggingFaceTB\/cosmo2-tokenizer/);
    expect(load).toThrow(/models--HuggingFaceTB--cosmo2-tokenizer.*not supported.*--tokenizer/);
  });
});
