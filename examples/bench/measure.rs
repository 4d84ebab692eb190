//! Runs one backend: loads the model with its GDN layers there, warms up, then times the same
//! prompt and greedy decode `repeats` times.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use hybrid_decode::cli::gdn_options_for;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{
    parse_device, HybridModel, KvDtype, LoadOptions, ModelConfig, WeightFormat,
};
use hybrid_decode::runtime::{gguf_file, resolve_model, HubOptions, Sampler, SamplingParams};

use crate::report::{BackendResult, Roofline, Stat};
use crate::roofline::{device_bandwidth, recurrence_flops, state_bytes};

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local directory or a hub repo id (`--model`).
    Model(String),
    /// A config's shapes with seeded random weights (`--config FILE --random-weights`).
    RandomWeights { config: PathBuf, seed: u64 },
}

/// What to run, the same for every backend.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    pub dtype: WeightFormat,
    /// `--kv-cache` (`None`: auto).
    pub kv_cache: Option<KvDtype>,
    /// `--no-mmap` clears it: a GGUF's quantized tensors read into memory, not mapped.
    pub mmap: bool,
    /// `--device cpu|cuda[:N]` (the CPU when absent).
    pub device: Option<String>,
    /// Options every GDN backend is created with (threads, xclbin, device index).
    pub gdn_options: BackendOptions,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repeats: usize,
    pub warmup: usize,
    /// Sequences decoded together (`--batch`): each gets its own prompt and prefill, then every
    /// decode step is one batched step of all of them.
    pub batch: usize,
}

fn load(settings: &Settings, backend: &str) -> Result<HybridModel> {
    let device = parse_device(settings.device.as_deref().unwrap_or("cpu")).context("--device")?;
    let gdn_options = gdn_options_for(backend, settings.device.as_deref(), &settings.gdn_options);
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &gdn_options)
        .with_context(|| format!("--gdn-backend {backend}"))?;
    let load_options = LoadOptions {
        dtype: settings.dtype.dtype,
        quantize: settings.dtype.quantize,
        device,
        kv_cache: settings.kv_cache,
        mmap: settings.mmap,
        ..LoadOptions::default()
    };
    Ok(match &settings.source {
        Source::Model(spec) => {
            if let Some(file) = gguf_file(Path::new(spec))? {
                return HybridModel::load_gguf(&file, &load_options, gdn)
                    .with_context(|| format!("loading {}", file.display()));
            }
            let files = resolve_model(spec, &HubOptions::from_env()?)?;
            HybridModel::load(&files.dir, &load_options, gdn)
                .with_context(|| format!("loading the model in {}", files.dir.display()))?
        }
        Source::RandomWeights { config, seed } => {
            let config = ModelConfig::from_file(config)?;
            HybridModel::random(config, &load_options, gdn, *seed)?
        }
    })
}

/// Sequence `index`'s bench prompt: fixed pseudo-random ids (a multiplicative hash of the
/// position, offset per sequence so that the sequences of a batch diverge), so every backend and
/// every run sees the same tokens without a tokenizer.
fn prompt(index: u64, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345 + index * 7_919) % vocab as u64) as u32)
        .collect()
}

/// The process's peak resident set (VmHWM), where /proc tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One timed run's samples.
struct Sample {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    gdn_us_per_layer_token: f64,
    gdn_share: f64,
    bytes_moved_per_token: f64,
    tokens: Vec<u32>,
}

/// One timed run of `batch` sequences (1 without `--batch`): every prompt prefilled one after
/// the other, then `gen_tokens` decode steps, each one step of the whole batch. Tokens and
/// decode tok/s are those of the whole batch (sequence 0's tokens first); one sequence's rate is
/// the aggregate over `batch`.
fn run(
    model: &mut HybridModel,
    prompt_len: usize,
    gen_tokens: usize,
    batch: usize,
) -> Result<Sample> {
    let vocab = model.config().vocab_size;
    let mut sequences = (0..batch)
        .map(|_| model.new_sequence())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // The runtime's greedy choice: highest logit, lowest id on ties.
    let mut greedy = Sampler::new(SamplingParams::greedy())?;
    let started = Instant::now();
    let mut tokens: Vec<Vec<u32>> = Vec::with_capacity(batch);
    for (i, sequence) in sequences.iter_mut().enumerate() {
        let prompt = prompt(i as u64, prompt_len, vocab);
        let logits = model.prefill(sequence, &prompt)?.to_vec1::<f32>()?;
        tokens.push(vec![greedy.sample(&logits, &[])?]);
    }
    let prefill = started.elapsed().as_secs_f64();
    let counters = model.gdn_backend().counters();
    let gdn_before = model.gdn_counters().run_time();
    let started = Instant::now();
    for _ in 0..gen_tokens {
        let last: Vec<u32> = tokens.iter().map(|t| t[t.len() - 1]).collect();
        let mut batch_refs: Vec<_> = sequences.iter_mut().collect();
        let logits = model.step(&mut batch_refs, &last)?.to_vec2::<f32>()?;
        for (row, sequence_tokens) in logits.iter().zip(tokens.iter_mut()) {
            sequence_tokens.push(greedy.sample(row, &[])?);
        }
    }
    let decode = started.elapsed().as_secs_f64();
    let gdn = (model.gdn_counters().run_time() - gdn_before).as_secs_f64();
    let after = model.gdn_backend().counters();
    for sequence in sequences {
        model.free_sequence(sequence)?;
    }
    let moved = (after.bytes_to_device - counters.bytes_to_device)
        + (after.bytes_from_device - counters.bytes_from_device);
    let layers = model.gdn_layers().max(1);
    let decoded = (gen_tokens * batch) as f64;
    Ok(Sample {
        prefill_tok_s: (prompt_len * batch) as f64 / prefill,
        decode_tok_s: decoded / decode,
        gdn_us_per_layer_token: gdn * 1e6 / (decoded * layers as f64),
        gdn_share: gdn / decode,
        bytes_moved_per_token: moved as f64 / decoded,
        tokens: tokens.concat(),
    })
}

/// Measures `backend` in this process.
pub fn measure(settings: &Settings, backend: &str) -> Result<BackendResult> {
    let started = Instant::now();
    let mut model = load(settings, backend)?;
    let load_s = started.elapsed().as_secs_f64();
    let info = model.gdn_backend().info();
    let weights = format!(
        "{} · {} · KV cache {}",
        model.weight_format(),
        model.kernel_description(),
        model.kv_cache_dtype()
    );
    let context = model.config().max_position_embeddings;
    if settings.prompt_tokens.saturating_add(settings.gen_tokens) > context {
        anyhow::bail!(
            "--prompt-tokens {} + --gen-tokens {} exceeds the model's context of {context} tokens \
             (max_position_embeddings); lower one of them",
            settings.prompt_tokens,
            settings.gen_tokens
        );
    }
    let (prompt_len, gen_tokens, batch) =
        (settings.prompt_tokens, settings.gen_tokens, settings.batch);
    for _ in 0..settings.warmup {
        run(&mut model, prompt_len, gen_tokens, batch)?;
    }
    let samples = (0..settings.repeats)
        .map(|_| run(&mut model, prompt_len, gen_tokens, batch))
        .collect::<Result<Vec<_>>>()?;
    // Read before the bandwidth test allocates its buffer: the peak is the model's.
    let peak_rss_bytes = peak_rss_bytes();
    let spec = model.config().gdn_spec();
    let gdn_layers = model.gdn_layers();
    drop(model);

    let stat = |f: fn(&Sample) -> f64| Stat::of(&samples.iter().map(f).collect::<Vec<_>>());
    let gdn_us = stat(|s| s.gdn_us_per_layer_token);
    let per_layer_bytes = state_bytes(&spec);
    let device = device_bandwidth(&info, &spec, gdn_layers)?;
    let tokens = samples[0].tokens.clone();
    Ok(BackendResult {
        backend: backend.to_string(),
        device: info.device,
        host_threads: info.host_threads,
        weights,
        state_on_host: info.state_on_host,
        load_s,
        prefill_tok_s: stat(|s| s.prefill_tok_s),
        decode_tok_s: stat(|s| s.decode_tok_s),
        gdn_share: stat(|s| s.gdn_share),
        bytes_moved_per_token: stat(|s| s.bytes_moved_per_token).median,
        peak_rss_bytes,
        deterministic: samples.iter().all(|s| s.tokens == tokens),
        tokens,
        roofline: Roofline {
            gdn_layers,
            state_bytes_per_token: per_layer_bytes * gdn_layers as f64,
            flops_per_token: recurrence_flops(&spec) * gdn_layers as f64,
            // Bytes of one layer-token over the median time of one layer-token (the modelled
            // device's time for a simulated device).
            achieved_gb_s: match device.as_ref().and_then(|d| d.modelled_us_per_layer_token) {
                Some(us) => per_layer_bytes / (us * 1e3),
                None if gdn_us.median > 0.0 => per_layer_bytes / (gdn_us.median * 1e3),
                None => 0.0,
            },
            device,
        },
        gdn_us_per_layer_token: gdn_us,
    })
}
