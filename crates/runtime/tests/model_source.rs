//! `--model` resolution: local directories, and hub repos from an HF cache laid out exactly
//! as hf-hub / huggingface_hub lay it out (blobs named by etag, snapshot entries symlinked to
//! them, refs/main naming the snapshot), offline and with the hub unreachable.

use std::path::{Path, PathBuf};

use hybrid_runtime::source::{cached_model, local_model};
use hybrid_runtime::{resolve_model, HubOptions, ModelOrigin, RuntimeError};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "tiny-org/tiny-hybrid";

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        offline: true,
        progress: false,
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        revision: "main".into(),
    }
}

/// Writes `files` into the cache for `repo` the way hf-hub does; returns the snapshot dir.
fn cache_repo(cache: &Path, repo: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (i, (name, content)) in files.iter().enumerate() {
        let etag = format!("etag{i:04}");
        std::fs::write(blobs.join(&etag), content).unwrap();
        symlink(&Path::new("../../blobs").join(&etag), &snapshot.join(name));
    }
    snapshot
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) {
    // Where symlinks need privileges, hf-hub moves the blob into the snapshot instead.
    let blob = link.parent().unwrap().join(target);
    std::fs::copy(blob, link).unwrap();
}

const INDEX: &str = r#"{"metadata": {"total_size": 8},
  "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                 "b.weight": "model-00002-of-00002.safetensors",
                 "c.weight": "model-00001-of-00002.safetensors"}}"#;

#[test]
fn offline_resolves_a_sharded_repo_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cache_repo(
        cache.path(),
        REPO,
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("generation_config.json", "{}"),
            ("model.safetensors.index.json", INDEX),
            ("model-00002-of-00002.safetensors", "w2"),
            ("model-00001-of-00002.safetensors", "w1"),
        ],
    );
    let files = resolve_model(REPO, &offline(cache.path())).unwrap();
    assert_eq!(files.dir, snapshot);
    assert_eq!(files.config, snapshot.join("config.json"));
    assert_eq!(std::fs::read_to_string(&files.config).unwrap(), "{}");
    assert_eq!(files.tokenizer, Some(snapshot.join("tokenizer.json")));
    assert_eq!(
        files.generation_config,
        Some(snapshot.join("generation_config.json"))
    );
    assert_eq!(files.tokenizer_config, None);
    assert_eq!(files.chat_template, None);
    assert_eq!(
        files.weights,
        vec![
            snapshot.join("model-00001-of-00002.safetensors"),
            snapshot.join("model-00002-of-00002.safetensors"),
        ]
    );
    assert_eq!(std::fs::read_to_string(&files.weights[1]).unwrap(), "w2");
    match files.origin {
        ModelOrigin::HubCache { repo_id, reason } => {
            assert_eq!(repo_id, REPO);
            assert!(reason.contains("HF_HUB_OFFLINE"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn offline_single_file_weights() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cache_repo(
        cache.path(),
        REPO,
        &[("config.json", "{}"), ("model.safetensors", "w")],
    );
    let files = cached_model(REPO, &offline(cache.path()), "test".into()).unwrap();
    assert_eq!(files.weights, vec![snapshot.join("model.safetensors")]);
}

fn not_in_cache(err: RuntimeError) -> String {
    assert!(matches!(err, RuntimeError::NotInCache { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn offline_errors_name_repo_cache_and_what_is_missing() {
    let cache = tempfile::tempdir().unwrap();
    let opts = offline(cache.path());
    let cache_str = cache.path().display().to_string();

    let msg = not_in_cache(resolve_model(REPO, &opts).unwrap_err());
    assert!(msg.contains(REPO) && msg.contains(&cache_str), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(msg.contains("models--tiny-org--tiny-hybrid"), "{msg}");

    // Snapshot present but a shard missing (an interrupted download).
    cache_repo(
        cache.path(),
        REPO,
        &[
            ("config.json", "{}"),
            ("model.safetensors.index.json", INDEX),
            ("model-00001-of-00002.safetensors", "w1"),
        ],
    );
    let msg = not_in_cache(resolve_model(REPO, &opts).unwrap_err());
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");

    // No ref for the revision.
    let repo_dir = cache.path().join("models--tiny-org--tiny-hybrid");
    std::fs::remove_file(repo_dir.join("refs/main")).unwrap();
    let msg = not_in_cache(resolve_model(REPO, &opts).unwrap_err());
    assert!(msg.contains("refs/main"), "{msg}");

    // A ref naming a snapshot that is gone.
    std::fs::write(repo_dir.join("refs/main"), "feedface").unwrap();
    let msg = not_in_cache(resolve_model(REPO, &opts).unwrap_err());
    assert!(msg.contains("feedface"), "{msg}");

    // A commit hash as the revision needs no ref.
    let by_commit = HubOptions {
        revision: COMMIT.into(),
        ..opts.clone()
    };
    let msg = not_in_cache(resolve_model(REPO, &by_commit).unwrap_err());
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn unreachable_hub_falls_back_to_the_cache() {
    // A loopback port nobody listens on: connections are refused at once.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cache = tempfile::tempdir().unwrap();
    let online = HubOptions {
        offline: false,
        endpoint: format!("http://127.0.0.1:{port}"),
        ..offline(cache.path())
    };

    // Not cached: the error says the hub is unreachable and names repo and cache.
    let msg = not_in_cache(resolve_model(REPO, &online).unwrap_err());
    assert!(msg.contains("unreachable") && msg.contains(REPO), "{msg}");

    // Cached, with optional files absent (so hf-hub must ask the hub for them): served from
    // the cache, and the origin says why.
    let snapshot = cache_repo(
        cache.path(),
        REPO,
        &[("config.json", "{}"), ("model.safetensors", "w")],
    );
    let files = resolve_model(REPO, &online).unwrap();
    assert_eq!(files.config, snapshot.join("config.json"));
    match files.origin {
        ModelOrigin::HubCache { reason, .. } => assert!(reason.contains("unreachable"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn local_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.to_str().unwrap();

    let err = resolve_model(spec, &offline(d)).unwrap_err();
    assert!(
        matches!(err, RuntimeError::ModelFileMissing { ref file, .. } if file == "config.json"),
        "{err:?}"
    );
    assert!(err.to_string().contains(spec), "{err}");

    std::fs::write(d.join("config.json"), "{}").unwrap();
    let err = resolve_model(spec, &offline(d)).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    std::fs::write(d.join("model.safetensors"), "w").unwrap();
    std::fs::write(d.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(d.join("chat_template.jinja"), "x").unwrap();
    let files = resolve_model(spec, &offline(d)).unwrap();
    assert_eq!(files.origin, ModelOrigin::LocalDir);
    assert_eq!(files.dir, d);
    assert_eq!(files.weights, vec![d.join("model.safetensors")]);
    assert_eq!(
        files.tokenizer_config,
        Some(d.join("tokenizer_config.json"))
    );
    assert_eq!(files.chat_template, Some(d.join("chat_template.jinja")));
    assert_eq!(files.tokenizer, None);

    // The index wins over a single file, and every shard must be there.
    std::fs::write(d.join("model.safetensors.index.json"), INDEX).unwrap();
    std::fs::write(d.join("model-00001-of-00002.safetensors"), "w1").unwrap();
    let err = local_model(d).unwrap_err();
    assert!(
        matches!(err, RuntimeError::ModelFileMissing { ref file, .. } if file == "model-00002-of-00002.safetensors"),
        "{err:?}"
    );
    std::fs::write(d.join("model-00002-of-00002.safetensors"), "w2").unwrap();
    assert_eq!(local_model(d).unwrap().weights.len(), 2);

    // An index that points outside the directory is refused.
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = local_model(d).unwrap_err();
    assert!(
        matches!(err, RuntimeError::UnsafeShardName { .. }),
        "{err:?}"
    );
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"metadata": {}}"#,
    )
    .unwrap();
    let err = local_model(d).unwrap_err();
    assert!(err.to_string().contains("`weight_map`"), "{err}");
}

#[test]
fn specs_that_are_neither_path_nor_repo() {
    let dir = tempfile::tempdir().unwrap();
    let opts = offline(dir.path());
    for spec in ["no-such-dir", "a/b/c", "./missing/dir"] {
        let err = resolve_model(spec, &opts).unwrap_err();
        assert!(
            matches!(err, RuntimeError::ModelNotFound { .. }),
            "{spec}: {err:?}"
        );
        assert!(
            err.to_string().contains("--model") && err.to_string().contains(spec),
            "{err}"
        );
    }
    let file = dir.path().join("config.json");
    std::fs::write(&file, "{}").unwrap();
    let err = resolve_model(file.to_str().unwrap(), &opts).unwrap_err();
    assert!(
        matches!(err, RuntimeError::ModelNotADirectory { .. }),
        "{err:?}"
    );
}

/// Issue 13 item 7: a config.json that cannot be looked at is reported with the OS's reason,
/// not as missing; a mistyped path under an existing directory is not sent to the hub.
#[cfg(unix)]
#[test]
fn unreadable_files_and_mistyped_local_paths_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    // config.json -> loop -> config.json: a symlink loop.
    std::os::unix::fs::symlink(model.join("loop"), model.join("config.json")).unwrap();
    std::os::unix::fs::symlink(model.join("config.json"), model.join("loop")).unwrap();
    let err = local_model(&model).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(!err.contains("is missing"), "{err}");

    let typo = dir.path().join("modle");
    let spec = format!("{}/{}", dir.path().display(), "modle");
    let hub =
        HubOptions::from_vars(|name| (name == "HOME").then(|| "/nonexistent".to_string())).unwrap();
    let err = resolve_model(&spec, &hub).unwrap_err().to_string();
    assert!(
        err.contains(&*typo.to_string_lossy()) && err.contains("local path"),
        "{err}"
    );
}
