//! Typed errors of the FPGA path: the XRT runtime, the card, and the kernel's own status codes.
//! Each names the failing call or condition and, where there is one, the fix. The backend turns
//! them into [`hybrid_gdn::GdnError::Device`] (or `Unavailable` for a missing runtime).

use std::fmt;
use std::path::PathBuf;

use hybrid_gdn::GdnError;

use crate::kernel::abi::{dims_field_name, KernelFault, Op};

/// The state of a kernel run (`enum ert_cmd_state` in `xrt/ert.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// `ERT_CMD_STATE_NEW` (1).
    New,
    /// `ERT_CMD_STATE_QUEUED` (2).
    Queued,
    /// `ERT_CMD_STATE_RUNNING` (3).
    Running,
    /// `ERT_CMD_STATE_COMPLETED` (4).
    Completed,
    /// `ERT_CMD_STATE_ERROR` (5).
    Error,
    /// `ERT_CMD_STATE_ABORT` (6).
    Abort,
    /// `ERT_CMD_STATE_SUBMITTED` (7).
    Submitted,
    /// `ERT_CMD_STATE_TIMEOUT` (8): the scheduler timed the command out and reset the CU.
    Timeout,
    /// `ERT_CMD_STATE_NORESPONSE` (9): timed out and the reset failed.
    NoResponse,
    /// `ERT_CMD_STATE_SKERROR` (10): soft-kernel error.
    SoftKernelError,
    /// Any other value.
    Other(i32),
}

impl RunState {
    /// Decodes `enum ert_cmd_state`.
    pub fn from_raw(raw: i32) -> Self {
        match raw {
            1 => RunState::New,
            2 => RunState::Queued,
            3 => RunState::Running,
            4 => RunState::Completed,
            5 => RunState::Error,
            6 => RunState::Abort,
            7 => RunState::Submitted,
            8 => RunState::Timeout,
            9 => RunState::NoResponse,
            10 => RunState::SoftKernelError,
            other => RunState::Other(other),
        }
    }

    /// True while the command has not finished one way or the other.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            RunState::New | RunState::Queued | RunState::Running | RunState::Submitted
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RunState::New => "ERT_CMD_STATE_NEW",
            RunState::Queued => "ERT_CMD_STATE_QUEUED",
            RunState::Running => "ERT_CMD_STATE_RUNNING",
            RunState::Completed => "ERT_CMD_STATE_COMPLETED",
            RunState::Error => "ERT_CMD_STATE_ERROR",
            RunState::Abort => "ERT_CMD_STATE_ABORT",
            RunState::Submitted => "ERT_CMD_STATE_SUBMITTED",
            RunState::Timeout => "ERT_CMD_STATE_TIMEOUT",
            RunState::NoResponse => "ERT_CMD_STATE_NORESPONSE",
            RunState::SoftKernelError => "ERT_CMD_STATE_SKERROR",
            RunState::Other(raw) => return write!(f, "unknown ert_cmd_state {raw}"),
        };
        f.write_str(name)
    }
}

/// Everything that can go wrong between the host and a card (real or simulated).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum XrtError {
    /// The XRT shared library could not be opened.
    #[error(
        "cannot load the Xilinx Runtime library `{library}`: {reason}. Install XRT (Debian/Ubuntu: \
         `apt-get install libxrt1`; AMD's `xrt` package installs it under /opt/xilinx/xrt/lib) and \
         make it findable (ldconfig or LD_LIBRARY_PATH)"
    )]
    LibraryMissing {
        /// The file name or path that was tried.
        library: String,
        /// What the dynamic loader said.
        reason: String,
    },

    /// The library opened but lacks a function of the native C API.
    #[error(
        "the Xilinx Runtime library `{library}` has no `{symbol}` ({reason}); XRT 2.13 or newer is needed"
    )]
    SymbolMissing {
        /// The library.
        library: String,
        /// The missing function.
        symbol: &'static str,
        /// What the dynamic loader said.
        reason: String,
    },

    /// `XILINX_XRT` is unset: XRT 2.13 aborts the whole process in `xrtDeviceOpen` without it,
    /// so the host refuses to call it.
    #[error(
        "XILINX_XRT is not set, and XRT 2.13 aborts the process in xrtDeviceOpen without it: \
         export XILINX_XRT=/opt/xilinx/xrt (AMD packages) or XILINX_XRT=/usr (Debian packages)"
    )]
    XilinxXrtUnset,

    /// The XRT driver library that `xrtDeviceOpen` would load is not where XRT looks for it
    /// (`$XILINX_XRT/lib/…`); XRT 2.13 aborts the process then, so the host refuses to call it.
    #[error(
        "XRT would load its driver from `{}`, which does not exist (XRT 2.13 aborts the process \
         then, so it was not called): point XILINX_XRT at the XRT install whose lib/ holds it. \
         Debian/Ubuntu install XRT under /usr/lib/<multiarch>, which XRT does not search: \
         `mkdir -p /opt/xilinx/xrt && ln -s /usr/lib/x86_64-linux-gnu /opt/xilinx/xrt/lib` and \
         XILINX_XRT=/opt/xilinx/xrt (and `apt-get install libxrt1` for the driver libraries)",
        path.display()
    )]
    DriverMissing {
        /// The file XRT would load.
        path: PathBuf,
    },

    /// `XCL_EMULATION_MODE` names a mode XRT 2.13 does not have.
    #[error(
        "XCL_EMULATION_MODE={mode} is not an XRT emulation mode (sw_emu, hw_emu, noop); unset it \
         to use a card"
    )]
    UnknownEmulationMode {
        /// The value found.
        mode: String,
    },

    /// `xrtDeviceOpen` returned no device.
    #[error(
        "xrtDeviceOpen({index}) found no device ({reason}): check the card with `xbutil examine`; \
         for emulation, XCL_EMULATION_MODE must be set and EMCONFIG_PATH must name the directory \
         of an emconfig.json listing at least {count} device(s)",
        count = index + 1
    )]
    DeviceOpen {
        /// Device index.
        index: u32,
        /// errno as text.
        reason: String,
    },

    /// The xclbin file is missing or unreadable.
    #[error(
        "cannot read the xclbin `{}`: {reason}. Build it with `make -C crates/gdn-xrt/kernels` on a \
         machine with Vitis, and pass it with `--xclbin PATH` (generate, bench, gdn_bench), \
         BackendOptions::with_xclbin or HYBRID_GDN_XCLBIN",
        path.display()
    )]
    XclbinUnreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },

    /// `xrtDeviceLoadXclbinFile` failed.
    #[error(
        "xrtDeviceLoadXclbinFile(`{}`) failed with {code} ({reason}): is it built for this card's \
         platform (xilinx_u55c_gen3x16_xdma_3_202210_1) and an intact axlf container?",
        path.display()
    )]
    XclbinLoad {
        /// The xclbin.
        path: PathBuf,
        /// Return code.
        code: i32,
        /// errno as text.
        reason: String,
    },

    /// `xrtDeviceGetXclbinUUID` failed.
    #[error("xrtDeviceGetXclbinUUID failed with {code} after loading the xclbin")]
    XclbinUuid {
        /// Return code.
        code: i32,
    },

    /// `xrtPLKernelOpen` found no kernel of that name.
    #[error(
        "the xclbin has no kernel `{name}` (xrtPLKernelOpen: {reason}); build it from \
         crates/gdn-xrt/kernels/hls/gdn_kernel.cpp, whose top function is `{name}`"
    )]
    KernelOpen {
        /// Kernel name asked for.
        name: String,
        /// errno as text.
        reason: String,
    },

    /// `xrtKernelArgGroupId` failed: the xclbin does not connect a buffer argument to memory.
    #[error(
        "xrtKernelArgGroupId(argument {index} `{name}`) failed with {code}: the xclbin does not \
         connect that argument to a memory bank"
    )]
    ArgGroup {
        /// Argument index.
        index: i32,
        /// Argument name.
        name: &'static str,
        /// Return code.
        code: i32,
    },

    /// `xrtBOAlloc` failed.
    #[error("cannot allocate a {bytes}-byte device buffer for `{what}` (xrtBOAlloc: {reason})")]
    BufferAlloc {
        /// Which buffer.
        what: &'static str,
        /// Size asked for.
        bytes: usize,
        /// errno as text.
        reason: String,
    },

    /// A buffer read, write or sync failed.
    #[error("{call} on the `{what}` buffer failed with {code}")]
    BufferIo {
        /// `xrtBOWrite`, `xrtBOSync`, `xrtBORead`.
        call: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Return code.
        code: i32,
    },

    /// `xrtRunOpen` failed.
    #[error("xrtRunOpen failed: {reason}")]
    RunOpen {
        /// errno as text.
        reason: String,
    },

    /// `xrtRunSetArg` failed.
    #[error("xrtRunSetArg(argument {index} `{name}`) failed with {code}: does the xclbin's kernel have the gdn_kernel signature?")]
    SetArg {
        /// Argument index.
        index: i32,
        /// Argument name.
        name: &'static str,
        /// Return code.
        code: i32,
    },

    /// `xrtRunStart` failed.
    #[error("xrtRunStart failed with {code}")]
    RunStart {
        /// Return code.
        code: i32,
    },

    /// The run finished in a state other than completed.
    #[error(
        "the {op} run ended in {state}: the compute unit failed or was reset; the card's state for \
         the resident layers is suspect (export it if it still answers, or reset the slots)"
    )]
    RunFailed {
        /// What was being run.
        op: Op,
        /// The final state.
        state: RunState,
    },

    /// The run did not finish within the timeout.
    #[error(
        "the {op} run did not finish within {timeout_ms} ms (state {state}); the card may be hung: \
         `xbutil reset` it; this device handle refuses further runs"
    )]
    RunTimeout {
        /// What was being run.
        op: Op,
        /// The timeout.
        timeout_ms: u32,
        /// The state at the timeout.
        state: RunState,
    },

    /// An earlier timeout left a run in flight; the device refuses new runs.
    #[error("this device handle is unusable after an earlier failure: {0}")]
    Poisoned(String),

    /// The kernel answered with a non-zero status.
    #[error("the kernel rejected {op}: {}", describe_fault(*fault, *detail, *limit))]
    Kernel {
        /// The operation.
        op: Op,
        /// The fault code.
        fault: KernelFault,
        /// The detail word (offending value, or what was needed).
        detail: u32,
        /// The limit word (the limit, or what was free).
        limit: u32,
    },

    /// The kernel on the card speaks another ABI version.
    #[error(
        "the kernel on the card reports ABI version {found}, this host speaks {expected}: rebuild \
         the xclbin from this version of crates/gdn-xrt/kernels"
    )]
    AbiMismatch {
        /// This host's version.
        expected: u32,
        /// The kernel's.
        found: u32,
    },

    /// The host could not allocate a simulated card's memory.
    #[error("out of host memory for a simulated card ({bytes} bytes)")]
    SimAlloc {
        /// Bytes asked for.
        bytes: usize,
    },

    /// No open card has room for a layer, and no further card can be used.
    #[error(
        "layer {layer} does not fit on the {cards} open card(s) (it needs {needed}) and no further \
         card can be used: {reason}"
    )]
    NoRoom {
        /// The layer.
        layer: usize,
        /// What it needs, in the kernel's units.
        needed: String,
        /// Cards open.
        cards: usize,
        /// Why no further card (limit reached, or opening it failed).
        reason: String,
    },
}

fn describe_fault(fault: KernelFault, detail: u32, limit: u32) -> String {
    match fault {
        KernelFault::UnknownOp => format!("unknown op code {detail} (the highest is {limit})"),
        KernelFault::LayerRange => format!(
            "layer index {detail} is not below GDN_MAX_LAYERS = {limit}; rebuild the kernel with a \
             larger GDN_MAX_LAYERS"
        ),
        KernelFault::SlotRange => {
            format!("slot index {detail} is not below GDN_MAX_SLOTS = {limit}")
        }
        KernelFault::Dims => format!(
            "{} is outside the kernel's compile-time limit ({limit})",
            dims_field_name(detail)
        ),
        KernelFault::LayerNotLoaded => format!("layer {detail} is not loaded on this card"),
        KernelFault::LayerLoaded => format!("layer {detail} is already loaded on this card"),
        KernelFault::SlotNotBound => format!(
            "slot {detail} of layer {limit} has no on-chip memory yet (reset it first); if the \
             xclbin was reloaded, every resident state was lost"
        ),
        KernelFault::Tokens => "a step needs at least one token".into(),
        KernelFault::WeightsFull => format!(
            "the conv-weight memory is full ({detail} words needed, {limit} free): place the \
             layer on another card"
        ),
        KernelFault::StateFull => format!(
            "the recurrent-state memory is full ({detail} rows needed, {limit} free): place the \
             layer on another card or free slots"
        ),
        KernelFault::ConvFull => format!(
            "the conv-history memory is full ({detail} words needed, {limit} free): place the \
             layer on another card or free slots"
        ),
        KernelFault::Unknown(code) => format!("status code {code}, unknown to this host"),
    }
}

impl XrtError {
    /// The error as a [`GdnError`] of backend `backend`: a missing runtime or card is
    /// `Unavailable`, everything else a `Device` error.
    pub fn into_gdn(self, backend: &str) -> GdnError {
        match self {
            XrtError::LibraryMissing { .. }
            | XrtError::SymbolMissing { .. }
            | XrtError::XilinxXrtUnset
            | XrtError::DriverMissing { .. }
            | XrtError::UnknownEmulationMode { .. }
            | XrtError::DeviceOpen { .. }
            | XrtError::XclbinUnreadable { .. } => GdnError::Unavailable {
                name: backend.to_string(),
                reason: self.to_string(),
            },
            other => GdnError::Device {
                backend: backend.to_string(),
                message: other.to_string(),
            },
        }
    }
}
