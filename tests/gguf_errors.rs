//! Broken GGUF files give errors that name the file and the offending tensor or metadata key and
//! say what is wrong — never a panic, never a huge allocation.
//!
//! Every case copies one of the real GGUF fixtures in `models/fixtures/gguf/` (written by
//! llama.cpp's own `convert_hf_to_gguf.py` and `llama-quantize`; see that folder's README.md
//! and the `*.layout.txt` listings) into a temp dir and breaks one thing by patching bytes. The
//! byte positions come from [`Layout::parse`], a minimal walk of the GGUF v3 header: the KV
//! section and the tensor directory. A few cases change the length of a header field; those
//! rebuild the header with [`splice_header`], which keeps the tensor data section intact and
//! aligned, so only the intended field differs.
//!
//! Where candle's own GGUF reader rejects a file before the loader sees it (bad magic/version,
//! header counts, string lengths, unknown type ids), the tests check that the message still
//! names the file and says what is wrong.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions};

// ---------------------------------------------------------------------------------------------
// A minimal GGUF v3 header walker: byte positions of the fields the tests patch.
//
// File layout (all little-endian):
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count × { u64 key_len, key bytes, u32 value_type, value }
//       value: scalars of 1/2/4/8 bytes; string = u64 len + bytes;
//              array = u32 element type + u64 count + count elements
//   tensor_count × { u64 name_len, name bytes, u32 n_dims, u64 dims[n_dims] (fastest first),
//                    u32 ggml_type, u64 offset (from the start of the data section) }
//   zero padding to `general.alignment` (32; the fixtures do not set the key)
//   tensor data
// ---------------------------------------------------------------------------------------------

/// Byte position of the u32 version field.
const VERSION_AT: usize = 4;
/// Byte position of the u64 tensor count.
const TENSOR_COUNT_AT: usize = 8;
/// Byte position of the u64 metadata KV count.
const KV_COUNT_AT: usize = 16;
/// GGUF's default data alignment.
const ALIGNMENT: usize = 32;

/// GGUF metadata value types used below.
const TYPE_U8: u32 = 0;
const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_STRING: u32 = 8;

/// One metadata entry.
#[derive(Debug)]
struct Kv {
    /// Position of the key's u64 length.
    key_len_at: usize,
    /// Position of the u32 value type.
    type_at: usize,
    /// Position of the value (a string's u64 length; an array's u32 element type).
    value_at: usize,
    /// First byte after the value.
    end: usize,
}

/// One tensor directory entry.
#[derive(Debug)]
struct TensorEntry {
    name: String,
    /// Position of the name bytes.
    name_at: usize,
    /// Position of the u32 n_dims.
    n_dims_at: usize,
    /// Positions of each u64 dim, ggml order (fastest first).
    dims_at: Vec<usize>,
    /// Position of the u32 ggml type.
    type_at: usize,
    /// Position of the u64 offset.
    offset_at: usize,
    offset: u64,
}

/// Where everything is in a GGUF header.
#[derive(Debug)]
struct Layout {
    kvs: Vec<(String, Kv)>,
    tensors: Vec<TensorEntry>,
    /// First byte after the tensor directory.
    directory_end: usize,
    /// Start of the tensor data section.
    data_start: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.bytes[self.pos..self.pos + 4].try_into().unwrap());
        self.pos += 4;
        v
    }

    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.bytes[self.pos..self.pos + 8].try_into().unwrap());
        self.pos += 8;
        v
    }

    fn string(&mut self) -> String {
        let len = self.u64() as usize;
        let s = String::from_utf8_lossy(&self.bytes[self.pos..self.pos + len]).into_owned();
        self.pos += len;
        s
    }

    /// Steps over one value of GGUF type `ty`.
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.pos += 1, // u8, i8, bool
            2 | 3 => self.pos += 2,     // u16, i16
            4..=6 => self.pos += 4,     // u32, i32, f32
            10..=12 => self.pos += 8,   // u64, i64, f64
            TYPE_STRING => self.pos += self.u64() as usize,
            9 => {
                let elem = self.u32();
                let count = self.u64();
                for _ in 0..count {
                    self.skip_value(elem);
                }
            }
            other => panic!("fixture has unknown GGUF value type {other}"),
        }
    }
}

impl Layout {
    /// Walks an intact GGUF v3 file (the fixtures), panicking on anything unexpected.
    fn parse(bytes: &[u8]) -> Layout {
        assert_eq!(&bytes[..4], b"GGUF");
        let mut r = Reader {
            bytes,
            pos: VERSION_AT,
        };
        assert_eq!(r.u32(), 3, "fixtures are GGUF v3");
        let tensor_count = r.u64();
        let kv_count = r.u64();
        let mut kvs = Vec::new();
        for _ in 0..kv_count {
            let key_len_at = r.pos;
            let key = r.string();
            let type_at = r.pos;
            let ty = r.u32();
            let value_at = r.pos;
            r.skip_value(ty);
            let kv = Kv {
                key_len_at,
                type_at,
                value_at,
                end: r.pos,
            };
            kvs.push((key, kv));
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name_at = r.pos + 8;
            let name = r.string();
            let n_dims_at = r.pos;
            let n_dims = r.u32();
            let mut dims_at = Vec::new();
            for _ in 0..n_dims {
                dims_at.push(r.pos);
                r.u64();
            }
            let type_at = r.pos;
            r.u32();
            let offset_at = r.pos;
            let offset = r.u64();
            tensors.push(TensorEntry {
                name,
                name_at,
                n_dims_at,
                dims_at,
                type_at,
                offset_at,
                offset,
            });
        }
        let directory_end = r.pos;
        Layout {
            kvs,
            tensors,
            directory_end,
            data_start: directory_end.div_ceil(ALIGNMENT) * ALIGNMENT,
        }
    }

    fn kv(&self, key: &str) -> &Kv {
        self.kvs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, kv)| kv)
            .unwrap_or_else(|| panic!("fixture has no metadata key {key}"))
    }

    fn tensor(&self, name: &str) -> &TensorEntry {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The file with header bytes `at..at + remove` replaced by `insert`: the header is re-padded
/// to the alignment and the tensor data section follows unchanged (tensor offsets are relative
/// to it, so they stay valid).
fn splice_header(
    bytes: &[u8],
    layout: &Layout,
    at: usize,
    remove: usize,
    insert: &[u8],
) -> Vec<u8> {
    assert!(
        at + remove <= layout.directory_end,
        "splice inside the header only"
    );
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(insert);
    out.extend_from_slice(&bytes[at + remove..layout.directory_end]);
    out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
    out.extend_from_slice(&bytes[layout.data_start..]);
    out
}

/// A GGUF string value: u64 length + bytes.
fn gguf_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

// ---------------------------------------------------------------------------------------------
// Fixtures and loading.
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures/gguf")
        .join(name)
}

/// A patched copy of a fixture in a temp dir (deleted on drop).
struct Broken {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// Copies `name` into a temp dir after `edit` has changed its bytes (given the intact file's
/// layout).
fn broken(name: &str, edit: impl FnOnce(&mut Vec<u8>, &Layout)) -> Broken {
    let mut bytes = fs::read(fixture(name)).expect("read fixture");
    let layout = Layout::parse(&bytes);
    edit(&mut bytes, &layout);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    fs::write(&path, &bytes).expect("write");
    Broken { _dir: dir, path }
}

fn cpu_gdn() -> Box<dyn hybrid_decode::gdn::GdnBackend> {
    hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default())
        .expect("cpu backend")
}

/// What loading `path` gave: `Ok(the error's Display text)`, or `Err(what went wrong instead)`
/// when it panicked (caught, so the report says which file) or succeeded.
fn load_outcome(path: &Path, options: &LoadOptions) -> Result<String, String> {
    let gdn = cpu_gdn();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        HybridModel::load_gguf(path, options, gdn)
    }));
    match outcome {
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "loading panicked instead of returning an error: {what}"
            ))
        }
        Ok(Ok(_)) => Err("loading succeeded but should fail".into()),
        Ok(Err(e)) => Ok(e.to_string()),
    }
}

/// Collects every case's outcome, so that one bad case does not hide the others' messages.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Loading `path` must return an error (no panic, no success) whose Display text names the
    /// file and contains every one of `needles` (the tensor or key, and what is wrong).
    fn expect_error_with(
        &mut self,
        case: &str,
        path: &Path,
        options: &LoadOptions,
        needles: &[&str],
    ) {
        let message = match load_outcome(path, options) {
            Ok(message) => message,
            Err(problem) => {
                eprintln!("{case}: {problem}");
                self.failures.push(format!("{case}: {problem}"));
                return;
            }
        };
        eprintln!("{case}: {message}");
        let file = path.display().to_string();
        for needle in std::iter::once(file.as_str()).chain(needles.iter().copied()) {
            if !message.contains(needle) {
                self.failures.push(format!(
                    "{case}: error does not mention `{needle}`: {message}"
                ));
            }
        }
    }

    fn expect_error(&mut self, case: &str, path: &Path, needles: &[&str]) {
        self.expect_error_with(case, path, &LoadOptions::default(), needles);
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} check(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

const F32: &str = "qwen3.5-tiny-f32.gguf";
const Q8: &str = "qwen3.5-tiny-q8_0.gguf";

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

/// The patching machinery itself changes nothing it should not: an unpatched copy and a copy
/// whose header was rebuilt with a longer `general.name` both load.
#[test]
fn control_copies_load() {
    let plain = broken(F32, |_, _| {});
    let spliced = broken(F32, |bytes, layout| {
        let kv = layout.kv("general.name");
        *bytes = splice_header(
            bytes,
            layout,
            kv.value_at,
            kv.end - kv.value_at,
            &gguf_string("Qwen3.5 Tiny, renamed to shift the tensor directory"),
        );
    });
    for path in [&plain.path, &spliced.path] {
        HybridModel::load_gguf(path, &LoadOptions::default(), cpu_gdn())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn truncated_file() {
    let bytes = fs::read(fixture(F32)).expect("read");
    let layout = Layout::parse(&bytes);
    let tokens = layout.kv("tokenizer.ggml.tokens");
    let tenth = &layout.tensors[10];
    let last = layout.tensors.iter().max_by_key(|t| t.offset).unwrap();
    let mut checks = Checks::default();
    // (cut at, where, what the message must say besides the file name)
    let cuts: Vec<(usize, &str, Vec<&str>)> = vec![
        (0, "empty file", vec!["GGUF"]),
        (3, "inside the magic", vec!["GGUF"]),
        (6, "inside the version", vec!["truncated"]),
        (KV_COUNT_AT + 4, "inside kv_count", vec!["truncated"]),
        (
            tokens.value_at + 1000,
            "inside the token list",
            vec!["truncated"],
        ),
        (tenth.name_at + 3, "inside a tensor name", vec!["truncated"]),
        (
            layout.directory_end - 4,
            "inside the last tensor's offset",
            vec!["truncated"],
        ),
        (
            layout.data_start,
            "no tensor data",
            vec!["needs bytes", "truncated"],
        ),
        (
            layout.data_start + 1000,
            "inside the first tensor",
            vec!["needs bytes", "truncated"],
        ),
        (
            bytes.len() / 2,
            "half the data",
            vec!["needs bytes", "truncated"],
        ),
        // Only the last tensor is short: the error must name it.
        (
            bytes.len() - 1,
            "one byte short",
            vec![&last.name, "needs bytes", "truncated"],
        ),
    ];
    for (cut, what, needles) in cuts {
        let file = broken(F32, |b, _| b.truncate(cut));
        checks.expect_error(&format!("cut at {cut} ({what})"), &file.path, &needles);
    }
    // `HybridModel::load` on a file path goes the same way.
    let file = broken(F32, |b, l| b.truncate(l.data_start + 1000));
    match HybridModel::load(&file.path, &LoadOptions::default(), cpu_gdn()) {
        Ok(_) => panic!("truncated file loaded"),
        Err(e) => assert!(e.to_string().contains("needs bytes"), "{e}"),
    }
    checks.finish();
}

#[test]
fn wrong_magic() {
    let mut checks = Checks::default();
    for magic in [b"GGUG", b"\0\0\0\0", b"FUGG", b"{\"__"] {
        let file = broken(F32, |b, _| b[..4].copy_from_slice(magic));
        let case = format!("magic {:?}", String::from_utf8_lossy(magic));
        checks.expect_error(&case, &file.path, &["magic", "GGUF"]);
    }
    checks.finish();
}

#[test]
fn unsupported_gguf_version() {
    let mut checks = Checks::default();
    for version in [99, 0, 1] {
        let file = broken(F32, |b, _| put_u32(b, VERSION_AT, version));
        let case = format!("version {version}");
        checks.expect_error(&case, &file.path, &["version", &version.to_string()]);
    }
    checks.finish();
}

#[test]
fn tensor_data_beyond_the_end_of_the_file() {
    let mut checks = Checks::default();
    // Offsets are relative to the data section: exactly at the end of the file, far past it,
    // and so large that adding the data section's start overflows.
    for far in [0, 1 << 40, u64::MAX - 16] {
        let file = broken(F32, |b, l| {
            let offset = match far {
                0 => (b.len() - l.data_start) as u64,
                _ => far,
            };
            put_u64(b, l.tensor("blk.1.ssm_a").offset_at, offset)
        });
        let case = format!("blk.1.ssm_a offset {far}");
        checks.expect_error(&case, &file.path, &["`blk.1.ssm_a`", "file"]);
    }
    // The last tensor moved up by 32 bytes: its end is past the end of the file.
    let file = broken(F32, |b, l| {
        let last = l.tensors.iter().max_by_key(|t| t.offset).unwrap();
        put_u64(b, last.offset_at, last.offset + 32);
    });
    checks.expect_error(
        "last tensor 32 bytes later",
        &file.path,
        &["`output_norm.weight`", "needs bytes", "but the file has"],
    );
    checks.finish();
}

#[test]
fn misaligned_tensor_offset() {
    let mut checks = Checks::default();
    let file = broken(F32, |b, l| {
        let t = l.tensor("blk.0.ssm_norm.weight");
        put_u64(b, t.offset_at, t.offset + 2);
    });
    checks.expect_error(
        "offset + 2",
        &file.path,
        &["`blk.0.ssm_norm.weight`", "aligned"],
    );
    checks.finish();
}

#[test]
fn overlapping_tensors() {
    let mut checks = Checks::default();
    // Same start: blk.0.ssm_dt.bias moved onto blk.0.ssm_a (both 16 bytes).
    let file = broken(F32, |b, l| {
        let a = l.tensor("blk.0.ssm_a").offset;
        put_u64(b, l.tensor("blk.0.ssm_dt.bias").offset_at, a);
    });
    checks.expect_error(
        "same offset",
        &file.path,
        &["`blk.0.ssm_dt.bias`", "`blk.0.ssm_a`", "overlaps"],
    );
    // Inside another tensor: onto the second half of token_embd.weight (262144 bytes).
    let file = broken(F32, |b, l| {
        put_u64(b, l.tensor("blk.0.ssm_out.weight").offset_at, 131072);
    });
    checks.expect_error(
        "inside token_embd",
        &file.path,
        &["`blk.0.ssm_out.weight`", "`token_embd.weight`", "overlaps"],
    );
    checks.finish();
}

/// Peak resident memory of this process in KiB (Linux), for the allocation checks.
fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

type Patch = Box<dyn Fn(&mut Vec<u8>, &Layout)>;

/// Sets the u32 value of metadata key `key` (which must be a u32) to `v`.
fn set_u32(key: &'static str, v: u32) -> Patch {
    Box::new(move |b: &mut Vec<u8>, l: &Layout| put_u32(b, l.kv(key).value_at, v))
}

#[test]
fn header_sizes_that_would_allocate_gigabytes_fail_fast() {
    const HUGE: u64 = 1 << 40;
    let before = peak_rss_kib();
    let mut checks = Checks::default();
    // candle's reader checks these against its caps (2^30 entries or bytes) and against the
    // bytes left in the file before allocating. Its messages cannot name the key or tensor
    // whose length is bad; they must say what was too large.
    let cases: Vec<(&str, Patch, Vec<&str>)> = vec![
        (
            "tensor_count = 2^40",
            Box::new(|b, _| put_u64(b, TENSOR_COUNT_AT, HUGE)),
            vec!["tensor_count", "1099511627776"],
        ),
        (
            "kv_count = 2^40",
            Box::new(|b, _| put_u64(b, KV_COUNT_AT, HUGE)),
            vec!["metadata_kv_count", "1099511627776"],
        ),
        (
            "kv_count = 2^29 (under the cap, over the file)",
            Box::new(|b, _| put_u64(b, KV_COUNT_AT, 1 << 29)),
            vec!["536870912", "remaining"],
        ),
        (
            "key length of general.name = 2^40",
            Box::new(|b, l| put_u64(b, l.kv("general.name").key_len_at, HUGE)),
            vec!["string length", "1099511627776"],
        ),
        (
            "string length of general.name's value = 2^40",
            Box::new(|b, l| put_u64(b, l.kv("general.name").value_at, HUGE)),
            vec!["string length", "1099511627776"],
        ),
        (
            "string length of the chat template = 2^30 - 1 (under the cap, over the file)",
            Box::new(|b, l| put_u64(b, l.kv("tokenizer.chat_template").value_at, (1 << 30) - 1)),
            vec!["string length", "1073741823", "remaining"],
        ),
        (
            "element count of tokenizer.ggml.tokens = 2^40",
            Box::new(|b, l| put_u64(b, l.kv("tokenizer.ggml.tokens").value_at + 4, HUGE)),
            vec!["array length", "1099511627776"],
        ),
        (
            "element count of tokenizer.ggml.merges = 2^29 (under the cap, over the file)",
            Box::new(|b, l| put_u64(b, l.kv("tokenizer.ggml.merges").value_at + 4, 1 << 29)),
            vec!["array", "536870912", "remaining"],
        ),
        (
            "name length of blk.2.ssm_a = 2^40",
            Box::new(|b, l| put_u64(b, l.tensor("blk.2.ssm_a").name_at - 8, HUGE)),
            vec!["string length", "1099511627776"],
        ),
    ];
    for (case, patch, needles) in cases {
        let file = broken(F32, |b, l| patch(b, l));
        let started = Instant::now();
        checks.expect_error(case, &file.path, &needles);
        let took = started.elapsed();
        if took > Duration::from_secs(2) {
            checks.failures.push(format!("{case}: took {took:?}"));
        }
    }
    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        // Other tests run in this process at the same time and load tiny models; trusting any
        // of these sizes would allocate ≥ 1 GiB (or abort the process).
        let grown = after.saturating_sub(before);
        eprintln!("peak RSS grew by {grown} KiB");
        assert!(grown < 512 * 1024, "peak RSS grew by {grown} KiB");
    }
    checks.finish();
}

#[test]
fn unknown_architecture() {
    let mut checks = Checks::default();
    let file = broken(F32, |b, l| {
        let kv = l.kv("general.architecture");
        let at = kv.value_at;
        *b = splice_header(b, l, at, kv.end - at, &gguf_string("llama"));
    });
    checks.expect_error(
        "general.architecture = llama",
        &file.path,
        &["general.architecture", "`llama`", "not supported", "qwen35"],
    );
    // No architecture key at all (renamed to a same-length key).
    let file = broken(F32, |b, l| {
        let at = l.kv("general.architecture").key_len_at + 8;
        b[at..at + 20].copy_from_slice(b"general.architectur_");
    });
    checks.expect_error(
        "no general.architecture",
        &file.path,
        &["general.architecture", "missing"],
    );
    checks.finish();
}

#[test]
fn missing_tensor() {
    let mut checks = Checks::default();
    // Renamed in the directory to a same-length name the loader does not know.
    for (name, renamed) in [
        ("blk.0.ssm_a", "blk.0.ssm_x"),
        ("blk.3.attn_v.weight", "blk.3.attn_x.weight"),
        // The loader reads the vocabulary size from the token embedding.
        ("token_embd.weight", "token_embx.weight"),
    ] {
        let file = broken(F32, |b, l| {
            let at = l.tensor(name).name_at;
            b[at..at + name.len()].copy_from_slice(renamed.as_bytes());
        });
        checks.expect_error(name, &file.path, &[&format!("`{name}"), "missing"]);
    }
    checks.finish();
}

#[test]
fn wrong_shape() {
    let mut checks = Checks::default();
    // (tensor, ggml dim index, new value): a linear-attention matrix, a per-head vector, a norm
    // scale and an attention matrix, each shrunk so its bytes stay inside its own extent.
    for (name, dim, value) in [
        ("blk.0.attn_gate.weight", 1, 32),
        ("blk.1.ssm_a", 0, 2),
        ("blk.2.attn_norm.weight", 0, 32),
        ("blk.3.attn_q.weight", 0, 32),
    ] {
        let file = broken(F32, |b, l| put_u64(b, l.tensor(name).dims_at[dim], value));
        let case = format!("{name} ne[{dim}] = {value}");
        checks.expect_error(&case, &file.path, &[&format!("`{name}"), "shape"]);
    }
    checks.finish();
}

/// Dims whose product fits in usize but whose byte count does not, or whose product does not:
/// the size check itself must not overflow.
#[test]
fn tensor_dims_too_large_to_address() {
    let mut checks = Checks::default();
    for (name, dims) in [
        ("blk.0.ssm_a", vec![1u64 << 62]), // 2^62 f32 = 2^64 bytes
        ("blk.0.ssm_alpha.weight", vec![64, 1 << 58]), // 2^64 elements
        ("blk.0.ssm_alpha.weight", vec![1 << 40, 1 << 40]), // 2^80 elements
    ] {
        let file = broken(F32, |b, l| {
            let t = l.tensor(name);
            for (at, v) in t.dims_at.iter().zip(&dims) {
                put_u64(b, *at, *v);
            }
        });
        let case = format!("{name} ne = {dims:?}");
        checks.expect_error(&case, &file.path, &[&format!("`{name}`")]);
    }
    checks.finish();
}

/// A 0-d tensor where the loader expects a matrix (the directory entry rebuilt with
/// n_dims = 0).
#[test]
fn scalar_token_embedding() {
    let mut checks = Checks::default();
    let file = broken(F32, |b, l| {
        let t = l.tensor("token_embd.weight");
        let end = t.offset_at + 8;
        let mut entry = 0u32.to_le_bytes().to_vec();
        entry.extend_from_slice(&b[t.type_at..end]);
        *b = splice_header(b, l, t.n_dims_at, end - t.n_dims_at, &entry);
    });
    checks.expect_error(
        "token_embd.weight n_dims = 0",
        &file.path,
        &["`token_embd.weight"],
    );
    checks.finish();
}

#[test]
fn unsupported_quant_type() {
    let mut checks = Checks::default();
    // 16 = IQ2_XXS: candle's reader does not know it. Its error cannot name the tensor (see
    // the report); it must give the type id and what is supported.
    let file = broken(F32, |b, l| {
        put_u32(b, l.tensor("blk.0.ssm_alpha.weight").type_at, 16)
    });
    checks.expect_error(
        "type 16 (IQ2_XXS)",
        &file.path,
        &["16", "supported", "Q8_0"],
    );
    // 9 = Q8_1: candle reads it, the loader refuses it as an activation-only type.
    let file = broken(F32, |b, l| {
        put_u32(b, l.tensor("blk.0.ssm_alpha.weight").type_at, 9)
    });
    checks.expect_error(
        "type 9 (Q8_1)",
        &file.path,
        &["`blk.0.ssm_alpha.weight`", "Q8_1", "supported"],
    );
    checks.finish();
}

#[test]
fn row_length_not_a_multiple_of_the_block_size() {
    let mut checks = Checks::default();
    // A Q8_0 matrix with 48-value rows (1.5 blocks).
    let file = broken(Q8, |b, l| {
        put_u64(b, l.tensor("blk.0.ssm_alpha.weight").dims_at[0], 48)
    });
    checks.expect_error(
        "Q8_0 rows of 48",
        &file.path,
        &["`blk.0.ssm_alpha.weight`", "48", "Q8_0", "multiple"],
    );
    // An f32 vector of 4 values relabelled Q8_0 (32-value blocks).
    let file = broken(Q8, |b, l| put_u32(b, l.tensor("blk.0.ssm_a").type_at, 8));
    checks.expect_error(
        "F32 [4] relabelled Q8_0",
        &file.path,
        &["`blk.0.ssm_a`", "Q8_0", "multiple"],
    );
    checks.finish();
}

#[test]
fn contradictory_metadata() {
    let mut checks = Checks::default();
    let cases: Vec<(&str, Patch, Vec<&str>)> = vec![
        (
            "inner_size 62, time_step_rank 4",
            set_u32("qwen35.ssm.inner_size", 62),
            vec!["qwen35.ssm.inner_size", "62", "multiple", "time_step_rank"],
        ),
        (
            "time_step_rank 0",
            set_u32("qwen35.ssm.time_step_rank", 0),
            vec!["qwen35.ssm.inner_size", "time_step_rank (0)"],
        ),
        (
            "head_count 4, head_count_kv 3",
            set_u32("qwen35.attention.head_count_kv", 3),
            vec!["qwen35.attention.head_count_kv", "(3)", "divide"],
        ),
        (
            "value_length 32, key_length 16",
            set_u32("qwen35.attention.value_length", 32),
            vec!["qwen35.attention.value_length", "32", "key_length"],
        ),
    ];
    for (case, patch, needles) in cases {
        let file = broken(F32, |b, l| patch(b, l));
        checks.expect_error(case, &file.path, &needles);
    }
    checks.finish();
}

#[test]
fn metadata_value_of_the_wrong_type() {
    let mut checks = Checks::default();
    let cases: Vec<(&str, Patch, Vec<&str>)> = vec![
        (
            "block_count as f32 (same 4 bytes)",
            Box::new(|b, l| put_u32(b, l.kv("qwen35.block_count").type_at, TYPE_F32)),
            vec!["qwen35.block_count", "integer", "F32"],
        ),
        (
            "embedding_length as i32 -1",
            Box::new(|b, l| {
                let kv = l.kv("qwen35.embedding_length");
                put_u32(b, kv.type_at, TYPE_I32);
                put_u32(b, kv.value_at, u32::MAX);
            }),
            vec!["qwen35.embedding_length", "non-negative", "-1"],
        ),
        (
            "rms epsilon as u32 (same 4 bytes)",
            Box::new(|b, l| {
                let kv = l.kv("qwen35.attention.layer_norm_rms_epsilon");
                put_u32(b, kv.type_at, TYPE_U32);
            }),
            vec!["qwen35.attention.layer_norm_rms_epsilon", "float", "U32"],
        ),
        (
            "general.architecture as u32",
            Box::new(|b, l| {
                let kv = l.kv("general.architecture");
                let mut value = TYPE_U32.to_le_bytes().to_vec();
                value.extend_from_slice(&35u32.to_le_bytes());
                *b = splice_header(b, l, kv.type_at, kv.end - kv.type_at, &value);
            }),
            vec!["general.architecture", "not a string"],
        ),
        (
            "recurrent_layers as an array of u8 (same bytes)",
            Box::new(|b, l| {
                let kv = l.kv("qwen35.attention.recurrent_layers");
                put_u32(b, kv.value_at, TYPE_U8);
            }),
            vec!["qwen35.attention.recurrent_layers", "booleans"],
        ),
        (
            "recurrent_layers as one u32",
            Box::new(|b, l| {
                let kv = l.kv("qwen35.attention.recurrent_layers");
                let mut value = TYPE_U32.to_le_bytes().to_vec();
                value.extend_from_slice(&7u32.to_le_bytes());
                *b = splice_header(b, l, kv.type_at, kv.end - kv.type_at, &value);
            }),
            vec!["qwen35.attention.recurrent_layers", "array"],
        ),
        (
            "rope.freq_base as a string",
            Box::new(|b, l| {
                let kv = l.kv("qwen35.rope.freq_base");
                let mut value = TYPE_STRING.to_le_bytes().to_vec();
                value.extend_from_slice(&gguf_string("1e7"));
                *b = splice_header(b, l, kv.type_at, kv.end - kv.type_at, &value);
            }),
            vec!["qwen35.rope.freq_base", "float"],
        ),
    ];
    for (case, patch, needles) in cases {
        let file = broken(F32, |b, l| patch(b, l));
        checks.expect_error(case, &file.path, &needles);
    }
    checks.finish();
}

/// `general.alignment` places the data section; GGUF requires a non-zero power of two.
#[test]
fn invalid_data_alignment() {
    let mut checks = Checks::default();
    for alignment in [0u32, 7] {
        // general.file_type (u32) renamed to the same-length key general.alignment.
        let file = broken(F32, |b, l| {
            let kv = l.kv("general.file_type");
            let at = kv.key_len_at + 8;
            b[at..at + 17].copy_from_slice(b"general.alignment");
            put_u32(b, kv.value_at, alignment);
        });
        let case = format!("general.alignment = {alignment}");
        checks.expect_error(&case, &file.path, &["general.alignment", "power of two"]);
    }
    checks.finish();
}

#[test]
fn dtype_and_quantize_options_are_refused_for_gguf() {
    let mut checks = Checks::default();
    let path = fixture(F32);
    let quantize = LoadOptions {
        quantize: Some(GgmlDType::Q8_0),
        ..LoadOptions::default()
    };
    let bf16 = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    for (case, options) in [("quantize Q8_0", quantize), ("dtype bf16", bf16)] {
        checks.expect_error_with(case, &path, &options, &["--dtype", "GGUF"]);
    }
    checks.finish();
}
