"""PyTorch reference figures for `npm run bench`, measured in the same run.

nanoVLM's architecture as its models/*.py have it (ViT with SDPA attention and
tanh-GELU, pixel-shuffle projector, Llama decoder with grouped-query attention,
RoPE, SwiGLU and a tied head), with random weights and the shapes of
bench/vlm.ts, timed the way bench/vlm.ts times ours: one training step
(forward, backward, AdamW) after a warm-up, median of several; decoding with a
KV cache. Denormals are flushed to zero (see main). The project itself never
needs Python; this only gives benchmark figures a same-machine, same-minute
reference.

    python3 bench/reference.py --threads 1 --what matmul,small
    python3 bench/reference.py --threads 2 --what step222,decode222
Prints one JSON object per line.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cfg_222m():
    return dict(vit_hidden=768, vit_inter=3072, vit_patch=16, vit_img=224, vit_heads=12, vit_blocks=12,
                lm_hidden=576, lm_inter=1536, lm_heads=9, lm_kv_heads=3, lm_blocks=30, vocab=49152, shuffle=2)


def cfg_small():
    return dict(vit_hidden=128, vit_inter=512, vit_patch=8, vit_img=64, vit_heads=4, vit_blocks=4,
                lm_hidden=128, lm_inter=384, lm_heads=4, lm_kv_heads=2, lm_blocks=4, vocab=512, shuffle=2)


class ViTBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c['vit_hidden']
        self.heads = c['vit_heads']
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, c['vit_inter']), nn.Linear(c['vit_inter'], d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, 2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.out(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate='tanh'))


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LMBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h, self.kv = c['lm_hidden'], c['lm_heads'], c['lm_kv_heads']
        self.hd = d // self.h
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k = nn.Linear(d, d, bias=False), nn.Linear(d, self.hd * self.kv, bias=False)
        self.v, self.o = nn.Linear(d, self.hd * self.kv, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, c['lm_inter'], bias=False), nn.Linear(d, c['lm_inter'], bias=False)
        self.down = nn.Linear(c['lm_inter'], d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, C = x.shape
        h = self.norm1(x)
        q = self.q(h).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[0], cache[1] = k, v
        k, v = k.repeat_interleave(self.h // self.kv, 1), v.repeat_interleave(self.h // self.kv, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(y)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class VLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        P, d = c['vit_patch'], c['vit_hidden']
        self.patch = nn.Conv2d(3, d, P, P)
        self.pos = nn.Parameter(torch.randn(1, (c['vit_img'] // P) ** 2, d) * 0.02)
        self.vit = nn.ModuleList(ViTBlock(c) for _ in range(c['vit_blocks']))
        self.vit_ln = nn.LayerNorm(d, eps=1e-6)
        self.mp = nn.Linear(d * c['shuffle'] ** 2, c['lm_hidden'], bias=False)
        self.embed = nn.Embedding(c['vocab'], c['lm_hidden'])
        self.lm = nn.ModuleList(LMBlock(c) for _ in range(c['lm_blocks']))
        self.norm = RMSNorm(c['lm_hidden'])
        self.head = nn.Linear(c['lm_hidden'], c['vocab'], bias=False)
        self.head.weight = self.embed.weight
        hd = c['lm_hidden'] // c['lm_heads']
        self.register_buffer('inv_freq', 1.0 / (100000 ** (torch.arange(0, hd, 2).float() / hd)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # nanoVLM's init (and ours): normal(0, 0.02) weights, zero biases. PyTorch's defaults
        # (an N(0, 1) embedding) drive this model's gradients into float32 denormals, which
        # make a CPU matmul some 20x slower; nanoVLM's init does not.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def image_tokens(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2) + self.pos
        for b in self.vit:
            x = b(x)
        x = self.vit_ln(x)
        B, S, D = x.shape
        side, s = int(math.isqrt(S)), self.c['shuffle']
        x = x.reshape(B, side // s, s, side // s, s, D).permute(0, 1, 3, 2, 4, 5).reshape(B, S // s // s, D * s * s)
        return self.mp(x)

    def rope(self, start, T):
        f = torch.arange(start, start + T).float()[:, None] * self.inv_freq[None]
        emb = torch.cat([f, f], -1)
        return emb.cos(), emb.sin()

    def decoder(self, x, start=0, caches=None):
        cos, sin = self.rope(start, x.shape[1])
        for i, b in enumerate(self.lm):
            x = b(x, cos, sin, None if caches is None else caches[i])
        return self.norm(x)

    def forward(self, ids, image, targets):
        img = self.image_tokens(image)
        h = self.decoder(torch.cat([img, self.embed(ids)], 1))
        logits = self.head(h[:, img.shape[1]:])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def median(xs):
    return sorted(xs)[len(xs) // 2]


def bench_step(c, batch, text_len, runs):
    torch.manual_seed(0)
    model = VLM(c)
    mp = list(model.mp.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in mp)]
    opt = torch.optim.AdamW([{'params': mp, 'lr': 2e-3}, {'params': rest, 'lr': 1e-4}])
    ids = torch.randint(0, c['vocab'], (batch, text_len))
    image = torch.rand(batch, 3, c['vit_img'], c['vit_img'])
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        loss = model(ids, image, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i > 0:
            times.append((time.perf_counter() - t0) * 1000)
    return {'ms': median(times), 'min': min(times), 'max': max(times), 'runs': runs}


@torch.no_grad()
def bench_decode(c, prompt_len, new_tokens):
    torch.manual_seed(0)
    model = VLM(c).eval()
    ids = torch.randint(0, c['vocab'], (1, prompt_len))
    image = torch.rand(1, 3, c['vit_img'], c['vit_img'])

    def run(n):
        t0 = time.perf_counter()
        caches = [[None, None] for _ in model.lm]
        x = torch.cat([model.image_tokens(image), model.embed(ids)], 1)
        start = 0
        first = None
        for step in range(n):
            h = model.decoder(x, start, caches)
            start += x.shape[1]
            token = model.head(h[:, -1]).argmax(-1)
            if first is None:
                first = time.perf_counter()
            x = model.embed(token[:, None])
        end = time.perf_counter()
        return (first - t0) * 1000, (n - 1) / (end - first)

    run(3)  # warm-up
    ttft, tps = zip(*(run(new_tokens) for _ in range(3)))
    return {'ttft_ms': median(ttft), 'tokens_per_sec': median(tps), 'prompt': prompt_len, 'new_tokens': new_tokens}


def bench_matmul(shapes, runs=5):
    out = {}
    for M, K, N in shapes:
        a, b = torch.randn(M, K), torch.randn(K, N)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 0.3:
            a @ b
            n += 1
        reps = max(1, int(n / 3))
        rates = []
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            rates.append(2 * M * N * K * reps / (time.perf_counter() - t) / 1e9)
        out[f'{M}x{K}x{N}'] = {'median': median(rates), 'min': min(rates), 'max': max(rates)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--what', default='matmul,small')
    ap.add_argument('--runs', type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # Random weights send some activations (attention weights, products of them) into float32
    # denormals, which x86 handles some 10x slower unless they are flushed to zero. Trained
    # weights rarely do; flushing gives PyTorch its best case, the stronger reference.
    torch.set_flush_denormal(True)
    info = {'torch': torch.__version__, 'threads': args.threads}
    for what in args.what.split(','):
        if what == 'matmul':
            r = bench_matmul([(256, 256, 256), (1024, 1024, 1024), (1024, 576, 1536), (1024, 1536, 576)], args.runs)
        elif what == 'small':
            r = bench_step(cfg_small(), 16, 48, args.runs)
        elif what == 'step222':
            r = bench_step(cfg_222m(), 2, 79, max(1, args.runs // 2))
        elif what == 'decode222':
            r = bench_decode(cfg_222m(), 16, 32)
        else:
            raise SystemExit(f'unknown --what {what}')
        print(json.dumps({'what': what, **info, **r}), flush=True)


if __name__ == '__main__':
    main()
