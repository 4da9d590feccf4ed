#!/usr/bin/env bash
# Runs nanoGPT's shakespeare-char CPU recipe with several seeds, in qkv (Flex) and in the
# PyTorch reference script, and prints each run's 20-batch validation estimate at step 2000
# and its loss over the whole validation split. Every seed listed is run and reported.
#
#   benches/shakespeare-seeds.sh DATA OUT_DIR [SEED ...]     (default seeds: 1337 1 2 3 4 5 6 7)
#
# Needs torch (pip install torch) for the PyTorch column. About 3.5 minutes per seed on 2 cores.
set -euo pipefail
data=${1:?usage: benches/shakespeare-seeds.sh DATA OUT_DIR [SEED ...]}
out=${2:?usage: benches/shakespeare-seeds.sh DATA OUT_DIR [SEED ...]}
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1337 1 2 3 4 5 6 7)
cd "$(dirname "$0")/.."
mkdir -p "$out"
for s in "${seeds[@]}"; do
    rm -rf "$out/qkv-$s"
    cargo xtask train --preset shakespeare-char --data "$data" --backend flex --seed "$s" \
        --out "$out/qkv-$s" >"$out/qkv-$s.log" 2>&1
    cargo xtask eval --checkpoint "$out/qkv-$s" >>"$out/qkv-$s.log" 2>&1
    python3 benches/pytorch/train_shakespeare_char.py "$data" --seed "$s" >"$out/pt-$s.log" 2>&1
done
estimate() { sed -n 's/^step  2000: .*val loss \([0-9.]*\).*/\1/p' "$1"; }
whole() { sed -n 's/.*whole split.*: \([0-9.]*\)$/\1/p' "$1"; }
echo "| seed | qkv: 20-batch estimate | qkv: whole split | PyTorch: 20-batch estimate | PyTorch: whole split |"
echo "| ---: | ---: | ---: | ---: | ---: |"
for s in "${seeds[@]}"; do
    echo "| $s | $(estimate "$out/qkv-$s.log") | $(whole "$out/qkv-$s.log") | $(estimate "$out/pt-$s.log") | $(whole "$out/pt-$s.log") |"
done
