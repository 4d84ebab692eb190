//! A persistent worker pool built for per-token dispatch: no thread spawn, no heap allocation and
//! no lock per job. The caller runs its share of the tasks itself; workers spin briefly after a
//! job (decode steps arrive back to back) and then park, so an idle pool costs no CPU.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Long enough to bridge the gap between two
/// layers' GDN calls during decode, short enough not to steal a core from the rest of the model.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// The job: a borrowed closure with its lifetime erased (see `WorkerPool::run` for why it is sound).
type JobPtr = *const (dyn Fn(usize) + Sync + 'static);

/// One worker's handshake with the caller.
struct WorkerSlot {
    /// Epoch of the newest job handed to this worker.
    go: AtomicU64,
    /// Epoch of the newest job this worker finished.
    done: AtomicU64,
    /// Set while the worker is (about to be) parked, so the caller knows to unpark it.
    sleeping: AtomicBool,
    /// Set when a task panicked on this worker during the job of epoch `done`.
    panicked: AtomicBool,
}

struct Shared {
    /// The current job and its task count; written only by the caller while no worker reads it.
    job: UnsafeCell<(Option<JobPtr>, usize)>,
    slots: Vec<WorkerSlot>,
    shutdown: AtomicBool,
    threads: usize,
}

// SAFETY: `job` is written by the caller only between jobs (after every worker reported `done`
// for the previous epoch and before `go` is published with Release), and read by workers only
// after they observed `go` with Acquire; the pointee is `Sync`. All other fields are atomics.
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
    epoch: u64,
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
                go: AtomicU64::new(0),
                done: AtomicU64::new(0),
                sleeping: AtomicBool::new(false),
                panicked: AtomicBool::new(false),
            })
            .collect();
        let shared = Arc::new(Shared {
            job: UnsafeCell::new((None, 0)),
            slots,
            shutdown: AtomicBool::new(false),
            threads,
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for worker in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("gdn-cpu-{worker}"))
                .spawn(move || worker_loop(&shared, worker))?;
            handles.push(handle);
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
    /// Task `i` runs on thread `i % threads` (thread 0 is the caller), so a caller that splits
    /// work into `threads` equal tasks gets a static, balanced partition.
    pub fn run(&mut self, tasks: usize, task: &(dyn Fn(usize) + Sync)) -> Result<(), TaskPanicked> {
        let threads = self.shared.threads;
        if threads == 1 || tasks <= 1 {
            return catch_unwind(AssertUnwindSafe(|| (0..tasks).for_each(task)))
                .map_err(|_| TaskPanicked);
        }
        let active_workers = (tasks.min(threads)) - 1;
        self.epoch += 1;
        let epoch = self.epoch;
        // SAFETY (lifetime erasure): `run` does not return before every worker that was handed
        // this job has stored `done = epoch`, after which no worker touches the pointer again
        // until the next `go`; so the borrow outlives every use.
        let job: JobPtr = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), JobPtr>(
                task as *const (dyn Fn(usize) + Sync),
            )
        };
        // SAFETY: no worker reads `job` now: all finished the previous epoch (see below).
        unsafe { *self.shared.job.get() = (Some(job), tasks) };
        for (worker, handle) in (1..=active_workers).zip(&self.handles) {
            let slot = &self.shared.slots[worker];
            slot.go.store(epoch, Ordering::SeqCst);
            if slot.sleeping.load(Ordering::SeqCst) {
                handle.thread().unpark();
            }
        }
        let own = catch_unwind(AssertUnwindSafe(|| {
            (0..tasks).step_by(threads).for_each(task);
        }));
        let mut panicked = own.is_err();
        for worker in 1..=active_workers {
            let slot = &self.shared.slots[worker];
            let mut spins = 0u32;
            while slot.done.load(Ordering::Acquire) != epoch {
                spins = spins.wrapping_add(1);
                if spins % 1024 == 0 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            panicked |= slot.panicked.swap(false, Ordering::Relaxed);
        }
        if panicked {
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

fn worker_loop(shared: &Shared, worker: usize) {
    let slot = &shared.slots[worker];
    let mut seen = 0u64;
    loop {
        let Some(epoch) = wait_for_job(shared, slot, seen) else {
            return;
        };
        seen = epoch;
        // SAFETY: `go` was observed with Acquire after the caller wrote `job`; the caller keeps
        // the closure alive until we store `done` below.
        let (job, tasks) = unsafe { *shared.job.get() };
        if let Some(job) = job {
            // SAFETY: see above; the pointee is alive and `Sync`.
            let task = unsafe { &*job };
            let result = catch_unwind(AssertUnwindSafe(|| {
                (worker..tasks).step_by(shared.threads).for_each(task);
            }));
            if result.is_err() {
                slot.panicked.store(true, Ordering::Relaxed);
            }
        }
        slot.done.store(epoch, Ordering::Release);
    }
}

/// Spins, then parks, until the caller publishes an epoch newer than `seen`; `None` on shutdown.
fn wait_for_job(shared: &Shared, slot: &WorkerSlot, seen: u64) -> Option<u64> {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = slot.go.load(Ordering::Acquire);
        if epoch != seen {
            return Some(epoch);
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return None;
        }
        spins = spins.wrapping_add(1);
        if spins % 64 != 0 || started.elapsed() < SPIN_BEFORE_PARK {
            std::hint::spin_loop();
            continue;
        }
        // Announce the nap, then re-check: either we see the new epoch here, or the caller
        // (which stores `go` before loading `sleeping`, both SeqCst) sees `sleeping` and unparks.
        slot.sleeping.store(true, Ordering::SeqCst);
        if slot.go.load(Ordering::SeqCst) == seen && !shared.shutdown.load(Ordering::SeqCst) {
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
            for tasks in [0, 1, 2, 3, 7, 16] {
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
        // Task 1 runs on the worker thread, task 0 on the caller.
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
