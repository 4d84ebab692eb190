//! generate — text generation with a hybrid model, the GDN layers on any backend.
//!
//! ```text
//! cargo run --release --example generate -- [--model DIR|FILE.gguf|owner/name] [--tokenizer FILE]
//!     [--prompt TEXT | --prompt-ids 1,2,3]
//!     [--chat] [--max-new-tokens 32] [--temperature 0] [--top-k K] [--top-p P]
//!     [--repeat-penalty 1.0] [--repeat-last-n 64] [--seed S] [--gdn-backend cpu] [--threads N]
//!     [--dtype f32|bf16|f16|q8_0|q4_k|q6_k|…] [--kv-cache auto|f32|bf16|f16] [--no-mmap]
//!     [--config FILE --random-weights] [--json]
//!     [--save-state FILE [--force]] [--resume FILE] [--migrate-after N --to BACKEND]
//! ```
//! Without `--model` it runs the embedded default model (see `DEFAULT_MODEL`). Text streams to
//! stdout as it is generated; a timing summary goes to stderr; `--json` adds one JSON object as
//! the last line of stdout. `--gdn-backend help` lists the backends.
//!
//! State: `--save-state FILE` writes the whole sequence state after generation (see
//! `hybrid_model::snapshot` for the format); `--resume FILE` continues it without a prefill,
//! producing the tokens an uninterrupted run would (the sampler's parameters and random-stream
//! position travel in the snapshot). `--migrate-after N --to BACKEND` moves the live GDN state to
//! another backend after N generated tokens.

mod args;
#[path = "../shared/loading.rs"]
mod loading;
mod state;

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::{bail, Context, Result};
use hybrid_decode::model::{Snapshot, WriteMode};
use hybrid_decode::runtime::{
    ChatMessage, ChatTemplate, GenerateOptions, GeneratedToken, GenerationOutput, Generator,
    LanguageModel, Sampler, StopReason,
};
use serde_json::{json, Value};

use args::{backend_options, parse_args, sampling, Args};
use loading::{Loaded, ModelRequest};
use state::{resumed_sampler, sampler_json};

const DEFAULT_PROMPT: &str = "And God said, Let there be";

/// The model and tokenizer the flags name (see `examples/shared/loading.rs`).
fn load(a: &Args) -> Result<Loaded> {
    loading::load(&ModelRequest {
        model: a.model.as_deref(),
        tokenizer: a.tokenizer.as_deref(),
        config: a.config.as_deref(),
        seed: a.seed,
        dtype: a.dtype,
        kv_cache: a.kv_cache.as_deref(),
        no_mmap: a.no_mmap,
        device: a.device.as_deref(),
        gdn_backend: &a.gdn_backend,
        gdn_fallback: a.gdn_fallback.as_deref(),
        backend_options: backend_options(a),
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

/// Concatenates the generated tokens of consecutive phases (before and after a migration).
struct Run {
    context: Vec<u32>,
    generated: Vec<u32>,
    phases: Vec<GenerationOutput>,
}

impl Run {
    fn history(&self) -> Vec<u32> {
        [self.context.clone(), self.generated.clone()].concat()
    }

    fn push(&mut self, output: GenerationOutput) {
        self.generated.extend_from_slice(&output.generated_ids);
        self.phases.push(output);
    }

    fn stop_reason(&self) -> StopReason {
        self.phases
            .last()
            .map_or(StopReason::MaxNewTokens, |p| p.stop_reason)
    }
}

fn main() -> Result<()> {
    // A misspelt or unsupported HYBRID_SIMD is an error before anything runs.
    hybrid_decode::simd::requested()?;
    let a = parse_args()?;
    if let Some(threads) = a.threads {
        hybrid_decode::cli::set_threads(threads)?;
    }
    if a.gdn_backend == "help" {
        print!("{}", hybrid_decode::cli::backend_list());
        return Ok(());
    }
    // Everything that can be checked without the model is checked before loading it.
    let snapshot = a
        .resume
        .as_deref()
        .map(Snapshot::read)
        .transpose()
        .context("--resume")?;
    let backend_options = backend_options(&a);
    let mut migrate_to = match &a.migrate_to {
        Some(name) => Some(
            hybrid_decode::gdn_registry()
                .create(
                    name,
                    &hybrid_decode::cli::gdn_options_for(
                        name,
                        a.device.as_deref(),
                        &backend_options,
                    ),
                )
                .with_context(|| format!("--to {name} (try --gdn-backend help)"))
                .and_then(|to| {
                    loading::with_fallback(
                        to,
                        a.gdn_fallback.as_deref(),
                        a.device.as_deref(),
                        &backend_options,
                    )
                })?,
        ),
        None => None,
    };

    let mut loaded = load(&a)?;
    eprintln!("model: {}", loaded.description);
    eprintln!(
        "weights: {} · kernels: {} · KV cache: {}",
        loaded.engine.model().weight_format(),
        loaded.engine.model().kernel_description(),
        loaded.engine.model().kv_cache_dtype()
    );
    let backend = loaded.engine.model().gdn_backend().info();
    eprintln!("GDN backend: {} ({})", backend.name, backend.device);
    let (context, fed, sampler) = match &snapshot {
        Some(snap) => {
            loaded.engine.model_mut().restore(snap)?;
            eprintln!(
                "resumed {}: {} tokens, position {} (saved on GDN backend `{}`)",
                snap.origin_path().display(),
                snap.tokens.len(),
                snap.state.position,
                snap.gdn_backend
            );
            let path = snap.origin_path();
            let sampler = if snap.app["sampler"].is_null() {
                // Written through the library by another program: nothing to continue.
                eprintln!("the snapshot carries no sampler state: sampling starts from the flags");
                Sampler::new(sampling(&a, &loaded.generation))?
            } else {
                resumed_sampler(&a, &snap.app, &path)?
            };
            (snap.tokens.clone(), Some(snap.state.position), sampler)
        }
        None => {
            let prompt = prompt_ids(&a, &loaded)?;
            let sampler = Sampler::new(sampling(&a, &loaded.generation))?;
            (prompt, None, sampler)
        }
    };
    let mut eos = loaded.generation.eos_token_ids.clone();
    if let (Some(config), Some(tokenizer)) = (&loaded.tokenizer_config, &loaded.tokenizer) {
        eos.extend(
            config
                .eos_token_id(tokenizer)
                .filter(|id| !eos.contains(id)),
        );
    }
    let vocab = loaded.engine.vocab_size();
    let tokenizer = loaded.tokenizer.as_ref();
    let mut stdout = std::io::stdout();
    let stream_text = tokenizer.is_some();
    if !stream_text {
        eprintln!("no tokenizer: printing token ids (vocab {vocab})");
    }
    let mut on_token = |token: &GeneratedToken<'_>| {
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
    };

    // Phase 1: everything, or up to the migration point.
    let first_phase = a.migrate_after.unwrap_or(a.max_new_tokens);
    let mut run = Run {
        context: context.clone(),
        generated: Vec::new(),
        phases: Vec::new(),
    };
    // GDN time comes from the model's profiling counters, read around each phase.
    let gdn_before = loaded.engine.model().gdn_counters().run_time();
    let mut generator = Generator::new(&mut loaded.engine, sampler, tokenizer)?;
    let options = GenerateOptions::new(first_phase, eos.clone());
    let mut phase = match fed {
        Some(fed) => generator.resume(&context, fed, &options, &mut on_token)?,
        None => generator.generate(&context, &options, &mut on_token)?,
    };
    let mut sampler = generator.sampler_mut().clone();
    drop(generator);
    let gdn_after = loaded.engine.model().gdn_counters().run_time();
    phase.record_gdn(gdn_after.saturating_sub(gdn_before));
    run.push(phase);

    // Phase 2: move the live GDN state, then continue on the new backend.
    let mut migration = Value::Null;
    if let Some(to) = migrate_to.take() {
        if run.stop_reason() == StopReason::MaxNewTokens {
            let model = loaded.engine.model_mut();
            let old = model
                .migrate_gdn_backend(to)
                .context("--migrate-after: moving the GDN state")?;
            let new = model.gdn_backend().info();
            eprintln!(
                "\nmigrated the GDN state of {} layers from `{}` to `{}` ({}) after {} tokens",
                model.gdn_layers(),
                old.info().name,
                new.name,
                new.device,
                run.generated.len()
            );
            migration = json!({
                "after": run.generated.len(),
                "from": old.info().name,
                "to": new.name,
            });
            drop(old);
            let history = run.history();
            let options = GenerateOptions::new(a.max_new_tokens - first_phase, eos.clone());
            let gdn_before = loaded.engine.model().gdn_counters().run_time();
            let mut generator = Generator::new(&mut loaded.engine, sampler, tokenizer)?;
            let mut phase =
                generator.resume(&history, history.len() - 1, &options, &mut on_token)?;
            sampler = generator.sampler_mut().clone();
            drop(generator);
            let gdn_after = loaded.engine.model().gdn_counters().run_time();
            phase.record_gdn(gdn_after.saturating_sub(gdn_before));
            run.push(phase);
        } else {
            eprintln!("generation stopped before --migrate-after; no migration");
        }
    }
    // Ends the streamed text's line. A reader that has gone (`| head -c 5`) is not an error
    // here: the snapshot below must still be written.
    let _ = writeln!(stdout).and_then(|_| stdout.flush());
    for phase in &run.phases {
        eprintln!("{}", phase.summary());
    }

    if let Some(path) = &a.save_state {
        let history = run.history();
        let app = json!({ "sampler": sampler_json(&sampler), "eos_token_ids": eos });
        let snapshot = loaded.engine.model_mut().snapshot(&history, app)?;
        let mode = if a.force {
            WriteMode::Overwrite
        } else {
            WriteMode::CreateNew
        };
        snapshot
            .write(path, mode)
            .with_context(|| format!("--save-state {}", path.display()))?;
        eprintln!(
            "saved the state of {} tokens (position {}) to {}",
            history.len(),
            snapshot.state.position,
            path.display()
        );
    }

    if a.json {
        let backend = loaded.engine.model().gdn_backend().info();
        let first = &run.phases[0];
        let (steps, decode) = run.phases.iter().fold((0, 0.0), |(n, t), p| {
            (n + p.decode_steps, t + p.decode.as_secs_f64())
        });
        let gdn: f64 = run.phases.iter().map(|p| p.gdn.as_secs_f64()).sum();
        let model_time = first.prefill.as_secs_f64() + decode;
        let shown = match run.stop_reason() {
            StopReason::Eos => &run.generated[..run.generated.len() - 1],
            _ => &run.generated[..],
        };
        let text = tokenizer.map(|t| t.decode(shown, true)).transpose()?;
        let json = json!({
            "model": a.model.clone().unwrap_or_else(|| "default".into()),
            "prompt_ids": run.context,
            "generated_ids": run.generated,
            "text": text,
            "gdn_backend": backend.name,
            "gdn_device": backend.device,
            "prefill_tok_s": first.prefill_tok_s,
            "decode_tok_s": if decode > 0.0 { steps as f64 / decode } else { 0.0 },
            "gdn_share": if model_time > 0.0 { gdn / model_time } else { 0.0 },
            "stop_reason": format!("{:?}", run.stop_reason()),
            "resumed_from": a.resume.as_ref().map(|p| p.display().to_string()),
            "saved_state": a.save_state.as_ref().map(|p| p.display().to_string()),
            "migration": migration,
        });
        writeln!(std::io::stdout(), "{json}")
            .context("printing the --json result (stdout is closed?)")?;
    }
    Ok(())
}
