//! The conformance suite: one body of checks that every backend runs against the `reference`
//! oracle (DESIGN §4), plus golden checks against HF transformers' own GDN functions.
//!
//! A backend crate wires it up with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! hybrid_gdn::conformance_tests!(|| Box::new(MyBackend::new()), "../../models/goldens/gdn");
//! ```
//!
//! Every check panics with a message naming the backend, the case and the worst element on
//! failure, as a test should.
//!
//! ## Tolerances
//! A backend may sum in a different order (SIMD lanes, single-pass `o = e^g S₀ᵀq + δ(kᵀq)`
//! instead of `o = S₁ᵀq`) and use a polynomial `exp`, so it cannot match the oracle bit for bit.
//! Each f32 dot product of length ≤ 128 carries a relative error of a few 1e-7; the state is a
//! contraction (0 < e^g ≤ 1, β < 1, unit-norm k), so errors do not grow over a sequence. We allow
//! [`TOLERANCE`]: `|x − y| ≤ 2e-6 + 2e-6·|y|`. The worst the cpu backend shows over the whole
//! suite is 1.2e-7 (max-abs, outputs of order 0.1–1), so this leaves ~15× headroom for other
//! summation orders, and is far below any real bug: a 0.1 % error in one factor of δ already
//! fails it. Against HF's chunked (WY) path, which reorders the algebra itself,
//! [`GOLDEN_TOLERANCE`] (`5e-6`; worst seen 4e-7).

mod checks;
mod data;
mod golden;

pub use checks::*;
pub use data::{
    assert_close, random_constants, random_inputs, Rng, Tolerance, GOLDEN_TOLERANCE, TOLERANCE,
};
pub use golden::hf_goldens;

/// A way to build a fresh instance of the backend under test.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn crate::GdnBackend>;

/// Expands to one `#[test]` per conformance check for the backend built by `$factory`
/// (a closure returning `Box<dyn GdnBackend>`); `$goldens` is the directory of HF golden files.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr, $goldens:expr) => {
        $crate::conformance_tests!(@tests $factory;
            multi_step_matches_reference,
            prefill_matches_sequential_decode,
            gva_ratios,
            head_dims,
            untileable_head_dims,
            slot_isolation,
            reset_and_free,
            layer_loaded_after_slot,
            export_import_round_trip,
            migration_with_reference,
            error_paths,
            non_finite_inputs_leave_state_unchanged,
            counters_count,
            batch_matches_members_one_by_one,
            rejected_batch_changes_nothing,
        );
        #[test]
        fn hf_goldens() {
            let dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join($goldens);
            $crate::conformance::hf_goldens(&$factory, &dir);
        }
    };
    (@tests $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::$check(&$factory);
            }
        )*
    };
}
