"""PyTorch peer of qkv's benchmark suite (`cargo xtask bench --with-pytorch` runs it).

Each workload mirrors one of `qkv_benches::Workload` by its id and is timed the same way:
untimed warm-up iterations, then at least N timed ones (more while a time budget lasts), the
device synchronised before each clock stops, the median reported.

* attention_fwd/dD/seqT, attention_fwd_bwd/dD/seqT: causal multi-head self-attention with
  biased Q, K, V and output projections, 64-wide heads, batch 1; forward under no_grad, or
  forward + backward of out.sum() to the input and weights.
* matmul/MxKxN: one product of random [M, K] and [K, N] matrices (torch.mm), under no_grad.
* train_step/4x4x128_b12_t64, train_step/6x6x384_b64_t256: one step of nanoGPT's
  shakespeare-char recipes (no biases, tied embeddings, dropout 0 / 0.2): forward,
  cross-entropy, backward, clip_grad_norm_(1.0), AdamW(lr 1e-3, betas 0.9/0.99, weight decay
  0.1 on matrices), on a fixed random batch.
* generate/kv_cache, generate/no_cache: greedy decoding with the 4x4x128 block-64 model,
  batch 1, 63 new tokens from a one-token prompt, with a key/value cache or recomputing the
  whole context each step.

    python3 benches/pytorch/bench.py --threads 2 [--device cpu|cuda] [--quick] \
        [--ids id1,id2,...] [--json-out FILE]

A peer to compare against; no Rust build or test depends on it. Time it on a quiet machine.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 65
NEW_TOKENS = 63
RECIPES = {
    "4x4x128_b12_t64": dict(layers=4, heads=4, d=128, block=64, batch=12, dropout=0.0),
    "6x6x384_b64_t256": dict(layers=6, heads=6, d=384, block=256, batch=64, dropout=0.2),
}


class Attention(nn.Module):
    def __init__(self, d, heads, bias, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(d, d, bias=bias)
        self.key = nn.Linear(d, d, bias=bias)
        self.value = nn.Linear(d, d, bias=bias)
        self.output = nn.Linear(d, d, bias=bias)

    def forward(self, x, cache=None):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        # With a cache, one query row attends to every cached key: no mask needed.
        causal = cache is None or t > 1
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        return self.output(a.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = Attention(d, heads, bias=False, dropout=dropout)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cache=None):
        x = x + self.drop(self.attn(self.ln_1(x), cache))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln_2(x)))))


class Gpt(nn.Module):
    def __init__(self, layers, heads, d, block, dropout):
        super().__init__()
        self.block = block
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(block, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("output.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, caches=None, start=0):
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x) @ self.wte.weight.T


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def attention(device, d, seq, backward):
    mha = Attention(d, d // 64, bias=True).to(device)
    x = torch.randn(1, seq, d, device=device)

    def run():
        if backward:
            for p in mha.parameters():
                p.grad = None
            xi = x.clone().requires_grad_(True)
            mha(xi).sum().backward()
            _ = xi.grad
        else:
            with torch.no_grad():
                mha(x)
        sync(device)

    return run


def matmul(device, m, k, n):
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)

    @torch.no_grad()
    def run():
        torch.mm(a, b)
        sync(device)

    return run


MATMUL_SHAPES = [(768, 128, 384), (768, 128, 512), (768, 512, 128), (16384, 384, 1536), (2048, 2048, 2048)]


def train_step(device, recipe):
    r = RECIPES[recipe]
    model = Gpt(r["layers"], r["heads"], r["d"], r["block"], r["dropout"]).to(device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    x = torch.randint(VOCAB, (r["batch"], r["block"]), device=device)
    y = torch.randint(VOCAB, (r["batch"], r["block"]), device=device)

    def run():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)

    return run


def generate(device, kv_cache):
    r = RECIPES["4x4x128_b12_t64"]
    model = Gpt(r["layers"], r["heads"], r["d"], r["block"], 0.0).to(device).eval()

    @torch.no_grad()
    def run():
        idx = torch.zeros(1, 1, dtype=torch.long, device=device)
        caches = [dict() for _ in model.blocks] if kv_cache else None
        logits = model(idx, caches)
        for step in range(NEW_TOKENS):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
            if step + 1 == NEW_TOKENS:
                break
            if kv_cache:
                logits = model(nxt, caches, start=idx.shape[1] - 1)
            else:
                logits = model(idx[:, -model.block:])
        assert idx.shape[1] == NEW_TOKENS + 1
        sync(device)

    return run


def suite():
    ids = []
    for op in ("attention_fwd", "attention_fwd_bwd"):
        for d in (128, 384, 768):
            for seq in (64, 256, 1024):
                ids.append(f"{op}/d{d}/seq{seq}")
    ids += [f"matmul/{m}x{k}x{n}" for m, k, n in MATMUL_SHAPES]
    ids += [f"train_step/{r}" for r in RECIPES] + ["generate/kv_cache", "generate/no_cache"]
    return ids


def prepare(wid, device):
    kind, *rest = wid.split("/")
    if kind.startswith("attention"):
        d, seq = int(rest[0][1:]), int(rest[1][3:])
        return attention(device, d, seq, kind == "attention_fwd_bwd")
    if kind == "matmul":
        m, k, n = (int(x) for x in rest[0].split("x"))
        return matmul(device, m, k, n)
    if kind == "train_step":
        return train_step(device, rest[0])
    if kind == "generate":
        return generate(device, rest[0] == "kv_cache")
    raise SystemExit(f"unknown workload id {wid!r}")


def plan(wid, quick):
    """(warm-up, minimum samples, time budget in s), as `Workload::plan` in Rust."""
    heavy = wid == "train_step/6x6x384_b64_t256"
    if heavy:
        return (1, 2, 0.0) if quick else (1, 3, 0.0)
    return (2, 5, 0.5) if quick else (3, 10, 2.0)


def measure(run, warmup, min_samples, budget):
    for _ in range(warmup):
        run()
    start, ms = time.perf_counter(), []
    while len(ms) < min_samples or (time.perf_counter() - start < budget and len(ms) < 10 * min_samples):
        t0 = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t0) * 1e3)
    return dict(median_ms=statistics.median(ms), min_ms=min(ms), max_ms=max(ms), samples=len(ms))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ids", default="", help="comma-separated workload ids (default: all)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json-out", default="-")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ids = [i for i in args.ids.split(",") if i] or suite()
    results = {}
    for wid in ids:
        run = prepare(wid, device)
        results[wid] = measure(run, *plan(wid, args.quick))
        print(f"pytorch {wid}: {results[wid]['median_ms']:.2f} ms", file=sys.stderr, flush=True)
        del run
    out = dict(torch_version=torch.__version__, device=args.device, threads=torch.get_num_threads(),
               gpu=torch.cuda.get_device_name() if device.type == "cuda" else None, results=results)
    text = json.dumps(out, indent=1)
    if args.json_out == "-":
        print(text)
    else:
        with open(args.json_out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
