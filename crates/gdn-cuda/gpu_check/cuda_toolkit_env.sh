# Sourced (not run) by build_bundle.sh and check_cuda_full.sh from the repository root: puts a
# CUDA toolkit on PATH for building candle's CUDA kernels (`--features cuda-full`). An nvcc already
# on PATH is used as it is; otherwise the pip-wheel toolkit of cuda_wheels_toolkit.sh in
# $CUDA_WHEELS_DIR (default target/cuda-wheels) is assembled once (~650 MB download) and reused.
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200): without it candle-kernels asks nvidia-smi.
if ! command -v nvcc >/dev/null 2>&1; then
    CUDA_WHEELS_DIR="${CUDA_WHEELS_DIR:-target/cuda-wheels}"
    [ -x "$CUDA_WHEELS_DIR/site/nvidia/cu13/bin/nvcc" ] ||
        bash crates/gdn-cuda/gpu_check/cuda_wheels_toolkit.sh "$CUDA_WHEELS_DIR"
    CUDA_HOME="$(cd "$CUDA_WHEELS_DIR/site/nvidia/cu13" && pwd)"
    export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
