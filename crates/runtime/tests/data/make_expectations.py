#!/usr/bin/env python3
"""Reference outputs for hybrid-runtime's tests, computed by the Python implementations the
runtime must agree with: HF `tokenizers` (encode/decode with the tiny byte-level BPE fixture)
and transformers' own chat-template renderer (`render_jinja_template`, the engine behind
`apply_chat_template`).

Output: crates/runtime/tests/data/expectations.json (committed; the Rust tests read it).

Run from the repository root (needs models/tokenizers/tiny-bpe-1k, made by
models/tools/train_tiny_tokenizer.py):

    /work/pyref/bin/python crates/runtime/tests/data/make_expectations.py
"""

import json
import os

from tokenizers import Tokenizer
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
TOK_DIR = os.path.join(ROOT, "models", "tokenizers", "tiny-bpe-1k")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expectations.json")

# Texts for encode/decode: plain KJV-like English (many merges), and multi-byte UTF-8 of
# 2, 3 and 4 bytes per character, which the byte-level BPE splits across tokens.
TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "Grüße aus Köln: naïve café, señor!",
    "日本語のテキスト and 中文",
    "crab 🦀 + rocket 🚀 = 🦀🚀",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
]

# A template written for this test (not any model's) that uses what real chat templates
# use: whitespace control, block tags on their own lines (so trim_blocks/lstrip_blocks
# matter), namespace(), loop variables, reverse slicing, Python string methods and
# bos/eos variables.
FEATURE_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages[::-1] %}
    {%- if ns.last_user == -1 and m.role == 'user' %}
        {%- set ns.last_user = messages|length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{% for message in messages %}
    {% if message.role == 'system' %}
[SYS] {{ message.content.strip() }}
    {% elif message.content.startswith('/') %}
[CMD:{{ loop.index }}] {{ message.content.lstrip('/').upper() }}
    {% else %}
[{{ message.role }}{{ '*' if loop.index0 == ns.last_user else '' }}] {{ message.content.split('|')[0].rstrip() }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[assistant]
{% endif %}"""

CONVERSATIONS = {
    "tiny_chatml_two_turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who made the earth? ünïcödé 🦀"},
    ],
    "tiny_chatml_multi": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
    "feature_template": [
        {"role": "system", "content": "  be brief  \n"},
        {"role": "user", "content": "first | ignored"},
        {"role": "user", "content": "/shout"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "last question | tail"},
        {"role": "assistant", "content": "answer"},
    ],
}


def main():
    tok = Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json"))
    with open(os.path.join(TOK_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
        tiny_cfg = json.load(f)

    encodings = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        encodings.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )

    def render(template, conversation, add_generation_prompt, **tokens):
        rendered, _ = render_jinja_template(
            conversations=[conversation],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **tokens,
        )
        return rendered[0]

    chats = []
    for name in ("tiny_chatml_two_turns", "tiny_chatml_multi"):
        for agp in (True, False):
            chats.append(
                {
                    "template": "tiny",
                    "messages": CONVERSATIONS[name],
                    "add_generation_prompt": agp,
                    "rendered": render(tiny_cfg["chat_template"], CONVERSATIONS[name], agp),
                }
            )
    for agp in (True, False):
        chats.append(
            {
                "template": "feature",
                "messages": CONVERSATIONS["feature_template"],
                "add_generation_prompt": agp,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "rendered": render(
                    FEATURE_TEMPLATE, CONVERSATIONS["feature_template"], agp, bos_token="<s>", eos_token="</s>"
                ),
            }
        )

    out = {
        "generated_by": "crates/runtime/tests/data/make_expectations.py",
        "tokenizer": "models/tokenizers/tiny-bpe-1k/tokenizer.json",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "encodings": encodings,
        "feature_template": FEATURE_TEMPLATE,
        "chats": chats,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
