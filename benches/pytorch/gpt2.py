"""GPT-2 at full size on Hugging Face transformers (PyTorch), the peer of qkv's GPT-2 rows.

No download: the model is GPT2LMHeadModel(GPT2Config(...)) with random, seeded weights,
saved in Hugging Face's layout so that qkv loads the very same file.

    python3 benches/pytorch/gpt2.py make --size small --out runs/gpt2-random-small
    python3 benches/pytorch/gpt2.py run --model runs/gpt2-random-small --threads 2 \
        --prompt-len 512 --new 256 --batch 1 [--repeat 3] [--json-out FILE]

`run` measures, in one process: the load time (from_pretrained of the safetensors file),
the prefill (one forward pass of the prompt building the key/value cache, logits of
the last position only, under inference_mode), greedy generation of exactly `--new` tokens after the prompt with the cache
(model.generate, no end-of-text stop), and the process's peak resident memory. Decode
tokens/s = batch * new / (generate - prefill). Medians over `--repeat` timed runs after one
untimed warm-up. Time it on a quiet machine.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch

SIZES = {
    "small": dict(n_layer=12, n_head=12, n_embd=768),
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "large": dict(n_layer=36, n_head=20, n_embd=1280),
}


def make(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(**SIZES[args.size])).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote a random GPT-2 {args.size} to {args.out}")


def median_time(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args):
    torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel

    start = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(args.model).eval()
    load_s = time.perf_counter() - start
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.prompt_len), generator=gen)
    mask = torch.ones_like(ids)

    def prefill():
        with torch.inference_mode():
            model(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def generate():
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                do_sample=False,
                pad_token_id=0,
            )
        assert out.shape[1] == args.prompt_len + args.new

    prefill_s = median_time(prefill, args.repeat)
    generate_s = median_time(generate, args.repeat)
    result = {
        "model": args.model,
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tok_s": args.batch * args.prompt_len / prefill_s,
        "generate_s": generate_s,
        "decode_tok_s": args.batch * args.new / max(generate_s - prefill_s, 1e-9),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a random GPT-2 in Hugging Face's layout")
    m.add_argument("--size", choices=sorted(SIZES), default="small")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="time load, prefill and generation")
    r.add_argument("--model", required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--prompt-len", type=int, default=512)
    r.add_argument("--new", type=int, default=256)
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--json-out")
    args = ap.parse_args()
    make(args) if args.cmd == "make" else run(args)


if __name__ == "__main__":
    sys.exit(main())
