//! Splitting a matrix product's output rows over the hot thread pool (`hybrid_pool`), the one
//! the `cpu` GDN backend runs on too: one set of spinning threads for the whole decode step.

use hybrid_pool::hot_pool;

use crate::{ModelError, Result};

/// `y = x Wᵀ` (`y` is `m × n`, row-major) computed in pieces of `rows_per_task` weight rows:
/// `f(first, out)` fills `out` for weight rows `first..first + count`, laid out `[m][count]`
/// (each activation row's outputs of the piece side by side, so each piece owns a contiguous
/// slice). With one activation row that layout is `y`'s own and is written in place; otherwise
/// each piece's rows are copied into `y` at the end, `count` values at a time, rows in parallel.
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
    let mut pieces = vec![0f32; n * m];
    in_parallel(kernel, &mut pieces, rows_per_task * m, &|piece, out| {
        f(piece * rows_per_task, out)
    })?;
    // The assembly moves m × n values (15 MB for a 512-token chunk of the 0.8B shape's MLP), so
    // it runs on the pool too: each task fills whole rows of y from every piece.
    let pieces = &pieces;
    in_parallel(kernel, y, n, &|r, row| {
        for (p, piece) in pieces.chunks(rows_per_task * m).enumerate() {
            let (first, count) = (p * rows_per_task, piece.len() / m);
            row[first..first + count].copy_from_slice(&piece[r * count..(r + 1) * count]);
        }
    })
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
