//! The `--kl-divergence-base` file: a base run's log-probabilities at every scored position,
//! and the statistics of another run against it.
//!
//! Format (little-endian): magic `HDKLBASE`, `u32` version 1, `u32` vocabulary size, `u64`
//! scored positions, `u64` plan hash (tokens and windows, see `hybrid_runtime::perplexity::plan_hash`), then per
//! position its NLL (`f32`) and `vocab` log-probabilities (`f16`: 2 bytes a token, as llama.cpp
//! keeps 16 bits a token; f16 resolves the probable tokens, which carry the divergence, to 1e-3).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use serde_json::{json, Value};

const MAGIC: [u8; 8] = *b"HDKLBASE";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

/// The header fields a base file and a comparing run must agree on.
fn header(vocab: usize, positions: usize, plan_hash: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(vocab as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(positions as u64).to_le_bytes());
    h[24..32].copy_from_slice(&plan_hash.to_le_bytes());
    h
}

/// Writes a base run; the file is created new (never replaces one) and removed if the run
/// does not finish.
pub struct KlBaseWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    buffer: Vec<u8>,
}

impl KlBaseWriter {
    /// Creates `path` (an error if it exists) and writes the header.
    pub fn create(path: &Path, vocab: usize, positions: usize, plan_hash: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("--kl-divergence-base {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(&header(vocab, positions, plan_hash))?;
        Ok(KlBaseWriter {
            path: path.to_path_buf(),
            out: Some(out),
            buffer: Vec::with_capacity(4 + 2 * vocab),
        })
    }

    /// Appends one position.
    pub fn push(&mut self, log_probs: &[f32], nll: f64) -> Result<()> {
        self.buffer.clear();
        self.buffer.extend_from_slice(&(nll as f32).to_le_bytes());
        for &lp in log_probs {
            self.buffer
                .extend_from_slice(&f16::from_f32(lp).to_bits().to_le_bytes());
        }
        let out = self.out.as_mut().context("base file already closed")?;
        out.write_all(&self.buffer)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Flushes and closes the file; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let out = self.out.take().context("base file already closed")?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.path.display()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self.path.clone())
    }
}

impl Drop for KlBaseWriter {
    fn drop(&mut self) {
        // Not finished: a partial base file would only fail later comparisons; remove it.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One base position.
pub struct BasePosition {
    pub nll: f64,
    pub log_probs: Vec<f32>,
}

/// Reads a base run back, checking it was made from the same text, windows and vocabulary.
pub struct KlBaseReader {
    path: PathBuf,
    input: BufReader<File>,
    vocab: usize,
    buffer: Vec<u8>,
}

impl KlBaseReader {
    /// Opens `path` and checks its header against this run.
    pub fn open(path: &Path, vocab: usize, positions: usize, plan_hash: u64) -> Result<Self> {
        let what = || format!("--kl-divergence-base {}", path.display());
        let meta = std::fs::metadata(path).with_context(what)?;
        ensure!(
            meta.is_file(),
            "{}: not a regular file (write one with --kl-divergence-base FILE alone)",
            what()
        );
        let expected_len = HEADER_LEN as u64 + positions as u64 * (4 + 2 * vocab as u64);
        let mut input = BufReader::new(File::open(path).with_context(what)?);
        let mut found = [0u8; HEADER_LEN];
        input
            .read_exact(&mut found)
            .with_context(|| format!("{}: shorter than a header", what()))?;
        let want = header(vocab, positions, plan_hash);
        if found[..12] != want[..12] {
            bail!(
                "{}: not a version-{VERSION} base file of this program (write one with \
                 --kl-divergence-base FILE alone)",
                what()
            );
        }
        let base_vocab = u32::from_le_bytes(found[12..16].try_into().expect("4 bytes"));
        ensure!(
            found[12..16] == want[12..16],
            "{}: made with a {base_vocab}-token vocabulary, this model has {vocab}",
            what()
        );
        let base_positions = u64::from_le_bytes(found[16..24].try_into().expect("8 bytes"));
        ensure!(
            found[16..] == want[16..],
            "{}: made from another text or window plan ({base_positions} scored positions, \
             this run scores {positions}); use the same --file, --ctx, --stride, --chunks and \
             tokenizer",
            what()
        );
        ensure!(
            meta.len() == expected_len,
            "{}: {} bytes, a complete base of this run is {expected_len} (was its run \
             interrupted?)",
            what(),
            meta.len()
        );
        Ok(KlBaseReader {
            path: path.to_path_buf(),
            input,
            vocab,
            buffer: vec![0u8; 4 + 2 * vocab],
        })
    }

    /// The next position.
    pub fn next_position(&mut self) -> Result<BasePosition> {
        self.input
            .read_exact(&mut self.buffer)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let nll = f32::from_le_bytes(self.buffer[..4].try_into().expect("4 bytes"));
        let log_probs = self.buffer[4..]
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect::<Vec<_>>();
        debug_assert_eq!(log_probs.len(), self.vocab);
        Ok(BasePosition {
            nll: f64::from(nll),
            log_probs,
        })
    }
}

/// This run against the base, position by position.
#[derive(Default)]
pub struct KlStats {
    kl: Vec<f64>,
    same_top: usize,
    base_nll: Vec<f64>,
    nll: Vec<f64>,
}

impl KlStats {
    /// Adds one position: `log_probs` and `nll` of this run.
    pub fn add(&mut self, base: &BasePosition, log_probs: &[f32], nll: f64) {
        let mut kl = 0f64;
        for (&b, &q) in base.log_probs.iter().zip(log_probs) {
            let p = f64::from(b).exp();
            if p > 0.0 {
                kl += p * (f64::from(b) - f64::from(q));
            }
        }
        // f16 rounding of the base can leave a tiny negative sum for identical runs.
        self.kl.push(kl.max(0.0));
        if argmax(&base.log_probs) == argmax(log_probs) {
            self.same_top += 1;
        }
        self.base_nll.push(base.nll);
        self.nll.push(nll);
    }

    /// The report.
    pub fn summary(&self) -> KlSummary {
        let (mean, stderr) = hybrid_decode::runtime::perplexity::mean_and_stderr(&self.kl);
        let mut sorted = self.kl.clone();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        KlSummary {
            positions: self.kl.len(),
            kl_mean: mean,
            kl_stderr: stderr,
            kl_median: quantile(0.5),
            kl_p99: quantile(0.99),
            kl_max: sorted.last().copied().unwrap_or(f64::NAN),
            same_top: self.same_top as f64 / self.kl.len().max(1) as f64,
            ppl_ratio: (mean_of(&self.nll) - mean_of(&self.base_nll)).exp(),
        }
    }
}

/// The numbers `--kl-divergence` reports.
pub struct KlSummary {
    pub positions: usize,
    pub kl_mean: f64,
    pub kl_stderr: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Share of positions where both runs' most likely token is the same.
    pub same_top: f64,
    /// Perplexity of this run over the base run's.
    pub ppl_ratio: f64,
}

impl KlSummary {
    pub fn text(&self) -> String {
        format!(
            "KL divergence vs base: mean {:.6} ± {:.6}, median {:.6}, p99 {:.6}, max {:.6}; \
             same top token {:.2} %; PPL(this)/PPL(base) {:.6} ({} positions)",
            self.kl_mean,
            self.kl_stderr,
            self.kl_median,
            self.kl_p99,
            self.kl_max,
            100.0 * self.same_top,
            self.ppl_ratio,
            self.positions
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "positions": self.positions,
            "mean": self.kl_mean,
            "stderr": self.kl_stderr,
            "median": self.kl_median,
            "p99": self.kl_p99,
            "max": self.kl_max,
            "same_top": self.same_top,
            "ppl_ratio": self.ppl_ratio,
        })
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
