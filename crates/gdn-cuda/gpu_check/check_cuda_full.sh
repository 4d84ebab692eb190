#!/usr/bin/env bash
# Compile-checks the whole-model GPU build (`--features cuda-full`: candle's CUDA ops, the model on
# `--device cuda`) on a machine without a GPU: clippy over every target with the features on, in
# its own target dir (target/cuda-full). Needs a CUDA toolkit to build candle's kernels; without
# nvcc on PATH it assembles one from NVIDIA's pip wheels (cuda_wheels_toolkit.sh, ~650 MB
# download) in $CUDA_WHEELS_DIR (default target/cuda-wheels, reused when present).
#
# Cost on the 2-core AMD EPYC VM (2026-12-02): ~25 min cold (candle-kernels' nvcc build script is
# most of it), a few minutes warm. .ci/run calls this only with HYBRID_CI_CUDA_FULL=1: a clean
# clone has no cache to keep it warm, and the cold cost would double CI's time.
#
# Usage (repository root): bash crates/gdn-cuda/gpu_check/check_cuda_full.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
source crates/gdn-cuda/gpu_check/cuda_toolkit_env.sh
cargo clippy --features cuda-full --all-targets --target-dir target/cuda-full -- -D warnings
