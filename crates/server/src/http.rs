//! The HTTP API: OpenAI's generation endpoints (JSON or server-sent events), `/v1/models`,
//! `/health` and `/metrics`, over the engine thread.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use hybrid_runtime::{ChatTemplate, SamplingParams, Tokenizer};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api_error::ApiError;
use crate::engine::{EngineHandle, Event, Failure, Job, SubmitError};
use crate::metrics::Metrics;
use crate::openai::{parse_request, AnswerId, Endpoint, GenerationRequest, PromptInput};

/// What the handlers share: the engine, the tokenizer and the served model's limits.
pub struct AppState {
    /// The engine thread.
    pub engine: EngineHandle,
    /// Turns prompts into ids.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template, for `/v1/chat/completions`.
    pub chat_template: Option<ChatTemplate>,
    /// The id clients name in `model` (`GET /v1/models` lists it).
    pub model_id: String,
    /// Most tokens (prompt + generated) of one request.
    pub context: usize,
    /// Token ids a prompt may hold are below this.
    pub vocab_size: usize,
    /// Sampling settings a request does not give (the model's generation_config.json).
    pub sampling_defaults: SamplingParams,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    serial: AtomicU64,
    started: u64,
}

impl AppState {
    /// The shared state of a server for `engine`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<ChatTemplate>,
        model_id: String,
        context: usize,
        vocab_size: usize,
        sampling_defaults: SamplingParams,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            tokenizer,
            chat_template,
            model_id,
            context,
            vocab_size,
            sampling_defaults,
            metrics,
            serial: AtomicU64::new(0),
            started: unix_now(),
        }
    }

    /// Turns a parsed request into a job for the engine (without its event channel).
    fn prepare(&self, request: &GenerationRequest, serial: u64) -> Result<Prepared, ApiError> {
        if let Some(model) = &request.model {
            if model != &self.model_id {
                return Err(ApiError {
                    param: Some("model".into()),
                    ..ApiError::status(
                        StatusCode::NOT_FOUND,
                        format!(
                            "the model `{model}` does not exist here; this server serves `{}` \
                             (GET /v1/models)",
                            self.model_id
                        ),
                    )
                }
                .with_code("model_not_found"));
            }
        }
        let prompt = self.prompt_ids(&request.prompt)?;
        if prompt.is_empty() {
            return Err(ApiError::invalid(
                None,
                "the prompt is empty after tokenization; send some text",
            ));
        }
        let room = self.context.saturating_sub(prompt.len());
        let prompt_field = match request.prompt {
            PromptInput::Messages(_) => "messages",
            _ => "prompt",
        };
        let too_long = |asked: usize| {
            ApiError::invalid(
                Some(
                    if asked > 0 {
                        "max_tokens"
                    } else {
                        prompt_field
                    }
                    .to_string(),
                ),
                format!(
                    "this server's context is {} tokens (--ctx-size); the request asks for {} \
                     ({} in the prompt, {asked} to generate): shorten the prompt or lower \
                     max_tokens",
                    self.context,
                    prompt.len() + asked,
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded")
        };
        if room == 0 {
            return Err(too_long(0));
        }
        let max_tokens = request.options.max_tokens.unwrap_or(room);
        if max_tokens > room {
            return Err(too_long(max_tokens));
        }
        Ok(Prepared {
            prompt,
            max_tokens,
            sampling: self.sampling(request, serial)?,
        })
    }

    fn prompt_ids(&self, prompt: &PromptInput) -> Result<Vec<u32>, ApiError> {
        let text = match prompt {
            PromptInput::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                    return Err(ApiError::invalid(
                        Some("prompt".into()),
                        format!(
                            "token id {bad} is outside the vocabulary (ids are below {})",
                            self.vocab_size
                        ),
                    ));
                }
                return Ok(ids.clone());
            }
            PromptInput::Text(text) => text.clone(),
            PromptInput::Messages(messages) => {
                let template = self.chat_template.as_ref().ok_or_else(|| {
                    ApiError::invalid(
                        Some("messages".into()),
                        "this model has no chat template; send plain text to /v1/completions",
                    )
                })?;
                template
                    .render(messages, true)
                    .map_err(|e| ApiError::invalid(Some("messages".into()), e.to_string()))?
            }
        };
        self.tokenizer.encode(&text, false).map_err(|e| {
            ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("tokenizing the prompt failed: {e}"),
            )
        })
    }

    /// The model's sampling defaults with the request's fields applied.
    fn sampling(
        &self,
        request: &GenerationRequest,
        serial: u64,
    ) -> Result<SamplingParams, ApiError> {
        let o = &request.options;
        let mut params = self.sampling_defaults.clone();
        // Without a seed each request draws differently, as OpenAI's API does.
        params.seed = o.seed.unwrap_or_else(|| {
            params.seed ^ serial.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ unix_now()
        });
        if let Some(t) = o.temperature {
            params.temperature = t;
        }
        if let Some(p) = o.top_p {
            params.top_p = Some(p);
        }
        if let Some(k) = o.top_k {
            params.top_k = k;
        }
        if let Some(r) = o.repetition_penalty {
            params.repeat_penalty = r;
        }
        params.validate().map_err(|e| {
            let field = match &e {
                hybrid_runtime::RuntimeError::InvalidSamplingParam { flag, .. } => {
                    Some(SamplingParams::field_of_flag(flag).to_string())
                }
                _ => None,
            };
            ApiError::invalid(field, e.to_string())
        })?;
        Ok(params)
    }
}

struct Prepared {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
}

/// The routes, with request bodies limited to `max_body_bytes`.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Chat, body).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Completion, body).await
}

async fn generate(
    state: Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match start(&state, endpoint, body).await {
        Ok(started) if started.request.stream => Ok(stream_response(&state, started)),
        Ok(started) => collect_response(&state, started).await,
        Err(e) => Err(e),
    };
    let response = response.unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .record_request(endpoint.label(), response.status().as_u16());
    response
}

/// A request handed to the engine.
struct Started {
    request: GenerationRequest,
    answer: AnswerId,
    events: UnboundedReceiver<Event>,
}

async fn start(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<Started, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::status(
            rejection.status(),
            format!(
                "the request body could not be read: {} (the server takes bodies up to \
                 --max-body-mb)",
                rejection.body_text()
            ),
        )
    })?;
    let serial = state.serial.fetch_add(1, Ordering::Relaxed);
    // Parsing, the chat template and the tokenizer take time with long prompts: off the few
    // async workers that relay every stream.
    let shared = Arc::clone(state);
    let (request, prepared) = tokio::task::spawn_blocking(move || {
        let request = parse_request(endpoint, &body)?;
        let prepared = shared.prepare(&request, serial)?;
        Ok::<_, ApiError>((request, prepared))
    })
    .await
    .map_err(|e| {
        ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("preparing the request failed: {e}"),
        )
    })??;
    let (sender, events) = unbounded_channel();
    let job = Job {
        prompt: prepared.prompt,
        sampling: prepared.sampling,
        max_tokens: prepared.max_tokens,
        stop: request.options.stop.clone(),
        ignore_eos: request.options.ignore_eos,
        events: sender,
    };
    state.engine.submit(job).map_err(|e| match e {
        SubmitError::QueueFull => {
            state.metrics.lock().rejected_queue_full += 1;
            ApiError {
                retry_after: Some(1),
                ..ApiError::status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "the server's queue is full (--max-queue); retry shortly",
                )
            }
        }
        SubmitError::Stopped => shutting_down(),
    })?;
    Ok(Started {
        answer: AnswerId::new(endpoint, serial, unix_now(), &state.model_id),
        request,
        events,
    })
}

fn shutting_down() -> ApiError {
    ApiError {
        retry_after: Some(5),
        ..ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; retry on another instance",
        )
    }
}

fn failure_error(failure: Failure) -> ApiError {
    match failure {
        Failure::ShuttingDown => shutting_down(),
        Failure::Engine(message) => ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("generation failed: {message}"),
        ),
    }
}

/// Waits for the whole answer (non-streaming request). Dropping this future (the client went
/// away) drops the receiver, which cancels the job.
async fn collect_response(state: &AppState, mut started: Started) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = started.events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(completion) => {
                return Ok(Json(started.answer.full(&text, &completion)).into_response())
            }
            Event::Failed(failure) => return Err(failure_error(failure)),
        }
    }
    Err(lost(state))
}

/// The engine dropped a request without an outcome: it was stopping (or died).
fn lost(state: &AppState) -> ApiError {
    if state.engine.stopping() {
        shutting_down()
    } else {
        failure_error(Failure::Engine(
            "the engine stopped without finishing the request".into(),
        ))
    }
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
fn stream_response(state: &Arc<AppState>, started: Started) -> Response {
    let include_usage = started.request.include_usage;
    let state = Arc::clone(state);
    let mut pending = VecDeque::new();
    if started.answer.endpoint == Endpoint::Chat {
        pending.push_back(json_event(&started.answer.chunk("", true, None, false)));
    }
    let stream = futures_util::stream::unfold(
        (started, pending, false, state),
        move |(mut started, mut pending, mut ended, state)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(event), (started, pending, ended, state)));
                }
                if ended {
                    return None;
                }
                match started.events.recv().await {
                    Some(Event::Text(text)) => pending
                        .push_back(json_event(&started.answer.chunk(&text, false, None, false))),
                    Some(Event::Done(completion)) => {
                        pending.push_back(json_event(&started.answer.chunk(
                            "",
                            false,
                            Some(&completion),
                            !include_usage,
                        )));
                        if include_usage {
                            pending.push_back(json_event(&started.answer.usage_chunk(&completion)));
                        }
                        pending.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                    Some(Event::Failed(failure)) => {
                        pending.push_back(json_event(&failure_error(failure).body()));
                        pending.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                    None => {
                        pending.push_back(json_event(&lost(&state).body()));
                        pending.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                }
            }
        },
    );
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn json_event(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started,
            "owned_by": "hybrid-decode",
        }],
    }))
    .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_running() && !state.engine.stopping() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        // Stopping, or the engine thread died: a load balancer should stop sending requests.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The engine publishes its gauges once per loop turn; the queue is read live.
    state.metrics.lock().queued = state.engine.waiting();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "no such route; this server answers POST /v1/chat/completions, POST /v1/completions, \
         GET /v1/models, GET /health and GET /metrics",
    )
    .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
