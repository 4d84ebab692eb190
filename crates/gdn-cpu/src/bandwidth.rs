//! The memory roofline of a state sweep: a plain streaming loop that reads and writes every
//! element of a buffer once, on the same threads and SIMD width as the backend. Benchmarks use it
//! to turn "µs per step" into "fraction of what this machine can stream".

use crate::kernels::Kernel;
use crate::pool::{TaskPanicked, WorkerPool};
use crate::token_batch::SharedSlice;

/// Reads and writes every element of `buf` once (`x ← x · factor`), split into one contiguous
/// part per pool thread. Moves `2 · 4 · buf.len()` bytes.
pub fn stream_scale(
    pool: &mut WorkerPool,
    kernel: Kernel,
    buf: &mut [f32],
    factor: f32,
) -> Result<(), TaskPanicked> {
    let tasks = pool.threads();
    let len = buf.len();
    let shared = SharedSlice::new(buf);
    pool.run(tasks, &|task| {
        let (start, end) = (task * len / tasks, (task + 1) * len / tasks);
        // SAFETY: task ranges [start, end) are disjoint and `buf` outlives the dispatch.
        let part = unsafe { shared.range(start, end - start) };
        kernel.scale_in_place(part, factor);
    })
}
