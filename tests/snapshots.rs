//! Snapshots of the whole hybrid state (KV caches + canonical GDN state + tokens + position):
//! resuming from one gives the tokens of an uninterrupted run on every fixture and backend
//! (greedy and seeded sampling), and corrupt, truncated, foreign or incompatible files are
//! refused with a clear error without touching the model, and nothing is ever overwritten
//! unless asked.

mod common;

use std::path::Path;

use candle_core::DType;
use common::*;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::snapshot::{LayerState, MAGIC};
use hybrid_decode::model::{
    HybridModel, LoadOptions, ModelConfig, ModelError, Snapshot, SnapshotError, WriteMode,
};
use hybrid_decode::runtime::Sampler;
use hybrid_decode::Engine;
use serde_json::json;

/// A snapshot of `fixture` on `backend` after `n` greedy tokens, and the history it holds.
fn snapshot_after(fixture: &str, backend: &str, n: usize) -> (Snapshot, Vec<u32>) {
    let mut engine = load(fixture, backend);
    let (generated, _) = generate(&mut engine, greedy(), PROMPT, n);
    let history = [PROMPT, &generated].concat();
    let snapshot = engine
        .model_mut()
        .snapshot(&history, json!({"note": "test"}))
        .expect("snapshot");
    (snapshot, history)
}

fn write_new(snapshot: &Snapshot, path: &Path) {
    snapshot
        .write(path, WriteMode::CreateNew)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn resume_from_disk_equals_an_uninterrupted_run_on_every_fixture_and_backend() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backends = backends();
    for fixture in FIXTURES {
        let mut whole = load(fixture, "reference");
        let (uninterrupted, _) = generate(&mut whole, greedy(), PROMPT, 12);
        for (i, backend) in backends.iter().enumerate() {
            let (snapshot, history) = snapshot_after(fixture, backend, 5);
            assert_eq!(snapshot.state.position, history.len() - 1);
            assert_eq!(snapshot.pending(), &history[history.len() - 1..]);
            let path = dir.path().join(format!("{fixture}-{backend}.snap"));
            write_new(&snapshot, &path);
            let read = Snapshot::read(&path).expect("read back");
            assert_eq!(read.state, snapshot.state, "{fixture}/{backend}: state");
            assert_eq!(read.tokens, history);
            assert_eq!(read.fingerprint, snapshot.fingerprint);
            assert_eq!(read.gdn_backend, *backend);
            assert_eq!(read.app, json!({"note": "test"}));

            // Resume on a fresh model, on another backend than the one that saved (the state is
            // canonical), with no prefill.
            let other = backends[(i + 1) % backends.len()];
            let mut engine = load(fixture, other);
            engine.model_mut().restore(&read).expect("restore");
            assert_eq!(
                engine.model_mut().export_state().expect("export"),
                read.state
            );
            let rest = resume(&mut engine, greedy(), &history, 7);
            assert_eq!(
                [&history[PROMPT.len()..], &rest].concat(),
                uninterrupted,
                "{fixture}: saved on {backend}, resumed on {other}"
            );
        }
    }
}

#[test]
fn seeded_sampling_resumes_exactly_with_the_sampler_position() {
    for fixture in FIXTURES {
        let mut whole = load(fixture, "cpu");
        let (uninterrupted, _) = generate(&mut whole, Sampler::new(seeded()).unwrap(), PROMPT, 14);

        let mut engine = load(fixture, "cpu");
        let (first, sampler) = generate(&mut engine, Sampler::new(seeded()).unwrap(), PROMPT, 6);
        let history = [PROMPT, &first].concat();
        let bytes = engine
            .model_mut()
            .snapshot(&history, json!(null))
            .expect("snapshot")
            .to_bytes();
        let snapshot = Snapshot::from_bytes(&bytes, Path::new("mem.snap")).expect("decode");

        let mut engine = load(fixture, "cpu");
        engine.model_mut().restore(&snapshot).expect("restore");
        let resumed = Sampler::resume_at(seeded(), sampler.rng_position()).unwrap();
        let rest = resume(&mut engine, resumed, &history, 8);
        assert_eq!([first, rest].concat(), uninterrupted, "{fixture}");
    }
}

#[test]
fn the_snapshot_holds_every_layer_in_the_documented_layout() {
    let (snapshot, history) = snapshot_after("qwen3.5-tiny", "cpu", 3);
    let config = ModelConfig::from_dir(&fixture("qwen3.5-tiny")).unwrap();
    let spec = config.gdn_spec();
    assert_eq!(snapshot.state.layers.len(), config.layer_types.len());
    for layer in &snapshot.state.layers {
        match layer {
            LayerState::Gdn { spec: s, state } => {
                assert_eq!(*s, spec);
                assert_eq!(state.conv.len(), spec.conv_dim() * (spec.conv_kernel - 1));
                assert_eq!(
                    state.recurrent.len(),
                    spec.num_v_heads * spec.head_k_dim * spec.head_v_dim
                );
                assert!(state.recurrent.iter().any(|&x| x != 0.0), "state is live");
            }
            LayerState::Attention(kv) => {
                assert_eq!(kv.cached, history.len() - 1);
                assert_eq!(
                    kv.keys.len(),
                    config.num_key_value_heads * kv.cached * config.head_dim
                );
                assert_eq!(kv.values.len(), kv.keys.len());
            }
        }
    }
    // The file layout: magic, version 1, zero flags, and a CRC-32 over everything before it.
    let bytes = snapshot.to_bytes();
    assert_eq!(bytes[..8], MAGIC);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 0);
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let data_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 32 + header_len + data_len + 4);
    let header: serde_json::Value = serde_json::from_slice(&bytes[32..32 + header_len]).unwrap();
    assert_eq!(header["format"], "hybrid-decode snapshot");
    assert_eq!(header["position"], history.len() - 1);
    assert_eq!(header["model"]["weights_dtype"], "f32");
}

/// Rewrites the CRC so that a deliberately edited file is only wrong where the test wants.
fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - 4;
    let crc = hybrid_decode::model::snapshot::checksum::crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

fn read_error(bytes: &[u8]) -> SnapshotError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.snap");
    std::fs::write(&path, bytes).unwrap();
    let err = Snapshot::read(&path).expect_err("must be refused");
    assert!(
        err.to_string().contains("bad.snap"),
        "the message names the file: {err}"
    );
    err
}

#[test]
fn corrupt_truncated_and_foreign_files_are_refused() {
    let (snapshot, _) = snapshot_after("qwen3-next-tiny", "cpu", 3);
    let good = snapshot.to_bytes();
    let header_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;

    // One flipped bit in the data, in the header, and in the checksum itself.
    for at in [good.len() - 20, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let err = read_error(&bad);
        assert!(
            matches!(err, SnapshotError::Corrupt { .. }) && err.to_string().contains("CRC-32"),
            "byte {at}: {err}"
        );
    }
    // Truncated anywhere: inside the magic, the preamble, the header, the data, the trailer.
    for len in [
        3,
        20,
        32 + header_len / 2,
        good.len() / 2 + header_len,
        good.len() - 1,
    ] {
        let err = read_error(&good[..len]);
        assert!(
            matches!(err, SnapshotError::Truncated { .. }),
            "{len}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    // Trailing bytes after the checksum.
    let mut long = good.clone();
    long.extend_from_slice(b"xx");
    assert!(matches!(read_error(&long), SnapshotError::Corrupt { .. }));
    // Not a snapshot at all.
    let err = read_error(b"{\"model_type\": \"qwen3_next\"}");
    assert!(matches!(err, SnapshotError::NotASnapshot { .. }), "{err}");
    assert!(err.to_string().contains("not a hybrid-decode snapshot"));
    // A future version, correctly sealed: refused by version, not by checksum.
    let mut future = good.clone();
    future[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut future);
    let err = read_error(&future);
    assert!(
        matches!(
            err,
            SnapshotError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    // A sealed file whose header lies about a section is still refused.
    let text = String::from_utf8(good[32..32 + header_len].to_vec()).unwrap();
    let lying = text.replacen("\"len\":", "\"len\":1", 1);
    let mut bad = good[..32].to_vec();
    bad[16..24].copy_from_slice(&(lying.len() as u64).to_le_bytes());
    bad.extend_from_slice(lying.as_bytes());
    bad.extend_from_slice(&good[32 + header_len..]);
    reseal(&mut bad);
    assert!(matches!(read_error(&bad), SnapshotError::Corrupt { .. }));
}

/// `restore` must fail with `expected` in the message and leave the model able to generate
/// exactly as before.
fn assert_restore_refused(engine: &mut Engine, snapshot: &Snapshot, expected: &str) {
    let before = engine.model_mut().export_state().unwrap();
    let err = engine
        .model_mut()
        .restore(snapshot)
        .expect_err("must be refused");
    assert!(
        err.to_string().contains(expected),
        "expected `{expected}` in: {err}"
    );
    assert_eq!(
        engine.model_mut().export_state().unwrap(),
        before,
        "model untouched"
    );
}

#[test]
fn snapshots_of_another_model_config_weights_or_dtype_are_refused() {
    let (snapshot, _) = snapshot_after("qwen3.5-tiny", "cpu", 3);
    // Another architecture and config.
    let mut next = load("qwen3-next-tiny", "cpu");
    assert_restore_refused(&mut next, &snapshot, "different model");
    assert_restore_refused(&mut next, &snapshot, "config");
    // Same config, other weights: the fixture's config with seeded random weights.
    let config = ModelConfig::from_dir(&fixture("qwen3.5-tiny")).unwrap();
    let gdn = || {
        hybrid_decode::gdn_registry()
            .create("cpu", &BackendOptions::default())
            .unwrap()
    };
    let random = HybridModel::random(config.clone(), &LoadOptions::default(), gdn(), 7).unwrap();
    let mut random = Engine::new(random);
    let err = random.model_mut().restore(&snapshot).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("weights") && !message.contains("config ("),
        "{message}"
    );
    assert!(matches!(
        err,
        ModelError::Snapshot(SnapshotError::ForeignModel { .. })
    ));
    // Same model, other weight dtype.
    let bf16 = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    let mut bf16 = Engine::new(HybridModel::load(&fixture("qwen3.5-tiny"), &bf16, gdn()).unwrap());
    assert_restore_refused(&mut bf16, &snapshot, "--dtype f32");
    // Random weights are not bf16-exact, so their weight sample changes with the dtype too: the
    // error still names the dtype (the fix), not "another model".
    let random_f32 = HybridModel::random(config.clone(), &LoadOptions::default(), gdn(), 7);
    let mut random_f32 = Engine::new(random_f32.unwrap());
    let (generated, _) = generate(&mut random_f32, greedy(), PROMPT, 2);
    let history = [PROMPT, &generated].concat();
    let f32_snapshot = random_f32
        .model_mut()
        .snapshot(&history, json!(null))
        .unwrap();
    let bf16_options = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    let random_bf16 = HybridModel::random(config.clone(), &bf16_options, gdn(), 7).unwrap();
    assert_restore_refused(&mut Engine::new(random_bf16), &f32_snapshot, "--dtype f32");
    // A state whose parts disagree (KV cache length ≠ position) is refused as a whole.
    let mut inconsistent = snapshot.clone();
    inconsistent.state.position -= 1;
    let mut same = load("qwen3.5-tiny", "cpu");
    assert_restore_refused(&mut same, &inconsistent, "caches");
}

#[test]
fn existing_files_are_never_overwritten_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.snap");
    let (first, _) = snapshot_after("qwen3.5-tiny", "cpu", 2);
    let (second, _) = snapshot_after("qwen3.5-tiny", "cpu", 4);
    write_new(&first, &path);
    let on_disk = std::fs::read(&path).unwrap();

    let err = second.write(&path, WriteMode::CreateNew).unwrap_err();
    assert!(matches!(err, SnapshotError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), on_disk, "left untouched");

    second
        .write(&path, WriteMode::Overwrite)
        .expect("overwrite");
    assert_eq!(std::fs::read(&path).unwrap(), second.to_bytes());
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.snap"]);
    // A directory that does not exist is an error naming the file, not a panic.
    let err = first
        .write(&dir.path().join("no/such/dir/x.snap"), WriteMode::CreateNew)
        .unwrap_err();
    assert!(err.to_string().contains("x.snap"), "{err}");
}

// ---- The generate example's flags ----

#[test]
fn generate_save_state_then_resume_equals_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    let file = path.to_str().unwrap();
    for sampling in [
        &[][..],
        &["--temperature", "0.9", "--top-k", "40", "--seed", "5"][..],
    ] {
        let _ = std::fs::remove_file(&path);
        let whole = run(
            "generate",
            &[&["--max-new-tokens", "14", "--json"], sampling].concat(),
        );
        assert!(whole.status.success(), "{}", stderr(&whole));
        let first = run(
            "generate",
            &[
                &["--max-new-tokens", "5", "--save-state", file, "--json"],
                sampling,
            ]
            .concat(),
        );
        assert!(first.status.success(), "{}", stderr(&first));
        assert_eq!(last_json(&first)["saved_state"], file);
        // Resume with no sampling flags: the snapshot carries the sampler.
        let rest = run(
            "generate",
            &["--resume", file, "--max-new-tokens", "9", "--json"],
        );
        assert!(rest.status.success(), "{}", stderr(&rest));
        let joined = [
            ids(&last_json(&first)["generated_ids"]),
            ids(&last_json(&rest)["generated_ids"]),
        ]
        .concat();
        assert_eq!(
            joined,
            ids(&last_json(&whole)["generated_ids"]),
            "{sampling:?}"
        );
        assert_eq!(last_json(&rest)["resumed_from"], file);
    }
}

#[test]
fn generate_refuses_to_overwrite_and_bad_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    let file = path.to_str().unwrap();
    let out = run("generate", &["--max-new-tokens", "3", "--save-state", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = std::fs::read(&path).unwrap();
    assert_fails(
        "generate",
        &["--max-new-tokens", "4", "--save-state", file],
        "exists",
    );
    assert_eq!(std::fs::read(&path).unwrap(), saved);
    let out = run(
        "generate",
        &["--max-new-tokens", "4", "--save-state", file, "--force"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(&path).unwrap(), saved, "--force replaced it");

    assert_fails(
        "generate",
        &["--resume", file, "--prompt", "x"],
        "drop --prompt",
    );
    assert_fails(
        "generate",
        &["--save-state", file, "--max-new-tokens", "0", "--force"],
        "--max-new-tokens",
    );
    let other = fixture("qwen3.5-tiny");
    assert_fails(
        "generate",
        &["--resume", file, "--model", other.to_str().unwrap()],
        "different model",
    );
    let mut corrupt = std::fs::read(&path).unwrap();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, corrupt).unwrap();
    assert_fails("generate", &["--resume", bad.to_str().unwrap()], "corrupt");
    assert_fails("generate", &["--resume", "/no/such.snap"], "/no/such.snap");
}

/// A reader that has gone (`generate … --save-state s | head -c 5`) ends the text stream but
/// neither panics nor skips the snapshot (issue 13, item 1). The pipe is closed before generate
/// writes anything, so its writes fail for certain (a short text would otherwise fit the pipe's
/// buffer before the reader leaves).
#[test]
fn closed_stdout_still_saves_the_snapshot() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s.hdsnap");
    let mut child = Command::new(example_binary("generate"))
        .args(["--max-new-tokens", "100", "--save-state"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn generate");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("saved the state"), "{err}");
    assert!(
        Snapshot::read(&file).is_ok(),
        "the snapshot must be complete"
    );
}

/// `good` with its header JSON replaced by `edit(header)`, lengths fixed and resealed.
fn with_header(good: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let header_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&good[32..32 + header_len]).unwrap();
    edit(&mut header);
    let text = header.to_string();
    let mut out = good[..32].to_vec();
    out[16..24].copy_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&good[32 + header_len..]);
    reseal(&mut out);
    out
}

/// Issue 13 item 10: what the checksum cannot catch in a resealed file.
#[test]
fn resealed_snapshots_with_bad_values_overlaps_or_another_architecture_are_refused() {
    let (snapshot, _) = snapshot_after("qwen3-next-tiny", "cpu", 3);
    let good = snapshot.to_bytes();
    let header_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[32..32 + header_len]).unwrap();
    let attention = header["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "attention")
        .expect("an attention layer")
        .clone();

    // An infinite value in a KV cache.
    let at = 32 + header_len + 4 * attention["keys"]["offset"].as_u64().unwrap() as usize;
    let mut inf = good.clone();
    inf[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    reseal(&mut inf);
    let err = read_error(&inf);
    assert!(err.to_string().contains("inf"), "{err}");

    // Two sections over the same bytes.
    let overlapping = with_header(&good, |h| {
        let layer = attention["layer"].as_u64().unwrap() as usize;
        h["layers"][layer]["values"]["offset"] = attention["keys"]["offset"].clone();
    });
    let err = read_error(&overlapping);
    assert!(err.to_string().contains("overlap"), "{err}");

    // Another architecture's name on an otherwise matching snapshot.
    let renamed = with_header(&good, |h| h["model"]["architecture"] = "Qwen35".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("renamed.snap");
    std::fs::write(&path, renamed).unwrap();
    let snapshot = Snapshot::read(&path).expect("well-formed");
    let mut engine = load("qwen3-next-tiny", "cpu");
    assert_restore_refused(&mut engine, &snapshot, "it is a Qwen35 snapshot");
}

#[test]
fn temporary_files_of_killed_saves_are_cleaned_up_by_the_next_save() {
    let (snapshot, _) = snapshot_after("qwen3.5-tiny", "cpu", 2);
    let dir = tempfile::tempdir().unwrap();
    // A pid that does not run (beyond Linux's default pid_max), and this process's own.
    let dead = dir.path().join(".s.snap.4999999.0.tmp");
    let ours = dir
        .path()
        .join(format!(".s.snap.{}.7.tmp", std::process::id()));
    let foreign = dir.path().join(".other.snap.4999999.0.tmp");
    for path in [&dead, &ours, &foreign] {
        std::fs::write(path, b"partial").unwrap();
    }
    write_new(&snapshot, &dir.path().join("s.snap"));
    assert!(!dead.exists(), "a dead save's temporary file is removed");
    assert!(ours.exists(), "a live process's temporary file is kept");
    assert!(foreign.exists(), "another snapshot's files are not touched");
}

/// Issue 13 items 7 and 12: a bad sampler value inside a snapshot is blamed on the snapshot,
/// not on a flag nobody gave, and a resumed run's summary says where its prompt came from.
#[test]
fn resumed_runs_name_the_snapshot_for_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    let file = path.to_str().unwrap();
    let first = run(
        "generate",
        &[
            "--max-new-tokens",
            "3",
            "--save-state",
            file,
            "--temperature",
            "0.8",
            "--seed",
            "3",
        ],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let rest = run("generate", &["--resume", file, "--max-new-tokens", "2"]);
    assert!(rest.status.success(), "{}", stderr(&rest));
    assert!(
        stderr(&rest).contains("restored from the snapshot"),
        "{}",
        stderr(&rest)
    );

    let good = std::fs::read(&path).unwrap();
    let bad = with_header(&good, |h| {
        h["app"]["sampler"]["temperature"] = (-3.0).into()
    });
    let bad_path = dir.path().join("bad-sampler.snap");
    std::fs::write(&bad_path, bad).unwrap();
    let out = run("generate", &["--resume", bad_path.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("app.sampler.temperature is -3"), "{err}");
    assert!(!err.contains("invalid --temperature"), "{err}");
}
