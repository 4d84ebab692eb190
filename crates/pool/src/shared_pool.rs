//! A [`WorkerPool`] callable through `&self` from any thread, and the process-wide hot pool.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::worker_pool::{TaskPanicked, WorkerPool};

/// Environment variable that sizes [`hot_pool`] (threads in all, the caller included) when
/// [`configure_threads`] was not called first.
pub const THREADS_ENV: &str = "HYBRID_THREADS";

thread_local! {
    /// Set on pool workers, and on a caller while it runs a job: a parallel call made from
    /// inside a task then runs inline instead of waiting for the pool it is already part of.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a pool thread for good (called once by each worker).
pub(crate) fn mark_pool_thread() {
    IN_POOL.with(|flag| flag.set(true));
}

/// A [`WorkerPool`] behind a lock, so that it can be shared: `run` takes `&self`.
///
/// Two threads calling `run` at once take turns (one job at a time keeps every worker on one
/// job); a call from inside a task of any pool runs its tasks inline on the calling thread.
#[derive(Debug)]
pub struct SharedPool {
    pool: Mutex<WorkerPool>,
    threads: usize,
}

impl SharedPool {
    /// A pool of `threads` threads in all (the caller counts as one; 0 is taken as 1).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let pool = WorkerPool::new(threads)?;
        Ok(SharedPool {
            threads: pool.threads(),
            pool: Mutex::new(pool),
        })
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for every `i < tasks` and returns when all are done; see
    /// [`WorkerPool::run`] for how tasks are placed. A panicking task is reported as
    /// [`TaskPanicked`] after the others finished; the pool stays usable.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) -> Result<(), TaskPanicked> {
        if tasks <= 1 || self.threads == 1 || IN_POOL.with(Cell::get) {
            return catch_unwind(AssertUnwindSafe(|| (0..tasks).for_each(task)))
                .map_err(|_| TaskPanicked);
        }
        // A poisoned lock only means another caller panicked outside the pool's own
        // catch_unwind while holding it; the pool's state is consistent between jobs.
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        IN_POOL.with(|flag| flag.set(true));
        let result = pool.run(tasks, task);
        IN_POOL.with(|flag| flag.set(false));
        result
    }

    /// Splits `data` into pieces of `chunk` elements (the last may be shorter) and calls
    /// `f(index, piece)` for every piece, spread over the pool in at most
    /// [`MAX_TASKS_PER_JOB`](crate::MAX_TASKS_PER_JOB) contiguous runs of pieces — one job, so a
    /// large output costs one wake-up of the workers, not one per piece.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) -> Result<(), TaskPanicked> {
        let chunk = chunk.max(1);
        let len = data.len();
        let pieces = len.div_ceil(chunk);
        let tasks = pieces.min(crate::MAX_TASKS_PER_JOB);
        let base = RawParts(data.as_mut_ptr());
        self.run(tasks, &|task| {
            let (first, end) = (task * pieces / tasks, (task + 1) * pieces / tasks);
            for piece in first..end {
                let start = piece * chunk;
                let count = chunk.min(len - start);
                // SAFETY: pieces are disjoint ranges inside `data`, each visited by exactly one
                // task, and `data` stays mutably borrowed until `run` returned, i.e. until every
                // task finished.
                let part = unsafe { std::slice::from_raw_parts_mut(base.at(start), count) };
                f(piece, part);
            }
        })
    }
}

/// The start of a slice handed to tasks that each write their own disjoint range of it.
struct RawParts<T>(*mut T);

// SAFETY: only used by `for_each_chunk_mut`, whose tasks write disjoint ranges of a `&mut [T]`
// with `T: Send` while the borrow is held.
unsafe impl<T: Send> Sync for RawParts<T> {}

impl<T> RawParts<T> {
    /// Pointer to element `offset`; a method (not a field access) so closures capture the
    /// whole `Sync` wrapper rather than the bare pointer.
    fn at(&self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets inside the slice the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// Threads asked for by [`configure_threads`] before the hot pool started.
static REQUESTED: OnceLock<usize> = OnceLock::new();
static HOT: OnceLock<SharedPool> = OnceLock::new();

/// [`configure_threads`] came after the hot pool had started with another size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyStarted {
    /// The size the running pool has.
    pub threads: usize,
}

impl std::fmt::Display for AlreadyStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the hot thread pool already runs {} threads; set the thread count before the \
             first model call",
            self.threads
        )
    }
}

impl std::error::Error for AlreadyStarted {}

/// Sizes [`hot_pool`] (threads in all, at least 1) before its first use. Asking again for the
/// size it already has is fine; asking for another size after it started is an error.
pub fn configure_threads(threads: usize) -> Result<(), AlreadyStarted> {
    let threads = threads.max(1);
    let chosen = *REQUESTED.get_or_init(|| threads);
    match HOT.get() {
        Some(pool) if pool.threads() != threads => Err(AlreadyStarted {
            threads: pool.threads(),
        }),
        None if chosen != threads => Err(AlreadyStarted { threads: chosen }),
        _ => Ok(()),
    }
}

/// The process-wide pool the model's GEMVs and the `cpu` GDN backend share.
///
/// Its size is fixed at first use: [`configure_threads`] if called, else `HYBRID_THREADS`, else
/// every available core. If the OS refuses to start the workers the pool runs everything on
/// the caller (one thread) rather than failing a model call; [`SharedPool::threads`] says so.
pub fn hot_pool() -> &'static SharedPool {
    HOT.get_or_init(|| {
        let threads = *REQUESTED.get_or_init(default_threads);
        SharedPool::new(threads).unwrap_or_else(|_| {
            SharedPool::new(1).expect("a one-thread pool starts no thread and cannot fail")
        })
    })
}

/// `HYBRID_THREADS` when it is a positive number, else the number of available cores.
fn default_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        let pool = SharedPool::new(2).expect("pool");
        for (len, chunk) in [(0, 4), (1, 4), (7, 3), (64, 8), (1000, 7), (100_000, 1)] {
            let mut data = vec![usize::MAX; len];
            pool.for_each_chunk_mut(&mut data, chunk, &|piece, part| {
                for (i, v) in part.iter_mut().enumerate() {
                    assert_eq!(*v, usize::MAX, "element written twice");
                    *v = piece * chunk + i;
                }
            })
            .expect("run");
            assert!(
                data.iter().enumerate().all(|(i, &v)| v == i),
                "{len}/{chunk}"
            );
        }
    }

    #[test]
    fn nested_calls_run_inline_instead_of_deadlocking() {
        let pool = SharedPool::new(2).expect("pool");
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .expect("inner");
        })
        .expect("outer");
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn callers_on_several_threads_take_turns() {
        let pool = SharedPool::new(2).expect("pool");
        let count = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        pool.run(5, &|_| {
                            count.fetch_add(1, Ordering::Relaxed);
                        })
                        .expect("run");
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 4 * 500 * 5);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_shared_pool_survives() {
        let pool = SharedPool::new(2).expect("pool");
        assert_eq!(
            pool.run(4, &|i| assert!(i != 2, "injected")),
            Err(TaskPanicked)
        );
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .expect("still works");
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
