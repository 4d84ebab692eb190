//! The `generate` example as users run it: real process, real flags, exit codes. The binary is
//! the one `cargo test` builds next to this test (target/<profile>/examples/generate).

mod common;

use std::process::Output;

use common::{ids, last_json as json, run as run_example, stderr};

fn run(args: &[&str]) -> Output {
    common::run("generate", args)
}

/// The greedy ids HF produced for the default prompt on the tiny Qwen3-Next fixture
/// (models/goldens/models/qwen3-next-tiny.safetensors, `short_greedy_ids`).
const HF_GREEDY: [u64; 16] = [
    318, 288, 518, 227, 676, 800, 946, 656, 811, 455, 168, 195, 230, 903, 123, 793,
];

#[test]
fn tiny_fixture_greedy_matches_hf_on_every_backend() {
    for backend in hybrid_decode::gdn_registry().available() {
        let out = run(&["--max-new-tokens", "16", "--gdn-backend", backend, "--json"]);
        assert!(out.status.success(), "{backend}: {}", stderr(&out));
        let v = json(&out);
        assert_eq!(ids(&v["generated_ids"]), HF_GREEDY, "{backend}");
        assert_eq!(v["gdn_backend"], backend);
        assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(v["decode_tok_s"].as_f64().is_some_and(|x| x > 0.0));
        assert!(
            stderr(&out).contains("qwen3-next-tiny"),
            "the run must say which model it ran"
        );
    }
}

#[test]
fn prompt_ids_need_no_tokenizer_and_sampling_is_seeded() {
    let args = [
        "--prompt-ids",
        "296,387,388,11",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0.9",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--repeat-penalty",
        "1.1",
        "--seed",
        "7",
        "--json",
    ];
    let first = run(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(&args);
    assert_eq!(
        json(&first)["generated_ids"],
        json(&second)["generated_ids"]
    );
    assert_eq!(ids(&json(&first)["prompt_ids"]), [296, 387, 388, 11]);
}

#[test]
fn chat_template_wraps_the_prompt() {
    let out = run(&[
        "--chat",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // <|im_start|> is id 1022 in the tiny tokenizer.
    assert_eq!(ids(&json(&out)["prompt_ids"])[0], 1022);
}

#[test]
fn random_weights_on_a_config_run_without_a_tokenizer() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/fixtures/qwen3.5-tiny/config.json"
    );
    let out = run(&[
        "--config",
        config,
        "--random-weights",
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&json(&out)["generated_ids"]).len(), 3);
    assert!(json(&out)["text"].is_null());
}

/// Bad input: exit code ≠ 0, a message naming the problem, and never a panic.
fn assert_fails(args: &[&str], expected: &str) {
    common::assert_fails("generate", args, expected)
}

#[test]
fn bad_input_fails_cleanly() {
    assert_fails(&["--model", "/no/such/model"], "/no/such/model");
    assert_fails(&["--gdn-backend", "tpu"], "unknown GDN backend `tpu`");
    assert_fails(&["--gdn-backend", "cuda"], "not available");
    // Without a card `xrt` says so; with one, the missing xclbin is the error.
    assert_fails(
        &[
            "--gdn-backend",
            "xrt",
            "--xclbin",
            "/nonexistent/gdn.xclbin",
        ],
        "--gdn-backend xrt",
    );
    assert_fails(&["--device-index", "first"], "--device-index");
    assert_fails(&["--temperature", "-1"], "--temperature");
    assert_fails(&["--top-p", "1.5"], "--top-p");
    assert_fails(&["--max-new-tokens", "many"], "--max-new-tokens");
    assert_fails(&["--prompt", "a", "--prompt-ids", "1"], "not both");
    assert_fails(&["--frobnicate"], "unknown flag `--frobnicate`");
    assert_fails(&["--prompt-ids", "1,2,99999"], "99999");
    let long: Vec<String> = (0..600).map(|i| (i % 1000).to_string()).collect();
    assert_fails(&["--prompt-ids", &long.join(",")], "512");
}

/// `--gdn-fallback` puts the backend behind hybrid-gdn's `FailoverBackend` without changing a
/// token (the move itself, with failing simulated cards, is tests/xrt_failover.rs); a name this
/// build cannot create is refused at start, not at the first device fault.
#[test]
fn gdn_fallback_changes_no_token_and_bad_names_are_refused() {
    let out = run(&[
        "--max-new-tokens",
        "16",
        "--gdn-backend",
        "xrt-sim",
        "--gdn-fallback",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(ids(&v["generated_ids"]), HF_GREEDY);
    assert_eq!(v["gdn_backend"], "xrt-sim");
    assert_fails(
        &["--gdn-fallback", "tpu"],
        "--gdn-fallback tpu: not a backend",
    );
    assert_fails(&["--gdn-fallback"], "--gdn-fallback");
}

/// `--device cpu` is the default; a device this build cannot open is refused with what to do
/// (a CUDA device needs a `--features cuda-full` build: tested here without one).
#[test]
fn device_flag_runs_on_the_cpu_and_refuses_what_it_cannot_open() {
    let out = run(&["--max-new-tokens", "16", "--device", "cpu", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&json(&out)["generated_ids"]), HF_GREEDY);
    assert_fails(&["--device", "gpu"], "expected cpu, cuda or cuda:N");
    assert_fails(&["--device", "cuda:x"], "expected cpu, cuda or cuda:N");
    if !cfg!(feature = "cuda-full") {
        assert_fails(&["--device", "cuda"], "rebuild with `--features cuda-full`");
        assert_fails(
            &["--device", "cuda:1"],
            "rebuild with `--features cuda-full`",
        );
    }
}

#[test]
fn broken_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().expect("temp");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fixtures/qwen3.5-tiny");
    for entry in std::fs::read_dir(src).expect("fixture") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    let model = dir.path().to_str().expect("utf-8 path");
    std::fs::write(dir.path().join("config.json"), "{ broken").expect("write");
    assert_fails(&["--model", model], "config.json");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).expect("write");
    assert_fails(&["--model", model], "model_type `gpt2` is not supported");
}

/// A GGUF made by llama.cpp's converter from the default model (models/fixtures/gguf/) brings
/// its own tokenizer, chat template and stop tokens: the same text prompt gives the same prompt
/// ids and HF's greedy ids, and stderr names the weight format.
#[test]
fn gguf_file_generates_what_the_safetensors_model_does() {
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/fixtures/gguf/qwen3-next-tiny-f32.gguf"
    );
    let out = run(&["--model", gguf, "--max-new-tokens", "16", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let default = run(&["--max-new-tokens", "16", "--json"]);
    assert_eq!(json(&out)["prompt_ids"], json(&default)["prompt_ids"]);
    assert_eq!(ids(&json(&out)["generated_ids"]), HF_GREEDY);
    assert!(
        stderr(&out).contains("weights: GGUF F32"),
        "{}",
        stderr(&out)
    );
    // --dtype does not apply to a GGUF: refused with the reason.
    let refused = run(&["--model", gguf, "--dtype", "q8_0"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--dtype applies to safetensors"),
        "{}",
        stderr(&refused)
    );
}

/// `--dtype q8_0` quantizes a safetensors model on load and says so; an unknown format is
/// refused with the list.
#[test]
fn dtype_quantizes_on_load() {
    let out = run(&["--dtype", "q8_0", "--max-new-tokens", "4", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Q8_0 (quantized on load)"),
        "{}",
        stderr(&out)
    );
    let bad = run(&["--dtype", "q9_9"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("q4_k"), "{}", stderr(&bad));
}

/// An argument that is not UTF-8 is named, with exit status 1 — not a panic (status 101), in
/// every example.
#[cfg(unix)]
#[test]
fn non_utf8_arguments_are_refused_by_position() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    for example in ["generate", "bench", "gdn_bench"] {
        let out = std::process::Command::new(common::example_binary(example))
            .arg("--prompt")
            .arg(OsString::from_vec(vec![0xff, b'x']))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{example}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("argument 2") && stderr(&out).contains("not valid UTF-8"),
            "{example}: {}",
            stderr(&out)
        );
    }
}

/// Issue 13 item 12: `--threads` sizes the one shared pool; 0 and absurd counts (10,000 would
/// start 10,000 threads) are refused by generate, bench and perplexity alike.
#[test]
fn thread_counts_outside_the_machine_are_refused() {
    for example in ["generate", "bench", "perplexity"] {
        for bad in ["0", "100000"] {
            let mut args = vec!["--threads", bad];
            if example == "perplexity" {
                args.extend(["--file", "README.md"]);
            }
            common::assert_fails(
                example,
                &args,
                &format!("--threads {bad} must be between 1 and"),
            );
        }
    }
    let out = run_example("generate", &["--threads", "1", "--max-new-tokens", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Issue 13 item 12: flag combinations that used to be accepted quietly.
#[test]
fn contradictory_or_ignored_flags_are_refused() {
    assert_fails(
        &["--chat", "--prompt-ids", "1,2"],
        "--chat wraps a text prompt",
    );
    assert_fails(
        &["--xclbin", "/x.xclbin"],
        "--xclbin configures the xrt backends",
    );
    assert_fails(
        &["--device-index", "1", "--gdn-backend", "cpu"],
        "--device-index configures",
    );
    for (list, expected) in [
        ("", "empty backend name"),
        ("cpu,cpu", "listed twice"),
        ("cpu,", "empty backend name"),
    ] {
        common::assert_fails(
            "bench",
            &[
                "--gdn-backend",
                list,
                "--config",
                "x.json",
                "--random-weights",
            ],
            expected,
        );
    }
    let out = run_example("bench", &["--gdn-backend", "help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reference"));
}

/// HYBRID_SIMD lowers the kernels' tier: every tier this CPU has gives HF's greedy tokens, and
/// a value that names no tier (or one the CPU lacks) is refused before anything runs.
#[test]
fn hybrid_simd_tiers_give_the_same_tokens_and_bad_values_are_refused() {
    use hybrid_decode::simd::Tier;
    let fixture = common::fixture("qwen3-next-tiny");
    let generate = |simd: &str, extra: &[&str]| {
        let mut args = vec!["--model", fixture.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        std::process::Command::new(common::example_binary("generate"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .env("HYBRID_SIMD", simd)
            .output()
            .expect("run generate")
    };
    for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
        let out = generate(tier.key(), &["--max-new-tokens", "16"]);
        assert!(out.status.success(), "{tier}: {}", stderr(&out));
        assert_eq!(ids(&json(&out)["generated_ids"]), HF_GREEDY, "{tier}");
    }
    for (value, expected) in [("avx3", "is not a SIMD tier"), ("", "is not a SIMD tier")] {
        let out = generate(value, &[]);
        assert!(!out.status.success(), "HYBRID_SIMD={value:?} was accepted");
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    if let Some(missing) = Tier::ALL.into_iter().find(|t| !t.is_supported()) {
        let out = generate(missing.key(), &[]);
        assert!(
            stderr(&out).contains("does not support"),
            "{}",
            stderr(&out)
        );
    }
}
