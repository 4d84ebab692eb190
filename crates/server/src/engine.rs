//! The engine thread: continuous batching of many requests over one model.
//!
//! One OS thread owns the [`HybridModel`] (model calls are long, CPU-bound and not `async`);
//! the HTTP handlers talk to it through a channel of [`Job`]s and get [`Event`]s back. Each
//! turn of its loop:
//! 1. takes new jobs from the channel (requests join between decode steps);
//! 2. drops requests whose client went away, freeing their sequences at once;
//! 3. admits waiting jobs up to `max_batch` running sequences, continuing each from the
//!    longest cached conversation state its prompt extends;
//! 4. prefills one chunk of at most `prefill_chunk` prompt tokens for one sequence, so a long
//!    prompt delays the running streams by one chunk per step instead of by its whole length;
//! 5. runs one batched decode step over every sequence that has a token to feed;
//! 6. finishes sequences (EOS, stop string, `max_tokens`), keeps their state in the cache and
//!    frees them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hybrid_model::{HybridModel, ModelState, Sequence};
use hybrid_runtime::{Sampler, SamplingParams, TokenStreamer, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use crate::state_cache::StateCache;
use crate::stop::{Scan, StopMatcher};

/// How the engine schedules work.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded together (`--max-batch`).
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch before new ones get 429 (`--max-queue`).
    pub max_queue: usize,
    /// Most prompt tokens prefilled between two decode steps.
    pub prefill_chunk: usize,
    /// Byte budget of the conversation state cache (`--state-cache-mb`); 0 disables it.
    pub state_cache_bytes: usize,
    /// After a shutdown request, how long running streams may go on before they are ended.
    pub shutdown_grace: Duration,
}

/// One generation request, as the HTTP layer hands it over.
#[derive(Debug)]
pub struct Job {
    /// The prompt's token ids (not empty).
    pub prompt: Vec<u32>,
    /// How to choose tokens.
    pub sampling: SamplingParams,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not sent.
    pub stop: Vec<String>,
    /// EOS tokens do not end generation (they are generated like any other token).
    pub ignore_eos: bool,
    /// Where the text and the outcome go. Dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
}

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More generated text.
    Text(String),
    /// Generation ended normally.
    Done(Completion),
    /// Generation failed; nothing more comes.
    Failed(Failure),
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token or a stop string.
    Stop,
    /// `max_tokens` were generated (or the server cut the stream short while shutting down).
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of a finished request (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (an EOS token counts).
    pub completion_tokens: usize,
    /// Prompt tokens continued from a cached state instead of being prefilled.
    pub cached_tokens: usize,
}

/// A finished request's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Its token counts.
    pub usage: Usage,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server is shutting down and did not start it.
    ShuttingDown,
    /// The model failed while running it.
    Engine(String),
}

/// Why [`EngineHandle::submit`] refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `max_queue` requests are already waiting.
    #[error("the server's queue is full")]
    QueueFull,
    /// The engine has stopped.
    #[error("the server is shutting down")]
    Stopped,
}

enum Command {
    Submit(Job),
    Shutdown,
}

/// The handlers' side of the engine thread.
#[derive(Debug)]
pub struct EngineHandle {
    commands: Sender<Command>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    stopping: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread over `model`. `eos` ends generation when sampled.
    pub fn start(
        model: HybridModel,
        tokenizer: Arc<Tokenizer>,
        eos: Vec<u32>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        for (value, what) in [
            (config.max_batch, "max_batch (--max-batch)"),
            (config.max_queue, "max_queue (--max-queue)"),
            (config.prefill_chunk, "prefill_chunk (--prefill-chunk)"),
        ] {
            if value == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{what} must be at least 1"),
                ));
            }
        }
        let (commands, receiver) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let max_queue = config.max_queue;
        {
            let mut stats = metrics.lock();
            stats.gdn_backend = model.gdn_backend().info().name.to_string();
            stats.cache_budget = config.state_cache_bytes;
        }
        let thread_waiting = Arc::clone(&waiting);
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                Engine {
                    cache: StateCache::new(config.state_cache_bytes),
                    model,
                    tokenizer: &tokenizer,
                    eos,
                    config,
                    metrics,
                    commands: receiver,
                    waiting_count: thread_waiting,
                    waiting: VecDeque::new(),
                    running: Vec::new(),
                    drain_until: None,
                }
                .run()
            })?;
        Ok(Self {
            commands,
            waiting,
            max_queue,
            stopping: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `job`; refused when `max_queue` jobs are already waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let max = self.max_queue;
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| SubmitError::QueueFull)?;
        let sent = self.commands.send(Command::Submit(job));
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(())
    }

    /// Requests waiting for a place in the batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Stops taking jobs: waiting ones fail with [`Failure::ShuttingDown`], running ones go on
    /// for at most the shutdown grace period and are then ended with `length`.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether the engine thread is still running (it stops after a shutdown, or if a model
    /// call panicked).
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    /// Waits for the engine thread to end (after [`shutdown`](Self::shutdown)).
    pub fn join(&self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// What sampling one token meant for a sequence.
enum Outcome {
    Continue,
    Finished(FinishReason),
    Failed(String),
}

/// A request admitted to the batch.
struct Running<'t> {
    job: Job,
    sequence: Sequence,
    sampler: Sampler,
    /// Prompt, then every generated token.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens of `tokens` the sequence has consumed.
    fed: usize,
    cached: usize,
    /// The last sampled token, not fed yet: decoding. `None`: still prefilling.
    next: Option<u32>,
    streamer: TokenStreamer<'t>,
    stop: StopMatcher,
    /// A stop string ended it: nothing held back is sent.
    stopped_by_string: bool,
}

impl Running<'_> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached,
        }
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.job.events.send(Event::Text(text));
        }
    }
}

struct Engine<'t> {
    model: HybridModel,
    tokenizer: &'t Tokenizer,
    eos: Vec<u32>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    cache: StateCache<ModelState>,
    commands: Receiver<Command>,
    waiting_count: Arc<AtomicUsize>,
    waiting: VecDeque<Job>,
    running: Vec<Running<'t>>,
    /// Set by a shutdown request: running streams end by then.
    drain_until: Option<Instant>,
}

impl<'t> Engine<'t> {
    fn run(mut self) {
        while self.receive() {
            self.drop_cancelled();
            self.admit();
            self.prefill_chunk();
            self.decode_step();
            if let Some(deadline) = self.drain_until {
                if Instant::now() >= deadline {
                    for i in (0..self.running.len()).rev() {
                        self.finish(i, FinishReason::Length);
                    }
                }
            }
            self.publish();
        }
        self.publish();
    }

    /// Takes new commands; blocks while there is nothing to do. `false`: time to stop.
    fn receive(&mut self) -> bool {
        loop {
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle && self.drain_until.is_some() {
                // Jobs sent while the last streams finished are answered, not dropped.
                while let Ok(command) = self.commands.try_recv() {
                    if let Command::Submit(job) = command {
                        self.refuse_shutting_down(job);
                    }
                }
                return false;
            }
            let command = if idle {
                match self.commands.recv() {
                    Ok(command) => command,
                    Err(_) => return false,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => {
                        self.begin_shutdown();
                        return true;
                    }
                }
            };
            match command {
                Command::Submit(job) if self.drain_until.is_some() => {
                    self.refuse_shutting_down(job)
                }
                Command::Submit(job) => self.waiting.push_back(job),
                Command::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.drain_until.is_none() {
            self.drain_until = Some(Instant::now() + self.config.shutdown_grace);
        }
        for job in std::mem::take(&mut self.waiting) {
            self.refuse_shutting_down(job);
        }
    }

    /// Answers a job that was counted as waiting with [`Failure::ShuttingDown`].
    fn refuse_shutting_down(&self, job: Job) {
        self.waiting_count.fetch_sub(1, Ordering::AcqRel);
        let _ = job.events.send(Event::Failed(Failure::ShuttingDown));
    }

    /// Frees the sequences of clients that went away.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|job| !job.events.is_closed());
        let dropped_waiting = before - self.waiting.len();
        self.waiting_count
            .fetch_sub(dropped_waiting, Ordering::AcqRel);
        let mut cancelled = dropped_waiting;
        for i in (0..self.running.len()).rev() {
            if self.running[i].job.events.is_closed() {
                let running = self.running.swap_remove(i);
                self.release(running.sequence);
                cancelled += 1;
            }
        }
        self.metrics.lock().cancelled += cancelled as u64;
    }

    /// Moves waiting jobs into the batch while there is room.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            let mut sequence = match self.model.new_sequence() {
                Ok(sequence) => sequence,
                Err(_) if !self.running.is_empty() => {
                    // No free slot while others run (e.g. a backend with few slots): wait for
                    // one of them to finish.
                    self.waiting.push_front(job);
                    return;
                }
                Err(e) => {
                    self.waiting_count.fetch_sub(1, Ordering::AcqRel);
                    self.fail_job(&job, format!("no sequence for the request: {e}"));
                    continue;
                }
            };
            self.waiting_count.fetch_sub(1, Ordering::AcqRel);
            let cached = self.restore_cached(&mut sequence, &job.prompt);
            let sampler = match Sampler::new(job.sampling.clone()) {
                Ok(sampler) => sampler,
                Err(e) => {
                    self.fail_job(&job, e.to_string());
                    self.release(sequence);
                    continue;
                }
            };
            self.running.push(Running {
                sampler,
                tokens: job.prompt.clone(),
                prompt_len: job.prompt.len(),
                fed: cached,
                cached,
                next: None,
                streamer: TokenStreamer::new(self.tokenizer, true),
                stop: StopMatcher::new(job.stop.clone()),
                stopped_by_string: false,
                sequence,
                job,
            });
        }
    }

    /// Continues `sequence` from the longest cached state `prompt` extends; returns the prompt
    /// tokens that state covers (0 on a miss).
    fn restore_cached(&mut self, sequence: &mut Sequence, prompt: &[u32]) -> usize {
        if !self.cache.enabled() {
            return 0;
        }
        let hit = match self.cache.lookup(prompt) {
            Some((state, covered)) => match self.model.import_sequence(sequence, state) {
                Ok(()) => covered,
                Err(_) => {
                    // A state that no longer imports (it cannot happen with one model, but a
                    // miss is always safe): start from scratch.
                    let _ = self.model.reset_sequence(sequence);
                    0
                }
            },
            None => 0,
        };
        let mut stats = self.metrics.lock();
        if hit > 0 {
            stats.cache_hits += 1;
        } else {
            stats.cache_misses += 1;
        }
        hit
    }

    /// Prefills the next chunk of the first sequence still prefilling. One sequence per turn:
    /// spending the chunk budget on several short prompts at once made every new request of a
    /// burst wait for all of them (8 streams, 0.8B Q8_0: time to first token p50 0.6 s → 2.6 s).
    fn prefill_chunk(&mut self) {
        let Some(i) = self.running.iter().position(|r| r.next.is_none()) else {
            return;
        };
        let running = &mut self.running[i];
        let end = running
            .prompt_len
            .min(running.fed + self.config.prefill_chunk);
        let chunk = &running.tokens[running.fed..end];
        let started = Instant::now();
        let logits = self
            .model
            .prefill(&mut running.sequence, chunk)
            .and_then(|logits| Ok(logits.to_vec1::<f32>()?));
        {
            let mut stats = self.metrics.lock();
            stats.prefill_tokens += chunk.len() as u64;
            stats.prefill_time += started.elapsed();
        }
        match logits {
            Ok(logits) => {
                running.fed = end;
                if end == running.prompt_len {
                    let outcome = self.accept(i, &logits);
                    self.settle(i, outcome);
                }
            }
            Err(e) => {
                let running = self.running.swap_remove(i);
                self.fail_running(running, format!("prefill failed: {e}"));
            }
        }
    }

    /// One decode step over every sequence with a token to feed.
    fn decode_step(&mut self) {
        let batch: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].next.is_some())
            .collect();
        if batch.is_empty() {
            return;
        }
        let tokens: Vec<u32> = batch.iter().filter_map(|&i| self.running[i].next).collect();
        let started = Instant::now();
        let logits = {
            let mut sequences: Vec<&mut Sequence> = self
                .running
                .iter_mut()
                .filter(|r| r.next.is_some())
                .map(|r| &mut r.sequence)
                .collect();
            self.model
                .step(&mut sequences, &tokens)
                .and_then(|logits| Ok(logits.to_vec2::<f32>()?))
        };
        self.metrics
            .lock()
            .record_step(batch.len(), started.elapsed());
        match logits {
            Ok(rows) => {
                let outcomes: Vec<Outcome> = batch
                    .iter()
                    .zip(&rows)
                    .map(|(&i, row)| {
                        self.running[i].fed += 1;
                        self.accept(i, row)
                    })
                    .collect();
                // Back to front, so that removing one never moves another still to settle.
                for (&i, outcome) in batch.iter().zip(outcomes).rev() {
                    self.settle(i, outcome);
                }
            }
            Err(e) => {
                // Which sequence broke the step is unknown, and their states may be half
                // updated: fail each of them; the waiting and prefilling requests go on.
                for &i in batch.iter().rev() {
                    let running = self.running.swap_remove(i);
                    self.fail_running(running, format!("decode step failed: {e}"));
                }
            }
        }
    }

    /// Samples the next token of running sequence `i` from `logits` and streams its text;
    /// says whether the sequence goes on. Nothing is removed here, so indices stay valid.
    fn accept(&mut self, i: usize, logits: &[f32]) -> Outcome {
        let running = &mut self.running[i];
        let token = match running.sampler.sample(logits, &running.tokens) {
            Ok(token) => token,
            Err(e) => return Outcome::Failed(format!("sampling failed: {e}")),
        };
        running.tokens.push(token);
        let is_eos = !running.job.ignore_eos && self.eos.contains(&token);
        let text = if is_eos {
            String::new()
        } else {
            running
                .streamer
                .push(token)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        match running.stop.push(&text) {
            Scan::Continue(text) => running.send_text(text),
            Scan::Stopped(text) => {
                running.send_text(text);
                running.stopped_by_string = true;
                return Outcome::Finished(FinishReason::Stop);
            }
        }
        if is_eos {
            return Outcome::Finished(FinishReason::Stop);
        }
        if running.generated() >= running.job.max_tokens {
            return Outcome::Finished(FinishReason::Length);
        }
        running.next = Some(token);
        Outcome::Continue
    }

    /// Applies `outcome` to running sequence `i` (removing it when it ended).
    fn settle(&mut self, i: usize, outcome: Outcome) {
        match outcome {
            Outcome::Continue => {}
            Outcome::Finished(reason) => self.finish(i, reason),
            Outcome::Failed(message) => {
                let running = self.running.swap_remove(i);
                self.fail_running(running, message);
            }
        }
    }

    /// Ends running sequence `i`: sends the text still held back (an incomplete character,
    /// a possible start of a stop string), then completes it.
    fn finish(&mut self, i: usize, reason: FinishReason) {
        let mut running = self.running.swap_remove(i);
        if !running.stopped_by_string {
            let tail = running.streamer.finish().ok().flatten().unwrap_or_default();
            let text = match running.stop.push(&tail) {
                Scan::Continue(text) => text + &running.stop.finish(),
                Scan::Stopped(text) => text,
            };
            running.send_text(text);
        }
        self.complete(running, reason);
    }

    /// Sends the outcome, keeps the state for a continuing conversation, frees the sequence.
    fn complete(&mut self, running: Running<'t>, reason: FinishReason) {
        let usage = running.usage();
        // Counted before the client hears of it, so /metrics read after an answer includes it.
        {
            let mut stats = self.metrics.lock();
            stats.prompt_tokens += usage.prompt_tokens as u64;
            stats.prompt_tokens_cached += usage.cached_tokens as u64;
            stats.completion_tokens += usage.completion_tokens as u64;
        }
        let _ = running.job.events.send(Event::Done(Completion {
            finish_reason: reason,
            usage,
        }));
        // A state whose KV pages alone exceed the budget would be copied only to be dropped.
        if self.cache.enabled() && running.sequence.kv_bytes() <= self.cache.budget() {
            if let Ok(state) = self.model.export_sequence(&running.sequence) {
                let bytes = state.data_bytes();
                let consumed = running.tokens[..running.fed].to_vec();
                self.cache.insert(consumed, state, bytes);
            }
        }
        self.release(running.sequence);
    }

    fn fail_job(&self, job: &Job, message: String) {
        self.metrics.lock().engine_errors += 1;
        let _ = job.events.send(Event::Failed(Failure::Engine(message)));
    }

    fn fail_running(&mut self, running: Running<'t>, message: String) {
        self.fail_job(&running.job, message);
        self.release(running.sequence);
    }

    fn release(&mut self, sequence: Sequence) {
        if self.model.free_sequence(sequence).is_err() {
            self.metrics.lock().engine_errors += 1;
        }
    }

    fn publish(&self) {
        let mut stats = self.metrics.lock();
        stats.active = self.running.len();
        stats.gdn_time = self.model.gdn_counters().run_time();
        stats.cache_entries = self.cache.len();
        stats.cache_bytes = self.cache.bytes();
    }
}
