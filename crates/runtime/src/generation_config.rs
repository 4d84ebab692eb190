//! Hugging Face `generation_config.json`: stop tokens and the checkpoint's recommended
//! sampling defaults.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Result, RuntimeError};
use crate::sampling::{SamplingParams, DEFAULT_REPEAT_LAST_N};

/// The fields of `generation_config.json` the runtime uses. Every field is optional in the
/// file; absent (or `null`) fields are `None` / empty here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// `eos_token_id`: one id or a list (Qwen lists both `<|im_end|>` and `<|endoftext|>`).
    pub eos_token_ids: Vec<u32>,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// `do_sample`: `Some(false)` means greedy whatever the other fields say (HF semantics).
    pub do_sample: Option<bool>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_k` (`0`, HF's "disabled", is read as `None`).
    pub top_k: Option<usize>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f64>,
    /// `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Parses `path`; a missing file gives the defaults (many checkpoints ship none), any
    /// other read or parse problem is an error naming the file (and field).
    pub fn from_file_or_default(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json_str(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RuntimeError::io(path, e)),
        }
    }

    /// Parses the text of a `generation_config.json`; `origin` is named in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| RuntimeError::json(origin, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(RuntimeError::json(
                origin,
                "expected a JSON object at the top level",
            ));
        };
        let f = Fields {
            map: &fields,
            origin,
        };
        let config = Self {
            eos_token_ids: f.token_ids("eos_token_id")?,
            bos_token_id: f.token_id("bos_token_id")?,
            pad_token_id: f.token_id("pad_token_id")?,
            do_sample: f.boolean("do_sample")?,
            temperature: f.number("temperature")?,
            top_k: f.count("top_k")?.filter(|&k| k > 0),
            top_p: f.number("top_p")?,
            repetition_penalty: f.number("repetition_penalty")?,
            max_new_tokens: f.count("max_new_tokens")?,
        };
        // Check the sampling values here, where the file can be named: checked only after the
        // flags were applied, a bad value would be blamed on a flag nobody gave.
        let mut sampled = config.clone();
        sampled.do_sample = Some(true);
        sampled.sampling_params(0).validate().map_err(|e| match e {
            RuntimeError::InvalidSamplingParam {
                flag,
                value,
                expected,
            } => RuntimeError::json(
                origin,
                format!(
                    "field `{}` is {value}; it {expected}",
                    SamplingParams::field_of_flag(flag)
                ),
            ),
            other => other,
        })?;
        Ok(config)
    }

    /// The checkpoint's recommended sampling settings, as HF `generate` would apply them:
    /// `do_sample: false` (or no `do_sample` and no temperature) means greedy; missing
    /// fields take HF's defaults (temperature 1, no top-k/top-p, no penalty). The penalty
    /// window is [`DEFAULT_REPEAT_LAST_N`]. Command-line flags should override the result.
    pub fn sampling_params(&self, seed: u64) -> SamplingParams {
        let sample = self.do_sample.unwrap_or(false);
        SamplingParams {
            temperature: if sample {
                self.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_k: self.top_k.filter(|_| sample),
            top_p: self.top_p.filter(|_| sample),
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed,
        }
    }
}

/// Typed access to the top-level fields, with errors naming file and field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    origin: &'a Path,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, expected: &str, got: &Value) -> RuntimeError {
        RuntimeError::json(
            self.origin,
            format!("field `{name}` must be {expected}, found {got}"),
        )
    }

    fn token_id(&self, name: &str) -> Result<Option<u32>> {
        self.get(name)
            .map(|v| as_token_id(v).ok_or_else(|| self.wrong(name, "a token id (0..2^32)", v)))
            .transpose()
    }

    fn token_ids(&self, name: &str) -> Result<Vec<u32>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_token_id(v).ok_or_else(|| {
                        self.wrong(
                            name,
                            "a token id or a list of token ids",
                            &Value::Array(items.clone()),
                        )
                    })
                })
                .collect(),
            Some(v) => Ok(vec![as_token_id(v).ok_or_else(|| {
                self.wrong(name, "a token id or a list of token ids", v)
            })?]),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong(name, "true or false", v))
            })
            .transpose()
    }

    fn number(&self, name: &str) -> Result<Option<f64>> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong(name, "a number", v)))
            .transpose()
    }

    fn count(&self, name: &str) -> Result<Option<usize>> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong(name, "a non-negative integer", v))
            })
            .transpose()
    }
}

fn as_token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GenerationConfig> {
        GenerationConfig::from_json_str(text, Path::new("generation_config.json"))
    }

    /// Issue 13 item 7: a bad value in the file is blamed on the file's field, not on a flag.
    #[test]
    fn out_of_range_sampling_values_name_the_file_and_field() {
        for (json, field) in [
            (r#"{"temperature": -3}"#, "field `temperature` is -3"),
            (r#"{"top_p": 1.5}"#, "field `top_p` is 1.5"),
            (
                r#"{"repetition_penalty": 0}"#,
                "field `repetition_penalty` is 0",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains("generation_config.json"), "{err}");
            assert!(err.contains(field), "{err}");
            assert!(!err.contains("--"), "no flag was given: {err}");
        }
    }

    #[test]
    fn qwen_style_list_eos_and_sampling_defaults() {
        let cfg = parse(
            r#"{
              "bos_token_id": 151643,
              "do_sample": true,
              "eos_token_id": [151645, 151643],
              "pad_token_id": 151643,
              "temperature": 0.7,
              "top_k": 20,
              "top_p": 0.8,
              "transformers_version": "4.57.0"
            }"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![151645, 151643]);
        assert_eq!(cfg.bos_token_id, Some(151643));
        assert_eq!(cfg.pad_token_id, Some(151643));
        assert_eq!(cfg.do_sample, Some(true));
        let p = cfg.sampling_params(5);
        assert_eq!(
            p,
            SamplingParams {
                temperature: 0.7,
                top_k: Some(20),
                top_p: Some(0.8),
                repeat_penalty: 1.0,
                repeat_last_n: DEFAULT_REPEAT_LAST_N,
                seed: 5,
            }
        );
        p.validate().unwrap();
    }

    #[test]
    fn single_int_eos_nulls_and_greedy_without_do_sample() {
        let cfg = parse(
            r#"{"eos_token_id": 2, "bos_token_id": null, "temperature": 0.6, "top_k": 0,
                "repetition_penalty": 1.1, "max_new_tokens": 128}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![2]);
        assert_eq!(cfg.bos_token_id, None);
        assert_eq!(cfg.top_k, None, "HF's top_k 0 means disabled");
        assert_eq!(cfg.max_new_tokens, Some(128));
        // No do_sample: HF generate is greedy, the temperature is ignored; the penalty stays.
        let p = cfg.sampling_params(1);
        assert!(p.is_greedy());
        assert_eq!(p.repeat_penalty, 1.1);
    }

    #[test]
    fn empty_object_is_all_defaults() {
        assert_eq!(parse("{}").unwrap(), GenerationConfig::default());
        assert!(GenerationConfig::default().sampling_params(0).is_greedy());
    }

    #[test]
    fn bad_fields_are_named() {
        for (text, field) in [
            (r#"{"eos_token_id": "2"}"#, "eos_token_id"),
            (r#"{"eos_token_id": [1, -2]}"#, "eos_token_id"),
            (r#"{"eos_token_id": 1.5}"#, "eos_token_id"),
            (r#"{"bos_token_id": 4294967296}"#, "bos_token_id"),
            (r#"{"do_sample": "yes"}"#, "do_sample"),
            (r#"{"temperature": "hot"}"#, "temperature"),
            (r#"{"top_k": -1}"#, "top_k"),
        ] {
            let err = parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("`{field}`")) && msg.contains("generation_config.json"),
                "{text}: {msg}"
            );
        }
        let err = parse("[1, 2]").unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
        let err = parse("{\"eos_token_id\": ").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn missing_file_gives_defaults_but_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("generation_config.json");
        assert_eq!(
            GenerationConfig::from_file_or_default(&missing).unwrap(),
            GenerationConfig::default()
        );
        std::fs::write(&missing, r#"{"eos_token_id": [7]}"#).unwrap();
        assert_eq!(
            GenerationConfig::from_file_or_default(&missing)
                .unwrap()
                .eos_token_ids,
            vec![7]
        );
        let err = GenerationConfig::from_file_or_default(dir.path()).unwrap_err();
        assert!(matches!(err, RuntimeError::Io { .. }), "{err:?}");
    }
}
