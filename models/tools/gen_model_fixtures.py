#!/usr/bin/env python3
"""Generate tiny random Qwen3-Next / Qwen3.5 checkpoints and their HF golden outputs.

What it produces
----------------
For every fixture in ``FIXTURES``:

  * ``models/fixtures/<name>/``: a self-contained HF model directory written by
    ``save_pretrained`` (config.json, generation_config.json, safetensors weights, and a copy
    of ``models/tokenizers/tiny-bpe-1k/{tokenizer.json,tokenizer_config.json}``);
  * ``models/goldens/models/<name>.safetensors``: what HF transformers computes with that
    checkpoint (float32, CPU, pure-PyTorch paths): prompt ids, logits of a full forward,
    greedy continuations through ``generate`` (cached decode) and the per-step logits.

See ``models/fixtures/README.md`` and ``models/goldens/models/README.md`` for the file list,
tensor names, shapes and dtypes.

How the weights are made
------------------------
The model is built from its HF config class, then EVERY parameter is overwritten from a
per-fixture ``torch.Generator`` (``init_params``): input projections ~ N(0, std 1/sqrt(fan_in)),
projections that write the residual stream (o_proj, out_proj, down_proj, experts.down_proj)
std 2/sqrt(fan_in), embeddings std 1 (0.5 when tied) and lm_head std 0.5 so logits spread
over several units (std ~4), router weights std 2/sqrt(hidden) (decisive routing),
zero-centred ``(1 + w)`` RMSNorm weights ~ N(0, 0.1), gated GDN norm weights ~ 1 + N(0, 0.1),
conv1d weights ~ N(0, 0.5), ``A_log`` uniform in [log 0.02, log 2] and ``dt_bias`` ~
N(-0.5, 0.5) so that decays differ per head.  No weight keeps its HF init value, so a wrong
convention cannot pass by accident.

For ``qwen3.5-tiny`` the weights are rounded to bfloat16 FIRST and the checkpoint is saved
in bfloat16; the goldens come from the model re-loaded with ``dtype=torch.float32``, i.e.
float32 math on exactly the bf16 values in the file.  For every fixture the goldens are
computed from the model RE-LOADED from the fixture directory with ``from_pretrained``
(after checking it bit-for-bit against the generated weights), so they describe the files.

Checks it runs (and prints)
---------------------------
  * cached decode (``generate``) vs a full no-cache forward over prompt + generated tokens;
  * eager vs sdpa attention, and the eager experts loop vs ``batched_mm`` experts;
  * robustness (asserted, see ``robust_enough``): the smallest top-1 / top-2 logit gap
    along each greedy path and the smallest top-k / top-(k+1) router-logit margin of the MoE
    layers over every token the goldens touch must exceed ``MIN_GAP`` (1e-3), and each
    greedy path must have >= ``MIN_DISTINCT`` distinct tokens.  The seeds in ``FIXTURES``
    were picked with ``--find-seeds NAME START COUNT``, which prints these numbers per seed.

``models/tools/ref_forward.py`` re-implements the three models independently in float64
and checks these goldens.

The fast kernels (``flash-linear-attention`` / ``fla``, ``causal-conv1d``, ``kernels``)
must NOT be installed: transformers would dispatch to them.  The script refuses to run if
they are importable.

How to run
----------
From the repository root (needs ``models/tokenizers/tiny-bpe-1k``, see
``models/tools/train_tiny_tokenizer.py``)::

    /work/pyref/bin/python models/tools/gen_model_fixtures.py            # all fixtures
    /work/pyref/bin/python models/tools/gen_model_fixtures.py qwen3.5-tiny   # just one
    /work/pyref/bin/python models/tools/gen_model_fixtures.py --find-seeds qwen3.5-tiny 2000 20

Deterministic: fixed seeds, CPU, one thread; a rerun with the same torch / transformers
versions writes byte-identical files (checked: the goldens are written with a sorted header by
this script, and save_pretrained's weight files are byte-stable).
"""

import importlib.util
import json
import os
import shutil
import struct
import sys

for _pkg in ("fla", "causal_conv1d", "kernels"):
    if importlib.util.find_spec(_pkg) is not None:
        sys.exit(f"error: package '{_pkg}' is importable; uninstall it so HF uses its torch reference path")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np
import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import GenerationConfig
from transformers.models.qwen3_5 import Qwen3_5ForCausalLM, Qwen3_5TextConfig
from transformers.models.qwen3_5_moe import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig
from transformers.models.qwen3_next import Qwen3NextConfig, Qwen3NextForCausalLM

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_DIR = os.path.join(ROOT, "models", "tokenizers", "tiny-bpe-1k")
FIX_DIR = os.path.join(ROOT, "models", "fixtures")
GOLD_DIR = os.path.join(ROOT, "models", "goldens", "models")
GENERATOR = "models/tools/gen_model_fixtures.py"

# Special tokens of the tiny tokenizer (appended last, like in Qwen vocabularies).
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 1021, 1022, 1023
VOCAB = 1024
NEW_TOKENS = 16
MIN_DISTINCT = 8  # a greedy path must not just repeat a token: >= 8 distinct ids out of 16
MIN_GAP = 1e-3  # required top-1/top-2 logit gap on the greedy paths, and top-k router margin (MoE)

SHORT_TEXT = "And God said, Let there be"
# Psalm 23, King James Version (public domain); 200 tokens with tiny-bpe-1k, so the
# prefill crosses the 64-token chunk boundaries of HF's chunked gated delta rule 3 times.
LONG_TEXT = (
    "The LORD is my shepherd; I shall not want.\n"
    "He maketh me to lie down in green pastures: he leadeth me beside the still waters.\n"
    "He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake.\n"
    "Yea, though I walk through the valley of the shadow of death, I will fear no evil: "
    "for thou art with me; thy rod and thy staff they comfort me.\n"
    "Thou preparest a table before me in the presence of mine enemies: thou anointest my "
    "head with oil; my cup runneth over.\n"
    "Surely goodness and mercy shall follow me all the days of my life: and I will dwell "
    "in the house of the LORD for ever.\n"
)

# Shared tiny shapes.
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    attention_bias=False,
    # Qwen3-Next-80B-A3B and Qwen3.5 both use theta 1e7 with a quarter of head_dim rotated.
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
    linear_conv_kernel_dim=4,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    bos_token_id=ENDOFTEXT_ID,
    eos_token_id=IM_END_ID,
)

FIXTURES = [
    dict(
        name="qwen3-next-tiny",
        model_cls=Qwen3NextForCausalLM,
        config_cls=Qwen3NextConfig,
        config=dict(
            COMMON,
            intermediate_size=128,  # unused: every layer is sparse MoE (decoder_sparse_step 1, mlp_only_layers [])
            linear_key_head_dim=16,
            linear_value_head_dim=24,  # dk != dv: the state is [dk, dv], not square
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            tie_word_embeddings=False,
        ),
        dtype=torch.float32,
        shards=2,
        seed=1001,
    ),
    dict(
        name="qwen3.5-tiny",
        model_cls=Qwen3_5ForCausalLM,
        config_cls=Qwen3_5TextConfig,
        config=dict(
            COMMON,
            intermediate_size=128,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            tie_word_embeddings=True,
        ),
        dtype=torch.bfloat16,
        shards=1,
        seed=2003,
    ),
    dict(
        name="qwen3.5-moe-tiny",
        model_cls=Qwen3_5MoeForCausalLM,
        config_cls=Qwen3_5MoeTextConfig,
        config=dict(
            COMMON,
            linear_key_head_dim=16,
            linear_value_head_dim=32,  # dk != dv
            num_experts=8,
            num_experts_per_tok=2,  # Qwen3.5-MoE always renormalises the top-k (no norm_topk_prob field)
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            tie_word_embeddings=False,
        ),
        dtype=torch.float32,
        shards=1,
        seed=3008,
    ),
]


# ======================================================================================
# Deterministic safetensors writer (sorted header, tensors in name order)
# ======================================================================================
_ST_DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def save_safetensors_deterministic(tensors, path, metadata):
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        st_dtype, np_dtype = _ST_DTYPES[t.dtype]
        data = np.ascontiguousarray(t.numpy().astype(np_dtype)).tobytes(order="C")
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for data in blobs:
            f.write(data)
    # read back
    with safe_open(path, "pt") as f:
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t.detach().cpu()), name


# ======================================================================================
# Weights
# ======================================================================================
def init_params(model, seed):
    """Overwrite every parameter deterministically (see module docstring for the scheme)."""
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    tied = model.config.tie_word_embeddings

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head appears once (as embed_tokens)
            shape = tuple(p.shape)
            if name.endswith("embed_tokens.weight"):
                v = normal(shape, 0.5 if tied else 1.0)
            elif name == "lm_head.weight":
                v = normal(shape, 0.5)
            elif name.endswith("linear_attn.norm.weight"):  # Qwen3NextRMSNormGated: plain w, init ones
                v = normal(shape, 0.1, 1.0)
            elif name.endswith("norm.weight"):  # zero-centred (1 + w) RMSNorms, init zeros
                v = normal(shape, 0.1)
            elif name.endswith("A_log"):
                v = torch.empty(shape).uniform_(np.log(0.02), np.log(2.0), generator=g)
            elif name.endswith("dt_bias"):
                v = normal(shape, 0.5, -0.5)
            elif name.endswith("conv1d.weight"):  # [conv_dim, 1, K]
                v = normal(shape, 0.5)
            elif name.endswith("mlp.gate.weight"):  # router [E, hidden]
                v = normal(shape, 2.0 / hidden**0.5)
            elif name.endswith("experts.gate_up_proj"):  # [E, 2I, hidden]
                v = normal(shape, 1.0 / shape[2] ** 0.5)
            elif name.endswith("experts.down_proj"):  # [E, hidden, I], writes the residual
                v = normal(shape, 2.0 / shape[2] ** 0.5)
            elif name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
                # projections that write the residual stream: gain 2, so the blocks dominate
                # the token embedding (otherwise the tied model just repeats its input token)
                v = normal(shape, 2.0 / shape[1] ** 0.5)
            elif name.endswith(".weight") and p.ndim == 2:  # nn.Linear [out, in]
                v = normal(shape, 1.0 / shape[1] ** 0.5)
            else:
                raise ValueError(f"no init rule for {name} {shape}")
            p.copy_(v)


# ======================================================================================
# Helpers
# ======================================================================================
def top2_gaps(logits_2d):
    top = torch.topk(logits_2d.float(), 2, dim=-1).values
    return top[:, 0] - top[:, 1]


def router_margins(model, fn):
    """Run fn() while recording, for every router call, the gap between the k-th and the
    (k+1)-th largest router logit of every token (how far routing is from a tie)."""
    margins = []
    k = model.config.num_experts_per_tok

    def hook(_mod, _inp, out):
        logits = out[0]
        top = torch.topk(logits.float(), k + 1, dim=-1).values
        margins.append((top[:, k - 1] - top[:, k]).min().item())

    routers = [m for n, m in model.named_modules() if n.endswith("mlp.gate") and hasattr(m, "top_k")]
    handles = [r.register_forward_hook(hook) for r in routers]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return min(margins) if margins else None


def run_goldens(model, short_ids, long_ids):
    out = {}
    with torch.no_grad():
        out["short_logits"] = model(short_ids, use_cache=False).logits[0].float()
        out["long_last_logits"] = model(long_ids, use_cache=False).logits[0, -1].float()
        # No EOS: exactly NEW_TOKENS tokens, and no logits processor (min_new_tokens would
        # mask EOS in the scores and change the greedy path).
        gen_cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=ENDOFTEXT_ID,
            output_logits=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        saved_eos = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = None
        try:
            gens = {
                tag: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
                for tag, ids in (("short", short_ids), ("long", long_ids))
            }
        finally:  # generate fills unset fields from model.generation_config: clear its EOS too
            model.generation_config.eos_token_id = saved_eos
        for tag, ids in (("short", short_ids), ("long", long_ids)):
            gen = gens[tag]
            new = gen.sequences[0, ids.shape[1] :]
            assert new.shape[0] == NEW_TOKENS, f"{tag}: generated {new.shape[0]} tokens"
            logits = torch.stack(gen.logits)[:, 0].float()
            scores = torch.stack(gen.scores)[:, 0].float()
            assert torch.equal(logits, scores), "a logits processor changed the scores"
            assert torch.equal(logits.argmax(-1), new), "greedy ids are not the argmax of the step logits"
            out[f"{tag}_greedy_ids"] = new.clone()
            out[f"{tag}_stepwise_logits"] = logits
    return out


def check_against_full_forward(model, ids, new_ids, stepwise):
    """Stepwise (cached) logits vs one no-cache forward over prompt + generated tokens."""
    seq = torch.cat([ids[0], new_ids[:-1]])[None]
    with torch.no_grad():
        full = model(seq, use_cache=False).logits[0, ids.shape[1] - 1 :].float()
    return (full - stepwise).abs().max().item()


def set_impl(model, attn, experts):
    model.set_attn_implementation(attn)
    if hasattr(model.config, "num_experts"):
        model.set_experts_implementation(experts)


# ======================================================================================
# Main
# ======================================================================================
def build_model(spec, seed):
    """The in-memory float32 model with the fixture's weights (bf16-rounded where the
    checkpoint is bf16) and its generation config."""
    config = spec["config_cls"](**spec["config"])
    config.architectures = [spec["model_cls"].__name__]
    torch.manual_seed(0)  # HF's own init (overwritten below) uses the global RNG
    model = spec["model_cls"](config).eval()
    init_params(model, seed)
    if spec["dtype"] == torch.bfloat16:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
        pad_token_id=ENDOFTEXT_ID,
        do_sample=False,
    )
    return model


def prompts(tok):
    short_ids = torch.tensor([tok.encode(SHORT_TEXT).ids], dtype=torch.int64)
    long_ids = torch.tensor([tok.encode(LONG_TEXT).ids], dtype=torch.int64)
    assert short_ids.shape[1] == 8 and long_ids.shape[1] > 150
    return short_ids, long_ids


def robustness(model, gold, short_ids, long_ids):
    """Smallest top-1/top-2 gap along both greedy paths, and (MoE) the smallest top-k
    router margin over every token the goldens touch (prompts and generated tokens)."""
    r = {
        "min_gap_short_greedy": top2_gaps(gold["short_stepwise_logits"]).min().item(),
        "min_gap_long_greedy": top2_gaps(gold["long_stepwise_logits"]).min().item(),
        "distinct_short_greedy": len(set(gold["short_greedy_ids"].tolist())),
        "distinct_long_greedy": len(set(gold["long_greedy_ids"].tolist())),
    }
    if hasattr(model.config, "num_experts"):

        def everything():
            with torch.no_grad():
                for ids, key in ((short_ids, "short_greedy_ids"), (long_ids, "long_greedy_ids")):
                    model(torch.cat([ids[0], gold[key]])[None], use_cache=False)

        r["min_router_margin"] = router_margins(model, everything)
    return r


def robust_enough(r):
    return all(v > MIN_GAP for k, v in r.items() if k.startswith("min_")) and all(
        v >= MIN_DISTINCT for k, v in r.items() if k.startswith("distinct_")
    )


def find_seeds(spec, tok, start, count):
    """Print the seeds in [start, start+count) whose goldens are robust (see MIN_GAP)."""
    short_ids, long_ids = prompts(tok)
    for seed in range(start, start + count):
        model = build_model(spec, seed)
        set_impl(model, "eager", "eager")
        gold = run_goldens(model, short_ids, long_ids)
        r = robustness(model, gold, short_ids, long_ids)
        print(spec["name"], seed, "OK " if robust_enough(r) else "bad", {k: f"{v:.3g}" for k, v in r.items()})


def build_fixture(spec, tok):
    name = spec["name"]
    out_dir = os.path.join(FIX_DIR, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    model = build_model(spec, spec["seed"])
    n_params = len(list(model.named_parameters()))
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    total_bytes = sum(p.numel() for p in model.parameters()) * (2 if spec["dtype"] == torch.bfloat16 else 4)
    save_kwargs = {}
    if spec["shards"] > 1:
        save_kwargs["max_shard_size"] = int(total_bytes * 0.6)
    if spec["dtype"] == torch.bfloat16:
        model.to(torch.bfloat16)
    model.save_pretrained(out_dir, **save_kwargs)
    del model

    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOK_DIR, fn), os.path.join(out_dir, fn))

    st_files = sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors"))
    assert len(st_files) == spec["shards"], st_files
    assert ("model.safetensors.index.json" in os.listdir(out_dir)) == (spec["shards"] > 1)

    # Re-load exactly what a consumer would, in float32, and check the weights.
    model = spec["model_cls"].from_pretrained(out_dir, dtype=torch.float32).eval()
    loaded = model.state_dict()
    assert set(loaded) == set(reference), set(loaded) ^ set(reference)
    for k, v in reference.items():
        assert torch.equal(loaded[k], v), f"reloaded weight differs: {k}"
    if spec["config"]["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    short_ids, long_ids = prompts(tok)
    set_impl(model, "eager", "eager")
    gold = run_goldens(model, short_ids, long_ids)

    # ---- cross-checks ----------------------------------------------------------------
    report = robustness(model, gold, short_ids, long_ids)
    report["min_gap_short_prefill_positions"] = top2_gaps(gold["short_logits"]).min().item()
    report["cached_vs_full_short"] = check_against_full_forward(
        model, short_ids, gold["short_greedy_ids"], gold["short_stepwise_logits"]
    )
    report["cached_vs_full_long"] = check_against_full_forward(
        model, long_ids, gold["long_greedy_ids"], gold["long_stepwise_logits"]
    )
    report["step0_vs_prefill_last"] = (gold["short_stepwise_logits"][0] - gold["short_logits"][-1]).abs().max().item()
    is_moe = hasattr(model.config, "num_experts")
    set_impl(model, "sdpa", "batched_mm" if is_moe else "eager")
    alt = run_goldens(model, short_ids, long_ids)
    set_impl(model, "eager", "eager")
    report["sdpa_batched_mm_vs_eager"] = max((alt[k].float() - gold[k].float()).abs().max().item() for k in gold)
    for k in ("short_greedy_ids", "long_greedy_ids"):
        assert torch.equal(alt[k], gold[k]), f"{k} differs between implementations"
    report["logits_std_short"] = gold["short_logits"].std().item()
    report["logits_range_short_last"] = (gold["short_logits"][-1].max() - gold["short_logits"][-1].min()).item()
    assert robust_enough(robustness(model, gold, short_ids, long_ids)), f"{name}: goldens too close to a tie; change the seed (--find-seeds)"

    # ---- goldens file ----------------------------------------------------------------
    tensors = {
        "short_ids": short_ids[0],
        "long_ids": long_ids[0],
        "short_logits": gold["short_logits"],
        "long_last_logits": gold["long_last_logits"],
        "short_greedy_ids": gold["short_greedy_ids"],
        "long_greedy_ids": gold["long_greedy_ids"],
        "short_stepwise_logits": gold["short_stepwise_logits"],
        "long_stepwise_logits": gold["long_stepwise_logits"],
    }
    metadata = {
        "fixture": f"models/fixtures/{name}",
        "model_class": spec["model_cls"].__name__,
        "weights_dtype_on_disk": str(spec["dtype"]).replace("torch.", ""),
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "experts_implementation": "eager",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "generator": GENERATOR,
        "seed": str(spec["seed"]),
        "short_text": SHORT_TEXT,
        "long_text": LONG_TEXT,
        "max_new_tokens": str(NEW_TOKENS),
        "min_top1_top2_gap_short_greedy": f"{report['min_gap_short_greedy']:.6g}",
        "min_top1_top2_gap_long_greedy": f"{report['min_gap_long_greedy']:.6g}",
    }
    if "min_router_margin" in report:
        metadata["min_router_topk_margin"] = f"{report['min_router_margin']:.6g}"
    os.makedirs(GOLD_DIR, exist_ok=True)
    save_safetensors_deterministic(tensors, os.path.join(GOLD_DIR, f"{name}.safetensors"), metadata)

    # ---- summary -------------------------------------------------------------------
    print(f"== {name} ({spec['model_cls'].__name__}, {n_params} parameter tensors, seed {spec['seed']})")
    for k, v in report.items():
        print(f"   {k:34s} {v:.4g}")
    print(f"   short_ids        {short_ids[0].tolist()}")
    print(f"   short_greedy_ids {gold['short_greedy_ids'].tolist()}  {tok.decode(gold['short_greedy_ids'].tolist())!r}")
    print(f"   long_ids         {long_ids.shape[1]} tokens")
    print(f"   long_greedy_ids  {gold['long_greedy_ids'].tolist()}  {tok.decode(gold['long_greedy_ids'].tolist())!r}")
    for f in sorted(os.listdir(out_dir)):
        print(f"   {f:36s} {os.path.getsize(os.path.join(out_dir, f)):>9d} B")
    return report


def main():
    tok = Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB
    assert tok.token_to_id("<|im_end|>") == IM_END_ID and tok.token_to_id("<|endoftext|>") == ENDOFTEXT_ID
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    args = sys.argv[1:]
    if args[:1] == ["--find-seeds"]:  # --find-seeds NAME START COUNT
        spec = next(f for f in FIXTURES if f["name"] == args[1])
        find_seeds(spec, tok, int(args[2]), int(args[3]))
        return
    only = set(args)
    for spec in FIXTURES:
        if not only or spec["name"] in only:
            build_fixture(spec, tok)


if __name__ == "__main__":
    main()
