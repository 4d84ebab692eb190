#!/usr/bin/env bash
# A CUDA 13.0 "toolkit" made only of NVIDIA's PyPI wheels, usable as CUDA_HOME to BUILD (not run)
# candle-core 0.11.1 with its `cuda` feature — this workspace's `--features cuda-full`, the model
# on the GPU (`--device cuda`) — on a machine with no GPU and no CUDA install. 13.0, the pins of
# the `cuda-toolkit==13.0.2` meta-package, because the GPU machines here run driver 580 (CUDA
# 13.0) and candle's kernels are embedded as PTX, which a driver older than the nvcc that wrote
# it cannot load. Measured on the 2-core AMD EPYC VM (2026-12-02): with the 13.4 wheels a probe
# crate (`candle-core = "=0.11.1"`, `cuda`) built in 27.5 min from a clean target dir (18.6 of it
# candle-kernels' nvcc build script); the 13.0 wheels download and unpack in ~30 s (1.8 GB).
#
#   bash crates/gdn-cuda/gpu_check/cuda_wheels_toolkit.sh DIR
#   export CUDA_HOME=DIR/site/nvidia/cu13 PATH=DIR/site/nvidia/cu13/bin:$PATH CUDA_COMPUTE_CAP=90
#
# Why each step: the cu12 wheels have no nvcc (nvidia-cuda-nvcc-cu12 12.9.86 ships ptxas only),
# so CUDA 13 it is (13.0.88 ships bin/nvcc); cudarc (candle's `dynamic-linking`) runs `nvcc --version` from PATH and links
# -lcuda -lnvrtc -lcublas -lcublasLt -lcurand, so unversioned library names and a libcuda.so
# stub (no wheel has one; soname libcuda.so.1, so a real driver binds at run time) are needed;
# candle-kernels (cudaforge) needs CUDA_COMPUTE_CAP, as there is no nvidia-smi (90 for H100/H200:
# its MoE kernels are built as sm_XX machine code without a PTX fallback).
set -euo pipefail
dir=$(mkdir -p "${1:?usage: cuda_wheels_toolkit.sh DIR}" && cd "$1" && pwd)
mkdir -p "$dir/wheels" "$dir/site" "$dir/stub"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir/wheels" \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
for wheel in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$dir/site/"; done
cuda="$dir/site/nvidia/cu13"
# `zipfile -e` drops the execute bits.
chmod +x "$cuda"/bin/{nvcc,ptxas,fatbinary,nvlink,cudafe++,bin2c,__nvcc_device_query} \
    "$cuda"/nvvm/bin/cicc
# The wheels ship versioned names only; the linker looks for unversioned ones.
for lib in cudart cublas cublasLt nvrtc; do ln -sf "lib$lib.so.13" "$cuda/lib/lib$lib.so"; done
ln -sf libcurand.so.10 "$cuda/lib/libcurand.so"
# A libcuda.so stub for the link: every driver entry point of cuda.h returns
# CUDA_ERROR_STUB_LIBRARY (34). Versioned entry points (`cuEventElapsedTime_v2`) also get their
# unversioned name: drivers export both, and the CUDA 12.8 bindings this workspace pins cudarc to
# (crates/gdn-cuda/Cargo.toml) call some old names that CUDA 13's header only #defines away.
gcc -E -P -I "$cuda/include" "$cuda/include/cuda.h" -o "$dir/stub/cuda_pp.h"
python3 - "$dir/stub" <<'PY'
import re, sys
stub = sys.argv[1]
header = open(f"{stub}/cuda_pp.h").read()
names = set(re.findall(r"\b(?:extern\s+)?CUresult\s+(cu[A-Za-z0-9_]+)\s*\(", header))
names = sorted(names | {re.sub(r"_v[0-9]+$", "", name) for name in names})
with open(f"{stub}/libcuda_stub.c", "w") as out:
    out.write("/* libcuda link stub: every driver entry point returns CUDA_ERROR_STUB_LIBRARY */\n")
    for name in names:
        out.write(f"int {name}(void) {{ return 34; }}\n")
PY
mkdir -p "$cuda/lib/stubs"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" \
    "$dir/stub/libcuda_stub.c"
"$cuda/bin/nvcc" --version | tail -1
echo "export CUDA_HOME=$cuda PATH=$cuda/bin:\$PATH CUDA_COMPUTE_CAP=90"
