//! The command line of the generate example: flags, their checks, and what they ask of the GDN
//! backend and the sampler.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::WeightFormat;
use hybrid_decode::runtime::{GenerationConfig, SamplingParams, DEFAULT_SEED};

use crate::state::check_state_flags;

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) model: Option<String>,
    pub(crate) config: Option<PathBuf>,
    pub(crate) random_weights: bool,
    pub(crate) prompt: Option<String>,
    pub(crate) prompt_ids: Option<Vec<u32>>,
    pub(crate) chat: bool,
    pub(crate) max_new_tokens: usize,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_k: Option<usize>,
    pub(crate) top_p: Option<f64>,
    pub(crate) repeat_penalty: Option<f64>,
    pub(crate) repeat_last_n: Option<usize>,
    pub(crate) seed: Option<u64>,
    pub(crate) gdn_backend: String,
    pub(crate) gdn_fallback: Option<String>,
    pub(crate) threads: Option<usize>,
    pub(crate) xclbin: Option<PathBuf>,
    pub(crate) device_index: Option<usize>,
    pub(crate) dtype: Option<WeightFormat>,
    pub(crate) kv_cache: Option<String>,
    pub(crate) no_mmap: bool,
    pub(crate) device: Option<String>,
    pub(crate) tokenizer: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) save_state: Option<PathBuf>,
    pub(crate) force: bool,
    pub(crate) resume: Option<PathBuf>,
    pub(crate) migrate_after: Option<usize>,
    pub(crate) migrate_to: Option<String>,
}

pub(crate) fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} got `{value}`, which is not a valid number"))
}

pub(crate) fn parse_args() -> Result<Args> {
    let mut a = Args {
        max_new_tokens: 32,
        ..Args::default()
    };
    let mut gdn_backend = None;
    let mut it = hybrid_decode::cli::utf8_args()?.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", include_str!("usage.txt"));
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
            "--gdn-fallback",
            "--threads",
            "--xclbin",
            "--device-index",
            "--dtype",
            "--kv-cache",
            "--device",
            "--tokenizer",
            "--save-state",
            "--resume",
            "--migrate-after",
            "--to",
        ];
        let switch = matches!(
            flag.as_str(),
            "--chat" | "--json" | "--random-weights" | "--force" | "--no-mmap"
        );
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
            "--gdn-backend" => gdn_backend = Some(value),
            "--gdn-fallback" => a.gdn_fallback = Some(value),
            "--threads" => a.threads = Some(number(&flag, &value)?),
            "--xclbin" => a.xclbin = Some(value.into()),
            "--device-index" => a.device_index = Some(number(&flag, &value)?),
            "--dtype" => {
                a.dtype = Some(value.parse().map_err(|e| anyhow::anyhow!("--dtype: {e}"))?)
            }
            "--kv-cache" => a.kv_cache = Some(value),
            "--no-mmap" => a.no_mmap = true,
            "--device" => a.device = Some(value),
            "--tokenizer" => a.tokenizer = Some(value.into()),
            "--json" => a.json = true,
            "--save-state" => a.save_state = Some(value.into()),
            "--force" => a.force = true,
            "--resume" => a.resume = Some(value.into()),
            "--migrate-after" => a.migrate_after = Some(number(&flag, &value)?),
            "--to" => a.migrate_to = Some(value),
            other => bail!("unknown flag `{other}` (see --help)"),
        }
    }
    a.gdn_backend = gdn_backend
        .unwrap_or_else(|| hybrid_decode::cli::default_gdn_backend(a.device.as_deref()).into());
    if a.prompt.is_some() && a.prompt_ids.is_some() {
        bail!("give either --prompt or --prompt-ids, not both");
    }
    if a.chat && a.prompt_ids.is_some() {
        bail!(
            "--chat wraps a text prompt in the chat template; --prompt-ids are fed as they are \
             (drop one of them)"
        );
    }
    // FPGA options only mean something to the xrt backends; silently ignoring them hides a
    // typo in --gdn-backend.
    let uses_xrt = [Some(a.gdn_backend.as_str()), a.migrate_to.as_deref()]
        .into_iter()
        .flatten()
        .any(|name| name.starts_with("xrt"));
    for (given, flag) in [
        (a.xclbin.is_some(), "--xclbin"),
        (a.device_index.is_some(), "--device-index"),
    ] {
        if given && !uses_xrt {
            bail!(
                "{flag} configures the xrt backends, but --gdn-backend is {} (add --gdn-backend \
                 xrt, or drop {flag})",
                a.gdn_backend
            );
        }
    }
    if a.random_weights != a.config.is_some() {
        bail!("--random-weights and --config FILE go together (a config's shapes, random weights)");
    }
    if a.random_weights && a.model.is_some() {
        bail!("--random-weights builds the model from --config; drop --model");
    }
    check_state_flags(&a)?;
    Ok(a)
}

/// The GDN backend options the flags ask for (the same for `--gdn-backend` and `--to`).
pub(crate) fn backend_options(a: &Args) -> BackendOptions {
    let mut options = BackendOptions::default();
    if let Some(xclbin) = &a.xclbin {
        options = options.with_xclbin(xclbin);
    }
    if let Some(index) = a.device_index {
        options = options.with_device_index(index);
    }
    options
}

pub(crate) fn sampling(a: &Args, generation: &GenerationConfig) -> SamplingParams {
    // Flags win; otherwise the checkpoint's generation_config.json; otherwise greedy.
    let mut params = generation.sampling_params(a.seed.unwrap_or(DEFAULT_SEED));
    apply_sampling_flags(a, &mut params);
    params
}

/// Overrides `params` with every sampling flag given (not `--seed`: its meaning depends on
/// whether a run starts or resumes).
pub(crate) fn apply_sampling_flags(a: &Args, params: &mut SamplingParams) {
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
}
