#!/usr/bin/env bash
# Side by side with llama.cpp on the same GGUF files, one program at a time, nothing else running.
#   PEER_DIR=/path/to/peers bash docs/bench/gguf_side_by_side.sh [OUT_DIR] [SHAPES] [FORMATS]
# PEER_DIR is built by ../shared/peers/setup.sh (llama.cpp from the llama-cpp-python 0.3.36 sdist,
# random-weight checkpoints of real shapes converted by llama.cpp's converter and quantized by
# llama-quantize). Needs `cargo build --release --examples` first. Each run's peak RSS comes from
# /usr/bin/time -v; llama-bench's own table and our bench's markdown are kept verbatim.
# LLAMA_BUILD picks llama.cpp's build directory (build-avx2: setup.sh's LLAMA_AVX2_ONLY=1 build,
# for comparing AVX2 paths together with HYBRID_SIMD=avx2, which our bench inherits).
set -euo pipefail
: "${PEER_DIR:?set PEER_DIR to the peers directory}"
out=${1:-/tmp/gguf-bench}
shapes=${2:-"q35-08b q3next-4L"}
formats=${3:-"f32 bf16 q8_0 q4_k_m"}
threads=${THREADS:-2}
llama_build=${LLAMA_BUILD:-build}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
{ grep -m1 "model name" /proc/cpuinfo; grep -m1 flags /proc/cpuinfo | grep -o "avx512[a-z_0-9]*\|avx2\|amx[a-z_0-9]*" | sort -u | xargs;
  echo "llama.cpp build: $llama_build; HYBRID_SIMD=${HYBRID_SIMD:-unset}"; } | tee "$out/cpu.txt"
for shape in $shapes; do
  for fmt in $formats; do
    gguf="$PEER_DIR/gguf/$shape-$fmt.gguf"
    [ -f "$gguf" ] || { echo "missing $gguf" >&2; continue; }
    echo "== $shape $fmt: llama.cpp" >&2
    /usr/bin/time -v "$PEER_DIR/llama.cpp/$llama_build/bin/llama-bench" -m "$gguf" -t "$threads" -p 512 -n 64 -r 2 \
      >"$out/llama-$shape-$fmt.md" 2>"$out/llama-$shape-$fmt.time"
    echo "== $shape $fmt: hybrid-decode" >&2
    /usr/bin/time -v "$repo/target/release/examples/bench" --model "$gguf" --gdn-backend cpu \
      --prompt-tokens 512 --gen-tokens 64 --warmup 1 --repeats 2 \
      >"$out/ours-$shape-$fmt.md" 2>"$out/ours-$shape-$fmt.time"
  done
done
# One line per run: format, prefill and decode tok/s, peak RSS.
for f in "$out"/llama-*.md; do
  name=$(basename "$f" .md)
  pp=$(grep "pp512" "$f" | awk -F'|' '{print $(NF-1)}' | xargs)
  tg=$(grep "tg64" "$f" | awk -F'|' '{print $(NF-1)}' | xargs)
  rss=$(grep "Maximum resident" "$out/$name.time" | awk '{print $NF}')
  echo "$name pp512 $pp tg64 $tg peak_rss_kb $rss"
done | tee "$out/summary-llama.txt"
for f in "$out"/ours-*.md; do
  name=$(basename "$f" .md)
  row=$(grep "^| cpu | host" "$f" | head -1)
  rss=$(grep "Maximum resident" "$out/$name.time" | awk '{print $NF}')
  echo "$name $(echo "$row" | awk -F'|' '{print "prefill", $4, "decode", $5}') peak_rss_kb $rss"
done | tee "$out/summary-ours.txt"
