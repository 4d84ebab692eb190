#!/usr/bin/env bash
# GGUF weights used in place from the file's memory map (default) against read into memory
# (--no-mmap), one program at a time, nothing else running: load time, prefill, decode, peak RSS.
#   PEER_DIR=/path/to/peers bash docs/bench/mmap_vs_read.sh [OUT_DIR] [FILES]
# FILES are names under $PEER_DIR/gguf (../shared/peers/setup.sh makes them). Needs
# `cargo build --release --examples` first.
set -euo pipefail
: "${PEER_DIR:?set PEER_DIR to the peers directory}"
out=${1:-/tmp/mmap-bench}
files=${2:-"q35-08b-q8_0 q35-08b-q4_k_m q3next-4L-q4_k_m"}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
grep -m1 "model name" /proc/cpuinfo | tee "$out/cpu.txt"
for name in $files; do
  for mode in mmap no-mmap; do
    flag=(); [ "$mode" = no-mmap ] && flag=(--no-mmap)
    echo "== $name $mode" >&2
    /usr/bin/time -v "$repo/target/release/examples/bench" --model "$PEER_DIR/gguf/$name.gguf" \
      --gdn-backend cpu --prompt-tokens 512 --gen-tokens 64 --warmup 1 --repeats 2 --json "${flag[@]}" \
      >"$out/$name-$mode.json" 2>"$out/$name-$mode.time"
  done
done
# One line per run: load seconds, prefill and decode tok/s (medians), peak RSS of the process.
for f in "$out"/*.json; do
  name=$(basename "$f" .json)
  rss=$(grep "Maximum resident" "$out/$name.time" | awk '{print $NF}')
  python3 - "$f" "$name" "$rss" <<'PY'
import json, sys
path, name, rss = sys.argv[1:]
doc = json.loads(open(path).read().strip().splitlines()[-1])
print(f"{name} load_s {doc['load_s']:.2f} prefill {doc['prefill_tok_s']['median']:.2f} "
      f"decode {doc['decode_tok_s']['median']:.2f} worker_vmhwm_kb {doc['peak_rss_bytes'] // 1024} "
      f"peak_rss_kb {rss}")
PY
done | tee "$out/summary.txt"
