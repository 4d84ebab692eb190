//! examples/serve over real HTTP on the tiny Qwen3-Next fixture: answers equal what the library
//! generates alone (greedy), streams in OpenAI's chunk format, concurrent streams, the
//! conversation state cache, bad input, a full queue, client disconnects and SIGTERM.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::server::{Response, Server};
use hybrid_decode::runtime::Tokenizer;
use serde_json::{json, Value};

/// The fixture's EOS ids (its generation_config.json), where the server stops.
const EOS: [u32; 2] = [1023, 1021];

fn greedy_completion(prompt: &[u32], max_tokens: usize, stream: bool) -> Value {
    json!({
        "prompt": prompt, "max_tokens": max_tokens, "stream": stream,
        "temperature": 0, "repetition_penalty": 1.0,
    })
}

/// What the library generates for `prompt` alone (greedy, stopping after an EOS), as text.
fn alone(prompt: &[u32], max_tokens: usize) -> (String, &'static str) {
    let mut engine = common::load("qwen3-next-tiny", "cpu");
    let (mut ids, _) = common::generate(&mut engine, common::greedy(), prompt, max_tokens);
    let reason = match ids.iter().position(|id| EOS.contains(id)) {
        Some(at) => {
            ids.truncate(at + 1);
            "stop"
        }
        None => "length",
    };
    let tokenizer =
        Tokenizer::from_file(common::fixture("qwen3-next-tiny").join("tokenizer.json")).unwrap();
    (tokenizer.decode(&ids, true).unwrap(), reason)
}

/// The text and the final chunk of a streamed completion.
fn streamed(events: &[String]) -> (String, Value) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    (text, chunks.last().cloned().expect("a final chunk"))
}

#[test]
fn answers_equal_the_library_alone_streaming_or_not() {
    let server = Server::start(&[]);
    let prompt = common::PROMPT;
    let (expected, reason) = alone(prompt, 12);
    let full = server.post("/v1/completions", &greedy_completion(prompt, 12, false));
    assert_eq!(full.status, 200, "{}", full.body);
    let full = full.json();
    assert_eq!(full["object"], "text_completion");
    assert_eq!(full["choices"][0]["text"], expected.as_str());
    assert_eq!(full["choices"][0]["finish_reason"], reason);
    assert_eq!(full["usage"]["prompt_tokens"], prompt.len());

    let stream = server.post("/v1/completions", &greedy_completion(prompt, 12, true));
    assert_eq!(stream.status, 200);
    assert!(stream
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let (text, last) = streamed(&stream.events());
    assert_eq!(text, expected);
    assert_eq!(last["choices"][0]["finish_reason"], reason);
    assert_eq!(last["usage"], full["usage"], "usage in the final chunk");

    // Chat: the first chunk carries the role, the pieces add up to the non-streaming answer.
    let chat = |stream: bool| {
        json!({"model": "qwen3-next-tiny", "messages": [{"role": "user", "content": "hello"}],
               "max_tokens": 8, "temperature": 0, "stream": stream,
               "stream_options": {"include_usage": true}})
    };
    let whole = server.post("/v1/chat/completions", &chat(false)).json();
    assert_eq!(whole["object"], "chat.completion");
    let events = server.post("/v1/chat/completions", &chat(true)).events();
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert!(
        finish["usage"].is_null(),
        "with include_usage, usage comes once: {finish}"
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(
        usage_chunk["choices"],
        json!([]),
        "include_usage adds a last chunk"
    );
    assert_eq!(usage_chunk["usage"], whole["usage"]);

    let models = server.request("GET", "/v1/models", b"").json();
    assert_eq!(models["data"][0]["id"], "qwen3-next-tiny");
    assert_eq!(server.request("GET", "/health", b"").status, 200);
}

#[test]
fn concurrent_streams_each_equal_their_prompt_alone() {
    let server = Server::start(&["--max-batch", "4"]);
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| common::PROMPT.iter().map(|t| (t + 37 * i) % 1000).collect())
        .collect();
    let answers: Vec<(String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let server = &server;
                scope.spawn(move || {
                    streamed(
                        &server
                            .post("/v1/completions", &greedy_completion(prompt, 16, true))
                            .events(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (prompt, (text, last)) in prompts.iter().zip(answers) {
        let (expected, reason) = alone(prompt, 16);
        assert_eq!(text, expected, "prompt {prompt:?}");
        assert_eq!(last["choices"][0]["finish_reason"], reason);
    }
    assert!(server.metric("hybrid_decode_steps_total") > 0.0);
}

#[test]
fn a_prompt_extending_an_earlier_request_continues_its_state() {
    let server = Server::start(&[]);
    let first: Vec<u32> = common::PROMPT.to_vec();
    let reply = server.post("/v1/completions", &greedy_completion(&first, 1, false));
    assert_eq!(
        reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
    // The state after the first prompt (its one generated token was never fed) is kept: a
    // prompt extending it prefills only the new tokens, and answers as a fresh prefill would.
    let second: Vec<u32> = [first.clone(), vec![500, 501, 502]].concat();
    let continued = server
        .post("/v1/completions", &greedy_completion(&second, 10, false))
        .json();
    assert_eq!(
        continued["usage"]["prompt_tokens_details"]["cached_tokens"],
        first.len()
    );
    assert_eq!(server.metric("hybrid_state_cache_hits_total"), 1.0);
    assert_eq!(
        server.metric("hybrid_prompt_tokens_cached_total"),
        first.len() as f64
    );
    let (expected, _) = alone(&second, 10);
    assert_eq!(continued["choices"][0]["text"], expected.as_str());

    let uncached = Server::start(&["--state-cache-mb", "0"]);
    uncached.post("/v1/completions", &greedy_completion(&first, 1, false));
    let fresh = uncached
        .post("/v1/completions", &greedy_completion(&second, 10, false))
        .json();
    assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(fresh["choices"], continued["choices"]);
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&["--ctx-size", "64", "--max-body-mb", "1"]);
    let user = json!([{"role": "user", "content": "hi"}]);
    let long_prompt: Vec<u32> = (0..70).collect();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, None),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}).to_string().into(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string().into(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user, "model": "gpt-4"})
                .to_string()
                .into(),
            404,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user, "max_tokens": 0})
                .to_string()
                .into(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user, "max_tokens": 100000})
                .to_string()
                .into(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user, "temperature": -1})
                .to_string()
                .into(),
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": long_prompt}).to_string().into(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop": "y".repeat(2000)})
                .to_string()
                .into(),
            400,
            Some("stop"),
        ),
        (
            "/v1/completions",
            json!({"prompt": [5000]}).to_string().into(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            None,
        ),
        ("/v1/completions", vec![b' '; 2 << 20], 413, None),
    ];
    for (path, body, status, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let response = server.request("POST", path, &body);
        assert_eq!(response.status, status, "{shown}: {}", response.body);
        let error = &response.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}"
        );
        assert!(error["type"].is_string(), "{shown}");
        assert_eq!(
            error["param"].as_str(),
            param,
            "{shown}: {}",
            error["message"]
        );
    }
    assert_eq!(server.request("GET", "/nowhere", b"").status, 404);
    let ok = server.post("/v1/completions", &greedy_completion(&[1, 2, 3], 2, false));
    assert_eq!(ok.status, 200, "the server still serves: {}", ok.body);
    assert!(server
        .metrics()
        .contains("hybrid_requests_total{endpoint=\"completions\",code=\"413\"} 1"));
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    // One batch place and one queue place; eight requests of 500 tokens arrive together (the
    // fixture needs ~0.2 s for 500 tokens, the eight arrive within milliseconds): one runs, one
    // waits, the others are refused, and the server serves the rest in full.
    let server = Server::start(&["--max-batch", "1", "--max-queue", "1", "--ctx-size", "512"]);
    let body =
        json!({"prompt": [1, 2, 3], "max_tokens": 500, "temperature": 0, "ignore_eos": true});
    let responses: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| server.post("/v1/completions", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty(), "no request was refused");
    for response in &refused {
        assert!(response.header("retry-after").is_some());
        assert_eq!(response.json()["error"]["type"], "rate_limit_error");
    }
    for response in responses.iter().filter(|r| r.status != 429) {
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json()["usage"]["completion_tokens"], 500);
    }
    assert_eq!(
        server.metric("hybrid_requests_rejected_queue_full_total"),
        refused.len() as f64
    );
}

#[test]
fn a_disconnect_frees_the_sequence() {
    let server = Server::start(&["--max-batch", "1", "--ctx-size", "512"]);
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 500, "temperature": 0,
                      "ignore_eos": true, "stream": true})
    .to_string();
    // A runs (its first chunk has arrived), B waits for A's batch place; both clients go away
    // at once, long before 500 tokens: both sequences are freed without finishing.
    let mut running = server.send("POST", "/v1/completions", body.as_bytes());
    // The headers come at once; wait for A's first token, so that A holds the batch place.
    Server::read_until_first_event(&mut running);
    let waiting = server.send("POST", "/v1/completions", body.as_bytes());
    // B reaches the queue in milliseconds; A's 500 tokens take ~0.2 s even on this tiny model.
    while server.metric("hybrid_queue_depth") < 1.0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(running);
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("hybrid_requests_cancelled_total") < 2.0 {
        assert!(Instant::now() < deadline, "{}", server.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metric("hybrid_active_sequences"), 0.0);
    assert_eq!(
        server.metric("hybrid_completion_tokens_total"),
        0.0,
        "neither finished"
    );
    let ok = server.post("/v1/completions", &greedy_completion(&[7], 2, false));
    assert_eq!(ok.status, 200);
}

#[test]
fn sigterm_finishes_running_streams_and_exits_cleanly() {
    // One batch place: A runs, B waits. A's 500 tokens take ~0.2 s even on this tiny model, far
    // longer than the few requests between A's first token and SIGTERM, so B is still waiting
    // then; A either ends within the 1 s grace or is cut there, `length` both ways.
    let mut server = Server::start(&[
        "--shutdown-grace-s",
        "1",
        "--ctx-size",
        "512",
        "--max-batch",
        "1",
    ]);
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 500, "temperature": 0,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let mut running = server.send("POST", "/v1/completions", body.as_bytes());
    // The headers come as soon as a request is queued; A's first token says it runs.
    let mut running_seen = Server::read_until_first_event(&mut running);
    let mut waiting = server.send("POST", "/v1/completions", body.as_bytes());
    while server.metric("hybrid_queue_depth") < 1.0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    server.terminate();

    running.read_to_end(&mut running_seen).unwrap();
    let events = Response::parse(&running_seen).events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");

    let mut waiting_seen = Vec::new();
    waiting.read_to_end(&mut waiting_seen).unwrap();
    let response = Response::parse(&waiting_seen);
    assert_eq!(
        response.status, 200,
        "B's stream had begun: {}",
        response.body
    );
    let events = response.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("shutting down"), "{error}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", server.log.lock().unwrap());
}

/// A device the build cannot open stops the server at start, with what to do (`serve` loads
/// through the same flags as generate: `--device cpu|cuda[:N]`).
#[test]
fn a_device_it_cannot_open_stops_the_server_at_start() {
    common::assert_fails(
        "serve",
        &["--port", "0", "--device", "gpu"],
        "expected cpu, cuda or cuda:N",
    );
    if !cfg!(feature = "cuda-full") {
        common::assert_fails(
            "serve",
            &["--port", "0", "--device", "cuda"],
            "--features cuda-full",
        );
    }
}
