//! Chat prompts: the model's Jinja chat template ([`ChatTemplate`]) rendered the way
//! transformers' `apply_chat_template` renders it, from [`TokenizerConfig`] (read from
//! `tokenizer_config.json`, or from a GGUF file by [`GgufVocab`](crate::GgufVocab)).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Result, RuntimeError};
use crate::tokenizer::Tokenizer;

/// The file name transformers (≥ 4.43) saves a chat template under, next to
/// `tokenizer_config.json`; when present it wins over the config's `chat_template` field.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The name of the tokenizer config file.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The parts of `tokenizer_config.json` (and `chat_template.jinja`) that chat prompting uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// The file the template came from (named in template errors).
    pub chat_template_origin: Option<PathBuf>,
    /// `bos_token` (string form; HF also stores it as an object with `content`).
    pub bos_token: Option<String>,
    /// `eos_token`, the token that ends an assistant turn in chat templates.
    pub eos_token: Option<String>,
    /// The directory the files were looked for in (named in "no template" errors).
    pub dir: PathBuf,
    /// The GGUF file this config was read from (by [`GgufVocab`](crate::GgufVocab)), `None`
    /// for `tokenizer_config.json`; "no template" errors then name the file instead of `dir`.
    pub gguf: Option<PathBuf>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` and `dir/chat_template.jinja`, each if present:
    /// a directory with neither gives an empty config (and `--chat` then fails with a clear
    /// error), a file that exists but does not parse is an error naming it.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let mut config = match read_optional(&config_path)? {
            Some(text) => Self::from_json_str(&text, &config_path)?,
            None => Self::default(),
        };
        config.dir = dir.to_path_buf();
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        if let Some(template) = read_optional(&jinja_path)? {
            config.chat_template = Some(template);
            config.chat_template_origin = Some(jinja_path);
        }
        Ok(config)
    }

    /// Parses the text of a `tokenizer_config.json`; `origin` is named in errors and becomes
    /// [`dir`](Self::dir)'s source (its parent directory).
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let value: Json = serde_json::from_str(text)
            .map_err(|e| RuntimeError::json(origin, format!("not valid JSON: {e}")))?;
        let Json::Object(fields) = value else {
            return Err(RuntimeError::json(
                origin,
                "expected a JSON object at the top level",
            ));
        };
        let chat_template = match fields.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(t)) => Some(t.clone()),
            // Older transformers saved several named templates; generation uses "default".
            Some(Json::Array(named)) => Some(
                named
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                    .ok_or_else(|| {
                        RuntimeError::json(
                            origin,
                            "field `chat_template` is a list without a {\"name\": \"default\", \
                             \"template\": ...} entry",
                        )
                    })?
                    .to_owned(),
            ),
            Some(other) => {
                return Err(RuntimeError::json(
                    origin,
                    format!("field `chat_template` must be a string, found {other}"),
                ))
            }
        };
        Ok(Self {
            chat_template_origin: chat_template.as_ref().map(|_| origin.to_path_buf()),
            chat_template,
            bos_token: special_token(&fields, "bos_token", origin)?,
            eos_token: special_token(&fields, "eos_token", origin)?,
            dir: origin.parent().map(Path::to_path_buf).unwrap_or_default(),
            gguf: None,
        })
    }

    /// The id of [`eos_token`](Self::eos_token) in `tokenizer`: the chat turn terminator to add
    /// to the stop set (e.g. `<|im_end|>`, which Qwen base configs do not list as EOS).
    pub fn eos_token_id(&self, tokenizer: &Tokenizer) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
    }
}

/// A special token field: a string, an AddedToken object `{"content": ...}`, or null.
pub(crate) fn special_token(
    fields: &serde_json::Map<String, Json>,
    name: &str,
    origin: &Path,
) -> Result<Option<String>> {
    match fields.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(RuntimeError::json(
                origin,
                format!("field `{name}` is an object without a string `content`"),
            )),
        },
        Some(other) => Err(RuntimeError::json(
            origin,
            format!(
                "field `{name}` must be a string, an object with `content`, or null, found {other}"
            ),
        )),
    }
}

/// The text of `path`, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(path, e)),
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, e.g. `tool`).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Template instructions one render may run. Real chat templates need a few thousand per
/// message; a runaway loop in a downloaded template stops here instead of spinning forever.
const TEMPLATE_FUEL: u64 = 50_000_000;

/// Largest rendered prompt: far beyond any model's context in text, small enough that a
/// template emitting gigabytes fails before it exhausts memory.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A compiled chat template.
///
/// Rendering matches transformers' `apply_chat_template`: Jinja with `trim_blocks` and
/// `lstrip_blocks`, Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, ...),
/// `raise_exception(msg)`, and the variables `messages`, `add_generation_prompt`,
/// `bos_token` and `eos_token` (the latter two only when the config defines them).
/// The rendered text already holds its special tokens: encode it with
/// `add_special_tokens = false`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// The template of `config`; [`RuntimeError::ChatTemplateMissing`] (or
    /// [`RuntimeError::ChatTemplateMissingGguf`] for a config read from a GGUF file) when it
    /// has none.
    pub fn from_config(config: &TokenizerConfig) -> Result<Self> {
        let Some(source) = &config.chat_template else {
            return Err(match &config.gguf {
                Some(path) => RuntimeError::ChatTemplateMissingGguf { path: path.clone() },
                None => RuntimeError::ChatTemplateMissing {
                    dir: config.dir.clone(),
                },
            });
        };
        let origin = config
            .chat_template_origin
            .clone()
            .unwrap_or_else(|| config.dir.join(TOKENIZER_CONFIG_FILE));
        Self::new(
            source.clone(),
            origin,
            config.bos_token.clone(),
            config.eos_token.clone(),
        )
    }

    /// Compiles `source`; `origin` is the file named in errors.
    pub fn new(
        source: String,
        origin: PathBuf,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        // transformers compiles templates with these two on; without them block tags leave
        // stray newlines and indentation in the prompt.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("the template raised: {message}"),
                ))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| template_error(&origin, &e))?;
        Ok(Self {
            env,
            origin,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`; `add_generation_prompt` appends the opening of an assistant
    /// turn so the model answers rather than continues the last message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut context: BTreeMap<&str, Value> = BTreeMap::new();
        context.insert("messages", Value::from_serialize(messages));
        context.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // Absent tokens stay undefined (render as ""), as in transformers, rather than
        // rendering Python's None as text.
        if let Some(bos) = &self.bos_token {
            context.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            context.insert("eos_token", Value::from(eos.as_str()));
        }
        let mut out = BoundedWriter::default();
        let result = self
            .env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render_captured_to(context, &mut out).map(|_| ()));
        match result {
            Ok(()) => String::from_utf8(out.bytes).map_err(|_| RuntimeError::ChatTemplate {
                origin: self.origin.clone(),
                message: "rendered text that is not UTF-8".into(),
            }),
            Err(_) if out.overflowed => Err(RuntimeError::ChatTemplate {
                origin: self.origin.clone(),
                message: format!(
                    "rendered more than {MAX_RENDERED_BYTES} bytes; the template loops or repeats \
                     without bound (fix the chat_template, or leave out --chat)"
                ),
            }),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(RuntimeError::ChatTemplate {
                origin: self.origin.clone(),
                message: format!(
                    "ran more than {TEMPLATE_FUEL} template steps without finishing (a runaway \
                     loop?); fix the chat_template, or leave out --chat"
                ),
            }),
            Err(e) => Err(template_error(&self.origin, &e)),
        }
    }
}

/// Collects rendered output and fails once it passes [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedWriter {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn template_error(origin: &Path, e: &minijinja::Error) -> RuntimeError {
    // minijinja's message already ends with the position, "(in chat_template:LINE)".
    RuntimeError::ChatTemplate {
        origin: origin.to_path_buf(),
        message: e.to_string(),
    }
}
