//! The shared conformance suite on a real card through XRT (`xrt`), with the xclbin named by
//! `HYBRID_GDN_XCLBIN` on device `HYBRID_GDN_DEVICE` (default 0):
//!
//! ```text
//! HYBRID_GDN_XCLBIN=crates/gdn-xrt/kernels/build/gdn_kernel_p16.xclbin \
//!     cargo test -p hybrid-gdn-xrt --features card-tests --test card_conformance
//! ```
//!
//! Off by default (feature `card-tests`): no card exists where CI runs. With XRT's `sw_emu` and an
//! xclbin built with `make TARGET=sw_emu`, it runs the kernel's C++ through XRT's own emulator.

#![cfg(feature = "card-tests")]

use hybrid_gdn::{BackendOptions, GdnBackend};
use hybrid_gdn_xrt::XrtKernel;

fn card() -> Box<dyn GdnBackend> {
    let device = std::env::var("HYBRID_GDN_DEVICE")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let options = BackendOptions::default().with_device_index(device);
    Box::new(XrtKernel::open(&options).unwrap_or_else(|e| panic!("{e}")))
}

hybrid_gdn::conformance_tests!(card, "../../models/goldens/gdn");
