//! A persistent worker pool built for per-token dispatch: no thread spawn, no heap allocation and
//! no lock per job. The caller works too; workers spin briefly after a job (decode steps arrive
//! back to back) and then park, so an idle pool costs no CPU.
//!
//! Tasks are claimed, not assigned: each thread first takes the tasks it would get in a static
//! partition (task `i` on thread `i % threads`, which keeps a head range on the same core from
//! one token to the next), then any task nobody has started. A worker that is slow to wake —
//! parked between model layers, or woken onto the caller's own core by the scheduler — then
//! costs nothing: the caller runs its tasks instead of waiting (measured here: a 5 µs step took
//! 40–220 µs whenever the worker shared the caller's core and the caller could only wait).

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Long enough to bridge the gap between two
/// calls of a decode step (weight GEMVs and GDN layers come back to back), short enough not to
/// steal a core from whatever runs between tokens.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// How long an idle worker spins before it starts yielding its core between spins. Yielding is a
/// system call (µs here), too slow for back-to-back steps of a few µs each.
const SPIN_WITHOUT_YIELD: Duration = Duration::from_micros(50);

/// Tasks per job: one bit each in the claim word. `run` splits larger task counts into jobs.
pub const MAX_TASKS_PER_JOB: usize = 32;

/// The job: a borrowed closure with its lifetime erased (see `WorkerPool::run_job` for why it is
/// sound).
type JobPtr = *const (dyn Fn(usize) + Sync + 'static);

/// The job slot's value before the first job: a task that does nothing.
static NO_JOB: fn(usize) = |_| {};

/// One worker's parking flag.
struct WorkerSlot {
    /// Set while the worker is (about to be) parked, so the caller knows to unpark it.
    sleeping: AtomicBool,
}

struct Shared {
    /// The current job; written by the caller only while no thread holds an unfinished task.
    job: UnsafeCell<JobPtr>,
    /// `epoch << 32 | claimed`: bit `i` of `claimed` is set once task `i` of job `epoch` is
    /// taken (bits of tasks the job does not have start set). One word, so that a thread late
    /// for job `e` can never claim a task of job `e + 1`.
    claims: AtomicU64,
    /// Tasks of the current job that have finished.
    finished: AtomicUsize,
    /// A task of the current job panicked.
    panicked: AtomicBool,
    /// Epoch of the newest job; workers wait for it to change.
    go: AtomicU64,
    slots: Vec<WorkerSlot>,
    shutdown: AtomicBool,
    threads: usize,
    /// Workers that are running their loop.
    started: AtomicUsize,
}

// SAFETY: `job` is written by the caller only between jobs — after it observed (Acquire) that
// every task of the previous job finished, and before it publishes the next job's claim word
// (Release) — and read by a thread only while it holds a claimed, unfinished task of the current
// job, which it obtained by a compare-exchange (Acquire) on that claim word; the pointee is
// `Sync`. Everything else is atomic.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A task panicked on a worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPanicked;

/// Fixed set of `threads − 1` workers plus the calling thread.
pub struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    epoch: u32,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.shared.threads)
            .finish()
    }
}

impl WorkerPool {
    /// A pool running tasks on `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let slots = (0..threads)
            .map(|_| WorkerSlot {
                sleeping: AtomicBool::new(false),
            })
            .collect();
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(&NO_JOB as &(dyn Fn(usize) + Sync) as JobPtr),
            // Epoch 0, every task taken: nothing to claim until the first job.
            claims: AtomicU64::new(u64::from(u32::MAX)),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            go: AtomicU64::new(0),
            slots,
            shutdown: AtomicBool::new(false),
            threads,
            started: AtomicUsize::new(0),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for worker in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("hybrid-pool-{worker}"))
                .spawn(move || worker_loop(&shared, worker))?;
            handles.push(handle);
        }
        // Wait until every worker runs: a thread's start-up allocates (std records its name), and
        // a job must not be the first thing to find a worker still starting.
        while shared.started.load(Ordering::Acquire) != threads - 1 {
            thread::yield_now();
        }
        Ok(WorkerPool {
            shared,
            handles,
            epoch: 0,
        })
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `task(i)` for every `i < tasks`, spread over the pool; returns when all are done.
    ///
    /// Task `i` prefers thread `i % threads` (thread 0 is the caller), so a caller that splits
    /// work into `threads` equal tasks gets a static, balanced partition while every thread is
    /// on time; a task whose thread is late is run by whoever is free.
    pub fn run(&mut self, tasks: usize, task: &(dyn Fn(usize) + Sync)) -> Result<(), TaskPanicked> {
        if self.shared.threads == 1 || tasks <= 1 {
            return catch_unwind(AssertUnwindSafe(|| (0..tasks).for_each(task)))
                .map_err(|_| TaskPanicked);
        }
        let mut panicked = false;
        for base in (0..tasks).step_by(MAX_TASKS_PER_JOB) {
            let count = MAX_TASKS_PER_JOB.min(tasks - base);
            let result = if base == 0 {
                self.run_job(count, task)
            } else {
                self.run_job(count, &|i| task(base + i))
            };
            panicked |= result.is_err();
        }
        if panicked {
            Err(TaskPanicked)
        } else {
            Ok(())
        }
    }

    /// One job of at most [`MAX_TASKS_PER_JOB`] tasks.
    fn run_job(&mut self, tasks: usize, task: &(dyn Fn(usize) + Sync)) -> Result<(), TaskPanicked> {
        debug_assert!((1..=MAX_TASKS_PER_JOB).contains(&tasks));
        // Epoch 0 is the "no job yet" claim word's; skip it when the counter wraps.
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let epoch = self.epoch;
        let shared = &*self.shared;
        // SAFETY (lifetime erasure): `run_job` does not return before every task of this job
        // has finished, and no thread touches the pointer without holding an unfinished task of
        // this job; so the borrow outlives every use.
        let job: JobPtr = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), JobPtr>(
                task as *const (dyn Fn(usize) + Sync),
            )
        };
        // SAFETY: no thread holds an unfinished task (the previous job's `finished` reached its
        // task count, observed with Acquire), so no thread reads `job` now.
        unsafe { *shared.job.get() = job };
        shared.finished.store(0, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        // Bits of tasks this job does not have start claimed (a shift by 32 would overflow).
        let absent = u32::MAX.checked_shl(tasks as u32).unwrap_or(0);
        shared.claims.store(
            u64::from(epoch) << 32 | u64::from(absent),
            Ordering::Release,
        );
        shared.go.store(u64::from(epoch), Ordering::SeqCst);
        for (slot, handle) in shared.slots[1..].iter().zip(&self.handles) {
            if slot.sleeping.load(Ordering::SeqCst) {
                handle.thread().unpark();
            }
        }
        work_on(shared, epoch, 0);
        let mut spins = 0u32;
        // Only tasks another thread has started remain: wait for them.
        while shared.finished.load(Ordering::Acquire) != tasks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if shared.panicked.load(Ordering::Relaxed) {
            Err(TaskPanicked)
        } else {
            Ok(())
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for handle in &self.handles {
            handle.thread().unpark();
        }
        for handle in self.handles.drain(..) {
            // A worker only ends by seeing `shutdown`; a join error would mean it panicked
            // outside a task, which catch_unwind rules out, so there is nothing to report.
            let _ = handle.join();
        }
    }
}

/// Claims and runs tasks of job `epoch` until none is left to claim (or a newer job replaced
/// it), preferring the tasks of thread `me` in the static partition.
fn work_on(shared: &Shared, epoch: u32, me: usize) {
    let preferred = (me..MAX_TASKS_PER_JOB)
        .step_by(shared.threads)
        .fold(0u32, |mask, i| mask | 1 << i);
    let mut word = shared.claims.load(Ordering::Acquire);
    loop {
        let claimed = word as u32;
        if (word >> 32) as u32 != epoch || claimed == u32::MAX {
            return;
        }
        let free = !claimed;
        let pick = if free & preferred != 0 {
            (free & preferred).trailing_zeros()
        } else {
            free.trailing_zeros()
        };
        match shared.claims.compare_exchange_weak(
            word,
            word | 1 << pick,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: we hold task `pick` of the current job, unfinished, so the caller is
                // still inside `run_job` and the job it published (before the claim word we
                // acquired) is alive and unchanged; the pointee is `Sync`.
                let task = unsafe { &**shared.job.get() };
                if catch_unwind(AssertUnwindSafe(|| task(pick as usize))).is_err() {
                    shared.panicked.store(true, Ordering::Relaxed);
                }
                shared.finished.fetch_add(1, Ordering::Release);
                word = shared.claims.load(Ordering::Acquire);
            }
            Err(current) => word = current,
        }
    }
}

fn worker_loop(shared: &Shared, worker: usize) {
    crate::shared_pool::mark_pool_thread();
    let slot = &shared.slots[worker];
    shared.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        let Some(epoch) = wait_for_job(shared, slot, seen) else {
            return;
        };
        seen = epoch;
        work_on(shared, epoch as u32, worker);
    }
}

/// Spins, then parks, until the caller publishes an epoch newer than `seen`; `None` on shutdown.
fn wait_for_job(shared: &Shared, slot: &WorkerSlot, seen: u64) -> Option<u64> {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = shared.go.load(Ordering::Acquire);
        if epoch != seen {
            return Some(epoch);
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return None;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = started.elapsed();
        if idle < SPIN_BEFORE_PARK {
            // After a first stretch of pure spinning (the next step usually comes within it),
            // give the core away now and then: when this worker shares the caller's core, a spin
            // without yields would hold the caller off for the whole spin window.
            if idle >= SPIN_WITHOUT_YIELD {
                thread::yield_now();
            }
            continue;
        }
        // Announce the nap, then re-check: either we see the new epoch here, or the caller
        // (which stores `go` before loading `sleeping`, both SeqCst) sees `sleeping` and unparks.
        slot.sleeping.store(true, Ordering::SeqCst);
        if shared.go.load(Ordering::SeqCst) == seen && !shared.shutdown.load(Ordering::SeqCst) {
            thread::park();
        }
        slot.sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        for threads in [1, 2, 3, 5] {
            let mut pool = WorkerPool::new(threads).expect("pool");
            // 33 and 70 span several jobs of at most 32 tasks.
            for tasks in [0, 1, 2, 3, 7, 16, 32, 33, 70] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    pool.run(tasks, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    })
                    .expect("run");
                }
                for (i, hit) in hits.iter().enumerate() {
                    assert_eq!(
                        hit.load(Ordering::Relaxed),
                        50,
                        "{threads} threads, task {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn back_to_back_tiny_jobs_never_lose_or_repeat_a_task() {
        // Tiny jobs make late workers and stolen tasks common: a worker that wakes after the
        // caller finished the job alone must neither run a task of it nor one of the next job.
        for threads in [2, 3] {
            let mut pool = WorkerPool::new(threads).expect("pool");
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let jobs = 20_000;
            for job in 0..jobs {
                let tasks = 2 + job % 2;
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
                .expect("run");
            }
            let counts: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
            assert_eq!(counts, [jobs, jobs, jobs / 2], "{threads} threads");
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let mut pool = WorkerPool::new(2).expect("pool");
        let count = AtomicUsize::new(0);
        for _ in 0..3 {
            // Long enough for the worker to stop spinning and park.
            thread::sleep(SPIN_BEFORE_PARK * 5);
            pool.run(2, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .expect("run");
        }
        assert_eq!(count.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_panicking_task_is_an_error_not_a_hang_and_the_pool_survives() {
        let mut pool = WorkerPool::new(2).expect("pool");
        // Task 1 prefers the worker thread, task 0 the caller; either may run either.
        for bad in [0, 1] {
            let result = pool.run(2, &|i| {
                if i == bad {
                    panic!("injected task failure");
                }
            });
            assert_eq!(result, Err(TaskPanicked));
        }
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .expect("pool still works");
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
