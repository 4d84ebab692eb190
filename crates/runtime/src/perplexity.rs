//! Perplexity over a long text: which tokens each window runs and scores (Hugging Face's
//! sliding windows, counted per token), and the arithmetic on the logits. Used by
//! `examples/perplexity`.

/// One window: the model runs `tokens[start..end]` from a fresh state and scores the tokens at
/// `targets` (absolute positions, each predicted from the logits one position earlier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// First token the window runs.
    pub start: usize,
    /// One past the last token it runs.
    pub end: usize,
    /// Absolute positions it scores, ascending.
    pub targets: Vec<usize>,
}

impl Window {
    /// Hugging Face's sliding windows over `len` tokens: a window of up to `ctx` tokens starts
    /// every `stride` tokens until one reaches the end; each scores the positions after the
    /// previous window's end that it can predict (not its own first token), so no position is
    /// scored twice, and with `stride < ctx` every position from 1 on is scored. Needs
    /// `len ≥ 2` and `1 ≤ stride ≤ ctx`.
    pub fn plan(len: usize, ctx: usize, stride: usize) -> Vec<Window> {
        let mut windows = Vec::new();
        let mut scored_until = 1; // position 0 has nothing to be predicted from
        let mut start = 0;
        loop {
            let end = (start + ctx).min(len);
            let first_target = scored_until.max(start + 1);
            if first_target < end {
                windows.push(Window {
                    start,
                    end,
                    targets: (first_target..end).collect(),
                });
                scored_until = end;
            }
            if end == len {
                return windows;
            }
            start += stride;
        }
    }
}

/// A hash of the tokens and the scored positions, so that a KL comparison refuses a base run
/// made from another text, tokenizer or window plan.
pub fn plan_hash(tokens: &[u32], windows: &[Window]) -> u64 {
    // FNV-1a, 64-bit: stable across builds and platforms (std's hasher is not).
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |value: u64| {
        for byte in value.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for &token in tokens {
        eat(u64::from(token));
    }
    for window in windows {
        eat(window.start as u64);
        eat(window.end as u64);
        eat(window.targets.len() as u64);
    }
    hash
}

/// `out = logits − logsumexp(logits)`, accumulated in f64.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (f64::from(l) - lse) as f32;
    }
}

/// Mean of `values` and the standard error of that mean (0 for fewer than two values).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_predictable_position_is_scored_once() {
        for (len, ctx, stride) in [
            (2, 2, 2),
            (10, 4, 4),
            (10, 4, 2),
            (10, 4, 1),
            (11, 4, 3),
            (3, 8, 8),
        ] {
            let windows = Window::plan(len, ctx, stride);
            let scored: Vec<usize> = windows.iter().flat_map(|w| w.targets.clone()).collect();
            // Disjoint windows cannot predict their own first token; overlapping ones can.
            let unscored: Vec<usize> = windows.iter().skip(1).map(|w| w.start).collect();
            let want: Vec<usize> = (1..len)
                .filter(|p| stride < ctx || !unscored.contains(p))
                .collect();
            assert_eq!(scored, want, "{len}/{ctx}/{stride}");
            for w in &windows {
                assert!(w.end - w.start <= ctx && w.start < w.end && w.end <= len);
                assert!(w.targets.iter().all(|&t| t > w.start && t < w.end));
            }
        }
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let mut out = [0f32; 4];
        log_softmax(&[1.0, 2.0, 3.0, -100.0], &mut out);
        let total: f64 = out.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert!(out[2] > out[1] && out[1] > out[0]);
    }
}
