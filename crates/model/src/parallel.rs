//! Splitting a matrix product's output rows over the hot thread pool (`hybrid_pool`), the one
//! the `cpu` GDN backend runs on too: one set of spinning threads for the whole decode step.

use hybrid_pool::hot_pool;

use crate::{ModelError, Result};

/// `y = x Wᵀ` (`y` is `m × n`, row-major) computed in pieces of `rows_per_task` weight rows:
/// `f(first, out)` fills `out`, laid out `[count][m]` (weight-row-major, so each piece owns a
/// contiguous slice), for weight rows `first..first + count`. With one activation row that
/// layout is `y`'s own and is written in place; otherwise it is transposed into `y` at the end.
pub(crate) fn by_weight_rows(
    kernel: &'static str,
    y: &mut [f32],
    m: usize,
    n: usize,
    rows_per_task: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Result<()> {
    if m == 1 {
        return in_parallel(kernel, y, rows_per_task, &|piece, out| {
            f(piece * rows_per_task, out)
        });
    }
    let mut transposed = vec![0f32; n * m];
    in_parallel(kernel, &mut transposed, rows_per_task * m, &|piece, out| {
        f(piece * rows_per_task, out)
    })?;
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = transposed[j * m + r];
        }
    }
    Ok(())
}

/// `f(index, piece)` for each `chunk`-element piece of `out`, on the hot pool; a panicking
/// piece becomes [`ModelError::KernelPanicked`] naming `kernel`.
pub(crate) fn in_parallel<T: Send>(
    kernel: &'static str,
    out: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) -> Result<()> {
    hot_pool()
        .for_each_chunk_mut(out, chunk, f)
        .map_err(|_| ModelError::KernelPanicked { kernel })
}
