// A small Llama-style decoder written directly with tensor ops (no nn
// modules), used to time one forward + backward pass of a realistic
// transformer workload: RMSNorm, rotary embeddings, causal multi-head
// attention, SwiGLU MLP, tied output head, cross-entropy.

import {
  Generator,
  cat,
  crossEntropy,
  randn,
  rmsNorm,
  scaledDotProductAttention,
  tensor,
  ones,
  type DeviceName,
  type Tensor,
} from '../tensor/index.ts';

/** Sizes of the benchmark decoder. */
export interface DecoderConfig {
  blocks: number;
  hidden: number;
  heads: number;
  mlp: number;
  vocab: number;
  batch: number;
  seq: number;
}

/** Parameters for a decoder of `cfg`, seeded, kept out of every tidy scope. */
export function makeDecoder(
  cfg: DecoderConfig,
  device: DeviceName = 'cpu',
): { params: Tensor[]; step: (ids: Tensor, targets: Tensor) => Tensor } {
  const g = new Generator(0);
  const p = (shape: number[]) => randn(shape, { std: 0.02, generator: g, device }).setRequiresGrad().keep();
  const norm = () => ones([cfg.hidden], { device }).setRequiresGrad().keep();
  const embed = p([cfg.vocab, cfg.hidden]);
  const blocks = Array.from({ length: cfg.blocks }, () => ({
    ln1: norm(),
    q: p([cfg.hidden, cfg.hidden]),
    k: p([cfg.hidden, cfg.hidden]),
    v: p([cfg.hidden, cfg.hidden]),
    o: p([cfg.hidden, cfg.hidden]),
    ln2: norm(),
    gate: p([cfg.hidden, cfg.mlp]),
    up: p([cfg.hidden, cfg.mlp]),
    down: p([cfg.mlp, cfg.hidden]),
  }));
  const lnf = norm();
  const hd = cfg.hidden / cfg.heads;
  // rotary tables: angle = position * base^(-2i/hd), duplicated for both halves
  const angles = new Float32Array(cfg.seq * hd).map((_, k) => {
    const [t, i] = [Math.floor(k / hd), k % (hd / 2)];
    return t * Math.pow(10000, (-2 * i) / hd);
  });
  const theta = tensor(angles, { shape: [cfg.seq, hd], device }).keep();
  const cos = theta.cos().keep();
  const sin = theta.sin().keep();
  const rope = (x: Tensor) => {
    const [x1, x2] = x.chunk(2, -1);
    return x.mul(cos).add(cat([x2.neg(), x1], -1).mul(sin));
  };
  const heads = (x: Tensor) => x.reshape([cfg.batch, cfg.seq, cfg.heads, hd]).transpose(1, 2); // (B, H, T, hd)

  const step = (ids: Tensor, targets: Tensor) => {
    let x = embed.embedding(ids); // (B, T, C)
    for (const b of blocks) {
      const h = rmsNorm(x, b.ln1, 1e-5);
      const q = rope(heads(h.matmul(b.q)));
      const k = rope(heads(h.matmul(b.k)));
      const v = heads(h.matmul(b.v));
      const att = scaledDotProductAttention(q, k, v, { isCausal: true }); // (B, H, T, hd)
      const y = att.transpose(1, 2).reshape([cfg.batch, cfg.seq, cfg.hidden]);
      x = x.add(y.matmul(b.o));
      const m = rmsNorm(x, b.ln2, 1e-5);
      x = x.add(m.matmul(b.gate).silu().mul(m.matmul(b.up)).matmul(b.down));
    }
    const logits = rmsNorm(x, lnf, 1e-5).matmul(embed.transpose(0, 1)); // tied head
    const loss = crossEntropy(logits, targets);
    loss.backward();
    return loss;
  };
  return { params: [embed, lnf, ...blocks.flatMap((b) => Object.values(b))], step };
}
