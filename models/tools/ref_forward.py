#!/usr/bin/env python3
"""Independent float64 re-implementation of the fixture models, checked against the goldens.

This does NOT use transformers' modules: it reads ``config.json`` and the safetensors files
of ``models/fixtures/<name>/`` directly and implements Qwen3-Next / Qwen3.5 / Qwen3.5-MoE
from scratch in float64 (token-by-token GDN recurrence for prefill AND decode, explicit
RoPE, explicit MoE routing), then compares with ``models/goldens/models/<name>.safetensors``.
It is a readable spec of the conventions a Rust implementation must follow (see the
``# CONVENTION`` comments), and it tells how far HF's float32 goldens are from exact math.

It also accepts the other on-disk layouts HF 5.24 loads: a ``model.language_model.`` prefix
(hub Qwen3.5 checkpoints, saved from ``*ForConditionalGeneration``) and fused 3-D experts
(``mlp.experts.gate_up_proj`` [E, 2I, H] / ``mlp.experts.down_proj`` [E, H, I]).

Run from the repository root:

    /work/pyref/bin/python models/tools/ref_forward.py [fixture names...]
"""

import json
import math
import os
import sys

import torch
from safetensors import safe_open

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = ["qwen3-next-tiny", "qwen3.5-tiny", "qwen3.5-moe-tiny"]
DT = torch.float64


def load_weights(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    w = {}
    for f in files:
        with safe_open(os.path.join(d, f), "pt") as s:
            for k in s.keys():
                name = k.replace("model.language_model.", "model.", 1)
                w[name] = s.get_tensor(k).to(DT)
    return w


def expert_weights(w, p, n_experts):
    """(gate [E, I, H], up [E, I, H], down [E, H, I]) from either on-disk layout."""
    if f"{p}.experts.gate_up_proj" in w:
        gu = w[f"{p}.experts.gate_up_proj"]  # CONVENTION: rows [0, I) = gate, [I, 2I) = up
        inter = gu.shape[1] // 2
        return gu[:, :inter], gu[:, inter:], w[f"{p}.experts.down_proj"]
    stack = lambda n: torch.stack([w[f"{p}.experts.{e}.{n}.weight"] for e in range(n_experts)])
    return stack("gate_proj"), stack("up_proj"), stack("down_proj")


def rms_1p(x, wt, eps):
    # CONVENTION: input/post-attention/final/q_norm/k_norm RMSNorms are zero-centred: x̂ * (1 + w)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + wt)


def silu(x):
    return x * torch.sigmoid(x)


class Model:
    def __init__(self, d):
        self.c = json.load(open(os.path.join(d, "config.json")))
        self.w = load_weights(d)
        c = self.c
        self.family = c["model_type"]  # qwen3_next | qwen3_5_text | qwen3_5_moe_text
        self.eps = c["rms_norm_eps"]
        self.lm_head = self.w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else self.w["lm_head.weight"]
        self.reset()

    def reset(self):
        c = self.c
        self.pos = 0
        self.conv_state, self.ssm_state, self.kv = {}, {}, {}
        hk, hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
        dk, dv, K = c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"]
        for i, t in enumerate(c["layer_types"]):
            if t == "linear_attention":
                self.conv_state[i] = torch.zeros(K - 1, 2 * hk * dk + hv * dv, dtype=DT)
                self.ssm_state[i] = torch.zeros(hv, dk, dv, dtype=DT)
            else:
                self.kv[i] = ([], [])

    # ---------------------------------------------------------------- Gated DeltaNet
    def gdn(self, i, h):
        c, w, p = self.c, self.w, f"model.layers.{i}.linear_attn"
        hk, hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
        dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
        r = hv // hk
        T = h.shape[0]
        if self.family == "qwen3_next":
            # CONVENTION (Qwen3-Next): in_proj_qkvz rows are grouped per KEY head j:
            #   [q_j (dk) | k_j (dk) | v of value heads j*r..j*r+r-1 (r*dv) | z of the same (r*dv)]
            # in_proj_ba rows per key head j: [b (r) | a (r)].
            qkvz = (h @ w[f"{p}.in_proj_qkvz.weight"].T).view(T, hk, 2 * dk + 2 * r * dv)
            q = qkvz[..., :dk].reshape(T, hk * dk)
            k = qkvz[..., dk : 2 * dk].reshape(T, hk * dk)
            v = qkvz[..., 2 * dk : 2 * dk + r * dv].reshape(T, hv * dv)
            z = qkvz[..., 2 * dk + r * dv :].reshape(T, hv, dv)
            ba = (h @ w[f"{p}.in_proj_ba.weight"].T).view(T, hk, 2 * r)
            b = ba[..., :r].reshape(T, hv)
            a = ba[..., r:].reshape(T, hv)
            mixed = torch.cat([q, k, v], dim=-1)
        else:
            # CONVENTION (Qwen3.5): separate projections, flat head-major blocks:
            #   in_proj_qkv rows [q (hk*dk) | k (hk*dk) | v (hv*dv)], in_proj_z [hv*dv], in_proj_b/a [hv]
            mixed = h @ w[f"{p}.in_proj_qkv.weight"].T
            z = (h @ w[f"{p}.in_proj_z.weight"].T).view(T, hv, dv)
            b = h @ w[f"{p}.in_proj_b.weight"].T
            a = h @ w[f"{p}.in_proj_a.weight"].T
        conv_w = w[f"{p}.conv1d.weight"][:, 0, :]  # [conv_dim, K]; column K-1 hits the current token
        a_log, dt_bias = w[f"{p}.A_log"], w[f"{p}.dt_bias"]
        norm_w = w[f"{p}.norm.weight"]  # CONVENTION: gated norm is plain x̂ * w (NOT 1 + w)
        S = self.ssm_state[i]
        out = torch.zeros(T, hv, dv, dtype=DT)
        for t in range(T):
            window = torch.cat([self.conv_state[i], mixed[t : t + 1]], dim=0)  # [K, C]
            self.conv_state[i] = window[1:]
            y = silu((window.T * conv_w).sum(-1))  # depthwise causal conv + SiLU
            qh = y[: hk * dk].view(hk, dk)
            kh = y[hk * dk : 2 * hk * dk].view(hk, dk)
            vh = y[2 * hk * dk :].view(hv, dv)
            qh = qh / torch.sqrt((qh * qh).sum(-1, keepdim=True) + 1e-6) / math.sqrt(dk)
            kh = kh / torch.sqrt((kh * kh).sum(-1, keepdim=True) + 1e-6)
            g = -torch.exp(a_log) * torch.nn.functional.softplus(a[t] + dt_bias)
            beta = torch.sigmoid(b[t])
            for hh in range(hv):
                j = hh // r  # CONVENTION: consecutive value heads share a key head
                S[hh] = S[hh] * torch.exp(g[hh])
                delta = (vh[hh] - kh[j] @ S[hh]) * beta[hh]
                S[hh] = S[hh] + torch.outer(kh[j], delta)
                out[t, hh] = qh[j] @ S[hh]
        o = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps) * norm_w * silu(z)
        return o.reshape(T, hv * dv) @ w[f"{p}.out_proj.weight"].T

    # ---------------------------------------------------------------- gated attention
    def attn(self, i, h, positions):
        c, w, p = self.c, self.w, f"model.layers.{i}.self_attn"
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        T = h.shape[0]
        # CONVENTION: q_proj rows per head: [query (hd) | output gate (hd)]
        qg = (h @ w[f"{p}.q_proj.weight"].T).view(T, nh, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:].reshape(T, nh * hd)
        k = (h @ w[f"{p}.k_proj.weight"].T).view(T, nkv, hd)
        v = (h @ w[f"{p}.v_proj.weight"].T).view(T, nkv, hd)
        q = rms_1p(q, w[f"{p}.q_norm.weight"], self.eps)  # per-head RMSNorm, before RoPE
        k = rms_1p(k, w[f"{p}.k_norm.weight"], self.eps)
        # CONVENTION: partial RoPE on the FIRST rot dims of each head, rotate_half (NeoX) layout
        rp = c["rope_parameters"]
        rot = int(hd * rp["partial_rotary_factor"])
        inv = 1.0 / (rp["rope_theta"] ** (torch.arange(0, rot, 2, dtype=DT) / rot))
        fr = positions.to(DT)[:, None] * inv[None]
        cos, sin = torch.cat([fr, fr], -1).cos()[:, None], torch.cat([fr, fr], -1).sin()[:, None]

        def rope(x):
            xr, xp = x[..., :rot], x[..., rot:]
            x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
            return torch.cat([xr * cos + torch.cat([-x2, x1], -1) * sin, xp], -1)

        q, k = rope(q), rope(k)
        ks, vs = self.kv[i]
        ks.append(k)
        vs.append(v)
        K_, V_ = torch.cat(ks), torch.cat(vs)  # [S, nkv, hd]
        S_ = K_.shape[0]
        grp = nh // nkv  # CONVENTION: query head n uses kv head n // grp
        K_, V_ = K_.repeat_interleave(grp, 1), V_.repeat_interleave(grp, 1)
        sc = torch.einsum("tnd,snd->nts", q, K_) / math.sqrt(hd)
        mask = torch.arange(S_)[None, :] > (S_ - T + torch.arange(T))[:, None]
        sc = sc.masked_fill(mask[None], float("-inf"))
        o = torch.einsum("nts,snd->tnd", torch.softmax(sc, -1), V_).reshape(T, nh * hd)
        return (o * torch.sigmoid(gate)) @ w[f"{p}.o_proj.weight"].T

    # ---------------------------------------------------------------- MLP / MoE
    def mlp(self, i, h):
        c, w, p = self.c, self.w, f"model.layers.{i}.mlp"
        if f"{p}.gate.weight" not in w:
            return (silu(h @ w[f"{p}.gate_proj.weight"].T) * (h @ w[f"{p}.up_proj.weight"].T)) @ w[
                f"{p}.down_proj.weight"
            ].T
        E, k = c["num_experts"], c["num_experts_per_tok"]
        gate_w, up_w, down_w = expert_weights(w, p, E)
        probs = torch.softmax(h @ w[f"{p}.gate.weight"].T, -1)  # CONVENTION: softmax over ALL experts first
        top, idx = torch.topk(probs, k, -1)
        if c.get("norm_topk_prob", True):  # Qwen3.5-MoE has no field: always renormalised
            top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for t in range(h.shape[0]):
            for s in range(k):
                e = idx[t, s]
                y = (silu(gate_w[e] @ h[t]) * (up_w[e] @ h[t])) @ down_w[e].T
                out[t] += top[t, s] * y
        shared = (silu(h @ w[f"{p}.shared_expert.gate_proj.weight"].T) * (h @ w[f"{p}.shared_expert.up_proj.weight"].T)) @ w[
            f"{p}.shared_expert.down_proj.weight"
        ].T
        # CONVENTION: shared expert scaled by a per-token scalar sigmoid gate [1, H]
        return out + torch.sigmoid(h @ w[f"{p}.shared_expert_gate.weight"].T) * shared

    # ---------------------------------------------------------------- model
    def forward(self, ids):
        c, w = self.c, self.w
        T = len(ids)
        positions = torch.arange(self.pos, self.pos + T)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        for i, lt in enumerate(c["layer_types"]):
            p = f"model.layers.{i}"
            h = rms_1p(x, w[f"{p}.input_layernorm.weight"], self.eps)
            x = x + (self.gdn(i, h) if lt == "linear_attention" else self.attn(i, h, positions))
            h = rms_1p(x, w[f"{p}.post_attention_layernorm.weight"], self.eps)
            x = x + self.mlp(i, h)
        self.pos += T
        return rms_1p(x, w["model.norm.weight"], self.eps) @ self.lm_head.T


def check(name):
    d = os.path.join(ROOT, "models", "fixtures", name)
    m = Model(d)
    with safe_open(os.path.join(ROOT, "models", "goldens", "models", f"{name}.safetensors"), "pt") as f:
        g = {k: f.get_tensor(k) for k in f.keys()}
    res = {}
    short = g["short_ids"].tolist()
    m.reset()
    res["short_logits"] = (m.forward(short) - g["short_logits"].to(DT)).abs().max().item()
    # cached decode: prefill, then one token at a time with the conv / SSM / KV state
    nxt = g["short_greedy_ids"].tolist()
    m.reset()
    steps = [m.forward(short)[-1]]
    for t in range(1, len(nxt)):
        steps.append(m.forward([nxt[t - 1]])[-1])
    steps = torch.stack(steps)
    res["short_stepwise_logits"] = (steps - g["short_stepwise_logits"].to(DT)).abs().max().item()
    res["short_greedy_ids_match"] = steps.argmax(-1).tolist() == nxt
    m.reset()
    long = g["long_ids"].tolist()
    lg = m.forward(long)
    res["long_last_logits"] = (lg[-1] - g["long_last_logits"].to(DT)).abs().max().item()
    lnxt = g["long_greedy_ids"].tolist()
    steps = [lg[-1]] + [m.forward([lnxt[t - 1]])[-1] for t in range(1, len(lnxt))]
    steps = torch.stack(steps)
    res["long_stepwise_logits"] = (steps - g["long_stepwise_logits"].to(DT)).abs().max().item()
    res["long_greedy_ids_match"] = steps.argmax(-1).tolist() == lnxt
    print(f"{name}: float64 reference vs HF float32 goldens (max abs diff)")
    for k, v in res.items():
        print(f"   {k:24s} {v}")
    ok = all(v is True or (isinstance(v, float) and v < 1e-3) for v in res.values())
    assert ok, f"{name}: reference does not match the goldens"
    return res


def main():
    for name in sys.argv[1:] or FIXTURES:
        check(name)


if __name__ == "__main__":
    main()
