// nn modules: parameter naming, state dicts, loading errors, tied weights,
// train/eval, and the layers' forward values.

import { describe, expect, it } from 'vitest';
import { Conv2d, Dropout, Embedding, LayerNorm, Linear, Module, RMSNorm, parameter, buffer } from '../nn/index.ts';
import { loadModule, saveModule } from '../node/safetensors.ts';
import { manualSeed, tensor, zeros, type Tensor } from '../tensor/index.ts';
import { expectClose } from './helpers.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

class Attn extends Module {
  q_proj = new Linear(4, 4, false);
  out_proj = new Linear(4, 4);
}
class Block extends Module {
  attn = new Attn();
  ln1 = new LayerNorm(4);
  drop = new Dropout(0.1);
}
class Tiny extends Module {
  token_embedding = new Embedding(10, 4);
  blocks = [new Block(), new Block()];
  norm = new RMSNorm(4);
  head = new Linear(4, 10, false);
  inv_freq: Tensor = buffer(tensor([1, 0.5]));
  constructor() {
    super();
    this.head.weight = this.token_embedding.weight; // tied, as nanoVLM's decoder
  }
}

describe('Module', () => {
  it('names parameters by their property paths, arrays included', () => {
    manualSeed(0);
    const m = new Tiny();
    expect([...m.stateDict().keys()]).toEqual([
      'token_embedding.weight',
      'blocks.0.attn.q_proj.weight',
      'blocks.0.attn.out_proj.weight',
      'blocks.0.attn.out_proj.bias',
      'blocks.0.ln1.weight',
      'blocks.0.ln1.bias',
      'blocks.1.attn.q_proj.weight',
      'blocks.1.attn.out_proj.weight',
      'blocks.1.attn.out_proj.bias',
      'blocks.1.ln1.weight',
      'blocks.1.ln1.bias',
      'norm.weight',
      'head.weight',
      'inv_freq',
    ]);
    // a tied tensor is one parameter, buffers are not parameters
    expect(m.parameters().length).toBe(12);
    expect(m.numParameters()).toBe(40 + 2 * (16 + 16 + 4 + 8) + 4);
  });
  it('loads a state dict and reports missing, unexpected and mis-shaped keys together', () => {
    manualSeed(1);
    const a = new Tiny();
    manualSeed(2);
    const b = new Tiny();
    b.loadStateDict(a.stateDict());
    expect(Array.from(b.blocks[1].attn.q_proj.weight.dataSync())).toEqual(
      Array.from(a.blocks[1].attn.q_proj.weight.dataSync()),
    );

    const sd = a.stateDict();
    sd.delete('norm.weight');
    sd.set('extra.weight', zeros([1]));
    sd.set('blocks.0.ln1.bias', zeros([5]));
    expect(() => b.loadStateDict(sd)).toThrow(
      'loadStateDict: wrong shape: blocks.0.ln1.bias: expected [4], got [5] | ' +
        'missing keys: norm.weight | unexpected keys: extra.weight',
    );
  });
  it('accepts either name of a tied pair (PyTorch saves only one)', () => {
    const a = new Tiny();
    const b = new Tiny();
    const sd = a.stateDict();
    sd.delete('token_embedding.weight');
    b.loadStateDict(sd);
    expect(b.head.weight).toBe(b.token_embedding.weight);
    expect(Array.from(b.token_embedding.weight.dataSync())).toEqual(Array.from(a.head.weight.dataSync()));
  });
  it('a failed load changes nothing', () => {
    const a = new Tiny();
    const b = new Tiny();
    const before = Array.from(b.norm.weight.dataSync());
    const sd = a.stateDict();
    sd.set('blocks.0.ln1.bias', zeros([5]));
    a.norm.weight.assign(a.norm.weight.mul(3));
    expect(() => b.loadStateDict(sd)).toThrow();
    expect(Array.from(b.norm.weight.dataSync())).toEqual(before);
  });
  it('train() and eval() reach every submodule', () => {
    const m = new Tiny().eval();
    expect(m.blocks[1].drop.training).toBe(false);
    m.train();
    expect(m.blocks[0].drop.training).toBe(true);
  });
  it('tied weights receive one summed gradient', () => {
    const m = new Tiny();
    const ids = tensor(new Int32Array([1, 2]));
    m.head.forward(m.token_embedding.forward(ids)).sum().backward();
    const w = m.token_embedding.weight;
    expect(m.head.weight.grad).toBe(w.grad);
    // d/dW of sum(E[ids] W^T): every row of W gets sum of the two embeddings (head part),
    // and the embedding rows 1 and 2 get sum of all rows of W (embedding part).
    const W = Array.from(w.dataSync());
    const g = Array.from(w.grad!.dataSync());
    const colSum = [0, 1, 2, 3].map((d) => W.filter((_, i) => i % 4 === d).reduce((s, v) => s + v, 0));
    const embSum = [0, 1, 2, 3].map((d) => W[4 + d] + W[8 + d]);
    const expected = W.map((_, i) => embSum[i % 4] + ([1, 2].includes(Math.floor(i / 4)) ? colSum[i % 4] : 0));
    expectClose(g, expected, 1e-5, 1e-6);
  });
  it('saves and loads through safetensors files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nn-'));
    try {
      const a = new Tiny();
      await saveModule(join(dir, 'm.safetensors'), a);
      const { loadSafetensors } = await import('../node/safetensors.ts');
      expect([...loadSafetensors(join(dir, 'm.safetensors')).keys()], 'the tied weight once').not.toContain(
        'token_embedding.weight',
      );
      const b = new Tiny();
      loadModule(join(dir, 'm.safetensors'), b);
      expect(Array.from(b.token_embedding.weight.dataSync())).toEqual(Array.from(a.token_embedding.weight.dataSync()));
      expect(() => loadModule(join(dir, 'm.safetensors'), new Block())).toThrow(
        /m\.safetensors: loadStateDict: missing keys: attn\.q_proj\.weight/,
      );
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('layers', () => {
  it('Linear computes x W^T + b with W stored [out, in]', () => {
    const l = new Linear(3, 2);
    l.weight.setData(new Float32Array([1, 2, 3, 4, 5, 6]));
    l.bias!.setData(new Float32Array([0.5, -1]));
    expect(Array.from(l.forward(tensor([[1, 0, -1]])).dataSync())).toEqual([-1.5, -3]);
  });
  it('Conv2d keeps PyTorch layout and refuses overlapping strides', () => {
    const c = new Conv2d(3, 8, 4, 4);
    expect(c.weight.shape).toEqual([8, 3, 4, 4]);
    expect(c.forward(zeros([2, 3, 8, 8])).shape).toEqual([2, 8, 2, 2]);
    expect(() => new Conv2d(3, 8, 4, 2)).toThrow(/stride == kernel_size/);
  });
  it('parameters are trainable and survive tidy', () => {
    const p = parameter(zeros([2]));
    expect(p.requiresGrad && p.kept).toBe(true);
  });
  it('initialisers are seeded', () => {
    manualSeed(5);
    const a = new Linear(8, 8).weight.dataSync();
    manualSeed(5);
    const b = new Linear(8, 8).weight.dataSync();
    expect(Array.from(a)).toEqual(Array.from(b));
    const std = Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0) / a.length);
    expect(std).toBeGreaterThan(0.01);
    expect(std).toBeLessThan(0.03);
  });
});
