//! serve — an OpenAI-compatible HTTP server with continuous batching and a conversation state
//! cache (see `crates/server`).
//!
//! ```text
//! cargo run --release --example serve -- [--model DIR|FILE.gguf|owner/name] [--port 8080]
//!     [--host 127.0.0.1] [--device cpu|cuda[:N]] [--gdn-backend cpu] [--max-batch 8] [--max-queue 64]
//!     [--state-cache-mb 256] [--ctx-size N] [--prefill-chunk 256] [--dtype f32|bf16|q8_0|…]
//!     [--kv-cache auto|f32|bf16|f16] [--no-mmap]
//!     [--threads N] [--model-name ID] [--max-body-mb 8] [--shutdown-grace-s 10]
//! ```
//! Without `--model` it serves the embedded demo model. Endpoints: `POST /v1/chat/completions`,
//! `POST /v1/completions` (`"stream": true` for server-sent events), `GET /v1/models`,
//! `GET /health`, `GET /metrics`. SIGTERM or Ctrl-C stops it: no new connections, running
//! streams finish (within `--shutdown-grace-s`), exit 0.

#[path = "../shared/loading.rs"]
mod loading;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::WeightFormat;
use hybrid_decode::runtime::{ChatTemplate, DEFAULT_SEED};
use hybrid_server::{EngineConfig, ServedModel, ServerConfig};

use loading::{ModelRequest, DEFAULT_MODEL};

/// OpenAI-compatible HTTP server for hybrid models.
#[derive(Parser, Debug)]
#[command(name = "serve")]
struct Args {
    /// Checkpoint directory, GGUF file, or hub repo (default: the embedded demo model).
    #[arg(long)]
    model: Option<String>,
    /// A tokenizer.json replacing the model's own.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Weight format for safetensors checkpoints (f32, bf16, f16, q8_0, q4_k, q6_k, …).
    #[arg(long)]
    dtype: Option<WeightFormat>,
    /// What the attention layers' KV caches store: auto (f32 for f32 weights, f16 for every
    /// smaller format, as llama.cpp), f32, bf16 or f16. Attention computes in f32 either way.
    #[arg(long, value_name = "auto|f32|bf16|f16")]
    kv_cache: Option<String>,
    /// Read a GGUF's quantized tensors into memory instead of using them in place from a
    /// read-only map of the file (the default, as llama.cpp).
    #[arg(long)]
    no_mmap: bool,
    /// Where the model runs: cpu, cuda or cuda:N (needs a `--features cuda-full` build).
    #[arg(long)]
    device: Option<String>,
    /// GDN backend (`generate --gdn-backend help` lists them) [default: cuda with
    /// `--device cuda[:N]`, else cpu].
    #[arg(long)]
    gdn_backend: Option<String>,
    /// If the `--gdn-backend` device fails, move every running sequence's state to a fresh
    /// backend of this name (e.g. cpu) and carry on with the same tokens. Until then a batch
    /// step runs its sequences through the GDN backend one at a time (so a failure moves them
    /// exactly), not as one batched call.
    #[arg(long)]
    gdn_fallback: Option<String>,
    /// Worker threads for the model (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The id clients send as `model` (default: the checkpoint's directory or file name).
    #[arg(long)]
    model_name: Option<String>,
    /// Most sequences decoded together in one batched step.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most requests waiting for a place in the batch; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Memory for saved conversation states (MiB); 0 disables the state cache.
    #[arg(long, default_value_t = 256)]
    state_cache_mb: usize,
    /// Most tokens (prompt + generated) per request (default: the model's
    /// max_position_embeddings, at most 32768).
    #[arg(long)]
    ctx_size: Option<usize>,
    /// Most prompt tokens prefilled between two decode steps.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Largest request body (MiB); larger ones get 413.
    #[arg(long, default_value_t = 8)]
    max_body_mb: usize,
    /// After SIGTERM, how long running streams may continue before they are ended.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_s: u64,
}

/// The default context when neither the flag nor a smaller model limit says otherwise: the KV
/// cache grows with the context actually used, so this only bounds one request.
const DEFAULT_CTX: usize = 32_768;

fn main() -> Result<()> {
    hybrid_decode::simd::requested()?;
    let a = Args::parse();
    if let Some(threads) = a.threads {
        hybrid_decode::cli::set_threads(threads)?;
    }
    for (flag, value) in [
        ("--max-batch", a.max_batch),
        ("--max-queue", a.max_queue),
        ("--prefill-chunk", a.prefill_chunk),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let gdn_backend = a
        .gdn_backend
        .clone()
        .unwrap_or_else(|| hybrid_decode::cli::default_gdn_backend(a.device.as_deref()).into());
    let loaded = loading::load(&ModelRequest {
        model: a.model.as_deref(),
        tokenizer: a.tokenizer.as_deref(),
        config: None,
        seed: None,
        dtype: a.dtype,
        kv_cache: a.kv_cache.as_deref(),
        no_mmap: a.no_mmap,
        device: a.device.as_deref(),
        gdn_backend: &gdn_backend,
        gdn_fallback: a.gdn_fallback.as_deref(),
        backend_options: BackendOptions::default(),
    })?;
    let Some(tokenizer) = loaded.tokenizer else {
        bail!("the model has no tokenizer.json; give one with --tokenizer FILE");
    };
    let model = loaded.engine.into_model();
    let max_positions = model.config().max_position_embeddings;
    let context = match a.ctx_size {
        Some(n) if n > max_positions => bail!(
            "--ctx-size {n} is more than the model's max_position_embeddings ({max_positions})"
        ),
        Some(n) if n < 2 => bail!("--ctx-size must be at least 2"),
        Some(n) => n,
        None => max_positions.min(DEFAULT_CTX),
    };
    let chat_template = match &loaded.tokenizer_config {
        Some(config) if config.chat_template.is_some() => {
            Some(ChatTemplate::from_config(config).context("the model's chat template")?)
        }
        _ => None,
    };
    let mut eos = loaded.generation.eos_token_ids.clone();
    if let Some(config) = &loaded.tokenizer_config {
        eos.extend(
            config
                .eos_token_id(&tokenizer)
                .filter(|id| !eos.contains(id)),
        );
    }
    let model_id = a
        .model_name
        .clone()
        .unwrap_or_else(|| model_name(a.model.as_deref().unwrap_or(DEFAULT_MODEL)));
    let config = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        max_body_bytes: a.max_body_mb << 20,
        context,
        model_id: model_id.clone(),
        engine: EngineConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            prefill_chunk: a.prefill_chunk,
            state_cache_bytes: a.state_cache_mb << 20,
            shutdown_grace: Duration::from_secs(a.shutdown_grace_s),
        },
    };
    let served = ServedModel {
        model,
        tokenizer,
        chat_template,
        eos_token_ids: eos,
        sampling_defaults: loaded.generation.sampling_params(DEFAULT_SEED),
    };
    let description = loaded.description;
    hybrid_server::serve(config, served, |address| {
        eprintln!("serve: {description}");
        eprintln!(
            "serve: model `{model_id}`, GDN backend {}, context {context}, batch {}, queue {}, \
             state cache {} MiB",
            gdn_backend, a.max_batch, a.max_queue, a.state_cache_mb
        );
        // Tests and scripts wait for this line (with --port 0 it is the only way to learn the port).
        eprintln!("serve: listening on http://{address}");
    })?;
    eprintln!("serve: stopped");
    Ok(())
}

/// A model id from `--model`: the file stem of a GGUF, the last path component of a
/// directory, or a hub repo id as given.
fn model_name(spec: &str) -> String {
    let path = Path::new(spec);
    if path.exists() {
        let stem = if path.is_file() {
            path.file_stem()
        } else {
            path.file_name()
        };
        if let Some(name) = stem {
            return name.to_string_lossy().into_owned();
        }
    }
    spec.to_string()
}
