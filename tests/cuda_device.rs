//! The whole model on a GPU (`LoadOptions::device` = CUDA, a `--features cuda-full` build): the
//! HF goldens of the tiny fixtures (`models/tools/gen_model_fixtures.py`) with embeddings,
//! projections, attention and MoE on candle's CUDA ops and the GDN layers on the `cuda` backend
//! (and on `cpu`, which takes its inputs through host memory), from safetensors and from
//! llama.cpp's f32 GGUFs; the quantized GGUFs on candle's CUDA quantized matmul stay as close to
//! f32 as this crate's CPU kernels. Run by crates/gdn-cuda/gpu_check/run.sh.
//!
//! Needs a GPU: without one every test says so and passes, unless `HYBRID_GDN_REQUIRE_GPU=1`.
//! Without the `cuda-full` feature this file is empty (tests/candle_ops.rs checks the same ops
//! on the CPU).
#![cfg(feature = "cuda-full")]

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

use common::golden::{
    check_against_golden, check_as_accurate, check_bf16_near, last_logits, Golden,
};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(err) => {
            if std::env::var("HYBRID_GDN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("HYBRID_GDN_REQUIRE_GPU=1 but CUDA GPU 0 does not open: {err}");
            }
            eprintln!("skipped (no GPU): {err}");
            None
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path, options: &LoadOptions, backend: &str) -> HybridModel {
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &BackendOptions::default())
        .unwrap_or_else(|e| panic!("GDN backend {backend}: {e}"));
    HybridModel::load(path, options, gdn)
        .unwrap_or_else(|e| panic!("loading {} on {backend}: {e}", path.display()))
}

fn on(device: &Device, dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        device: device.clone(),
        ..LoadOptions::default()
    }
}

#[test]
fn f32_models_on_the_gpu_match_hf_goldens() {
    let Some(device) = gpu() else { return };
    for fixture in common::FIXTURES {
        for backend in ["cuda", "cpu"] {
            let dir = root().join("models/fixtures").join(fixture);
            let mut model = load(&dir, &on(&device, DType::F32), backend);
            assert!(model.device().is_cuda());
            check_against_golden(
                &mut model,
                fixture,
                &format!("{fixture} on the GPU, {backend}"),
            );
        }
        let gguf = root().join(format!("models/fixtures/gguf/{fixture}-f32.gguf"));
        let mut model = load(&gguf, &on(&device, DType::F32), "cuda");
        check_against_golden(
            &mut model,
            fixture,
            &format!("{fixture} f32 GGUF on the GPU"),
        );
    }
}

/// bf16 on cuBLAS (bf16 activations, f32 accumulation) vs this crate's CPU kernels (f32
/// activations): the same bound as tests/candle_ops.rs puts on candle's CPU ops.
#[test]
fn bf16_on_the_gpu_stays_near_the_cpu() {
    let Some(device) = gpu() else { return };
    for fixture in common::FIXTURES {
        let dir = root().join("models/fixtures").join(fixture);
        let prompt = Golden::load(fixture).ids("long_ids");
        let cpu = last_logits(
            &mut load(&dir, &on(&Device::Cpu, DType::BF16), "cpu"),
            &prompt,
        );
        let gpu = last_logits(&mut load(&dir, &on(&device, DType::BF16), "cuda"), &prompt);
        check_bf16_near(&format!("{fixture} on the GPU"), &gpu, &cpu);
    }
}

#[test]
fn quantized_ggufs_on_the_gpu_are_as_accurate_as_the_cpu() {
    let Some(device) = gpu() else { return };
    for fixture in ["qwen3-next-tiny", "qwen3.5-tiny"] {
        let prompt = Golden::load(fixture).ids("long_ids");
        let f32_file = root().join(format!("models/fixtures/gguf/{fixture}-f32.gguf"));
        let reference = last_logits(
            &mut load(&f32_file, &on(&Device::Cpu, DType::F32), "cpu"),
            &prompt,
        );
        for quant in ["q8_0", "q4_k_m"] {
            let file = root().join(format!("models/fixtures/gguf/{fixture}-{quant}.gguf"));
            let cpu = last_logits(
                &mut load(&file, &on(&Device::Cpu, DType::F32), "cpu"),
                &prompt,
            );
            let gpu = last_logits(&mut load(&file, &on(&device, DType::F32), "cuda"), &prompt);
            check_as_accurate(
                &format!("{fixture} {quant} on the GPU"),
                &gpu,
                &cpu,
                &reference,
            );
        }
    }
}
