#!/usr/bin/env python3
"""Perplexity goldens for ``examples/perplexity``, computed by HF transformers.

What it produces
----------------
``models/goldens/perplexity/<name>.json`` for each model in ``MODELS``: the token ids of its text
under the model's own tokenizer.json, and for each (ctx, stride) plan the number of scored
tokens, the mean negative log-likelihood and the perplexity ``exp(mean NLL)``. Texts: the tiny
fixtures read ``models/goldens/perplexity/genesis-1.txt`` (Genesis 1:1-13, King James Version,
public domain); the demo model reads its held-out books (``models/demo/kjv-hybrid-3m/heldout.txt``,
written by ``train_demo_model.py``). Arguments name a subset of the models.

How
---
The windows are Hugging Face's sliding-window recipe (the perplexity guide in the transformers
docs), counted per token rather than per window: a window of up to ``ctx`` tokens starts every
``stride`` tokens until one reaches the end of the text; each window runs from a fresh state
(``model(input_ids)``, no cache) and scores the positions after the previous window's end that
it can predict (never its own first token), each from the logits one position earlier. The NLL
of a token is ``logsumexp(logits) - logits[token]`` in float64 over the model's float32 logits;
the mean is over every scored token. ``examples/perplexity/windows.rs`` implements the same plan.

The model is the fixture directory loaded with ``from_pretrained(dtype=torch.float32)`` (the
bf16 fixture's weights widened exactly), CPU, pure-PyTorch paths (``fla`` must not be
importable, as for ``gen_model_fixtures.py``).

How to run
----------
From the repository root, with torch, transformers (5.24) and tokenizers installed (e.g. the
venv ``../shared/peers/setup.sh`` builds)::

    PY=/work/peers/venv/bin/python
    $PY models/tools/gen_perplexity_golden.py
"""

import importlib.util
import json
import math
import os
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (name, model directory, text, plans): (ctx, stride) pairs — disjoint windows, and
# overlapping ones whose later windows have context.
MODELS = [
    ("qwen3.5-tiny", "models/fixtures/qwen3.5-tiny", "models/goldens/perplexity/genesis-1.txt",
     [(64, 64), (64, 32), (128, 48)]),
    ("qwen3-next-tiny", "models/fixtures/qwen3-next-tiny", "models/goldens/perplexity/genesis-1.txt",
     [(64, 64), (64, 32), (128, 48)]),
    # The demo model on its held-out books (Ruth, Jonah, Jude), never seen in training.
    ("kjv-hybrid-3m", "models/demo/kjv-hybrid-3m", "models/demo/kjv-hybrid-3m/heldout.txt",
     [(512, 512), (512, 256)]),
]


def plan(length, ctx, stride):
    """The windows as (start, end, targets), mirroring Window::plan in windows.rs."""
    windows = []
    scored_until = 1
    start = 0
    while True:
        end = min(start + ctx, length)
        first = max(scored_until, start + 1)
        if first < end:
            windows.append((start, end, list(range(first, end))))
            scored_until = end
        if end == length:
            return windows
        start += stride


def main():
    if importlib.util.find_spec("fla") is not None:
        sys.exit("flash-linear-attention is importable: transformers would use its kernels")
    torch.manual_seed(0)
    only = set(sys.argv[1:])
    for name, relative_dir, text_file, plans in MODELS:
        if only and name not in only:
            continue
        directory = os.path.join(ROOT, relative_dir)
        text = open(os.path.join(ROOT, text_file), encoding="utf-8").read()
        tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        model.eval()
        results = []
        for ctx, stride in plans:
            nll = []
            for start, end, targets in plan(len(ids), ctx, stride):
                with torch.no_grad():
                    logits = model(torch.tensor([ids[start:end]])).logits[0].double()
                log_probs = torch.log_softmax(logits, dim=-1)
                for t in targets:
                    nll.append(-log_probs[t - 1 - start, ids[t]].item())
            mean = sum(nll) / len(nll)
            results.append(
                {
                    "ctx": ctx,
                    "stride": stride,
                    "scored": len(nll),
                    "mean_nll": mean,
                    "perplexity": math.exp(mean),
                }
            )
            print(f"{name} ctx {ctx} stride {stride}: {len(nll)} tokens, ppl {math.exp(mean):.6f}")
        golden = {
            "generator": "models/tools/gen_perplexity_golden.py",
            "model": relative_dir,
            "text": text_file,
            "tokens": ids,
            "plans": results,
        }
        out = os.path.join(ROOT, "models", "goldens", "perplexity", f"{name}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
