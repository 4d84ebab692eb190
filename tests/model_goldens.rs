//! The models against HF transformers: tiny random checkpoints and goldens written by
//! `models/tools/gen_model_fixtures.py` (HF 5.24, float32, pure-torch GDN path), checked on every
//! GDN backend in the build: logits of every prompt position, last-position logits of a 200-token
//! prompt (prefill crosses the 64-token chunk boundaries), greedy ids and the logits of every
//! cached decode step, prefill + decode == token by token, and identical tokens across backends.

use std::path::{Path, PathBuf};

use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

mod common;
use common::golden::check_against_golden;

const FIXTURES: &[&str] = &["qwen3-next-tiny", "qwen3.5-tiny", "qwen3.5-moe-tiny"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(fixture: &str, backend: &str) -> HybridModel {
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &BackendOptions::default())
        .expect("backend");
    let dir: &Path = &root().join("models/fixtures").join(fixture);
    HybridModel::load(dir, &LoadOptions::default(), gdn)
        .unwrap_or_else(|e| panic!("loading {fixture}: {e}"))
}

fn check_fixture(fixture: &str, backend: &str) {
    let mut model = load(fixture, backend);
    check_against_golden(&mut model, fixture, &format!("{fixture} on {backend}"));
}

#[test]
fn qwen3_next_matches_hf_on_every_backend() {
    for backend in hybrid_decode::gdn_registry().available() {
        check_fixture(FIXTURES[0], backend);
    }
}

#[test]
fn qwen3_5_dense_bf16_checkpoint_matches_hf_on_every_backend() {
    for backend in hybrid_decode::gdn_registry().available() {
        check_fixture(FIXTURES[1], backend);
    }
}

#[test]
fn qwen3_5_moe_matches_hf_on_every_backend() {
    for backend in hybrid_decode::gdn_registry().available() {
        check_fixture(FIXTURES[2], backend);
    }
}
