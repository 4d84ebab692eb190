//! The generation loop, driven against `BigramTableModel` (a test double whose greedy
//! output is known exactly) and the real tiny tokenizer for streaming.

mod common;

use std::ops::ControlFlow;

use common::{tiny_tokenizer, BigramTableModel, InjectedFailure, TINY_IM_END};
use hybrid_runtime::{
    GenerateOptions, GeneratedToken, Generator, RuntimeError, Sampler, SamplingParams, StopReason,
};

fn greedy() -> Sampler {
    Sampler::new(SamplingParams::greedy()).unwrap()
}

fn keep_going(_: &GeneratedToken<'_>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn greedy_prefill_then_one_token_per_step_until_eos() {
    let mut model = BigramTableModel::new(16, 64).with_path(&[3, 4, 5, 6, 7, 8, 9]);
    let mut seen = Vec::new();
    let out = {
        let mut g = Generator::new(&mut model, greedy(), None).unwrap();
        g.generate(
            &[1, 2, 3],
            &GenerateOptions::new(20, vec![9, 15]),
            &mut |t| {
                seen.push((t.index, t.id, t.is_eos, t.is_last, t.text.to_owned()));
                ControlFlow::Continue(())
            },
        )
        .unwrap()
    };
    assert_eq!(out.prompt_ids, vec![1, 2, 3]);
    assert_eq!(out.generated_ids, vec![4, 5, 6, 7, 8, 9]);
    assert_eq!(out.stop_reason, StopReason::Eos);
    assert_eq!(out.text, None);
    // One prefill of the whole prompt, then each generated token fed once, except the last.
    assert_eq!(
        model.calls,
        vec![vec![1, 2, 3], vec![4], vec![5], vec![6], vec![7], vec![8]]
    );
    assert_eq!(model.resets, 1);
    assert_eq!(out.decode_steps, 5);
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[0], (0, 4, false, false, String::new()));
    assert_eq!(seen[5], (5, 9, true, true, String::new()));
}

#[test]
fn stops_at_max_new_tokens_without_feeding_the_last_token() {
    let mut model = BigramTableModel::new(16, 64).with_path(&[1, 2, 3, 4, 5, 6]);
    let out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1], &GenerateOptions::new(3, vec![]), &mut keep_going)
        .unwrap();
    assert_eq!(out.generated_ids, vec![2, 3, 4]);
    assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    assert_eq!(model.calls, vec![vec![1], vec![2], vec![3]]);
    assert_eq!(out.decode_steps, 2);

    // max_new_tokens = 0: the prompt is still evaluated (a prefill-only run), nothing generated.
    let out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1, 2], &GenerateOptions::new(0, vec![]), &mut keep_going)
        .unwrap();
    assert!(out.generated_ids.is_empty());
    assert_eq!(out.decode_steps, 0);
    assert_eq!(out.decode_tok_s, 0.0);
    assert_eq!(model.calls.last().unwrap(), &vec![1, 2]);
}

#[test]
fn callback_can_stop_generation() {
    let mut model = BigramTableModel::new(16, 64).with_path(&[1, 2, 3, 4, 5, 6]);
    let out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1], &GenerateOptions::new(10, vec![]), &mut |t| {
            if t.index == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out.generated_ids, vec![2, 3]);
    assert_eq!(out.stop_reason, StopReason::Callback);
    assert_eq!(model.calls.len(), 2);
}

#[test]
fn prompt_too_long_is_refused_before_the_model_runs() {
    let mut model = BigramTableModel::new(16, 8);
    let err = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(
            &[1, 2, 3, 4, 5],
            &GenerateOptions::new(4, vec![]),
            &mut keep_going,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::PromptTooLong {
                prompt_tokens: 5,
                max_new_tokens: 4,
                total: 9,
                max_positions: 8
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("prompt too long") && msg.contains("--max-new-tokens"),
        "{msg}"
    );
    assert!(msg.contains("max_position_embeddings"), "{msg}");
    assert!(model.calls.is_empty() && model.resets == 0);

    // Exactly at the limit is fine (and the model's own limit is not hit).
    let out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(
            &[1, 2, 3, 4, 5],
            &GenerateOptions::new(3, vec![]),
            &mut keep_going,
        )
        .unwrap();
    assert_eq!(out.generated_ids.len(), 3);
}

#[test]
fn bad_prompts_are_refused() {
    let mut model = BigramTableModel::new(16, 64);
    let mut g = Generator::new(&mut model, greedy(), None).unwrap();
    let opts = GenerateOptions::new(4, vec![]);
    let err = g.generate(&[], &opts, &mut keep_going).unwrap_err();
    assert!(matches!(err, RuntimeError::EmptyPrompt), "{err:?}");
    let err = g.generate(&[1, 16, 2], &opts, &mut keep_going).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::PromptTokenOutOfVocab {
                index: 1,
                id: 16,
                vocab: 16
            }
        ),
        "{err:?}"
    );
}

#[test]
fn model_errors_keep_their_source_and_say_where() {
    let mut model = BigramTableModel::new(16, 64).with_path(&[1, 2, 3, 4]);
    model.fail_at_call = Some(2);
    let err = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1], &GenerateOptions::new(10, vec![]), &mut keep_going)
        .unwrap_err();
    let RuntimeError::Model { stage, source } = &err else {
        panic!("{err:?}")
    };
    assert!(stage.contains("decode step 2"), "{stage}");
    assert_eq!(
        source.downcast_ref::<InjectedFailure>(),
        Some(&InjectedFailure(2))
    );
    assert!(std::error::Error::source(&err).is_some());

    let mut model = BigramTableModel::new(16, 64);
    model.fail_at_call = Some(0);
    let err = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1, 2], &GenerateOptions::new(10, vec![]), &mut keep_going)
        .unwrap_err();
    assert!(
        err.to_string().contains("prefill of 2 prompt tokens"),
        "{err}"
    );
}

#[test]
fn wrong_logit_count_is_an_error() {
    let mut model = BigramTableModel::new(16, 64);
    model.logits_len_override = Some(15);
    let err = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1], &GenerateOptions::new(2, vec![]), &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::LogitsLength {
                got: 15,
                expected: 16
            }
        ),
        "{err:?}"
    );
}

#[test]
fn every_generate_call_is_a_fresh_sequence() {
    let mut model = BigramTableModel::new(16, 6).with_path(&[1, 2, 3, 4, 5, 6]);
    let mut g = Generator::new(&mut model, greedy(), None).unwrap();
    let opts = GenerateOptions::new(4, vec![]);
    let first = g.generate(&[1, 2], &opts, &mut keep_going).unwrap();
    // Without the reset the model would be at position 5 and refuse 5 more tokens.
    let second = g.generate(&[1, 2], &opts, &mut keep_going).unwrap();
    assert_eq!(first.generated_ids, second.generated_ids);
    drop(g);
    assert_eq!(model.resets, 2);
}

#[test]
fn repeat_penalty_sees_the_prompt_and_the_generated_tokens() {
    // From every state token 5 scores 2.0 and token 6 scores 1.5.
    let mut model = BigramTableModel::new(8, 64);
    model.default_row = vec![0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.5, 0.0];
    let sampler = Sampler::new(SamplingParams {
        repeat_penalty: 2.0,
        ..SamplingParams::greedy()
    })
    .unwrap();
    let out = Generator::new(&mut model, sampler, None)
        .unwrap()
        .generate(&[5], &GenerateOptions::new(3, vec![]), &mut keep_going)
        .unwrap();
    // 5 is in the prompt: 2.0/2 = 1.0 < 1.5 → 6. Then both are penalised: 1.0 vs 0.75 → 5.
    assert_eq!(out.generated_ids, vec![6, 5, 5]);
    // Without the penalty greedy repeats 5 forever.
    let out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[5], &GenerateOptions::new(3, vec![]), &mut keep_going)
        .unwrap();
    assert_eq!(out.generated_ids, vec![5, 5, 5]);
}

#[test]
fn seeded_sampling_is_reproducible_through_the_loop() {
    let mut model = BigramTableModel::new(64, 256);
    let mut run = |seed| {
        let sampler = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::greedy()
        })
        .unwrap();
        Generator::new(&mut model, sampler, None)
            .unwrap()
            .generate(&[0], &GenerateOptions::new(32, vec![]), &mut keep_going)
            .unwrap()
            .generated_ids
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12));
    // 32 uniform draws over 64 tokens: not all the same token.
    assert!(a.iter().any(|&t| t != a[0]), "{a:?}");
}

#[test]
fn timings_follow_the_documented_semantics() {
    let mut model = BigramTableModel::new(16, 64).with_path(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let gdn_before = model.gdn;
    let mut out = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1, 2], &GenerateOptions::new(5, vec![]), &mut keep_going)
        .unwrap();
    assert_eq!(out.decode_steps, 4);
    assert!(out.prefill > std::time::Duration::ZERO && out.decode > std::time::Duration::ZERO);
    let expect_prefill_rate = 2.0 / out.prefill.as_secs_f64();
    assert!((out.prefill_tok_s - expect_prefill_rate).abs() < 1e-9 * expect_prefill_rate);
    let expect_decode_rate = 4.0 / out.decode.as_secs_f64();
    assert!((out.decode_tok_s - expect_decode_rate).abs() < 1e-9 * expect_decode_rate);
    // GDN time is not the runtime's to measure: zero until the caller records what the model's
    // own counters say about this generation, a part of model time.
    assert_eq!((out.gdn, out.gdn_share), (std::time::Duration::ZERO, 0.0));
    out.record_gdn(model.gdn - gdn_before);
    assert_eq!(out.gdn, model.gdn - gdn_before);
    assert!(
        out.gdn_share > 0.0 && out.gdn_share <= 1.0,
        "{}",
        out.gdn_share
    );
    let summary = out.summary();
    assert!(
        summary.contains("prompt: 2 tokens") && summary.contains("decode: 4 steps"),
        "{summary}"
    );
}

#[test]
fn streams_multibyte_text_with_the_real_tokenizer() {
    let tok = tiny_tokenizer();
    let text = "Grüße, 世界 🦀!";
    let ids = tok.encode(text, false).unwrap();
    // The model spells out the text's tokens after the prompt, then <|im_end|>.
    let mut script = ids.clone();
    script.push(TINY_IM_END);
    let mut model = BigramTableModel::new(1024, 512).with_script(1, &script);
    let mut pieces = Vec::new();
    let out = Generator::new(&mut model, greedy(), Some(&tok))
        .unwrap()
        .generate(
            &[1022],
            &GenerateOptions::new(100, vec![TINY_IM_END]),
            &mut |t| {
                pieces.push(t.text.to_owned());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    let mut want = ids.clone();
    want.push(TINY_IM_END);
    assert_eq!(out.generated_ids, want);
    assert_eq!(out.text.as_deref(), Some(text));
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.iter().any(String::is_empty),
        "split characters hold text back: {pieces:?}"
    );
    assert_eq!(pieces.last().unwrap(), "", "the EOS token shows no text");

    // Cut off in the middle of 🦀 by max_new_tokens: the last piece flushes what a plain
    // decode shows, so the pieces still add up to the output text.
    let crab = ids.len() - 2; // the text ends "🦀!": stop inside the crab's bytes
    let mut pieces = Vec::new();
    let out = Generator::new(&mut model, greedy(), Some(&tok))
        .unwrap()
        .generate(
            &[1022],
            &GenerateOptions::new(crab, vec![TINY_IM_END]),
            &mut |t| {
                pieces.push(t.text.to_owned());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    assert_eq!(out.text.as_deref(), Some(pieces.concat().as_str()));
    assert!(out.text.unwrap().ends_with('\u{FFFD}'));
}

#[test]
fn tokenizer_larger_than_the_model_vocab_is_refused() {
    let tok = tiny_tokenizer();
    let mut model = BigramTableModel::new(1000, 64);
    let err = Generator::new(&mut model, greedy(), Some(&tok)).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TokenizerVocabTooLarge {
                tokenizer_vocab: 1024,
                model_vocab: 1000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn non_finite_logits_from_the_model_are_a_clear_error() {
    let mut model = BigramTableModel::new(8, 64);
    model.default_row[3] = f32::NAN;
    let err = Generator::new(&mut model, greedy(), None)
        .unwrap()
        .generate(&[1], &GenerateOptions::new(2, vec![]), &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::NonFiniteLogit { token_id: 3, .. }),
        "{err:?}"
    );
}
