#!/usr/bin/env python3
"""Derives the benchmark-only configs from the reconstructed real ones (stdlib only).

models/configs/qwen3-next-4l-e8/config.json: Qwen3-Next-80B-A3B's layer shapes (hidden 2048, GDN
16/32 heads x 128, attention 16/2 x 256, expert and shared-expert width 512, vocab 151936) cut to
4 layers ([lin, lin, lin, full]) and 8 experts, top-2 -- the "Qwen3-Next shape" the issues and
README benchmark (the same shapes as ../shared/peers/make_ckpts.py's q3next-4L-e8 checkpoint,
which llama.cpp runs side by side). Random weights of this config fit in a few GB.

    python3 models/tools/derive_bench_configs.py
"""
import json
import pathlib

configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
full = json.loads((configs / "qwen3-next-80b-a3b" / "config.json").read_text())
small = dict(full)
small["num_hidden_layers"] = 4
small["layer_types"] = full["layer_types"][:4]
small["num_experts"] = 8
small["num_experts_per_tok"] = 2
out = configs / "qwen3-next-4l-e8" / "config.json"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps(small, indent=2, sort_keys=True) + "\n")
print(f"wrote {out}")
