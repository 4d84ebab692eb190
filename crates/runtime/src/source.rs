//! Where a model comes from: `--model` as a local directory or a Hugging Face hub repo id,
//! resolved to the local files the model loader reads ([`ModelFiles`]).
//!
//! * An existing path is used as it is; it must be a directory holding `config.json` and the
//!   weights (`model.safetensors`, or `model.safetensors.index.json` and every shard it lists).
//! * Otherwise `owner/name` is a hub repo: its files are fetched with `hf-hub`'s blocking
//!   client into the standard HF cache (`models--owner--name/{blobs,refs,snapshots}`), shared
//!   with Python's `huggingface_hub`. Files already cached are not downloaded again.
//! * Offline — `HF_HUB_OFFLINE=1`, or the hub cannot be reached — the same files are taken
//!   from the cache snapshot that `refs/<revision>` names, without any network access.
//!
//! A `.gguf` file (or a directory holding just one, without `config.json`) is recognised
//! first by [`gguf_file`]; its tokenizer and configs come from its metadata
//! ([`GgufVocab`](crate::GgufVocab)).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::chat::{CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE};
use crate::error::{Result, RuntimeError};

/// The model architecture file every checkpoint has.
pub const CONFIG_FILE: &str = "config.json";
/// Stop tokens and recommended sampling settings (optional).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer (optional for token-id-only use).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights: `weight_map` maps tensor names to shard files.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

const HUB_ENDPOINT: &str = "https://huggingface.co";

/// The local files of a resolved model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory holding them (a hub cache snapshot for hub models).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `generation_config.json`, if the model has one.
    pub generation_config: Option<PathBuf>,
    /// `tokenizer.json`, if the model has one.
    pub tokenizer: Option<PathBuf>,
    /// `tokenizer_config.json`, if the model has one.
    pub tokenizer_config: Option<PathBuf>,
    /// `chat_template.jinja`, if the model has one.
    pub chat_template: Option<PathBuf>,
    /// The safetensors files: `model.safetensors`, or every shard of the index, sorted.
    pub weights: Vec<PathBuf>,
    /// How the files were found.
    pub origin: ModelOrigin,
}

/// How [`resolve_model`] found a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOrigin {
    /// `--model` named a local directory.
    LocalDir,
    /// From the hub (each file downloaded, or found up to date in the cache).
    Hub {
        /// `owner/name`.
        repo_id: String,
    },
    /// From the HF cache without contacting the hub.
    HubCache {
        /// `owner/name`.
        repo_id: String,
        /// Why the hub was not used: `HF_HUB_OFFLINE is set` or the network error, for the
        /// caller to report.
        reason: String,
    },
}

/// How to reach the hub and its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache root (the directory holding `models--owner--name`).
    pub cache_dir: PathBuf,
    /// Never contact the hub; use the cache only.
    pub offline: bool,
    /// Show download progress bars (indicatif, on stderr).
    pub progress: bool,
    /// The hub's base URL.
    pub endpoint: String,
    /// Access token for gated or private repos; `None` falls back to the cache's `token` file
    /// (`huggingface-cli login`).
    pub token: Option<String>,
    /// Branch, tag or commit to use.
    pub revision: String,
}

impl HubOptions {
    /// Options from the process environment; see [`HubOptions::from_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Options from environment variables as read by `var`, with `huggingface_hub`'s
    /// meanings: the cache is `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`
    /// (`1`/`true`/`yes`/`on`) forbids network access; `HF_ENDPOINT` replaces the hub URL;
    /// `HF_TOKEN` is the access token. Progress bars are on and the revision is `main`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let cache_dir = if let Some(cache) = var("HF_HUB_CACHE") {
            PathBuf::from(cache)
        } else if let Some(home) = var("HF_HOME") {
            Path::new(&home).join("hub")
        } else if let Some(xdg) = var("XDG_CACHE_HOME") {
            Path::new(&xdg).join("huggingface").join("hub")
        } else if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
            Path::new(&home)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        } else {
            return Err(RuntimeError::HubCacheUnknown);
        };
        // huggingface_hub's boolean spellings; anything else is a typo, not "online".
        let offline = match var("HF_HUB_OFFLINE") {
            None => false,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "" | "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(RuntimeError::InvalidEnvVar {
                        name: "HF_HUB_OFFLINE",
                        value: v,
                        expected: "1, true, yes or on (offline), or 0, false, no or off",
                    })
                }
            },
        };
        Ok(Self {
            cache_dir,
            offline,
            progress: true,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| HUB_ENDPOINT.to_owned()),
            token: var("HF_TOKEN"),
            revision: "main".to_owned(),
        })
    }
}

/// Resolves `--model` (`spec`) to local files: an existing path is a local model directory,
/// anything else must be a hub repo id `owner/name` (see the module docs).
pub fn resolve_model(spec: &str, hub: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(spec);
    // `exists()` says false for a path it cannot look at (no permission, a symlink loop); such
    // a path is the user's, and its OS error is the message, not "not found on the hub".
    match std::fs::symlink_metadata(path) {
        Ok(_) => return local_model(path),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::io(path, e))
        }
        Err(_) => {}
    }
    // `models/x` whose first part is a local directory is a mistyped local path, not a repo.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if parent.is_dir() {
            return Err(RuntimeError::LocalModelNotFound {
                path: path.to_path_buf(),
                parent: parent.to_path_buf(),
            });
        }
    }
    match RepoId::parse(spec) {
        Some(repo) if hub.offline => cached_repo(&repo, hub, "HF_HUB_OFFLINE is set".into()),
        Some(repo) => hub_model(&repo, hub),
        None => Err(RuntimeError::ModelNotFound {
            spec: spec.to_owned(),
        }),
    }
}

/// The GGUF file `--model` (`spec`) names, if it names one:
///
/// * an existing file whose name ends in `.gguf` → that file;
/// * an existing directory without `config.json` that holds exactly one `*.gguf` file → that
///   file; with several → [`RuntimeError::AmbiguousGguf`] listing them;
/// * anything else (a transformers directory, a directory without GGUF files, another file,
///   a hub repo id) → `None`, for [`resolve_model`] to handle (and report).
pub fn gguf_file(spec: &Path) -> Result<Option<PathBuf>> {
    if spec.is_file() {
        return Ok(has_gguf_extension(spec).then(|| spec.to_path_buf()));
    }
    // A config.json means a transformers checkpoint, even if a GGUF export sits beside it.
    if !spec.is_dir() || spec.join(CONFIG_FILE).is_file() {
        return Ok(None);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(spec).map_err(|e| RuntimeError::io(spec, e))? {
        let path = entry.map_err(|e| RuntimeError::io(spec, e))?.path();
        if has_gguf_extension(&path) && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(RuntimeError::AmbiguousGguf {
            dir: spec.to_path_buf(),
            files: found,
        }),
    }
}

fn has_gguf_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
}

/// The files of a local model directory.
pub fn local_model(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(RuntimeError::ModelNotADirectory {
            path: dir.to_path_buf(),
        });
    }
    collect_files(dir, ModelOrigin::LocalDir, &|file, hint| {
        RuntimeError::ModelFileMissing {
            dir: dir.to_path_buf(),
            file: file.to_owned(),
            hint,
        }
    })
}

/// The files of hub repo `repo_id` from the cache alone, as when offline; `reason` says why
/// (it is reported in errors and in [`ModelOrigin::HubCache`]).
pub fn cached_model(repo_id: &str, hub: &HubOptions, reason: String) -> Result<ModelFiles> {
    let Some(repo) = RepoId::parse(repo_id) else {
        return Err(RuntimeError::ModelNotFound {
            spec: repo_id.to_owned(),
        });
    };
    cached_repo(&repo, hub, reason)
}

/// A hub repo id, `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepoId(String);

impl RepoId {
    /// `owner/name` with both parts made of letters, digits, `-`, `_` and `.`, neither
    /// starting with `.` (so no `..` can escape the cache directory).
    fn parse(spec: &str) -> Option<Self> {
        let (owner, name) = spec.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (part_ok(owner) && part_ok(name)).then(|| Self(spec.to_owned()))
    }

    /// The repo's folder in the HF cache.
    fn cache_folder(&self) -> String {
        format!("models--{}", self.0.replace('/', "--"))
    }
}

/// Collects the files in `dir`; `missing(file, hint)` builds the error for a required one.
fn collect_files(
    dir: &Path,
    origin: ModelOrigin,
    missing: &dyn Fn(&str, &'static str) -> RuntimeError,
) -> Result<ModelFiles> {
    // A file that exists but cannot be looked at (permissions, a symlink loop) is an error with
    // the OS's reason, not "missing".
    let optional = |name: &str| -> Result<Option<PathBuf>> {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(path)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RuntimeError::io(&path, e)),
        }
    };
    let config = optional(CONFIG_FILE)?.ok_or_else(|| {
        missing(
            CONFIG_FILE,
            "it describes the architecture; every transformers checkpoint has one",
        )
    })?;
    let weights = if let Some(index) = optional(WEIGHTS_INDEX_FILE)? {
        shard_names(&index)?
            .into_iter()
            .map(|shard| {
                optional(&shard)?.ok_or_else(|| {
                    missing(
                        &shard,
                        "a weight shard listed in model.safetensors.index.json",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![optional(WEIGHTS_FILE)?.ok_or_else(|| {
            missing(
                "model.safetensors (or model.safetensors.index.json and its shards)",
                "the weights",
            )
        })?]
    };
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        config,
        generation_config: optional(GENERATION_CONFIG_FILE)?,
        tokenizer: optional(TOKENIZER_FILE)?,
        tokenizer_config: optional(TOKENIZER_CONFIG_FILE)?,
        chat_template: optional(CHAT_TEMPLATE_FILE)?,
        weights,
        origin,
    })
}

/// The distinct shard file names of a safetensors index, sorted.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| RuntimeError::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::json(index, format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| {
            RuntimeError::json(index, "missing object field `weight_map` (tensor → shard)")
        })?;
    let mut shards = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            RuntimeError::json(
                index,
                format!("field `weight_map.{tensor}` must be a file name, found {shard}"),
            )
        })?;
        // The index may come from the network: only plain names inside the directory.
        let plain = Path::new(shard)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || shard.is_empty() {
            return Err(RuntimeError::UnsafeShardName {
                index: index.to_path_buf(),
                shard: shard.to_owned(),
            });
        }
        shards.push(shard.to_owned());
    }
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(RuntimeError::json(index, "`weight_map` lists no shard"));
    }
    Ok(shards)
}

fn cached_repo(repo: &RepoId, hub: &HubOptions, reason: String) -> Result<ModelFiles> {
    let not_cached = |missing: String| RuntimeError::NotInCache {
        repo: repo.0.clone(),
        cache_dir: hub.cache_dir.clone(),
        missing,
        reason: reason.clone(),
    };
    let repo_dir = hub.cache_dir.join(repo.cache_folder());
    if !repo_dir.is_dir() {
        return Err(not_cached(format!("{} does not exist", repo_dir.display())));
    }
    let ref_path = repo_dir.join("refs").join(&hub.revision);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(commit) => commit.trim().to_owned(),
        // A revision given as a commit hash has no ref file, only its snapshot.
        Err(_) if repo_dir.join("snapshots").join(&hub.revision).is_dir() => hub.revision.clone(),
        Err(_) => {
            return Err(not_cached(format!(
                "{} is missing, so no snapshot is known for revision {}",
                ref_path.display(),
                hub.revision
            )))
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if commit.is_empty() || commit.contains(['/', '\\']) || !snapshot.is_dir() {
        return Err(not_cached(format!(
            "{} names the snapshot {commit:?}, which does not exist",
            ref_path.display()
        )));
    }
    collect_files(
        &snapshot,
        ModelOrigin::HubCache {
            repo_id: repo.0.clone(),
            reason: reason.clone(),
        },
        &|file, _| not_cached(format!("{file} is not in the cached snapshot {commit}")),
    )
}

/// Why a hub fetch failed.
enum HubFailure {
    /// The hub could not be reached: fall back to the cache.
    Network(String),
    /// Any other failure: report it.
    Fatal(RuntimeError),
}

fn hub_model(repo: &RepoId, hub: &HubOptions) -> Result<ModelFiles> {
    match download(repo, hub) {
        Ok(files) => Ok(files),
        Err(HubFailure::Network(why)) => {
            cached_repo(repo, hub, format!("the hub is unreachable: {why}"))
        }
        Err(HubFailure::Fatal(e)) => Err(e),
    }
}

fn download(repo: &RepoId, hub: &HubOptions) -> Result<ModelFiles, HubFailure> {
    let mut builder = ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone()))
        .with_progress(hub.progress)
        .with_endpoint(hub.endpoint.clone());
    if hub.token.is_some() {
        builder = builder.with_token(hub.token.clone());
    }
    let api = builder.build().map_err(|e| {
        HubFailure::Fatal(RuntimeError::HubDownload {
            repo: repo.0.clone(),
            file: CONFIG_FILE.to_owned(),
            message: format!("cannot set up the HTTP client: {e}"),
        })
    })?;
    let api_repo = api.repo(Repo::with_revision(
        repo.0.clone(),
        RepoType::Model,
        hub.revision.clone(),
    ));
    let fetch = |file: &str| fetch(&api_repo, repo, file);
    let required = |file: &str, what: &str| match fetch(file)? {
        Some(path) => Ok(path),
        None => Err(HubFailure::Fatal(RuntimeError::HubDownload {
            repo: repo.0.clone(),
            file: file.to_owned(),
            message: format!("the repo has no {file} ({what})"),
        })),
    };

    let config = required(
        CONFIG_FILE,
        "not a transformers model repo, or a wrong revision",
    )?;
    let weights = match fetch(WEIGHTS_INDEX_FILE)? {
        Some(index) => shard_names(&index)
            .map_err(HubFailure::Fatal)?
            .iter()
            .map(|shard| required(shard, "listed in model.safetensors.index.json"))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![required(
            WEIGHTS_FILE,
            "nor model.safetensors.index.json: no safetensors weights",
        )?],
    };
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| hub.cache_dir.clone());
    Ok(ModelFiles {
        dir,
        config,
        generation_config: fetch(GENERATION_CONFIG_FILE)?,
        tokenizer: fetch(TOKENIZER_FILE)?,
        tokenizer_config: fetch(TOKENIZER_CONFIG_FILE)?,
        chat_template: fetch(CHAT_TEMPLATE_FILE)?,
        weights,
        origin: ModelOrigin::Hub {
            repo_id: repo.0.clone(),
        },
    })
}

/// The cached or downloaded path of `file`, `None` when the repo does not have it (404).
fn fetch(api_repo: &ApiRepo, repo: &RepoId, file: &str) -> Result<Option<PathBuf>, HubFailure> {
    match api_repo.get(file) {
        Ok(path) => Ok(Some(path)),
        Err(e) => classify(e, repo, file),
    }
}

fn classify(e: ApiError, repo: &RepoId, file: &str) -> Result<Option<PathBuf>, HubFailure> {
    let fatal = |message: String| {
        Err(HubFailure::Fatal(RuntimeError::HubDownload {
            repo: repo.0.clone(),
            file: file.to_owned(),
            message,
        }))
    };
    match e {
        ApiError::RequestError(request) => {
            let text = request.to_string();
            match request.into_response().map(|r| r.status()) {
                Some(404) => Ok(None),
                Some(code @ (401 | 403)) => fatal(format!(
                    "HTTP {code}: the repo does not exist, or it is gated or private (accept its \
                     terms on the hub and set HF_TOKEN to a token that may read it)"
                )),
                Some(code) => fatal(format!("HTTP {code}: {text}")),
                // No HTTP status: DNS, connection or TLS failure.
                None => Err(HubFailure::Network(text)),
            }
        }
        ApiError::TooManyRetries(inner) => classify(*inner, repo, file),
        other => fatal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["Qwen/Qwen3-Next-80B-A3B-Instruct", "a/b", "org_1/model.v2"] {
            assert!(RepoId::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "gpt2",
            "a/",
            "/b",
            "a/b/c",
            "../x",
            "a/..",
            "a b/c",
            "a/.hidden",
        ] {
            assert!(RepoId::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            RepoId::parse("Qwen/Qwen3.5-0.8B").unwrap().cache_folder(),
            "models--Qwen--Qwen3.5-0.8B"
        );
    }

    #[test]
    fn environment_precedence() {
        let opts = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubOptions::from_vars(|name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        let all = [
            ("HF_HUB_CACHE", "/c"),
            ("HF_HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(opts(&all).unwrap().cache_dir, PathBuf::from("/c"));
        assert_eq!(opts(&all[1..]).unwrap().cache_dir, PathBuf::from("/h/hub"));
        assert_eq!(
            opts(&all[2..]).unwrap().cache_dir,
            PathBuf::from("/x/huggingface/hub")
        );
        let home = opts(&all[3..]).unwrap();
        assert_eq!(
            home.cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert!(!home.offline);
        assert_eq!(home.endpoint, HUB_ENDPOINT);
        assert_eq!(home.revision, "main");
        assert_eq!(home.token, None);
        assert!(matches!(opts(&[]), Err(RuntimeError::HubCacheUnknown)));

        for (value, offline) in [
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("0", false),
            ("off", false),
        ] {
            let o = opts(&[("HOME", "/h"), ("HF_HUB_OFFLINE", value)]).unwrap();
            assert_eq!(o.offline, offline, "HF_HUB_OFFLINE={value}");
        }
        // Issue 13 item 12: a value that is neither is an error, not "online".
        let err = opts(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HF_HUB_OFFLINE") && err.contains("maybe"),
            "{err}"
        );
        let o = opts(&[
            ("HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_TOKEN", "hf_x"),
        ])
        .unwrap();
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert_eq!(o.token.as_deref(), Some("hf_x"));
    }
}
