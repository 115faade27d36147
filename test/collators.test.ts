// nanoVLM's collators against the exact output of the Python originals (gold),
// plus hand-made batches for the truncation boundary and padding-free rows.

import { GOLD, SMOLLM2_TOKENIZER } from './fixtures.ts';
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { IGNORE_INDEX, MMStarCollator, VQACollator, type VQAItem } from '../data/collators.ts';
import { getTokenizer } from '../node/tokenizer.ts';

const gold = JSON.parse(readFileSync(`${GOLD}text.json`, 'utf8'));
const tok = getTokenizer(SMOLLM2_TOKENIZER);
const eos = '<|endoftext|>';

// Items shaped as nanoVLM's VQADataset builds them; each gets its own image.
function vqaItems(questions: string[], answers: string[]): VQAItem[] {
  return questions.map((q, i) => ({
    image: new Float32Array([i]),
    text_data: `Question: ${q} Answer:`,
    answer: answers[i] + eos,
  }));
}

// The expected row for an item that fits in maxLength, built from the pieces:
// padding, then question and answer; labels are the answer ids, placed one
// step left of where they sit in input_ids, and -100 everywhere else.
function expectedRow(item: VQAItem, maxLength: number) {
  const question = tok.encode(item.text_data);
  const answer = tok.encode(item.answer);
  const pad = maxLength - question.length - answer.length;
  return {
    input_ids: [...Array(pad).fill(0), ...question, ...answer],
    attention_mask: [...Array(pad).fill(0), ...Array(maxLength - pad).fill(1)],
    labels: [...Array(pad + question.length - 1).fill(IGNORE_INDEX), ...answer, IGNORE_INDEX],
  };
}

describe('VQACollator', () => {
  test('matches nanoVLM exactly (left padding, one truncated sample)', () => {
    const g = gold.vqa_collator;
    const items = vqaItems(g.questions, g.answers);
    const batch = new VQACollator(tok, g.max_length).call(items);
    expect(batch.batchSize).toBe(4);
    expect(batch.seqLen).toBe(g.max_length);
    expect(Array.from(batch.input_ids)).toEqual(g.input_ids.flat());
    expect(Array.from(batch.attention_mask)).toEqual(g.attention_mask.flat());
    expect(Array.from(batch.labels)).toEqual(g.labels.flat());
    expect(batch.images).toEqual(items.map((item) => item.image));
    expect(batch.images[2]).toBe(items[2].image);
  });

  test('a sample of exactly maxLength is kept; one token more is ignored', () => {
    const items = vqaItems(['What is this?', 'What is this?', 'Hi?'], ['A big cat.', 'A big fat cat.', 'No.']);
    const maxLength = tok.encode(items[0].text_data + items[0].answer).length;
    expect(tok.encode(items[1].text_data + items[1].answer).length).toBe(maxLength + 1);
    const batch = new VQACollator(tok, maxLength).call(items);
    const row = (b: number, a: Int32Array) => Array.from(a.subarray(b * maxLength, (b + 1) * maxLength));

    expect(row(0, batch.input_ids)).toEqual(expectedRow(items[0], maxLength).input_ids);
    expect(row(0, batch.attention_mask)).toEqual(Array(maxLength).fill(1));
    expect(row(0, batch.labels)).toEqual(expectedRow(items[0], maxLength).labels);

    // Truncated: the right end (here the eos) is cut, and no loss is taken.
    const full = tok.encode(items[1].text_data + items[1].answer);
    expect(row(1, batch.input_ids)).toEqual(full.slice(0, maxLength));
    expect(row(1, batch.attention_mask)).toEqual(Array(maxLength).fill(1));
    expect(row(1, batch.labels)).toEqual(Array(maxLength).fill(IGNORE_INDEX));

    expect(row(2, batch.input_ids)).toEqual(expectedRow(items[2], maxLength).input_ids);
    expect(row(2, batch.attention_mask)).toEqual(expectedRow(items[2], maxLength).attention_mask);
    expect(row(2, batch.labels)).toEqual(expectedRow(items[2], maxLength).labels);
  });

  test('a batch where no sample needs padding', () => {
    const items = vqaItems(['Is the square red?', 'Is the circle red?'], ['yes', 'no']);
    const maxLength = tok.encode(items[0].text_data + items[0].answer).length;
    expect(tok.encode(items[1].text_data + items[1].answer).length).toBe(maxLength);
    const batch = new VQACollator(tok, maxLength).call(items);
    const expected = items.map((item) => expectedRow(item, maxLength));
    expect(Array.from(batch.input_ids)).toEqual(expected.flatMap((r) => r.input_ids));
    expect(Array.from(batch.attention_mask)).toEqual(Array(2 * maxLength).fill(1));
    expect(Array.from(batch.labels)).toEqual(expected.flatMap((r) => r.labels));
  });
});

describe('MMStarCollator', () => {
  test('matches nanoVLM exactly', () => {
    const g = gold.mmstar_collator;
    const items = g.questions.map((q: string, i: number) => ({
      image: new Float32Array([i]),
      text_data: q,
      answer: g.answers[i],
    }));
    const batch = new MMStarCollator(tok).call(items);
    expect(batch.batchSize).toBe(2);
    expect(batch.seqLen).toBe(g.input_ids[0].length);
    expect(batch.labelLen).toBe(g.labels[0].length);
    expect(Array.from(batch.input_ids)).toEqual(g.input_ids.flat());
    expect(Array.from(batch.attention_mask)).toEqual(g.attention_mask.flat());
    expect(Array.from(batch.labels)).toEqual(g.labels.flat());
    expect(batch.images).toEqual(items.map((item: VQAItem) => item.image));
  });

  test('prompts and answers are left-padded to their own longest', () => {
    const items = vqaItems(['Which is larger? A: 1 B: 2', 'Hi?'], ['B', 'Hello there']);
    const batch = new MMStarCollator(tok).call(items);
    const [q0, q1] = items.map((item) => tok.encode(item.text_data));
    const [a0, a1] = items.map((item) => tok.encode(item.answer));
    expect(batch.seqLen).toBe(q0.length);
    const pad = (n: number) => Array(n).fill(0);
    expect(Array.from(batch.input_ids)).toEqual([...q0, ...pad(q0.length - q1.length), ...q1]);
    expect(Array.from(batch.attention_mask)).toEqual([
      ...Array(q0.length).fill(1),
      ...pad(q0.length - q1.length),
      ...Array(q1.length).fill(1),
    ]);
    expect(batch.labelLen).toBe(a1.length);
    expect(Array.from(batch.labels)).toEqual([...pad(a1.length - a0.length), ...a0, ...a1]);
  });
});
