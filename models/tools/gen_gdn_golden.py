#!/usr/bin/env python3
"""Generate golden reference data for the Gated DeltaNet (GDN) core of Qwen3-Next / Qwen3.5.

What it produces
----------------
One safetensors file per case in ``models/goldens/gdn/<case>.safetensors`` (all tensors
float32, contiguous, row-major, batch dimension squeezed away).  Each file holds random
layer constants, random per-token inputs (the raw outputs of the input projections), and
the outputs / states that HF transformers computes from them for

  * a prefill of ``t_prefill`` tokens with an empty cache, and
  * ``t_decode`` single-token decode steps that continue from the prefill's cache.

See ``models/goldens/gdn/README.md`` for the exact tensor list, shapes and layouts.

Where the numbers come from
---------------------------
Everything is computed by HF transformers' own pure-PyTorch functions from
``transformers.models.qwen3_next.modeling_qwen3_next`` (Qwen3.5 has byte-identical copies):

  * ``causal_conv1d_fn``      - the F.conv1d causal depthwise conv + SiLU used for prefill
                                when the ``causal-conv1d`` package is absent,
  * ``causal_conv1d_update``  - the single-token conv used for cached decode (updates the
                                K-column conv state in place),
  * ``torch_chunk_gated_delta_rule``     - chunked (64) GDN used for prefill,
  * ``torch_recurrent_gated_delta_rule`` - token-by-token GDN used for cached decode
                                           (also run over the prefill as a 2nd reference).

The glue between them (conv-state capture, g / beta formulas, q/k/v split, head reshape,
``use_qk_l2norm_in_kernel=True``) mirrors ``Qwen3NextGatedDeltaNet.forward`` line by line.
To prove that the glue is faithful, every case is ALSO pushed through the real HF modules
(``Qwen3NextGatedDeltaNet`` and ``Qwen3_5GatedDeltaNet``) with a real ``DynamicCache``:
their input projections are set to 0/1 routing matrices so that the projections emit
exactly our random ``mixed_qkv`` / ``a`` / ``b``, and the core-attention output is captured
with a pre-hook on the gated RMSNorm.  The script asserts both agree with the stored data.

Finally an independent float64 numpy re-implementation of the whole thing (conv, SiLU,
gates, L2 norm, sequential delta-rule recurrence, conv window) is compared against every
stored output as a self-check, and the max abs differences are printed.

The fast kernels (``flash-linear-attention`` / ``fla``, ``causal-conv1d``, ``kernels``)
must NOT be installed: if importable, transformers would silently dispatch to them.  The
script refuses to run if it finds them.

How to run
----------
From the repository root, with the reference venv (torch, transformers>=5.24, safetensors,
numpy; see the README)::

    /work/pyref/bin/python models/tools/gen_gdn_golden.py

The output is deterministic for a given torch version (fixed per-case seeds, CPU, one
thread).
"""

import importlib.util
import json
import math
import os
import struct
import sys

# --------------------------------------------------------------------------------------
# Refuse to run if a fast-kernel package is importable: transformers' decorators
# (use_kernel_func_from_hub_with_fallback) would route the calls below to it instead of
# the pure-PyTorch reference implementations.
# --------------------------------------------------------------------------------------
for _pkg in ("fla", "causal_conv1d", "kernels"):
    if importlib.util.find_spec(_pkg) is not None:
        sys.exit(f"error: package '{_pkg}' is importable; uninstall it so HF uses its torch reference path")

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from transformers import DynamicCache
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf35
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
from transformers.models.qwen3_next import modeling_qwen3_next as hf
from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig

torch.set_num_threads(1)  # deterministic, and polite on a shared 2-core machine
torch.set_grad_enabled(False)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO_ROOT, "models", "goldens", "gdn")
GENERATOR = "models/tools/gen_gdn_golden.py"

CONV_KERNEL = 4  # linear_conv_kernel_dim of every released Qwen3-Next / Qwen3.5 model
ACTIVATION = "silu"  # config.hidden_act, passed by HF as the conv activation
BASE_SEED = 20240917

# name: (Hk, Hv, dk, dv, T1 = prefill tokens, T2 = decode tokens)
CASES = [
    ("next_r2", 2, 4, 32, 32, 150, 6),  # GVA ratio 2, prefill crosses chunk boundaries 64 / 128
    ("r1_nonsquare", 2, 2, 64, 32, 65, 4),  # no GVA, dk != dv, one token past a chunk
    ("r3_nonsquare", 1, 3, 32, 48, 127, 4),  # GVA ratio 3, dk != dv, one token short of 2 chunks
    ("full_dim", 1, 2, 128, 128, 70, 3),  # the real Qwen3-Next head dims (128 / 128)
    ("short", 2, 4, 32, 32, 1, 2),  # prefill shorter than the conv kernel (conv state padding)
]

# Tolerances. HF-module-vs-glue should be bit-identical (same functions, same inputs);
# numpy float64 vs HF float32 should agree to float32 rounding (~1e-6 here).
TOL_MODULE = 1e-6
TOL_NUMPY = 5e-5
TOL_CHUNK_VS_RECURRENT = 5e-5


# ======================================================================================
# Deterministic safetensors writer
# ======================================================================================
def save_safetensors_deterministic(tensors, path, metadata):
    """Write a standard safetensors file whose bytes depend only on the data.

    safetensors.torch.save_file stores the metadata in a hash map, so the JSON header order
    (and therefore the file bytes) changes from run to run even when every tensor is
    bit-identical. Here the header is written with sorted keys and the tensors in name order.
    The format is the same: u64-LE header length, JSON header padded with spaces to a
    multiple of 8, then the raw little-endian row-major data. The file is read back with
    safetensors afterwards to check it.
    """
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name].detach().cpu().numpy().astype("<f4"))
        data = arr.tobytes(order="C")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for data in blobs:
            f.write(data)


# ======================================================================================
# Random data
# ======================================================================================
def make_case_data(hk, hv, dk, dv, t1, t2, seed):
    """Random layer constants and per-token inputs (float32, batch dim absent)."""
    g = torch.Generator().manual_seed(seed)
    conv_dim = 2 * hk * dk + hv * dv
    K = CONV_KERNEL

    # Depthwise conv weight: HF's nn.Conv1d weight is [conv_dim, 1, K]; we store it squeezed.
    # Scale 0.5 keeps the conv outputs O(1) for N(0,1) inputs.
    conv_weight = torch.randn(conv_dim, K, generator=g) * 0.5

    # A_log as in HF's init: log of a uniform A.  We use U(1, 16) (HF uses U(0.01, 16)).
    a_log = torch.empty(hv).uniform_(1.0, 16.0, generator=g).log()

    # dt_bias: HF's _init_weights sets it to ones, which with A up to 16 and a ~ N(0,1) makes
    # nearly every decay exp(g) ~ 0 (state wiped each token -> a weak test).  Use instead the
    # FLA / Mamba-2 style init that real GDN checkpoints start from:
    #   dt ~ logUniform(1e-3, 1e-1),  dt_bias = softplus^{-1}(dt) = dt + log(-expm1(-dt)).
    # With a ~ N(0,1) this gives decays exp(g) spread over roughly (1e-3, 0.9999).
    dt = torch.exp(torch.empty(hv).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    dt_bias = dt + torch.log(-torch.expm1(-dt))

    # Per-token inputs = raw projection outputs (a: before softplus, b: before sigmoid).
    mixed_qkv = torch.randn(t1, conv_dim, generator=g)
    a = torch.randn(t1, hv, generator=g)
    b = torch.randn(t1, hv, generator=g)
    decode_mixed_qkv = torch.randn(t2, conv_dim, generator=g)
    decode_a = torch.randn(t2, hv, generator=g)
    decode_b = torch.randn(t2, hv, generator=g)

    return dict(
        conv_weight=conv_weight,
        a_log=a_log,
        dt_bias=dt_bias,
        mixed_qkv=mixed_qkv,
        a=a,
        b=b,
        decode_mixed_qkv=decode_mixed_qkv,
        decode_a=decode_a,
        decode_b=decode_b,
    )


# ======================================================================================
# HF glue, mirroring Qwen3NextGatedDeltaNet.forward (transformers 5.24) step by step.
# Batch size is 1 throughout; tensors carry the batch dim while inside HF code.
# ======================================================================================
def gates(a_raw, b_raw, a_log, dt_bias):
    """HF: beta = b.sigmoid(); g = -A_log.float().exp() * F.softplus(a.float() + dt_bias)."""
    beta = b_raw.sigmoid()
    g = -a_log.float().exp() * F.softplus(a_raw.float() + dt_bias)
    return g, beta


def split_heads(mixed_qkv_btc, hk, hv, dk, dv):
    """HF: torch.split(mixed_qkv, [key_dim, key_dim, value_dim], -1) then reshape to heads.

    Note: since transformers 5.x the GVA repeat_interleave of q/k (Hk -> Hv heads) is done
    INSIDE torch_{chunk,recurrent}_gated_delta_rule, so the forward passes q/k with Hk heads.
    """
    key_dim, value_dim = hk * dk, hv * dv
    q, k, v = torch.split(mixed_qkv_btc, [key_dim, key_dim, value_dim], dim=-1)
    bsz, t = q.shape[:2]
    return (
        q.reshape(bsz, t, -1, dk),
        k.reshape(bsz, t, -1, dk),
        v.reshape(bsz, t, -1, dv),
    )


def hf_prefill(d, hk, hv, dk, dv):
    """Prefill with an empty DynamicCache, exactly as Qwen3NextGatedDeltaNet.forward does.

    Returns chunk outputs/state, the cache's conv state ([1, conv_dim, K]) and the
    recurrent-rule outputs/state on the same inputs.
    """
    K = CONV_KERNEL
    t1 = d["mixed_qkv"].shape[0]
    weight = d["conv_weight"]  # == self.conv1d.weight.squeeze(1)

    # mixed_qkv = cat(q, k, v).transpose(1, 2)  -> [B, conv_dim, T]
    x = d["mixed_qkv"][None].transpose(1, 2)

    # cache.update_conv_state on a fresh LinearAttentionLayer (prefill branch):
    #   full = x, left-padded with zeros up to K columns if T < K;
    #   cached conv state = full[..., -K:]  (K columns, not K-1!)
    full = x
    if full.shape[-1] < K:
        full = F.pad(full, (K - full.shape[-1], 0), value=0)
    conv_state = full[..., -K:].clone()

    # causal_conv1d_fn(full, weight, bias=None, activation="silu"), then keep the last T
    conv_out = hf.causal_conv1d_fn(full, weight, None, activation=ACTIVATION)
    conv_out = conv_out[:, :, -t1:]

    q, k, v = split_heads(conv_out.transpose(1, 2), hk, hv, dk, dv)
    g, beta = gates(d["a"][None], d["b"][None], d["a_log"], d["dt_bias"])

    # Empty cache -> recurrent_state is None -> chunk path (also for T == 1).
    out_chunk, state_chunk = hf.torch_chunk_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=None, output_final_state=True,
        use_qk_l2norm_in_kernel=True, cu_seqlens=None,
    )
    # Second reference: the token-by-token rule over the same prefill.
    out_rec, state_rec = hf.torch_recurrent_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=None, output_final_state=True,
        use_qk_l2norm_in_kernel=True, cu_seqlens=None,
    )
    return dict(
        out_chunk=out_chunk, state_chunk=state_chunk, out_rec=out_rec, state_rec=state_rec,
        conv_state=conv_state, g=g,
    )


def hf_decode(d, conv_state, recurrent_state, hk, hv, dk, dv):
    """T2 single-token cached decode steps (seq_len == 1 branch of the forward)."""
    weight = d["conv_weight"]
    conv_state = conv_state.clone()  # updated in place by causal_conv1d_update, like the cache
    state = recurrent_state
    outs, gs = [], []
    for t in range(d["decode_mixed_qkv"].shape[0]):
        x = d["decode_mixed_qkv"][t][None, None].transpose(1, 2)  # [1, conv_dim, 1]
        conv_out = hf.causal_conv1d_update(x, conv_state, weight, None, ACTIVATION)
        q, k, v = split_heads(conv_out.transpose(1, 2), hk, hv, dk, dv)
        g, beta = gates(d["decode_a"][t][None, None], d["decode_b"][t][None, None], d["a_log"], d["dt_bias"])
        out, state = hf.torch_recurrent_gated_delta_rule(
            q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
            use_qk_l2norm_in_kernel=True, cu_seqlens=None,
        )
        outs.append(out[0, 0])
        gs.append(g)
    return dict(out=torch.stack(outs), conv_state=conv_state, state=state, g=torch.cat(gs, dim=1))


# ======================================================================================
# Cross-check: run the real HF modules with a real DynamicCache.
# ======================================================================================
def hf_module_run(family, d, hk, hv, dk, dv):
    """Push the case through Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet.

    hidden_states per token = [mixed_qkv (conv_dim) | b (Hv) | a (Hv)]; the input projections
    are 0/1 routing matrices, so every projection output is an exact copy of our inputs
    (z gets zero weights; it only affects the gated norm, after the point we capture).
    """
    conv_dim = 2 * hk * dk + hv * dv
    r = hv // hk
    hidden = conv_dim + 2 * hv
    kw = dict(
        hidden_size=hidden, linear_num_key_heads=hk, linear_num_value_heads=hv,
        linear_key_head_dim=dk, linear_value_head_dim=dv, linear_conv_kernel_dim=CONV_KERNEL,
        num_hidden_layers=1, layer_types=["linear_attention"], hidden_act=ACTIVATION,
        num_attention_heads=4, num_key_value_heads=2,
    )
    q0, k0, v0, b0, a0 = 0, hk * dk, 2 * hk * dk, conv_dim, conv_dim + hv  # offsets in hidden

    if family == "qwen3_next":
        cfg = Qwen3NextConfig(**kw)
        mod = hf.Qwen3NextGatedDeltaNet(cfg, 0).eval()
        # in_proj_qkvz rows, per key-head group j: [q_j (dk) | k_j (dk) | v_j (r*dv) | z_j (r*dv)]
        rows = []
        for j in range(hk):
            rows += list(range(q0 + j * dk, q0 + (j + 1) * dk))
            rows += list(range(k0 + j * dk, k0 + (j + 1) * dk))
            rows += list(range(v0 + j * r * dv, v0 + (j + 1) * r * dv))
            rows += [-1] * (r * dv)  # z
        w = torch.zeros(len(rows), hidden)
        for o, i in enumerate(rows):
            if i >= 0:
                w[o, i] = 1.0
        mod.in_proj_qkvz.weight.copy_(w)
        # in_proj_ba rows, per key-head group j: [b_j (r) | a_j (r)]
        rows = []
        for j in range(hk):
            rows += list(range(b0 + j * r, b0 + (j + 1) * r))
            rows += list(range(a0 + j * r, a0 + (j + 1) * r))
        w = torch.zeros(len(rows), hidden)
        for o, i in enumerate(rows):
            w[o, i] = 1.0
        mod.in_proj_ba.weight.copy_(w)
    else:
        cfg = Qwen3_5TextConfig(**kw)
        mod = hf35.Qwen3_5GatedDeltaNet(cfg, 0).eval()
        eye = torch.eye(hidden)
        mod.in_proj_qkv.weight.copy_(eye[:conv_dim])
        mod.in_proj_z.weight.zero_()
        mod.in_proj_b.weight.copy_(eye[b0 : b0 + hv])
        mod.in_proj_a.weight.copy_(eye[a0 : a0 + hv])

    mod.conv1d.weight.copy_(d["conv_weight"][:, None, :])
    mod.A_log.copy_(d["a_log"])
    mod.dt_bias.copy_(d["dt_bias"])

    captured = []
    hook = mod.norm.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    cache = DynamicCache(config=cfg)

    def step(mq, a, b):
        hs = torch.cat([mq, b, a], dim=-1)[None]  # [1, T, hidden]
        captured.clear()
        mod(hs, cache=cache)
        return captured[0].reshape(mq.shape[0], hv, dv)

    res = {}
    res["prefill_out"] = step(d["mixed_qkv"], d["a"], d["b"])
    layer = cache.layers[0]
    res["prefill_conv_state"] = layer.conv_states[0][0].clone()
    res["prefill_recurrent_state"] = layer.recurrent_states[0][0].clone()
    outs = [step(d["decode_mixed_qkv"][t : t + 1], d["decode_a"][t : t + 1], d["decode_b"][t : t + 1])[0]
            for t in range(d["decode_mixed_qkv"].shape[0])]
    res["decode_out"] = torch.stack(outs)
    res["final_conv_state"] = layer.conv_states[0][0].clone()
    res["final_recurrent_state"] = layer.recurrent_states[0][0].clone()
    hook.remove()
    return res


# ======================================================================================
# Independent float64 numpy reference (sequential recurrence), used as a self-check.
# ======================================================================================
def numpy_reference(t, hk, hv, dk, dv):
    """Recompute everything from the stored inputs, without torch or HF code."""
    f64 = {k: v.astype(np.float64) for k, v in t.items()}
    K = CONV_KERNEL
    r = hv // hk
    kd = hk * dk
    w = f64["conv_weight"]  # [C, K]
    A = np.exp(f64["a_log"])  # [Hv]

    def softplus(x):
        return np.logaddexp(0.0, x)

    def l2n(x):
        return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)

    window = np.zeros((K - 1, w.shape[0]))  # last K-1 raw inputs, oldest first
    S = np.zeros((hv, dk, dv))  # recurrent state, key-major

    def token(x_raw, a_raw, b_raw):
        nonlocal window, S
        full = np.concatenate([window, x_raw[None]], 0)  # [K, C], oldest first
        window = full[1:]
        y = (full.T * w).sum(-1)  # depthwise causal conv: sum_j w[c, j] * x[t-K+1+j, c]
        y = y / (1.0 + np.exp(-y))  # SiLU
        q = l2n(y[:kd].reshape(hk, dk)) / math.sqrt(dk)
        k = l2n(y[kd : 2 * kd].reshape(hk, dk))
        v = y[2 * kd :].reshape(hv, dv)
        g = -A * softplus(a_raw + f64["dt_bias"])
        beta = 1.0 / (1.0 + np.exp(-b_raw))
        o = np.zeros((hv, dv))
        for h in range(hv):
            kh, qh = k[h // r], q[h // r]  # value head h reads key head h // r
            S[h] *= np.exp(g[h])
            delta = beta[h] * (v[h] - kh @ S[h])
            S[h] += np.outer(kh, delta)
            o[h] = qh @ S[h]
        return o

    ref = {}
    ref["prefill_out"] = np.stack([token(f64["mixed_qkv"][i], f64["a"][i], f64["b"][i])
                                   for i in range(f64["mixed_qkv"].shape[0])])
    ref["prefill_conv_state"] = window.T.copy()
    ref["prefill_recurrent_state"] = S.copy()
    ref["decode_out"] = np.stack([token(f64["decode_mixed_qkv"][i], f64["decode_a"][i], f64["decode_b"][i])
                                  for i in range(f64["decode_mixed_qkv"].shape[0])])
    ref["final_conv_state"] = window.T.copy()
    ref["final_recurrent_state"] = S.copy()
    return ref


def maxabs(x, y):
    x = x.detach().numpy() if isinstance(x, torch.Tensor) else x
    y = y.detach().numpy() if isinstance(y, torch.Tensor) else y
    assert x.shape == y.shape, (x.shape, y.shape)
    return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0


# ======================================================================================
def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    K = CONV_KERNEL
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    print(f"HF module: {hf.__file__}")
    failures = []
    summary = []

    for idx, (name, hk, hv, dk, dv, t1, t2) in enumerate(CASES):
        assert hv % hk == 0
        seed = BASE_SEED + idx
        conv_dim = 2 * hk * dk + hv * dv
        d = make_case_data(hk, hv, dk, dv, t1, t2, seed)

        pre = hf_prefill(d, hk, hv, dk, dv)
        dec = hf_decode(d, pre["conv_state"], pre["state_chunk"], hk, hv, dk, dv)

        tensors = {
            "conv_weight": d["conv_weight"],  # [conv_dim, K]
            "a_log": d["a_log"],  # [Hv]
            "dt_bias": d["dt_bias"],  # [Hv]
            "mixed_qkv": d["mixed_qkv"],  # [T1, conv_dim]
            "a": d["a"],  # [T1, Hv]
            "b": d["b"],  # [T1, Hv]
            "prefill_out": pre["out_chunk"][0],  # [T1, Hv, dv]
            "prefill_recurrent_state": pre["state_chunk"][0],  # [Hv, dk, dv]
            "prefill_out_recurrent": pre["out_rec"][0],  # [T1, Hv, dv]
            "prefill_recurrent_state_recurrent": pre["state_rec"][0],  # [Hv, dk, dv]
            # HF caches K columns; the oldest one is never read again -> keep the last K-1.
            "prefill_conv_state": pre["conv_state"][0, :, 1:],  # [conv_dim, K-1]
            "decode_mixed_qkv": d["decode_mixed_qkv"],  # [T2, conv_dim]
            "decode_a": d["decode_a"],  # [T2, Hv]
            "decode_b": d["decode_b"],  # [T2, Hv]
            "decode_out": dec["out"],  # [T2, Hv, dv]
            "final_conv_state": dec["conv_state"][0, :, 1:],  # [conv_dim, K-1]
            "final_recurrent_state": dec["state"][0],  # [Hv, dk, dv]
        }
        tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
        expected_shapes = {
            "conv_weight": (conv_dim, K), "a_log": (hv,), "dt_bias": (hv,),
            "mixed_qkv": (t1, conv_dim), "a": (t1, hv), "b": (t1, hv),
            "prefill_out": (t1, hv, dv), "prefill_recurrent_state": (hv, dk, dv),
            "prefill_out_recurrent": (t1, hv, dv), "prefill_recurrent_state_recurrent": (hv, dk, dv),
            "prefill_conv_state": (conv_dim, K - 1),
            "decode_mixed_qkv": (t2, conv_dim), "decode_a": (t2, hv), "decode_b": (t2, hv),
            "decode_out": (t2, hv, dv), "final_conv_state": (conv_dim, K - 1),
            "final_recurrent_state": (hv, dk, dv),
        }
        for k, shp in expected_shapes.items():
            assert tuple(tensors[k].shape) == shp, (name, k, tensors[k].shape, shp)
        assert set(tensors) == set(expected_shapes)

        metadata = {
            "hk": str(hk), "hv": str(hv), "dk": str(dk), "dv": str(dv),
            "conv_kernel": str(K), "t_prefill": str(t1), "t_decode": str(t2), "seed": str(seed),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "generator": GENERATOR,
        }
        path = os.path.join(OUT_DIR, f"{name}.safetensors")
        save_safetensors_deterministic(tensors, path, metadata)
        # Read the file back with the real safetensors library: same tensors, same metadata.
        with safe_open(path, "pt") as f:
            assert f.metadata() == metadata, name
            assert set(f.keys()) == set(tensors), name
            for k in f.keys():
                assert torch.equal(f.get_tensor(k), tensors[k]), (name, k)

        # ---- diagnostics -------------------------------------------------------------
        decay = torch.cat([pre["g"], dec["g"]], dim=1).exp()
        d_chunk_rec_out = maxabs(tensors["prefill_out"], tensors["prefill_out_recurrent"])
        d_chunk_rec_st = maxabs(tensors["prefill_recurrent_state"], tensors["prefill_recurrent_state_recurrent"])
        print(f"\n== {name}: Hk={hk} Hv={hv} dk={dk} dv={dv} conv_dim={conv_dim} T1={t1} T2={t2} seed={seed}")
        print(f"   exp(g): min {decay.min().item():.3e}  median {decay.median().item():.3e}  max {decay.max().item():.6f}")
        print(f"   |prefill_out| max {tensors['prefill_out'].abs().max().item():.3f}, "
              f"|state| max {tensors['prefill_recurrent_state'].abs().max().item():.3f}")
        print(f"   HF chunk vs HF recurrent: out {d_chunk_rec_out:.3e}  state {d_chunk_rec_st:.3e}")
        if max(d_chunk_rec_out, d_chunk_rec_st) > TOL_CHUNK_VS_RECURRENT:
            failures.append(f"{name}: chunk vs recurrent")

        # Cross-check the glue against the real HF modules + DynamicCache.
        for family in ("qwen3_next", "qwen3_5"):
            m = hf_module_run(family, d, hk, hv, dk, dv)
            diffs = {
                "prefill_out": maxabs(m["prefill_out"], tensors["prefill_out"]),
                "prefill_recurrent_state": maxabs(m["prefill_recurrent_state"], tensors["prefill_recurrent_state"]),
                "prefill_conv_state(K cols)": maxabs(m["prefill_conv_state"], pre["conv_state"][0]),
                "decode_out": maxabs(m["decode_out"], tensors["decode_out"]),
                "final_conv_state(K cols)": maxabs(m["final_conv_state"], dec["conv_state"][0]),
                "final_recurrent_state": maxabs(m["final_recurrent_state"], tensors["final_recurrent_state"]),
            }
            worst = max(diffs.values())
            print(f"   HF {family} module+DynamicCache vs stored: max {worst:.3e}")
            if worst > TOL_MODULE:
                failures.append(f"{name}: {family} module mismatch {diffs}")

        summary.append((name, path))

    # ---- numpy self-check over the files as written ----------------------------------
    from safetensors.numpy import load_file

    print("\n== numpy float64 sequential self-check (max abs diff vs stored)")
    total = 0
    for name, path in summary:
        with safe_open(path, "np") as f:
            meta = f.metadata()
        t = load_file(path)
        hk, hv, dk, dv = (int(meta[k]) for k in ("hk", "hv", "dk", "dv"))
        for k, v in t.items():
            assert v.dtype == np.float32 and v.flags["C_CONTIGUOUS"], (name, k)
        ref = numpy_reference(t, hk, hv, dk, dv)
        checks = {
            "prefill_out": ref["prefill_out"],
            "prefill_out_recurrent": ref["prefill_out"],
            "prefill_recurrent_state": ref["prefill_recurrent_state"],
            "prefill_recurrent_state_recurrent": ref["prefill_recurrent_state"],
            "prefill_conv_state": ref["prefill_conv_state"],
            "decode_out": ref["decode_out"],
            "final_conv_state": ref["final_conv_state"],
            "final_recurrent_state": ref["final_recurrent_state"],
        }
        diffs = {k: maxabs(t[k], v) for k, v in checks.items()}
        size = os.path.getsize(path)
        total += size
        print(f"   {name:13s} {size:8d} B  " + "  ".join(f"{k}={v:.1e}" for k, v in diffs.items()))
        if max(diffs.values()) > TOL_NUMPY:
            failures.append(f"{name}: numpy self-check {diffs}")
    print(f"   total {total} B")

    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
