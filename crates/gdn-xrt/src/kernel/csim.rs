//! The C-simulation device: the kernel's own C++ (`kernels/hls/gdn_kernel.cpp`, compiled into this
//! crate once per design point by `build.rs`) run in-process, one heap copy of the on-chip
//! memories per simulated card.
//!
//! The kernel takes raw pointers and reads or writes as many floats as the operation and the
//! layer's geometry imply, with no length argument (as on the card, where the buffer objects bound
//! the DMA). So that no host bug can make it touch memory it does not own, the device stages input
//! and output in buffers at least as large as anything the kernel may touch for that operation and
//! token count at its compile-time limits, and copies the caller's slices in and out.

use std::ffi::c_void;
use std::ptr::NonNull;

use super::abi::{KernelArgs, KernelInfo, Op, StatusWords, STATUS_WORDS};
use super::KernelDevice;
use crate::design::DesignPoint;
use crate::error::{RunState, XrtError};

type CardNew = unsafe extern "C" fn() -> *mut c_void;
type CardFree = unsafe extern "C" fn(*mut c_void);
type CardInvoke = unsafe extern "C" fn(
    *mut c_void,
    *const f32,
    *mut f32,
    *mut u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    f32,
);
type TopInvoke = unsafe extern "C" fn(
    *const f32,
    *mut f32,
    *mut u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    f32,
);

/// The entry points of one compiled design point.
struct CsimEntryPoints {
    card_new: CardNew,
    card_free: CardFree,
    invoke: CardInvoke,
    top: TopInvoke,
}

macro_rules! design_point_entry_points {
    ($($p:literal => $new:ident, $free:ident, $invoke:ident, $top:ident;)*) => {
        extern "C" {
            $(
                fn $new() -> *mut c_void;
                fn $free(card: *mut c_void);
                fn $invoke(
                    card: *mut c_void, input: *const f32, output: *mut f32, status: *mut u32,
                    op: u32, layer: u32, slot: u32, tokens: u32, hk: u32, hv: u32, dk: u32,
                    dv: u32, conv_kernel: u32, q_scale: f32,
                );
                fn $top(
                    input: *const f32, output: *mut f32, status: *mut u32, op: u32, layer: u32,
                    slot: u32, tokens: u32, hk: u32, hv: u32, dk: u32, dv: u32,
                    conv_kernel: u32, q_scale: f32,
                );
            )*
        }

        fn entry_points(design: DesignPoint) -> CsimEntryPoints {
            match design.heads_per_cycle() {
                $(
                    $p => CsimEntryPoints {
                        card_new: $new,
                        card_free: $free,
                        invoke: $invoke,
                        top: $top,
                    },
                )*
                _ => unreachable!("DesignPoint only has P = 2, 4, 8, 16"),
            }
        }
    };
}

design_point_entry_points! {
    2 => gdn_csim_card_new_p2, gdn_csim_card_free_p2, gdn_csim_invoke_p2, gdn_kernel_top_p2;
    4 => gdn_csim_card_new_p4, gdn_csim_card_free_p4, gdn_csim_invoke_p4, gdn_kernel_top_p4;
    8 => gdn_csim_card_new_p8, gdn_csim_card_free_p8, gdn_csim_invoke_p8, gdn_kernel_top_p8;
    16 => gdn_csim_card_new_p16, gdn_csim_card_free_p16, gdn_csim_invoke_p16, gdn_kernel_top_p16;
}

/// An injected device failure, for fault-tolerance tests: the `nth` run (0-based) of `op` on this
/// card ends in `state` without the kernel running, as when the card's scheduler rejects or
/// aborts a command. The card stays readable afterwards (exports still work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// The operation whose run fails.
    pub op: Op,
    /// Which run of that operation (0 = the first).
    pub nth: u64,
    /// The state the failed run reports.
    pub state: RunState,
}

/// Input and output staging big enough for anything the kernel may touch (see the module docs).
#[derive(Debug, Default)]
struct Staging {
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Staging {
    /// Copies `segments` to the front of the input buffer and grows both buffers to at least the
    /// given sizes (new space is zeroed; old contents beyond the copy are left as they were).
    fn prepare(&mut self, segments: &[&[f32]], input_len: usize, output_len: usize) {
        let given: usize = segments.iter().map(|s| s.len()).sum();
        if self.input.len() < input_len.max(given) {
            self.input.resize(input_len.max(given), 0.0);
        }
        let mut at = 0;
        for segment in segments {
            self.input[at..at + segment.len()].copy_from_slice(segment);
            at += segment.len();
        }
        if self.output.len() < output_len {
            self.output.resize(output_len, 0.0);
        }
    }
}

/// The most floats the kernel can read from `in` (`.0`) and write to `out` (`.1`) for `args` at
/// its compile-time limits, whatever the layer's geometry.
fn kernel_reach(info: &KernelInfo, args: &KernelArgs) -> (usize, usize) {
    let as_usize = |x: u32| x as usize;
    let conv_dim = 2 * as_usize(info.max_hk) * as_usize(info.max_dk)
        + as_usize(info.max_hv) * as_usize(info.max_dv);
    let hv = as_usize(info.max_hv);
    let kernel = as_usize(info.max_conv_kernel);
    let state = conv_dim * kernel.saturating_sub(1)
        + as_usize(info.max_hv) * as_usize(info.max_dk) * as_usize(info.max_dv);
    let tokens = as_usize(args.tokens);
    match args.op {
        Op::Info | Op::Reset => (0, 0),
        Op::Load => (conv_dim * kernel + 2 * hv, 0),
        Op::Step => (
            tokens * (conv_dim + 2 * hv),
            tokens * as_usize(info.max_hv) * as_usize(info.max_dv),
        ),
        Op::Export => (0, state),
        Op::Import => (state, 0),
    }
}

/// One simulated card running design point `design`.
pub struct SimDevice {
    design: DesignPoint,
    entry: CsimEntryPoints,
    card: NonNull<c_void>,
    info: KernelInfo,
    staging: Staging,
    fault: Option<FaultPlan>,
    runs_of_fault_op: u64,
}

// SAFETY: the card's memory is owned by this value alone (allocated in `new`, freed in `drop`),
// and the simulated kernel keeps no global or thread-local state (its scratch is on the stack),
// so the value may move to another thread.
unsafe impl Send for SimDevice {}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("design", &self.design)
            .field("fault", &self.fault)
            .finish()
    }
}

impl SimDevice {
    /// A fresh simulated card (all on-chip memory zero, as after configuration).
    pub fn new(design: DesignPoint) -> Result<Self, XrtError> {
        let entry = entry_points(design);
        // SAFETY: `card_new` takes no arguments and returns calloc'd memory or null.
        let raw = unsafe { (entry.card_new)() };
        let card = NonNull::new(raw).ok_or(XrtError::SimAlloc {
            bytes: SIM_CARD_BYTES,
        })?;
        let mut device = SimDevice {
            design,
            entry,
            card,
            info: placeholder_info(),
            staging: Staging::default(),
            fault: None,
            runs_of_fault_op: 0,
        };
        device.info = super::query_info(&mut device)?;
        Ok(device)
    }

    /// A simulated card whose runs fail as `fault` says.
    pub fn with_fault(design: DesignPoint, fault: FaultPlan) -> Result<Self, XrtError> {
        let mut device = Self::new(design)?;
        device.fault = Some(fault);
        Ok(device)
    }

    /// The design point this card simulates.
    pub fn design(&self) -> DesignPoint {
        self.design
    }

    /// True when this run is the injected failure.
    fn injected_failure(&mut self, op: Op) -> Option<RunState> {
        let fault = self.fault?;
        if fault.op != op {
            return None;
        }
        let run = self.runs_of_fault_op;
        self.runs_of_fault_op += 1;
        (run == fault.nth).then_some(fault.state)
    }
}

/// Bytes of one simulated card's on-chip memories, for messages: 768 URAMs × 4096 rows × 8 bytes
/// of f32 pairs, plus the 3.5 MiB of block-RAM pools.
const SIM_CARD_BYTES: usize = 768 * 4096 * 8 + (512 + 384) * 1024 * 4;

/// An all-zero info, replaced by the real one before the device is handed out.
fn placeholder_info() -> KernelInfo {
    KernelInfo {
        p: 0,
        u: 0,
        ch: 0,
        max_layers: 0,
        max_slots: 0,
        max_hk: 0,
        max_hv: 0,
        max_dk: 0,
        max_dv: 0,
        max_conv_kernel: 0,
        state_rows: 0,
        state_rows_used: 0,
        conv_words: 0,
        conv_words_used: 0,
        weight_words: 0,
        weight_words_used: 0,
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        // SAFETY: `card` came from this design point's `card_new` and is freed exactly once.
        unsafe { (self.entry.card_free)(self.card.as_ptr()) }
    }
}

impl KernelDevice for SimDevice {
    fn describe(&self) -> String {
        format!(
            "C-simulation of gdn_kernel ({}) on the host CPU",
            self.design
        )
    }

    fn invoke(
        &mut self,
        args: &KernelArgs,
        input: &[&[f32]],
        output: &mut [f32],
    ) -> Result<StatusWords, XrtError> {
        if let Some(state) = self.injected_failure(args.op) {
            return Err(XrtError::RunFailed { op: args.op, state });
        }
        let (reach_in, reach_out) = kernel_reach(&self.info, args);
        self.staging
            .prepare(input, reach_in.max(1), reach_out.max(output.len()).max(1));
        let mut status = [0u32; STATUS_WORDS];
        let s = args.scalars();
        // SAFETY: `card` is this device's live card memory; the staging buffers hold at least as
        // many floats as the kernel may read or write for this op and token count at its
        // compile-time limits (`kernel_reach`), and `status` has GDN_STATUS_WORDS words. The call
        // is synchronous and keeps no pointer.
        unsafe {
            (self.entry.invoke)(
                self.card.as_ptr(),
                self.staging.input.as_ptr(),
                self.staging.output.as_mut_ptr(),
                status.as_mut_ptr(),
                s[0],
                s[1],
                s[2],
                s[3],
                s[4],
                s[5],
                s[6],
                s[7],
                s[8],
                args.q_scale,
            );
        }
        output.copy_from_slice(&self.staging.output[..output.len()]);
        Ok(status)
    }
}

/// Runs the HLS top function itself (compiled with `GDN_WITH_TOP`, its memories `static` as on the
/// card) once. The memories are process-wide per design point, so callers must not run it from
/// two threads at once; it exists to show that the entry point keeps state across invocations.
#[doc(hidden)]
pub fn invoke_top_function(
    design: DesignPoint,
    args: &KernelArgs,
    input: &[f32],
    output: &mut [f32],
) -> StatusWords {
    static TOP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serialised = TOP_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let entry = entry_points(design);
    let limits = KernelInfo {
        max_hk: 32,
        max_hv: 64,
        max_dk: 128,
        max_dv: 128,
        max_conv_kernel: 4,
        ..placeholder_info()
    };
    let (reach_in, reach_out) = kernel_reach(&limits, args);
    let mut staging = Staging::default();
    staging.prepare(
        &[input],
        reach_in.max(1),
        reach_out.max(output.len()).max(1),
    );
    let mut status = [0u32; STATUS_WORDS];
    let s = args.scalars();
    // SAFETY: as in `SimDevice::invoke`: staging covers the kernel's reach at the header's limits
    // (32/64/128/128/4, checked against INFO by the crate's tests), `status` has 32 words, and
    // the lock keeps the static memories single-threaded.
    unsafe {
        (entry.top)(
            staging.input.as_ptr(),
            staging.output.as_mut_ptr(),
            status.as_mut_ptr(),
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            s[6],
            s[7],
            s[8],
            args.q_scale,
        );
    }
    output.copy_from_slice(&staging.output[..output.len()]);
    status
}
