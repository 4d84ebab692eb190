//! Generation runtime (being written).
