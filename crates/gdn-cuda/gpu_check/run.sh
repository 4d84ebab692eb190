#!/usr/bin/env bash
# The GPU check of hybrid-gdn-cuda, run on an H100/H200 machine (no Rust, no network) from the
# repository root, with the bundle made by build_bundle.sh carried in target/gpu-bundle:
#
#   device tool: run(command="bash crates/gdn-cuda/gpu_check/run.sh gdn", carry=["target/gpu-bundle"],
#                    timeout_s=560)
#   then, on the still-warm machine: the same with `run.sh model`
#
# PART (first argument): `gdn` — the GDN backend alone (sections 2–5: conformance, goldens,
# generate, cuda_bench, gdn_bench, fla, targets; ≈ 5–7 min on an H100, most of it model_goldens
# on the CPU backends); `model` — the whole model on the GPU (section 3b, the `-full` binaries of
# `--features cuda-full`: goldens, generate, bench; a few minutes, not yet timed); `all` (default)
# — both, which may not fit one device call (10 min at most). Writes everything to ONE file,
# $OUT/gdn_cuda_gpu_check[-PART].txt (OUT defaults to ./gpu_check_out), to be committed as
# crates/gdn-cuda/gpu_check/results-<date>-<gpu>[-PART].txt. Every step has its own time limit; a
# failing step is recorded and the rest still run; the exit status is the number of failed
# steps.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PART="${1:-all}"
case "$PART" in
    gdn | model) RESULTS="$OUT/gdn_cuda_gpu_check-$PART.txt" ;;
    all) RESULTS="$OUT/gdn_cuda_gpu_check.txt" ;;
    *) echo "usage: run.sh [gdn|model|all]" >&2 && exit 99 ;;
esac
part() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
: >"$RESULTS"
FAILED=0
BIN=/tmp/gdn-bundle/bin

log() { echo "$*" | tee -a "$RESULTS"; }
# step NAME SECONDS CMD...: runs CMD with a time limit, output into the results file.
step() {
    local name="$1" limit="$2"
    shift 2
    log ""
    log "=== $name ($(date -u +%H:%M:%S), limit ${limit}s) ==="
    log "\$ $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$RESULTS" 2>&1
    local rc=$?
    log "--- $name: rc=$rc in $((SECONDS - t0))s"
    if [ $rc -ne 0 ]; then FAILED=$((FAILED + 1)); fi
    return 0
}

# same_greedy_ids A B: for each fixture with a `=== generate FIXTURE on A|B` step in the results,
# whether both runs printed the same generated_ids (a run that printed none counts as different).
same_greedy_ids() {
    python3 - "$RESULTS" "$1" "$2" <<'EOF' | tee -a "$RESULTS"
import json, re, sys
results, left, right = sys.argv[1:]
ids = {}
name = None
for line in open(results):
    m = re.match(r"=== generate (\S+) on (\S+) ", line)
    if m:
        name = (m.group(1), m.group(2))
    elif name and line.startswith("{") and "generated_ids" in line:
        ids[name] = json.loads(line)["generated_ids"]
for fixture in sorted({f for f, label in ids if label in (left, right)}):
    a, b = ids.get((fixture, left)), ids.get((fixture, right))
    print(f"generate {fixture}: {left} == {right} greedy ids: {a is not None and a == b}")
EOF
}

log "hybrid-gdn-cuda GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# --- 0. The bundle, and the paths compiled into the test binaries -------------------------------
if [ ! -f target/gpu-bundle/bundle.tar.xz ]; then
    log "FATAL: target/gpu-bundle/bundle.tar.xz missing: run build_bundle.sh and carry target/gpu-bundle"
    exit 99
fi
rm -rf /tmp/gdn-bundle && mkdir -p /tmp/gdn-bundle
xz -dc target/gpu-bundle/bundle.tar.xz | tar -C /tmp/gdn-bundle -xf -
# Tests find goldens and fixtures through CARGO_MANIFEST_DIR as it was at build time.
BUILD_ROOT=/work/main
if [ "$ROOT" != "$BUILD_ROOT" ] && [ ! -e "$BUILD_ROOT" ]; then
    mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$ROOT" "$BUILD_ROOT"
fi

# --- 1. Driver and NVRTC on the loader path --------------------------------------------------
# cudarc (CUDA 12.8 bindings) opens libcuda.so / libcuda.so.1 and libnvrtc.so / .so.12 / .so.11;
# a CUDA 13 machine may only have libnvrtc.so.13, so link the newest one found as libnvrtc.so.
LIBDIR=/tmp/gdn-libs
mkdir -p "$LIBDIR"
NVRTC="$(ls /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so* \
    "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)"/nvidia/*/lib/libnvrtc.so* \
    2>/dev/null | grep -v -e builtins -e alt | sort -V | tail -1)"
if [ -n "$NVRTC" ]; then
    ln -sf "$NVRTC" "$LIBDIR/libnvrtc.so"
    export LD_LIBRARY_PATH="$LIBDIR:$(dirname "$NVRTC"):/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
fi
log "NVRTC: ${NVRTC:-NOT FOUND}"
# The cuda-full binaries link cuBLAS, cuRAND and the CUDA runtime (.so.13): PyTorch's cu13 wheels
# on the GPU image carry them.
for dir in "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)"/nvidia/*/lib; do
    [ -d "$dir" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$dir"
done
log "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
step "nvidia-smi" 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv

export HYBRID_GDN_REQUIRE_GPU=1 HYBRID_GDN_REQUIRE_NVRTC=1 RUST_BACKTRACE=1

if part gdn; then
# --- 2. Correctness ---------------------------------------------------------------------------
step "NVRTC compiles every shape (sm_90, sm_80)" 120 "$BIN/nvrtc_compile" --test-threads=2
step "backend creation (never panics)" 60 "$BIN/unavailable"
step "crate GPU tests: step_layers, graphs, device timing, prefill chunks" 240 "$BIN/gpu" --test-threads=1
step "conformance suite on cuda" 300 "$BIN/gdn_conformance" cuda:: every_available
step "registry" 60 "$BIN/gdn_registry"
step "HF model goldens on every backend (cuda included)" 300 "$BIN/model_goldens"

# --- 3. End to end: generate on the fixtures, cuda vs cpu ------------------------------------
for fixture in qwen3-next-tiny qwen3.5-tiny qwen3.5-moe-tiny; do
    for backend in cpu cuda; do
        step "generate $fixture on $backend" 120 "$BIN/generate" --model "models/fixtures/$fixture" \
            --gdn-backend "$backend" --prompt-ids 1,2,3,4,5,6,7,8 --max-new-tokens 24 --json
    done
done
same_greedy_ids cpu cuda

fi

if part model; then
# --- 3b. The whole model on the GPU (--device cuda: candle's CUDA ops + the cuda GDN backend) ----
step "libraries the cuda-full binaries need" 30 bash -c "ldd $BIN/generate-full | grep -E 'cuda|cublas|curand|nvrtc|not found'"
step "HF model goldens with the model on the GPU" 300 "$BIN/cuda_device" --test-threads=1
for fixture in qwen3-next-tiny qwen3.5-tiny qwen3.5-moe-tiny; do
    for device in cpu cuda; do
        step "generate $fixture on $device-model" 120 "$BIN/generate-full" --model "models/fixtures/$fixture" \
            --device "$device" --prompt-ids 1,2,3,4,5,6,7,8 --max-new-tokens 24 --json
    done
done
same_greedy_ids cpu-model cuda-model
# Decode and prefill with the whole model on the GPU, random weights of the real shapes.
for shape in qwen3.5-0.8b qwen3-next-4l-e8; do
    for dtype in bf16 q8_0; do
        step "bench --device cuda $shape $dtype" 150 "$BIN/bench-full" --device cuda \
            --config "models/configs/$shape/config.json" --random-weights --dtype "$dtype" \
            --gdn-backend cuda,cpu --prompt-tokens 512 --gen-tokens 64 --repeats 2
    done
done
step "bench --device cuda qwen3.5-0.8b bf16, 8 sequences" 150 "$BIN/bench-full" --device cuda \
    --config models/configs/qwen3.5-0.8b/config.json --random-weights --dtype bf16 \
    --gdn-backend cuda --prompt-tokens 128 --gen-tokens 64 --repeats 2 --batch 8
fi

if part gdn; then
# --- 4. Performance -----------------------------------------------------------------------------
step "cuda_bench (Qwen3-Next shape, 36 layers)" 180 "$BIN/cuda_bench"
for cols in 2 4 8; do
    for warps in 2 4 8; do
        step "tiling sweep cols=$cols warps=$warps" 60 env HYBRID_GDN_CUDA_COLS=$cols HYBRID_GDN_CUDA_WARPS=$warps \
            "$BIN/cuda_bench" --quick
    done
done
step "gdn_bench hot/cold (trait step round trip), cuda and cpu" 180 "$BIN/gdn_bench" --backends cuda,cpu \
    --budget-s 2 --json
if ls target/gpu-bundle/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fla-site target/gpu-bundle/wheels/*.whl >>"$RESULTS" 2>&1
    step "flash-linear-attention fused_recurrent_gated_delta_rule" 240 env PYTHONPATH=/tmp/fla-site \
        PYTHONUNBUFFERED=1 python3 crates/gdn-cuda/gpu_check/fla_bench.py
else
    log "fla wheels missing from target/gpu-bundle/wheels: fla comparison skipped"
    FAILED=$((FAILED + 1))
fi

# --- 5. Targets ----------------------------------------------------------------------------------
python3 crates/gdn-cuda/gpu_check/targets.py "$RESULTS" | tee -a "$RESULTS"
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=$((FAILED + 1))
fi
log ""
log "failed steps: $FAILED"
exit "$FAILED"
