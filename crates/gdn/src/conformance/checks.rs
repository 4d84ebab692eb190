//! The checks. Each takes a [`Factory`] and panics with a precise message on failure.

use super::data::{assert_close, random_constants, random_inputs, TOLERANCE};
use super::Factory;
use crate::{GdnBackend, GdnError, LayerSpec, ReferenceBackend, SlotId, SlotState, TokenInputs};

/// The backend under test and the oracle, with the same layer 0 and one slot each.
struct Pair {
    backend: Box<dyn GdnBackend>,
    oracle: ReferenceBackend,
    spec: LayerSpec,
    slot: SlotId,
    oracle_slot: SlotId,
    label: String,
}

impl Pair {
    fn new(factory: Factory<'_>, spec: LayerSpec, seed: u64) -> Self {
        let constants = random_constants(&spec, seed);
        let mut backend = factory();
        let label = format!(
            "{} Hk={} Hv={} dk={} dv={}",
            backend.info().name,
            spec.num_k_heads,
            spec.num_v_heads,
            spec.head_k_dim,
            spec.head_v_dim
        );
        backend
            .load_layer(0, spec, &constants)
            .unwrap_or_else(|e| panic!("{label}: load_layer failed: {e}"));
        let slot = backend.alloc_slot().expect("alloc_slot");
        let mut oracle = ReferenceBackend::default();
        oracle.load_layer(0, spec, &constants).expect("oracle load");
        let oracle_slot = oracle.alloc_slot().expect("oracle slot");
        Pair {
            backend,
            oracle,
            spec,
            slot,
            oracle_slot,
            label,
        }
    }

    /// Runs `tokens` random tokens through both as steps (`prefill == false`) or one prefill
    /// (backend) vs steps (oracle), comparing every output; returns the backend's outputs.
    fn run(&mut self, tokens: usize, seed: u64, prefill: bool) -> Vec<f32> {
        let spec = self.spec;
        let (x, a, b) = random_inputs(&spec, tokens, seed);
        let got = if prefill {
            prefill_all(self.backend.as_mut(), self.slot, &spec, &x, &a, &b)
        } else {
            step_all(self.backend.as_mut(), self.slot, &spec, &x, &a, &b)
        };
        let want = step_all(&mut self.oracle, self.oracle_slot, &spec, &x, &a, &b);
        let mode = if prefill { "prefill" } else { "steps" };
        assert_close(
            &format!("{}: outputs of {tokens} {mode} (seed {seed})", self.label),
            &got,
            &want,
            TOLERANCE,
        );
        got
    }

    /// Compares the exported states of backend and oracle.
    fn compare_states(&mut self, context: &str) {
        let got = self.backend.export_state(0, self.slot).expect("export");
        let want = self
            .oracle
            .export_state(0, self.oracle_slot)
            .expect("oracle export");
        compare_slot_states(&format!("{}: {context}", self.label), &got, &want);
    }
}

fn compare_slot_states(context: &str, got: &SlotState, want: &SlotState) {
    assert_close(
        &format!("{context}: conv state"),
        &got.conv,
        &want.conv,
        TOLERANCE,
    );
    assert_close(
        &format!("{context}: recurrent state"),
        &got.recurrent,
        &want.recurrent,
        TOLERANCE,
    );
}

/// Runs the tokens one `step` at a time on layer 0; panics on error.
pub(crate) fn step_all(
    backend: &mut dyn GdnBackend,
    slot: SlotId,
    spec: &LayerSpec,
    x: &[f32],
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
    let tokens = a.len() / hv;
    let mut out = vec![0.0; tokens * value_dim];
    for t in 0..tokens {
        let inputs = TokenInputs {
            mixed_qkv: &x[t * conv_dim..(t + 1) * conv_dim],
            a: &a[t * hv..(t + 1) * hv],
            b: &b[t * hv..(t + 1) * hv],
        };
        backend
            .step(
                0,
                slot,
                inputs,
                &mut out[t * value_dim..(t + 1) * value_dim],
            )
            .unwrap_or_else(|e| panic!("{}: step {t} failed: {e}", backend.info().name));
    }
    out
}

/// Runs the tokens as one `prefill` on layer 0; panics on error.
pub(crate) fn prefill_all(
    backend: &mut dyn GdnBackend,
    slot: SlotId,
    spec: &LayerSpec,
    x: &[f32],
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0; a.len() / spec.num_v_heads * spec.value_dim()];
    backend
        .prefill(0, slot, TokenInputs { mixed_qkv: x, a, b }, &mut out)
        .unwrap_or_else(|e| panic!("{}: prefill failed: {e}", backend.info().name));
    out
}

/// Long decode sequences (state persistence bugs only show on re-execution), at a small shape
/// and at the real Qwen3-Next layer shape.
pub fn multi_step_matches_reference(factory: Factory<'_>) {
    for (shape, steps) in [
        (LayerSpec::new(2, 4, 32, 32, 4), 40),
        (LayerSpec::QWEN3_NEXT, 12),
    ] {
        let mut pair = Pair::new(factory, shape, 11);
        for round in 0..2 {
            pair.run(steps / 2, 100 + round, false);
            pair.compare_states(&format!("after round {round}"));
        }
    }
}

/// Prefill of T tokens equals T steps (of the same backend, and of the oracle) in outputs and in
/// the state it leaves, at the chunk-boundary lengths, also when continuing from a non-zero state.
pub fn prefill_matches_sequential_decode(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    for tokens in [1, 63, 64, 65, 127, 150] {
        let mut pair = Pair::new(factory, shape, 21);
        let prefilled = pair.run(tokens, 200 + tokens as u64, true);
        pair.compare_states(&format!("after prefill of {tokens}"));
        // The same tokens as steps on a second slot of the same backend.
        let slot = pair.backend.alloc_slot().expect("alloc");
        let (x, a, b) = random_inputs(&shape, tokens, 200 + tokens as u64);
        let stepped = step_all(pair.backend.as_mut(), slot, &shape, &x, &a, &b);
        assert_close(
            &format!("{}: prefill({tokens}) vs its own steps", pair.label),
            &prefilled,
            &stepped,
            TOLERANCE,
        );
        // A second prefill continues from the state the first one left.
        pair.run(37, 300 + tokens as u64, true);
        pair.compare_states(&format!("after prefill of {tokens} then 37"));
        pair.run(3, 400, false);
    }
}

/// GVA ratios r = 1, 2, 3 (value head h reads key head ⌊h/r⌋).
pub fn gva_ratios(factory: Factory<'_>) {
    for ratio in [1, 2, 3] {
        let mut pair = Pair::new(
            factory,
            LayerSpec::new(2, 2 * ratio, 32, 32, 4),
            31 + ratio as u64,
        );
        pair.run(70, 500, true);
        pair.run(10, 501, false);
        pair.compare_states(&format!("r = {ratio}"));
    }
}

/// Head dims from 32 to 128, square and non-square.
pub fn head_dims(factory: Factory<'_>) {
    for (dk, dv) in [
        (32, 32),
        (64, 32),
        (32, 64),
        (128, 64),
        (64, 128),
        (128, 128),
        (48, 80),
    ] {
        let mut pair = Pair::new(factory, LayerSpec::new(2, 4, dk, dv, 4), 41);
        pair.run(20, 600, true);
        pair.run(6, 601, false);
        pair.compare_states(&format!("dk = {dk}, dv = {dv}"));
    }
}

/// Head dims no SIMD path tiles (not multiples of 8 or 4) must fall back and stay correct.
pub fn untileable_head_dims(factory: Factory<'_>) {
    for (hk, hv, dk, dv) in [(1, 2, 36, 20), (3, 3, 33, 7), (1, 1, 8, 5), (2, 6, 1, 1)] {
        let mut pair = Pair::new(factory, LayerSpec::new(hk, hv, dk, dv, 4), 51);
        pair.run(9, 700, true);
        pair.run(4, 701, false);
        pair.compare_states(&format!("dk = {dk}, dv = {dv}"));
    }
}

/// Interleaved slots never see each other's state.
pub fn slot_isolation(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let constants = random_constants(&shape, 61);
    let mut backend = factory();
    backend.load_layer(0, shape, &constants).expect("load");
    let slots: Vec<SlotId> = (0..3)
        .map(|_| backend.alloc_slot().expect("alloc"))
        .collect();
    let mut oracles: Vec<(ReferenceBackend, SlotId)> = (0..3)
        .map(|_| {
            let mut oracle = ReferenceBackend::default();
            oracle.load_layer(0, shape, &constants).expect("load");
            let slot = oracle.alloc_slot().expect("alloc");
            (oracle, slot)
        })
        .collect();
    for round in 0..4u64 {
        for (i, &slot) in slots.iter().enumerate() {
            let seed = 800 + 10 * round + i as u64;
            let (x, a, b) = random_inputs(&shape, 1 + (i + round as usize) % 3, seed);
            let got = prefill_all(backend.as_mut(), slot, &shape, &x, &a, &b);
            let (oracle, oracle_slot) = &mut oracles[i];
            let want = step_all(oracle, *oracle_slot, &shape, &x, &a, &b);
            assert_close(&format!("slot {i}, round {round}"), &got, &want, TOLERANCE);
        }
    }
    for (i, &slot) in slots.iter().enumerate() {
        let (oracle, oracle_slot) = &mut oracles[i];
        compare_slot_states(
            &format!("slot {i} final"),
            &backend.export_state(0, slot).expect("export"),
            &oracle.export_state(0, *oracle_slot).expect("export"),
        );
    }
}

/// `reset_slot` returns a slot to zero state; a freed slot is unknown to every call.
pub fn reset_and_free(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let mut pair = Pair::new(factory, shape, 71);
    pair.run(5, 900, false);
    pair.backend.reset_slot(pair.slot).expect("reset");
    let zeros = SlotState::zeros(&shape);
    assert_eq!(
        pair.backend.export_state(0, pair.slot).expect("export"),
        zeros,
        "{}: state after reset_slot is not zero",
        pair.label
    );
    pair.oracle.reset_slot(pair.oracle_slot).expect("reset");
    pair.run(5, 901, false);

    let slot = pair.slot;
    pair.backend.free_slot(slot).expect("free");
    let (x, a, b) = random_inputs(&shape, 1, 902);
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let mut out = vec![0.0; shape.value_dim()];
    let backend = pair.backend.as_mut();
    let unknown = GdnError::UnknownSlot(slot);
    assert_eq!(
        backend.step(0, slot, inputs, &mut out),
        Err(unknown.clone())
    );
    assert_eq!(
        backend.prefill(0, slot, inputs, &mut out),
        Err(unknown.clone())
    );
    assert_eq!(backend.export_state(0, slot), Err(unknown.clone()));
    assert_eq!(backend.import_state(0, slot, &zeros), Err(unknown.clone()));
    assert_eq!(backend.reset_slot(slot), Err(unknown.clone()));
    assert_eq!(backend.free_slot(slot), Err(unknown));
    // Ids are not reused: a new slot gets a new id.
    let fresh = backend.alloc_slot().expect("alloc");
    assert_ne!(fresh, slot, "a freed slot id was handed out again");
}

/// Layers can be loaded after slots exist (they start at zero), layer indices can be sparse,
/// and layers of different shapes coexist in one backend.
pub fn layer_loaded_after_slot(factory: Factory<'_>) {
    let small = LayerSpec::new(2, 4, 32, 32, 4);
    let big = LayerSpec::new(4, 8, 64, 48, 4);
    let mut backend = factory();
    backend
        .load_layer(0, small, &random_constants(&small, 81))
        .expect("load 0");
    let slot = backend.alloc_slot().expect("alloc");
    backend
        .load_layer(3, big, &random_constants(&big, 82))
        .expect("load 3");
    assert_eq!(
        backend.export_state(3, slot).expect("export"),
        SlotState::zeros(&big)
    );
    let mut oracle = ReferenceBackend::default();
    oracle
        .load_layer(3, big, &random_constants(&big, 82))
        .expect("load");
    let oracle_slot = oracle.alloc_slot().expect("alloc");
    let (x, a, b) = random_inputs(&big, 66, 1000);
    let mut got = vec![0.0; 66 * big.value_dim()];
    let mut want = got.clone();
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    backend
        .prefill(3, slot, inputs, &mut got)
        .expect("prefill 3");
    oracle
        .prefill(3, oracle_slot, inputs, &mut want)
        .expect("oracle");
    assert_close("layer 3 (bigger than layer 0)", &got, &want, TOLERANCE);
    assert_eq!(
        backend.export_state(0, slot).expect("export 0"),
        SlotState::zeros(&small),
        "running layer 3 touched layer 0"
    );
    assert_eq!(
        backend.load_layer(3, big, &random_constants(&big, 82)),
        Err(GdnError::LayerAlreadyLoaded(3))
    );
}

/// Export gives the canonical layout (equal to the oracle's), import then export is exact, and
/// an imported state continues exactly like the original.
pub fn export_import_round_trip(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 64, 32, 4);
    let mut pair = Pair::new(factory, shape, 91);
    pair.run(13, 1100, false);
    pair.compare_states("exported after 13 steps");
    let exported = pair.backend.export_state(0, pair.slot).expect("export");
    let copy = pair.backend.alloc_slot().expect("alloc");
    pair.backend
        .import_state(0, copy, &exported)
        .expect("import");
    assert_eq!(
        pair.backend.export_state(0, copy).expect("export"),
        exported,
        "{}: import → export is not exact",
        pair.label
    );
    let (x, a, b) = random_inputs(&shape, 7, 1101);
    let original = step_all(pair.backend.as_mut(), pair.slot, &shape, &x, &a, &b);
    let restored = step_all(pair.backend.as_mut(), copy, &shape, &x, &a, &b);
    assert_eq!(
        original, restored,
        "{}: a restored slot does not continue exactly like the original",
        pair.label
    );
}

/// Live migration mid-sequence: backend → reference and reference → backend both continue the
/// sequence the way an unmigrated oracle run does.
pub fn migration_with_reference(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let mut pair = Pair::new(factory, shape, 95);
    pair.run(30, 1200, true);
    // backend → reference
    let mut target = ReferenceBackend::default();
    target
        .load_layer(0, shape, &random_constants(&shape, 95))
        .expect("load");
    let target_slot = target.alloc_slot().expect("alloc");
    let state = pair.backend.export_state(0, pair.slot).expect("export");
    target
        .import_state(0, target_slot, &state)
        .expect("import into reference");
    let (x, a, b) = random_inputs(&shape, 10, 1201);
    let migrated = step_all(&mut target, target_slot, &shape, &x, &a, &b);
    let unmigrated = step_all(&mut pair.oracle, pair.oracle_slot, &shape, &x, &a, &b);
    assert_close(
        "backend → reference migration",
        &migrated,
        &unmigrated,
        TOLERANCE,
    );
    // reference → backend
    let state = pair
        .oracle
        .export_state(0, pair.oracle_slot)
        .expect("export");
    pair.backend
        .import_state(0, pair.slot, &state)
        .expect("import into backend");
    pair.run(10, 1202, false);
    pair.compare_states("after reference → backend migration");
}

/// Every error path answers with the right typed error and never panics.
pub fn error_paths(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let constants = random_constants(&shape, 97);
    let mut backend = factory();

    let bad_spec = LayerSpec {
        num_v_heads: 5,
        ..shape
    };
    assert!(matches!(
        backend.load_layer(0, bad_spec, &constants),
        Err(GdnError::InvalidSpec(_))
    ));
    let zero_spec = LayerSpec {
        head_k_dim: 0,
        ..shape
    };
    assert!(matches!(
        backend.load_layer(0, zero_spec, &constants),
        Err(GdnError::InvalidSpec(_))
    ));
    let mut short_kernel = constants.clone();
    short_kernel.conv_weight.truncate(shape.conv_dim() * 3);
    assert_eq!(
        backend.load_layer(0, shape, &short_kernel),
        Err(GdnError::ConvKernelMismatch {
            what: "conv_weight",
            expected: 4,
            found: 3
        })
    );
    let mut odd_weight = constants.clone();
    odd_weight.conv_weight.pop();
    assert!(matches!(
        backend.load_layer(0, shape, &odd_weight),
        Err(GdnError::ShapeMismatch {
            what: "conv_weight",
            ..
        })
    ));
    let mut short_a_log = constants.clone();
    short_a_log.a_log.pop();
    assert!(matches!(
        backend.load_layer(0, shape, &short_a_log),
        Err(GdnError::ShapeMismatch { what: "a_log", .. })
    ));
    let mut nan_bias = constants.clone();
    nan_bias.dt_bias[1] = f32::NAN;
    assert!(matches!(
        backend.load_layer(0, shape, &nan_bias),
        Err(GdnError::NonFinite {
            what: "dt_bias",
            index: 1,
            ..
        })
    ));

    // Nothing loaded yet: a slot can exist, but no layer.
    let slot = backend.alloc_slot().expect("alloc");
    let (x, a, b) = random_inputs(&shape, 2, 1300);
    let one = TokenInputs {
        mixed_qkv: &x[..shape.conv_dim()],
        a: &a[..4],
        b: &b[..4],
    };
    let two = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let mut out = vec![0.0; 2 * shape.value_dim()];
    let mut out_one_buf = vec![0.0; shape.value_dim()];
    let out_one = out_one_buf.as_mut_slice();
    assert_eq!(
        backend.step(0, slot, one, out_one),
        Err(GdnError::UnknownLayer(0))
    );
    backend.load_layer(0, shape, &constants).expect("load");
    assert_eq!(
        backend.step(7, slot, one, out_one),
        Err(GdnError::UnknownLayer(7))
    );
    assert_eq!(
        backend.export_state(1, slot),
        Err(GdnError::UnknownLayer(1))
    );
    assert_eq!(
        backend.step(0, SlotId(99), one, out_one),
        Err(GdnError::UnknownSlot(SlotId(99)))
    );
    assert_eq!(
        backend.step(0, slot, two, &mut out),
        Err(GdnError::NotOneToken(2))
    );
    let wrong_lengths = [
        (
            TokenInputs {
                mixed_qkv: &x[..shape.conv_dim() - 1],
                ..one
            },
            "mixed_qkv",
        ),
        (TokenInputs { a: &a[..3], ..one }, "a"),
        (TokenInputs { a: &[], ..one }, "a"),
        (TokenInputs { b: &b[..5], ..one }, "b"),
        (
            TokenInputs {
                mixed_qkv: &x,
                ..one
            },
            "mixed_qkv",
        ),
    ];
    for (inputs, what) in wrong_lengths {
        let result = backend.prefill(0, slot, inputs, out_one);
        assert!(
            matches!(&result, Err(GdnError::ShapeMismatch { what: w, .. }) if *w == what),
            "wrong `{what}` length gave {result:?}"
        );
    }
    let result = backend.step(0, slot, one, &mut out);
    assert!(
        matches!(result, Err(GdnError::ShapeMismatch { what: "out", .. })),
        "wrong `out` length gave {result:?}"
    );

    // Imports: wrong lengths, wrong conv kernel, non-finite values.
    let good = SlotState::zeros(&shape);
    let mut bad = good.clone();
    bad.recurrent.pop();
    assert!(matches!(
        backend.import_state(0, slot, &bad),
        Err(GdnError::ShapeMismatch {
            what: "recurrent state",
            ..
        })
    ));
    let mut bad = good.clone();
    bad.conv = vec![0.0; shape.conv_dim() * 2];
    assert_eq!(
        backend.import_state(0, slot, &bad),
        Err(GdnError::ConvKernelMismatch {
            what: "conv state",
            expected: 4,
            found: 3
        })
    );
    let mut bad = good.clone();
    bad.recurrent[5] = f32::INFINITY;
    assert!(matches!(
        backend.import_state(0, slot, &bad),
        Err(GdnError::NonFinite {
            what: "recurrent state",
            index: 5,
            ..
        })
    ));
    // After all of that the slot is still zero and usable.
    assert_eq!(backend.export_state(0, slot).expect("export"), good);
    backend
        .step(0, slot, one, out_one)
        .expect("step after errors");
}

/// Policy: NaN or ±Inf anywhere in the inputs is rejected and the state is left as it was.
pub fn non_finite_inputs_leave_state_unchanged(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let mut pair = Pair::new(factory, shape, 98);
    pair.run(4, 1400, false);
    let before = pair.backend.export_state(0, pair.slot).expect("export");
    let (x, a, b) = random_inputs(&shape, 3, 1401);
    let poison = [
        ("mixed_qkv", 2 * shape.conv_dim() + 17, f32::NAN),
        ("a", 9, f32::INFINITY),
        ("b", 0, f32::NEG_INFINITY),
    ];
    for (what, index, value) in poison {
        let (mut x, mut a, mut b) = (x.clone(), a.clone(), b.clone());
        match what {
            "mixed_qkv" => x[index] = value,
            "a" => a[index] = value,
            _ => b[index] = value,
        }
        let mut out = vec![0.0; 3 * shape.value_dim()];
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &b,
        };
        let result = pair.backend.prefill(0, pair.slot, inputs, &mut out);
        assert!(
            matches!(&result, Err(GdnError::NonFinite { what: w, index: i, .. }) if *w == what && *i == index),
            "{}: {value} in `{what}` gave {result:?}",
            pair.label
        );
        assert_eq!(
            pair.backend.export_state(0, pair.slot).expect("export"),
            before,
            "{}: a rejected call changed the state",
            pair.label
        );
    }
    pair.run(3, 1402, false);
}

/// Counters count successful steps and prefill tokens, not rejected calls.
pub fn counters_count(factory: Factory<'_>) {
    let shape = LayerSpec::new(2, 4, 32, 32, 4);
    let mut pair = Pair::new(factory, shape, 99);
    let before = pair.backend.counters();
    pair.run(3, 1500, false);
    pair.run(10, 1501, true);
    let mut out = vec![0.0; shape.value_dim()];
    let empty = TokenInputs {
        mixed_qkv: &[],
        a: &[],
        b: &[],
    };
    assert!(pair.backend.step(0, pair.slot, empty, &mut out).is_err());
    let after = pair.backend.counters();
    assert_eq!(
        after.steps - before.steps,
        3,
        "{}: steps counter",
        pair.label
    );
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        10,
        "{}: prefill_tokens counter",
        pair.label
    );
    let info = pair.backend.info();
    if info.state_on_host {
        assert_eq!(after.bytes_to_device, 0);
        assert_eq!(after.bytes_from_device, 0);
    }
}

/// Three sequences of one layer with their inputs, for the batch checks: slot `i` gets
/// `tokens[i]` tokens.
struct BatchCase {
    spec: LayerSpec,
    inputs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

impl BatchCase {
    fn new(spec: LayerSpec, tokens: &[usize], seed: u64) -> Self {
        let inputs = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| random_inputs(&spec, t, seed + i as u64))
            .collect();
        BatchCase { spec, inputs }
    }

    /// Output buffers, one per member.
    fn outputs(&self) -> Vec<Vec<f32>> {
        self.inputs
            .iter()
            .map(|(_, a, _)| vec![0.0; a.len() / self.spec.num_v_heads * self.spec.value_dim()])
            .collect()
    }

    /// The members over `slots` and `outs`.
    fn members<'a>(
        &'a self,
        slots: &[SlotId],
        outs: &'a mut [Vec<f32>],
    ) -> Vec<crate::BatchMember<'a>> {
        self.inputs
            .iter()
            .zip(slots)
            .zip(outs.iter_mut())
            .map(|(((x, a, b), &slot), out)| crate::BatchMember {
                slot,
                inputs: TokenInputs { mixed_qkv: x, a, b },
                out,
            })
            .collect()
    }
}

/// A backend with layer 0 of `spec` (constants from `seed`), `n` slots warmed up by a few
/// different tokens each, so that a batch starts from distinct non-zero states.
fn warmed(
    factory: Factory<'_>,
    spec: LayerSpec,
    seed: u64,
    n: usize,
) -> (Box<dyn GdnBackend>, Vec<SlotId>) {
    let mut backend = factory();
    backend
        .load_layer(0, spec, &random_constants(&spec, seed))
        .expect("load");
    let slots: Vec<SlotId> = (0..n)
        .map(|_| backend.alloc_slot().expect("alloc"))
        .collect();
    for (i, &slot) in slots.iter().enumerate() {
        let (x, a, b) = random_inputs(&spec, 2 + i, seed + 10 + i as u64);
        prefill_all(backend.as_mut(), slot, &spec, &x, &a, &b);
    }
    (backend, slots)
}

/// A batched call equals its members run one by one (as steps or prefills) on the same backend,
/// bit for bit in outputs and states, and matches the oracle; one-token members count as steps.
pub fn batch_matches_members_one_by_one(factory: Factory<'_>) {
    for (spec, tokens) in [
        (LayerSpec::new(2, 4, 32, 32, 4), vec![1, 1, 1]),
        (LayerSpec::new(2, 4, 32, 32, 4), vec![1, 70, 3]),
        (LayerSpec::QWEN3_NEXT, vec![1, 1, 1, 1]),
    ] {
        let n = tokens.len();
        let case = BatchCase::new(spec, &tokens, 1600);
        let (mut batched, slots) = warmed(factory, spec, 1610, n);
        let (mut single, single_slots) = warmed(factory, spec, 1610, n);
        let oracle_factory = || -> Box<dyn GdnBackend> { Box::new(ReferenceBackend::default()) };
        let (mut oracle, oracle_slots) = warmed(&oracle_factory, spec, 1610, n);
        let label = format!("{} batch of {tokens:?}", batched.info().name);

        let before = batched.counters();
        let mut outs = case.outputs();
        let mut members = case.members(&slots, &mut outs);
        batched
            .run_batch(0, &mut members)
            .unwrap_or_else(|e| panic!("{label}: run_batch failed: {e}"));
        drop(members);
        let after = batched.counters();
        let ones = tokens.iter().filter(|&&t| t == 1).count() as u64;
        let more: u64 = tokens.iter().filter(|&&t| t > 1).map(|&t| t as u64).sum();
        assert_eq!(after.steps - before.steps, ones, "{label}: steps counter");
        assert_eq!(
            after.prefill_tokens - before.prefill_tokens,
            more,
            "{label}: prefill_tokens counter"
        );

        for (i, (x, a, b)) in case.inputs.iter().enumerate() {
            let one_by_one = if tokens[i] == 1 {
                step_all(single.as_mut(), single_slots[i], &spec, x, a, b)
            } else {
                prefill_all(single.as_mut(), single_slots[i], &spec, x, a, b)
            };
            assert_eq!(
                outs[i], one_by_one,
                "{label}: member {i}'s outputs differ from its own call"
            );
            assert_eq!(
                batched.export_state(0, slots[i]).expect("export"),
                single.export_state(0, single_slots[i]).expect("export"),
                "{label}: member {i}'s state differs from its own call"
            );
            let want = step_all(oracle.as_mut(), oracle_slots[i], &spec, x, a, b);
            assert_close(
                &format!("{label}: member {i} vs the oracle"),
                &outs[i],
                &want,
                TOLERANCE,
            );
            compare_slot_states(
                &format!("{label}: member {i}"),
                &batched.export_state(0, slots[i]).expect("export"),
                &oracle.export_state(0, oracle_slots[i]).expect("export"),
            );
        }
    }
}

/// A batch with one bad member (non-finite input, wrong length, unknown or repeated slot,
/// unloaded layer) is rejected with the member's error and changes no member's state or counter;
/// an empty batch is a no-op.
pub fn rejected_batch_changes_nothing(factory: Factory<'_>) {
    let spec = LayerSpec::new(2, 4, 32, 32, 4);
    let (mut backend, mut slots) = warmed(factory, spec, 1700, 3);
    let freed = backend.alloc_slot().expect("alloc");
    backend.free_slot(freed).expect("free");
    let case = BatchCase::new(spec, &[1, 4, 1], 1710);
    let states = |backend: &mut dyn GdnBackend, slots: &[SlotId]| -> Vec<SlotState> {
        slots
            .iter()
            .map(|&s| backend.export_state(0, s).expect("export"))
            .collect()
    };
    let before = states(backend.as_mut(), &slots);
    let counters = backend.counters();
    let label = backend.info().name;

    let mut outs = case.outputs();
    let mut poisoned = BatchCase::new(spec, &[1, 4, 1], 1710);
    poisoned.inputs[2].1[3] = f32::NAN;
    let mut members = poisoned.members(&slots, &mut outs);
    let result = backend.run_batch(0, &mut members);
    assert!(
        matches!(
            result,
            Err(GdnError::NonFinite {
                what: "a",
                index: 3,
                ..
            })
        ),
        "{label}: NaN in the last member gave {result:?}"
    );

    let mut outs = case.outputs();
    outs[1].pop();
    let mut members = case.members(&slots, &mut outs);
    let result = backend.run_batch(0, &mut members);
    assert!(
        matches!(result, Err(GdnError::ShapeMismatch { what: "out", .. })),
        "{label}: a short output in the middle member gave {result:?}"
    );

    for (bad, want) in [
        (freed, GdnError::UnknownSlot(freed)),
        (slots[0], GdnError::SlotRepeated(slots[0])),
    ] {
        let mut outs = case.outputs();
        let mut with_bad = slots.clone();
        with_bad[2] = bad;
        let mut members = case.members(&with_bad, &mut outs);
        assert_eq!(
            backend.run_batch(0, &mut members),
            Err(want.clone()),
            "{label}: batch with {want}"
        );
    }

    let mut outs = case.outputs();
    let mut members = case.members(&slots, &mut outs);
    assert_eq!(
        backend.run_batch(5, &mut members),
        Err(GdnError::UnknownLayer(5)),
        "{label}: batch on an unloaded layer"
    );
    drop(members);
    assert_eq!(
        backend.run_batch(0, &mut []),
        Ok(()),
        "{label}: empty batch"
    );

    assert_eq!(
        states(backend.as_mut(), &slots),
        before,
        "{label}: a rejected batch changed a member's state"
    );
    let now = backend.counters();
    assert_eq!(
        (now.steps, now.prefill_tokens),
        (counters.steps, counters.prefill_tokens),
        "{label}: a rejected batch was counted"
    );

    // And the members still run.
    slots.truncate(3);
    let mut outs = case.outputs();
    let mut members = case.members(&slots, &mut outs);
    backend
        .run_batch(0, &mut members)
        .unwrap_or_else(|e| panic!("{label}: batch after rejections failed: {e}"));
}
