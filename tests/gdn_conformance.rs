//! The GDN conformance suite (hybrid_gdn::conformance) against every backend in this build,
//! created through the registry exactly as users get them.

use hybrid_decode::gdn::{BackendOptions, GdnBackend};

fn create(name: &str) -> Box<dyn GdnBackend> {
    hybrid_decode::gdn_registry()
        .create(name, &BackendOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Backends that have a module below; a backend added to the registry without one fails here.
#[cfg(not(feature = "cuda"))]
const COVERED: &[&str] = &["reference", "cpu", "cpu-portable", "xrt-sim", "xrt"];
#[cfg(feature = "cuda")]
const COVERED: &[&str] = &["reference", "cpu", "cpu-portable", "cuda", "xrt-sim", "xrt"];

#[test]
fn every_available_backend_is_covered() {
    for name in hybrid_decode::gdn_registry().available() {
        assert!(
            COVERED.contains(&name),
            "backend `{name}` is available but has no conformance module in tests/gdn_conformance.rs"
        );
    }
}

mod reference {
    hybrid_decode::gdn::conformance_tests!(|| super::create("reference"), "models/goldens/gdn");
}

mod cpu {
    hybrid_decode::gdn::conformance_tests!(|| super::create("cpu"), "models/goldens/gdn");
}

mod cpu_portable {
    hybrid_decode::gdn::conformance_tests!(|| super::create("cpu-portable"), "models/goldens/gdn");
}

/// Needs a GPU, its driver and NVRTC: with `--features cuda` on a machine without them every
/// test here fails with the `Unavailable` reason (see crates/gdn-cuda/gpu_check/run.sh).
#[cfg(feature = "cuda")]
mod cuda {
    hybrid_decode::gdn::conformance_tests!(|| super::create("cuda"), "models/goldens/gdn");
}

/// The FPGA kernel's own C++ (C-simulation, design point P = 16) behind the XRT host logic. `xrt`
/// itself is available only with a card (or a computing XRT emulation mode) and an xclbin; its
/// suite then runs from crates/gdn-xrt/tests/card_conformance.rs (feature `card-tests`).
#[cfg(feature = "xrt")]
mod xrt_sim {
    hybrid_decode::gdn::conformance_tests!(|| super::create("xrt-sim"), "models/goldens/gdn");
}
