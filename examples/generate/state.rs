//! Snapshot and migration flags of the generate example: their checks, and the sampler state
//! a snapshot carries.

use anyhow::{bail, Result};
use hybrid_decode::model::{Snapshot, SnapshotError, WriteMode};
use hybrid_decode::runtime::{RuntimeError, Sampler, SamplingParams};
use serde_json::{json, Value};

use crate::args::{apply_sampling_flags, Args};

/// The state flags' rules, checked before anything is loaded.
pub(crate) fn check_state_flags(a: &Args) -> Result<()> {
    if a.resume.is_some() {
        for (given, flag) in [
            (a.prompt.is_some(), "--prompt"),
            (a.prompt_ids.is_some(), "--prompt-ids"),
            (a.chat, "--chat"),
        ] {
            if given {
                bail!("--resume continues the sequence saved in the snapshot; drop {flag}");
            }
        }
    }
    match (a.migrate_after, &a.migrate_to) {
        (Some(_), None) => bail!("--migrate-after N needs --to BACKEND (the backend to move to)"),
        (None, Some(_)) => bail!("--to BACKEND needs --migrate-after N (when to move)"),
        (Some(n), Some(_)) if n == 0 || n >= a.max_new_tokens => bail!(
            "--migrate-after {n} must be between 1 and --max-new-tokens − 1 ({}) so that tokens \
             are generated on both backends",
            a.max_new_tokens.saturating_sub(1)
        ),
        _ => {}
    }
    if let Some(path) = &a.save_state {
        if a.max_new_tokens == 0 {
            bail!(
                "--save-state needs --max-new-tokens ≥ 1: a snapshot continues from a generated \
                 token that has not been fed yet"
            );
        }
        // The same check the write makes, before the model is even loaded: a run must not be
        // wasted on a destination that will be refused (or that is a device or symlink).
        let mode = if a.force {
            WriteMode::Overwrite
        } else {
            WriteMode::CreateNew
        };
        Snapshot::check_destination(path, mode).map_err(|e| match e {
            SnapshotError::Exists { .. } => anyhow::anyhow!(
                "--save-state {}: the file exists and is left untouched; choose another file or \
                 add --force to replace it",
                path.display()
            ),
            other => anyhow::Error::new(other).context("--save-state"),
        })?;
    }
    Ok(())
}

/// The sampler's parameters and random-stream position, as stored in a snapshot's `app` field.
pub(crate) fn sampler_json(sampler: &Sampler) -> Value {
    let p = sampler.params();
    json!({
        "temperature": p.temperature,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "repeat_penalty": p.repeat_penalty,
        "repeat_last_n": p.repeat_last_n,
        // u64/u128 as strings: JSON numbers lose precision past 2^53 in many readers.
        "seed": p.seed.to_string(),
        "rng_position": sampler.rng_position().to_string(),
    })
}

/// The sampler to resume with: the snapshot's parameters, overridden by any sampling flag given
/// now; its random stream continues where it stopped unless a different `--seed` re-seeds it.
pub(crate) fn resumed_sampler(a: &Args, saved: &Value, path: &std::path::Path) -> Result<Sampler> {
    let bad = |field: &str| {
        anyhow::anyhow!(
            "--resume {}: the snapshot's app.sampler.{field} is missing or invalid (was it \
             written by the generate example?)",
            path.display()
        )
    };
    let s = &saved["sampler"];
    let text_number = |field: &str| -> Result<u128> {
        s[field]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(field))
    };
    let saved_seed = u64::try_from(text_number("seed")?).map_err(|_| bad("seed"))?;
    let mut params = SamplingParams {
        temperature: s["temperature"]
            .as_f64()
            .ok_or_else(|| bad("temperature"))?,
        top_k: s["top_k"].as_u64().map(|k| k as usize),
        top_p: s["top_p"].as_f64(),
        repeat_penalty: s["repeat_penalty"]
            .as_f64()
            .ok_or_else(|| bad("repeat_penalty"))?,
        repeat_last_n: s["repeat_last_n"]
            .as_u64()
            .ok_or_else(|| bad("repeat_last_n"))? as usize,
        seed: saved_seed,
    };
    // The snapshot's own values first, so that a bad one is blamed on the file, not a flag.
    params.validate().map_err(|e| match e {
        RuntimeError::InvalidSamplingParam {
            flag,
            value,
            expected,
        } => anyhow::anyhow!(
            "--resume {}: the snapshot's app.sampler.{} is {value}; it {expected}",
            path.display(),
            match SamplingParams::field_of_flag(flag) {
                "repetition_penalty" => "repeat_penalty",
                field => field,
            }
        ),
        other => other.into(),
    })?;
    apply_sampling_flags(a, &mut params);
    match a.seed {
        Some(seed) if seed != saved_seed => {
            eprintln!("--seed {seed} differs from the snapshot's {saved_seed}: sampling re-seeded");
            params.seed = seed;
            Ok(Sampler::new(params)?)
        }
        _ => Ok(Sampler::resume_at(params, text_number("rng_position")?)?),
    }
}
