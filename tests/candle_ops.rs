//! The model with its matrix products on candle's generic ops (`LoadOptions::candle_ops`): the
//! code `--device cuda` runs (cuBLAS for dense weights, candle's quantized matmul for GGML
//! blocks), checked on the CPU so that it is tested on machines without a GPU. The same HF goldens
//! as tests/model_goldens.rs (`models/tools/gen_model_fixtures.py`), and the quantized GGUF
//! fixtures (`models/tools/gen_gguf_fixtures.py`) against this crate's own kernels.

mod common;

use std::path::{Path, PathBuf};

use candle_core::DType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

use common::golden::{
    check_against_golden, check_as_accurate, check_bf16_near, last_logits, Golden,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path, options: &LoadOptions) -> HybridModel {
    let gdn = hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default())
        .expect("backend");
    HybridModel::load(path, options, gdn)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn candle_ops(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        candle_ops: true,
        ..LoadOptions::default()
    }
}

/// f32 weights through candle's matmul: HF's logits within the goldens' tolerance, for every
/// architecture (dense, MoE, Qwen3-Next's interleaved projections), from safetensors and from
/// llama.cpp's f32 GGUFs (whose reordered rows the candle path must multiply the same way).
#[test]
fn f32_models_on_candle_ops_match_hf_goldens() {
    for fixture in common::FIXTURES {
        let dir = root().join("models/fixtures").join(fixture);
        let mut model = load(&dir, &candle_ops(DType::F32));
        assert!(
            model.kernel_description().starts_with("candle"),
            "{}",
            model.kernel_description()
        );
        check_against_golden(&mut model, fixture, &format!("{fixture} on candle ops"));
        let gguf = root().join(format!("models/fixtures/gguf/{fixture}-f32.gguf"));
        let mut model = load(&gguf, &candle_ops(DType::F32));
        check_against_golden(
            &mut model,
            fixture,
            &format!("{fixture} f32 GGUF, candle ops"),
        );
    }
}

/// bf16 weights: the candle path multiplies bf16 activations by bf16 weights (what cuBLAS runs,
/// as HF and llama.cpp do on a GPU), ours f32 activations by widened bf16; on these random tiny
/// models that moves the last logits by 2–4 % of their norm (measured), and the top token must
/// agree.
#[test]
fn bf16_on_candle_ops_stays_near_our_kernels() {
    for fixture in common::FIXTURES {
        let dir = root().join("models/fixtures").join(fixture);
        let prompt = Golden::load(fixture).ids("long_ids");
        let ours = last_logits(
            &mut load(
                &dir,
                &LoadOptions {
                    dtype: DType::BF16,
                    ..LoadOptions::default()
                },
            ),
            &prompt,
        );
        let candle = last_logits(&mut load(&dir, &candle_ops(DType::BF16)), &prompt);
        check_bf16_near(&format!("{fixture} on candle ops"), &candle, &ours);
    }
}

/// llama-quantize's Q8_0 and Q4_K_M files through candle's quantized matmul (the CUDA path's
/// CPU twin): as close to the f32 file's logits as this crate's quantized kernels get. candle
/// rounds each activation row to 8-bit blocks first (llama.cpp's scheme), which on these tiny
/// random models (they amplify weight noise ~20×) adds a little error of its own; a wrong row
/// order or block layout would be off by the size of the logits themselves.
#[test]
fn quantized_ggufs_on_candle_ops_are_as_accurate_as_our_kernels() {
    for fixture in ["qwen3-next-tiny", "qwen3.5-tiny"] {
        let prompt = Golden::load(fixture).ids("long_ids");
        let f32_file = root().join(format!("models/fixtures/gguf/{fixture}-f32.gguf"));
        let reference = last_logits(&mut load(&f32_file, &LoadOptions::default()), &prompt);
        for quant in ["q8_0", "q4_k_m"] {
            let file = root().join(format!("models/fixtures/gguf/{fixture}-{quant}.gguf"));
            let ours = last_logits(&mut load(&file, &LoadOptions::default()), &prompt);
            let candle = last_logits(&mut load(&file, &candle_ops(DType::F32)), &prompt);
            check_as_accurate(
                &format!("{fixture} {quant} on candle ops"),
                &candle,
                &ours,
                &reference,
            );
        }
    }
}
