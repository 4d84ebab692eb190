#!/usr/bin/env bash
# Builds, on a machine WITHOUT a GPU (no CUDA toolkit needed), everything run.sh needs on the GPU
# machine (which has no Rust toolchain and no network), and packs it into
#   target/gpu-bundle/bundle.tar.xz   stripped release binaries (tests and examples)
#   target/gpu-bundle/wheels/         fla-core (flash-linear-attention's kernels) for fla_bench.py
# target/ is git-ignored: name `target/gpu-bundle` in the device tool's `carry`.
#
# Usage (repository root): bash crates/gdn-cuda/gpu_check/build_bundle.sh
# Takes ~10 min cold on 2 cores (candle in release), a few minutes warm (xz -9 of ~0.5 GB of
# binaries is most of it).
#
# The whole-model part (`--features cuda-full`: candle's CUDA ops, `--device cuda`) needs a CUDA
# toolkit to build (cuda_toolkit_env.sh: nvcc on PATH, else NVIDIA's pip wheels, ~650 MB
# download, 1.8 GB, in $CUDA_WHEELS_DIR). That build has its own target dir, target/cuda-full:
# ~25 min cold on 2 cores (candle-kernels' nvcc build script), a few minutes warm.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BUNDLE=target/gpu-bundle
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/wheels"

# Facade: the conformance suite and the model goldens run on every backend in the build, so with
# `--features cuda` they include `cuda`; generate and gdn_bench take `--gdn-backend cuda` /
# `--backends cuda`.
cargo build --release --features cuda --tests --example generate --example gdn_bench \
    --message-format=json-render-diagnostics >"$BUNDLE/facade.json"
# The crate's own GPU tests, the NVRTC check and the GPU benchmark.
cargo build --release -p hybrid-gdn-cuda --tests --example cuda_bench \
    --message-format=json-render-diagnostics >"$BUNDLE/crate.json"

# The whole model on the GPU: candle built with its CUDA kernels (cuda-full); the binaries get a
# `-full` suffix beside the ones above. CUDA 13.0 wheels: the PTX candle embeds must not be newer
# than the GPU machine's driver (580 = CUDA 13.0 there, KINDS.md), and CUDA_COMPUTE_CAP=90 builds
# candle's MoE kernels for sm_90 (H100/H200).
source crates/gdn-cuda/gpu_check/cuda_toolkit_env.sh
cargo build --release --features cuda-full --target-dir target/cuda-full --test cuda_device \
    --example generate --example bench --message-format=json-render-diagnostics >"$BUNDLE/full.json"

python3 - "$BUNDLE" <<'EOF'
import json, shutil, sys, os
bundle = sys.argv[1]
wanted_tests = {"gdn_conformance", "gdn_registry", "model_goldens", "gpu", "nvrtc_compile", "unavailable"}
wanted_examples = {"generate", "gdn_bench", "cuda_bench"}
wanted_full = {"cuda_device", "generate", "bench"}
copied = []
for name, tests, examples, suffix in (
    ("facade.json", wanted_tests, wanted_examples, ""),
    ("crate.json", wanted_tests, wanted_examples, ""),
    ("full.json", wanted_full, wanted_full, "-full"),
):
    for line in open(os.path.join(bundle, name)):
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        target = msg["target"]
        kind = target["kind"]
        if ("test" in kind and target["name"] in tests) or (
            "example" in kind and target["name"] in examples
        ):
            # cuda_device exists only in the full build: no suffix needed to tell it apart.
            label = target["name"] + ("" if target["name"] == "cuda_device" else suffix)
            shutil.copy2(msg["executable"], os.path.join(bundle, "bin", label))
            copied.append(label)
expected = wanted_tests | wanted_examples | {"cuda_device", "generate-full", "bench-full"}
missing = expected - set(copied)
if missing:
    sys.exit(f"not built: {sorted(missing)}")
print("bundled:", " ".join(sorted(copied)))
EOF
strip "$BUNDLE"/bin/*
# One thread and -9 (a 64 MiB window): the binaries share most of their bytes (candle, and its
# PTX in the -full ones), which only a window spanning several of them removes. The stripped
# cuda-full generate + bench: 110 MB → 15.9 MB at -T2 -6, 8.6 MB at -T1 -9. The working tree
# (23 MB) and the carried bundle must stay under the device tool's 64 MiB together.
tar -C "$BUNDLE" -cf - bin | xz -T1 -9 >"$BUNDLE/bundle.tar.xz"
rm -rf "$BUNDLE/bin" "$BUNDLE/facade.json" "$BUNDLE/crate.json" "$BUNDLE/full.json"

# flash-linear-attention's Triton kernels (pure Python; torch, triton and einops are on the GPU
# image already). Only fla-core is needed for fla.ops.
python3 -m pip download --no-deps --only-binary=:all: -d "$BUNDLE/wheels" fla-core==0.6.0

du -sh "$BUNDLE"/*
echo "carry: target/gpu-bundle   command: bash crates/gdn-cuda/gpu_check/run.sh"
