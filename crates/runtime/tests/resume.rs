//! `Generator::resume`: continuing the sequence a model already holds gives exactly the tokens
//! of an uninterrupted run (greedy, and seeded sampling with the sampler's RNG position carried
//! over), feeds only the pending token, never resets, and refuses inconsistent requests before
//! the model runs.

mod common;

use std::ops::ControlFlow;

use common::BigramTableModel;
use hybrid_runtime::{
    GenerateOptions, GeneratedToken, Generator, LanguageModel, ModelError, RuntimeError, Sampler,
    SamplingParams,
};

fn keep_going(_: &GeneratedToken<'_>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::greedy()
    }
}

#[test]
fn greedy_resume_continues_exactly_and_feeds_only_the_pending_token() {
    let path = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let mut whole = BigramTableModel::new(16, 64).with_path(&path);
    let uninterrupted = Generator::new(
        &mut whole,
        Sampler::new(SamplingParams::greedy()).unwrap(),
        None,
    )
    .unwrap()
    .generate(&[1], &GenerateOptions::new(7, vec![]), &mut keep_going)
    .unwrap()
    .generated_ids;
    assert_eq!(uninterrupted, [2, 3, 4, 5, 6, 7, 8]);

    let mut model = BigramTableModel::new(16, 64).with_path(&path);
    let mut generator = Generator::new(
        &mut model,
        Sampler::new(SamplingParams::greedy()).unwrap(),
        None,
    )
    .unwrap();
    let first = generator
        .generate(&[1], &GenerateOptions::new(3, vec![]), &mut keep_going)
        .unwrap();
    let history: Vec<u32> = [vec![1], first.generated_ids.clone()].concat();
    let second = generator
        .resume(
            &history,
            history.len() - 1,
            &GenerateOptions::new(4, vec![]),
            &mut keep_going,
        )
        .unwrap();
    assert_eq!(
        [first.generated_ids, second.generated_ids.clone()].concat(),
        uninterrupted
    );
    assert_eq!(second.prompt_ids, history);
    assert_eq!(second.prefill_tokens, 1);
    assert_eq!(second.decode_steps, 3);
    drop(generator);
    // One reset (the first generate), and the resume's first forward is the pending token alone.
    assert_eq!(model.resets, 1);
    assert_eq!(model.calls, whole.calls);
}

#[test]
fn seeded_sampling_resumes_with_the_carried_rng_position() {
    let options = |n| GenerateOptions::new(n, vec![]);
    let mut whole = BigramTableModel::new(64, 256);
    let uninterrupted = Generator::new(&mut whole, Sampler::new(sampled(11)).unwrap(), None)
        .unwrap()
        .generate(&[0], &options(20), &mut keep_going)
        .unwrap()
        .generated_ids;

    let mut model = BigramTableModel::new(64, 256);
    let mut generator =
        Generator::new(&mut model, Sampler::new(sampled(11)).unwrap(), None).unwrap();
    let first = generator
        .generate(&[0], &options(8), &mut keep_going)
        .unwrap();
    let position = generator.sampler_mut().rng_position();
    assert!(position > 0, "sampling draws random numbers");
    drop(generator);
    let history: Vec<u32> = [vec![0], first.generated_ids.clone()].concat();

    // A new generator (as after loading a snapshot) whose sampler continues at the position.
    let resumed_sampler = Sampler::resume_at(sampled(11), position).unwrap();
    let mut generator = Generator::new(&mut model, resumed_sampler, None).unwrap();
    let second = generator
        .resume(&history, history.len() - 1, &options(12), &mut keep_going)
        .unwrap();
    assert_eq!(
        [first.generated_ids.clone(), second.generated_ids].concat(),
        uninterrupted
    );

    // Control: a re-seeded sampler repeats the first draws, so it does not continue the run.
    let reseeded = Sampler::new(sampled(11)).unwrap();
    let mut generator = Generator::new(&mut model, reseeded, None).unwrap();
    let third = generator
        .resume(&history, history.len() - 1, &options(12), &mut keep_going)
        .unwrap();
    assert_ne!(third.generated_ids, uninterrupted[8..]);
}

/// The bigram test double plus a position report, like the real engine.
struct Positioned(BigramTableModel);

impl LanguageModel for Positioned {
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_position_embeddings(&self) -> usize {
        self.0.max_position_embeddings()
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.0.forward(tokens)
    }
    fn reset(&mut self) -> Result<(), ModelError> {
        self.0.reset()
    }
    fn position(&self) -> Option<usize> {
        Some(self.0.position)
    }
}

#[test]
fn inconsistent_resumes_are_refused_before_the_model_runs() {
    let mut model = Positioned(BigramTableModel::new(16, 10));
    let mut generator = Generator::new(
        &mut model,
        Sampler::new(SamplingParams::greedy()).unwrap(),
        None,
    )
    .unwrap();
    let options = GenerateOptions::new(2, vec![]);

    let err = generator
        .resume(&[1, 2, 3], 3, &options, &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::NothingToResume { history: 3 }),
        "{err}"
    );

    // The model is at position 0, not 2.
    let err = generator
        .resume(&[1, 2, 3], 2, &options, &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::ResumePositionMismatch {
                expected: 2,
                actual: 0
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("position 0"), "{err}");

    // 9 tokens of history + 2 new ones exceed the 10 positions.
    let history = [1; 9];
    let err = generator
        .resume(&history, 8, &options, &mut keep_going)
        .unwrap_err();
    assert!(matches!(err, RuntimeError::PromptTooLong { .. }), "{err}");

    let err = generator
        .resume(&[1, 99], 1, &options, &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::PromptTokenOutOfVocab { id: 99, .. }),
        "{err}"
    );
    drop(generator);
    assert!(
        model.0.calls.is_empty(),
        "nothing may run: {:?}",
        model.0.calls
    );
}
