"""How noisy is the shakespeare-char validation figure? Loads a trained qkv run's weights into the
PyTorch model of `train_shakespeare_char.py`, then reports:

* the loss over the whole validation split in consecutive windows of 64 (the figure
  `cargo xtask eval --checkpoint DIR` prints; the two agreeing checks qkv's forward pass against
  PyTorch's on trained weights), and
* the spread of the periodic estimate the recipe prints (the mean loss of 20 random batches of
  12 x 64 validation windows): many independent draws of it from the same weights, with their
  mean, standard deviation, range, and the share of draws at or below a threshold.

    pip install torch safetensors
    python benches/pytorch/val_estimate_spread.py ../shared/data/tinyshakespeare.txt runs/shakespeare-char \
        [--draws 500] [--seed 0] [--threshold 1.89]

A measuring tool; no Rust build or test depends on it.
"""

import argparse
import math
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_shakespeare_char import Gpt, whole_split_loss  # noqa: E402


def load_qkv_weights(model, path, layers):
    """Copies a qkv `model.safetensors` into the reference model. qkv stores a linear layer's
    weight as [in, out]; PyTorch's is [out, in]."""
    qkv = load_file(path)
    own = {
        "wte.weight": qkv["token_embedding.weight"],
        "wpe.weight": qkv["position_embedding.weight"],
        "ln_f.weight": qkv["ln_f.weight"],
    }
    for i in range(layers):
        p = f"blocks.{i}."
        for name in ("query", "key", "value", "output"):
            own[f"{p}{name}.weight"] = qkv[f"{p}attn.{name}.weight"].T
        own[f"{p}fc.weight"] = qkv[f"{p}mlp.fc.weight"].T
        own[f"{p}proj.weight"] = qkv[f"{p}mlp.proj.weight"].T
        own[f"{p}ln_1.weight"] = qkv[f"{p}ln_1.weight"]
        own[f"{p}ln_2.weight"] = qkv[f"{p}ln_2.weight"]
    model.load_state_dict(own)  # strict: a name missing on either side is an error


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("run", help="a qkv run directory of the shakespeare-char preset")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=1.89)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    val = ids[len(ids) * 9 // 10:]
    block, batch, layers = 64, 12, 4

    model = Gpt(len(chars), block, layers, 4, 128)
    load_qkv_weights(model, os.path.join(args.run, "checkpoint", "model.safetensors"), layers)
    model.eval()

    print(f"whole validation split (consecutive windows of {block}): {whole_split_loss(model, val, block):.4f}")
    with torch.no_grad():
        g = torch.Generator().manual_seed(args.seed)
        estimates = []
        for _ in range(args.draws):
            losses = []
            for _ in range(20):
                ix = torch.randint(len(val) - block, (batch,), generator=g)
                x = torch.stack([val[i:i + block] for i in ix])
                y = torch.stack([val[i + 1:i + 1 + block] for i in ix])
                losses.append(model(x, y)[1].item())
            estimates.append(sum(losses) / 20)
    n = len(estimates)
    mean = sum(estimates) / n
    sd = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (n - 1))
    below = sum(e <= args.threshold for e in estimates) / n
    print(f"20-batch estimate over {n} draws: mean {mean:.4f}, sd {sd:.4f}, "
          f"min {min(estimates):.4f}, max {max(estimates):.4f}, "
          f"{below * 100:.1f}% of draws <= {args.threshold}")


if __name__ == "__main__":
    main()
