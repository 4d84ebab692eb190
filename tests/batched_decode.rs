//! Several sequences on one model: a batch step gives every sequence exactly the greedy tokens
//! it gives alone, on every GDN backend and every fixture; sequences of different lengths and
//! positions share a batch; a sequence is refused by a model that did not make it, and after
//! the GDN backend it lived on was migrated away; a sequence's snapshot restores into another; a
//! sequence dropped without `free_sequence` gives its GDN slot back.

use hybrid_decode::gdn::BackendOptions;
use hybrid_decode::model::{HybridModel, LoadOptions, Sequence};

mod common;
use common::golden::{argmax, max_abs_diff};
use common::{backends, fixture, FIXTURES};

fn load(fixture_name: &str, backend: &str) -> HybridModel {
    load_with(fixture_name, backend, &LoadOptions::default())
}

fn load_with(fixture_name: &str, backend: &str, options: &LoadOptions) -> HybridModel {
    let gdn = hybrid_decode::gdn_registry()
        .create(backend, &BackendOptions::default())
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
    HybridModel::load(&fixture(fixture_name), options, gdn)
        .unwrap_or_else(|e| panic!("loading {fixture_name}: {e}"))
}

/// Candle's ops, the path a GPU runs (`--device cuda`): attention over KV caches held in
/// tensors, one per sequence of the batch.
fn candle_ops() -> LoadOptions {
    LoadOptions {
        candle_ops: true,
        ..LoadOptions::default()
    }
}

/// Prompts of different lengths (a one-token one, one across the 64-token prefill chunk).
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    [1usize, 5, 70, 12]
        .iter()
        .enumerate()
        .map(|(p, &len)| {
            (0..len)
                .map(|i| ((i * 31 + p * 97 + 3) as u32) % vocab)
                .collect()
        })
        .collect()
}

/// Greedy ids of one sequence alone: prefill, then `steps` single-token steps.
fn alone(model: &mut HybridModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut sequence = model.new_sequence().expect("sequence");
    let mut next = argmax(
        &model
            .prefill(&mut sequence, prompt)
            .unwrap()
            .to_vec1()
            .unwrap(),
    );
    let mut ids = vec![next];
    for _ in 1..steps {
        let logits = model.prefill(&mut sequence, &[next]).unwrap();
        next = argmax(&logits.to_vec1().unwrap());
        ids.push(next);
    }
    model.free_sequence(sequence).expect("free");
    ids
}

/// Four sequences decoded as one batch after prefills of different lengths: each gets the
/// greedy ids it gets alone, and ends at the right position.
fn check_batch_equals_alone(model: &mut HybridModel, label: &str) {
    let steps = 12;
    let vocab = model.config().vocab_size as u32;
    let prompts = prompts(vocab);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| alone(model, p, steps)).collect();

    let mut sequences: Vec<Sequence> = prompts
        .iter()
        .map(|_| model.new_sequence().unwrap())
        .collect();
    let mut next: Vec<u32> = sequences
        .iter_mut()
        .zip(&prompts)
        .map(|(s, p)| argmax(&model.prefill(s, p).unwrap().to_vec1().unwrap()))
        .collect();
    let mut got: Vec<Vec<u32>> = next.iter().map(|&id| vec![id]).collect();
    for _ in 1..steps {
        let mut batch: Vec<&mut Sequence> = sequences.iter_mut().collect();
        let rows: Vec<Vec<f32>> = model.step(&mut batch, &next).unwrap().to_vec2().unwrap();
        assert_eq!(rows.len(), sequences.len(), "{label}");
        for (i, row) in rows.iter().enumerate() {
            next[i] = argmax(row);
            got[i].push(next[i]);
        }
    }
    assert_eq!(
        got, want,
        "{label}: batched greedy ids differ from each run alone"
    );
    for (sequence, prompt) in sequences.iter().zip(&prompts) {
        assert_eq!(sequence.position(), prompt.len() + steps - 1, "{label}");
    }
    for sequence in sequences {
        model.free_sequence(sequence).unwrap();
    }
}

#[test]
fn batch_steps_give_every_sequence_its_own_tokens_on_every_backend() {
    for fixture_name in FIXTURES {
        for backend in backends() {
            let mut model = load(fixture_name, backend);
            check_batch_equals_alone(&mut model, &format!("{fixture_name} on {backend}"));
        }
    }
}

/// The same on candle's ops (tensor KV caches grown in place, attention as candle matmuls), for
/// every fixture and for a Q8_0 file (candle's quantized matmul).
#[test]
fn batches_on_candle_ops_give_every_sequence_its_own_tokens() {
    for fixture_name in FIXTURES {
        let mut model = load_with(fixture_name, "cpu", &candle_ops());
        check_batch_equals_alone(&mut model, &format!("{fixture_name} on candle ops"));
    }
    let mut model = load_with("gguf/qwen3.5-tiny-q8_0.gguf", "cpu", &candle_ops());
    check_batch_equals_alone(&mut model, "qwen3.5-tiny-q8_0.gguf on candle ops");
}

/// The quantized decode kernels too (Q8_0; Q4_K and Q6_K in the Q4_K_M mixes), on llama.cpp's
/// own GGUF files of the fixtures (models/fixtures/gguf, made by models/tools/gen_gguf_fixtures.py).
#[test]
fn quantized_batches_give_every_sequence_its_own_tokens() {
    for file in [
        "qwen3.5-tiny-q8_0.gguf",
        "qwen3.5-tiny-q4_k_m.gguf",
        "qwen3-next-tiny-q8_0.gguf",
        "qwen3-next-tiny-q4_k_m.gguf",
    ] {
        let gdn = hybrid_decode::gdn_registry()
            .create("cpu", &BackendOptions::default())
            .unwrap();
        let path = fixture("gguf").join(file);
        let mut model = HybridModel::load(&path, &LoadOptions::default(), gdn)
            .unwrap_or_else(|e| panic!("loading {file}: {e}"));
        check_batch_equals_alone(&mut model, file);
    }
}

/// The built-in sequence and a batch of others do not disturb one another, and a batch step's
/// logits equal the single-sequence logits to rounding.
#[test]
fn batch_rows_match_single_sequence_logits() {
    let mut model = load("qwen3.5-tiny", "cpu");
    let vocab = model.config().vocab_size as u32;
    let prompts = prompts(vocab);
    let mut sequences: Vec<Sequence> = prompts
        .iter()
        .map(|_| model.new_sequence().unwrap())
        .collect();
    for (s, p) in sequences.iter_mut().zip(&prompts) {
        model.prefill(s, p).unwrap();
    }
    let builtin = model
        .forward(&prompts[2])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tokens: Vec<u32> = (0..prompts.len() as u32)
        .map(|i| (i * 7 + 1) % vocab)
        .collect();
    let states: Vec<_> = sequences
        .iter()
        .map(|s| model.export_sequence(s).unwrap())
        .collect();
    let mut batch: Vec<&mut Sequence> = sequences.iter_mut().collect();
    let rows: Vec<Vec<f32>> = model.step(&mut batch, &tokens).unwrap().to_vec2().unwrap();
    for (i, state) in states.iter().enumerate() {
        let mut single = model.new_sequence().unwrap();
        model.import_sequence(&mut single, state).unwrap();
        let want = model
            .prefill(&mut single, &[tokens[i]])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = max_abs_diff(&rows[i], &want);
        assert!(diff < 1e-4, "row {i}: max |Δ| {diff}");
    }
    // The built-in sequence was not touched by the batch.
    model.reset().unwrap();
    let again = model
        .forward(&prompts[2])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(builtin, again);
}

#[test]
fn a_sequence_runs_only_on_the_model_and_backend_that_made_it() {
    let mut one = load("qwen3.5-tiny", "reference");
    let mut other = load("qwen3.5-tiny", "reference");
    let mut sequence = one.new_sequence().unwrap();
    let err = other
        .prefill(&mut sequence, &[1, 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    assert_eq!(sequence.position(), 0);

    one.prefill(&mut sequence, &[1, 2]).unwrap();
    let state = one.export_sequence(&sequence).unwrap();
    let to = hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default())
        .unwrap();
    one.migrate_gdn_backend(to).unwrap();
    let err = one
        .step(&mut [&mut sequence], &[3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("migrate_gdn_backend"), "{err}");
    // Exported before, imported after: the sequence continues on the new backend.
    let mut moved = one.new_sequence().unwrap();
    one.import_sequence(&mut moved, &state).unwrap();
    assert_eq!(moved.position(), 2);
    one.step(&mut [&mut moved], &[3]).unwrap();
    assert_eq!(moved.position(), 3);

    // Bad batches are refused before anything changes.
    let err = one
        .step(&mut [&mut moved], &[3, 4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("one token per sequence"), "{err}");
    assert!(one.step(&mut [&mut moved], &[u32::MAX]).is_err());
    assert_eq!(moved.position(), 3);
}

#[test]
fn a_sequence_snapshot_restores_into_another_sequence() {
    for options in [LoadOptions::default(), candle_ops()] {
        snapshot_restores_into_another_sequence(load_with("qwen3-next-tiny", "cpu", &options));
    }
}

fn snapshot_restores_into_another_sequence(mut model: HybridModel) {
    let mut a = model.new_sequence().unwrap();
    model.prefill(&mut a, &[5, 6, 7, 8]).unwrap();
    let snapshot = model
        .snapshot_sequence(&a, &[5, 6, 7, 8], serde_json::Value::Null)
        .unwrap();
    let mut b = model.new_sequence().unwrap();
    model.restore_sequence(&mut b, &snapshot).unwrap();
    let from_a = model
        .prefill(&mut a, &[9])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let from_b = model
        .prefill(&mut b, &[9])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(from_a, from_b);
    assert!(a.kv_bytes() > 0);
}

/// A sequence dropped without `free_sequence` (a panic, an early return) gives its GDN slot back
/// at the model's next `new_sequence`; one freed explicitly is not freed a second time.
#[test]
fn a_dropped_sequence_frees_its_gdn_slot() {
    for backend in backends() {
        let mut model = load(FIXTURES[0], backend);
        let lost = model.new_sequence().expect("sequence");
        let slot = lost.gdn_slot();
        assert!(
            model.gdn_backend().holds_slot(slot),
            "{backend}: the new sequence's slot is not allocated"
        );
        drop(lost);
        let kept = model.new_sequence().expect("sequence after a dropped one");
        assert!(
            !model.gdn_backend().holds_slot(slot),
            "{backend}: the dropped sequence's slot is still allocated"
        );
        model.free_sequence(kept).expect("free");
        let again = model
            .new_sequence()
            .unwrap_or_else(|e| panic!("{backend}: after free_sequence: {e}"));
        model.free_sequence(again).expect("free");
    }
}
