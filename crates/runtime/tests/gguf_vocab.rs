//! The tokenizer, chat template and stop tokens rebuilt from GGUF metadata, checked against the
//! Hugging Face files the GGUF was converted from: `models/fixtures/gguf/*.gguf` come from
//! llama.cpp's own `convert_hf_to_gguf.py` run on `models/fixtures/*` (see the README there).
//! Broken files are written with candle's GGUF writer from the same real vocabulary.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use hybrid_runtime::gguf_vocab::{
    KEY_ADD_BOS, KEY_BOS_ID, KEY_CHAT_TEMPLATE, KEY_EOS_ID, KEY_MERGES, KEY_MODEL, KEY_PRE,
    KEY_SAMPLING_TEMP, KEY_SAMPLING_TOP_K, KEY_SAMPLING_TOP_P, KEY_TOKENS, KEY_TOKEN_TYPE,
};
use hybrid_runtime::{
    gguf_file, ChatMessage, ChatTemplate, GenerationConfig, GgufVocab, RuntimeError, Tokenizer,
    TokenizerConfig,
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The HF fixture directory `name` (tokenizer.json, tokenizer_config.json, generation_config.json).
fn hf_dir(name: &str) -> PathBuf {
    repo_root().join("models/fixtures").join(name)
}

/// The converter's GGUF of fixture `name`.
fn converted(name: &str) -> PathBuf {
    let path = repo_root()
        .join("models/fixtures/gguf")
        .join(format!("{name}-f32.gguf"));
    assert!(
        path.is_file(),
        "{} is missing: it is made by llama.cpp's convert_hf_to_gguf.py (models/fixtures/gguf/README.md)",
        path.display()
    );
    path
}

/// The fixtures whose GGUF files hold the tiny tokenizer (all three share it).
const FIXTURES: [&str; 3] = ["qwen3.5-tiny", "qwen3.5-moe-tiny", "qwen3-next-tiny"];

/// English (KJV-like), digits, punctuation, newlines and whitespace runs, chat markup,
/// contractions, and non-ASCII text.
const TEXTS: &[&str] = &[
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And the evening and the morning were the first day.\n\nGenesis 1:1-31, verses 3 and 12345.",
    "Numbers: 0 7 42 2026 3.14159 -17 1,000,000",
    "Punctuation!? (yes) [no] {maybe} \"quoted\" 'single' a--b ... ;:,",
    "I'll say it's done, you've seen; they'RE here, he'D go.",
    "line one\nline two\r\n\tindented\n\n\n   spaced   out   ",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé 東京",
    "Grüße aus Köln: naïve café, señor! 日本語のテキスト and 中文",
    "crab 🦀 + rocket 🚀 = 🦀🚀",
    "<|endoftext|>",
    "",
];

#[test]
fn converter_gguf_tokenizes_like_tokenizer_json() {
    for name in FIXTURES {
        let gguf = converted(name);
        let vocab = GgufVocab::read(&gguf).unwrap();
        let hf = Tokenizer::from_file(hf_dir(name).join("tokenizer.json")).unwrap();
        let tok = &vocab.tokenizer;
        assert_eq!(tok.path(), gguf.as_path());
        assert_eq!(tok.vocab_size(), hf.vocab_size(), "{name}");
        assert_eq!(tok.vocab_size(), 1024);
        for &text in TEXTS {
            for add_special in [false, true] {
                let ids = tok.encode(text, add_special).unwrap();
                assert_eq!(
                    ids,
                    hf.encode(text, add_special).unwrap(),
                    "{name}: {text:?}"
                );
            }
            let ids = tok.encode(text, false).unwrap();
            // Round trip (the texts are already NFC, so normalization changes nothing).
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}: {text:?}");
            assert_eq!(
                tok.decode(&ids, true).unwrap(),
                hf.decode(&ids, true).unwrap(),
                "{name}: {text:?}"
            );
        }
        for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            assert_eq!(tok.token_id(special), hf.token_id(special), "{special}");
        }
        let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
        assert_eq!(chat.first(), Some(&1022));
        assert_eq!(chat.last(), Some(&common::TINY_IM_END));
        assert_eq!(tok.decode(&chat, true).unwrap(), "user\nHi");
        // Every id decodes to the same bytes as with tokenizer.json.
        let all: Vec<u32> = (0..1024).collect();
        assert_eq!(
            tok.decode(&all, false).unwrap(),
            hf.decode(&all, false).unwrap()
        );
    }
}

#[test]
fn quantized_files_carry_the_same_vocabulary() {
    let f32 = GgufVocab::read(&converted("qwen3.5-tiny")).unwrap();
    let dir = converted("qwen3.5-tiny").parent().unwrap().to_path_buf();
    for name in ["qwen3.5-tiny-q8_0.gguf", "qwen3.5-tiny-q4_k_m.gguf"] {
        let q = GgufVocab::read(&dir.join(name)).unwrap();
        for &text in TEXTS {
            assert_eq!(
                q.tokenizer.encode(text, false).unwrap(),
                f32.tokenizer.encode(text, false).unwrap(),
                "{name}: {text:?}"
            );
        }
        assert_eq!(q.eos_token_ids, f32.eos_token_ids);
        assert_eq!(
            q.tokenizer_config.chat_template,
            f32.tokenizer_config.chat_template
        );
    }
}

#[test]
fn converter_gguf_matches_the_hf_expectations() {
    let tok = GgufVocab::read(&converted("qwen3.5-tiny"))
        .unwrap()
        .tokenizer;
    let exp = common::expectations();
    for case in exp["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap()
        );
    }
}

#[test]
fn converter_gguf_stop_tokens_and_configs_match_the_hf_files() {
    for name in FIXTURES {
        let gguf = converted(name);
        let vocab = GgufVocab::read(&gguf).unwrap();
        let hf_gen =
            GenerationConfig::from_file_or_default(hf_dir(name).join("generation_config.json"))
                .unwrap();
        // The converter stores only tokenizer_config's eos_token (<|im_end|>, 1023); the stop
        // set adds <|endoftext|> by name, which gives generation_config.json's list.
        let raw = gguf_file_metadata(&gguf);
        assert_eq!(raw[KEY_EOS_ID].to_u32().unwrap(), 1023);
        assert_eq!(vocab.eos_token_ids, hf_gen.eos_token_ids, "{name}");
        assert_eq!(vocab.eos_token_ids, vec![1023, 1021]);
        assert_eq!(vocab.bos_token_id, hf_gen.bos_token_id);

        let g = &vocab.generation_config;
        assert_eq!(g.eos_token_ids, hf_gen.eos_token_ids);
        assert_eq!(g.bos_token_id, hf_gen.bos_token_id);
        assert_eq!(g.pad_token_id, hf_gen.pad_token_id);
        // generation_config.json says do_sample false with no sampling values, so the
        // converter wrote no general.sampling.* keys: both mean greedy.
        assert_eq!(g.temperature, None);
        assert!(g.sampling_params(0).is_greedy());
        assert!(hf_gen.sampling_params(0).is_greedy());

        let hf_cfg = TokenizerConfig::load(hf_dir(name)).unwrap();
        let cfg = &vocab.tokenizer_config;
        assert_eq!(cfg.chat_template.is_some(), hf_cfg.chat_template.is_some());
        assert_eq!(cfg.chat_template, hf_cfg.chat_template);
        assert_eq!(cfg.chat_template_origin.as_deref(), Some(gguf.as_path()));
        assert_eq!(cfg.gguf.as_deref(), Some(gguf.as_path()));
        assert_eq!(cfg.eos_token, hf_cfg.eos_token);
        assert_eq!(cfg.eos_token_id(&vocab.tokenizer), Some(1023));
        // tokenizer_config.json has bos_token null, but the converter takes config.json's
        // bos_token_id (1021), so the GGUF names <|endoftext|> as BOS.
        assert_eq!(hf_cfg.bos_token, None);
        assert_eq!(cfg.bos_token.as_deref(), Some("<|endoftext|>"));

        // The same prompt, token for token.
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Who created the heaven and the earth?"),
        ];
        let ours = ChatTemplate::from_config(cfg)
            .unwrap()
            .render(&messages, true)
            .unwrap();
        let theirs = ChatTemplate::from_config(&hf_cfg)
            .unwrap()
            .render(&messages, true)
            .unwrap();
        assert_eq!(ours, theirs);
        let hf = Tokenizer::from_file(hf_dir(name).join("tokenizer.json")).unwrap();
        assert_eq!(
            vocab.tokenizer.encode(&ours, false).unwrap(),
            hf.encode(&theirs, false).unwrap()
        );
    }
}

#[test]
fn vocabulary_built_from_tokenizer_json_matches_too() {
    // The same metadata the converter writes, built here from tokenizer.json: pins down that
    // the result does not depend on anything else in the converter's file.
    let dir = tempfile::tempdir().unwrap();
    let path = write_gguf(dir.path(), "own.gguf", &fixture_metadata());
    let vocab = GgufVocab::read(&path).unwrap();
    let hf = Tokenizer::from_file(hf_dir("qwen3.5-tiny").join("tokenizer.json")).unwrap();
    for &text in TEXTS {
        assert_eq!(
            vocab.tokenizer.encode(text, false).unwrap(),
            hf.encode(text, false).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(vocab.eos_token_ids, vec![1023, 1021]);
    assert_eq!(vocab.bos_token_id, None);
    assert_eq!(vocab.tokenizer_config.chat_template, None);
    let err = ChatTemplate::from_config(&vocab.tokenizer_config).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::ChatTemplateMissingGguf { path: p } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains(KEY_CHAT_TEMPLATE), "{err}");
}

#[test]
fn qwen35_pre_tokenizer_keeps_combining_marks_in_words() {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    // U+0307 (combining dot above) after q has no precomposed form, so NFC keeps it apart.
    let text = "aq\u{307}b c";
    let splits = |pre: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = fixture_metadata();
        meta.insert(KEY_PRE.into(), Value::String(pre.into()));
        let vocab = GgufVocab::read(&write_gguf(dir.path(), "v.gguf", &meta)).unwrap();
        let mut s = PreTokenizedString::from(text);
        vocab
            .tokenizer
            .inner()
            .get_pre_tokenizer()
            .unwrap()
            .pre_tokenize(&mut s)
            .unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, offsets, _)| &text[offsets.0..offsets.1])
            .collect::<Vec<_>>()
    };
    // qwen2: the mark is not a letter, so it opens the next word (as the optional
    // non-letter prefix) instead of continuing this one.
    assert_eq!(splits("qwen2"), ["aq", "\u{307}b", " c"]);
    assert_eq!(splits("qwen35"), ["aq\u{307}b", " c"]);
}

#[test]
fn add_bos_token_prepends_bos_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = gguf_file_metadata(&converted("qwen3.5-tiny"));
    meta.insert(KEY_ADD_BOS.into(), Value::Bool(true));
    let vocab = GgufVocab::read(&write_gguf(dir.path(), "bos.gguf", &meta)).unwrap();
    let plain = vocab.tokenizer.encode("In the beginning", false).unwrap();
    let with_bos = vocab.tokenizer.encode("In the beginning", true).unwrap();
    assert_eq!(with_bos[0], 1021);
    assert_eq!(&with_bos[1..], plain.as_slice());
    assert_eq!(
        vocab.tokenizer.decode(&with_bos, true).unwrap(),
        "In the beginning"
    );

    meta.remove(KEY_BOS_ID);
    let err = GgufVocab::read(&write_gguf(dir.path(), "nobos.gguf", &meta)).unwrap_err();
    assert!(matches!(err, RuntimeError::GgufInvalid { .. }), "{err:?}");
    assert!(err.to_string().contains(KEY_BOS_ID), "{err}");
}

#[test]
fn sampling_defaults_come_from_general_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = fixture_metadata();
    meta.insert(KEY_SAMPLING_TEMP.into(), Value::F32(0.6));
    meta.insert(KEY_SAMPLING_TOP_K.into(), Value::I32(20));
    meta.insert(KEY_SAMPLING_TOP_P.into(), Value::F32(0.95));
    let g = GgufVocab::read(&write_gguf(dir.path(), "s.gguf", &meta))
        .unwrap()
        .generation_config;
    let p = g.sampling_params(3);
    assert!(!p.is_greedy());
    assert_eq!(p.temperature, f64::from(0.6f32));
    assert_eq!(p.top_k, Some(20));
    assert_eq!(p.top_p, Some(f64::from(0.95f32)));

    meta.insert(KEY_SAMPLING_TOP_K.into(), Value::String("20".into()));
    let err = GgufVocab::read(&write_gguf(dir.path(), "bad.gguf", &meta)).unwrap_err();
    assert!(matches!(err, RuntimeError::GgufKeyType { .. }), "{err:?}");
    assert!(err.to_string().contains(KEY_SAMPLING_TOP_K), "{err}");
}

/// Each broken file: the error variant and the words its message must hold.
#[test]
fn bad_metadata_is_a_clear_error() {
    type Edit = fn(&mut HashMap<String, Value>);
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "llama model",
            |m| {
                m.insert(KEY_MODEL.into(), Value::String("llama".into()));
            },
            &[KEY_MODEL, "\"llama\"", "gpt2", "--tokenizer FILE"],
        ),
        (
            "unknown pre",
            |m| {
                m.insert(KEY_PRE.into(), Value::String("foo".into()));
            },
            &[KEY_PRE, "\"foo\"", "qwen2, qwen35", "--tokenizer FILE"],
        ),
        (
            "missing pre",
            |m| {
                m.remove(KEY_PRE);
            },
            &[KEY_PRE, "missing", "--tokenizer FILE"],
        ),
        (
            "missing model",
            |m| {
                m.remove(KEY_MODEL);
            },
            &[KEY_MODEL, "missing"],
        ),
        (
            "missing tokens",
            |m| {
                m.remove(KEY_TOKENS);
            },
            &[KEY_TOKENS, "missing"],
        ),
        (
            "missing token types",
            |m| {
                m.remove(KEY_TOKEN_TYPE);
            },
            &[KEY_TOKEN_TYPE, "missing"],
        ),
        (
            "missing merges",
            |m| {
                m.remove(KEY_MERGES);
            },
            &[KEY_MERGES, "missing"],
        ),
        (
            "token types shorter than tokens",
            |m| {
                let Value::Array(types) = m.get_mut(KEY_TOKEN_TYPE).unwrap() else {
                    unreachable!()
                };
                types.pop();
            },
            &[KEY_TOKEN_TYPE, "1023 entries", "1024"],
        ),
        (
            "token type out of range",
            |m| {
                let Value::Array(types) = m.get_mut(KEY_TOKEN_TYPE).unwrap() else {
                    unreachable!()
                };
                types[5] = Value::I32(9);
            },
            &[KEY_TOKEN_TYPE, "token 5", "type 9"],
        ),
        (
            "merge of unknown tokens",
            |m| {
                let Value::Array(merges) = m.get_mut(KEY_MERGES).unwrap() else {
                    unreachable!()
                };
                merges[3] = Value::String("zzzq xxxq".into());
            },
            &[KEY_MERGES, "merge 3", "\"zzzq\"", KEY_TOKENS],
        ),
        (
            "merge without a space",
            |m| {
                let Value::Array(merges) = m.get_mut(KEY_MERGES).unwrap() else {
                    unreachable!()
                };
                merges[0] = Value::String("th".into());
            },
            &[KEY_MERGES, "merge 0", "\"th\""],
        ),
        (
            "tokens not an array",
            |m| {
                m.insert(KEY_TOKENS.into(), Value::String("a b c".into()));
            },
            &[KEY_TOKENS, "an array of strings", "the string \"a b c\""],
        ),
        (
            "tokens that are not strings",
            |m| {
                m.insert(KEY_TOKENS.into(), Value::Array(vec![Value::U32(7); 1024]));
            },
            &["tokenizer.ggml.tokens[0]", "a string", "U32 7"],
        ),
        (
            "model of the wrong type",
            |m| {
                m.insert(KEY_MODEL.into(), Value::U32(2));
            },
            &[KEY_MODEL, "a string", "U32 2"],
        ),
        (
            "eos id past the vocabulary",
            |m| {
                m.insert(KEY_EOS_ID.into(), Value::U32(5000));
            },
            &[KEY_EOS_ID, "5000", "1024 tokens"],
        ),
        (
            "chat template of the wrong type",
            |m| {
                m.insert(KEY_CHAT_TEMPLATE.into(), Value::Bool(true));
            },
            &[KEY_CHAT_TEMPLATE, "a string"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let base = gguf_file_metadata(&converted("qwen3.5-tiny"));
    for (i, (what, edit, words)) in cases.into_iter().enumerate() {
        let mut meta = base.clone();
        edit(&mut meta);
        let path = write_gguf(dir.path(), &format!("case{i}.gguf"), &meta);
        let err = GgufVocab::read(&path).expect_err(what);
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                RuntimeError::GgufKeyMissing { .. }
                    | RuntimeError::GgufKeyType { .. }
                    | RuntimeError::GgufInvalid { .. }
                    | RuntimeError::GgufUnsupportedTokenizer { .. }
            ),
            "{what}: {err:?}"
        );
        assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
        for word in words {
            assert!(msg.contains(word), "{what}: {word:?} not in {msg}");
        }
    }
}

#[test]
fn files_that_are_not_gguf_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(converted("qwen3.5-tiny")).unwrap();

    let json = dir.path().join("tokenizer.gguf");
    std::fs::copy(hf_dir("qwen3.5-tiny").join("tokenizer.json"), &json).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    // Cut inside the token list: metadata is all this reader reads.
    std::fs::write(&truncated, &good[..2_000]).unwrap();
    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &good[..10]).unwrap();
    // A header that claims 2^40 metadata entries in a 24-byte file must be refused before
    // anything is allocated for them.
    let hostile = dir.path().join("hostile.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&hostile, bytes).unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();

    for path in [&json, &truncated, &header_only, &hostile, &empty] {
        let err = GgufVocab::read(path).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::GgufRead { path: p, .. } if p == path),
            "{}: {err:?}",
            path.display()
        );
        let msg = err.to_string();
        assert!(msg.contains("not a readable GGUF file"), "{msg}");
        // One line, even when RUST_BACKTRACE makes candle attach a backtrace.
        assert!(!msg.contains('\n'), "{msg}");
    }
    let err = GgufVocab::read(&json).unwrap_err().to_string();
    assert!(err.contains("magic"), "{err}");

    let err = GgufVocab::read(&dir.path().join("absent.gguf")).unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }), "{err:?}");
}

#[test]
fn gguf_file_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let touch = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    };

    // A file: by its extension only (resolve_model reports other files).
    let file = root.join("m.gguf");
    touch(&file);
    assert_eq!(gguf_file(&file).unwrap(), Some(file.clone()));
    let upper = root.join("upper/M.GGUF");
    touch(&upper);
    assert_eq!(gguf_file(&upper).unwrap(), Some(upper.clone()));
    let other = root.join("model.safetensors");
    touch(&other);
    assert_eq!(gguf_file(&other).unwrap(), None);

    // A directory with exactly one GGUF file and no config.json.
    let one = root.join("one");
    touch(&one.join("model-Q4_K_M.gguf"));
    touch(&one.join("README.md"));
    std::fs::create_dir_all(one.join("sub.gguf")).unwrap(); // a directory, not a file
    assert_eq!(
        gguf_file(&one).unwrap(),
        Some(one.join("model-Q4_K_M.gguf"))
    );

    // With config.json it is a transformers directory.
    let hf = root.join("hf");
    touch(&hf.join("config.json"));
    touch(&hf.join("model.gguf"));
    assert_eq!(gguf_file(&hf).unwrap(), None);

    // Several: the error lists them.
    let many = root.join("many");
    touch(&many.join("b-Q8_0.gguf"));
    touch(&many.join("a-F32.gguf"));
    let err = gguf_file(&many).unwrap_err();
    match &err {
        RuntimeError::AmbiguousGguf { dir, files } => {
            assert_eq!(dir, &many);
            assert_eq!(files, &[many.join("a-F32.gguf"), many.join("b-Q8_0.gguf")]);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("a-F32.gguf") && msg.contains("b-Q8_0.gguf") && msg.contains("pass the file"),
        "{msg}"
    );

    // None at all, or nothing there: not a GGUF model.
    let none = root.join("none");
    touch(&none.join("weights.bin"));
    assert_eq!(gguf_file(&none).unwrap(), None);
    assert_eq!(gguf_file(&root.join("absent")).unwrap(), None);
    assert_eq!(gguf_file(Path::new("Qwen/Qwen3.5-0.8B")).unwrap(), None);

    // The real converted fixtures directory holds several files.
    let fixtures = converted("qwen3.5-tiny").parent().unwrap().to_path_buf();
    assert!(matches!(
        gguf_file(&fixtures),
        Err(RuntimeError::AmbiguousGguf { .. })
    ));
}

/// The metadata of a GGUF file.
fn gguf_file_metadata(path: &Path) -> HashMap<String, Value> {
    let mut file = std::fs::File::open(path).unwrap();
    gguf_file::Content::read(&mut file).unwrap().metadata
}

/// Writes `meta` as a GGUF file without tensors.
fn write_gguf(dir: &Path, name: &str, meta: &HashMap<String, Value>) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let entries: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &entries, &[]).unwrap();
    path
}

/// Tokenizer metadata as the converter writes it, built from the fixture's tokenizer.json:
/// tokens by id (BPE vocabulary, then the added tokens), type 1 or 3 (control), merges as
/// "a b", `gpt2` / `qwen2`, EOS `<|im_end|>`.
fn fixture_metadata() -> HashMap<String, Value> {
    let text = std::fs::read_to_string(hf_dir("qwen3.5-tiny").join("tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut by_id: Vec<(u64, String, i32)> = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (id.as_u64().unwrap(), t.clone(), 1))
        .collect();
    for added in json["added_tokens"].as_array().unwrap() {
        let kind = if added["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        by_id.push((
            added["id"].as_u64().unwrap(),
            added["content"].as_str().unwrap().to_owned(),
            kind,
        ));
    }
    by_id.sort();
    assert!(by_id
        .iter()
        .enumerate()
        .all(|(i, (id, _, _))| *id == i as u64));
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let pair = m.as_array().unwrap();
            Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ))
        })
        .collect();
    HashMap::from([
        (KEY_MODEL.to_owned(), Value::String("gpt2".into())),
        (KEY_PRE.to_owned(), Value::String("qwen2".into())),
        (
            KEY_TOKENS.to_owned(),
            Value::Array(
                by_id
                    .iter()
                    .map(|(_, t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            KEY_TOKEN_TYPE.to_owned(),
            Value::Array(by_id.iter().map(|&(_, _, k)| Value::I32(k)).collect()),
        ),
        (KEY_MERGES.to_owned(), Value::Array(merges)),
        (KEY_EOS_ID.to_owned(), Value::U32(1023)),
    ])
}
