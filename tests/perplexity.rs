//! `examples/perplexity`: perplexity equal to HF transformers' on the tiny fixtures (goldens from
//! `models/tools/gen_perplexity_golden.py`), equal across GDN backends, KL divergence against a
//! saved base run, and bad input refused with a message naming the flag or file.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/goldens/perplexity")
}

fn text() -> String {
    golden_dir()
        .join("genesis-1.txt")
        .to_string_lossy()
        .into_owned()
}

/// Runs perplexity with `args` (plus `--json`) and returns its report.
fn perplexity(args: &[&str]) -> Value {
    let out = run("perplexity", &[args, &["--json"]].concat());
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    last_json(&out)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn perplexity_equals_hf_transformers_on_every_plan() {
    let text = text();
    for name in ["qwen3.5-tiny", "qwen3-next-tiny"] {
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(golden_dir().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let model = fixture(name);
        for plan in golden["plans"].as_array().unwrap() {
            let (ctx, stride) = (plan["ctx"].to_string(), plan["stride"].to_string());
            let got = perplexity(&[
                "--model",
                model.to_str().unwrap(),
                "--file",
                &text,
                "--ctx",
                &ctx,
                "--stride",
                &stride,
            ]);
            assert_eq!(
                got["tokens"].as_u64().unwrap() as usize,
                golden["tokens"].as_array().unwrap().len(),
                "{name}: the tokenizer must give the golden's ids"
            );
            assert_eq!(
                got["scored"], plan["scored"],
                "{name} ctx {ctx} stride {stride}"
            );
            let (want, have) = (
                plan["perplexity"].as_f64().unwrap(),
                got["perplexity"].as_f64().unwrap(),
            );
            assert!(
                relative(have, want) < 1e-3,
                "{name} ctx {ctx} stride {stride}: perplexity {have} vs HF {want}"
            );
        }
    }
}

#[test]
fn every_backend_gives_the_same_perplexity() {
    let text = text();
    let model = fixture("qwen3.5-tiny");
    let mut seen = Vec::new();
    for backend in backends() {
        let got = perplexity(&[
            "--model",
            model.to_str().unwrap(),
            "--file",
            &text,
            "--ctx",
            "64",
            "--stride",
            "32",
            "--gdn-backend",
            backend,
        ]);
        seen.push((backend, got["perplexity"].as_f64().unwrap()));
    }
    let (first, base) = seen[0];
    for &(backend, ppl) in &seen[1..] {
        assert!(
            relative(ppl, base) < 1e-4,
            "{backend} {ppl} vs {first} {base}"
        );
    }
}

#[test]
fn kl_divergence_against_a_saved_base() {
    let text = text();
    let model = fixture("qwen3.5-tiny");
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kl");
    let base = base.to_str().unwrap();
    let common = ["--model", model, "--file", &text, "--ctx", "64"];
    let written = perplexity(&[&common[..], &["--kl-divergence-base", base]].concat());
    assert_eq!(written["kl_divergence_base_written"], base);

    // The same run against itself: no divergence (up to the base's f16 rounding).
    let same = perplexity(
        &[
            &common[..],
            &["--kl-divergence-base", base, "--kl-divergence"],
        ]
        .concat(),
    );
    let kl = &same["kl_divergence"];
    assert!(kl["mean"].as_f64().unwrap() < 1e-3, "{kl}");
    assert!(kl["same_top"].as_f64().unwrap() >= 0.99, "{kl}");
    assert!(
        (kl["ppl_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-3,
        "{kl}"
    );
    assert_eq!(kl["positions"], written["scored"]);

    // Weights quantized on load drift measurably, but stay close.
    let q4 = perplexity(
        &[
            &common[..],
            &[
                "--dtype",
                "q4_0",
                "--kl-divergence-base",
                base,
                "--kl-divergence",
            ],
        ]
        .concat(),
    );
    let kl = &q4["kl_divergence"];
    let mean = kl["mean"].as_f64().unwrap();
    assert!(mean > 1e-4 && mean.is_finite(), "{kl}");
    assert!(kl["p99"].as_f64().unwrap() >= kl["median"].as_f64().unwrap());

    // Another window plan, an existing base, a missing base.
    assert_fails(
        "perplexity",
        &[
            &common[..],
            &[
                "--stride",
                "32",
                "--kl-divergence-base",
                base,
                "--kl-divergence",
            ],
        ]
        .concat(),
        "another text or window plan",
    );
    assert_fails(
        "perplexity",
        &[&common[..], &["--kl-divergence-base", base]].concat(),
        "left untouched",
    );
    let missing = dir.path().join("missing.kl");
    assert_fails(
        "perplexity",
        &[
            &common[..],
            &[
                "--kl-divergence-base",
                missing.to_str().unwrap(),
                "--kl-divergence",
            ],
        ]
        .concat(),
        "missing.kl",
    );
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    let text = text();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--file", "/no/such.txt"], "/no/such.txt"),
        (&["--file", empty.to_str().unwrap()], "holds no text"),
        (&["--file", &text, "--ctx", "1"], "--ctx 1"),
        (&["--file", &text, "--stride", "0"], "--stride 0"),
        (
            &["--file", &text, "--ctx", "8", "--stride", "9"],
            "--stride 9",
        ),
        (&["--file", &text, "--ctx", "100000"], "context"),
    ];
    for (args, expected) in cases {
        assert_fails("perplexity", args, expected);
    }
    assert_fails(
        "perplexity",
        &["--file", &text, "--kl-divergence"],
        "--kl-divergence-base",
    );
}
