//! The tokenizer metadata llama.cpp's `convert_hf_to_gguf.py` writes for a Hugging Face model
//! directory: the inverse of [`crate::gguf_vocab`], for writing GGUF files.
//!
//! From `tokenizer.json` (a byte-level BPE), `tokenizer_config.json`, `config.json` and
//! `generation_config.json`, as the converter's `get_vocab_base` and gguf-py's `SpecialVocab`
//! read them (llama.cpp upstream 0c1e57098):
//! * `tokenizer.ggml.tokens` / `.token_type` for every id below the model's `vocab_size`: added
//!   tokens that are special, or look special (`<|…|>`), are control tokens (3), other added
//!   tokens user-defined (4), ids the tokenizer lacks `[PADn]` placeholders (5), the rest
//!   normal (1); `.merges` as `"left right"`;
//! * `tokenizer.ggml.pre`: the name llama.cpp knows the split regex by (`qwen2` or `qwen35`);
//!   the converter recognises a pre-tokenizer by hashing its output, which for the same regex
//!   gives the same name;
//! * BOS/EOS/padding ids: the token named in `tokenizer_config.json`, else `config.json`'s id;
//!   `add_bos_token` / `add_eos_token`; the chat template when there is one;
//! * `general.sampling.*` from `generation_config.json`'s sampling fields.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::chat::{read_optional, special_token, TOKENIZER_CONFIG_FILE};
use crate::error::{Result, RuntimeError};
use crate::gguf_vocab::{
    TokenType, KEY_ADD_BOS, KEY_ADD_EOS, KEY_BOS_ID, KEY_CHAT_TEMPLATE, KEY_EOS_ID, KEY_MERGES,
    KEY_MODEL, KEY_PAD_ID, KEY_PRE, KEY_SAMPLING_PENALTY_REPEAT, KEY_SAMPLING_TEMP,
    KEY_SAMPLING_TOP_K, KEY_SAMPLING_TOP_P, KEY_TOKENS, KEY_TOKEN_TYPE, PRE_TOKENIZER_REGEXES,
    SUPPORTED_PRE,
};

/// The `tokenizer.*` and `general.sampling.*` metadata of the model in `dir`, for a model of
/// `vocab_size` token ids.
pub fn vocab_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = read_json(&tokenizer_path)?.ok_or_else(|| RuntimeError::GgufExport {
        path: tokenizer_path.clone(),
        problem:
            "the file is missing; a GGUF carries the tokenizer, so the model directory needs one"
                .into(),
    })?;
    let bad = |problem: String| RuntimeError::GgufExport {
        path: tokenizer_path.clone(),
        problem,
    };
    let model = &tokenizer["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "model.type is {}; only byte-level BPE tokenizers (llama.cpp's `gpt2`) can be written",
            model["type"]
        )));
    }

    // id → (text, type)
    let mut tokens: Vec<Option<(String, TokenType)>> = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, kind: TokenType| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get_mut(i))
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id}, outside the model's vocab_size {vocab_size}"
                ))
            })?;
        *slot = Some((text.to_string(), kind));
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object of token → id".into()))?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("model.vocab[{text:?}] is not an id")))?;
        place(id, text, TokenType::Normal)?;
    }
    for added in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad(format!("added token {added} lacks `id` or `content`")));
        };
        let special = added["special"].as_bool().unwrap_or(false)
            || (text.starts_with("<|") && text.ends_with("|>"));
        let kind = if special {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        place(id, text, kind)?;
    }
    let (texts, types): (Vec<Value>, Vec<Value>) = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| match token {
            Some((text, kind)) => (Value::String(text.clone()), Value::I32(kind.code())),
            None => (
                Value::String(format!("[PAD{id}]")),
                Value::I32(TokenType::Unused.code()),
            ),
        })
        .unzip();

    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not an array".into()))?
        .iter()
        .map(|merge| match merge {
            Json::String(pair) => Ok(Value::String(pair.clone())),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(left), Json::String(right)] => {
                    Ok(Value::String(format!("{left} {right}")))
                }
                _ => Err(bad(format!("merge {merge} is not a pair of strings"))),
            },
            other => Err(bad(format!("merge {other} is not a string or a pair"))),
        })
        .collect::<Result<Vec<_>>>()?;

    let pre = pre_tokenizer_name(&tokenizer["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "the pre-tokenizer ({}) is not one llama.cpp names for these models ({SUPPORTED_PRE}); \
             a GGUF written with another name would split text differently there",
            tokenizer["pre_tokenizer"]
        ))
    })?;

    let mut meta = vec![
        (KEY_MODEL.to_string(), Value::String("gpt2".into())),
        (KEY_PRE.to_string(), Value::String(pre.into())),
        (KEY_TOKENS.to_string(), Value::Array(texts)),
        (KEY_TOKEN_TYPE.to_string(), Value::Array(types)),
        (KEY_MERGES.to_string(), Value::Array(merges)),
    ];

    let tokenizer_config_path = dir.join(TOKENIZER_CONFIG_FILE);
    let tokenizer_config = read_json(&tokenizer_config_path)?.unwrap_or(Json::Null);
    let fields = tokenizer_config.as_object().cloned().unwrap_or_default();
    let config = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);
    let config = config.get("text_config").unwrap_or(&config);
    let id_of = |text: &str| -> Option<u32> {
        tokens
            .iter()
            .position(|t| t.as_ref().is_some_and(|(t, _)| t == text))
            .and_then(|i| u32::try_from(i).ok())
    };
    for (key, name) in [
        (KEY_EOS_ID, "eos"),
        (KEY_PAD_ID, "pad"),
        (KEY_BOS_ID, "bos"),
    ] {
        let named = special_token(&fields, &format!("{name}_token"), &tokenizer_config_path)?;
        let id = named.as_deref().and_then(id_of).or_else(|| {
            config[format!("{name}_token_id")]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
        });
        if let Some(id) = id {
            meta.push((key.to_string(), Value::U32(id)));
        }
    }
    for (key, field) in [
        (KEY_ADD_BOS, "add_bos_token"),
        (KEY_ADD_EOS, "add_eos_token"),
    ] {
        let add = tokenizer_config[field].as_bool().unwrap_or(false);
        meta.push((key.to_string(), Value::Bool(add)));
    }
    if let Some(template) = tokenizer_config["chat_template"].as_str() {
        meta.push((
            KEY_CHAT_TEMPLATE.to_string(),
            Value::String(template.into()),
        ));
    }

    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    if let Some(k) = generation["top_k"].as_i64() {
        let k = i32::try_from(k).unwrap_or(i32::MAX);
        meta.push((KEY_SAMPLING_TOP_K.to_string(), Value::I32(k)));
    }
    for (key, field) in [
        (KEY_SAMPLING_TOP_P, "top_p"),
        (KEY_SAMPLING_TEMP, "temperature"),
        (KEY_SAMPLING_PENALTY_REPEAT, "repetition_penalty"),
    ] {
        if let Some(v) = generation[field].as_f64() {
            meta.push((key.to_string(), Value::F32(v as f32)));
        }
    }
    Ok(meta)
}

/// The llama.cpp name of a byte-level BPE pre-tokenizer: the `Split` regex inside
/// `pre_tokenizer` (alone or in a `Sequence`) compared with the regexes [`crate::gguf_vocab`]
/// builds from each name.
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    let parts: Vec<&Json> = match pre["type"].as_str()? {
        "Sequence" => pre["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let regex = parts
        .iter()
        .find(|p| p["type"] == "Split")
        .and_then(|p| p["pattern"]["Regex"].as_str())?;
    let byte_level = parts.iter().any(|p| p["type"] == "ByteLevel");
    if !byte_level {
        return None;
    }
    PRE_TOKENIZER_REGEXES
        .iter()
        .find(|(_, r)| *r == regex)
        .map(|&(name, _)| name)
}

/// `path` parsed as JSON; `None` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<Json>> {
    read_optional(path)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| RuntimeError::json(path, format!("not valid JSON: {e}")))
        })
        .transpose()
}
