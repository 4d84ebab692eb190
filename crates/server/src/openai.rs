//! OpenAI's request and response formats for `/v1/chat/completions` and `/v1/completions`:
//! parsing and checking a request body, and building the JSON answers and stream chunks.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use hybrid_runtime::ChatMessage;

use crate::api_error::ApiError;
use crate::engine::{Completion, Usage};

/// The two generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
}

impl Endpoint {
    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completion => "completions",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        }
    }
}

/// What to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// A conversation, rendered with the model's chat template.
    Messages(Vec<ChatMessage>),
    /// Plain text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// Generation settings a request may give; `None` takes the server's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<usize>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `top_k`: `Some(None)` disables it (0 or -1, as vLLM takes it).
    pub top_k: Option<Option<usize>>,
    /// `stop`.
    pub stop: Vec<String>,
    /// `seed`.
    pub seed: Option<u64>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f64>,
    /// `ignore_eos` (an extension llama-server and vLLM share): generate `max_tokens` tokens
    /// whatever is sampled, as benchmarks do.
    pub ignore_eos: bool,
}

/// A parsed generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// `model`, when given.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: PromptInput,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with no choices and the usage.
    pub include_usage: bool,
    /// Sampling and length settings.
    pub options: RequestOptions,
}

/// Most stop strings a request may give (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;

/// Longest stop string, in bytes: every generated token is matched against every stop string on
/// the engine thread, so a huge one would slow every stream of the batch.
const MAX_STOP_BYTES: usize = 1024;

#[derive(Deserialize)]
struct CommonFields {
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stop: Option<Value>,
    seed: Option<i64>,
    repetition_penalty: Option<f64>,
    ignore_eos: Option<bool>,
    n: Option<i64>,
    logprobs: Option<Value>,
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatFields {
    messages: Vec<MessageIn>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct CompletionFields {
    prompt: Value,
}

/// Parses and checks a request body for `endpoint`. Every error names the field at fault.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("the request body is not valid JSON ({e}); send one JSON object"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    let common: CommonFields = fields(&value)?;
    let prompt = match endpoint {
        Endpoint::Chat => PromptInput::Messages(messages(fields::<ChatFields>(&value)?.messages)?),
        Endpoint::Completion => prompt(fields::<CompletionFields>(&value)?.prompt)?,
    };
    if common.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            Some("n".into()),
            "only n = 1 is supported: send one request per completion",
        ));
    }
    if common.logprobs.as_ref().is_some_and(truthy) {
        return Err(ApiError::invalid(
            Some("logprobs".into()),
            "logprobs are not supported by this server",
        ));
    }
    if common.tools.as_ref().is_some_and(truthy) {
        return Err(ApiError::invalid(
            Some("tools".into()),
            "tool calling is not supported by this server",
        ));
    }
    let max_tokens = match common.max_completion_tokens.or(common.max_tokens) {
        None => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            let param = if common.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                Some(param.into()),
                format!("{param} is {n}; it must be at least 1"),
            ));
        }
    };
    let top_k = match common.top_k {
        None => None,
        Some(0 | -1) => Some(None),
        Some(k) if k > 0 => Some(Some(usize::try_from(k).unwrap_or(usize::MAX))),
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k".into()),
                format!("top_k is {k}; use a positive number, or 0 or -1 to disable it"),
            ))
        }
    };
    Ok(GenerationRequest {
        model: common.model,
        prompt,
        stream: common.stream.unwrap_or(false),
        include_usage: common.stream_options.is_some_and(|o| o.include_usage),
        options: RequestOptions {
            max_tokens,
            temperature: common.temperature,
            top_p: common.top_p,
            top_k,
            stop: stop_strings(common.stop)?,
            // OpenAI's seed is any 64-bit integer; its bits seed the generator.
            seed: common.seed.map(|s| s as u64),
            repetition_penalty: common.repetition_penalty,
            ignore_eos: common.ignore_eos.unwrap_or(false),
        },
    })
}

/// Deserializes the fields of `T` from the body, naming the path of a field of the wrong type.
fn fields<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(path) => format!("{path}: {}", e.inner()),
            None => e.inner().to_string(),
        };
        ApiError::invalid(param, message)
    })
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(items) => !items.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

fn messages(list: Vec<MessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::invalid(
            Some("messages".into()),
            "messages is empty; send at least one message",
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = message.role;
            if !["system", "developer", "user", "assistant", "tool"].contains(&role.as_str()) {
                return Err(ApiError::invalid(
                    Some(format!("messages[{i}].role")),
                    format!(
                        "messages[{i}].role is {role:?}; use system, developer, user, \
                         assistant or tool"
                    ),
                ));
            }
            let content = message_text(message.content)
                .map_err(|why| ApiError::invalid(Some(format!("messages[{i}].content")), why))?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// A message's text: a string, or an array of `{"type": "text", "text": ...}` parts.
fn message_text(content: Value) -> Result<String, String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text),
        Value::Array(parts) => parts
            .into_iter()
            .map(
                |part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => Ok(text.clone()),
                    _ => Err(format!(
                        "content part {part} is not a text part; only {{\"type\": \"text\", \
                     \"text\": \"...\"}} parts are supported"
                    )),
                },
            )
            .collect(),
        other => Err(format!(
            "content must be a string or an array of text parts, not {other}"
        )),
    }
}

fn prompt(value: Value) -> Result<PromptInput, ApiError> {
    let bad = |why: &str| ApiError::invalid(Some("prompt".into()), why.to_string());
    match value {
        Value::String(text) => Ok(PromptInput::Text(text)),
        Value::Array(items) if items.iter().all(Value::is_u64) && !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| bad("a token id in prompt does not fit in 32 bits"))
            })
            .collect::<Result<_, _>>()
            .map(PromptInput::Tokens),
        Value::Array(mut items) if items.len() == 1 => prompt(items.remove(0)),
        Value::Array(items) if items.len() > 1 => Err(bad(
            "prompt holds several prompts; send one prompt per request",
        )),
        _ => Err(bad(
            "prompt must be a string, an array of token ids, or an array holding one of these",
        )),
    }
}

fn stop_strings(value: Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = |why: String| ApiError::invalid(Some("stop".into()), why);
    let stops = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(stop)) => vec![stop],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(stop) => Ok(stop),
                other => Err(bad(format!(
                    "stop holds {other}; every stop must be a string"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "stop is {other}; give a string or an array of up to {MAX_STOP_STRINGS} strings"
            )))
        }
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(bad(format!(
            "stop holds {} strings; at most {MAX_STOP_STRINGS} are allowed",
            stops.len()
        )));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("stop holds an empty string".into()));
    }
    if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad(format!(
            "a stop string is {} bytes long; at most {MAX_STOP_BYTES} are allowed",
            long.len()
        )));
    }
    Ok(stops)
}

/// Identity of one answer: what every chunk and the final object repeat.
#[derive(Debug, Clone)]
pub struct AnswerId {
    /// The endpoint answering.
    pub endpoint: Endpoint,
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
}

impl AnswerId {
    /// The identity of request number `serial`.
    pub fn new(endpoint: Endpoint, serial: u64, created: u64, model: &str) -> Self {
        Self {
            endpoint,
            id: format!("{}-{serial}", endpoint.id_prefix()),
            created,
            model: model.to_string(),
        }
    }

    /// The whole answer of a non-streaming request.
    pub fn full(&self, text: &str, completion: &Completion) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": completion.finish_reason.as_str(),
                }),
            ),
            Endpoint::Completion => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": completion.finish_reason.as_str(),
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(&completion.usage),
        })
    }

    /// One stream chunk: `text` as the delta (the chat stream's first chunk also carries the
    /// role), `completion` on the last one: its finish reason, and its usage when `with_usage`
    /// (streams without `include_usage`; with it, the usage travels once, in
    /// [`usage_chunk`](Self::usage_chunk), as OpenAI sends it).
    pub fn chunk(
        &self,
        text: &str,
        first: bool,
        completion: Option<&Completion>,
        with_usage: bool,
    ) -> Value {
        let finish = completion.map(|c| c.finish_reason.as_str());
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if completion.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
                )
            }
            Endpoint::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
            ),
        };
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some(completion) = completion.filter(|_| with_usage) {
            chunk["usage"] = usage(&completion.usage);
        }
        chunk
    }

    /// The extra last chunk `stream_options.include_usage` asks for: no choices, the usage.
    pub fn usage_chunk(&self, completion: &Completion) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(&completion.usage),
        })
    }
}

/// OpenAI's `usage`, with the prompt tokens continued from the state cache as
/// `prompt_tokens_details.cached_tokens` (OpenAI's field for prompt caching).
fn usage(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: &str) -> Result<GenerationRequest, ApiError> {
        parse_request(endpoint, body.as_bytes())
    }

    #[test]
    fn chat_request_with_every_field() {
        let request = parse(
            Endpoint::Chat,
            r#"{"model": "m", "messages": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 5,
                "temperature": 0.5, "top_p": 0.9, "top_k": -1, "stop": "\n", "seed": -3,
                "repetition_penalty": 1.1, "user": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(
            request.prompt,
            PromptInput::Messages(vec![
                ChatMessage::system("be brief"),
                ChatMessage::user("hi")
            ])
        );
        assert!(request.stream && request.include_usage);
        let o = request.options;
        assert_eq!(o.max_tokens, Some(5));
        assert_eq!(o.top_k, Some(None));
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert_eq!(o.seed, Some(-3i64 as u64));
    }

    #[test]
    fn completion_prompts_as_text_or_tokens() {
        let text = parse(Endpoint::Completion, r#"{"prompt": ["once"]}"#).unwrap();
        assert_eq!(text.prompt, PromptInput::Text("once".into()));
        let ids = parse(Endpoint::Completion, r#"{"prompt": [1, 2, 3]}"#).unwrap();
        assert_eq!(ids.prompt, PromptInput::Tokens(vec![1, 2, 3]));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (Endpoint::Chat, "{", None),
            (Endpoint::Chat, "[1]", None),
            (Endpoint::Chat, r#"{"messages": []}"#, Some("messages")),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                Some("messages[0].content"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user"}], "temperature": "hot"}"#,
                Some("temperature"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user"}], "max_tokens": 0}"#,
                Some("max_tokens"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user"}], "n": 2}"#,
                Some("n"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user"}], "stop": ["a","b","c","d","e"]}"#,
                Some("stop"),
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user"}], "top_k": -5}"#,
                Some("top_k"),
            ),
            (
                Endpoint::Completion,
                r#"{"prompt": ["a", "b"]}"#,
                Some("prompt"),
            ),
            (
                Endpoint::Completion,
                r#"{"prompt": {"x": 1}}"#,
                Some("prompt"),
            ),
            (Endpoint::Completion, r#"{}"#, None),
        ];
        for (endpoint, body, param) in cases {
            let error = parse(endpoint, body).expect_err(body);
            assert_eq!(error.status.as_u16(), 400, "{body}");
            assert_eq!(error.param.as_deref(), param, "{body}: {}", error.message);
        }
    }

    #[test]
    fn chunks_follow_openai_shapes() {
        let id = AnswerId::new(Endpoint::Chat, 7, 1, "m");
        let first = id.chunk("", true, None, false);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let done = Completion {
            finish_reason: crate::engine::FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 1,
            },
        };
        assert!(id
            .chunk("", false, Some(&done), false)
            .get("usage")
            .is_none());
        let last = id.chunk("", false, Some(&done), true);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["usage"]["total_tokens"], 5);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        let full = AnswerId::new(Endpoint::Completion, 8, 1, "m").full("hi", &done);
        assert_eq!(full["id"], "cmpl-8");
        assert_eq!(full["choices"][0]["text"], "hi");
    }
}
