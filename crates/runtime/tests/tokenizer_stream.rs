//! The tokenizer wrapper and the token streamer on the real tiny byte-level BPE
//! tokenizer.json, checked against HF `tokenizers` (tests/data/expectations.json).

mod common;

use common::{expectations, tiny_tokenizer, tiny_tokenizer_dir, TINY_IM_END};
use hybrid_runtime::{RuntimeError, TokenStreamer, Tokenizer};

#[test]
fn encode_and_decode_match_hf_tokenizers() {
    let tok = tiny_tokenizer();
    let exp = expectations();
    assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.vocab_size(), 1024);
    for case in exp["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap()
        );
    }
    assert_eq!(tok.token_id("<|endoftext|>"), Some(1021));
    assert_eq!(tok.token_id("<|im_end|>"), Some(TINY_IM_END));
    assert_eq!(tok.token_id("no such token"), None);
}

#[test]
fn vocab_check_rejects_models_smaller_than_the_tokenizer() {
    let tok = tiny_tokenizer();
    tok.check_fits_model(1024).unwrap();
    tok.check_fits_model(151_936).unwrap();
    let err = tok.check_fits_model(1000).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TokenizerVocabTooLarge {
                tokenizer_vocab: 1024,
                model_vocab: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("1024") && msg.contains("1000"),
        "{msg}"
    );
}

/// Streams `ids` one at a time; returns each push's result.
fn stream(
    tok: &Tokenizer,
    ids: &[u32],
    skip_special: bool,
) -> (Vec<Option<String>>, Option<String>) {
    let mut s = TokenStreamer::new(tok, skip_special);
    let pieces = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    let rest = s.finish().unwrap();
    (pieces, rest)
}

#[test]
fn streaming_multibyte_text_emits_only_whole_characters() {
    let tok = tiny_tokenizer();
    for text in [
        "Grüße aus Köln: naïve café, señor!",
        "日本語のテキスト and 中文",
        "crab 🦀 + rocket 🚀 = 🦀🚀",
    ] {
        let ids = tok.encode(text, false).unwrap();
        let (pieces, rest) = stream(&tok, &ids, true);
        assert_eq!(
            rest, None,
            "{text:?}: nothing is left after a complete text"
        );
        let held = pieces.iter().filter(|p| p.is_none()).count();
        assert!(
            held > 0,
            "{text:?}: byte-level BPE splits these characters, so some tokens must be held back"
        );
        let mut joined = String::new();
        for piece in pieces.iter().flatten() {
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: piece {piece:?} is a broken character"
            );
            assert!(!piece.is_empty());
            joined.push_str(piece);
        }
        assert_eq!(joined, text);
    }
}

#[test]
fn each_emitted_piece_completes_a_character_as_soon_as_possible() {
    // "🦀" is four bytes; in this vocabulary no merge covers it, so it spans several tokens
    // and appears exactly when its last byte arrives.
    let tok = tiny_tokenizer();
    let ids = tok.encode("a🦀", false).unwrap();
    assert!(ids.len() >= 3, "{ids:?}");
    let (pieces, rest) = stream(&tok, &ids, true);
    assert_eq!(pieces[0].as_deref(), Some("a"));
    assert!(
        pieces[1..pieces.len() - 1].iter().all(Option::is_none),
        "{pieces:?}"
    );
    assert_eq!(pieces.last().unwrap().as_deref(), Some("🦀"));
    assert_eq!(rest, None);
}

#[test]
fn finish_flushes_an_incomplete_character_like_a_plain_decode() {
    let tok = tiny_tokenizer();
    let ids = tok.encode("x🦀", false).unwrap();
    let partial = &ids[..ids.len() - 1];
    let (pieces, rest) = stream(&tok, partial, true);
    assert_eq!(pieces[0].as_deref(), Some("x"));
    let plain = tok.decode(partial, true).unwrap();
    assert!(plain.ends_with('\u{FFFD}'), "{plain:?}");
    assert_eq!(
        format!("x{}", rest.expect("the partial bytes are flushed")),
        plain
    );
}

#[test]
fn special_tokens_are_hidden_or_shown_on_request() {
    let tok = tiny_tokenizer();
    let ids = tok
        .encode("<|im_start|>assistant\nSo be it.<|im_end|>", false)
        .unwrap();
    assert_eq!(ids[0], 1022);
    assert_eq!(*ids.last().unwrap(), TINY_IM_END);
    let (pieces, _) = stream(&tok, &ids, true);
    let hidden: String = pieces.iter().flatten().map(String::as_str).collect();
    assert_eq!(hidden, "assistant\nSo be it.");
    let (pieces, _) = stream(&tok, &ids, false);
    let shown: String = pieces.iter().flatten().map(String::as_str).collect();
    assert_eq!(shown, "<|im_start|>assistant\nSo be it.<|im_end|>");
}

#[test]
fn streamer_restarts_after_finish() {
    let tok = tiny_tokenizer();
    let mut s = TokenStreamer::new(&tok, true);
    for id in tok.encode("first", false).unwrap() {
        s.push(id).unwrap();
    }
    s.finish().unwrap();
    assert!(s.ids().is_empty());
    let mut out = String::new();
    for id in tok.encode(" second", false).unwrap() {
        out.push_str(&s.push(id).unwrap().unwrap_or_default());
    }
    assert_eq!(out, " second");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokenizer.json");
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    std::fs::write(
        &missing,
        r#"{"version": "1.0", "model": {"type": "Nonsense"}}"#,
    )
    .unwrap();
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, RuntimeError::TokenizerLoad { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    // The real file, for contrast.
    Tokenizer::from_file(tiny_tokenizer_dir().join("tokenizer.json")).unwrap();
}
