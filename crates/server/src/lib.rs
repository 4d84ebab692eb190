//! # hybrid-server
//!
//! An OpenAI-compatible HTTP server for hybrid-decode: `POST /v1/chat/completions` and
//! `POST /v1/completions` (JSON, or server-sent events with `stream: true`), `GET /v1/models`,
//! `GET /health` and `GET /metrics` (Prometheus text).
//!
//! Requests run on one model with continuous batching: new requests join between decode steps,
//! long prompts prefill in chunks between them, and each decode step runs every running
//! sequence in one batched [`HybridModel::step`]. A hybrid model's sequence state (a fixed-size
//! GDN state per layer plus the attention layers' KV caches) is kept after each request in a
//! byte-bounded LRU [`StateCache`]: a prompt that extends an earlier request's tokens — the next
//! turn of a chat — continues from that state without prefilling them again.
//!
//! [`serve`] runs the whole server until SIGTERM or Ctrl-C; [`router`] and [`EngineHandle`] are
//! its parts, for embedding it elsewhere.

#![warn(missing_docs)]

mod api_error;
mod engine;
mod http;
mod metrics;
mod openai;
mod state_cache;
mod stop;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api_error::ApiError;
pub use engine::{
    Completion, EngineConfig, EngineHandle, Event, Failure, FinishReason, Job, SubmitError, Usage,
};
pub use http::{router, AppState};
pub use metrics::{Metrics, Stats};
pub use openai::{parse_request, Endpoint, GenerationRequest, PromptInput, RequestOptions};
pub use state_cache::StateCache;
pub use stop::{Scan, StopMatcher};

use hybrid_model::HybridModel;
use hybrid_runtime::{ChatTemplate, SamplingParams, Tokenizer};

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`--host`).
    pub host: String,
    /// Port (`--port`; 0 picks a free one, reported to the `on_listening` callback).
    pub port: u16,
    /// Largest request body accepted (`--max-body-mb`); larger ones get 413.
    pub max_body_bytes: usize,
    /// Most tokens (prompt + generated) per request (`--ctx-size`).
    pub context: usize,
    /// The id clients send as `model`.
    pub model_id: String,
    /// Batching, queue and state-cache settings.
    pub engine: EngineConfig,
}

/// The model and what lives next to it.
pub struct ServedModel {
    /// The weights and GDN backend.
    pub model: HybridModel,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template (`/v1/chat/completions` needs one).
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Sampling settings for fields a request leaves out.
    pub sampling_defaults: SamplingParams,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The async runtime or the engine thread could not start.
    #[error("starting the server: {0}")]
    Start(#[source] std::io::Error),
    /// The address could not be bound.
    #[error("listening on {address}: {source} (pick another --host/--port)")]
    Bind {
        /// `host:port` as asked.
        address: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs the server until SIGTERM or Ctrl-C, then stops accepting connections, lets running
/// streams finish (at most `engine.shutdown_grace`, then they end with `finish_reason:
/// "length"`), answers waiting requests with 503 and returns. `on_listening` gets the bound
/// address once the socket is open.
pub fn serve(
    config: ServerConfig,
    served: ServedModel,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::default());
    let tokenizer = Arc::new(served.tokenizer);
    let vocab_size = served.model.config().vocab_size;
    let grace = config.engine.shutdown_grace;
    let engine = EngineHandle::start(
        served.model,
        Arc::clone(&tokenizer),
        served.eos_token_ids,
        config.engine.clone(),
        Arc::clone(&metrics),
    )
    .map_err(ServerError::Start)?;
    let state = Arc::new(AppState::new(
        engine,
        tokenizer,
        served.chat_template,
        config.model_id.clone(),
        config.context,
        vocab_size,
        served.sampling_defaults,
        metrics,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The HTTP side only parses, tokenizes and relays events: the cores are the model's.
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServerError::Start)?;
    let result = runtime.block_on(async {
        let address = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|source| ServerError::Bind {
                address: address.clone(),
                source,
            })?;
        on_listening(listener.local_addr().map_err(ServerError::Serve)?);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state), config.max_body_bytes);
        let signal_state = Arc::clone(&state);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            signal_state.engine.shutdown();
            let _ = stopping_tx.send(());
        });
        let mut server = tokio::spawn(async move { server.await });
        let ended = tokio::select! {
            finished = &mut server => Some(finished),
            _ = stopping_rx => None,
        };
        let finished = match ended {
            Some(finished) => finished,
            // Once stopping, connections get the grace period (plus a margin for the final
            // chunks to reach their clients) and are then closed.
            None => match tokio::time::timeout(grace + Duration::from_secs(5), &mut server).await {
                Ok(finished) => finished,
                Err(_) => {
                    server.abort();
                    return Ok(());
                }
            },
        };
        finished
            .map_err(|e| ServerError::Serve(std::io::Error::other(e)))?
            .map_err(ServerError::Serve)
    });
    state.engine.shutdown();
    state.engine.join();
    result
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
