//! The kernel's interface as the host sees it: operation codes, status codes, status words and the
//! argument list. Mirrors `kernels/hls/gdn_kernel.h`; the C-simulation tests check every code
//! against the compiled kernel, and `GDN_OP_INFO` reports the ABI version and the capacities, so
//! the host never hard-codes a limit.

use std::fmt;

/// `GDN_ABI_VERSION` of the kernel this host speaks to.
pub const ABI_VERSION: u32 = 1;

/// Number of 32-bit status words every invocation writes (`GDN_STATUS_WORDS`).
pub const STATUS_WORDS: usize = 32;

/// The status words of one invocation.
pub type StatusWords = [u32; STATUS_WORDS];

/// Name of the HLS top function, i.e. of the kernel inside the xclbin.
pub const KERNEL_NAME: &str = "gdn_kernel";

/// Kernel argument indices, in the order of the top function's parameters.
pub mod arg {
    /// `const float* in` (m_axi, bundle gmem0).
    pub const IN: i32 = 0;
    /// `float* out` (m_axi, bundle gmem1).
    pub const OUT: i32 = 1;
    /// `unsigned* status` (m_axi, bundle gmem2).
    pub const STATUS: i32 = 2;
    /// First scalar (`op`); the scalars follow in [`super::SCALAR_NAMES`] order.
    pub const FIRST_SCALAR: i32 = 3;
    /// `float q_scale`, the only float scalar.
    pub const Q_SCALE: i32 = 12;
    /// Number of arguments.
    pub const COUNT: i32 = 13;
}

/// Names of all arguments by index (as in the top function and the xclbin metadata).
pub const ARG_NAMES: [&str; 13] = [
    "in",
    "out",
    "status",
    "op",
    "layer",
    "slot",
    "tokens",
    "hk",
    "hv",
    "dk",
    "dv",
    "conv_kernel",
    "q_scale",
];

/// Names of the unsigned scalar arguments, indices 3..=11.
pub const SCALAR_NAMES: [&str; 9] = [
    "op",
    "layer",
    "slot",
    "tokens",
    "hk",
    "hv",
    "dk",
    "dv",
    "conv_kernel",
];

/// What one invocation does (`enum gdn_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Op {
    /// Capacity and usage into the status words.
    Info = 0,
    /// A layer's geometry (scalars) and constants (`in`).
    Load = 1,
    /// Bind (layer, slot) to on-chip memory if needed and zero its state.
    Reset = 2,
    /// T tokens through (layer, slot).
    Step = 3,
    /// The canonical state of (layer, slot) to `out`.
    Export = 4,
    /// The canonical state of (layer, slot) from `in`.
    Import = 5,
}

impl Op {
    /// Every operation, in code order.
    pub const ALL: [Op; 6] = [
        Op::Info,
        Op::Load,
        Op::Reset,
        Op::Step,
        Op::Export,
        Op::Import,
    ];

    /// The lower-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Info => "info",
            Op::Load => "load",
            Op::Reset => "reset",
            Op::Step => "step",
            Op::Export => "export",
            Op::Import => "import",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A non-zero `GDN_SW_CODE` (`enum gdn_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFault {
    /// Unknown op code.
    UnknownOp,
    /// Layer index ≥ `GDN_MAX_LAYERS`.
    LayerRange,
    /// Slot index ≥ `GDN_MAX_SLOTS`.
    SlotRange,
    /// Geometry outside the compile-time limits; the detail word names the field.
    Dims,
    /// The layer was never loaded on this card.
    LayerNotLoaded,
    /// The layer is already loaded on this card.
    LayerLoaded,
    /// (layer, slot) was never reset, so it has no memory yet.
    SlotNotBound,
    /// A step with zero tokens.
    Tokens,
    /// The conv-weight pool is full.
    WeightsFull,
    /// The recurrent-state memory is full.
    StateFull,
    /// The conv-history pool is full.
    ConvFull,
    /// A code this host does not know (kernel newer than the host).
    Unknown(u32),
}

impl KernelFault {
    /// The fault for a non-zero status code.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => KernelFault::UnknownOp,
            2 => KernelFault::LayerRange,
            3 => KernelFault::SlotRange,
            4 => KernelFault::Dims,
            5 => KernelFault::LayerNotLoaded,
            6 => KernelFault::LayerLoaded,
            7 => KernelFault::SlotNotBound,
            8 => KernelFault::Tokens,
            9 => KernelFault::WeightsFull,
            10 => KernelFault::StateFull,
            11 => KernelFault::ConvFull,
            other => KernelFault::Unknown(other),
        }
    }

    /// True for the faults that mean "this card is full".
    pub fn is_capacity(self) -> bool {
        matches!(
            self,
            KernelFault::WeightsFull | KernelFault::StateFull | KernelFault::ConvFull
        )
    }
}

/// `enum gdn_dims_field`: which geometry field a [`KernelFault::Dims`] is about.
pub fn dims_field_name(field: u32) -> &'static str {
    match field {
        1 => "num_k_heads (GDN_MAX_HK)",
        2 => "num_v_heads (GDN_MAX_HV)",
        3 => "head_k_dim (GDN_MAX_DK)",
        4 => "head_v_dim (GDN_MAX_DV)",
        5 => "conv_kernel (GDN_MAX_CONV_KERNEL)",
        6 => "num_v_heads as a multiple of num_k_heads",
        _ => "an unknown field",
    }
}

/// Status word indices (`enum gdn_status_word`).
pub mod word {
    /// Status code (0 = success).
    pub const CODE: usize = 0;
    /// The offending value, or what was needed.
    pub const DETAIL: usize = 1;
    /// The limit, or what was free.
    pub const LIMIT: usize = 2;
    /// The op the status is for.
    pub const OP: usize = 3;
    /// `GDN_ABI_VERSION` (INFO).
    pub const ABI: usize = 4;
    /// Design point P (INFO).
    pub const P: usize = 5;
    /// Lanes per head U (INFO).
    pub const U: usize = 6;
    /// `GDN_MAX_LAYERS` (INFO).
    pub const MAX_LAYERS: usize = 7;
    /// `GDN_MAX_SLOTS` (INFO).
    pub const MAX_SLOTS: usize = 8;
    /// `GDN_MAX_HK` (INFO).
    pub const MAX_HK: usize = 9;
    /// `GDN_MAX_HV` (INFO).
    pub const MAX_HV: usize = 10;
    /// `GDN_MAX_DK` (INFO).
    pub const MAX_DK: usize = 11;
    /// `GDN_MAX_DV` (INFO).
    pub const MAX_DV: usize = 12;
    /// `GDN_MAX_CONV_KERNEL` (INFO).
    pub const MAX_CONV_KERNEL: usize = 13;
    /// State rows in all (INFO).
    pub const STATE_ROWS: usize = 14;
    /// State rows bound so far (INFO).
    pub const STATE_ROWS_USED: usize = 15;
    /// Conv-history words in all (INFO).
    pub const CONV_WORDS: usize = 16;
    /// Conv-history words bound so far (INFO).
    pub const CONV_WORDS_USED: usize = 17;
    /// Conv-weight words in all (INFO).
    pub const WEIGHT_WORDS: usize = 18;
    /// Conv-weight words used so far (INFO).
    pub const WEIGHT_WORDS_USED: usize = 19;
    /// Channels per conv row, `GDN_CH` (INFO).
    pub const CH: usize = 20;
}

/// The scalar arguments of one invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelArgs {
    /// What to do.
    pub op: Op,
    /// Layer index.
    pub layer: u32,
    /// Device slot index.
    pub slot: u32,
    /// Tokens (STEP).
    pub tokens: u32,
    /// Key heads (LOAD).
    pub hk: u32,
    /// Value heads (LOAD).
    pub hv: u32,
    /// Key head dim (LOAD).
    pub dk: u32,
    /// Value head dim (LOAD).
    pub dv: u32,
    /// Conv taps K (LOAD).
    pub conv_kernel: u32,
    /// 1/√dk (LOAD).
    pub q_scale: f32,
}

impl KernelArgs {
    /// Arguments for `op` on (layer, slot) with every other scalar zero.
    pub fn new(op: Op, layer: u32, slot: u32) -> Self {
        KernelArgs {
            op,
            layer,
            slot,
            tokens: 0,
            hk: 0,
            hv: 0,
            dk: 0,
            dv: 0,
            conv_kernel: 0,
            q_scale: 0.0,
        }
    }

    /// The unsigned scalars in argument order (indices 3..=11).
    pub fn scalars(&self) -> [u32; 9] {
        [
            self.op as u32,
            self.layer,
            self.slot,
            self.tokens,
            self.hk,
            self.hv,
            self.dk,
            self.dv,
            self.conv_kernel,
        ]
    }
}

/// What `GDN_OP_INFO` reports: the compile-time design and capacity of the kernel on a card, and
/// how much of it is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Value heads per cycle.
    pub p: u32,
    /// State floats per head per cycle.
    pub u: u32,
    /// Channels per conv row.
    pub ch: u32,
    /// Layer indices are below this.
    pub max_layers: u32,
    /// Device slot indices are below this.
    pub max_slots: u32,
    /// Key-head limit.
    pub max_hk: u32,
    /// Value-head limit.
    pub max_hv: u32,
    /// Key-head-dim limit.
    pub max_dk: u32,
    /// Value-head-dim limit.
    pub max_dv: u32,
    /// Conv-kernel limit.
    pub max_conv_kernel: u32,
    /// Recurrent-state memory, rows of P×U floats.
    pub state_rows: u32,
    /// Rows bound so far.
    pub state_rows_used: u32,
    /// Conv-history pool, f32 words.
    pub conv_words: u32,
    /// Conv-history words bound so far.
    pub conv_words_used: u32,
    /// Conv-weight pool, f32 words.
    pub weight_words: u32,
    /// Conv-weight words used so far.
    pub weight_words_used: u32,
}

impl KernelInfo {
    /// Decodes the status words of an INFO invocation; `Err(found version)` when the kernel
    /// speaks another ABI version.
    pub fn from_status(words: &StatusWords) -> std::result::Result<Self, u32> {
        if words[word::ABI] != ABI_VERSION {
            return Err(words[word::ABI]);
        }
        Ok(KernelInfo {
            p: words[word::P],
            u: words[word::U],
            ch: words[word::CH],
            max_layers: words[word::MAX_LAYERS],
            max_slots: words[word::MAX_SLOTS],
            max_hk: words[word::MAX_HK],
            max_hv: words[word::MAX_HV],
            max_dk: words[word::MAX_DK],
            max_dv: words[word::MAX_DV],
            max_conv_kernel: words[word::MAX_CONV_KERNEL],
            state_rows: words[word::STATE_ROWS],
            state_rows_used: words[word::STATE_ROWS_USED],
            conv_words: words[word::CONV_WORDS],
            conv_words_used: words[word::CONV_WORDS_USED],
            weight_words: words[word::WEIGHT_WORDS],
            weight_words_used: words[word::WEIGHT_WORDS_USED],
        })
    }

    /// Bytes of f32 recurrent state the card holds in all (rows × P × U × 4).
    pub fn state_bytes(&self) -> u64 {
        u64::from(self.state_rows) * u64::from(self.p) * u64::from(self.u) * 4
    }
}
