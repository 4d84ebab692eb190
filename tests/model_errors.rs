//! Bad checkpoints and bad input give clear errors that name the file, field or tensor — never a
//! panic. Each case copies a real fixture into a temp dir and breaks one thing.

use std::fs;
use std::path::{Path, PathBuf};

use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions, ModelError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// A writable copy of a fixture.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in fs::read_dir(fixture(name)).expect("fixture") {
        let path = entry.expect("entry").path();
        fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    dir
}

fn load(dir: &Path) -> Result<HybridModel, ModelError> {
    let gdn = hybrid_decode::gdn_registry()
        .create("reference", &BackendOptions::default())
        .expect("reference");
    HybridModel::load(dir, &LoadOptions::default(), gdn)
}

fn error_of(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
    edit(&mut config);
    fs::write(&path, serde_json::to_string_pretty(&config).expect("json")).expect("write");
}

#[test]
fn missing_config_names_the_file() {
    let dir = copy_fixture("qwen3.5-tiny");
    fs::remove_file(dir.path().join("config.json")).expect("rm");
    let message = error_of(dir.path());
    assert!(message.contains("config.json"), "{message}");
}

#[test]
fn garbled_config_names_the_file() {
    let dir = copy_fixture("qwen3.5-tiny");
    fs::write(dir.path().join("config.json"), "{ not json").expect("write");
    let message = error_of(dir.path());
    assert!(
        message.contains("config.json") && message.contains("not a valid model config"),
        "{message}"
    );
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let dir = copy_fixture("qwen3.5-tiny");
    edit_config(dir.path(), |c| c["model_type"] = "llama".into());
    let message = error_of(dir.path());
    assert!(
        message.contains("`llama`") && message.contains("qwen3_next"),
        "{message}"
    );
}

#[test]
fn missing_required_field_is_named() {
    let dir = copy_fixture("qwen3-next-tiny");
    edit_config(dir.path(), |c| {
        c.as_object_mut()
            .expect("object")
            .remove("linear_num_value_heads");
    });
    let message = error_of(dir.path());
    assert!(
        message.contains("linear_num_value_heads") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn truncated_safetensors_is_rejected_with_the_file_name() {
    let dir = copy_fixture("qwen3.5-tiny");
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let message = error_of(dir.path());
    assert!(
        message.contains("model.safetensors") && message.contains("not a valid safetensors"),
        "{message}"
    );
}

#[test]
fn shape_mismatch_names_tensor_file_and_both_shapes() {
    let dir = copy_fixture("qwen3.5-tiny");
    // The config now implies wider GDN value heads than the tensors on disk have.
    edit_config(dir.path(), |c| c["linear_value_head_dim"] = 32.into());
    let message = error_of(dir.path());
    assert!(
        message.contains("model.layers.0.linear_attn.in_proj_qkv.weight")
            && message.contains("model.safetensors")
            && message.contains("[128, 64]"),
        "{message}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("qwen3-next-tiny");
    // Drop the shard that holds the last layers from the index: their tensors go missing.
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index_path).expect("read")).expect("json");
    let map = index["weight_map"].as_object_mut().expect("weight_map");
    map.retain(|_, file| file != "model-00002-of-00002.safetensors");
    fs::write(&index_path, index.to_string()).expect("write");
    let message = error_of(dir.path());
    assert!(
        message.contains("is missing from the checkpoint"),
        "{message}"
    );
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let mut model = load(&fixture("qwen3.5-tiny")).expect("load");
    let too_long = vec![1u32; model.config().max_position_embeddings + 1];
    let message = model.forward(&too_long).expect_err("must fail").to_string();
    assert!(message.contains("max_position_embeddings"), "{message}");
    // Within the limit, but decode would cross it.
    let max = model.config().max_position_embeddings;
    model
        .forward(&vec![1u32; max])
        .expect("exactly at the limit");
    let message = model.forward(&[1]).expect_err("must fail").to_string();
    assert!(
        message.contains("exceeds max_position_embeddings"),
        "{message}"
    );
}

#[test]
fn token_outside_the_vocabulary_is_an_error() {
    let mut model = load(&fixture("qwen3.5-tiny")).expect("load");
    let message = model
        .forward(&[5, 4096])
        .expect_err("must fail")
        .to_string();
    assert!(
        message.contains("4096") && message.contains("vocab"),
        "{message}"
    );
}

#[test]
fn multimodal_text_config_and_language_model_prefix_load() {
    // Rewrite the dense fixture the way multimodal Qwen3.5 checkpoints lay it out: fields under
    // `text_config`, tensors under `model.language_model.`.
    let dir = copy_fixture("qwen3.5-tiny");
    edit_config(dir.path(), |c| {
        let text = c.clone();
        *c = serde_json::json!({
            "model_type": "qwen3_5",
            "architectures": ["Qwen3_5ForConditionalGeneration"],
            "tie_word_embeddings": text["tie_word_embeddings"].clone(),
            "text_config": text,
        });
        c["text_config"]["model_type"] = "qwen3_5_text".into();
    });
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name.replacen("model.", "model.language_model.", 1), view))
        .collect();
    let out = safetensors::serialize(renamed, None).expect("serialize");
    fs::write(&path, out).expect("write");

    let mut nested = load(dir.path()).expect("multimodal layout loads");
    let mut flat = load(&fixture("qwen3.5-tiny")).expect("flat");
    let a = nested
        .forward(&[3, 1, 4, 1, 5])
        .expect("forward")
        .to_vec1::<f32>()
        .expect("vec");
    let b = flat
        .forward(&[3, 1, 4, 1, 5])
        .expect("forward")
        .to_vec1::<f32>()
        .expect("vec");
    assert_eq!(a, b, "the multimodal layout must give the same logits");
}

/// Rewrites `shard` of `dir` with `extra` (name, tensor bytes) added to its own tensors.
fn add_to_shard(dir: &Path, shard: &str, extra: (&str, safetensors::Dtype, Vec<usize>, Vec<u8>)) {
    use safetensors::tensor::{SafeTensors, TensorView};
    let path = dir.join(shard);
    let bytes = fs::read(&path).expect("read shard");
    let parsed = SafeTensors::deserialize(&bytes).expect("parse shard");
    let mut views: Vec<(String, TensorView<'_>)> = parsed.tensors();
    let (name, dtype, shape, data) = &extra;
    views.push((
        name.to_string(),
        TensorView::new(*dtype, shape.clone(), data).expect("view"),
    ));
    let out = safetensors::serialize(views, None).expect("serialize");
    fs::write(&path, out).expect("write shard");
}

/// The first tensor of shard 1 of the sharded fixture, with its bytes.
fn a_tensor_of_shard_1(dir: &Path) -> (String, safetensors::Dtype, Vec<usize>, Vec<u8>) {
    use safetensors::tensor::SafeTensors;
    let bytes = fs::read(dir.join("model-00001-of-00002.safetensors")).expect("read");
    let parsed = SafeTensors::deserialize(&bytes).expect("parse");
    let mut names = parsed.names();
    names.sort();
    let view = parsed.tensor(names[0]).expect("tensor");
    (
        names[0].to_string(),
        view.dtype(),
        view.shape().to_vec(),
        view.data().to_vec(),
    )
}

#[test]
fn a_tensor_in_two_shards_is_refused_naming_both_files() {
    // Issue 13 item 6: the later shard used to win silently, whatever the index said.
    let dir = copy_fixture("qwen3-next-tiny");
    let (name, dtype, shape, mut data) = a_tensor_of_shard_1(dir.path());
    data.iter_mut().for_each(|b| *b = b.wrapping_add(1)); // a different copy
    add_to_shard(
        dir.path(),
        "model-00002-of-00002.safetensors",
        (&name, dtype, shape, data),
    );
    let message = error_of(dir.path());
    assert!(
        message.contains(&name)
            && message.contains("model-00001-of-00002.safetensors")
            && message.contains("model-00002-of-00002.safetensors"),
        "{message}"
    );
}

#[test]
fn an_index_that_names_the_wrong_shard_is_refused() {
    let dir = copy_fixture("qwen3-next-tiny");
    let (name, ..) = a_tensor_of_shard_1(dir.path());
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index_path).expect("read")).expect("json");
    index["weight_map"][&name] = "model-00002-of-00002.safetensors".into();
    fs::write(&index_path, index.to_string()).expect("write");
    let message = error_of(dir.path());
    assert!(
        message.contains(&name)
            && message.contains("model.safetensors.index.json")
            && message.contains("model-00001-of-00002.safetensors"),
        "{message}"
    );
}

/// Issue 13 items 5 and 9: sizes a config gives are bounded and checked before anything is
/// allocated, and values that would only fail later as NaN are refused with the field's name.
#[test]
fn absurd_or_invalid_config_values_name_their_field() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "qwen3.5-tiny",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("layer_types");
                c["num_hidden_layers"] = 1_000_000_000_000u64.into();
            }),
            "num_hidden_layers",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["vocab_size"] = 1_000_000_000_000u64.into()),
            "vocab_size",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["head_dim"] = (1u64 << 62).into()),
            "head_dim",
        ),
        (
            "qwen3-next-tiny",
            Box::new(|c| c["num_experts"] = 1_000_000_000_000u64.into()),
            "num_experts",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["linear_conv_kernel_dim"] = 0.into()),
            "linear_conv_kernel_dim",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["linear_num_value_heads"] = (1u64 << 62).into()),
            "linear_num_value_heads",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["rms_norm_eps"] = (-1e-6).into()),
            "rms_norm_eps",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["rope_parameters"]["rope_theta"] = 0.0.into()),
            "rope_theta",
        ),
        (
            "qwen3.5-tiny",
            Box::new(|c| c["rope_parameters"]["rope_theta"] = (-5.0).into()),
            "rope_theta",
        ),
    ];
    for (fixture_name, edit, field) in cases {
        let dir = copy_fixture(fixture_name);
        edit_config(dir.path(), |c| edit(c));
        let message = error_of(dir.path());
        assert!(message.contains(field), "{field}: {message}");
        // The same config for random weights is refused by the same check.
        let config = hybrid_decode::model::ModelConfig::from_file(&dir.path().join("config.json"));
        assert!(config.is_err(), "{field}");
    }
}

#[test]
fn random_weights_too_large_for_memory_are_refused_not_aborted() {
    let dir = copy_fixture("qwen3.5-tiny");
    // Within every field's bound, but the embedding alone would be 2^24 × 2^20 f32 = 64 TiB.
    edit_config(dir.path(), |c| {
        c["vocab_size"] = (1u64 << 24).into();
        c["hidden_size"] = (1u64 << 20).into();
    });
    let config = hybrid_decode::model::ModelConfig::from_file(&dir.path().join("config.json"))
        .expect("sizes within bounds");
    let gdn = hybrid_decode::gdn_registry()
        .create("reference", &BackendOptions::default())
        .expect("reference");
    let message = HybridModel::random(config, &LoadOptions::default(), gdn, 7)
        .expect_err("must be refused")
        .to_string();
    assert!(
        message.contains("random weights") && message.contains("bytes"),
        "{message}"
    );
}
