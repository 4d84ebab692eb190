//! `examples/to_gguf` against llama.cpp's own tools: the committed GGUF fixtures were made by
//! llama.cpp's `convert_hf_to_gguf.py --no-mtp --outtype f32` and `llama-quantize … Q8_0` from
//! the same tiny checkpoints (`models/tools/gen_gguf_fixtures.py`, models/fixtures/gguf/README.md).
//! A file written by `to_gguf` must hold the same tensors — names, types, shapes and every data
//! byte — and the same metadata, except `general.size_label` (the converter's parameter-count
//! label, which we do not write). Bad arguments are refused and never touch an existing file.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

/// Metadata keys a file from llama.cpp has that `to_gguf` does not write.
const NOT_WRITTEN: &[&str] = &["general.size_label"];

fn committed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures/gguf")
        .join(name)
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hybrid-to-gguf-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn to_gguf(args: &[&str]) -> std::process::Output {
    Command::new(common::example_binary("to_gguf"))
        .args(args)
        .output()
        .expect("run to_gguf")
}

fn export(fixture: &str, ty: &str, out: &Path) {
    export_dir(&common::fixture(fixture), ty, out);
}

fn export_dir(model: &Path, ty: &str, out: &Path) {
    let fixture = model.display();
    let output = to_gguf(&[
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--type",
        ty,
    ]);
    assert!(
        output.status.success(),
        "to_gguf {fixture} {ty}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Metadata as comparable text (`Debug` prints floats exactly), and each tensor's
/// (type, shape, bytes).
type Layout = (
    BTreeMap<String, String>,
    BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
);

fn read(path: &Path) -> Layout {
    let mut file = File::open(path).expect("open GGUF");
    let content = Content::read(&mut file).expect("read GGUF header");
    let metadata = content
        .metadata
        .iter()
        .filter(|(k, _)| !NOT_WRITTEN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    let tensors = content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let dtype = info.ggml_dtype;
            let bytes = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
            let mut data = vec![0u8; bytes];
            file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
                .and_then(|_| file.read_exact(&mut data))
                .expect("tensor data");
            let value = (format!("{dtype:?}"), info.shape.dims().to_vec(), data);
            (name.clone(), value)
        })
        .collect();
    (metadata, tensors)
}

fn assert_same_file(ours: &Path, theirs: &Path) {
    let (our_meta, our_tensors) = read(ours);
    let (their_meta, their_tensors) = read(theirs);
    for (key, value) in &their_meta {
        assert_eq!(
            our_meta.get(key),
            Some(value),
            "{}: metadata `{key}` differs from llama.cpp's {}",
            ours.display(),
            theirs.display()
        );
    }
    assert_eq!(
        our_meta.keys().collect::<Vec<_>>(),
        their_meta.keys().collect::<Vec<_>>(),
        "{}: metadata keys",
        ours.display()
    );
    assert_eq!(
        our_tensors.keys().collect::<Vec<_>>(),
        their_tensors.keys().collect::<Vec<_>>(),
        "{}: tensor names",
        ours.display()
    );
    for (name, (ty, dims, data)) in &our_tensors {
        let (their_ty, their_dims, their_data) = &their_tensors[name];
        assert_eq!(
            (ty, dims),
            (their_ty, their_dims),
            "{}: `{name}` type/shape",
            ours.display()
        );
        assert!(
            data == their_data,
            "{}: `{name}` ({ty}) data differs from llama.cpp's",
            ours.display()
        );
    }
}

#[test]
fn f32_files_equal_llama_cpps_converter_output() {
    let dir = scratch("f32");
    for fixture in common::FIXTURES {
        let out = dir.join(format!("{fixture}-f32.gguf"));
        export(fixture, "f32", &out);
        assert_same_file(&out, &committed(&format!("{fixture}-f32.gguf")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// transformers ≥ 5 saves MoE experts fused (`experts.gate_up_proj` `[E, 2I, H]`,
/// `experts.down_proj` `[E, H, I]`); the MoE fixture rewritten that way must give the same file
/// as llama.cpp's converter made from the per-expert original.
#[test]
fn fused_expert_checkpoints_give_the_same_file() {
    let dir = scratch("fused");
    let source = common::fixture("qwen3.5-moe-tiny");
    // Same directory name: `general.name` comes from it.
    let model = dir.join("qwen3.5-moe-tiny");
    std::fs::create_dir_all(&model).unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(source.join(file), model.join(file)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let prefixes: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".experts.0.gate_proj.weight"))
        .map(str::to_string)
        .collect();
    assert!(
        !prefixes.is_empty(),
        "the MoE fixture has per-expert tensors"
    );
    for prefix in prefixes {
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        for e in 0.. {
            let name = |m: &str| format!("{prefix}.experts.{e}.{m}.weight");
            let Some(gate) = tensors.remove(&name("gate_proj")) else {
                break;
            };
            let up = tensors.remove(&name("up_proj")).unwrap();
            gate_up.push(Tensor::cat(&[gate, up], 0).unwrap());
            down.push(tensors.remove(&name("down_proj")).unwrap());
        }
        let fused = format!("{prefix}.experts.gate_up_proj");
        tensors.insert(fused, Tensor::stack(&gate_up, 0).unwrap());
        let fused = format!("{prefix}.experts.down_proj");
        tensors.insert(fused, Tensor::stack(&down, 0).unwrap());
    }
    candle_core::safetensors::save(&tensors, model.join("model.safetensors")).unwrap();
    let out = dir.join("fused-f32.gguf");
    export_dir(&model, "f32", &out);
    assert_same_file(&out, &committed("qwen3.5-moe-tiny-f32.gguf"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn q8_0_files_equal_llama_quantize_output() {
    let dir = scratch("q8_0");
    for fixture in ["qwen3.5-tiny", "qwen3-next-tiny"] {
        let out = dir.join(format!("{fixture}-q8_0.gguf"));
        export(fixture, "q8_0", &out);
        assert_same_file(&out, &committed(&format!("{fixture}-q8_0.gguf")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The K-quant types need rows of 256; the fixtures' rows of 64 take llama-quantize's
/// fallback (Q4_K → Q5_0). The file must load here and give the f32 file's greedy tokens for
/// a short prompt.
#[test]
fn a_fallback_k_quant_file_loads_and_runs() {
    let dir = scratch("q4k");
    let out = dir.join("qwen3.5-tiny-q4_k.gguf");
    export("qwen3.5-tiny", "q4_k", &out);
    let (_, tensors) = read(&out);
    assert_eq!(tensors["blk.0.attn_qkv.weight"].0, "Q5_0");
    assert_eq!(tensors["blk.0.attn_norm.weight"].0, "F32");
    let gdn = hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default())
        .expect("cpu backend");
    let mut model = HybridModel::load(&out, &LoadOptions::default(), gdn).expect("load");
    assert_eq!(model.weight_format(), "GGUF Q4_K_S");
    let mut sequence = model.new_sequence().expect("sequence");
    let logits = model
        .prefill(&mut sequence, &[1, 2, 3, 4])
        .expect("prefill");
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_refused_and_an_existing_file_is_kept() {
    let dir = scratch("bad");
    let model = common::fixture("qwen3.5-tiny");
    let model = model.to_str().unwrap();
    let existing = dir.join("existing.gguf");
    std::fs::write(&existing, b"keep me").unwrap();
    let existing_arg = existing.to_str().unwrap();
    let fresh = dir.join("fresh.gguf");
    let fresh_arg = fresh.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--model", model, "--out", existing_arg], "exists"),
        (
            &["--model", model, "--out", fresh_arg, "--type", "q3_k_m"],
            "--type q3_k_m",
        ),
        (
            &["--model", existing_arg, "--out", fresh_arg],
            "not a directory",
        ),
    ];
    for (args, words) in cases {
        let output = to_gguf(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    assert!(!fresh.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
