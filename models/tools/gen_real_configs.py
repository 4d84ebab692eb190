#!/usr/bin/env python3
"""Write HF config.json files with the real Qwen3-Next-80B-A3B / Qwen3.5-0.8B shapes.

They are for random-weight benchmarks and shape tests: RECONSTRUCTED from the published
model shapes, not downloaded.  Each one is built through transformers' own config class
and written with ``save_pretrained``, so every field name and default is what
transformers 5.24 writes.  See ``models/configs/README.md``.

Run from the repository root:

    /work/pyref/bin/python models/tools/gen_real_configs.py
"""

import os

import torch
import transformers
from transformers.models.qwen3_5 import Qwen3_5TextConfig
from transformers.models.qwen3_next import Qwen3NextConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "models", "configs")


def qwen3_next_80b_a3b():
    cfg = Qwen3NextConfig(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=5120,  # dense-MLP size; unused: every layer is sparse MoE
        num_hidden_layers=48,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 12,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=256,
        hidden_act="silu",
        max_position_embeddings=262144,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        attention_bias=False,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_experts=512,
        num_experts_per_tok=10,
        norm_topk_prob=True,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
        # Qwen2/Qwen3 tokenizer ids: <|endoftext|> 151643, <|im_end|> 151645
        bos_token_id=151643,
        eos_token_id=151645,
    )
    cfg.architectures = ["Qwen3NextForCausalLM"]
    cfg.dtype = torch.bfloat16
    return cfg


def qwen3_5_0_8b():
    cfg = Qwen3_5TextConfig(
        vocab_size=248320,
        hidden_size=1024,
        intermediate_size=3584,
        num_hidden_layers=24,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,  # the Qwen3_5TextConfig default, NOT hidden_size / num_attention_heads (= 128)
        hidden_act="silu",
        max_position_embeddings=262144,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        # mrope fields as in the published multimodal config; with text-only positions all
        # three position rows are equal, so this is plain partial RoPE (rotate_half layout).
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
        attention_bias=False,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_num_key_heads=16,
        linear_num_value_heads=16,
    )
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    cfg.dtype = torch.bfloat16
    return cfg


def main():
    for name, cfg in (("qwen3-next-80b-a3b", qwen3_next_80b_a3b()), ("qwen3.5-0.8b", qwen3_5_0_8b())):
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        cfg.save_pretrained(d)
        back = type(cfg).from_pretrained(d)
        assert back.to_dict() == cfg.to_dict(), name
        lt = back.layer_types
        print(
            f"{name}: {back.num_hidden_layers} layers ({lt.count('linear_attention')} GDN, "
            f"{lt.count('full_attention')} attention), head_dim {back.head_dim}, "
            f"rope {back.rope_parameters}"
        )
    print("transformers", transformers.__version__)


if __name__ == "__main__":
    main()
