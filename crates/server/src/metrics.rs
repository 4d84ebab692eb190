//! Counters for `GET /metrics`, in Prometheus' text exposition format.
//!
//! A handful of counters and gauges written by the engine thread and the HTTP handlers, read
//! when scraped: a mutex around plain numbers is all it takes (a metrics framework would add a
//! registry, macros and an exporter for the same dozen lines of text).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How far back the `decode_tokens_per_second` gauge looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Finished HTTP requests by (endpoint, status code).
    pub requests: BTreeMap<(&'static str, u16), u64>,
    /// Requests refused with 429 because the queue was full.
    pub rejected_queue_full: u64,
    /// Requests whose client went away before they finished.
    pub cancelled: u64,
    /// Requests that failed inside the engine.
    pub engine_errors: u64,
    /// Prompt tokens of finished requests, and how many of them came from the state cache.
    pub prompt_tokens: u64,
    /// Prompt tokens continued from a cached state instead of being prefilled.
    pub prompt_tokens_cached: u64,
    /// Generated tokens of finished requests.
    pub completion_tokens: u64,
    /// Prompt tokens prefilled and the time it took.
    pub prefill_tokens: u64,
    /// Wall time of the prefill chunks.
    pub prefill_time: Duration,
    /// Decode steps, the tokens they produced (one per sequence) and their wall time.
    pub decode_steps: u64,
    /// Tokens produced by decode steps.
    pub decode_tokens: u64,
    /// Wall time of the decode steps.
    pub decode_time: Duration,
    /// Sequences in the last decode step.
    pub batch_size: usize,
    /// Sequences admitted (prefilling or decoding).
    pub active: usize,
    /// Requests waiting for a place in the batch (read from the engine handle when scraped).
    pub queued: usize,
    /// State-cache lookups that found a state, and those that did not.
    pub cache_hits: u64,
    /// State-cache lookups that found nothing.
    pub cache_misses: u64,
    /// States kept and their bytes.
    pub cache_entries: usize,
    /// Bytes of the kept states.
    pub cache_bytes: usize,
    /// The cache's byte budget.
    pub cache_budget: usize,
    /// The GDN backend's name and the time spent in it.
    pub gdn_backend: String,
    /// Cumulative time inside the GDN backend.
    pub gdn_time: Duration,
    recent_steps: VecDeque<(Instant, usize, Duration)>,
}

impl Stats {
    /// Records one decode step of `batch` sequences that took `took`.
    pub fn record_step(&mut self, batch: usize, took: Duration) {
        let now = Instant::now();
        self.decode_steps += 1;
        self.decode_tokens += batch as u64;
        self.decode_time += took;
        self.batch_size = batch;
        self.recent_steps.push_back((now, batch, took));
        while self
            .recent_steps
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.recent_steps.pop_front();
        }
    }

    /// Aggregate decode tokens per second of decode time over the last few seconds.
    pub fn recent_decode_rate(&self) -> f64 {
        let now = Instant::now();
        let (tokens, time) = self
            .recent_steps
            .iter()
            .filter(|(at, _, _)| now.duration_since(*at) <= RATE_WINDOW)
            .fold((0usize, Duration::ZERO), |(n, t), (_, b, d)| {
                (n + b, t + *d)
            });
        if time.is_zero() {
            0.0
        } else {
            tokens as f64 / time.as_secs_f64()
        }
    }
}

/// The server's counters, shared by the engine thread and the handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    stats: Mutex<Stats>,
}

impl Metrics {
    /// Locks the counters for an update or a read.
    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock leaves plain numbers behind: still fine to report.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a finished HTTP request.
    pub fn record_request(&self, endpoint: &'static str, status: u16) {
        *self.lock().requests.entry((endpoint, status)).or_default() += 1;
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP hybrid_{name} {help}");
            let _ = writeln!(out, "# TYPE hybrid_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "hybrid_{name}{labels} {value}");
            }
        };
        let plain = |v: String| vec![(String::new(), v)];
        let requests: Vec<_> = s
            .requests
            .iter()
            .map(|((endpoint, code), n)| {
                (
                    format!("{{endpoint=\"{endpoint}\",code=\"{code}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        metric(
            "requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
            &requests,
        );
        metric(
            "requests_rejected_queue_full_total",
            "counter",
            "Requests refused with 429 because the queue was full.",
            &plain(s.rejected_queue_full.to_string()),
        );
        metric(
            "requests_cancelled_total",
            "counter",
            "Requests whose client disconnected before they finished.",
            &plain(s.cancelled.to_string()),
        );
        metric(
            "engine_errors_total",
            "counter",
            "Requests that failed inside the engine.",
            &plain(s.engine_errors.to_string()),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of finished requests.",
            &plain(s.prompt_tokens.to_string()),
        );
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens continued from the state cache, not recomputed.",
            &plain(s.prompt_tokens_cached.to_string()),
        );
        metric(
            "completion_tokens_total",
            "counter",
            "Generated tokens of finished requests.",
            &plain(s.completion_tokens.to_string()),
        );
        metric(
            "prefill_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            &plain(s.prefill_tokens.to_string()),
        );
        metric(
            "prefill_seconds_total",
            "counter",
            "Wall time of prefill chunks.",
            &plain(s.prefill_time.as_secs_f64().to_string()),
        );
        metric(
            "decode_steps_total",
            "counter",
            "Batched decode steps.",
            &plain(s.decode_steps.to_string()),
        );
        metric(
            "decode_tokens_total",
            "counter",
            "Tokens produced by decode steps.",
            &plain(s.decode_tokens.to_string()),
        );
        metric(
            "decode_seconds_total",
            "counter",
            "Wall time of decode steps.",
            &plain(s.decode_time.as_secs_f64().to_string()),
        );
        metric(
            "decode_tokens_per_second",
            "gauge",
            "Aggregate decode tokens per second of decode time, last 5 s.",
            &plain(format!("{:.3}", s.recent_decode_rate())),
        );
        metric(
            "batch_size",
            "gauge",
            "Sequences in the last decode step.",
            &plain(s.batch_size.to_string()),
        );
        metric(
            "active_sequences",
            "gauge",
            "Requests admitted to the batch (prefilling or decoding).",
            &plain(s.active.to_string()),
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for a place in the batch.",
            &plain(s.queued.to_string()),
        );
        metric(
            "gdn_seconds_total",
            "counter",
            "Time inside the GDN backend.",
            &[(
                format!("{{backend=\"{}\"}}", s.gdn_backend),
                s.gdn_time.as_secs_f64().to_string(),
            )],
        );
        metric(
            "state_cache_hits_total",
            "counter",
            "Prompts continued from a cached conversation state.",
            &plain(s.cache_hits.to_string()),
        );
        metric(
            "state_cache_misses_total",
            "counter",
            "Prompts with no cached state to continue.",
            &plain(s.cache_misses.to_string()),
        );
        metric(
            "state_cache_entries",
            "gauge",
            "Conversation states kept.",
            &plain(s.cache_entries.to_string()),
        );
        metric(
            "state_cache_bytes",
            "gauge",
            "Bytes of the kept conversation states.",
            &plain(s.cache_bytes.to_string()),
        );
        metric(
            "state_cache_budget_bytes",
            "gauge",
            "The state cache's byte budget (--state-cache-mb).",
            &plain(s.cache_budget.to_string()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.record_request("chat", 200);
        metrics.record_request("chat", 200);
        metrics.lock().record_step(4, Duration::from_millis(100));
        metrics.lock().gdn_backend = "cpu".into();
        let text = metrics.render();
        assert!(text.contains("hybrid_requests_total{endpoint=\"chat\",code=\"200\"} 2\n"));
        assert!(text
            .contains("# TYPE hybrid_decode_tokens_total counter\nhybrid_decode_tokens_total 4\n"));
        assert!(text.contains("hybrid_decode_tokens_per_second 40.000\n"));
        assert!(text.contains("hybrid_gdn_seconds_total{backend=\"cpu\"} 0\n"));
    }
}
