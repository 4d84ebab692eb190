//! # hybrid-pool
//!
//! One set of persistent threads for everything a decode step splits over cores: the weight
//! GEMVs of the model and the Gated DeltaNet heads of the `cpu` backend.
//!
//! Why one pool: a decode step is ~100 small parallel calls (one per weight matrix and GDN
//! layer), each well under a millisecond. With a pool per library (rayon for the GEMVs, candle's
//! own pool for its quantized matmul, a spinning pool for GDN) each call waits for sleeping
//! workers to wake while the other pools' workers still spin on the same two cores. Here the
//! caller works too, idle workers spin briefly between calls (so back-to-back calls find them
//! awake) and then park.
//!
//! - [`WorkerPool`]: the pool itself, owned by one caller (`&mut self`).
//! - [`SharedPool`]: a pool behind a lock, callable from anywhere; nested or concurrent use never
//!   deadlocks (a call from inside a task runs inline).
//! - [`hot_pool`]: the process-wide [`SharedPool`] sized once, from [`configure_threads`], the
//!   `HYBRID_THREADS` environment variable, or the number of cores.

#![warn(missing_docs)]

mod shared_pool;
mod worker_pool;

pub use shared_pool::{configure_threads, hot_pool, AlreadyStarted, SharedPool, THREADS_ENV};
pub use worker_pool::{TaskPanicked, WorkerPool, MAX_TASKS_PER_JOB};
