//! Helpers shared by the snapshot, migration, bench and generate CLI tests: fixture paths, loading a fixture
//! on a backend, greedy/seeded generation through the runtime, and running example binaries.

#![allow(dead_code)] // each test binary uses its own subset

pub mod golden;
pub mod server;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};
use hybrid_decode::runtime::{GenerateOptions, GeneratedToken, Generator, Sampler, SamplingParams};
use hybrid_decode::Engine;

/// The committed tiny checkpoints (models/fixtures).
pub const FIXTURES: &[&str] = &["qwen3-next-tiny", "qwen3.5-tiny", "qwen3.5-moe-tiny"];

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// Every GDN backend compiled into this build that can start here (a GPU backend built in on a
/// machine without a GPU cannot), in registry order — what `bench --gdn-backend all` runs.
pub fn backends() -> Vec<&'static str> {
    let registry = hybrid_decode::gdn_registry();
    registry
        .available()
        .into_iter()
        .filter(|name| registry.create(name, &BackendOptions::default()).is_ok())
        .collect()
}

pub fn load(fixture_name: &str, backend: &str) -> Engine {
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &BackendOptions::default())
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
    let model = HybridModel::load(&fixture(fixture_name), &LoadOptions::default(), gdn)
        .unwrap_or_else(|e| panic!("{fixture_name} on {backend}: {e}"));
    Engine::new(model)
}

/// A fixed prompt inside every fixture's 1k vocabulary.
pub const PROMPT: &[u32] = &[296, 387, 388, 11, 322, 361, 380, 295];

fn keep_going(_: &GeneratedToken<'_>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Seeded sampling settings that really draw (not greedy).
pub fn seeded() -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        seed: 7,
        ..SamplingParams::greedy()
    }
}

/// `n` new tokens of a fresh sequence from `prompt`; returns them and the sampler afterwards.
pub fn generate(
    engine: &mut Engine,
    sampler: Sampler,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Sampler) {
    let mut generator = Generator::new(engine, sampler, None).expect("generator");
    let out = generator
        .generate(prompt, &GenerateOptions::new(n, vec![]), &mut keep_going)
        .expect("generate");
    (out.generated_ids, generator.sampler_mut().clone())
}

/// `n` new tokens continuing `history`, of which the model holds all but the last.
pub fn resume(engine: &mut Engine, sampler: Sampler, history: &[u32], n: usize) -> Vec<u32> {
    Generator::new(engine, sampler, None)
        .expect("generator")
        .resume(
            history,
            history.len() - 1,
            &GenerateOptions::new(n, vec![]),
            &mut keep_going,
        )
        .expect("resume")
        .generated_ids
}

pub fn greedy() -> Sampler {
    Sampler::new(SamplingParams::greedy()).expect("greedy sampler")
}

/// target/<profile>/examples/<name>, which `cargo test` builds next to the test binaries.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds examples; run it through cargo",
        binary.display()
    );
    binary
}

/// Runs an example with `args`. `generate` and `perplexity` run on the tiny Qwen3-Next fixture
/// (whose HF goldens the tests compare with) unless `args` name a model (`--model`,
/// `--config`): their own default is the demo model, which `tests/demo_model.rs` tests.
pub fn run(example: &str, args: &[&str]) -> Output {
    let names_model = args.iter().any(|a| *a == "--model" || *a == "--config");
    let fixture = fixture("qwen3-next-tiny");
    let mut all: Vec<&str> = Vec::new();
    if matches!(example, "generate" | "perplexity") && !names_model {
        all.extend(["--model", fixture.to_str().expect("UTF-8 path")]);
    }
    all.extend_from_slice(args);
    Command::new(example_binary(example))
        .args(&all)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run the example")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last stdout line parsed as JSON.
pub fn last_json(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("some stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

pub fn ids(value: &serde_json::Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect()
}

/// Exit code ≠ 0, `expected` in stderr, and no panic.
pub fn assert_fails(example: &str, args: &[&str], expected: &str) {
    let out = run(example, args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.contains(expected),
        "{args:?}: expected `{expected}` in: {err}"
    );
}

/// An error and every cause under it, joined by ": " (as anyhow's `{:#}` prints them): what a
/// user of the tools reads, for tests that look for a cause's words.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
