//! The conformance suite at thread counts the facade's default run does not use: one thread
//! (no dispatch at all) and three (more threads than some layers have key heads, and uneven
//! key-head splits).

use hybrid_gdn::{BackendOptions, GdnBackend};
use hybrid_gdn_cpu::CpuKernel;

fn cpu(threads: usize) -> Box<dyn GdnBackend> {
    Box::new(CpuKernel::backend(&BackendOptions::default().with_threads(threads)).expect("cpu"))
}

mod one_thread {
    hybrid_gdn::conformance_tests!(|| super::cpu(1), "../../models/goldens/gdn");
}

mod three_threads {
    hybrid_gdn::conformance_tests!(|| super::cpu(3), "../../models/goldens/gdn");
}
