//! One backend's measurements, their JSON form (also how a worker process hands them to the
//! parent), and the markdown tables.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::roofline::DeviceBandwidth;

/// Median and spread of repeated samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// The median (mean of the middle two for an even count), min and max of `samples`.
    pub fn of(samples: &[f64]) -> Stat {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return Stat::default();
        }
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stat {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    fn parse(v: &Value) -> Option<Stat> {
        Some(Stat {
            median: v["median"].as_f64()?,
            min: v["min"].as_f64()?,
            max: v["max"].as_f64()?,
        })
    }

    /// `median (min–max)` with `digits` decimals.
    fn cell(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// The GDN state traffic of one backend against its device's bandwidth.
#[derive(Debug, Clone)]
pub struct Roofline {
    pub gdn_layers: usize,
    /// All GDN layers' recurrent state, read + written, per token.
    pub state_bytes_per_token: f64,
    /// Recurrence FLOPs per token (DESIGN §3), all GDN layers.
    pub flops_per_token: f64,
    /// State bytes per token / median GDN time per token.
    pub achieved_gb_s: f64,
    /// The device's bandwidth, when measured or modelled.
    pub device: Option<DeviceBandwidth>,
}

impl Roofline {
    pub fn arithmetic_intensity(&self) -> f64 {
        if self.state_bytes_per_token > 0.0 {
            self.flops_per_token / self.state_bytes_per_token
        } else {
            0.0
        }
    }

    pub fn fraction_of_device(&self) -> Option<f64> {
        self.device
            .as_ref()
            .filter(|d| d.gb_s > 0.0)
            .map(|d| self.achieved_gb_s / d.gb_s)
    }
}

/// Everything measured for one backend.
#[derive(Debug, Clone)]
pub struct BackendResult {
    pub backend: String,
    pub device: String,
    pub host_threads: usize,
    /// The weight format and CPU kernel paths, e.g. `GGUF Q8_0 · dense AVX2+FMA+F16C, quantized AVX2`.
    pub weights: String,
    /// The recurrent state lives in host memory (no device boundary).
    pub state_on_host: bool,
    pub load_s: f64,
    pub prefill_tok_s: Stat,
    pub decode_tok_s: Stat,
    pub gdn_us_per_layer_token: Stat,
    /// GDN time / decode wall time.
    pub gdn_share: Stat,
    /// Host↔device bytes per decode token, from the backend's counters.
    pub bytes_moved_per_token: f64,
    /// VmHWM of the process that ran it.
    pub peak_rss_bytes: Option<u64>,
    /// The prefill's argmax, then one per decode step.
    pub tokens: Vec<u32>,
    /// Every repeat produced the same tokens.
    pub deterministic: bool,
    pub roofline: Roofline,
}

impl BackendResult {
    pub fn to_json(&self) -> Value {
        let r = &self.roofline;
        json!({
            "backend": self.backend,
            "device": self.device,
            "host_threads": self.host_threads,
            "weights": self.weights,
            "state_on_host": self.state_on_host,
            "load_s": self.load_s,
            "prefill_tok_s": self.prefill_tok_s.json(),
            "decode_tok_s": self.decode_tok_s.json(),
            "gdn_us_per_layer_token": self.gdn_us_per_layer_token.json(),
            "gdn_share": self.gdn_share.json(),
            "bytes_moved_per_token": self.bytes_moved_per_token,
            "peak_rss_bytes": self.peak_rss_bytes,
            "tokens": self.tokens,
            "deterministic": self.deterministic,
            "roofline": {
                "gdn_layers": r.gdn_layers,
                "state_bytes_per_token": r.state_bytes_per_token,
                "flops_per_token": r.flops_per_token,
                "arithmetic_intensity": r.arithmetic_intensity(),
                "achieved_gb_s": r.achieved_gb_s,
                "device_gb_s": r.device.as_ref().map(|d| d.gb_s),
                "device_bw_source": r.device.as_ref().map_or(
                    "not modelled (see modelled_device_bandwidth in examples/bench/roofline.rs)".to_string(),
                    |d| d.source.clone(),
                ),
                "modelled_device_us_per_layer_token":
                    r.device.as_ref().and_then(|d| d.modelled_us_per_layer_token),
                "fraction_of_device_bw": r.fraction_of_device(),
            },
        })
    }

    /// Parses [`BackendResult::to_json`] output (from a worker process).
    pub fn from_json(v: &Value) -> Result<Self> {
        let field = |name: &str| {
            v.get(name)
                .with_context(|| format!("field `{name}` missing"))
        };
        let stat = |name: &str| -> Result<Stat> {
            Stat::parse(field(name)?).with_context(|| format!("field `{name}` is not a stat"))
        };
        let number = |v: &Value, name: &str| -> Result<f64> {
            v[name]
                .as_f64()
                .with_context(|| format!("field `{name}` is not a number"))
        };
        let text = |name: &str| -> Result<String> {
            Ok(field(name)?
                .as_str()
                .with_context(|| format!("field `{name}` is not a string"))?
                .to_string())
        };
        let r = field("roofline")?;
        let device = r["device_gb_s"].as_f64().map(|gb_s| DeviceBandwidth {
            gb_s,
            source: r["device_bw_source"].as_str().unwrap_or_default().into(),
            modelled_us_per_layer_token: r["modelled_device_us_per_layer_token"].as_f64(),
        });
        Ok(BackendResult {
            backend: text("backend")?,
            device: text("device")?,
            host_threads: number(v, "host_threads")? as usize,
            weights: text("weights")?,
            state_on_host: field("state_on_host")?.as_bool().unwrap_or(true),
            load_s: number(v, "load_s")?,
            prefill_tok_s: stat("prefill_tok_s")?,
            decode_tok_s: stat("decode_tok_s")?,
            gdn_us_per_layer_token: stat("gdn_us_per_layer_token")?,
            gdn_share: stat("gdn_share")?,
            bytes_moved_per_token: number(v, "bytes_moved_per_token")?,
            peak_rss_bytes: v["peak_rss_bytes"].as_u64(),
            tokens: field("tokens")?
                .as_array()
                .context("field `tokens` is not an array")?
                .iter()
                .map(|t| t.as_u64().map(|t| t as u32).context("a token is not an id"))
                .collect::<Result<_>>()?,
            deterministic: field("deterministic")?.as_bool().unwrap_or(false),
            roofline: Roofline {
                gdn_layers: number(r, "gdn_layers")? as usize,
                state_bytes_per_token: number(r, "state_bytes_per_token")?,
                flops_per_token: number(r, "flops_per_token")?,
                achieved_gb_s: number(r, "achieved_gb_s")?,
                device,
            },
        })
    }
}

/// How a backend's tokens compare with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// This backend is the baseline the others are compared with.
    Baseline,
    /// Identical tokens.
    Same,
    /// The first differing token index (or the shorter length).
    DiffersAt(usize),
}

/// How one backend's run ended, as the parent sees it.
#[derive(Debug)]
pub enum Outcome {
    Measured {
        result: Box<BackendResult>,
        agreement: Agreement,
    },
    Failed(String),
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The speed table (llama-bench style) and the roofline table, in markdown.
pub fn markdown(outcomes: &[(String, Outcome)], rss_note: &str) -> String {
    let mut out = String::new();
    out.push_str(
        "| backend | device | prefill tok/s | decode tok/s | GDN µs/layer-token | GDN share of \
         decode | host↔device B/token | peak RSS | tokens |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (name, outcome) in outcomes {
        match outcome {
            Outcome::Measured {
                result: r,
                agreement,
            } => {
                let tokens = match agreement {
                    Agreement::Baseline => "baseline".to_string(),
                    Agreement::Same => "same".to_string(),
                    Agreement::DiffersAt(i) => format!("**DIFFERENT from token {i}**"),
                };
                let tokens = if r.deterministic {
                    tokens
                } else {
                    format!("{tokens}, **varies between repeats**")
                };
                out.push_str(&format!(
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {tokens} |\n",
                    r.device,
                    r.prefill_tok_s.cell(1),
                    r.decode_tok_s.cell(2),
                    r.gdn_us_per_layer_token.cell(1),
                    Stat {
                        median: 100.0 * r.gdn_share.median,
                        min: 100.0 * r.gdn_share.min,
                        max: 100.0 * r.gdn_share.max,
                    }
                    .cell(1)
                        + " %",
                    bytes(r.bytes_moved_per_token),
                    r.peak_rss_bytes
                        .map_or("n/a".to_string(), |b| bytes(b as f64)),
                ));
            }
            Outcome::Failed(why) => {
                out.push_str(&format!(
                    "| {name} | **FAILED**: {} | | | | | | | |\n",
                    why.replace('|', "\\|").replace('\n', " ")
                ));
            }
        }
    }
    out.push_str(&format!(
        "\nCells: median (min–max) over the repeats. Peak RSS: {rss_note}.\n\n"
    ));
    out.push_str(
        "| backend | GDN layers | state bytes/token | recurrence FLOP/token | FLOP/byte | achieved \
         GB/s | device GB/s | of device BW | device bandwidth from |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (name, outcome) in outcomes {
        if let Outcome::Measured { result, .. } = outcome {
            let r = &result.roofline;
            out.push_str(&format!(
                "| {name} | {} | {} | {:.3e} | {:.3} | {:.1} | {} | {} | {} |\n",
                r.gdn_layers,
                bytes(r.state_bytes_per_token),
                r.flops_per_token,
                r.arithmetic_intensity(),
                r.achieved_gb_s,
                r.device
                    .as_ref()
                    .map_or("n/a".into(), |d| format!("{:.1}", d.gb_s)),
                r.fraction_of_device()
                    .map_or("n/a".into(), |f| format!("{:.0} %", 100.0 * f)),
                r.device
                    .as_ref()
                    .map_or("not modelled", |d| d.source.as_str()),
            ));
        }
    }
    out
}
