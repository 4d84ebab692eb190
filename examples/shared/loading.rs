//! Loading a model and what lives next to its weights (tokenizer, chat template, generation
//! defaults) from the flags every example shares: `--model DIR|FILE.gguf|owner/name`,
//! `--tokenizer FILE`, `--config FILE --random-weights [--seed S]`, `--dtype`, `--device`,
//! `--kv-cache`, `--gdn-backend`, `--gdn-fallback`.
//! Included by the examples with `#[path = "../shared/loading.rs"] mod loading;`.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::DType;
use hybrid_decode::cli::gdn_options_for;
use hybrid_decode::gdn::{BackendOptions, FailoverBackend, GdnBackend};
use hybrid_decode::model::{
    parse_device, HybridModel, KvDtype, LoadOptions, ModelConfig, WeightFormat,
};
use hybrid_decode::runtime::{
    gguf_file, resolve_model, GenerationConfig, GgufVocab, HubOptions, Tokenizer, TokenizerConfig,
    DEFAULT_SEED,
};
use hybrid_decode::Engine;

/// The model used when `--model` is not given: committed under models/, no network needed.
/// A small Qwen3.5-style hybrid trained on the King James Bible
/// (`models/tools/train_demo_model.py`), so that the default run prints readable text.
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/kjv-hybrid-3m");

/// What to load, as the flags gave it.
pub struct ModelRequest<'a> {
    /// `--model`: a directory, a GGUF file (or a directory holding one), or a hub repo.
    pub model: Option<&'a str>,
    /// `--tokenizer`: replaces the model's own tokenizer.
    pub tokenizer: Option<&'a Path>,
    /// `--config` (with `--random-weights`): random weights in the shapes of this config.
    pub config: Option<&'a Path>,
    /// `--seed` for random weights.
    pub seed: Option<u64>,
    /// `--dtype`: the weight format (f32 when absent; a GGUF keeps its own formats).
    pub dtype: Option<WeightFormat>,
    /// `--kv-cache auto|f32|bf16|f16`: what the KV caches store (`auto` when absent).
    pub kv_cache: Option<&'a str>,
    /// `--no-mmap`: read a GGUF's quantized tensors into memory instead of mapping the file.
    pub no_mmap: bool,
    /// `--device cpu|cuda[:N]`: where the model's tensors live (the CPU when absent).
    pub device: Option<&'a str>,
    /// `--gdn-backend` (`hybrid_decode::cli::default_gdn_backend` when the flag is absent).
    pub gdn_backend: &'a str,
    /// `--gdn-fallback`: where every sequence moves if the `--gdn-backend` device fails.
    pub gdn_fallback: Option<&'a str>,
    /// Threads, xclbin, device index for the GDN backend.
    pub backend_options: BackendOptions,
}

/// Everything that lives next to the weights.
pub struct Loaded {
    pub engine: Engine,
    pub tokenizer: Option<Tokenizer>,
    pub tokenizer_config: Option<TokenizerConfig>,
    pub generation: GenerationConfig,
    /// One line saying what was loaded, for the run's summary.
    pub description: String,
}

/// `primary` behind a [`FailoverBackend`] when `fallback` (`--gdn-fallback`) names a backend
/// other than `primary`'s own. The name is checked here, so a typo fails at start rather than at
/// the first device fault. Used for the `--gdn-backend` backend and for any backend the run
/// moves to later (`generate --migrate-after N --to B`), so the fallback keeps guarding it.
pub fn with_fallback(
    primary: Box<dyn GdnBackend>,
    fallback: Option<&str>,
    device: Option<&str>,
    options: &BackendOptions,
) -> Result<Box<dyn GdnBackend>> {
    let Some(name) = fallback else {
        return Ok(primary);
    };
    let available = hybrid_decode::gdn_registry().available();
    if !available.contains(&name) {
        anyhow::bail!(
            "--gdn-fallback {name}: not a backend this build can create (available: {}; \
             --gdn-backend help says why the others are not)",
            available.join(", ")
        );
    }
    if primary.info().name == name {
        return Ok(primary);
    }
    let options = gdn_options_for(name, device, options);
    let name = name.to_owned();
    Ok(Box::new(FailoverBackend::new(
        primary,
        Box::new(move || hybrid_decode::gdn_registry().create(&name, &options)),
    )))
}

/// The `--kv-cache` value (absent or `auto`: `None`, the model picks by weight format).
pub fn kv_cache_flag(value: Option<&str>) -> Result<Option<KvDtype>> {
    value.map_or(Ok(None), |value| {
        KvDtype::parse_flag(value).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))
    })
}

/// Loads the model (and tokenizer, chat template, generation defaults) `request` names.
pub fn load(request: &ModelRequest<'_>) -> Result<Loaded> {
    let device = parse_device(request.device.unwrap_or("cpu")).context("--device")?;
    let gdn = hybrid_decode::gdn_registry()
        .create(
            request.gdn_backend,
            &gdn_options_for(
                request.gdn_backend,
                request.device,
                &request.backend_options,
            ),
        )
        .with_context(|| {
            format!(
                "--gdn-backend {} (try --gdn-backend help)",
                request.gdn_backend
            )
        })?;
    let gdn = with_fallback(
        gdn,
        request.gdn_fallback,
        request.device,
        &request.backend_options,
    )?;
    let format = request.dtype.unwrap_or(WeightFormat {
        dtype: DType::F32,
        quantize: None,
    });
    let load_options = LoadOptions {
        dtype: format.dtype,
        quantize: format.quantize,
        device,
        kv_cache: kv_cache_flag(request.kv_cache)?,
        mmap: !request.no_mmap,
        ..LoadOptions::default()
    };
    if let Some(config_path) = request.config {
        let config = ModelConfig::from_file(config_path)?;
        let seed = request.seed.unwrap_or(DEFAULT_SEED);
        let model = HybridModel::random(config, &load_options, gdn, seed)?;
        return Ok(Loaded {
            engine: Engine::new(model),
            tokenizer: None,
            tokenizer_config: None,
            generation: GenerationConfig::default(),
            description: format!("random weights in the shapes of {}", config_path.display()),
        });
    }
    let (spec, description) = match request.model {
        Some(spec) => (spec.to_string(), spec.to_string()),
        None => (
            DEFAULT_MODEL.to_string(),
            "the embedded demo model models/demo/kjv-hybrid-3m: a 4 M-parameter Qwen3.5-style \
             hybrid (6 Gated DeltaNet + 2 gated attention layers) trained for an hour on the \
             King James Bible, so it writes KJV-like English and knows nothing else; pass \
             --model DIR|FILE.gguf|owner/name for a real checkpoint"
                .to_string(),
        ),
    };
    if let Some(file) = gguf_file(Path::new(&spec))? {
        return load_gguf(request, &file, &load_options, gdn, description);
    }
    let files = resolve_model(&spec, &HubOptions::from_env()?)?;
    let model = HybridModel::load(&files.dir, &load_options, gdn)
        .with_context(|| format!("loading the model in {}", files.dir.display()))?;
    let tokenizer = match request.tokenizer {
        Some(path) => Some(Tokenizer::from_file(path).context("--tokenizer")?),
        None => files
            .tokenizer
            .as_deref()
            .map(Tokenizer::from_file)
            .transpose()?,
    };
    let tokenizer_config = match &files.tokenizer_config {
        Some(_) => Some(TokenizerConfig::load(&files.dir)?),
        None => None,
    };
    let generation = match &files.generation_config {
        Some(path) => GenerationConfig::from_file_or_default(path)?,
        None => GenerationConfig::default(),
    };
    Ok(Loaded {
        engine: Engine::new(model),
        tokenizer,
        tokenizer_config,
        generation,
        description,
    })
}

/// A GGUF file: weights, config, tokenizer, chat template and stop tokens all come from it
/// (`--tokenizer FILE` replaces its tokenizer, e.g. for a pre-tokenizer it does not name).
fn load_gguf(
    request: &ModelRequest<'_>,
    file: &Path,
    load_options: &LoadOptions,
    gdn: Box<dyn GdnBackend>,
    description: String,
) -> Result<Loaded> {
    let model = HybridModel::load_gguf(file, load_options, gdn)
        .with_context(|| format!("loading {}", file.display()))?;
    let (tokenizer, tokenizer_config, generation) = match request.tokenizer {
        Some(path) => (
            Tokenizer::from_file(path).context("--tokenizer")?,
            None,
            GenerationConfig::default(),
        ),
        None => {
            let vocab = GgufVocab::read(file).with_context(|| {
                format!(
                    "the tokenizer in {} (or give --tokenizer FILE)",
                    file.display()
                )
            })?;
            (
                vocab.tokenizer,
                Some(vocab.tokenizer_config),
                vocab.generation_config,
            )
        }
    };
    Ok(Loaded {
        engine: Engine::new(model),
        tokenizer: Some(tokenizer),
        tokenizer_config,
        generation,
        description,
    })
}
