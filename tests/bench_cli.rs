//! The bench example as scripts run it: every available backend on every fixture, identical
//! tokens, JSON fields consistent with each other and with the model's shapes (the roofline is
//! recomputed here from config.json), the markdown tables, the SVG chart, a divergence making the
//! exit code non-zero, and bad flags failing cleanly.

mod common;

use common::*;
use serde_json::Value;

/// Short runs: the point is the plumbing, not the numbers.
const QUICK: &[&str] = &[
    "--prompt-tokens",
    "12",
    "--gen-tokens",
    "4",
    "--repeats",
    "2",
    "--warmup",
    "0",
];

fn bench(args: &[&str]) -> std::process::Output {
    run("bench", &[args, QUICK].concat())
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn stat(v: &Value, name: &str) -> (f64, f64, f64) {
    let s = &v[name];
    let get = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("{name}.{k} missing in {v}"))
    };
    (get("min"), get("median"), get("max"))
}

/// GDN layers, and the per-layer recurrent state size and recurrence FLOPs, from config.json.
fn shapes(fixture_name: &str) -> (usize, f64, f64) {
    let text = std::fs::read_to_string(fixture(fixture_name).join("config.json")).unwrap();
    let c: Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| c[k].as_u64().unwrap() as f64;
    let gdn_layers = c["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| *t == "linear_attention")
        .count();
    let (hv, dk, dv) = (
        n("linear_num_value_heads"),
        n("linear_key_head_dim"),
        n("linear_value_head_dim"),
    );
    // S ← e^g S (1), Sᵀk (2), δ (2 per column), S += kδᵀ (2), Sᵀq (2) — DESIGN §3.
    (
        gdn_layers,
        hv * dk * dv * 4.0,
        hv * (7.0 * dk * dv + 2.0 * dv),
    )
}

#[test]
fn every_backend_on_every_fixture_agrees_and_reports_consistent_numbers() {
    let available = backends();
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let svg = dir.path().join(format!("{name}.svg"));
        let model = fixture(name);
        let out = bench(&[
            "--model",
            model.to_str().unwrap(),
            "--gdn-backend",
            "all",
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let rows = json_lines(&out);
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["backend"].as_str().unwrap())
            .collect();
        assert_eq!(names, available, "{name}: one object per available backend");
        let (gdn_layers, state_bytes, flops) = shapes(name);
        let first_tokens = ids(&rows[0]["tokens"]);
        assert_eq!(first_tokens.len(), 5, "prefill argmax + 4 decode steps");
        for r in &rows {
            let backend = r["backend"].as_str().unwrap();
            assert_eq!(r["tokens_match"], true, "{name}/{backend}");
            assert_eq!(ids(&r["tokens"]), first_tokens, "{name}/{backend}");
            assert_eq!(r["deterministic"], true);
            for field in ["prefill_tok_s", "decode_tok_s", "gdn_us_per_layer_token"] {
                let (min, median, max) = stat(r, field);
                assert!(0.0 < min && min <= median && median <= max, "{field}: {r}");
            }
            let (_, share, _) = stat(r, "gdn_share");
            assert!(share > 0.0 && share < 1.0, "GDN share {share}");
            assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
            assert_eq!(r["rss_scope"], "per-backend process");
            let on_host = r["state_on_host"].as_bool().unwrap();
            if on_host {
                // Host backends move no state across a device boundary.
                assert_eq!(r["bytes_moved_per_token"], 0.0);
            }

            let roof = &r["roofline"];
            assert_eq!(roof["gdn_layers"], gdn_layers);
            let bytes = roof["state_bytes_per_token"].as_f64().unwrap();
            assert_eq!(bytes, 2.0 * state_bytes * gdn_layers as f64);
            assert_eq!(
                roof["flops_per_token"].as_f64().unwrap(),
                flops * gdn_layers as f64
            );
            let intensity = roof["arithmetic_intensity"].as_f64().unwrap();
            assert!((intensity - flops / (2.0 * state_bytes)).abs() < 1e-12);
            assert!(intensity < 1.0, "GDN decode is memory-bound: {intensity}");
            // achieved = bytes of a layer-token / median µs per layer-token — the modelled
            // device's µs for a simulated device (xrt-sim), whose wall time is a C-simulation.
            let (_, measured_us, _) = stat(r, "gdn_us_per_layer_token");
            let modelled_us = roof["modelled_device_us_per_layer_token"].as_f64();
            assert_eq!(
                modelled_us.is_some(),
                backend == "xrt-sim",
                "{backend}: {roof}"
            );
            let us = modelled_us.unwrap_or(measured_us);
            let achieved = roof["achieved_gb_s"].as_f64().unwrap();
            assert!((achieved - 2.0 * state_bytes / (us * 1e3)).abs() < 1e-9 * achieved.max(1.0));
            if backend.starts_with("xrt") {
                // The FPGA's on-chip state banks: P = 16 × 2 f32, read + write, at 300 MHz.
                assert_eq!(roof["device_gb_s"].as_f64(), Some(76.8), "{roof}");
                let fraction = roof["fraction_of_device_bw"].as_f64().unwrap();
                assert!(fraction > 0.0 && fraction < 1.0, "{backend}: {fraction}");
            }
            if on_host {
                let device = roof["device_gb_s"]
                    .as_f64()
                    .expect("host bandwidth is measured");
                let fraction = roof["fraction_of_device_bw"].as_f64().unwrap();
                assert!((fraction - achieved / device).abs() < 1e-9);
                assert!(roof["device_bw_source"]
                    .as_str()
                    .unwrap()
                    .contains("stream_scale"));
            }
        }
        let chart = std::fs::read_to_string(&svg).unwrap();
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        for backend in &available {
            assert!(
                chart.contains(&format!(">{backend}<")),
                "{backend} in the chart"
            );
        }
        assert_eq!(chart.matches("<rect").count(), 1 + 2 * available.len());
    }
}

#[test]
fn markdown_tables_and_random_weights() {
    let config = fixture("qwen3.5-tiny").join("config.json");
    let out = bench(&[
        "--config",
        config.to_str().unwrap(),
        "--random-weights",
        "--gdn-backend",
        "reference,cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("| backend | device | prefill tok/s | decode tok/s |"),
        "{text}"
    );
    assert!(
        text.contains("| backend | GDN layers | state bytes/token |"),
        "{text}"
    );
    assert!(
        text.contains("| reference | host CPU") && text.contains("| baseline |"),
        "{text}"
    );
    assert!(
        text.contains("| cpu | host CPU") && text.contains("| same |"),
        "{text}"
    );
    assert!(text.contains("random weights, seed 7"));
}

#[test]
fn a_divergence_is_loud_and_fails_the_run() {
    let model = fixture("qwen3-next-tiny");
    let model = model.to_str().unwrap();
    let ok = bench(&[
        "--model",
        model,
        "--gdn-backend",
        "cpu",
        "--json",
        "--in-process",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let row = &json_lines(&ok)[0];
    assert_eq!(row["rss_scope"], "cumulative");
    let tokens: Vec<String> = ids(&row["tokens"]).iter().map(u64::to_string).collect();

    // The true tokens pass; one changed token fails with the index of the difference.
    let good = tokens.join(",");
    let ok = bench(&[
        "--model",
        model,
        "--gdn-backend",
        "cpu",
        "--expect-tokens",
        &good,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let mut wrong = tokens.clone();
    wrong[2] = ((wrong[2].parse::<u64>().unwrap() + 1) % 1000).to_string();
    let out = bench(&[
        "--model",
        model,
        "--gdn-backend",
        "all",
        "--expect-tokens",
        &wrong.join(","),
    ]);
    assert!(!out.status.success(), "a divergence must fail the run");
    let err = stderr(&out);
    assert!(err.contains("DIVERGENCE"), "{err}");
    assert!(err.contains("at token 2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("**DIFFERENT from token 2**"), "{table}");
}

#[test]
fn bad_flags_fail_cleanly() {
    let model = fixture("qwen3.5-tiny");
    let model = model.to_str().unwrap();
    assert_fails("bench", &[], "--model");
    assert_fails(
        "bench",
        &["--model", model, "--gdn-backend", "tpu"],
        "unknown backend `tpu`",
    );
    // A backend the project knows but this build lacks (cuda and xrt without their features).
    let registry = hybrid_decode::gdn_registry();
    if let Some(missing) = registry.entries().iter().find(|e| e.availability.is_err()) {
        let args = ["--model", model, "--gdn-backend", missing.name];
        assert_fails("bench", &args, "not available");
    }
    assert_fails("bench", &["--model", model, "--repeats", "0"], "--repeats");
    assert_fails(
        "bench",
        &["--model", model, "--gen-tokens", "x"],
        "--gen-tokens",
    );
    assert_fails("bench", &["--model", "/no/such/model"], "/no/such/model");
    assert_fails("bench", &["--config", "x.json"], "--random-weights");
    assert_fails("bench", &["--frobnicate"], "unknown flag");
    assert_fails(
        "bench",
        &["--model", model, "--device", "gpu"],
        "expected cpu, cuda or cuda:N",
    );
    if !cfg!(feature = "cuda-full") {
        let args = ["--model", model, "--device", "cuda"];
        assert_fails("bench", &args, "--features cuda-full");
    }
}

/// Issue 13 item 7: a run longer than the model's context names bench's own flags.
#[test]
fn a_run_past_the_context_names_benchs_flags() {
    let fixture = common::fixture("qwen3.5-tiny");
    common::assert_fails(
        "bench",
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--gdn-backend",
            "reference",
            "--prompt-tokens",
            "500",
            "--gen-tokens",
            "100",
        ],
        "--prompt-tokens 500 + --gen-tokens 100 exceeds",
    );
}

/// Issue 13 item 8: outputs and thread counts that would fail only after the run are refused
/// before it.
#[test]
fn bad_outputs_and_thread_counts_are_refused_before_the_run() {
    let fixture = common::fixture("qwen3.5-tiny");
    common::assert_fails(
        "bench",
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--svg",
            "/no/such/dir/chart.svg",
        ],
        "--svg /no/such/dir/chart.svg: the directory /no/such/dir does not exist",
    );
    common::assert_fails(
        "gdn_bench",
        &["--threads", "0"],
        "--threads 0 must be between 1 and",
    );
}
