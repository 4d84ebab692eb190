//! Chat templates rendered by the runtime, compared with transformers' own renderer
//! (tests/data/expectations.json), on the tiny tokenizer's real tokenizer_config.json and on
//! a template that exercises the Jinja features real templates rely on.

mod common;

use std::path::{Path, PathBuf};

use common::{expectations, tiny_tokenizer, tiny_tokenizer_dir, TINY_IM_END};
use hybrid_runtime::{ChatMessage, ChatTemplate, RuntimeError, TokenizerConfig};

fn messages(value: &serde_json::Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn tiny_tokenizer_config_renders_like_transformers() {
    let config = TokenizerConfig::load(tiny_tokenizer_dir()).unwrap();
    assert_eq!(config.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(config.bos_token, None);
    let template = ChatTemplate::from_config(&config).unwrap();
    let exp = expectations();
    let mut checked = 0;
    for case in exp["chats"].as_array().unwrap() {
        if case["template"] != "tiny" {
            continue;
        }
        let got = template
            .render(
                &messages(&case["messages"]),
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn rendered_prompt_tokenizes_to_chatml_and_eos_resolves() {
    let config = TokenizerConfig::load(tiny_tokenizer_dir()).unwrap();
    let tok = tiny_tokenizer();
    let prompt = ChatTemplate::from_config(&config)
        .unwrap()
        .render(&[ChatMessage::user("Hello")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, false).unwrap();
    assert_eq!(ids[0], 1022, "<|im_start|> is one special token");
    assert_eq!(ids.iter().filter(|&&id| id == TINY_IM_END).count(), 1);
    assert_eq!(config.eos_token_id(&tok), Some(TINY_IM_END));
}

#[test]
fn jinja_features_of_real_templates_render_like_transformers() {
    let exp = expectations();
    let source = exp["feature_template"].as_str().unwrap().to_owned();
    let template = ChatTemplate::new(
        source,
        PathBuf::from("feature.jinja"),
        Some("<s>".into()),
        Some("</s>".into()),
    )
    .unwrap();
    let mut checked = 0;
    for case in exp["chats"].as_array().unwrap() {
        if case["template"] != "feature" {
            continue;
        }
        let got = template
            .render(
                &messages(&case["messages"]),
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 2);
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn missing_template_says_chat_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    // No files at all, then a config without a template: same error, naming the directory.
    for config_text in [
        None,
        Some(r#"{"eos_token": "</s>", "chat_template": null}"#),
    ] {
        if let Some(text) = config_text {
            write(dir.path(), "tokenizer_config.json", text);
        }
        let config = TokenizerConfig::load(dir.path()).unwrap();
        let err = ChatTemplate::from_config(&config).unwrap_err();
        assert!(
            matches!(err, RuntimeError::ChatTemplateMissing { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("--chat"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}

#[test]
fn chat_template_jinja_file_wins_over_the_config_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": "from config", "bos_token": {"content": "<s>", "special": true}}"#,
    );
    write(
        dir.path(),
        "chat_template.jinja",
        "{{ bos_token }}from file: {{ messages[0].content }}",
    );
    let config = TokenizerConfig::load(dir.path()).unwrap();
    assert_eq!(
        config.bos_token.as_deref(),
        Some("<s>"),
        "AddedToken object form"
    );
    assert_eq!(
        config.chat_template_origin.as_deref(),
        Some(dir.path().join("chat_template.jinja").as_path())
    );
    let out = ChatTemplate::from_config(&config)
        .unwrap()
        .render(&[ChatMessage::user("hi")], false)
        .unwrap();
    assert_eq!(out, "<s>from file: hi");
}

#[test]
fn named_template_list_uses_default_and_undefined_tokens_render_empty() {
    let config = TokenizerConfig::from_json_str(
        r#"{"chat_template": [
              {"name": "tool_use", "template": "tools"},
              {"name": "default", "template": "[{{ bos_token }}]{% for m in messages %}{{ m.role }}{% endfor %}"}
           ], "bos_token": null}"#,
        Path::new("/m/tokenizer_config.json"),
    )
    .unwrap();
    assert_eq!(config.dir, PathBuf::from("/m"));
    let out = ChatTemplate::from_config(&config)
        .unwrap()
        .render(
            &[ChatMessage::system("s"), ChatMessage::assistant("a")],
            false,
        )
        .unwrap();
    // A null bos_token is undefined in the template (""), not the text "none".
    assert_eq!(out, "[]systemassistant");

    let err = TokenizerConfig::from_json_str(
        r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
        Path::new("tokenizer_config.json"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`chat_template`"), "{err}");
}

#[test]
fn template_errors_name_the_file() {
    let origin = PathBuf::from("/models/x/tokenizer_config.json");
    let err = ChatTemplate::new("{% for m in messages %}".into(), origin.clone(), None, None)
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ChatTemplate { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/models/x/tokenizer_config.json"),
        "{err}"
    );

    let raising = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok".into(),
        origin,
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        raising.render(&[ChatMessage::user("q")], true).unwrap(),
        "ok"
    );
    let err = raising
        .render(&[ChatMessage::system("s")], true)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Conversations must start with a user turn"),
        "{err}"
    );
}

#[test]
fn malformed_tokenizer_config_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer_config.json", "{ not json");
    let err = TokenizerConfig::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    write(dir.path(), "tokenizer_config.json", r#"{"eos_token": 5}"#);
    let err = TokenizerConfig::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("`eos_token`"), "{err}");
}

/// Issue 13 item 11: a template that loops without end, or that emits gigabytes, fails with a
/// message naming its file instead of spinning or exhausting memory.
#[test]
fn runaway_templates_are_stopped_with_a_clear_error() {
    let origin = PathBuf::from("/models/x/tokenizer_config.json");
    let huge = ChatTemplate::new(
        "{% for i in range(100000) %}{% for m in messages %}{{ m.content }}{% endfor %}{% endfor %}"
            .into(),
        origin.clone(),
        None,
        None,
    )
    .expect("compiles");
    let long = "x".repeat(4096);
    let err = huge
        .render(&[ChatMessage::user(long)], true)
        .expect_err("400 MB must be refused")
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("bytes"),
        "{err}"
    );

    let endless = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into(),
        origin.clone(),
        None,
        None,
    )
    .expect("compiles");
    let err = endless
        .render(&[ChatMessage::user("hi")], true)
        .expect_err("10^10 steps must be refused")
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("steps"),
        "{err}"
    );
}
