#!/usr/bin/env bash
# KL divergence and top-1 agreement of Q8_0 / Q4_K_M against F32 on the same GGUF files,
# llama-perplexity and examples/perplexity, one after the other. Needs PEER_DIR (see
# gguf_side_by_side.sh), a release build of the examples, and a text: the default is the Book of
# Ruth (KJV) as printed by Debian's bible-kjv: bible -f Ruth1:1-Ruth4:22 | sed 's/^[A-Za-z0-9]*:[0-9]* //'
set -u
: "${PEER_DIR:?set PEER_DIR to the peers directory}"
repo=$(cd "$(dirname "$0")/../.." && pwd)
G=$PEER_DIR/gguf; L=$PEER_DIR/llama.cpp/build/bin/llama-perplexity; O=$repo/target/release/examples/perplexity
T=${TEXT:-/tmp/ruth.txt}; out=${1:-/tmp/kl}; mkdir -p "$out"
for shape in q35-08b q3next-4L; do
  rm -f $out/llama-$shape.kld $out/ours-$shape.kl
  $L -m $G/$shape-f32.gguf -f $T -c 512 -t 2 --kl-divergence-base $out/llama-$shape.kld > $out/llama-$shape-f32.log 2>&1
  $O --model $G/$shape-f32.gguf --file $T --ctx 512 --stride 256 --kl-divergence-base $out/ours-$shape.kl > $out/ours-$shape-f32.log 2>&1
  for q in q8_0 q4_k_m; do
    $L -m $G/$shape-$q.gguf -f $T -c 512 -t 2 --kl-divergence-base $out/llama-$shape.kld --kl-divergence > $out/llama-$shape-$q.log 2>&1
    $O --model $G/$shape-$q.gguf --file $T --ctx 512 --stride 256 --kl-divergence-base $out/ours-$shape.kl --kl-divergence > $out/ours-$shape-$q.log 2>&1
  done
  rm -f $out/llama-$shape.kld $out/ours-$shape.kl
done
