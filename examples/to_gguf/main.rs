//! to_gguf — write a Hugging Face checkpoint directory as a GGUF file that llama.cpp (and this
//! engine) loads: what llama.cpp's `convert_hf_to_gguf.py --no-mtp` followed by `llama-quantize`
//! make, in one step and without Python.
//!
//! ```text
//! cargo run --release --example to_gguf -- --model DIR --out FILE.gguf [--type q8_0]
//! ```
//!
//! `--type` is one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k: every
//! weight matrix gets that type (norms, the router and the conv weights stay f32, and a row
//! length the type's block does not divide falls back as llama-quantize does). The names,
//! metadata and tensor transformations are llama.cpp's; see `hybrid_model::gguf_export`.
//! `--out` must not exist: the file is written next to it under a temporary name and moved
//! into place only when complete.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device};
use clap::Parser;
use hybrid_decode::model::gguf_export::{self, EXPORT_TYPES};
use hybrid_decode::model::matrix::ggml_name;
use hybrid_decode::model::{ModelConfig, WeightStore};
use hybrid_decode::runtime::gguf_vocab_export::vocab_metadata;

/// Write a safetensors checkpoint as a GGUF file llama.cpp loads.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The GGUF file to write; must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Type of the weight matrices (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k).
    #[arg(long = "type", default_value = "f32")]
    ty: String,
    /// `general.name` [default: from the directory name, as the converter does].
    #[arg(long)]
    name: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let target = gguf_export::export_type(&args.ty).with_context(|| {
        let names: Vec<String> = EXPORT_TYPES
            .iter()
            .map(|&t| ggml_name(t).to_lowercase())
            .collect();
        format!(
            "--type {}: unknown type; use one of {}",
            args.ty,
            names.join(", ")
        )
    })?;
    ensure!(
        args.model.is_dir(),
        "--model {}: not a directory; pass a Hugging Face model directory (a GGUF file is \
         requantized with llama.cpp's llama-quantize)",
        args.model.display()
    );
    if args.out.exists() || args.out.symlink_metadata().is_ok() {
        bail!(
            "--out {}: the file exists; choose another path or remove it first",
            args.out.display()
        );
    }

    // One read of config.json: the normalised config, and the raw keys the GGUF metadata
    // copies that the normalised one does not keep (mrope sections, the attention interval).
    let config_path = args.model.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = ModelConfig::from_json(&config_text, &config_path)?;
    let hf_config: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let store = WeightStore::open(&args.model, DType::F32, &Device::Cpu)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| display_name(&args.model));

    let mut metadata = gguf_export::model_metadata(&config, &hf_config, &name, target);
    metadata.extend(vocab_metadata(&args.model, config.vocab_size)?);
    let tensors = gguf_export::export_tensors(&store, &config, target)?;

    write_new(&args.out, &metadata, &tensors)?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} tensors, {} metadata keys, {:.1} MB, weights {})",
        args.out.display(),
        tensors.len(),
        metadata.len(),
        bytes as f64 / 1e6,
        args.ty.to_lowercase()
    );
    Ok(())
}

/// Writes the file under a temporary name beside `out`, then links it into place, which fails
/// rather than replace a file that appeared meanwhile.
fn write_new(
    out: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, candle_core::quantized::QTensor)],
) -> Result<()> {
    let file_name = out
        .file_name()
        .with_context(|| format!("--out {}: not a file path", out.display()))?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = BufWriter::new(file);
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let data: Vec<(&str, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut writer, &meta, &data)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        // candle writes version 2; version 3 (what llama.cpp writes) has the same layout
        // and only adds big-endian files, so the field is set to match llama.cpp's files.
        writer.seek(SeekFrom::Start(4))?;
        writer.write_all(&3u32.to_le_bytes())?;
        let file: File = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// `general.name` as llama.cpp's converter derives it from the directory name
/// (`qwen3.5-tiny` → `Qwen3.5 Tiny`).
fn display_name(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    base.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}
