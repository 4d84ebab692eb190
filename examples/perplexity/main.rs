//! perplexity — how well a model predicts a text (like llama.cpp's `llama-perplexity`), and how far
//! one run's next-token distributions drift from another's (KL divergence, e.g. a quantized model
//! against its f32 original).
//!
//! ```text
//! cargo run --release --example perplexity -- --file TEXT [--model DIR|FILE.gguf|owner/name]
//!     [--ctx 512] [--stride N] [--chunks N] [--gdn-backend cpu] [--dtype f32|bf16|q8_0|…]
//!     [--tokenizer FILE] [--threads N] [--kl-divergence-base FILE [--kl-divergence]] [--json]
//! ```
//!
//! Windows follow Hugging Face's sliding-window recipe: a window of up to `--ctx` tokens starts
//! every `--stride` tokens (default: `--ctx`, i.e. disjoint windows), each window is run from a
//! fresh state, and it scores only the tokens no earlier window scored, so every token but the
//! first is predicted exactly once, with at least `ctx − stride` tokens of context after the
//! first window. The perplexity is `exp(mean NLL)`; its ± is the standard error of the mean NLL
//! carried through the exponential.
//!
//! `--kl-divergence-base FILE` writes every scored position's log-probabilities (f16) and NLL to
//! FILE (which must not exist); adding `--kl-divergence` instead reads FILE and reports, for this
//! run against it: KL(base ‖ this) mean ± error, median, p99 and max, how often the most likely
//! token is the same, and the ratio of the perplexities.

// Perplexity reads only the model and tokenizer of what the shared loader returns.
#[allow(dead_code)]
#[path = "../shared/loading.rs"]
mod loading;

mod kl_base;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::WeightFormat;
use hybrid_decode::runtime::LanguageModel;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use hybrid_decode::runtime::perplexity::{self as windows, log_softmax, Window};
use kl_base::{KlBaseReader, KlBaseWriter, KlStats};
use loading::ModelRequest;

/// Perplexity of a model on a text, and KL divergence against a saved base run.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The text to score (UTF-8).
    #[arg(long)]
    file: PathBuf,
    /// Local model directory, GGUF file (or a directory holding one), or hub repo [default: the
    /// embedded tiny fixture].
    #[arg(long)]
    model: Option<String>,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Tokens between window starts (1..=ctx) [default: ctx].
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N windows.
    #[arg(long)]
    chunks: Option<usize>,
    /// GDN backend (`--gdn-backend help` in generate lists them).
    #[arg(long, default_value = "cpu")]
    gdn_backend: String,
    /// Weight format: f32, bf16, f16, or quantized on load (q8_0, q4_k, q6_k, ...); a GGUF keeps
    /// its own formats.
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
    /// Host threads of the GDN backend and the model's kernels [default: every core].
    #[arg(long)]
    threads: Option<usize>,
    /// Base run file: written by this run, or read with --kl-divergence.
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare this run with the --kl-divergence-base file instead of writing it.
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
}

/// What `--kl-divergence-base` does in this run.
enum KlMode {
    None,
    Write(KlBaseWriter),
    Compare(KlBaseReader, KlStats),
}

fn main() -> Result<()> {
    // A misspelt or unsupported HYBRID_SIMD is an error before anything runs.
    hybrid_decode::simd::requested()?;
    let args = Args::parse();
    ensure!(args.ctx >= 2, "--ctx {} must be at least 2", args.ctx);
    let stride = args.stride.unwrap_or(args.ctx);
    ensure!(
        (1..=args.ctx).contains(&stride),
        "--stride {stride} must be between 1 and --ctx ({})",
        args.ctx
    );
    if let Some(threads) = args.threads {
        hybrid_decode::cli::set_threads(threads)?;
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("--file {}", args.file.display()))?;
    ensure!(
        !text.trim().is_empty(),
        "--file {} holds no text to score",
        args.file.display()
    );
    // Refuse to clobber a base file before the (long) run, not after it.
    if let (Some(path), false) = (&args.kl_divergence_base, args.kl_divergence) {
        ensure!(
            !path.exists(),
            "--kl-divergence-base {}: the file exists and is left untouched; add \
             --kl-divergence to compare this run with it, or choose another file",
            path.display()
        );
    }

    let backend_options = BackendOptions::default();
    let mut loaded = loading::load(&ModelRequest {
        model: args.model.as_deref(),
        tokenizer: args.tokenizer.as_deref(),
        config: None,
        seed: None,
        dtype: args.dtype,
        kv_cache: args.kv_cache.as_deref(),
        no_mmap: args.no_mmap,
        device: None,
        gdn_backend: &args.gdn_backend,
        gdn_fallback: None,
        backend_options,
    })?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .context("this model has no tokenizer: give one with --tokenizer FILE")?;
    let tokens = tokenizer.encode(&text, false)?;
    let vocab = loaded.engine.vocab_size();
    tokenizer.check_fits_model(vocab)?;
    ensure!(
        tokens.len() >= 2,
        "--file {} is {} token(s) long: at least 2 are needed (one to predict from, one to \
         predict)",
        args.file.display(),
        tokens.len()
    );
    let max_ctx = loaded.engine.max_position_embeddings();
    ensure!(
        args.ctx <= max_ctx,
        "--ctx {} is longer than the model's context ({max_ctx} tokens)",
        args.ctx
    );
    let mut windows = Window::plan(tokens.len(), args.ctx, stride);
    if let Some(chunks) = args.chunks {
        ensure!(chunks >= 1, "--chunks must be at least 1");
        windows.truncate(chunks);
    }
    let scored: usize = windows.iter().map(|w| w.targets.len()).sum();
    let plan_hash = windows::plan_hash(&tokens, &windows);

    let mut kl = match (&args.kl_divergence_base, args.kl_divergence) {
        (None, _) => KlMode::None,
        (Some(path), false) => KlMode::Write(KlBaseWriter::create(path, vocab, scored, plan_hash)?),
        (Some(path), true) => KlMode::Compare(
            KlBaseReader::open(path, vocab, scored, plan_hash)?,
            KlStats::default(),
        ),
    };

    eprintln!("model: {}", loaded.description);
    eprintln!(
        "weights: {} · {} · KV cache: {}",
        loaded.engine.model().weight_format(),
        loaded.engine.model().kernel_description(),
        loaded.engine.model().kv_cache_dtype()
    );
    eprintln!(
        "text: {} ({} tokens); {} window(s) of ≤ {} tokens, stride {stride}, {scored} scored",
        args.file.display(),
        tokens.len(),
        windows.len(),
        args.ctx
    );
    let progress = ProgressBar::new(scored as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {per_sec}, eta {eta}")
            .expect("a valid progress template"),
    );
    let started = std::time::Instant::now();
    let mut nll = Vec::with_capacity(scored);
    let mut log_probs = vec![0f32; vocab];
    for window in &windows {
        loaded.engine.model_mut().reset()?;
        let logits = loaded
            .engine
            .model_mut()
            .forward_all(&tokens[window.start..window.end])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for &target in &window.targets {
            // Logits at position p predict token p + 1.
            let row = target - 1 - window.start;
            log_softmax(&logits[row * vocab..(row + 1) * vocab], &mut log_probs);
            let token_nll = -f64::from(log_probs[tokens[target] as usize]);
            nll.push(token_nll);
            match &mut kl {
                KlMode::None => {}
                KlMode::Write(writer) => writer.push(&log_probs, token_nll)?,
                KlMode::Compare(reader, stats) => {
                    let base = reader.next_position()?;
                    stats.add(&base, &log_probs, token_nll);
                }
            }
        }
        progress.inc(window.targets.len() as u64);
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let (mean, stderr) = windows::mean_and_stderr(&nll);
    let ppl = mean.exp();
    let ppl_err = ppl * stderr;
    let mut report = json!({
        "file": args.file.display().to_string(),
        "model": loaded.description,
        "weights": loaded.engine.model().weight_format(),
        "gdn_backend": args.gdn_backend,
        "tokens": tokens.len(),
        "ctx": args.ctx,
        "stride": stride,
        "windows": windows.len(),
        "scored": scored,
        "mean_nll": mean,
        "perplexity": ppl,
        "perplexity_error": ppl_err,
        "seconds": seconds,
    });
    let mut lines = vec![format!(
        "perplexity: {ppl:.4} ± {ppl_err:.4} (mean NLL {mean:.6}, {scored} tokens scored, \
         {:.1} tokens/s)",
        scored as f64 / seconds
    )];
    match kl {
        KlMode::None => {}
        KlMode::Write(writer) => {
            let path = writer.finish()?;
            lines.push(format!("saved the base run to {}", path.display()));
            report["kl_divergence_base_written"] = json!(path.display().to_string());
        }
        KlMode::Compare(_, stats) => {
            let summary = stats.summary();
            lines.push(summary.text());
            report["kl_divergence"] = summary.json();
        }
    }
    if args.json {
        println!("{report}");
    } else {
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}
