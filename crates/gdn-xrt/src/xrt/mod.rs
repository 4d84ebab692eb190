//! The Xilinx Runtime path: the native XRT C API loaded at run time ([`ffi`], no link-time
//! dependency), a card running the `gdn_kernel` xclbin ([`device::XrtDevice`]), and the probe that
//! decides whether the `xrt` backend is usable on this machine ([`probe`]).

pub mod device;
pub mod ffi;
pub mod probe;

pub use device::{XrtConfig, XrtDevice};
pub use ffi::XrtApi;
