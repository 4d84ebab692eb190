//! Next-token selection: [`SamplingParams`] and the seeded [`Sampler`].
//!
//! Stages run in the order llama.cpp and Hugging Face transformers use:
//! repeat penalty → temperature → top-k → top-p → draw.
//!
//! * **Repeat penalty** (CTRL paper, HF `repetition_penalty`, llama.cpp `--repeat-penalty`):
//!   each *distinct* token among the last `repeat_last_n` tokens of the sequence (prompt
//!   included) has a positive logit divided by the penalty and a negative one multiplied by it,
//!   so it always becomes less likely. A token repeated in the window is penalised once.
//! * **Temperature** `T`: probabilities ∝ `exp(logit / T)`; `T = 0` means greedy: the highest
//!   logit after the penalty wins, ties going to the lowest id.
//! * **Top-k**: only the `k` highest logits stay (ties at the cut go to lower ids).
//! * **Top-p** (nucleus): the survivors are sorted by probability (renormalised over the top-k
//!   survivors) and the shortest prefix whose cumulative probability reaches `p` stays; the
//!   token that crosses `p` is kept, so at least one token always remains.
//! * **Draw**: one uniform number from a ChaCha8 generator seeded with [`SamplingParams::seed`],
//!   so a seed fixes the whole sequence of choices on every platform and release.
//!
//! Logits may be `-inf` (a masked token, never chosen); NaN or `+inf` is an error.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, RuntimeError};

/// How many of the most recent tokens the repeat penalty looks at, unless told otherwise
/// (llama.cpp's default).
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

/// The seed used when none is given, so runs are reproducible by default.
pub const DEFAULT_SEED: u64 = 299_792_458;

/// Settings for choosing the next token. [`Default`] is greedy decoding with no penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` selects greedy decoding (`--temperature`).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; `None` disables top-k (`--top-k`).
    pub top_k: Option<usize>,
    /// Nucleus threshold in (0, 1]; `None` or `1` disables top-p (`--top-p`).
    pub top_p: Option<f64>,
    /// Repeat penalty (> 0); `1` disables it (`--repeat-penalty`).
    pub repeat_penalty: f64,
    /// How many of the latest tokens the repeat penalty considers (`--repeat-last-n`).
    pub repeat_last_n: usize,
    /// Seed of the random generator (`--seed`).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, no top-k/top-p, no repeat penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed: DEFAULT_SEED,
        }
    }

    /// Whether these settings pick the arg-max instead of drawing.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The `generation_config.json` field (and snapshot sampler field) a flag of
    /// [`RuntimeError::InvalidSamplingParam`] corresponds to.
    pub fn field_of_flag(flag: &str) -> &'static str {
        match flag {
            "--temperature" => "temperature",
            "--top-k" => "top_k",
            "--top-p" => "top_p",
            "--repeat-penalty" => "repetition_penalty",
            _ => "a sampling field",
        }
    }

    /// Checks every field's range; the error names the flag to fix.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid(
                "--temperature",
                self.temperature,
                "must be a finite number >= 0 (0 = greedy decoding)",
            ));
        }
        if self.top_k == Some(0) {
            return Err(invalid(
                "--top-k",
                0,
                "must be >= 1 (leave it unset to disable top-k)",
            ));
        }
        if let Some(p) = self.top_p {
            // Written so that NaN fails too.
            if !(p > 0.0 && p <= 1.0) {
                return Err(invalid(
                    "--top-p",
                    p,
                    "must be in (0, 1] (1 disables nucleus sampling)",
                ));
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(invalid(
                "--repeat-penalty",
                self.repeat_penalty,
                "must be a finite number > 0 (1 disables the penalty)",
            ));
        }
        Ok(())
    }
}

fn invalid(flag: &'static str, value: impl ToString, expected: &'static str) -> RuntimeError {
    RuntimeError::InvalidSamplingParam {
        flag,
        value: value.to_string(),
        expected,
    }
}

/// A token still in the running, with its (penalised) logit.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Higher logit first; equal logits by lower id, so every ordering (and hence every draw) is
/// deterministic.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Chooses next tokens from logits according to [`SamplingParams`], deterministically for a
/// given seed. Keeps scratch buffers, so one sampler per generation loop avoids per-token
/// allocations beyond the first.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    logits: Vec<f32>,
    recent: Vec<u32>,
    candidates: Vec<Candidate>,
    weights: Vec<f64>,
}

impl Sampler {
    /// Validates `params` and seeds the generator with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            logits: Vec::new(),
            recent: Vec::new(),
            candidates: Vec::new(),
            weights: Vec::new(),
        })
    }

    /// The settings in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How far the random generator has advanced (ChaCha's 32-bit word position, < 2⁶⁸).
    /// With [`Sampler::resume_at`] it lets a saved generation continue with exactly the draws an
    /// uninterrupted one would make.
    pub fn rng_position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// A sampler for `params` whose random generator continues at `position` (from
    /// [`Sampler::rng_position`] of a sampler with the same seed).
    pub fn resume_at(params: SamplingParams, position: u128) -> Result<Self> {
        let mut sampler = Self::new(params)?;
        sampler.rng.set_word_pos(position);
        Ok(sampler)
    }

    /// Picks the next token from `logits` (one per vocabulary id). `history` is the sequence so
    /// far (prompt and generated tokens, oldest first); only its last `repeat_last_n` entries
    /// matter, and ids outside the vocabulary are ignored by the penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        self.prepare(logits, history)?;
        if self.params.is_greedy() {
            return self.argmax();
        }
        self.filter()?;
        let total: f64 = self.weights.iter().sum();
        let target = self.uniform() * total;
        let mut cumulative = 0.0;
        for (candidate, weight) in self.candidates.iter().zip(&self.weights) {
            cumulative += weight;
            if target < cumulative {
                return Ok(candidate.id);
            }
        }
        // Rounding can leave `target` a hair above the final sum: the last survivor it is.
        Ok(self.candidates[self.candidates.len() - 1].id)
    }

    /// The distribution [`sample`](Self::sample) would draw from for these inputs, as
    /// `(token id, probability)` pairs, most likely first; greedy settings give the single
    /// arg-max with probability 1. Draws no random number. Useful to inspect the stages.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> Result<Vec<(u32, f64)>> {
        self.prepare(logits, history)?;
        if self.params.is_greedy() {
            return Ok(vec![(self.argmax()?, 1.0)]);
        }
        self.filter()?;
        let total: f64 = self.weights.iter().sum();
        let mut dist: Vec<(u32, f64)> = self
            .candidates
            .iter()
            .zip(&self.weights)
            .map(|(c, w)| (c.id, w / total))
            .collect();
        dist.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(dist)
    }

    /// Checks the logits and applies the repeat penalty into the scratch copy.
    fn prepare(&mut self, logits: &[f32], history: &[u32]) -> Result<()> {
        if let Some((token_id, &value)) = logits
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
        {
            return Err(RuntimeError::NonFiniteLogit { token_id, value });
        }
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        if self.params.repeat_penalty != 1.0 && self.params.repeat_last_n > 0 {
            let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
            // Distinct ids only: a token seen three times is penalised once (as in HF and
            // llama.cpp), otherwise the penalty would compound with frequency.
            self.recent.clear();
            self.recent.extend_from_slice(window);
            self.recent.sort_unstable();
            self.recent.dedup();
            let penalty = self.params.repeat_penalty;
            for &id in &self.recent {
                if let Some(logit) = self.logits.get_mut(id as usize) {
                    let l = f64::from(*logit);
                    *logit = if l > 0.0 { l / penalty } else { l * penalty } as f32;
                }
            }
        }
        Ok(())
    }

    /// The highest penalised logit, lowest id on ties; `-inf` never wins.
    fn argmax(&self) -> Result<u32> {
        let mut best: Option<(usize, f32)> = None;
        for (id, &logit) in self.logits.iter().enumerate() {
            // Strict `>` keeps the first (lowest) id among equals.
            if logit > f32::NEG_INFINITY && best.is_none_or(|(_, b)| logit > b) {
                best = Some((id, logit));
            }
        }
        match best {
            Some((id, _)) => Ok(id as u32),
            None => Err(RuntimeError::NoCandidates {
                vocab: self.logits.len(),
            }),
        }
    }

    /// Temperature, top-k and top-p: leaves the survivors in `candidates` and their
    /// unnormalised probabilities in `weights`.
    fn filter(&mut self) -> Result<()> {
        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, &logit)| logit > f32::NEG_INFINITY)
                .map(|(id, &logit)| Candidate {
                    id: id as u32,
                    logit,
                }),
        );
        if self.candidates.is_empty() {
            return Err(RuntimeError::NoCandidates {
                vocab: self.logits.len(),
            });
        }

        // Top-k on logits: the order is the same as on probabilities at any temperature > 0.
        if let Some(k) = self.params.top_k {
            if k < self.candidates.len() {
                // Partition first so a 150k vocabulary is not fully sorted for k = 40.
                self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
                self.candidates.truncate(k);
            }
        }

        // Softmax at temperature T, computed as exp((l - max) / T) in f64: subtracting the
        // maximum first keeps every exponent <= 0, so a tiny T cannot overflow into inf/inf.
        let max = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let (max, t) = (f64::from(max), self.params.temperature);
        let weight = |c: &Candidate| ((f64::from(c.logit) - max) / t).exp();

        match self.params.top_p.filter(|&p| p < 1.0) {
            Some(p) => self.keep_nucleus(p, &weight),
            // Without top-p the draw needs no order: survivors stay in id order (or are
            // sorted when top-k left only a few), which is just as deterministic.
            None if self.params.top_k.is_some() => {
                self.candidates.sort_unstable_by(by_logit_desc);
            }
            None => {}
        }
        self.weights.clear();
        self.weights.extend(self.candidates.iter().map(weight));
        Ok(())
    }

    /// Top-p: keeps the most likely candidates, in descending order, up to and including the
    /// one where the cumulative probability reaches `p`.
    ///
    /// The nucleus is usually a few dozen tokens of a 150k vocabulary, so instead of sorting
    /// everything it sorts the best 256, then 2,048, ... until their mass reaches `p` — the
    /// same result as a full sort, at O(vocab) cost per token in the common case.
    fn keep_nucleus(&mut self, p: f64, weight: &dyn Fn(&Candidate) -> f64) {
        let total: f64 = self.candidates.iter().map(weight).sum();
        let threshold = p * total;
        let len = self.candidates.len();
        let mut head = len.min(256);
        loop {
            if head < len {
                self.candidates
                    .select_nth_unstable_by(head - 1, by_logit_desc);
            }
            self.candidates[..head].sort_unstable_by(by_logit_desc);
            let mut cumulative = 0.0;
            for (i, c) in self.candidates[..head].iter().enumerate() {
                cumulative += weight(c);
                if cumulative >= threshold {
                    self.candidates.truncate(i + 1);
                    return;
                }
            }
            if head == len {
                // Rounding kept the sum a hair below p * total: everything stays.
                return;
            }
            head = len.min(head * 8);
        }
    }

    /// A uniform number in [0, 1) with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::greedy()
        }
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).expect("valid params")
    }

    /// Logits whose softmax at T = 1 is exactly `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn assert_dist(got: &[(u32, f64)], want: &[(u32, f64)]) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for ((gi, gp), (wi, wp)) in got.iter().zip(want) {
            assert_eq!(gi, wi, "got {got:?}, want {want:?}");
            assert!((gp - wp).abs() < 1e-6, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn invalid_params_name_their_flag() {
        let cases = [
            (
                SamplingParams {
                    temperature: -0.5,
                    ..params()
                },
                "--temperature",
            ),
            (
                SamplingParams {
                    temperature: f64::NAN,
                    ..params()
                },
                "--temperature",
            ),
            (
                SamplingParams {
                    temperature: f64::INFINITY,
                    ..params()
                },
                "--temperature",
            ),
            (
                SamplingParams {
                    top_k: Some(0),
                    ..params()
                },
                "--top-k",
            ),
            (
                SamplingParams {
                    top_p: Some(0.0),
                    ..params()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    top_p: Some(1.5),
                    ..params()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    top_p: Some(f64::NAN),
                    ..params()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..params()
                },
                "--repeat-penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: f64::INFINITY,
                    ..params()
                },
                "--repeat-penalty",
            ),
        ];
        for (p, flag) in cases {
            let err = Sampler::new(p.clone()).expect_err(&format!("{p:?} must be rejected"));
            match &err {
                RuntimeError::InvalidSamplingParam { flag: f, .. } => assert_eq!(*f, flag),
                other => panic!("{p:?}: unexpected error {other:?}"),
            }
            assert!(err.to_string().contains(flag), "{err}");
        }
        // The edges of the accepted ranges.
        for ok in [
            SamplingParams {
                top_p: Some(1.0),
                top_k: Some(1),
                ..params()
            },
            SamplingParams {
                temperature: 0.0,
                repeat_penalty: 0.01,
                ..params()
            },
        ] {
            Sampler::new(ok).expect("edge values are valid");
        }
    }

    #[test]
    fn greedy_takes_argmax_and_lowest_id_on_ties() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[-3.0, -2.0, -2.5], &[]).unwrap(), 1);
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, -1e30, f32::NEG_INFINITY], &[])
                .unwrap(),
            1
        );
        assert_eq!(s.sample(&[5.0, 5.0, 5.0], &[]).unwrap(), 0);
        assert_eq!(
            s.distribution(&[0.0, 7.0, 1.0], &[]).unwrap(),
            vec![(1, 1.0)]
        );
    }

    #[test]
    fn nan_and_positive_infinity_are_errors_naming_the_token() {
        for mode in [SamplingParams::greedy(), params()] {
            let mut s = sampler(mode);
            let err = s.sample(&[0.0, 1.0, f32::NAN, 2.0], &[]).unwrap_err();
            assert!(
                matches!(err, RuntimeError::NonFiniteLogit { token_id: 2, value } if value.is_nan()),
                "{err:?}"
            );
            assert!(err.to_string().contains("token id 2"), "{err}");
            let err = s.sample(&[f32::INFINITY, 1.0], &[]).unwrap_err();
            assert!(
                matches!(err, RuntimeError::NonFiniteLogit { token_id: 0, .. }),
                "{err:?}"
            );
            let err = s.sample(&[f32::NEG_INFINITY; 3], &[]).unwrap_err();
            assert!(
                matches!(err, RuntimeError::NoCandidates { vocab: 3 }),
                "{err:?}"
            );
            let err = s.sample(&[], &[]).unwrap_err();
            assert!(
                matches!(err, RuntimeError::NoCandidates { vocab: 0 }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn repeat_penalty_divides_positive_multiplies_negative_once_per_token() {
        let mut s = sampler(SamplingParams {
            repeat_penalty: 2.0,
            ..params()
        });
        s.prepare(&[2.0, -2.0, 1.0, 0.5], &[0, 1, 0, 0]).unwrap();
        assert_eq!(s.logits, vec![1.0, -4.0, 1.0, 0.5]);
        // Ids outside the vocabulary in the history are ignored, not a crash.
        s.prepare(&[2.0, -2.0], &[7, 1]).unwrap();
        assert_eq!(s.logits, vec![2.0, -4.0]);
    }

    #[test]
    fn repeat_penalty_only_sees_the_last_n_tokens() {
        let mut s = sampler(SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..params()
        });
        s.prepare(&[2.0, 2.0, 2.0, 2.0], &[0, 1, 2]).unwrap();
        assert_eq!(s.logits, vec![2.0, 1.0, 1.0, 2.0]);
        let mut off = sampler(SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 0,
            ..params()
        });
        off.prepare(&[2.0, 2.0], &[0, 1]).unwrap();
        assert_eq!(off.logits, vec![2.0, 2.0]);
    }

    #[test]
    fn repeat_penalty_applies_before_greedy_choice() {
        let mut s = sampler(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        // 3.0 / 2 = 1.5 < 2.0: the repeated token loses.
        assert_eq!(s.sample(&[3.0, 2.0], &[0]).unwrap(), 1);
        assert_eq!(s.sample(&[3.0, 2.0], &[1]).unwrap(), 0);
    }

    #[test]
    fn temperature_one_reproduces_the_softmax_and_two_flattens_it() {
        let logits = logits_of(&[0.5, 0.3, 0.2]);
        let mut t1 = sampler(params());
        assert_dist(
            &t1.distribution(&logits, &[]).unwrap(),
            &[(0, 0.5), (1, 0.3), (2, 0.2)],
        );
        // At T = 2 probabilities go as sqrt(p).
        let mut t2 = sampler(SamplingParams {
            temperature: 2.0,
            ..params()
        });
        let roots = [0.5f64.sqrt(), 0.3f64.sqrt(), 0.2f64.sqrt()];
        let z: f64 = roots.iter().sum();
        assert_dist(
            &t2.distribution(&logits, &[]).unwrap(),
            &[(0, roots[0] / z), (1, roots[1] / z), (2, roots[2] / z)],
        );
        // A vanishing temperature concentrates everything on the arg-max without NaN.
        let mut tiny = sampler(SamplingParams {
            temperature: 1e-300,
            ..params()
        });
        assert_dist(
            &tiny.distribution(&logits, &[]).unwrap(),
            &[(0, 1.0), (1, 0.0), (2, 0.0)],
        );
    }

    #[test]
    fn top_k_keeps_the_k_best_and_renormalises() {
        let logits = logits_of(&[0.2, 0.5, 0.05, 0.25]);
        let mut s = sampler(SamplingParams {
            top_k: Some(2),
            ..params()
        });
        assert_dist(
            &s.distribution(&logits, &[]).unwrap(),
            &[(1, 0.5 / 0.75), (3, 0.25 / 0.75)],
        );
        // Ties at the cut go to the lower ids.
        let mut tie = sampler(SamplingParams {
            top_k: Some(2),
            ..params()
        });
        assert_dist(
            &tie.distribution(&[1.0, 1.0, 1.0], &[]).unwrap(),
            &[(0, 0.5), (1, 0.5)],
        );
        // k larger than the vocabulary keeps everything.
        let mut big = sampler(SamplingParams {
            top_k: Some(10),
            ..params()
        });
        assert_eq!(big.distribution(&logits, &[]).unwrap().len(), 4);
    }

    #[test]
    fn top_p_keeps_the_shortest_prefix_reaching_p() {
        let logits = logits_of(&[0.05, 0.3, 0.5, 0.15]);
        let kept = |p: f64| {
            let mut s = sampler(SamplingParams {
                top_p: Some(p),
                ..params()
            });
            s.distribution(&logits, &[])
                .unwrap()
                .iter()
                .map(|&(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(0.4), vec![2]); // 0.5 already reaches 0.4
        assert_eq!(kept(0.75), vec![2, 1]); // 0.5 < 0.75 <= 0.8
        assert_eq!(kept(0.9), vec![2, 1, 3]); // 0.8 < 0.9 <= 0.95
        assert_eq!(kept(0.97), vec![2, 1, 3, 0]);
        assert_eq!(kept(1.0), vec![2, 1, 3, 0]);
        let mut s = sampler(SamplingParams {
            top_p: Some(0.75),
            ..params()
        });
        assert_dist(
            &s.distribution(&logits, &[]).unwrap(),
            &[(2, 0.5 / 0.8), (1, 0.3 / 0.8)],
        );
    }

    #[test]
    fn top_p_applies_to_the_top_k_survivors_renormalised() {
        // Alone, top-p 0.83 keeps three tokens (0.5 + 0.3 = 0.8 < 0.83). After top-k 3 the
        // survivors renormalise to 0.526, 0.316, 0.158, and two already reach 0.842 >= 0.83.
        let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        let mut p_only = sampler(SamplingParams {
            top_p: Some(0.83),
            ..params()
        });
        assert_eq!(p_only.distribution(&logits, &[]).unwrap().len(), 3);
        let mut k_then_p = sampler(SamplingParams {
            top_k: Some(3),
            top_p: Some(0.83),
            ..params()
        });
        assert_dist(
            &k_then_p.distribution(&logits, &[]).unwrap(),
            &[(0, 0.5 / 0.8), (1, 0.3 / 0.8)],
        );
    }

    #[test]
    fn nucleus_on_a_large_vocabulary_matches_a_full_sort() {
        // 5,000 logits spread over [-4, 4] (a fixed LCG sequence, with ties): the nucleus
        // spans well over the first 256-candidate probe, so the widening path is exercised.
        let mut state = 12345u64;
        let logits: Vec<f32> = (0..5_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) % 801) as f32 / 100.0 - 4.0
            })
            .collect();
        for (p, t) in [(0.9, 1.0), (0.5, 0.7), (0.999, 2.0), (0.05, 1.0)] {
            // Reference: softmax of everything, full sort, cut where the sum reaches p.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut all: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
                .collect();
            let total: f64 = all.iter().map(|x| x.1).sum();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut cumulative = 0.0;
            let keep = all
                .iter()
                .position(|x| {
                    cumulative += x.1;
                    cumulative >= p * total
                })
                .map_or(all.len(), |i| i + 1);
            let kept_mass: f64 = all[..keep].iter().map(|x| x.1).sum();
            let want: Vec<(u32, f64)> = all[..keep]
                .iter()
                .map(|&(i, w)| (i, w / kept_mass))
                .collect();

            let mut s = sampler(SamplingParams {
                temperature: t,
                top_p: Some(p),
                ..params()
            });
            let got = s.distribution(&logits, &[]).unwrap();
            assert_dist(&got, &want);
            if p == 0.9 {
                assert!(keep > 256, "the case must need more than one probe: {keep}");
            }
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        let logits = logits_of(&[0.5, 0.3, 0.2]);
        let mut s = sampler(params());
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        // Standard error of each frequency is below 0.004; 0.02 is five of them.
        for (count, p) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let f = *count as f64 / n as f64;
            assert!((f - p).abs() < 0.02, "frequencies {counts:?}");
        }
    }

    #[test]
    fn draws_never_leave_the_filtered_set() {
        let logits = logits_of(&[0.1, 0.4, 0.05, 0.35, 0.1]);
        let mut s = sampler(SamplingParams {
            top_k: Some(3),
            top_p: Some(0.7),
            ..params()
        });
        // top-k 3 leaves {1, 3, 0}, renormalised 0.47, 0.41, 0.12: top-p 0.7 leaves {1, 3}.
        let mut seen = [false; 5];
        for _ in 0..2_000 {
            seen[s.sample(&logits, &[]).unwrap() as usize] = true;
        }
        assert_eq!(seen, [false, true, false, true, false]);
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let logits = logits_of(&[0.25, 0.25, 0.25, 0.25]);
        let run = |seed| {
            let mut s = sampler(SamplingParams { seed, ..params() });
            (0..200)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // Value stability across releases: the first draws for the default seed are pinned
        // (ChaCha8 output is specified, so these only change if the sampler itself changes).
        let first: Vec<u32> = run(DEFAULT_SEED).into_iter().take(8).collect();
        assert_eq!(first, PINNED_DEFAULT_SEED_DRAWS);
    }

    /// The first eight draws from four equally likely tokens with [`DEFAULT_SEED`].
    const PINNED_DEFAULT_SEED_DRAWS: [u32; 8] = [0, 2, 3, 3, 1, 1, 2, 0];
}
