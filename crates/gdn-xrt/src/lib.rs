//! # hybrid-gdn-xrt
//!
//! Gated DeltaNet on AMD Alveo FPGAs. The recurrent state of every resident (layer, sequence)
//! lives in the card's on-chip memory (URAM) for the whole generation; per token only the
//! projections go in and the outputs come out.
//!
//! - **Kernel** (`kernels/hls/gdn_kernel.cpp`): Vitis HLS C++, one compute unit with static
//!   on-chip memories, operations INFO / LOAD / RESET / STEP / EXPORT / IMPORT, and a five-phase
//!   step (prepare → retrieve → delta → update + write-back → output) that reads and writes each
//!   state element once, P value heads per cycle ([`DesignPoint`]). Its interface is mirrored in
//!   [`kernel::abi`].
//! - **Backends** ([`XrtBackend`] = the checked front over [`XrtKernel`]): `xrt` drives a card through the XRT native C API, loaded at
//!   run time ([`xrt`]); `xrt-sim` drives the same kernel C++ compiled into this crate, in-process
//!   ([`kernel::csim`]). Both share every line of host logic.
//! - **Placement** ([`state`]): layers go on the first card with room; more cards are opened when
//!   the model does not fit one.
//! - **Latency model** ([`latency`]): device cycles from the kernel's loop structure, calibrated on
//!   the published 63 µs per layer-token, plus the host-side cost per token.
//! - **Fault tolerance**: [`FailoverBackend`] (in hybrid-gdn, for any backend) moves live
//!   sequences to a fallback (`cpu`) when the card fails, mid-generation, without changing a
//!   token; `tests/failover.rs` drives it with failing simulated cards.
//!
//! See the crate README for the hardware build, the resource and latency tables, and the XRT test.

#![warn(missing_docs)]

pub mod backend;
pub mod design;
pub mod error;
pub mod kernel;
pub mod latency;
pub mod state;
pub mod xclbin;
pub mod xrt;

pub use backend::{DeviceSlot, SimConfig, XrtBackend, XrtKernel};
pub use design::DesignPoint;
pub use error::{RunState, XrtError};
/// Re-exported from hybrid-gdn, where it now lives beside the checked front.
pub use hybrid_gdn::FailoverBackend;

use hybrid_gdn::Registry;

/// Registers `xrt-sim` (always) and `xrt` (when a card or a computing XRT emulation mode is
/// present; otherwise the name stays known with the reason).
pub fn register(registry: &mut Registry) {
    registry.register(
        XrtKernel::SIM_NAME,
        "the FPGA kernel's C++ run in-process (C-simulation, design point P = 16)",
        |options| Ok(Box::new(XrtKernel::simulated(options)?)),
    );
    match xrt::probe::usable_target() {
        Ok(_) => registry.register(
            XrtKernel::NAME,
            "AMD Alveo FPGA through the Xilinx Runtime (on-chip state, gdn_kernel xclbin)",
            |options| Ok(Box::new(XrtKernel::open(options)?)),
        ),
        Err(reason) => registry.set_unavailable(XrtKernel::NAME, reason),
    }
}
