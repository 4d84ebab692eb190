//! bench — end-to-end prefill and decode speed of one model on each GDN backend.
//!
//! ```text
//! cargo run --release --example bench -- --model models/fixtures/qwen3-next-tiny
//! cargo run --release --example bench -- --config models/configs/qwen3.5-0.8b/config.json \
//!     --random-weights [--dtype f32|bf16] [--gdn-backend cpu,reference] \
//!     [--prompt-tokens 128] [--gen-tokens 32] [--repeats 3]
//! ```
//! For each backend: the same prompt (fixed pseudo-random ids) and greedy decode; checks that all
//! backends produce the same tokens; prints prefill tok/s, decode tok/s and the share of decode
//! time spent in the GDN backend (median over repeats).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions, ModelConfig};

struct Options {
    model: Option<PathBuf>,
    config: Option<PathBuf>,
    random_weights: bool,
    dtype: DType,
    backends: Vec<String>,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeats: usize,
}

fn parse() -> Result<Options> {
    let mut o = Options {
        model: None,
        config: None,
        random_weights: false,
        dtype: DType::F32,
        backends: Vec::new(),
        prompt_tokens: 128,
        gen_tokens: 32,
        repeats: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => o.model = Some(value()?.into()),
            "--config" => o.config = Some(value()?.into()),
            "--random-weights" => o.random_weights = true,
            "--dtype" => {
                o.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => bail!("--dtype takes f32, bf16 or f16, got `{other}`"),
                }
            }
            "--gdn-backend" => {
                o.backends = value()?.split(',').map(|s| s.trim().to_string()).collect()
            }
            "--prompt-tokens" => o.prompt_tokens = value()?.parse().context("--prompt-tokens")?,
            "--gen-tokens" => o.gen_tokens = value()?.parse().context("--gen-tokens")?,
            "--repeats" => o.repeats = value()?.parse::<usize>().context("--repeats")?.max(1),
            other => bail!("unknown flag `{other}`"),
        }
    }
    if o.backends.is_empty() || o.backends == ["all"] {
        o.backends = hybrid_decode::gdn_registry()
            .available()
            .into_iter()
            .map(String::from)
            .collect();
    }
    if o.model.is_none() && !(o.config.is_some() && o.random_weights) {
        bail!("give --model DIR, or --config FILE --random-weights");
    }
    Ok(o)
}

fn load(o: &Options, backend: &str) -> Result<HybridModel> {
    let gdn = hybrid_decode::gdn_registry().create(backend, &BackendOptions::default())?;
    let options = LoadOptions {
        dtype: o.dtype,
        ..LoadOptions::default()
    };
    Ok(match (&o.model, &o.config) {
        (Some(dir), _) => HybridModel::load(dir, &options, gdn)?,
        (None, Some(config)) => {
            HybridModel::random(ModelConfig::from_file(config)?, &options, gdn, 7)?
        }
        (None, None) => unreachable!("checked in parse"),
    })
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let o = parse()?;
    println!("| backend | prefill tok/s | decode tok/s | GDN share of decode | tokens |");
    println!("|---|---:|---:|---:|---|");
    let mut reference_tokens: Option<Vec<u32>> = None;
    for backend in &o.backends {
        let started = Instant::now();
        let mut model = load(&o, backend).with_context(|| format!("loading for `{backend}`"))?;
        eprintln!(
            "{backend}: loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let vocab = model.config().vocab_size as u64;
        let prompt: Vec<u32> = (0..o.prompt_tokens as u64)
            .map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32)
            .collect();
        let (mut prefill, mut decode, mut share) = (Vec::new(), Vec::new(), Vec::new());
        let mut tokens = Vec::new();
        for _ in 0..o.repeats {
            model.reset()?;
            let t0 = Instant::now();
            let mut logits = model.forward(&prompt)?.to_vec1::<f32>()?;
            prefill.push(prompt.len() as f64 / t0.elapsed().as_secs_f64());
            tokens.clear();
            let gdn_before = model.gdn_time();
            let t1 = Instant::now();
            for _ in 0..o.gen_tokens {
                let next = argmax(&logits);
                tokens.push(next);
                logits = model.forward(&[next])?.to_vec1::<f32>()?;
            }
            let elapsed = t1.elapsed().as_secs_f64();
            decode.push(o.gen_tokens as f64 / elapsed);
            share.push((model.gdn_time() - gdn_before).as_secs_f64() / elapsed);
        }
        let same = match &reference_tokens {
            None => {
                reference_tokens = Some(tokens.clone());
                "reference run".to_string()
            }
            Some(first) if *first == tokens => "same as first backend".to_string(),
            Some(_) => {
                eprintln!(
                    "DIVERGENCE: `{backend}` produced different tokens than the first backend"
                );
                "DIFFERENT".to_string()
            }
        };
        println!(
            "| {backend} | {:.1} | {:.2} | {:.1} % | {same} |",
            median(prefill),
            median(decode),
            100.0 * median(share)
        );
    }
    Ok(())
}
