#!/usr/bin/env python3
"""Train the tiny Qwen-style byte-level BPE tokenizer used by the model test fixtures.

Output: ``models/tokenizers/tiny-bpe-1k/{tokenizer.json,tokenizer_config.json}``.

Corpus
------
The King James Version of the Bible (public domain), as shipped by the Debian package
``bible-kjv-text`` (``apt-get install -y bible-kjv-text``; it also pulls in the
``bible-kjv`` program that decodes the compressed ``/usr/lib/bible.data``).  The script
runs ``bible Gen1:1-Rev22:21``, drops the chapter headings and verse numbers and re-joins
each verse (the tool wraps long verses) onto one line, giving 31,102 verse lines (~4.1 MB).

Tokenizer
---------
The same pipeline as Qwen2/Qwen3/Qwen3.5 (``transformers.models.qwen2.tokenization_qwen2``):

  * normalizer   NFC
  * pre-tok      Split(Qwen regex, behavior=isolated) then ByteLevel(add_prefix_space=False,
                 use_regex=False)
  * model        BPE, no unk token, no continuing-subword prefix, no byte fallback
  * decoder      ByteLevel
  * post-proc    ByteLevel (offset trimming only; adds no tokens)

The BPE model is trained to 1021 tokens (the 256 byte-level symbols + 765 merges); the three
special tokens are then appended as added tokens, so they get the LAST ids, like in the real
Qwen vocabularies:  1021 ``<|endoftext|>``, 1022 ``<|im_start|>``, 1023 ``<|im_end|>``.
Total vocabulary: 1024.

Determinism: the corpus is fixed and BPE training breaks count ties by pair order, so a
rerun produces a byte-identical tokenizer.json (the script trains twice and checks).

Run from the repository root:

    /work/pyref/bin/python models/tools/train_tiny_tokenizer.py
"""

import hashlib
import json
import os
import re
import subprocess
import sys

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # keep CPU use modest
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "models", "tokenizers", "tiny-bpe-1k")

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Copied verbatim from transformers/models/qwen2/tokenization_qwen2.py
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen-style ChatML template (Qwen2.5/Qwen3 without tools, reasoning blocks or a default
# system prompt): every message is "<|im_start|>{role}\n{content}<|im_end|>\n", and
# add_generation_prompt appends "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def kjv_verses():
    """The KJV text, one verse per line, via the `bible` program of Debian's bible-kjv."""
    try:
        raw = subprocess.run(
            ["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True, env={**os.environ, "COLUMNS": "80"}
        ).stdout.decode("utf-8")
    except FileNotFoundError:
        sys.exit("error: `bible` not found; run `apt-get install -y bible-kjv-text` (pulls in bible-kjv)")
    verses = []
    verse_start = re.compile(r"^\s+(\d+) (.*)$")
    for line in raw.splitlines():
        if not line.strip():
            continue
        m = verse_start.match(line)
        if m:
            verses.append(m.group(2).strip())
        elif line[:1] != " " and verses and not re.match(r"^[1-3]? ?[A-Z][A-Za-z ]+ \d+$", line):
            # wrapped continuation of the previous verse (chapter headings are skipped)
            verses[-1] += " " + line.strip()
    return verses


def build_and_train(verses):
    tok = Tokenizer(
        models.BPE(
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Verses joined by "\n" so the model also learns newline handling.
    tok.train_from_iterator((v + "\n" for v in verses), trainer=trainer, length=len(verses))
    assert tok.get_vocab_size(with_added_tokens=False) == VOCAB_SIZE - len(SPECIAL_TOKENS)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    # The Python ByteLevel decoder takes no options; write the flags Qwen's tokenizer.json
    # carries (the decoder ignores them), then re-load so the object matches the file.
    d = json.loads(tok.to_str())
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return Tokenizer.from_str(json.dumps(d))


def main():
    verses = kjv_verses()
    print(f"corpus: {len(verses)} verses, {sum(len(v) + 1 for v in verses)} chars")
    assert len(verses) == 31102, len(verses)

    tok = build_and_train(verses)
    js = tok.to_str(pretty=True)
    js2 = build_and_train(verses).to_str(pretty=True)
    assert js == js2, "BPE training is not deterministic"

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert ids == {"<|endoftext|>": 1021, "<|im_start|>": 1022, "<|im_end|>": 1023}, ids

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(js)
        f.write("\n")

    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 512,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")

    # Smoke checks.
    sample = "In the beginning God created the heaven and the earth."
    enc = tok.encode(sample)
    assert tok.decode(enc.ids) == sample
    chat = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    enc_chat = tok.encode(chat)
    assert enc_chat.ids[0] == 1022 and 1023 in enc_chat.ids
    assert tok.decode(enc_chat.ids, skip_special_tokens=False) == chat
    print(f"{sample!r} -> {len(enc.ids)} tokens {enc.ids}")
    print("tokenizer.json sha256:", hashlib.sha256(js.encode()).hexdigest())
    print("wrote", OUT_DIR)


if __name__ == "__main__":
    main()
