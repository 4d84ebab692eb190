//! Where the state lives: on the cards, never on the host. This module holds the host's picture of
//! each card's on-chip memory — what a layer and a slot occupy there, in the kernel's own units —
//! so that layers are placed on a card with room before anything is sent.
//!
//! The kernel allocates with bump allocators (`op_load`, `op_reset` in gdn_kernel.cpp):
//! - conv weights, per layer: `⌈conv_dim/CH⌉·CH × K` words;
//! - recurrent state, per bound (layer, slot): `⌈Hv/P⌉ × dv × ⌈dk/U⌉` rows of `P × U` floats
//!   (value-major; heads past Hv in the last group and keys past dk in the last word are padding);
//! - conv history, per bound (layer, slot): `⌈conv_dim/CH⌉·CH × (K − 1)` words.
//!
//! The card's INFO answer is the authority on what is used; these formulas predict it (the tests
//! check that they do, against the C-simulation).

use hybrid_gdn::LayerSpec;

use crate::kernel::abi::KernelInfo;

/// What one layer occupies on a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Conv-weight words (once per layer).
    pub weight_words: u64,
    /// Recurrent-state rows per bound slot.
    pub state_rows_per_slot: u64,
    /// Conv-history words per bound slot.
    pub conv_words_per_slot: u64,
}

impl Footprint {
    /// The footprint of `spec` on a card whose kernel reports `info`.
    pub fn of(spec: &LayerSpec, info: &KernelInfo) -> Self {
        let (p, u, ch) = (
            u64::from(info.p.max(1)),
            u64::from(info.u.max(1)),
            u64::from(info.ch.max(1)),
        );
        let wide = |x: usize| x as u64;
        let channels = wide(spec.conv_dim()).div_ceil(ch) * ch;
        let kernel = wide(spec.conv_kernel);
        Footprint {
            weight_words: channels * kernel,
            state_rows_per_slot: wide(spec.num_v_heads).div_ceil(p)
                * wide(spec.head_v_dim)
                * wide(spec.head_k_dim).div_ceil(u),
            conv_words_per_slot: channels * (kernel - 1),
        }
    }

    /// True when the layer with `slots` bound slots fits in what `info` says is free.
    pub fn fits(&self, info: &KernelInfo, slots: usize) -> bool {
        let slots = slots as u64;
        let free = |total: u32, used: u32| u64::from(total.saturating_sub(used));
        self.weight_words <= free(info.weight_words, info.weight_words_used)
            && self.state_rows_per_slot * slots <= free(info.state_rows, info.state_rows_used)
            && self.conv_words_per_slot * slots <= free(info.conv_words, info.conv_words_used)
    }

    /// On-chip bytes of the recurrent state of one slot, padding included.
    pub fn state_bytes_per_slot(&self, info: &KernelInfo) -> u64 {
        self.state_rows_per_slot * u64::from(info.p) * u64::from(info.u) * 4
    }

    /// A short description for messages.
    pub fn describe(&self, slots: usize) -> String {
        format!(
            "{} conv-weight words, and per slot {} state rows and {} conv-history words, for {} \
             slot(s)",
            self.weight_words, self.state_rows_per_slot, self.conv_words_per_slot, slots
        )
    }
}

/// Where a loaded layer lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Index of the card (0 = the first one opened).
    pub card: usize,
    /// 1/√dk as sent to the kernel.
    pub q_scale: f32,
}
