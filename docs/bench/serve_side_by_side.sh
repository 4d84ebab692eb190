#!/usr/bin/env bash
# Server load test side by side: examples/serve against llama.cpp's llama-server -np 8 on the
# same GGUF, one after the other, loopback only. Each server is started, measured with
# docs/bench/serve_load.py (concurrency 1 and 8, 64 tokens per stream, 16-token prompts, two
# requests per client) and stopped; our server then also gets --rss-requests short requests.
#
#   PEER_DIR=/work/peers bash docs/bench/serve_side_by_side.sh [FORMAT...]   (default: q8_0)
#
# Needs ../shared/peers/setup.sh's GGUFs and llama-server built in $PEER_DIR/llama.cpp/build
# (cmake --build llama.cpp/build --target llama-server). LLAMA_BUILD picks another build
# directory (build-avx512 on a VM whose native build dies on AMX, see gguf_side_by_side.sh).
# Nothing else may run meanwhile.
set -euo pipefail
: "${PEER_DIR:?set PEER_DIR to the directory of ../shared/peers/setup.sh}"
cd "$(dirname "$0")/../.."
formats=("${@:-q8_0}")
tokens=${TOKENS:-64}
rounds=${ROUNDS:-2}
rss_requests=${RSS_REQUESTS:-1000}
llama_server="$PEER_DIR/llama.cpp/${LLAMA_BUILD:-build}/bin/llama-server"
serve=target/release/examples/serve
cargo build --release --example serve >&2
grep -m1 "model name" /proc/cpuinfo >&2

wait_ready() { # url
    for _ in $(seq 600); do
        curl -sf "$1/health" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "server at $1 never became ready" >&2
    return 1
}

for fmt in "${formats[@]}"; do
    gguf="$PEER_DIR/gguf/q35-08b-$fmt.gguf"
    echo "== $fmt: examples/serve" >&2
    "$serve" --model "$gguf" --port 8391 --max-batch 8 --max-queue 64 --ctx-size 4096 \
        --gdn-backend cpu 2>"/tmp/serve-$fmt.log" &
    pid=$!
    wait_ready http://127.0.0.1:8391
    python3 docs/bench/serve_load.py --url http://127.0.0.1:8391 --concurrency 1,8 \
        --tokens "$tokens" --rounds "$rounds" --label "hybrid-decode $fmt" \
        --rss-pid "$pid" --rss-requests "$rss_requests"
    curl -s http://127.0.0.1:8391/metrics | grep -E '^hybrid_(state_cache|decode_steps|batch)' >&2 || true
    kill -TERM "$pid"; wait "$pid" || true

    echo "== $fmt: llama-server -np 8" >&2
    "$llama_server" -m "$gguf" -t 2 -np 8 -c 4096 --port 8392 >"/tmp/llama-server-$fmt.log" 2>&1 &
    pid=$!
    wait_ready http://127.0.0.1:8392
    python3 docs/bench/serve_load.py --url http://127.0.0.1:8392 --concurrency 1,8 \
        --tokens "$tokens" --rounds "$rounds" --label "llama-server $fmt"
    kill -TERM "$pid"; wait "$pid" || true
done
