//! The kernel's design points: how many value heads it processes side by side (`-DGDN_P=...`).

use std::fmt;

/// A compile-time design point of the kernel: P value heads per cycle, each with its own state
/// bank delivering [`LANES`] floats per cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DesignPoint {
    /// P = 2.
    P2,
    /// P = 4.
    P4,
    /// P = 8.
    P8,
    /// P = 16: the fastest, and the one the published 63 µs figure is for.
    P16,
}

/// State floats per value head per cycle (`GDN_U`: one 64-bit URAM word of two f32).
pub const LANES: usize = 2;

impl DesignPoint {
    /// Every design point, slowest first.
    pub const ALL: [DesignPoint; 4] = [
        DesignPoint::P2,
        DesignPoint::P4,
        DesignPoint::P8,
        DesignPoint::P16,
    ];

    /// The fastest design point, used by the `xrt-sim` backend.
    pub const FASTEST: DesignPoint = DesignPoint::P16;

    /// P.
    pub fn heads_per_cycle(self) -> usize {
        match self {
            DesignPoint::P2 => 2,
            DesignPoint::P4 => 4,
            DesignPoint::P8 => 8,
            DesignPoint::P16 => 16,
        }
    }

    /// The design point with `p` heads per cycle, if it is one.
    pub fn from_heads(p: usize) -> Option<Self> {
        DesignPoint::ALL
            .into_iter()
            .find(|d| d.heads_per_cycle() == p)
    }
}

impl fmt::Display for DesignPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P = {}", self.heads_per_cycle())
    }
}
