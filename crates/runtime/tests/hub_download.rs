//! The online path of `--model owner/name` against a stand-in hub on 127.0.0.1: a minimal
//! HTTP server that answers hf-hub's requests the way huggingface.co does (`x-repo-commit`,
//! `etag`, `content-range` on a `Range: bytes=0-0` probe, then the ranged body; 404 for
//! files a repo lacks, 401 for gated repos). It serves only this test's files, only on the
//! loopback interface, and stops after the test or after 60 s, whichever comes first.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hybrid_runtime::{resolve_model, HubOptions, ModelOrigin, RuntimeError};

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Serves `files` (`"owner/name/file"` → content); repos under `gated/` answer 401.
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &files, &log),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            endpoint,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, files: &HashMap<String, Vec<u8>>, log: &Mutex<Vec<String>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range_start = 0usize;
    let mut probe = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(range) = lower.strip_prefix("range: bytes=") {
            let range = range.trim();
            probe = range == "0-0";
            range_start = range
                .trim_end_matches('-')
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap_or(0);
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    log.lock()
        .unwrap()
        .push(format!("{}{path}", if probe { "probe " } else { "get " }));
    // /{owner}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let key = match parts.as_slice() {
        [owner, name, "resolve", _rev, file] => format!("{owner}/{name}/{file}"),
        _ => String::new(),
    };
    let mut out = stream;
    let response = match files.get(&key) {
        _ if key.starts_with("gated/") => {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .as_bytes()
                .to_vec()
        }
        Some(body) => {
            let size = body.len();
            let end = if probe { 0 } else { size - 1 };
            let chunk = &body[range_start..=end];
            let mut r = format!(
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\netag: \"{:x}\"\r\n\
                 content-range: bytes {range_start}-{end}/{size}\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                fingerprint(body),
                chunk.len()
            )
            .into_bytes();
            r.extend_from_slice(chunk);
            r
        }
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .as_bytes()
            .to_vec(),
    };
    let _ = out.write_all(&response);
}

/// A content hash for the etag (blobs are named by it).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn options(cache: &std::path::Path, endpoint: &str) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        offline: false,
        progress: false,
        endpoint: endpoint.to_owned(),
        token: None,
        revision: "main".into(),
    }
}

fn repo_files(repo: &str, files: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(name, content)| (format!("{repo}/{name}"), content.as_bytes().to_vec()))
        .collect()
}

#[test]
fn downloads_config_tokenizer_and_every_shard_then_reuses_the_cache() {
    let index = r#"{"weight_map": {"x": "model-00002-of-00002.safetensors", "y": "model-00001-of-00002.safetensors"}}"#;
    let hub = FakeHub::start(repo_files(
        "org/sharded",
        &[
            ("config.json", r#"{"vocab_size": 1024}"#),
            ("tokenizer.json", "TOKENIZER"),
            ("tokenizer_config.json", r#"{"eos_token": "</s>"}"#),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", "first shard bytes"),
            ("model-00002-of-00002.safetensors", "second shard bytes"),
        ],
    ));
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint);

    let files = resolve_model("org/sharded", &opts).unwrap();
    assert_eq!(
        files.origin,
        ModelOrigin::Hub {
            repo_id: "org/sharded".into()
        }
    );
    let snapshot = cache
        .path()
        .join("models--org--sharded/snapshots")
        .join(COMMIT);
    assert_eq!(files.dir, snapshot);
    assert_eq!(
        std::fs::read_to_string(&files.config).unwrap(),
        r#"{"vocab_size": 1024}"#
    );
    assert_eq!(
        std::fs::read_to_string(files.tokenizer.as_ref().unwrap()).unwrap(),
        "TOKENIZER"
    );
    assert!(files.tokenizer_config.is_some());
    assert_eq!(files.generation_config, None, "404 means the repo has none");
    assert_eq!(files.chat_template, None);
    let shards: Vec<String> = files
        .weights
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(shards, ["first shard bytes", "second shard bytes"]);
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--org--sharded/refs/main")).unwrap(),
        COMMIT
    );
    let first_round = hub.requests();
    assert!(first_round
        .contains(&"get /org/sharded/resolve/main/model-00002-of-00002.safetensors".to_string()));
    assert!(
        first_round.contains(&"probe /org/sharded/resolve/main/generation_config.json".to_string())
    );

    // Second run: files already in the cache are not fetched again; only the absent
    // optional files are asked for.
    let again = resolve_model("org/sharded", &opts).unwrap();
    assert_eq!(again.weights, files.weights);
    let second_round: Vec<String> = hub.requests()[first_round.len()..].to_vec();
    assert_eq!(
        second_round,
        [
            "probe /org/sharded/resolve/main/generation_config.json",
            "probe /org/sharded/resolve/main/chat_template.jinja",
        ]
    );

    // And offline, the same files come from the cache without any request.
    let before = hub.requests().len();
    let cached = resolve_model(
        "org/sharded",
        &HubOptions {
            offline: true,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(cached.weights, files.weights);
    assert_eq!(hub.requests().len(), before);
}

#[test]
fn single_file_weights_and_hub_errors() {
    let mut files = repo_files(
        "org/single",
        &[
            ("config.json", "{}"),
            ("model.safetensors", "weights"),
            ("generation_config.json", "{}"),
        ],
    );
    files.extend(repo_files("org/noweights", &[("config.json", "{}")]));
    files.extend(repo_files("gated/model", &[("config.json", "{}")]));
    let hub = FakeHub::start(files);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint);

    let single = resolve_model("org/single", &opts).unwrap();
    assert_eq!(single.weights.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&single.weights[0]).unwrap(),
        "weights"
    );
    assert!(single.generation_config.is_some());

    let hub_error = |repo: &str| {
        let err = resolve_model(repo, &opts).unwrap_err();
        assert!(
            matches!(err, RuntimeError::HubDownload { .. }),
            "{repo}: {err:?}"
        );
        err.to_string()
    };
    let msg = hub_error("org/noweights");
    assert!(
        msg.contains("org/noweights") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let msg = hub_error("org/absent");
    assert!(msg.contains("config.json"), "{msg}");
    let msg = hub_error("gated/model");
    assert!(msg.contains("401") && msg.contains("HF_TOKEN"), "{msg}");
}
