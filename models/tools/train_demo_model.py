#!/usr/bin/env python3
"""Train the demo model: a small Qwen3.5-style hybrid (Gated DeltaNet layers with a gated full
attention layer every 4th, dense MLP) on the King James Bible, with HF transformers' own
modeling code, so the result is a genuine HF checkpoint that writes readable KJV-like English.

Outputs (``models/demo/kjv-hybrid-3m/``)
---------------------------------------
config.json, generation_config.json (sampling defaults, no chat template), model.safetensors
(bfloat16), tokenizer.json and tokenizer_config.json (its own byte-level BPE, ``VOCAB_SIZE``
tokens), training_log.json (the loss curve, every ``LOG_EVERY`` steps, and the held-out
perplexity), heldout.txt (the held-out books' text, for perplexity runs), words.txt (every
distinct word of the training text; ``--words-only`` rewrites just this file).

Corpus
------
The KJV as Debian's ``bible-kjv`` prints it (``apt-get install -y bible-kjv-text``;
``bible -f Gen1:1-Rev22:21``: 31,102 verses, one per line, led by their reference, which is
dropped). The books in ``HELDOUT_BOOKS`` are kept out of training (tokenizer and model alike)
and make the held-out set.

Tokenizer: the same pipeline as ``train_tiny_tokenizer.py`` (Qwen's: NFC, Qwen pre-tokenizer
regex, byte-level BPE, specials appended last), trained on the training verses only.

Training: random windows of ``SEQ_LEN`` tokens from the training stream (verses joined by
"\\n"), AdamW, linear warm-up then cosine decay, gradient clipping, float32 on the CPU, seeded
(``SEED``; torch's CPU kernels are deterministic for a fixed thread count). transformers warns
that ``chunk_gated_delta_rule`` falls back to its PyTorch implementation: that is the reference
path, and the one to use (``fla`` must not be importable).

Run from the repository root (about an hour on 2 cores)::

    /work/peers/venv/bin/python models/tools/train_demo_model.py
    /work/peers/venv/bin/python models/tools/train_demo_model.py --probe   # time 5 steps
"""

import argparse
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny_tokenizer as tiny_tok  # noqa: E402  (the shared tokenizer pipeline)

from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "models", "demo", "kjv-hybrid-3m")

SEED = 1611
VOCAB_SIZE = 2048
HELDOUT_BOOKS = {"Ruth", "Jonah", "Jude"}
SEQ_LEN = 128
BATCH = 24
STEPS = 2400
WARMUP = 120
LR = 3e-3
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.1
LOG_EVERY = 50
EVAL_EVERY = 500
EVAL_WINDOWS = 48


def corpus():
    """(training verses, held-out verses), reference prefixes dropped."""
    try:
        raw = subprocess.run(
            ["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True
        ).stdout.decode("utf-8")
    except FileNotFoundError:
        sys.exit("error: `bible` not found; run `apt-get install -y bible-kjv-text`")
    train, heldout = [], []
    for line in raw.splitlines():
        ref, _, text = line.partition(" ")
        book = ref.rstrip("0123456789:")
        (heldout if book in HELDOUT_BOOKS else train).append(text.strip())
    assert len(train) + len(heldout) == 31102, (len(train), len(heldout))
    return train, heldout


def write_words(train):
    """words.txt: every distinct word of the training verses, lower-cased, one per line — what
    tests/demo_model.rs checks the default command's output against."""
    words = sorted({w.lower() for v in train for w in re.findall(r"[A-Za-z]+", v)})
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "words.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    print(f"words.txt: {len(words)} distinct words")


def config():
    return Qwen3_5TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=8,
        layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=48,
        linear_value_head_dim=48,
        linear_conv_kernel_dim=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=VOCAB_SIZE - 3,  # <|endoftext|>
        pad_token_id=VOCAB_SIZE - 3,
    )


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def heldout_nll(model, ids):
    """Mean NLL over disjoint SEQ_LEN windows of the held-out stream (at most EVAL_WINDOWS)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, min(len(ids) - 1, EVAL_WINDOWS * SEQ_LEN), SEQ_LEN):
            window = torch.tensor([ids[start : start + SEQ_LEN + 1]])
            if window.shape[1] < 2:
                break
            out = model(window[:, :-1], labels=None)
            logp = torch.log_softmax(out.logits[0].double(), dim=-1)
            target = window[0, 1:]
            total += -logp[torch.arange(len(target)), target].sum().item()
            count += len(target)
    model.train()
    return total / count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe", action="store_true", help="time 5 steps and exit")
    parser.add_argument("--words-only", action="store_true", help="only (re)write words.txt")
    args = parser.parse_args()
    if args.words_only:
        write_words(corpus()[0])
        return
    if importlib.util.find_spec("fla") is not None:
        sys.exit("flash-linear-attention is importable: uninstall it (the reference path is wanted)")
    random.seed(SEED)
    torch.manual_seed(SEED)

    train, heldout = corpus()
    tiny_tok.VOCAB_SIZE = VOCAB_SIZE  # the shared pipeline, at this vocabulary size
    tok = tiny_tok.build_and_train(train)
    train_ids = tok.encode("\n".join(train) + "\n").ids
    heldout_text = "\n".join(heldout) + "\n"
    heldout_ids = tok.encode(heldout_text).ids
    print(f"train: {len(train)} verses, {len(train_ids)} tokens; held out {sorted(HELDOUT_BOOKS)}: "
          f"{len(heldout)} verses, {len(heldout_ids)} tokens")

    model = Qwen3_5ForCausalLM(config())
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.95),
    )
    data = torch.tensor(train_ids)
    log = {"seed": SEED, "steps": STEPS, "batch": BATCH, "seq_len": SEQ_LEN, "parameters": params,
           "train_tokens": len(train_ids), "heldout_books": sorted(HELDOUT_BOOKS), "loss": [], "heldout": []}
    started = time.time()
    model.train()
    steps = 5 if args.probe else STEPS
    running = 0.0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, len(data) - SEQ_LEN - 1, (BATCH,))
        batch = torch.stack([data[s : s + SEQ_LEN + 1] for s in starts.tolist()])
        # transformers shifts the labels itself: SEQ_LEN + 1 tokens give SEQ_LEN predictions.
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % LOG_EVERY == 0 or args.probe:
            n = 1 if args.probe else LOG_EVERY
            log["loss"].append({"step": step + 1, "loss": running / n, "seconds": time.time() - started})
            print(f"step {step + 1}: loss {running / n:.4f} ({time.time() - started:.0f} s)", flush=True)
            running = 0.0
        if not args.probe and ((step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS):
            nll = heldout_nll(model, heldout_ids)
            log["heldout"].append({"step": step + 1, "nll": nll, "perplexity": math.exp(nll)})
            print(f"step {step + 1}: held-out perplexity {math.exp(nll):.3f}", flush=True)
    if args.probe:
        print(f"{(time.time() - started) / steps:.2f} s per step")
        return

    os.makedirs(OUT_DIR, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(OUT_DIR, safe_serialization=True)
    with open(os.path.join(OUT_DIR, "generation_config.json"), "w") as f:
        json.dump({"do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.9,
                   "repetition_penalty": 1.1, "eos_token_id": VOCAB_SIZE - 3,
                   "transformers_version": "5.24.0"}, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT_DIR, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=True))
        f.write("\n")
    tok_config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None,
                  "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
                  "errors": "replace", "model_max_length": 2048, "pad_token": "<|endoftext|>",
                  "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT_DIR, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(heldout_text)
    write_words(train)
    log["seconds"] = time.time() - started
    with open(os.path.join(OUT_DIR, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print("wrote", OUT_DIR)


if __name__ == "__main__":
    main()
