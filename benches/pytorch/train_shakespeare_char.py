"""PyTorch reference for qkv's shakespeare-char run: the same model (4 layers, 4 heads, 128
wide, block 64, no biases, tied embeddings, GPT-2 initialisation), the same data split and
batching, and the same optimisation (AdamW lr 1e-3, betas 0.9/0.99, weight decay 0.1 on
matrices, 100 warm-up steps, cosine to 1e-4 at 2000, global-norm clip 1.0), evaluated the
same way (20 batches of train and val every 250 steps).

    pip install torch
    python benches/pytorch/train_shakespeare_char.py ../shared/data/tinyshakespeare.txt [--seed N] [--threads 2]

A peer to compare against; no Rust build or test depends on it. Time it on a quiet machine.
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln_1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.output(a.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("output.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


@torch.no_grad()
def whole_split_loss(model, ids, block):
    """Mean next-token loss over `ids` in consecutive windows of `block` (the last partial window
    dropped), 64 windows per forward pass: what `cargo xtask eval` computes."""
    windows = (len(ids) - 1) // block
    total = 0.0
    for first in range(0, windows, 64):
        w = range(first, min(first + 64, windows))
        x = torch.stack([ids[i * block:(i + 1) * block] for i in w])
        y = torch.stack([ids[i * block + 1:(i + 1) * block + 1] for i in w])
        total += model(x, y)[1].item() * len(w) * block
    return total / (windows * block)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iters", type=int, default=2000)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    n = len(ids) * 9 // 10
    train, val = ids[:n], ids[n:]
    block, batch = 64, 12

    def get_batch(split):
        data = train if split == "train" else val
        ix = torch.randint(len(data) - block, (batch,))
        return torch.stack([data[i:i + block] for i in ix]), torch.stack([data[i + 1:i + 1 + block] for i in ix])

    model = Gpt(len(chars), block, 4, 4, 128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))

    def lr_at(it, warmup=100, decay_iters=2000, lr=1e-3, min_lr=1e-4):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it >= decay_iters:
            return min_lr
        ratio = (it - warmup) / (decay_iters - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {}
        for split in ("train", "val"):
            out[split] = sum(model(*get_batch(split))[1].item() for _ in range(20)) / 20
        model.train()
        return out

    start = time.time()
    step_times = []
    for it in range(args.max_iters):
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = get_batch("train")
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_times.append(time.time() - t0)
        if (it + 1) % 250 == 0:
            e = estimate()
            print(f"step {it + 1:5d}: train loss {e['train']:.4f}, val loss {e['val']:.4f}", flush=True)
    wall = time.time() - start
    model.eval()
    print(f"val loss over the whole split (consecutive windows of {block}): {whole_split_loss(model, val, block):.4f}")
    print(f"{args.max_iters} steps in {wall:.1f} s, median step {sorted(step_times)[len(step_times) // 2] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
