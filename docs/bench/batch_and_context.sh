#!/usr/bin/env bash
# Batched decode and long-context decode of the Qwen3.5-0.8B shape, one program at a time:
#   PEER_DIR=/path/to/peers bash docs/bench/batch_and_context.sh > out.txt
# PEER_DIR holds the GGUFs of ../shared/peers/setup.sh. Needs `cargo build --release --examples`.
# Aggregate decode tok/s at --batch 1/4/8 (bf16, Q8_0, Q4_K_M; two rounds), then decode after
# 512, 8192 and again 512 prompt tokens (bf16 weights; the KV cache in f16, the default for
# them, then in f32). An argument `batch` or `context` runs one part.
set -euo pipefail
: "${PEER_DIR:?set PEER_DIR to the peers directory}"
repo=$(cd "$(dirname "$0")/../.." && pwd)
bench="$repo/target/release/examples/bench"
row() { "$bench" --model "$PEER_DIR/gguf/q35-08b-$1.gguf" --gdn-backend cpu "${@:2}" 2>&1 | grep -E '^\| cpu \| host'; }
grep -m1 "model name" /proc/cpuinfo
[ "${1:-}" = context ] || for round in 1 2; do
  for f in bf16 q8_0 q4_k_m; do
    for b in 1 4 8; do
      echo "round $round $f batch $b: $(row $f --prompt-tokens 16 --gen-tokens 32 --warmup 1 --repeats 2 --batch $b)"
    done
  done
done
[ "${1:-}" = batch ] || for kv in f16 f32; do
  for p in 512 8192 512; do
    echo "context $p, KV $kv: $(row bf16 --kv-cache $kv --prompt-tokens $p --gen-tokens 32 --warmup 0 --repeats 1)"
  done
done
