//! Snapshots of one sequence's whole hybrid state, in memory ([`ModelState`]) and on disk
//! ([`Snapshot`]): every attention layer's KV cache, every GDN layer's conv and recurrent state in
//! the canonical layout (`GdnBackend::export_state`), the tokens so far and the position.
//!
//! ## File format, version 1
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `89 48 44 53 4E 50 0D 0A` (`\x89HDSNP\r\n`; the high byte and CR LF catch 7-bit and text-mode transfers, as in PNG) |
//! | 8 | 4 | format version, `u32` = 1 |
//! | 12 | 4 | flags, `u32`, must be 0 |
//! | 16 | 8 | `header_len`, `u64` |
//! | 24 | 8 | `data_len`, `u64` (a multiple of 4) |
//! | 32 | `header_len` | header: UTF-8 JSON, see below |
//! | 32 + `header_len` | `data_len` | data: the sections, f32 little-endian, back to back |
//! | end − 4 | 4 | CRC-32 (IEEE, as zlib's `crc32`) of every byte before it |
//!
//! The header JSON holds `format` (`"hybrid-decode snapshot"`), `writer` (crate and version),
//! `model` (`architecture`, `weights_dtype`, `fingerprint` with three 16-hex-digit FNV-1a-64 hashes:
//! `config` — the normalised config, `shapes` — every layer's state geometry, `weights` — every GDN
//! layer's constants, the first rows of the embedding and of lm_head), `gdn_backend` (informational:
//! state is canonical, so any backend may resume it), `position` (tokens the state has consumed),
//! `tokens` (the whole sequence; `tokens[position..]` are pending: chosen but not yet fed),
//! `layers` (one entry per model layer, in order: `{"kind": "gdn", "layer", "num_k_heads",
//! "num_v_heads", "head_k_dim", "head_v_dim", "conv_kernel", "conv", "recurrent"}` or
//! `{"kind": "attention", "layer", "kv_heads", "head_dim", "cached", "keys", "values"}`, where each
//! section is `{"offset": f32 elements into data, "len": f32 elements}`) and `app` (free-form JSON
//! for the program that wrote it, e.g. the sampler state). Layouts: GDN conv `conv_dim × (K − 1)`,
//! recurrent key-major `Hv × dk × dv`; attention keys and values `kv_heads × cached × head_dim`.
//!
//! Reading checks, in order: magic, version, flags, lengths (truncation), checksum, header, sections;
//! [`crate::HybridModel::restore`] then checks the fingerprint and dtype against the loaded model.
//! Writing goes to a temporary file in the destination directory that is synced and then moved
//! into place, so a crash never leaves a half-written snapshot under the final name; by default an
//! existing file is never replaced ([`WriteMode::CreateNew`]).

pub mod checksum;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hybrid_gdn::{LayerSpec, SlotState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use checksum::crc32;

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = [0x89, b'H', b'D', b'S', b'N', b'P', b'\r', b'\n'];
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The `format` field of the header.
const FORMAT_NAME: &str = "hybrid-decode snapshot";
/// Magic, version, flags, header_len, data_len.
const PREAMBLE_LEN: usize = 32;
const TRAILER_LEN: usize = 4;
/// Largest header accepted: the JSON holds the token ids (a few bytes each) and one small entry
/// per layer, so even a million-token sequence stays far below this.
const MAX_HEADER_BYTES: u64 = 256 << 20;

/// What identifies a model for snapshots: a state only makes sense in the model that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash of the normalised config (every field, so reformatting config.json does not matter).
    pub config: u64,
    /// Hash of every layer's state geometry.
    pub shapes: u64,
    /// Hash of a sample of the weights: every GDN layer's constants, embedding and lm_head row 0.
    pub weights: u64,
}

/// One attention layer's KV cache, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct KvState {
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dim.
    pub head_dim: usize,
    /// Cached positions.
    pub cached: usize,
    /// Keys, `kv_heads × cached × head_dim`.
    pub keys: Vec<f32>,
    /// Values, `kv_heads × cached × head_dim`.
    pub values: Vec<f32>,
}

/// The state of one decoder layer's token mixer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerState {
    /// A GDN layer: its geometry and its canonical state.
    Gdn {
        /// The layer's geometry.
        spec: LayerSpec,
        /// Conv and recurrent state in the canonical layout.
        state: SlotState,
    },
    /// A full-attention layer's KV cache.
    Attention(KvState),
}

/// One sequence's whole hybrid state, as [`crate::HybridModel::export_state`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    /// Tokens consumed.
    pub position: usize,
    /// One entry per decoder layer, in model order.
    pub layers: Vec<LayerState>,
}

impl ModelState {
    /// Bytes of state data it holds: every GDN layer's conv and recurrent state and every
    /// attention layer's cached keys and values (what a budget for kept states counts).
    pub fn data_bytes(&self) -> usize {
        let floats: usize = self
            .layers
            .iter()
            .map(|layer| match layer {
                LayerState::Gdn { state, .. } => state.conv.len() + state.recurrent.len(),
                LayerState::Attention(kv) => kv.keys.len() + kv.values.len(),
            })
            .sum();
        floats * std::mem::size_of::<f32>()
    }
}

/// A model state plus what is needed to continue it, and to refuse it in the wrong model.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The model's `Architecture`, in words (`Qwen3Next`, ...).
    pub architecture: String,
    /// Storage dtype of the weight matrices the state was computed with (`f32`, `bf16`, `f16`).
    pub weights_dtype: String,
    /// The model that made it.
    pub fingerprint: Fingerprint,
    /// The GDN backend that held the state (informational).
    pub gdn_backend: String,
    /// The whole sequence; the first `state.position` tokens are in the state, the rest pending.
    pub tokens: Vec<u32>,
    /// The state.
    pub state: ModelState,
    /// Free-form data of the program that wrote it (`null` when none).
    pub app: Value,
    /// The file it was read from, for error messages (`None` for in-memory snapshots).
    pub origin: Option<PathBuf>,
}

/// Whether [`Snapshot::write`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`SnapshotError::Exists`] if the destination exists (the default: a snapshot
    /// is often the only copy of a long prefill, so it is never replaced by accident).
    CreateNew,
    /// Atomically replace an existing file.
    Overwrite,
}

/// Everything that can go wrong reading, writing or restoring a snapshot. Every message names
/// the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file system refused.
    #[error("snapshot {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The destination exists and [`WriteMode::CreateNew`] was asked for.
    #[error(
        "snapshot {path} already exists and was left untouched; choose another file or allow \
         replacing it (generate: --force)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The path names something other than a regular file (a directory, FIFO, device, socket,
    /// or, as a destination, a symlink): a snapshot is never read from or written over one.
    #[error("snapshot {path} is {kind}, not a regular file; {fix}")]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO", ...).
        kind: &'static str,
        /// What to do instead.
        fix: &'static str,
    },
    /// The file does not start with the snapshot magic.
    #[error("{path} is not a hybrid-decode snapshot (wrong magic bytes)")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// A snapshot of a format version this build cannot read.
    #[error(
        "snapshot {path} has format version {found}; this build reads version {supported} \
         (use the hybrid-decode version that wrote it)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter than its own header says.
    #[error(
        "snapshot {path} is truncated: {found} bytes, but its header needs {expected} (an \
         interrupted copy or a full disk; the snapshot cannot be used)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the file should have.
        expected: u64,
        /// Bytes it has.
        found: u64,
    },
    /// The checksum or the structure is wrong.
    #[error("snapshot {path} is corrupt: {detail} (the snapshot cannot be used)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The snapshot was made by another model (or another config or weights of it).
    #[error(
        "snapshot {path} was made by a different model: {detail}; resume it with the model \
         (--model / --config, --seed for random weights) it was saved from"
    )]
    ForeignModel {
        /// The file.
        path: PathBuf,
        /// Which part of the fingerprint differs.
        detail: String,
    },
    /// Same model, but it cannot continue here (another weight dtype, a state that does not fit).
    #[error("snapshot {path} cannot be restored into this model: {detail}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What differs and the fix.
        detail: String,
    },
}

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// Where a section lives in the data block, in f32 elements.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Section {
    offset: u64,
    len: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LayerHeader {
    Gdn {
        layer: usize,
        num_k_heads: usize,
        num_v_heads: usize,
        head_k_dim: usize,
        head_v_dim: usize,
        conv_kernel: usize,
        conv: Section,
        recurrent: Section,
    },
    Attention {
        layer: usize,
        kv_heads: usize,
        head_dim: usize,
        cached: usize,
        keys: Section,
        values: Section,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct FingerprintHex {
    config: String,
    shapes: String,
    weights: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ModelHeader {
    architecture: String,
    weights_dtype: String,
    fingerprint: FingerprintHex,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    writer: String,
    model: ModelHeader,
    gdn_backend: String,
    position: usize,
    tokens: Vec<u32>,
    layers: Vec<LayerHeader>,
    #[serde(default)]
    app: Value,
}

/// Appends f32 sections to the data block and records where they went.
#[derive(Default)]
struct DataWriter {
    data: Vec<u8>,
}

impl DataWriter {
    fn push(&mut self, values: &[f32]) -> Section {
        let offset = (self.data.len() / 4) as u64;
        self.data.reserve(values.len() * 4);
        for v in values {
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        Section {
            offset,
            len: values.len() as u64,
        }
    }
}

impl Snapshot {
    /// The name used in error messages: the file, or `<in-memory snapshot>`.
    pub fn origin_path(&self) -> PathBuf {
        self.origin
            .clone()
            .unwrap_or_else(|| PathBuf::from("<in-memory snapshot>"))
    }

    /// Tokens chosen but not yet fed to the model (`tokens[position..]`).
    pub fn pending(&self) -> &[u32] {
        &self.tokens[self.state.position.min(self.tokens.len())..]
    }

    /// The file image: preamble, header, data, CRC-32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut data = DataWriter::default();
        let layers = self
            .state
            .layers
            .iter()
            .enumerate()
            .map(|(layer, state)| match state {
                LayerState::Gdn { spec, state } => LayerHeader::Gdn {
                    layer,
                    num_k_heads: spec.num_k_heads,
                    num_v_heads: spec.num_v_heads,
                    head_k_dim: spec.head_k_dim,
                    head_v_dim: spec.head_v_dim,
                    conv_kernel: spec.conv_kernel,
                    conv: data.push(&state.conv),
                    recurrent: data.push(&state.recurrent),
                },
                LayerState::Attention(kv) => LayerHeader::Attention {
                    layer,
                    kv_heads: kv.kv_heads,
                    head_dim: kv.head_dim,
                    cached: kv.cached,
                    keys: data.push(&kv.keys),
                    values: data.push(&kv.values),
                },
            })
            .collect();
        let hex = |v: u64| format!("{v:016x}");
        let header = Header {
            format: FORMAT_NAME.into(),
            writer: concat!("hybrid-model ", env!("CARGO_PKG_VERSION")).into(),
            model: ModelHeader {
                architecture: self.architecture.clone(),
                weights_dtype: self.weights_dtype.clone(),
                fingerprint: FingerprintHex {
                    config: hex(self.fingerprint.config),
                    shapes: hex(self.fingerprint.shapes),
                    weights: hex(self.fingerprint.weights),
                },
            },
            gdn_backend: self.gdn_backend.clone(),
            position: self.state.position,
            tokens: self.tokens.clone(),
            layers,
            app: self.app.clone(),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let mut out =
            Vec::with_capacity(PREAMBLE_LEN + header.len() + data.data.len() + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&(data.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data.data);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a file image; `origin` names it in errors and is kept in [`Snapshot::origin`].
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let path = origin.to_path_buf();
        let corrupt = |detail: String| SnapshotError::Corrupt {
            path: path.clone(),
            detail,
        };
        check_preamble(bytes, bytes.len() as u64, &path)?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or([0; 8]));
        // 4. Checksum over everything before the trailer.
        let body_end = bytes.len() - TRAILER_LEN;
        let stored = u32_at(body_end);
        let computed = crc32(&bytes[..body_end]);
        if stored != computed {
            return Err(corrupt(format!(
                "CRC-32 mismatch (stored {stored:08x}, computed {computed:08x}): the file was \
                 damaged after it was written"
            )));
        }
        // 5. Header, then sections.
        let header_end = PREAMBLE_LEN + header_len as usize;
        let header: Header = serde_json::from_slice(&bytes[PREAMBLE_LEN..header_end])
            .map_err(|e| corrupt(format!("header JSON: {e}")))?;
        if header.format != FORMAT_NAME {
            return Err(corrupt(format!(
                "header format is `{}`, expected `{FORMAT_NAME}`",
                header.format
            )));
        }
        if header.position > header.tokens.len() {
            return Err(corrupt(format!(
                "position {} is past the {} tokens it records",
                header.position,
                header.tokens.len()
            )));
        }
        let data = &bytes[header_end..body_end];
        check_sections_disjoint(&header.layers).map_err(corrupt)?;
        let layers = header
            .layers
            .iter()
            .enumerate()
            .map(|(index, layer)| decode_layer(index, layer, data))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(corrupt)?;
        let parse_hex = |what: &str, s: &str| {
            u64::from_str_radix(s, 16)
                .map_err(|_| corrupt(format!("fingerprint.{what} `{s}` is not a hex number")))
        };
        let fp = &header.model.fingerprint;
        Ok(Snapshot {
            fingerprint: Fingerprint {
                config: parse_hex("config", &fp.config)?,
                shapes: parse_hex("shapes", &fp.shapes)?,
                weights: parse_hex("weights", &fp.weights)?,
            },
            architecture: header.model.architecture,
            weights_dtype: header.model.weights_dtype,
            gdn_backend: header.gdn_backend,
            tokens: header.tokens,
            state: ModelState {
                position: header.position,
                layers,
            },
            app: header.app,
            origin: Some(path),
        })
    }

    /// Reads and checks a snapshot file (format only; the model checks the fingerprint).
    ///
    /// Only a regular file is opened (a FIFO would block, a device never end), and its preamble
    /// (magic, version, lengths) is checked against the file's size before the rest is read, so
    /// a foreign or damaged file costs 32 bytes of reading, whatever its size.
    pub fn read(path: &Path) -> Result<Self> {
        let io = |source: std::io::Error| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        regular_file(
            path,
            &meta.file_type(),
            "--resume needs a snapshot file written by --save-state",
        )?;
        let mut file = File::open(path).map_err(io)?;
        // The path could have been swapped between the two looks; trust the open file.
        let meta = file.metadata().map_err(io)?;
        regular_file(
            path,
            &meta.file_type(),
            "--resume needs a snapshot file written by --save-state",
        )?;
        let total = meta.len();
        let mut preamble = Vec::with_capacity(PREAMBLE_LEN);
        (&mut file)
            .take(PREAMBLE_LEN as u64)
            .read_to_end(&mut preamble)
            .map_err(io)?;
        check_preamble(&preamble, total, path)?;
        // The size is now the one the preamble declares (header bounded), so reading it all is
        // what a valid snapshot of this length costs; `take` guards a file still growing.
        let mut bytes = preamble;
        bytes.reserve_exact((total as usize).saturating_sub(bytes.len()));
        file.take(total - PREAMBLE_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_bytes(&bytes, path)
    }

    /// Checks, before any work is done, that [`Snapshot::write`] can put a snapshot at `path`
    /// with `mode`: the path is absent (or, with [`WriteMode::Overwrite`], a regular file — never
    /// a symlink, directory, FIFO or device, which a rename would replace), and its directory
    /// exists and accepts a new file (a temporary file is created there and removed).
    pub fn check_destination(path: &Path, mode: WriteMode) -> Result<()> {
        let io = |source: std::io::Error| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                regular_file(
                    path,
                    &meta.file_type(),
                    "choose a path that is absent or a regular file",
                )?;
                if mode == WriteMode::CreateNew {
                    return Err(SnapshotError::Exists {
                        path: path.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let (dir, name) = destination_parts(path)?;
        let (temp, file) = create_temp(&dir, &name).map_err(|source| SnapshotError::Io {
            path: dir.clone(),
            source,
        })?;
        drop(file);
        let _ = std::fs::remove_file(temp);
        Ok(())
    }

    /// Writes the snapshot to `path` through a synced temporary file in the same directory,
    /// then moves it into place: readers see the old file or the whole new one, never a part.
    /// With [`WriteMode::CreateNew`] an existing `path` is left untouched and is an error (the
    /// final step is a hard link, which cannot replace a file that appeared meanwhile).
    pub fn write(&self, path: &Path, mode: WriteMode) -> Result<()> {
        let io = |source: std::io::Error| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        if mode == WriteMode::CreateNew && path.exists() {
            return Err(SnapshotError::Exists {
                path: path.to_path_buf(),
            });
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            regular_file(
                path,
                &meta.file_type(),
                "choose a path that is absent or a regular file",
            )?;
        }
        let (dir, name) = destination_parts(path)?;
        remove_stale_temps(&dir, &name);
        let (temp, mut file) = create_temp(&dir, &name).map_err(io)?;
        let result = (|| {
            file.write_all(&self.to_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            drop(file);
            place(&temp, path, mode)
        })();
        // The temp file is gone after a rename; after a hard link or a failure it is removed.
        let _ = std::fs::remove_file(&temp);
        if result.is_ok() {
            // Make the new directory entry durable too (best effort: not every FS allows it).
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        result
    }
}

/// Steps 1-3 of reading (magic, version, flags, lengths) from the file's first bytes and its
/// total length: enough to refuse a foreign, truncated or padded file before reading (or
/// allocating for) anything else.
fn check_preamble(bytes: &[u8], total_len: u64, path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    let corrupt = |detail: String| SnapshotError::Corrupt {
        path: path.clone(),
        detail,
    };
    // 1. Magic (a strict prefix of it is a truncated snapshot, anything else a foreign file).
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] || bytes.is_empty() {
        return Err(SnapshotError::NotASnapshot { path });
    }
    if total_len < PREAMBLE_LEN as u64 || bytes.len() < PREAMBLE_LEN {
        return Err(SnapshotError::Truncated {
            path,
            expected: PREAMBLE_LEN as u64,
            found: total_len,
        });
    }
    // 2. Version and flags before anything version-specific (the trailer included).
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u32_at(12);
    if flags != 0 {
        return Err(corrupt(format!(
            "flags are {flags:#x}, version {FORMAT_VERSION} defines none"
        )));
    }
    // 3. Lengths: a short file is truncated, a long one has garbage after its checksum.
    let (header_len, data_len) = (u64_at(16), u64_at(24));
    let expected = [header_len, data_len, TRAILER_LEN as u64]
        .iter()
        .try_fold(PREAMBLE_LEN as u64, |sum, &x| sum.checked_add(x))
        .ok_or_else(|| corrupt("section lengths overflow".into()))?;
    let found = total_len;
    if found < expected {
        return Err(SnapshotError::Truncated {
            path,
            expected,
            found,
        });
    }
    if found > expected {
        return Err(corrupt(format!(
            "{} unexpected bytes after the checksum",
            found - expected
        )));
    }
    if data_len % 4 != 0 {
        return Err(corrupt(format!(
            "data length {data_len} is not a whole number of f32 values"
        )));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(corrupt(format!(
            "header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    Ok(())
}

/// The directory a snapshot at `path` goes into (`.` for a bare name) and its file name.
fn destination_parts(path: &Path) -> Result<(PathBuf, String)> {
    let name = path.file_name().ok_or_else(|| SnapshotError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// [`SnapshotError::NotARegularFile`] unless `kind` is a regular file.
fn regular_file(path: &Path, kind: &std::fs::FileType, fix: &'static str) -> Result<()> {
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        special_kind(kind)
    };
    Err(SnapshotError::NotARegularFile {
        path: path.to_path_buf(),
        kind: what,
        fix,
    })
}

/// What a path that is neither a file, a directory nor a symlink is.
#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// What a path that is neither a file, a directory nor a symlink is.
#[cfg(not(unix))]
fn special_kind(_kind: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// Removes `.<name>.<pid>.<n>.tmp` files that a save killed before it finished left in `dir`:
/// only our own pattern, and only for processes that no longer run (Linux: no `/proc/<pid>`;
/// elsewhere nothing is removed). Best effort: a failure leaves the file.
fn remove_stale_temps(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|f| f.strip_suffix(".tmp"))
        else {
            continue;
        };
        let mut parts = rest.split('.');
        let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A new, exclusive temporary file `.<name>.<pid>.<n>.tmp` in `dir`.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let temp = dir.join(format!(".{name}.{pid}.{attempt}.tmp"));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// Moves the finished temp file to `path` according to `mode`.
fn place(temp: &Path, path: &Path, mode: WriteMode) -> Result<()> {
    let io = |source: std::io::Error| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    match mode {
        WriteMode::Overwrite => std::fs::rename(temp, path).map_err(io),
        WriteMode::CreateNew => match std::fs::hard_link(temp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SnapshotError::Exists {
                path: path.to_path_buf(),
            }),
            // File systems without hard links: check, then rename (a tiny race remains there).
            Err(_) if !path.exists() => std::fs::rename(temp, path).map_err(io),
            Err(_) => Err(SnapshotError::Exists {
                path: path.to_path_buf(),
            }),
        },
    }
}

/// Reads `section` out of `data`, checking that it is inside and has `expected` elements.
fn read_section(
    data: &[u8],
    section: Section,
    expected: usize,
    what: &str,
) -> std::result::Result<Vec<f32>, String> {
    if section.len != expected as u64 {
        return Err(format!(
            "{what} has {} values, its shape needs {expected}",
            section.len
        ));
    }
    let start = section.offset.checked_mul(4);
    let end = start.and_then(|s| section.len.checked_mul(4).and_then(|l| s.checked_add(l)));
    let values: Vec<f32> = match (start, end) {
        (Some(start), Some(end)) if end <= data.len() as u64 => data[start as usize..end as usize]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => return Err(format!("{what} lies outside the data block")),
    };
    // A saved state is what a finite model computed: NaN or Inf anywhere (KV caches included)
    // means damage the checksum did not catch (or a resealed file), and would poison every
    // later token.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("{what} holds {} at element {i}", values[i]));
    }
    Ok(values)
}

/// No two sections may share bytes: each state is its own copy (overlaps would make one
/// layer's state another's, which no writer produces).
fn check_sections_disjoint(layers: &[LayerHeader]) -> std::result::Result<(), String> {
    let mut sections: Vec<(u64, u64, String)> = Vec::new();
    for layer in layers {
        match layer {
            LayerHeader::Gdn {
                layer,
                conv,
                recurrent,
                ..
            } => {
                sections.push((conv.offset, conv.len, format!("layer {layer} conv")));
                sections.push((
                    recurrent.offset,
                    recurrent.len,
                    format!("layer {layer} recurrent"),
                ));
            }
            LayerHeader::Attention {
                layer,
                keys,
                values,
                ..
            } => {
                sections.push((keys.offset, keys.len, format!("layer {layer} keys")));
                sections.push((values.offset, values.len, format!("layer {layer} values")));
            }
        }
    }
    sections.retain(|(_, len, _)| *len > 0);
    sections.sort_by_key(|(offset, _, _)| *offset);
    for pair in sections.windows(2) {
        let (first_offset, first_len, first) = &pair[0];
        let (second_offset, _, second) = &pair[1];
        if first_offset.saturating_add(*first_len) > *second_offset {
            return Err(format!("sections {first} and {second} overlap"));
        }
    }
    Ok(())
}

fn decode_layer(
    index: usize,
    layer: &LayerHeader,
    data: &[u8],
) -> std::result::Result<LayerState, String> {
    match *layer {
        LayerHeader::Gdn {
            layer,
            num_k_heads,
            num_v_heads,
            head_k_dim,
            head_v_dim,
            conv_kernel,
            conv,
            recurrent,
        } => {
            check_index(index, layer)?;
            let spec = LayerSpec {
                num_k_heads,
                num_v_heads,
                head_k_dim,
                head_v_dim,
                conv_kernel,
            };
            spec.validate().map_err(|e| format!("layer {layer}: {e}"))?;
            let what = |part: &str| format!("layer {layer} GDN {part} state");
            Ok(LayerState::Gdn {
                spec,
                state: SlotState {
                    conv: read_section(data, conv, spec.conv_state_len(), &what("conv"))?,
                    recurrent: read_section(
                        data,
                        recurrent,
                        spec.recurrent_state_len(),
                        &what("recurrent"),
                    )?,
                },
            })
        }
        LayerHeader::Attention {
            layer,
            kv_heads,
            head_dim,
            cached,
            keys,
            values,
        } => {
            check_index(index, layer)?;
            let len = kv_heads
                .checked_mul(head_dim)
                .and_then(|x| x.checked_mul(cached))
                .ok_or_else(|| format!("layer {layer}: KV cache shape overflows"))?;
            Ok(LayerState::Attention(KvState {
                kv_heads,
                head_dim,
                cached,
                keys: read_section(data, keys, len, &format!("layer {layer} keys"))?,
                values: read_section(data, values, len, &format!("layer {layer} values"))?,
            }))
        }
    }
}

fn check_index(index: usize, layer: usize) -> std::result::Result<(), String> {
    if index == layer {
        Ok(())
    } else {
        Err(format!("layer entry {index} says it is layer {layer}"))
    }
}
