//! GGUF files made by llama.cpp's own converter from the tiny fixtures
//! (`models/tools/gen_gguf_fixtures.py`; see models/fixtures/gguf/README.md) against the same HF
//! goldens as the safetensors checkpoints: an f32 GGUF must give HF's logits within the same
//! tolerance, which proves every transformation the converter applies (norm `1 + w`,
//! `ssm_a = −exp(A_log)`, de-interleaved Qwen3-Next projections, Qwen3.5's reordered value heads,
//! stacked experts) is undone exactly. The quantized files must load and stay close to f32.

mod common;

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

use common::golden::{check_against_golden, last_logits, relative_rms, Golden};

fn gguf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures/gguf")
        .join(name)
}

fn load(file: &str, backend: &str) -> HybridModel {
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &BackendOptions::default())
        .expect("backend");
    HybridModel::load(&gguf(file), &LoadOptions::default(), gdn)
        .unwrap_or_else(|e| panic!("loading {file}: {e}"))
}

#[test]
fn f32_ggufs_match_hf_goldens() {
    for fixture in common::FIXTURES {
        for backend in ["reference", "cpu"] {
            let file = format!("{fixture}-f32.gguf");
            let mut model = load(&file, backend);
            assert_eq!(model.weight_format(), "GGUF F32");
            check_against_golden(&mut model, fixture, &format!("{file} on {backend}"));
        }
    }
}

/// llama-quantize's Q8_0 blocks, read from the file, give exactly what quantizing the same f32
/// weights on load gives: proves the quantized layouts (blocks, stacked experts, squeezed
/// `[1, n]` gates, de-interleaved projections) are read right and that our Q8_0 quantizer is
/// llama.cpp's.
#[test]
fn q8_0_gguf_equals_quantizing_the_safetensors_on_load() {
    let fixture = "qwen3-next-tiny"; // f32 on disk, so both start from the same values
    let prompt = Golden::load(fixture).ids("long_ids");
    let from_file = last_logits(&mut load(&format!("{fixture}-q8_0.gguf"), "cpu"), &prompt);
    let gdn = hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default())
        .expect("backend");
    let options = LoadOptions {
        quantize: Some(GgmlDType::Q8_0),
        ..LoadOptions::default()
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(fixture);
    let mut on_load = HybridModel::load(&dir, &options, gdn).expect("load");
    assert_eq!(on_load.weight_format(), "Q8_0 (quantized on load)");
    let quantized = last_logits(&mut on_load, &prompt);
    let diff = common::golden::max_abs_diff(&from_file, &quantized);
    assert!(diff <= 1e-4, "Q8_0 GGUF vs Q8_0 on load: max |Δ| {diff}");
}

/// Every quantized file loads (Q8_0, and llama-quantize's Q4_K_M mix, which for rows this short
/// falls back to Q5_0/Q5_1/Q8_0) and gives finite logits near its f32 file's. The tiny random
/// models amplify weight noise about 20× (Q8_0's 0.5 % per weight becomes ~10 % of the logits),
/// so this bound only catches gross errors; quantization quality is measured at real shapes
/// (README, KL divergence against llama.cpp).
#[test]
fn quantized_ggufs_load_and_stay_near_f32() {
    for fixture in ["qwen3-next-tiny", "qwen3.5-tiny"] {
        let prompt = Golden::load(fixture).ids("long_ids");
        let reference = last_logits(&mut load(&format!("{fixture}-f32.gguf"), "cpu"), &prompt);
        for (quant, format, max_rel) in [("q8_0", "GGUF Q8_0", 0.2), ("q4_k_m", "GGUF Q4_K_M", 2.0)]
        {
            let file = format!("{fixture}-{quant}.gguf");
            let mut model = load(&file, "cpu");
            assert_eq!(model.weight_format(), format, "{file}");
            let got = last_logits(&mut model, &prompt);
            assert!(
                got.iter().all(|x| x.is_finite()),
                "{file}: non-finite logits"
            );
            let rel = relative_rms(&got, &reference);
            eprintln!("{file}: relative RMS logit error vs f32 {rel:.4}");
            assert!(
                rel < max_rel,
                "{file}: relative RMS error {rel} ≥ {max_rel}"
            );
        }
    }
}

/// Quantized tensors are used in place from a read-only map of the file by default, and read
/// into memory with `mmap: false` (`--no-mmap`); both give the same logits to the last bit.
/// The file is a private copy, so `/proc/self/maps` shows whether this load mapped it whatever
/// other tests of this binary load at the same time.
#[test]
fn quantized_ggufs_are_mapped_unless_told_not_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    for fixture in ["qwen3-next-tiny", "qwen3.5-tiny"] {
        let prompt = Golden::load(fixture).ids("long_ids");
        let file = dir.path().join(format!("{fixture}-q4_k_m-copy.gguf"));
        std::fs::copy(gguf(&format!("{fixture}-q4_k_m.gguf")), &file).expect("copy");
        let before = std::fs::read(&file).expect("read");
        let mapped_by_us = || {
            std::fs::read_to_string("/proc/self/maps")
                .expect("/proc/self/maps")
                .lines()
                .filter(|l| l.ends_with(file.to_str().unwrap()))
                .count()
        };
        let mut logits = Vec::new();
        for mmap in [true, false] {
            let gdn = hybrid_decode::gdn_registry()
                .create("cpu", &BackendOptions::default())
                .expect("backend");
            let options = LoadOptions {
                mmap,
                ..LoadOptions::default()
            };
            let mut model = HybridModel::load(&file, &options, gdn).expect("load");
            let maps = mapped_by_us();
            if mmap {
                assert!(maps > 0, "{fixture}: no tensor of the file is mapped");
            } else {
                assert_eq!(maps, 0, "{fixture}: mapped although mmap is off");
            }
            logits.push(last_logits(&mut model, &prompt));
        }
        assert_eq!(
            logits[0], logits[1],
            "{fixture}: mapped and read weights differ"
        );
        assert_eq!(mapped_by_us(), 0, "{fixture}: maps outlive the model");
        assert_eq!(
            std::fs::read(&file).expect("read"),
            before,
            "{fixture}: file changed"
        );
    }
}
