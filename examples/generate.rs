//! generate — text generation with a hybrid model, the GDN layers on any backend.
//!
//! ```text
//! cargo run --release --example generate -- [--model DIR|owner/name] [--prompt TEXT | --prompt-ids 1,2,3]
//!     [--chat] [--max-new-tokens 32] [--temperature 0] [--top-k K] [--top-p P]
//!     [--repeat-penalty 1.0] [--repeat-last-n 64] [--seed S] [--gdn-backend cpu] [--threads N]
//!     [--dtype f32|bf16|f16] [--config FILE --random-weights] [--json]
//! ```
//! Without `--model` it runs the embedded default model (see `DEFAULT_MODEL`). Text streams to
//! stdout as it is generated; a timing summary goes to stderr; `--json` adds one JSON object as
//! the last line of stdout. `--gdn-backend help` lists the backends.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions, ModelConfig};
use hybrid_decode::runtime::{
    resolve_model, ChatMessage, ChatTemplate, GenerateOptions, GenerationConfig, Generator,
    HubOptions, LanguageModel, Sampler, SamplingParams, Tokenizer, TokenizerConfig, DEFAULT_SEED,
};
use hybrid_decode::Engine;

/// The model used when `--model` is not given: committed under models/, no network needed.
const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/fixtures/qwen3-next-tiny"
);

const DEFAULT_PROMPT: &str = "And God said, Let there be";

#[derive(Default)]
struct Args {
    model: Option<String>,
    config: Option<PathBuf>,
    random_weights: bool,
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    chat: bool,
    max_new_tokens: usize,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repeat_last_n: Option<usize>,
    seed: Option<u64>,
    gdn_backend: String,
    threads: Option<usize>,
    dtype: Option<DType>,
    json: bool,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} got `{value}`, which is not a valid number"))
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        max_new_tokens: 32,
        gdn_backend: "cpu".into(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", include_str!("generate_usage.txt"));
            std::process::exit(0);
        }
        const VALUE_FLAGS: &[&str] = &[
            "--model",
            "--config",
            "--prompt",
            "--prompt-ids",
            "--max-new-tokens",
            "--temperature",
            "--top-k",
            "--top-p",
            "--repeat-penalty",
            "--repeat-last-n",
            "--seed",
            "--gdn-backend",
            "--threads",
            "--dtype",
        ];
        let switch = matches!(flag.as_str(), "--chat" | "--json" | "--random-weights");
        if !switch && !VALUE_FLAGS.contains(&flag.as_str()) {
            bail!("unknown flag `{flag}` (see --help)");
        }
        let value = if switch {
            String::new()
        } else {
            it.next()
                .with_context(|| format!("{flag} needs a value (see --help)"))?
        };
        match flag.as_str() {
            "--model" => a.model = Some(value),
            "--config" => a.config = Some(value.into()),
            "--random-weights" => a.random_weights = true,
            "--prompt" => a.prompt = Some(value),
            "--prompt-ids" => {
                let ids = value
                    .split(',')
                    .map(|s| number::<u32>("--prompt-ids", s.trim()))
                    .collect::<Result<Vec<_>>>()?;
                a.prompt_ids = Some(ids);
            }
            "--chat" => a.chat = true,
            "--max-new-tokens" => a.max_new_tokens = number(&flag, &value)?,
            "--temperature" => a.temperature = Some(number(&flag, &value)?),
            "--top-k" => a.top_k = Some(number(&flag, &value)?),
            "--top-p" => a.top_p = Some(number(&flag, &value)?),
            "--repeat-penalty" => a.repeat_penalty = Some(number(&flag, &value)?),
            "--repeat-last-n" => a.repeat_last_n = Some(number(&flag, &value)?),
            "--seed" => a.seed = Some(number(&flag, &value)?),
            "--gdn-backend" => a.gdn_backend = value,
            "--threads" => a.threads = Some(number(&flag, &value)?),
            "--dtype" => {
                a.dtype = Some(match value.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => bail!("--dtype takes f32, bf16 or f16, got `{other}`"),
                })
            }
            "--json" => a.json = true,
            other => bail!("unknown flag `{other}` (see --help)"),
        }
    }
    if a.prompt.is_some() && a.prompt_ids.is_some() {
        bail!("give either --prompt or --prompt-ids, not both");
    }
    if a.random_weights != a.config.is_some() {
        bail!("--random-weights and --config FILE go together (a config's shapes, random weights)");
    }
    if a.random_weights && a.model.is_some() {
        bail!("--random-weights builds the model from --config; drop --model");
    }
    Ok(a)
}

fn list_backends() {
    let registry = hybrid_decode::gdn_registry();
    println!("GDN backends (--gdn-backend NAME):");
    for entry in registry.entries() {
        let status = match &entry.availability {
            Ok(_) => "available".to_string(),
            Err(reason) => format!("unavailable: {reason}"),
        };
        println!("  {:<13} {} [{status}]", entry.name, entry.summary);
    }
}

/// Everything that lives next to the weights.
struct Loaded {
    engine: Engine,
    tokenizer: Option<Tokenizer>,
    tokenizer_config: Option<TokenizerConfig>,
    generation: GenerationConfig,
    description: String,
}

fn load(a: &Args) -> Result<Loaded> {
    let mut options = BackendOptions::default();
    if let Some(threads) = a.threads {
        options = options.with_threads(threads);
    }
    let gdn = hybrid_decode::gdn_registry()
        .create(&a.gdn_backend, &options)
        .with_context(|| format!("--gdn-backend {} (try --gdn-backend help)", a.gdn_backend))?;
    let load_options = LoadOptions {
        dtype: a.dtype.unwrap_or(DType::F32),
        ..LoadOptions::default()
    };
    if let Some(config_path) = &a.config {
        let config = ModelConfig::from_file(config_path)?;
        let model =
            HybridModel::random(config, &load_options, gdn, a.seed.unwrap_or(DEFAULT_SEED))?;
        return Ok(Loaded {
            engine: Engine::new(model),
            tokenizer: None,
            tokenizer_config: None,
            generation: GenerationConfig::default(),
            description: format!("random weights in the shapes of {}", config_path.display()),
        });
    }
    let (spec, description) = match &a.model {
        Some(spec) => (spec.clone(), spec.clone()),
        None => (
            DEFAULT_MODEL.to_string(),
            "the embedded default model models/fixtures/qwen3-next-tiny: a tiny Qwen3-Next \
             (4 layers, hidden 64, MoE 8×top-2) with RANDOM weights and a 1k-token BPE tokenizer \
             trained on the KJV Bible, made for tests, so its text is gibberish; pass \
             --model DIR|owner/name for a real checkpoint"
                .to_string(),
        ),
    };
    let files = resolve_model(&spec, &HubOptions::from_env()?)?;
    let model = HybridModel::load(&files.dir, &load_options, gdn)
        .with_context(|| format!("loading the model in {}", files.dir.display()))?;
    let tokenizer = files
        .tokenizer
        .as_deref()
        .map(Tokenizer::from_file)
        .transpose()?;
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

fn prompt_ids(a: &Args, loaded: &Loaded) -> Result<Vec<u32>> {
    if let Some(ids) = &a.prompt_ids {
        return Ok(ids.clone());
    }
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!("this model has no tokenizer.json: give the prompt as --prompt-ids 1,2,3");
    };
    let text = a
        .prompt
        .clone()
        .unwrap_or_else(|| DEFAULT_PROMPT.to_string());
    let text = if a.chat {
        let config = loaded
            .tokenizer_config
            .as_ref()
            .context("--chat needs a tokenizer_config.json with a chat_template")?;
        ChatTemplate::from_config(config)?.render(&[ChatMessage::user(text)], true)?
    } else {
        text
    };
    Ok(tokenizer.encode(&text, false)?)
}

fn sampling(a: &Args, generation: &GenerationConfig) -> SamplingParams {
    // Flags win; otherwise the checkpoint's generation_config.json; otherwise greedy.
    let mut params = generation.sampling_params(a.seed.unwrap_or(DEFAULT_SEED));
    if let Some(t) = a.temperature {
        params.temperature = t;
    }
    if a.top_k.is_some() {
        params.top_k = a.top_k;
    }
    if a.top_p.is_some() {
        params.top_p = a.top_p;
    }
    if let Some(p) = a.repeat_penalty {
        params.repeat_penalty = p;
    }
    if let Some(n) = a.repeat_last_n {
        params.repeat_last_n = n;
    }
    params
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if a.gdn_backend == "help" {
        list_backends();
        return Ok(());
    }
    let mut loaded = load(&a)?;
    eprintln!("model: {}", loaded.description);
    let backend = loaded.engine.model().gdn_backend().info();
    eprintln!("GDN backend: {} ({})", backend.name, backend.device);
    let prompt = prompt_ids(&a, &loaded)?;
    let params = sampling(&a, &loaded.generation);
    let mut eos = loaded.generation.eos_token_ids.clone();
    if let (Some(config), Some(tokenizer)) = (&loaded.tokenizer_config, &loaded.tokenizer) {
        eos.extend(
            config
                .eos_token_id(tokenizer)
                .filter(|id| !eos.contains(id)),
        );
    }
    let options = GenerateOptions::new(a.max_new_tokens, eos);
    let sampler = Sampler::new(params)?;
    let vocab = loaded.engine.vocab_size();
    let tokenizer = loaded.tokenizer.as_ref();
    let mut generator = Generator::new(&mut loaded.engine, sampler, tokenizer)?;
    let mut stdout = std::io::stdout();
    let stream_text = tokenizer.is_some();
    if !stream_text {
        eprintln!("no tokenizer: printing token ids (vocab {vocab})");
    }
    let output = generator.generate(&prompt, &options, &mut |token| {
        // A closed stdout (e.g. `| head`) ends generation instead of failing it.
        let written = if stream_text {
            write!(stdout, "{}", token.text)
        } else {
            write!(stdout, "{} ", token.id)
        };
        match written.and_then(|_| stdout.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    })?;
    println!();
    eprintln!("{}", output.summary());
    if a.json {
        let json = serde_json::json!({
            "model": a.model.clone().unwrap_or_else(|| "default".into()),
            "prompt_ids": output.prompt_ids,
            "generated_ids": output.generated_ids,
            "text": output.text,
            "gdn_backend": backend.name,
            "gdn_device": backend.device,
            "prefill_tok_s": output.prefill_tok_s,
            "decode_tok_s": output.decode_tok_s,
            "gdn_share": output.gdn_share,
            "stop_reason": format!("{:?}", output.stop_reason),
        });
        println!("{json}");
    }
    Ok(())
}
