//! bench — end-to-end prefill and decode speed of one model on each GDN backend, checked for
//! identical tokens, with the GDN memory roofline of each.
//!
//! ```text
//! cargo run --release --example bench -- --model models/fixtures/qwen3-next-tiny
//! cargo run --release --example bench -- --config models/configs/qwen3.5-0.8b/config.json \
//!     --random-weights [--gdn-backend all|cpu,reference] [--prompt-tokens 128] \
//!     [--gen-tokens 32] [--repeats 3] [--json] [--svg bench.svg]
//! ```
//! `--help` lists every flag (examples/bench/usage.txt).
//!
//! Every backend runs the same prompt and greedy decode; the tokens are compared with the
//! `reference` backend's (or the first backend's, or `--expect-tokens`), and any difference is
//! reported loudly and makes the exit code 1.
//!
//! Each backend is measured in its own child process (this binary with `--worker NAME`) by
//! default: peak RSS (VmHWM) is a per-process high-water mark that never goes down, so in one
//! process every backend after the first would inherit its predecessors' peak (and freed memory
//! the allocator keeps); a separate process also keeps a device backend that aborts (XRT does,
//! on a bad environment) from taking the whole bench with it. `--in-process` runs them all in
//! this process instead, and the table says the RSS column is cumulative.

mod measure;
mod report;
mod roofline;
mod svg;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{KvDtype, WeightFormat};
use hybrid_decode::runtime::{gguf_file, resolve_model, HubOptions};
use serde_json::json;

use measure::{Settings, Source};
use report::{Agreement, BackendResult, Outcome};

/// Prefix of the one stdout line a worker answers with.
const RESULT_TAG: &str = "BENCH-RESULT ";

struct Options {
    settings: Settings,
    backends: Vec<String>,
    json: bool,
    svg: Option<PathBuf>,
    in_process: bool,
    expect_tokens: Option<Vec<u32>>,
    worker: Option<String>,
    model_label: String,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str, what: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} takes {what}, got `{value}`"))
}

fn parse() -> Result<Options> {
    let mut model = None;
    let mut config = None;
    let mut random_weights = false;
    let mut seed = 7;
    let mut dtype = WeightFormat {
        dtype: DType::F32,
        quantize: None,
    };
    let mut kv_cache = None;
    let mut mmap = true;
    let mut threads = None;
    let mut device = None;
    let mut gdn_options = BackendOptions::default();
    let (mut prompt_tokens, mut gen_tokens, mut repeats, mut warmup) = (128, 32, 3, 1);
    let mut batch = 1;
    let mut backends = vec!["all".to_string()];
    let (mut json, mut svg, mut in_process) = (false, None, false);
    let (mut expect_tokens, mut worker) = (None, None);
    let mut args = hybrid_decode::cli::utf8_args()?.into_iter();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", include_str!("usage.txt"));
            std::process::exit(0);
        }
        let switch = matches!(
            flag.as_str(),
            "--random-weights" | "--json" | "--in-process" | "--no-mmap"
        );
        const VALUE_FLAGS: &[&str] = &[
            "--model",
            "--config",
            "--seed",
            "--dtype",
            "--kv-cache",
            "--device",
            "--gdn-backend",
            "--threads",
            "--xclbin",
            "--device-index",
            "--prompt-tokens",
            "--gen-tokens",
            "--repeats",
            "--warmup",
            "--batch",
            "--svg",
            "--expect-tokens",
            "--worker",
        ];
        if !switch && !VALUE_FLAGS.contains(&flag.as_str()) {
            bail!("unknown flag `{flag}` (see --help)");
        }
        let value = if switch {
            String::new()
        } else {
            args.next()
                .with_context(|| format!("{flag} needs a value (see --help)"))?
        };
        let count = "a whole number";
        match flag.as_str() {
            "--model" => model = Some(value),
            "--config" => config = Some(PathBuf::from(value)),
            "--random-weights" => random_weights = true,
            "--seed" => seed = number(&flag, &value, count)?,
            "--dtype" => dtype = value.parse().map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
            "--kv-cache" => {
                kv_cache =
                    KvDtype::parse_flag(&value).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))?
            }
            "--device" => device = Some(value),
            "--no-mmap" => mmap = false,
            "--gdn-backend" => {
                backends = value.split(',').map(str::trim).map(String::from).collect()
            }
            "--threads" => threads = Some(number(&flag, &value, count)?),
            "--xclbin" => gdn_options = gdn_options.with_xclbin(value),
            "--device-index" => {
                gdn_options = gdn_options.with_device_index(number(&flag, &value, count)?)
            }
            "--prompt-tokens" => prompt_tokens = number(&flag, &value, count)?,
            "--gen-tokens" => gen_tokens = number(&flag, &value, count)?,
            "--repeats" => repeats = number(&flag, &value, count)?,
            "--warmup" => warmup = number(&flag, &value, count)?,
            "--batch" => batch = number(&flag, &value, count)?,
            "--json" => json = true,
            "--svg" => svg = Some(PathBuf::from(value)),
            "--in-process" => in_process = true,
            "--expect-tokens" => {
                expect_tokens = Some(
                    value
                        .split(',')
                        .map(|t| number(&flag, t.trim(), "comma-separated token ids"))
                        .collect::<Result<Vec<u32>>>()?,
                )
            }
            "--worker" => worker = Some(value),
            other => bail!("unknown flag `{other}` (see --help)"),
        }
    }
    if backends == ["help"] {
        print!("{}", hybrid_decode::cli::backend_list());
        std::process::exit(0);
    }
    for (flag, value) in [
        ("--prompt-tokens", prompt_tokens),
        ("--gen-tokens", gen_tokens),
        ("--repeats", repeats),
        ("--batch", batch),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if let Some(threads) = threads {
        hybrid_decode::cli::set_threads(threads)?;
    }
    if let (Some(spec), None) = (&device, &worker) {
        // Here once, so that a bad --device fails before any worker starts.
        hybrid_decode::model::parse_device(spec).context("--device")?;
    }
    if let Some(path) = &svg {
        hybrid_decode::cli::check_output_file("--svg", path)?;
    }
    let (source, model_label) = match (model, config, random_weights) {
        (Some(spec), None, false) => (Source::Model(spec.clone()), spec),
        (None, Some(config), true) => (
            Source::RandomWeights {
                config: config.clone(),
                seed,
            },
            format!("{} (random weights, seed {seed})", config.display()),
        ),
        (Some(_), _, true) => {
            bail!("--random-weights builds the model from --config; drop --model")
        }
        (None, Some(_), false) | (None, None, true) => {
            bail!("--config FILE and --random-weights go together (a config's shapes, random weights)")
        }
        _ => bail!("give --model DIR|owner/name, or --config FILE --random-weights"),
    };
    if let (Source::Model(spec), None) = (&source, &worker) {
        if gguf_file(std::path::Path::new(spec))?.is_none() {
            // Once here, so that a bad --model fails before any worker starts and a hub download
            // happens once (the workers find the files in the cache).
            resolve_model(spec, &HubOptions::from_env()?)
                .with_context(|| format!("--model {spec}"))?;
        }
    }
    let registry = hybrid_decode::gdn_registry();
    if backends == ["all"] {
        // `all`: every backend compiled in that can start on this machine (a GPU backend built
        // in but without a GPU is skipped with a note; named explicitly, it fails the run).
        backends = Vec::new();
        for name in registry.available() {
            match registry.create(name, &BackendOptions::default()) {
                Ok(_) => backends.push(name.to_string()),
                Err(e) if worker.is_none() => eprintln!("bench: skipping `{name}`: {e}"),
                Err(_) => {}
            }
        }
    }
    for (i, name) in backends.iter().enumerate() {
        if name.is_empty() {
            bail!("--gdn-backend: an empty backend name; give names like cpu,reference (or `all`)");
        }
        if backends[..i].contains(name) {
            bail!("--gdn-backend: `{name}` is listed twice; each backend runs once");
        }
        match registry.entries().iter().find(|e| e.name == name) {
            None => bail!(
                "--gdn-backend: unknown backend `{name}`; known: {} (or `all`)",
                registry.names().join(", ")
            ),
            Some(entry) => {
                if let Err(reason) = &entry.availability {
                    bail!("--gdn-backend: `{name}` is not available: {reason}");
                }
            }
        }
    }
    Ok(Options {
        settings: Settings {
            source,
            dtype,
            kv_cache,
            mmap,
            device,
            gdn_options,
            prompt_tokens,
            gen_tokens,
            repeats,
            warmup,
            batch,
        },
        backends,
        json,
        svg,
        in_process,
        expect_tokens,
        worker,
        model_label,
    })
}

/// The CPU's model name from /proc/cpuinfo (every figure must name its CPU).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}

/// Runs `backend` in a child process: this binary, the same flags, plus `--worker NAME`.
fn measure_in_child(backend: &str) -> Result<BackendResult> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let output = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .args(["--worker", backend])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting the worker process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_TAG));
    match (output.status.success(), line) {
        (true, Some(line)) => {
            let value: serde_json::Value =
                serde_json::from_str(line).context("the worker's result is not JSON")?;
            BackendResult::from_json(&value).context("the worker's result")
        }
        _ => bail!(
            "the worker process exited with {} (its messages are above)",
            output.status
        ),
    }
}

/// Where `a` and `b` first differ, or `None` if they are equal.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Compares every measured backend with the baseline: `--expect-tokens`, else `reference`
/// when it ran, else the first backend that ran.
fn compare(outcomes: &mut [(String, Outcome)], expected: Option<&[u32]>) -> Vec<String> {
    let tokens_of = |o: &Outcome| match o {
        Outcome::Measured { result, .. } => Some(result.tokens.clone()),
        Outcome::Failed(_) => None,
    };
    let (baseline_name, baseline) = match expected {
        Some(tokens) => (None, Some(tokens.to_vec())),
        None => {
            let pick = outcomes
                .iter()
                .find(|(n, o)| n == "reference" && tokens_of(o).is_some())
                .or_else(|| outcomes.iter().find(|(_, o)| tokens_of(o).is_some()));
            match pick {
                Some((name, o)) => (Some(name.clone()), tokens_of(o)),
                None => (None, None),
            }
        }
    };
    let Some(baseline) = baseline else {
        return Vec::new();
    };
    let against = baseline_name
        .clone()
        .unwrap_or_else(|| "--expect-tokens".into());
    let mut divergences = Vec::new();
    for (name, outcome) in outcomes.iter_mut() {
        if let Outcome::Measured { result, agreement } = outcome {
            *agreement = if Some(&*name) == baseline_name.as_ref() {
                Agreement::Baseline
            } else {
                match first_difference(&result.tokens, &baseline) {
                    None => Agreement::Same,
                    Some(i) => {
                        divergences.push(format!(
                            "`{name}` differs from {against} at token {i}: {:?} vs {:?}",
                            result.tokens, baseline
                        ));
                        Agreement::DiffersAt(i)
                    }
                }
            };
        }
    }
    divergences
}

/// Today's date (UTC) as YYYY-MM-DD, from the civil-from-days conversion of the Unix day.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64 + 719_468; // days since 0000-03-01
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() -> Result<()> {
    // A misspelt or unsupported HYBRID_SIMD is an error before anything runs.
    hybrid_decode::simd::requested()?;
    let options = parse()?;
    let settings = &options.settings;
    if let Some(backend) = &options.worker {
        let result = measure::measure(settings, backend)?;
        println!("{RESULT_TAG}{}", result.to_json());
        return Ok(());
    }

    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    for backend in &options.backends {
        eprintln!("bench: measuring `{backend}`");
        let result = if options.in_process {
            measure::measure(settings, backend)
        } else {
            measure_in_child(backend)
        };
        let outcome = match result {
            Ok(result) => Outcome::Measured {
                result: Box::new(result),
                agreement: Agreement::Same,
            },
            Err(e) => {
                eprintln!("bench: `{backend}` FAILED: {e:#}");
                Outcome::Failed(format!("{e:#}"))
            }
        };
        outcomes.push((backend.clone(), outcome));
    }
    let divergences = compare(&mut outcomes, options.expect_tokens.as_deref());

    let date = today();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let weights = outcomes
        .iter()
        .find_map(|(_, o)| match o {
            Outcome::Measured { result, .. } => Some(result.weights.clone()),
            Outcome::Failed(_) => None,
        })
        .unwrap_or_default();
    let batch = match settings.batch {
        1 => String::new(),
        b => format!(
            "batch of {b} sequences (decode tok/s: all {b} together; one sequence's is 1/{b} of \
             it) · "
        ),
    };
    let context = format!(
        "{} · weights {weights} · {batch}{} prompt tokens, {} greedy tokens, {} warm-up + {} timed \
         runs · {date}, {cores} cores of {}",
        options.model_label,
        settings.prompt_tokens,
        settings.gen_tokens,
        settings.warmup,
        settings.repeats,
        cpu_model()
    );
    let rss_note = if options.in_process {
        "high-water mark of the one process that ran every backend so far (cumulative, not per backend)"
    } else {
        "VmHWM of a separate process per backend (model + backend + runtime)"
    };
    if options.json {
        for (name, outcome) in &outcomes {
            let mut value = match outcome {
                Outcome::Measured { result, agreement } => {
                    let mut v = result.to_json();
                    v["tokens_match"] = json!(!matches!(agreement, Agreement::DiffersAt(_)));
                    v["baseline"] = json!(*agreement == Agreement::Baseline);
                    v
                }
                Outcome::Failed(why) => json!({ "backend": name, "error": why }),
            };
            value["model"] = json!(options.model_label);
            value["prompt_tokens"] = json!(settings.prompt_tokens);
            value["gen_tokens"] = json!(settings.gen_tokens);
            value["repeats"] = json!(settings.repeats);
            value["batch"] = json!(settings.batch);
            value["decode_tok_s_per_sequence"] = match outcome {
                Outcome::Measured { result, .. } => {
                    json!(result.decode_tok_s.median / settings.batch as f64)
                }
                Outcome::Failed(_) => json!(null),
            };
            value["date"] = json!(date);
            value["rss_scope"] = json!(if options.in_process {
                "cumulative"
            } else {
                "per-backend process"
            });
            println!("{value}");
        }
    } else {
        println!("{context}\n");
        print!("{}", report::markdown(&outcomes, rss_note));
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, svg::chart(&outcomes, &context))
            .with_context(|| format!("--svg {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    if !divergences.is_empty() {
        eprintln!("\n!!!!!!!! DIVERGENCE: backends produced different tokens !!!!!!!!");
        for line in &divergences {
            eprintln!("!!! {line}");
        }
        bail!(
            "DIVERGENCE: {} backend(s) produced different tokens (see above)",
            divergences.len()
        );
    }
    if !failed.is_empty() {
        bail!("backend(s) failed: {}", failed.join(", "));
    }
    Ok(())
}
