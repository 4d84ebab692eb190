#!/usr/bin/env python3
"""Make GGUF versions of the tiny fixtures with llama.cpp's own tools, and dequantization goldens.

How to run (from the repository root; offline, seeded, deterministic, ~2 minutes on 2 cores)::

    PEER_DIR=/work/peers /work/peers/venv/bin/python models/tools/gen_gguf_fixtures.py

``PEER_DIR`` is the scratch directory built by ``/work/shared/peers/setup.sh``: llama.cpp from
the llama-cpp-python 0.3.36 sdist (= upstream llama.cpp 0c1e57098) in ``$PEER_DIR/llama.cpp``
with ``build/bin/llama-quantize`` (plus llama-bench / llama-completion) built, and a venv with
torch, transformers 5.24, numpy, safetensors and that tree's ``gguf-py`` (0.19.0).

What it makes
-------------
``models/fixtures/gguf/``
  * ``<fixture>-f32.gguf`` for qwen3-next-tiny, qwen3.5-tiny and qwen3.5-moe-tiny: llama.cpp's
    ``convert_hf_to_gguf.py --no-mtp --outtype f32`` run on ``models/fixtures/<fixture>``;
  * ``<fixture>-q8_0.gguf`` and ``<fixture>-q4_k_m.gguf`` for qwen3.5-tiny and
    qwen3-next-tiny: ``llama-quantize <f32.gguf> <out> Q8_0|Q4_K_M 2``;
  * ``qwen3.5-tiny-f32.layout.txt`` and ``qwen3-next-tiny-f32.layout.txt``: every tensor
    (name, ggml type, ggml dims ``ne``, byte offset and size) and every metadata key with its
    type and value (arrays: length, the first 5 and the last 5 entries), read back with GGUFReader;
  * ``README.md``: what each file is, commands, tensor types per file, sizes, the llama.cpp
    load check and the HF -> GGUF transformations (each checked here, see below).

``models/goldens/gguf/dequant.gguf``
  For each of F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K: a tensor ``<TYPE>`` of 2
  rows x 512 columns (ggml ne = [512, 2]) whose raw bytes come from
  ``numpy.random.default_rng(DEQUANT_SEED)`` except the f16 scale fields of every block
  (``d``, and ``m`` / ``dmin`` where the type has one), which are set to random f16 values of
  magnitude uniform in [0.02, 0.5] with random sign, so every dequantized value is finite.
  For F32/F16/BF16 the bit patterns are random too, with any Inf/NaN pattern made finite by
  clearing the top exponent bit (this keeps subnormals, zeros and the full finite range).
  Next to each, ``<TYPE>.expected`` (F32, same logical shape) holds
  ``gguf.quants.dequantize(raw, TYPE)`` of exactly those bytes.  Those expectations are
  cross-checked bit-for-bit against ggml's own C ``to_float`` (ggml_get_type_traits) from
  ``$PEER_DIR/llama.cpp/build/bin/libggml-base.so`` when that library is present.

The pre-tokenizer workaround
----------------------------
``convert_hf_to_gguf.py`` identifies a BPE pre-tokenizer by hashing the token ids a model's
tokenizer gives for a fixed check string and looking the hash up in a table of known models
(``TextModel.get_vocab_base_pre`` in ``conversion/base.py``).  Our 1k-token tokenizer
(``models/tokenizers/tiny-bpe-1k``, trained by us) is in no table, so the unmodified converter
stops with "BPE pre-tokenizer was not recognized".  The tokenizer uses exactly Qwen2's
pre-tokenizer regex (the one llama.cpp calls ``qwen2``; ``src/llama-vocab.cpp``
LLAMA_VOCAB_PRE_TYPE_QWEN2 quotes it), so this script imports the converter in a child Python
process (``--convert``), replaces ``get_vocab_base_pre`` with a function returning ``"qwen2"``
and then runs the converter's own ``main()``.  llama.cpp's source is not modified.

Checks (each failure raises, except the llama.cpp load check, which is only reported)
------------------------------------------------------------------------------------------
  * every f32 GGUF tensor equals (bit for bit) the HF tensor after the transformation the
    converter's source says it applies (``expected_gguf_tensors``); no tensor is missing or extra;
  * the converter is deterministic: a second conversion is byte-identical;
  * every output reads back with GGUFReader; every dequant golden round-trips;
  * llama.cpp load check: llama-bench (``-p 8 -n 4 -t 1 -r 1``) on every GGUF file, and
    llama-completion greedy on the f32 files compared with the HF greedy goldens in
    ``models/goldens/models``.  Results go to the README whatever they are.  Files that hit
    ggml's M-RoPE section assert are also run from a temporary copy (never committed) whose
    ``rope.dimension_sections`` fit the 4 rotary dims, and quantized ones also from a copy
    dequantized to F32, to tell weight rounding from kernel effects.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO / "models" / "fixtures"
OUT_DIR = FIXTURES_DIR / "gguf"
GOLDEN_DIR = REPO / "models" / "goldens" / "gguf"
HF_GOLDENS = REPO / "models" / "goldens" / "models"

FIXTURES = ["qwen3-next-tiny", "qwen3.5-tiny", "qwen3.5-moe-tiny"]
QUANTIZED = ["qwen3.5-tiny", "qwen3-next-tiny"]
QUANT_TYPES = [("q8_0", "Q8_0"), ("q4_k_m", "Q4_K_M")]
LAYOUT_FOR = ["qwen3.5-tiny", "qwen3-next-tiny"]

DEQUANT_SEED = 20261130
DEQUANT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ROWS, COLS = 2, 512
GOLDEN_SOURCE = ("gguf-py {ver} (llama.cpp upstream 0c1e57098, vendored in the llama-cpp-python 0.3.36 "
                 "sdist): gguf.quants.dequantize; written by models/tools/gen_gguf_fixtures.py, "
                 "numpy.random.default_rng({seed})")

PEER_DIR = Path(os.environ.get("PEER_DIR", "")).resolve() if os.environ.get("PEER_DIR") else None


def peer_paths():
    if PEER_DIR is None:
        sys.exit("set PEER_DIR (see the docstring)")
    llama = PEER_DIR / "llama.cpp"
    return llama, llama / "gguf-py", llama / "build" / "bin"


def import_gguf():
    _, gguf_py, _ = peer_paths()
    sys.path.insert(0, str(gguf_py))
    import gguf  # noqa: E402
    assert Path(gguf.__file__).resolve().is_relative_to(gguf_py.resolve()), gguf.__file__
    return gguf


def gguf_py_version() -> str:
    _, gguf_py, _ = peer_paths()
    m = re.search(r'^version\s*=\s*"([^"]+)"', (gguf_py / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else "unknown"


# --------------------------------------------------------------------------------------------
# 1. conversion (child process: imports llama.cpp's converter, patches the pre-tokenizer check)
# --------------------------------------------------------------------------------------------

def convert_child(src: str, out: str) -> None:
    """Runs inside a child Python process: llama.cpp's convert_hf_to_gguf.main(), unmodified
    except for TextModel.get_vocab_base_pre."""
    llama, gguf_py, _ = peer_paths()
    sys.path.insert(0, str(gguf_py))
    sys.path.insert(0, str(llama))
    import conversion.base as conv_base  # llama.cpp/conversion/base.py

    def get_vocab_base_pre(self, tokenizer) -> str:
        # WHY: llama.cpp names BPE pre-tokenizers by a sha256 of the token ids that a known
        # model's tokenizer produces for a check string.  models/tokenizers/tiny-bpe-1k is our
        # own 1k-token BPE, so its hash is in no table and the converter would raise
        # "BPE pre-tokenizer was not recognized".  Its pre-tokenizer is Qwen2's regex
        # (Split, Isolated) + ByteLevel(use_regex=false) with an NFC normaliser, i.e. what
        # llama.cpp calls "qwen2" (LLAMA_VOCAB_PRE_TYPE_QWEN2), so say exactly that.
        return "qwen2"

    assert "get_vocab_base_pre" in conv_base.TextModel.__dict__
    conv_base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf  # llama.cpp/convert_hf_to_gguf.py

    sys.argv = ["convert_hf_to_gguf.py", src, "--no-mtp", "--outtype", "f32", "--outfile", out]
    convert_hf_to_gguf.main()


def convert(fixture: str, out: Path) -> str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--convert", str(FIXTURES_DIR / fixture), str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    log = p.stdout + p.stderr
    if p.returncode != 0 or not out.exists():
        print(log[-6000:])
        raise SystemExit(f"conversion of {fixture} failed (rc {p.returncode})")
    return log


# --------------------------------------------------------------------------------------------
# 1b. what the converter must have done (from conversion/qwen.py, checked bit for bit)
# --------------------------------------------------------------------------------------------

def load_hf(fixture: str) -> tuple[dict, dict]:
    """config.json and the HF tensors as torch tensors in their file dtype (bf16 for qwen3.5-tiny)."""
    import json
    from safetensors import safe_open

    d = FIXTURES_DIR / fixture
    cfg = json.loads((d / "config.json").read_text())
    out: dict = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                out[k] = sf.get_tensor(k)
    return cfg, out


def v_tiled(x: np.ndarray, axis: int, hk: int, r: int, hd: int) -> np.ndarray:
    """_LinearAttentionVReorderBase._reorder_v_heads: value heads from grouped order
    (head j*r+i, i.e. grouped by key head j) to tiled order (new head i*hk+j)."""
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    x = x.reshape(hk, r, hd, *rest).swapaxes(0, 1).reshape(hk * r * hd, *rest)
    return np.ascontiguousarray(np.moveaxis(x, 0, axis))


def expected_gguf_tensors(fixture: str) -> dict[str, np.ndarray]:
    """GGUF name -> array in numpy order (= reversed ggml ne, i.e. HF [out, in])."""
    cfg, hf = load_hf(fixture)
    next_ = cfg["model_type"] == "qwen3_next"
    hk, hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    r = hv // hk
    # Qwen3.5 / 3.5-MoE (class _LinearAttentionVReorderBase) reorder V heads to tiled order
    # when Hk != Hv; Qwen3NextModel does not (llama.cpp's qwen3next graph repeats q/k
    # interleaved instead, qwen35's tiled).
    reorder = (not next_) and hk != hv
    vt = (lambda x, axis, hd: v_tiled(x, axis, hk, r, hd)) if reorder else (lambda x, axis, hd: x)
    exp: dict[str, np.ndarray] = {}
    used = set()

    import torch

    def take(name, op=None):
        # Element-wise ops (+1, -exp) in torch float32 like the converter: it upcasts every bf16
        # tensor to f32 BEFORE modify_tensors (conversion/base.py), so 1 + w is exact in f32 (not
        # rounded to bf16), and -exp is torch's f32 exp (numpy's differs by an ulp sometimes).
        used.add(name)
        t = hf[name].to(torch.float32)
        if op is not None:
            t = op(t)
        return t.numpy()

    plus1 = lambda w: w + 1  # zero-centred RMSNorm weight -> 1 + w
    exp["token_embd.weight"] = take("model.embed_tokens.weight")
    exp["output_norm.weight"] = take("model.norm.weight", plus1)
    if "lm_head.weight" in hf:
        exp["output.weight"] = take("lm_head.weight")
    for L, lt in enumerate(cfg["layer_types"]):
        p, b = f"model.layers.{L}.", f"blk.{L}."
        exp[b + "attn_norm.weight"] = take(p + "input_layernorm.weight", plus1)
        exp[b + "post_attention_norm.weight"] = take(p + "post_attention_layernorm.weight", plus1)
        if lt == "linear_attention":
            a = p + "linear_attn."
            exp[b + "ssm_a"] = vt(take(a + "A_log", lambda t: -torch.exp(t)), 0, 1)
            exp[b + "ssm_dt.bias"] = vt(take(a + "dt_bias"), 0, 1)
            conv = take(a + "conv1d.weight")[:, 0, :]  # [C, 1, K] -> [C, K]
            qk = 2 * hk * dk
            exp[b + "ssm_conv1d.weight"] = np.concatenate([conv[:qk], vt(conv[qk:], 0, dv)], 0)
            exp[b + "ssm_norm.weight"] = take(a + "norm.weight")  # gated norm: no +1
            exp[b + "ssm_out.weight"] = vt(take(a + "out_proj.weight"), 1, dv)
            if next_:
                w = take(a + "in_proj_qkvz.weight").reshape(hk, 2 * dk + 2 * r * dv, -1)
                q, k, v, z = np.split(w, [dk, 2 * dk, 2 * dk + r * dv], axis=1)
                flat = lambda t: t.reshape(-1, t.shape[-1])
                exp[b + "attn_qkv.weight"] = np.concatenate([flat(q), flat(k), flat(v)], 0)
                exp[b + "attn_gate.weight"] = flat(z)
                exp[b + "ssm_ba.weight"] = take(a + "in_proj_ba.weight")  # unchanged: per key head [b(r) | a(r)]
            else:
                w = take(a + "in_proj_qkv.weight")
                exp[b + "attn_qkv.weight"] = np.concatenate([w[:qk], vt(w[qk:], 0, dv)], 0)
                exp[b + "attn_gate.weight"] = vt(take(a + "in_proj_z.weight"), 0, dv)
                exp[b + "ssm_beta.weight"] = vt(take(a + "in_proj_b.weight"), 0, 1)
                exp[b + "ssm_alpha.weight"] = vt(take(a + "in_proj_a.weight"), 0, 1)
        else:
            s = p + "self_attn."
            for hfn, gn in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")]:
                exp[b + gn + ".weight"] = take(s + hfn + ".weight")
            exp[b + "attn_q_norm.weight"] = take(s + "q_norm.weight", plus1)
            exp[b + "attn_k_norm.weight"] = take(s + "k_norm.weight", plus1)
        m = p + "mlp."
        if m + "gate.weight" in hf:  # sparse MoE
            exp[b + "ffn_gate_inp.weight"] = take(m + "gate.weight")
            n_exp = cfg["num_experts"]
            for hfn, gn in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")]:
                exp[b + gn + ".weight"] = np.stack([take(f"{m}experts.{e}.{hfn}.weight") for e in range(n_exp)], 0)
            for hfn, gn in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")]:
                exp[b + gn + ".weight"] = take(f"{m}shared_expert.{hfn}.weight")
            exp[b + "ffn_gate_inp_shexp.weight"] = take(m + "shared_expert_gate.weight")
        else:
            for hfn, gn in [("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
                exp[b + gn + ".weight"] = take(f"{m}{hfn}.weight")
    unused = set(hf) - used
    assert not unused, f"HF tensors not accounted for: {sorted(unused)}"
    return exp


def check_conversion(gguf, fixture: str, path: Path) -> None:
    exp = expected_gguf_tensors(fixture)
    rd = gguf.GGUFReader(path)
    got = {t.name: t for t in rd.tensors}
    assert set(got) == set(exp), f"{fixture}: extra {sorted(set(got) - set(exp))}, missing {sorted(set(exp) - set(got))}"
    for name, want in exp.items():
        t = got[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (name, t.tensor_type)
        assert list(t.shape) == list(reversed(want.shape)), (name, list(t.shape), want.shape)
        arr = np.asarray(t.data).reshape(want.shape)
        assert arr.dtype == np.float32 and np.array_equal(arr.view(np.uint32), want.astype(np.float32).view(np.uint32)), \
            f"{fixture}: {name} differs from the expected transformation"
    print(f"  {fixture}: all {len(exp)} tensors equal the expected HF transformation bit for bit")


# --------------------------------------------------------------------------------------------
# 2. llama.cpp binaries
# --------------------------------------------------------------------------------------------

def run(cmd: list[str], timeout: int = 300) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return 124, f"timeout after {timeout}s"


def quantize(src: Path, dst: Path, qtype: str) -> str:
    _, _, bindir = peer_paths()
    rc, log = run([str(bindir / "llama-quantize"), str(src), str(dst), qtype, "2"])
    if rc != 0 or not dst.exists():
        print(log[-6000:])
        raise SystemExit(f"llama-quantize {qtype} of {src.name} failed (rc {rc})")
    return log


def fallback_lines(log: str) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if "fallback" in ln.lower() or "not divisible" in ln.lower()]


def error_lines(log: str) -> str:
    """The informative lines of a failed llama.cpp run (loader errors, GGML_ASSERT)."""
    keep = []
    for ln in log.splitlines():
        if re.search(r"error loading model|GGML_ASSERT|failed to load|unable to|check_tensor_dims|error:", ln):
            ln = re.sub(r"^[\d.]+ [EIWD] ", "", ln.strip())  # drop the log timestamp prefix
            ln = ln.replace(str(REPO) + "/", "").replace(str(PEER_DIR), "$PEER_DIR")
            if ln not in keep:
                keep.append(ln)
    return " / ".join(keep[:3]) if keep else (log.strip().splitlines() or ["no output"])[-1]


def bench_check(path: Path) -> dict:
    """llama-bench -p 8 -n 4: loads the model, runs an 8-token prompt and 4 generated tokens."""
    _, _, bindir = peer_paths()
    exe = bindir / "llama-bench"
    if not exe.exists():
        return {"ok": False, "summary": "llama-bench not built"}
    # one thread: a load check, not a benchmark; ggml's spinning thread pool can crawl for
    # minutes on a 2-core host that is busy with something else.  One retry after a timeout.
    for _ in range(2):
        rc, log = run([str(exe), "-m", str(path), "-p", "8", "-n", "4", "-t", "1", "-r", "1", "-o", "md"], timeout=120)
        if rc != 124:
            break
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in log.splitlines()
            if ln.startswith("|") and re.search(r"\|\s*(pp8|tg4)\s*\|", ln)]
    ok = rc == 0 and sorted(r[-2] for r in rows) == ["pp8", "tg4"]
    if ok:
        summary = f"OK: loads, pp8 and tg4 run (llama-bench model column `{rows[0][0]}`, size {rows[0][1]})"
    else:
        summary = f"FAILS (rc {rc}): {error_lines(log)}"
    return {"ok": ok, "summary": summary}


def gpt2_bytes(tok_str: str) -> bytes:
    """Bytes of a byte-level BPE token string (GPT-2's bytes_to_unicode, inverted)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    dec = {chr(c): b for b, c in zip(bs, cs)}
    return bytes(dec[ch] for ch in tok_str)


def trim_partial_utf8(b: bytes) -> bytes:
    """Drop a trailing, incomplete UTF-8 sequence (llama.cpp may or may not print the first
    bytes of a character whose remaining bytes would come from the next token)."""
    for k in range(1, min(3, len(b)) + 1):
        c = b[-k]
        if c < 0x80:
            return b
        if c >= 0xC0:
            need = 2 if c < 0xE0 else 3 if c < 0xF0 else 4
            return b[:-k] if need > k else b
    return b


def completion_check(path: Path, fixture: str) -> dict:
    """Greedy continuation by llama-completion vs HF's greedy golden (short prompt), compared as
    bytes, up to the first special token (llama.cpp stops at end-of-generation there)."""
    _, _, bindir = peer_paths()
    exe = bindir / "llama-completion"
    if not exe.exists():
        return {"ok": False, "summary": "llama-completion not built"}
    import json
    from safetensors import safe_open

    with safe_open(HF_GOLDENS / f"{fixture}.safetensors", "np") as f:
        prompt = f.metadata()["short_text"]
        ids = [int(x) for x in f.get_tensor("short_greedy_ids")]
    vocab = {i: t for t, i in json.loads((FIXTURES_DIR / fixture / "tokenizer.json").read_text())["model"]["vocab"].items()}
    want = b""
    for i in ids:
        if i not in vocab:  # added (special) token: <|endoftext|>, <|im_start|>, <|im_end|>
            break
        want += gpt2_bytes(vocab[i])
    cmd = [str(exe), "-m", str(path), "-p", prompt, "-n", str(len(ids)), "--temp", "0", "--top-k", "1",
           "-t", "1", "-c", "64", "-no-cnv", "--no-warmup", "--simple-io", "-s", "1"]
    for _ in range(2):  # one retry if the run times out or ends without its perf report
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
            rc, out, err = p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            rc, out, err = 124, b"", "timeout after 120s"
        if rc not in (0, 124) or (rc == 0 and "common_perf_print" in err):
            break
    if rc == 124:
        return {"ok": False, "summary": "FAILS: timeout (twice)"}
    if rc != 0:
        return {"ok": False, "summary": f"FAILS (rc {rc}): {error_lines(err + out.decode('utf-8', 'replace'))}"}
    pb = prompt.encode()
    got = out[out.find(pb) + len(pb):] if pb in out else out
    got = trim_partial_utf8(got.split(b" [end of text]")[0].rstrip(b"\n"))
    want = trim_partial_utf8(want)
    ok = got == want
    show = lambda b: repr(b.decode("utf-8", "replace"))
    summary = (f"OK: greedy continuation {show(got)} = HF greedy golden (byte-identical, "
               f"{len([i for i in ids if i in vocab])} tokens before the first special token)") if ok else \
        f"DIFFERS: llama.cpp {show(got)} vs HF greedy {show(want)}"
    return {"ok": ok, "summary": summary, "got": got, "want": want}


def sections_patched_copy(gguf, src: Path, dst: Path) -> list[int] | None:
    """For the load check only (never committed): a copy of a qwen35/qwen35moe file whose
    rope.dimension_sections fit its rope.dimension_count.  The converter writes the default
    [11, 11, 10, 0] (sum 32 = 64 rotary dims / 2, real Qwen3.5) when config.json has no
    mrope_section; the tiny fixtures rotate 4 dims (2 pairs), and ggml's M-RoPE asserts
    sum(sections) <= rotary dims.  With text-only positions the t/h/w rows are equal, so any
    valid split gives the same rotation as HF's."""
    rd = gguf.GGUFReader(src)
    arch = rd.fields["general.architecture"].contents()
    key = f"{arch}.rope.dimension_sections"
    if key not in rd.fields:
        return None
    pairs = rd.fields[f"{arch}.rope.dimension_count"].contents() // 2
    cur = rd.fields[key].contents()
    if sum(cur) <= pairs:
        return None
    new = [pairs - pairs // 2, pairs // 2, 0, 0]
    dst.write_bytes(src.read_bytes())
    rw = gguf.GGUFReader(dst, "r+")
    f = rw.fields[key]
    for i, idx in enumerate(f.data):
        f.parts[idx][0] = new[i]
    rw.data.flush()
    del rw, f
    assert gguf.GGUFReader(dst).fields[key].contents() == new
    return new


def dequantized_copy(gguf, src: Path, dst: Path) -> None:
    """For the load check only (never committed): src with every tensor dequantized to F32 by
    gguf-py (same metadata, general.file_type 0), to tell weight rounding from kernel effects."""
    rd = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), rd.fields["general.architecture"].contents())
    for name, f in rd.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val = 0 if name == "general.file_type" else f.contents()
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub_type=sub)
    for t in rd.tensors:
        a = np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), np.float32)
        w.add_tensor(t.name, np.ascontiguousarray(a.reshape([int(x) for x in reversed(t.shape)])))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------
# 3. dequantization goldens
# --------------------------------------------------------------------------------------------

def scale_offsets(gguf, tname: str) -> list[int]:
    """Byte offsets, inside one block, of its f16 scale fields (d, and m / dmin)."""
    QK_K = gguf.QK_K
    offs = {
        "Q4_0": [0], "Q5_0": [0], "Q8_0": [0],        # d
        "Q4_1": [0, 2], "Q5_1": [0, 2],               # d, m
        "Q4_K": [0, 2], "Q5_K": [0, 2],               # d, dmin
        "Q6_K": [QK_K // 2 + QK_K // 4 + QK_K // 16],  # ql, qh, int8 scales, then d
    }[tname]
    _, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[tname]]
    assert all(o + 2 <= type_size for o in offs)
    if tname == "Q6_K":
        assert offs[0] + 2 == type_size
    return offs


def finite_bits(rng, n: int, bits: int, exp_bits: int) -> np.ndarray:
    dt = {16: np.uint16, 32: np.uint32}[bits]
    x = rng.integers(0, 1 << bits, size=n, dtype=np.uint64).astype(dt)
    mant = bits - 1 - exp_bits
    exp_mask = dt(((1 << exp_bits) - 1) << mant)
    top = dt(1 << (bits - 2))  # the most significant exponent bit
    nonfinite = (x & exp_mask) == exp_mask
    return np.where(nonfinite, x & ~top, x).astype(dt)


def make_dequant_goldens(gguf, path: Path) -> dict:
    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(DEQUANT_SEED)
    w = gguf.GGUFWriter(str(path), "dequant-golden")
    w.add_string("golden.source", GOLDEN_SOURCE.format(ver=gguf_py_version(), seed=DEQUANT_SEED))
    w.add_uint32("golden.seed", DEQUANT_SEED)
    w.add_string("golden.layout", "for each TYPE: tensor TYPE (raw blocks, ggml ne [512, 2]) and "
                                  "TYPE.expected (F32, ne [512, 2]) = gguf.quants.dequantize(TYPE bytes)")
    made = {}
    for tname in DEQUANT_TYPES:
        qt = Q[tname]
        n = ROWS * COLS
        if tname == "F32":
            raw = finite_bits(rng, n, 32, 8).view(np.float32).reshape(ROWS, COLS)
            w.add_tensor(tname, raw)
            deq = gguf.quants.dequantize(raw.view(np.uint8).reshape(ROWS, -1), qt)
        elif tname == "F16":
            raw = finite_bits(rng, n, 16, 5).view(np.float16).reshape(ROWS, COLS)
            w.add_tensor(tname, raw)
            deq = gguf.quants.dequantize(raw, qt)
        elif tname == "BF16":
            raw = finite_bits(rng, n, 16, 8).view(np.uint8).reshape(ROWS, 2 * COLS)
            w.add_tensor(tname, raw, raw_dtype=qt)
            deq = gguf.quants.dequantize(raw, qt)
        else:
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            nb = n // bs
            blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
            for off in scale_offsets(gguf, tname):
                mag = rng.uniform(0.02, 0.5, size=nb)
                sign = np.where(rng.integers(0, 2, size=nb) == 1, -1.0, 1.0)
                blocks[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nb, 2)
            raw = blocks.reshape(ROWS, COLS // bs * ts)
            assert tuple(gguf.quant_shape_to_byte_shape((ROWS, COLS), qt)) == raw.shape
            w.add_tensor(tname, raw, raw_dtype=qt)
            deq = gguf.quants.dequantize(raw, qt)
        deq = np.ascontiguousarray(deq, dtype=np.float32).reshape(ROWS, COLS)
        assert np.isfinite(deq).all(), tname
        w.add_tensor(tname + ".expected", deq)
        made[tname] = (np.ascontiguousarray(raw).view(np.uint8).reshape(-1).copy(), deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return made


def check_dequant_goldens(gguf, path: Path, made: dict) -> list[str]:
    rd = gguf.GGUFReader(path)
    assert rd.fields["general.architecture"].contents() == "dequant-golden"
    ts = {t.name: t for t in rd.tensors}
    assert len(ts) == 2 * len(DEQUANT_TYPES)
    notes = []
    for tname, (raw, deq) in made.items():
        t, e = ts[tname], ts[tname + ".expected"]
        assert t.tensor_type.name == tname and list(t.shape) == [COLS, ROWS], (tname, t.tensor_type, t.shape)
        assert e.tensor_type.name == "F32" and list(e.shape) == [COLS, ROWS]
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), raw), tname
        back = gguf.quants.dequantize(np.asarray(t.data).view(np.uint8).reshape(ROWS, -1), t.tensor_type)
        assert np.array_equal(np.asarray(back, np.float32).reshape(ROWS, COLS).view(np.uint32), deq.view(np.uint32)), tname
        assert np.array_equal(np.asarray(e.data).view(np.uint32).reshape(ROWS, COLS), deq.view(np.uint32)), tname
    # independent check: ggml's C reference dequantizers (to_float of ggml_get_type_traits)
    _, _, bindir = peer_paths()
    lib_path = bindir / "libggml-base.so"
    if not lib_path.exists():
        notes.append("libggml-base.so not found: no cross-check against ggml's C dequantizers")
        return notes

    class Traits(ctypes.Structure):
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]

    lib = ctypes.CDLL(str(lib_path))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)
    for tname, (raw, deq) in made.items():
        qt = gguf.GGMLQuantizationType[tname]
        tr = lib.ggml_get_type_traits(int(qt)).contents
        assert tr.type_name.decode().upper() == tname, (tr.type_name, tname)
        bs, tsz = gguf.GGML_QUANT_SIZES[qt]
        assert (tr.blck_size, tr.type_size) == (bs, tsz), tname
        if tname == "F32":  # ggml has no to_float for F32 (identity)
            continue
        assert tr.to_float, tname
        buf = np.ascontiguousarray(raw)
        out = np.empty(ROWS * COLS, np.float32)
        to_float_t(tr.to_float)(buf.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ROWS * COLS)
        same = np.array_equal(out.view(np.uint32), deq.reshape(-1).view(np.uint32))
        if not same:
            diff = np.abs(out - deq.reshape(-1)).max()
            raise SystemExit(f"{tname}: gguf-py and ggml's C dequantizer disagree (max abs diff {diff})")
    notes.append("every `.expected` is bit-identical to ggml's C reference dequantizer "
                 "(`ggml_get_type_traits(type)->to_float` in libggml-base.so of the same llama.cpp tree; "
                 "F32 has none, it is the identity)")
    return notes


# --------------------------------------------------------------------------------------------
# 4. read-back, listings, README
# --------------------------------------------------------------------------------------------

def field_value(gguf, f):
    V = gguf.GGUFValueType
    main = f.types[0]
    if main == V.ARRAY:
        sub = f.types[-1]
        n = len(f.data)
        head = f.contents(slice(0, 5))
        tail = f" last5={f.contents(slice(max(n - 5, 5), n))!r}" if n > 5 else ""
        return f"{V(main).name}[{V(sub).name}] len={n} first5={head!r}{tail}"
    return f"{V(main).name} = {f.contents()!r}"


def layout_listing(gguf, path: Path) -> str:
    rd = gguf.GGUFReader(path)
    lines = [f"# {path.name}: GGUF layout read back with gguf-py {gguf_py_version()} GGUFReader",
             f"# generated by models/tools/gen_gguf_fixtures.py; {path.stat().st_size} bytes, "
             f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}",
             f"# {len(rd.fields)} metadata fields (including the GGUF.* header pseudo-fields), {len(rd.tensors)} tensors",
             f"# tensor data alignment {rd.alignment}, data section starts at byte {rd.data_offset}",
             "",
             "## metadata (key: TYPE = value; arrays: ARRAY[TYPE] len=N first5=[...] last5=[...])"]
    for name, f in rd.fields.items():
        lines.append(f"{name}: {field_value(gguf, f)}")
    lines += ["", "## tensors (file order). ne = ggml dims, fastest first (= reversed numpy / PyTorch shape);"
                  " offset = bytes from the data section start"]
    w = max(len(t.name) for t in rd.tensors)
    for t in rd.tensors:
        ne = "[" + ", ".join(str(int(x)) for x in t.shape) + "]"
        lines.append(f"{t.name:<{w}}  {t.tensor_type.name:<5}  ne={ne:<14} n_elements={t.n_elements:<7} "
                     f"n_bytes={t.n_bytes:<7} offset={t.data_offset - rd.data_offset}")
    return "\n".join(lines) + "\n"


def type_summary(gguf, path: Path) -> collections.Counter:
    return collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)


def layer_types_of(gguf, path: Path) -> dict[str, dict[int, str]]:
    rd = gguf.GGUFReader(path)
    out: dict[str, dict[int, str]] = collections.defaultdict(dict)
    for t in rd.tensors:
        m = re.match(r"^blk\.(\d+)\.(.*)$", t.name)
        if m:
            out["blk.N." + m.group(2)][int(m.group(1))] = t.tensor_type.name
        else:
            out[t.name][-1] = t.tensor_type.name
    return out


def fmt_types(d: dict[int, str]) -> str:
    vals = set(d.values())
    if len(vals) == 1:
        return next(iter(vals))
    by = collections.defaultdict(list)
    for L, ty in sorted(d.items()):
        by[ty].append(str(L))
    return ", ".join(f"{ty} (blk {'/'.join(ls)})" for ty, ls in sorted(by.items()))


# --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--convert", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convert:
        convert_child(*args.convert)
        return

    llama, _, bindir = peer_paths()
    gguf = import_gguf()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    conv_logs: dict[str, str] = {}

    print("== convert (llama.cpp convert_hf_to_gguf.py, pre-tokenizer patched to qwen2)")
    for fx in FIXTURES:
        out = OUT_DIR / f"{fx}-f32.gguf"
        conv_logs[fx] = convert(fx, out)
        with tempfile.TemporaryDirectory() as td:  # determinism: a second run is byte-identical
            again = Path(td) / "again.gguf"
            convert(fx, again)
            assert again.read_bytes() == out.read_bytes(), f"{fx}: converter output is not deterministic"
        check_conversion(gguf, fx, out)
        files.append(out)
    warnings = sorted({ln.split(":", 2)[-1].strip() for log in conv_logs.values() for ln in log.splitlines()
                       if ln.startswith("WARNING")})

    print("== quantize (llama-quantize)")
    quant_logs: dict[str, list[str]] = {}
    if not (bindir / "llama-quantize").exists():
        raise SystemExit(f"{bindir / 'llama-quantize'} missing: build llama.cpp first (setup.sh)")
    for fx in QUANTIZED:
        for lo, up in QUANT_TYPES:
            dst = OUT_DIR / f"{fx}-{lo}.gguf"
            log = quantize(OUT_DIR / f"{fx}-f32.gguf", dst, up)
            quant_logs[dst.name] = fallback_lines(log)
            files.append(dst)
            print(f"  {dst.name}: {len(quant_logs[dst.name])} fallback lines")

    print("== dequantization goldens")
    gpath = GOLDEN_DIR / "dequant.gguf"
    made = make_dequant_goldens(gguf, gpath)
    deq_notes = check_dequant_goldens(gguf, gpath, made)
    for n in deq_notes:
        print("  " + n)

    print("== read back + listings")
    for p in files + [gpath]:
        rd = gguf.GGUFReader(p)
        for t in rd.tensors:
            assert len(np.asarray(t.data).tobytes()) == t.n_bytes, (p, t.name)
        print(f"  {p.relative_to(REPO)}: {len(rd.tensors)} tensors, {len(rd.fields)} fields, {p.stat().st_size} bytes")
    for fx in LAYOUT_FOR:
        lp = OUT_DIR / f"{fx}-f32.layout.txt"
        lp.write_text(layout_listing(gguf, OUT_DIR / f"{fx}-f32.gguf"))
        print(f"  wrote {lp.relative_to(REPO)}")

    print("== llama.cpp load check (reported, not asserted)")
    bench = {p.name: bench_check(p) for p in files}
    compl = {fx: completion_check(OUT_DIR / f"{fx}-f32.gguf", fx) for fx in FIXTURES}
    diag = {}  # rope-sections-patched temporary copies of the files that hit the M-RoPE assert
    with tempfile.TemporaryDirectory() as td:
        for p in files:
            if "sect_dims" not in bench[p.name]["summary"]:
                continue
            tmp = Path(td) / p.name
            new = sections_patched_copy(gguf, p, tmp)
            if new is None:
                continue
            fx, _, kind = p.stem.rpartition("-")
            d = {"sections": new, "bench": bench_check(tmp), "completion": completion_check(tmp, fx)}
            if kind != "f32":
                deq = Path(td) / f"{p.stem}-dequantized-f32.gguf"
                dequantized_copy(gguf, tmp, deq)
                d["dequantized"] = completion_check(deq, fx)
            diag[p.name] = d
    for k, v in bench.items():
        print(f"  llama-bench {k}: {v['summary']}")
    for k, v in compl.items():
        print(f"  llama-completion {k}-f32.gguf: {v['summary']}")
    for k, d in diag.items():
        print(f"  {k} with rope.dimension_sections={d['sections']} (temporary copy): bench {d['bench']['summary']}")
        print(f"    completion: {d['completion']['summary']}")
        if "dequantized" in d:
            print(f"    same weights dequantized to F32 by gguf-py: {d['dequantized']['summary']}")

    write_readme(gguf, files, gpath, conv_logs, warnings, quant_logs, bench, compl, diag, deq_notes)
    print("wrote", (OUT_DIR / "README.md").relative_to(REPO))


def write_readme(gguf, files, gpath, conv_logs, warnings, quant_logs, bench, compl, diag, deq_notes) -> None:
    import importlib.metadata as md

    def size(p: Path) -> str:
        return f"{p.stat().st_size:,} B"

    L = []
    L.append("# GGUF fixtures (made by llama.cpp's own converter and quantizer)\n")
    L.append("GGUF versions of the tiny random fixtures in `models/fixtures/`, written by the tools of llama.cpp "
             "upstream 0c1e57098 (vendored in the llama-cpp-python 0.3.36 sdist), so the Rust GGUF loader "
             "can be tested against files the real ecosystem makes. The dequantization goldens live in "
             "`models/goldens/gguf/dequant.gguf` (described at the end).\n")
    L.append("Regenerate everything (deterministic; needs the peer tree of `/work/shared/peers/setup.sh`):\n")
    L.append("```sh\nPEER_DIR=/work/peers /work/peers/venv/bin/python models/tools/gen_gguf_fixtures.py   # from the repository root\n```\n")
    L.append(f"Tool versions: gguf-py {gguf_py_version()} (from `$PEER_DIR/llama.cpp/gguf-py`), "
             f"transformers {md.version('transformers')}, torch {md.version('torch')}, numpy {np.__version__}.\n")
    L.append("## Files\n")
    L.append("| file | what | made by | size | tensors |\n| --- | --- | --- | --- | --- |")
    for p in files:
        rd = gguf.GGUFReader(p)
        fx, _, kind = p.stem.rpartition("-")
        if kind == "f32":
            how = f"`convert_hf_to_gguf.py models/fixtures/{fx} --no-mtp --outtype f32 --outfile {p.relative_to(REPO)}` (pre-tokenizer patched, see below)"
            what = f"`models/fixtures/{fx}`, all tensors F32"
        else:
            up = dict(QUANT_TYPES)[kind]
            how = f"`llama-quantize models/fixtures/gguf/{fx}-f32.gguf {p.relative_to(REPO)} {up} 2`"
            what = f"{up} of `{fx}-f32.gguf`"
        L.append(f"| `{p.name}` | {what} | {how} | {size(p)} | {len(rd.tensors)} |")
    for fx in LAYOUT_FOR:
        L.append(f"| `{fx}-f32.layout.txt` | every metadata key (type, value; arrays: length, first 5 and last 5 entries) and every tensor "
                 f"(type, ggml dims, offset, bytes) of `{fx}-f32.gguf` | GGUFReader | "
                 f"{size(OUT_DIR / f'{fx}-f32.layout.txt')} | |")
    L.append("")
    L.append("GGUF dims (`ne`) are fastest-first, i.e. the reverse of the PyTorch shape: an HF `nn.Linear` weight "
             "`[out, in]` is stored with `ne = [in, out]` and the same row-major bytes.\n")

    L.append("## Tensor types in each file\n")
    L.append("| file | tensor types (count) |\n| --- | --- |")
    for p in files:
        cnt = type_summary(gguf, p)
        L.append(f"| `{p.name}` | " + ", ".join(f"{k} ×{v}" for k, v in sorted(cnt.items())) + " |")
    L.append("")
    for fx in QUANTIZED:
        names = [f"{fx}-f32.gguf"] + [f"{fx}-{lo}.gguf" for lo, _ in QUANT_TYPES]
        per = [layer_types_of(gguf, OUT_DIR / n) for n in names]
        L.append(f"Per tensor, `{fx}` (blk.N = every layer that has it unless a layer list is given):\n")
        L.append("| tensor | " + " | ".join(f"`{n}`" for n in names) + " |")
        L.append("| --- |" + " --- |" * len(names))
        for r in per[0]:
            L.append(f"| `{r}` | " + " | ".join(fmt_types(pr.get(r, {})) or "absent" for pr in per) + " |")
        L.append("")
    L.append("The tiny rows (64, 96, 128 or 32 columns) are not multiples of 256, so `llama-quantize` cannot use "
             "K-quants on them and falls back (its log lines, verbatim):\n")
    for n, lines in quant_logs.items():
        groups = collections.Counter()
        other = []
        for ln in lines:
            m = re.search(r"ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) -> falling back to\s+(\w+)", ln)
            if m:
                groups[(int(m.group(1)), m.group(3), m.group(4))] += 1
            else:
                other.append(re.sub(r"^\S+: ", "", ln))
        if not lines:
            L.append(f"* `{n}`: no fallback.")
            continue
        L.append(f"* `{n}`: " + "; ".join(f"`{o}`" for o in other) + ". By (row length, wanted, used): " +
                 ", ".join(f"{c} × (ncols {k[0]}, {k[1]} → {k[2]})" for k, c in sorted(groups.items())) + ".")
    L.append("")
    kq = sorted({t for p in files for t in type_summary(gguf, p) if t.endswith("_K")})
    L.append(("So the Q4_K_M files contain no K-quant tensor at all (only " +
              ", ".join(sorted({t for p in files for t in type_summary(gguf, p)})) + "); K-quant decoding is "
              "covered by `models/goldens/gguf/dequant.gguf` instead. " if not kq else
              f"K-quant types present: {', '.join(kq)}. ") + "Which tensors get the "
             "\"higher\" type (Q8_0 in place of Q6_K, e.g. `attn_v`, some `ffn_down`, `token_embd`/`output`) "
             "follows llama-quantize's Q4_K_M mixing rules.\n")
    L.append("## The pre-tokenizer workaround\n")
    L.append("`convert_hf_to_gguf.py` names a BPE pre-tokenizer by a sha256 of the token ids the tokenizer gives "
             "for a fixed check string, looked up in a table of known models (`TextModel.get_vocab_base_pre`, "
             "`conversion/base.py`). Our `models/tokenizers/tiny-bpe-1k` is in no table, so the unmodified "
             "converter stops with `BPE pre-tokenizer was not recognized`. The tokenizer uses exactly Qwen2's "
             "pre-tokenizer regex (Split/Isolated + ByteLevel without its own regex, NFC normaliser), which "
             "llama.cpp calls `qwen2` (`LLAMA_VOCAB_PRE_TYPE_QWEN2` in `src/llama-vocab.cpp` quotes the same "
             "regex). The generator imports the converter in a child Python process, replaces "
             "`TextModel.get_vocab_base_pre` with a function returning `\"qwen2\"`, and runs the converter's own "
             "`main()`; llama.cpp's source is untouched. So `tokenizer.ggml.pre` = `qwen2` in every file "
             "(real Qwen3.5 checkpoints get `qwen35`, a different regex; Qwen3-Next gets `qwen2`). llama.cpp "
             "does not apply the NFC normaliser; the fixtures' test texts are ASCII.\n")
    if warnings:
        L.append("Converter warnings (all three fixtures): " + "; ".join(f"`{w}`" for w in warnings) + ".\n")

    L.append("## Metadata: where each key comes from (converter source) \n")
    L.append("""`ARCH` = `qwen3next`, `qwen35` or `qwen35moe`. Complete key/value listings of two files are in the `*.layout.txt` files.

| GGUF key | HF config | note |
| --- | --- | --- |
| `ARCH.block_count` | `num_hidden_layers` | + MTP layers unless `--no-mtp` (used here; the fixtures have none) |
| `ARCH.context_length` | `max_position_embeddings` | |
| `ARCH.embedding_length` | `hidden_size` | |
| `ARCH.feed_forward_length` | `intermediate_size` | absent for qwen3.5-moe-tiny (no such config field); unused by qwen3-next-tiny |
| `ARCH.attention.head_count`, `.head_count_kv` | `num_attention_heads`, `num_key_value_heads` | |
| `ARCH.attention.key_length`, `.value_length` | `head_dim` (of the gated attention) | |
| `ARCH.rope.freq_base` | `rope_theta` | |
| `ARCH.rope.dimension_count` | `head_dim · partial_rotary_factor` | 4 here |
| `ARCH.rope.dimension_sections` | `mrope_section` or default [11, 11, 10, 0] | qwen35/qwen35moe only; see the load check |
| `ARCH.attention.layer_norm_rms_epsilon` | `rms_norm_eps` | f32 |
| `ARCH.expert_count`, `.expert_used_count` | `num_experts`, `num_experts_per_tok` | MoE only |
| `ARCH.expert_feed_forward_length`, `.expert_shared_feed_forward_length` | `moe_intermediate_size`, `shared_expert_intermediate_size` | MoE only |
| `ARCH.ssm.conv_kernel` | `linear_conv_kernel_dim` | |
| `ARCH.ssm.state_size` | `linear_key_head_dim` (dk) | **not** dv |
| `ARCH.ssm.group_count` | `linear_num_key_heads` (Hk) | |
| `ARCH.ssm.time_step_rank` | `linear_num_value_heads` (Hv) | |
| `ARCH.ssm.inner_size` | `linear_value_head_dim · linear_num_value_heads` (Hv·dv) | dv = inner_size / time_step_rank |
| `ARCH.attention.recurrent_layers` | `layer_types[i] == "linear_attention"` | bool array |
| `ARCH.full_attention_interval` | `full_attention_interval` (default 4) | |
| `tokenizer.ggml.*` | `tokenizer.json` / `tokenizer_config.json` | model `gpt2`, pre `qwen2` (patched), 1024 tokens as byte-level strings, token_type 1 (normal) or 3 (control: ids 1021–1023), 765 merges, eos 1023, padding 1021, bos 1021, add_bos false, chat_template |

Not in the file: `norm_topk_prob` (llama.cpp's qwen3next/qwen35moe graphs always use softmax gating and renormalise the top-k weights), `tie_word_embeddings` (tied = no `output.weight`), `linear_value_head_dim` (derived as above).
""")
    L.append("## What the converter does to the HF tensors (checked bit for bit by the generator)\n")
    L.append("`expected_gguf_tensors()` in the generator rebuilds every GGUF tensor from the HF safetensors with "
             "the transformations below (read from `conversion/qwen.py`: `Qwen3NextModel`, "
             "`_LinearAttentionVReorderBase`, `Qwen2MoeModel`) and asserts bit equality and the exact tensor set.\n")
    L.append("""| HF | GGUF | transformation |
| --- | --- | --- |
| `model.embed_tokens.weight` | `token_embd.weight` | none |
| `lm_head.weight` | `output.weight` | none; absent when tied (qwen3.5-tiny) |
| `model.norm.weight`, `L.input_layernorm`, `L.post_attention_layernorm`, `self_attn.q_norm`, `self_attn.k_norm` | `output_norm`, `blk.L.attn_norm`, `blk.L.post_attention_norm`, `attn_q_norm`, `attn_k_norm` | **+1**: the GGUF holds `1 + w`, so llama.cpp multiplies by the stored weight |
| `linear_attn.norm.weight` | `ssm_norm.weight` [dv] | none (gated norm, no +1) |
| `linear_attn.A_log` | `ssm_a` | **`-exp(A_log)`** (so g = ssm_a · softplus(a + dt_bias)) |
| `linear_attn.dt_bias` | `ssm_dt.bias` | renamed |
| `linear_attn.conv1d.weight` [C, 1, K] | `ssm_conv1d.weight` ne [K, C] | squeezed to [C, K] |
| `linear_attn.out_proj` | `ssm_out` | none (Qwen3-Next); columns V-head-reordered (Qwen3.5) |
| Qwen3-Next `in_proj_qkvz` | `attn_qkv` [conv_dim rows] + `attn_gate` [Hv·dv rows] | **regrouped**: per-key-head `[q_j\\|k_j\\|v_j\\|z_j]` blocks become `[q all heads \\| k all \\| v all]` (= the conv channel order) and `z all`; value heads stay in HF order (head j·r+i) |
| Qwen3-Next `in_proj_ba` | `ssm_ba` ne [64, 2·Hv] | **unchanged**: still per key head j `[b (r) \\| a (r)]` |
| Qwen3.5 `in_proj_qkv` | `attn_qkv` | q, k rows unchanged; **V rows reordered to tiled head order** when Hk ≠ Hv |
| Qwen3.5 `in_proj_z`, `in_proj_b`, `in_proj_a` | `attn_gate`, `ssm_beta`, `ssm_alpha` | **V-head reorder** (rows) |
| Qwen3.5 `A_log`, `dt_bias`, conv1d V channels | `ssm_a`, `ssm_dt.bias`, `ssm_conv1d` | **V-head reorder** too (and the transformations above) |
| `self_attn.{q,k,v,o}_proj` | `attn_q` (query+gate interleaved per head, as in HF), `attn_k`, `attn_v`, `attn_output` | none |
| `mlp.{gate,up,down}_proj` (dense) | `ffn_gate`, `ffn_up`, `ffn_down` | none |
| `mlp.gate` | `ffn_gate_inp` ne [64, E] | none |
| `mlp.experts.N.{gate,up,down}_proj` | `ffn_{gate,up,down}_exps` ne [in, out, E] | stacked over experts (expert = slowest dim) |
| `mlp.shared_expert.{gate,up,down}_proj`, `mlp.shared_expert_gate` | `ffn_{gate,up,down}_shexp`, `ffn_gate_inp_shexp` ne [64, 1] | none |
""")
    L.append("**V-head reorder** (`_LinearAttentionVReorderBase._reorder_v_heads`, Qwen3.5 and Qwen3.5-MoE only, "
             "only when Hk ≠ Hv; here Hk = 2, Hv = 4, r = 2): HF orders value heads grouped by key head "
             "(value head h = j·r + i uses key head j = h / r). The GGUF orders them tiled: GGUF head n = i·Hk + j "
             "holds HF head j·r + i, so GGUF value head n uses key head n mod Hk (llama.cpp's qwen35 graph repeats "
             "q/k tiled with `ggml_repeat_4d`). Every per-value-head quantity moves together (V rows of `attn_qkv` "
             "and of `ssm_conv1d`, `attn_gate` rows, `ssm_alpha`/`ssm_beta` rows, `ssm_a`, `ssm_dt.bias`, "
             "`ssm_out` columns); `ssm_norm` is per dv, shared by heads, so it does not move. Qwen3-Next files keep "
             "HF's grouped order (llama.cpp's qwen3next graph repeats q/k interleaved instead). A loader that maps "
             "the GGUF back to HF order must invert this for `qwen35`/`qwen35moe` only.\n")

    L.append("## llama.cpp load check\n")
    L.append("Reported as it happened (the generator does not assert it). `llama-bench -m FILE -p 8 -n 4 -t 1 -r 1` "
             "for every file (loads the model, runs an 8-token prompt and 4 generated tokens):\n")
    L.append("| file | llama-bench |\n| --- | --- |")
    for k, v in bench.items():
        L.append(f"| `{k}` | {v['summary']} |")
    L.append("")
    L.append("`llama-completion -m FILE -p \"And God said, Let there be\" -n 16 --temp 0 --top-k 1 -no-cnv` on the "
             "f32 files, compared byte for byte with the HF greedy golden (`short_greedy_ids` of "
             "`models/goldens/models/<fixture>.safetensors`, up to its first special token, where llama.cpp stops "
             "at end-of-generation):\n")
    L.append("| file | llama-completion |\n| --- | --- |")
    for fx, c in compl.items():
        L.append(f"| `{fx}-f32.gguf` | {c['summary']} |")
    L.append("")
    L.append("Why llama.cpp 0c1e57098 refuses these files (from its source):\n")
    L.append("* **dv ≠ dk** (`qwen3-next-tiny` dv 24, `qwen3.5-moe-tiny` dv 32, both dk 16): the loaders "
             "(`src/models/qwen3next.cpp`, `qwen35.cpp`, `qwen35moe.cpp`, `load_arch_tensors`) take "
             "`head_v_dim = ssm.state_size` (= dk), so they expect `attn_qkv` with 2·Hk·dk + Hv·dk rows and stop "
             "with `check_tensor_dims: ... wrong shape`; the recurrent state is also allocated as "
             "[head_v_dim, head_v_dim] per head. Real Qwen3-Next / Qwen3.5 have dk = dv = 128, so llama.cpp never "
             "needed dv ≠ dk. The files themselves are what its converter writes (`ssm.inner_size` = Hv·dv); the "
             "Rust loader should take dv = `ssm.inner_size / ssm.time_step_rank`, not `ssm.state_size`.")
    L.append("* **M-RoPE sections** (`qwen35`, `qwen35moe`): the fixtures' `config.json` has no "
             "`rope_parameters.mrope_section`, so the converter (`_Qwen35MRopeMixin`) writes the default "
             "`rope.dimension_sections` = [11, 11, 10, 0] (sum 32 = 64 rotary dims / 2 of the real models), but "
             "the tiny models rotate `rope.dimension_count` = 4 dims, and ggml's CPU M-RoPE asserts "
             "`sect_dims <= ne0` (`ggml/src/ggml-cpu/ops.cpp`) and aborts at the first attention layer. HF "
             "ignores sections beyond the rotary width, and with text-only positions (the t/h/w rows equal) any "
             "split gives plain partial NeoX RoPE, so the Rust side can ignore the sections for text.")
    if diag:
        L.append("")
        L.append("Diagnostic, NOT committed: the same files with only `rope.dimension_sections` rewritten in a "
                 "temporary copy (GGUFReader in `r+` mode) to fit 4 rotary dims:\n")
        L.append("| file | sections | llama-bench | llama-completion | llama-completion on the same weights dequantized to F32 by gguf-py |")
        L.append("| --- | --- | --- | --- | --- |")
        for k, d in diag.items():
            dq = d["dequantized"]["summary"] if "dequantized" in d else "—"
            L.append(f"| `{k}` | {d['sections']} | {d['bench']['summary']} | {d['completion']['summary']} | {dq} |")
        L.append("")
        from safetensors.numpy import load_file
        import json

        fx = "qwen3.5-tiny"
        row0 = load_file(str(HF_GOLDENS / f"{fx}.safetensors"))["short_stepwise_logits"][0]
        vocab = {i: t for t, i in json.loads((FIXTURES_DIR / fx / "tokenizer.json").read_text())["model"]["vocab"].items()}
        top = [(gpt2_bytes(vocab[int(i)]).decode("utf-8", "replace"), float(row0[i])) for i in np.argsort(-row0)[:3]]
        f32d = diag.get(f"{fx}-f32.gguf")
        if f32d and f32d["completion"]["ok"]:
            L.append("With sections that fit, llama.cpp's greedy tokens on the f32 file are exactly HF's.\n")
        L.append("For the quantized files, HF's first-step top 3 logits are " +
                 ", ".join(f"{t!r} {v:.3f}" for t, v in top) + f" (gap {top[0][1] - top[2][1]:.3f} to the third), "
                 "so weight rounding may legitimately change the first token.\n")
        for k, d in diag.items():
            if "dequantized" not in d or "got" not in d["completion"] or "got" not in d["dequantized"]:
                continue
            a, b = d["completion"]["got"], d["dequantized"]["got"]
            n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            L.append(f"`{k}`: the quantized run and the dequantized-F32 run (F32 kernels, no activation "
                     f"quantization) agree on the first {n} bytes ({a[:n].decode('utf-8', 'replace')!r}), so "
                     "the change from HF comes from the rounded weights; the rest differs because llama.cpp's "
                     "quantized CPU matmuls also quantize the activations (to Q8_0 / Q8_K).\n")
    L.append("")

    L.append("## `models/goldens/gguf/dequant.gguf`\n")
    rd = gguf.GGUFReader(gpath)
    L.append(f"{size(gpath)}, {len(rd.tensors)} tensors. Metadata: `general.architecture` = `dequant-golden`, "
             f"`golden.source`, `golden.seed` = {DEQUANT_SEED}, `golden.layout`. For each type T in "
             + ", ".join(DEQUANT_TYPES) + ":\n")
    L.append(f"* `T`: type T, {ROWS} rows × {COLS} columns (ggml ne = [{COLS}, {ROWS}]); raw block bytes from "
             f"`numpy.random.default_rng({DEQUANT_SEED})` (one generator, types in the order above), except each "
             "block's f16 scale fields, set to random finite f16 values of magnitude uniform in [0.02, 0.5] and "
             "random sign: `d` for Q4_0/Q5_0/Q8_0, `d` and `m` for Q4_1/Q5_1, `d` and `dmin` for Q4_K/Q5_K "
             "(bytes 0..4 of the block), `d` for Q6_K (the last 2 bytes of its 210-byte block). The 6-bit K-quant "
             "sub-scales/mins, Q6_K's int8 scales and all quant bits stay random. F32/F16/BF16 hold random bit "
             "patterns; an Inf/NaN pattern has its top exponent bit cleared, so subnormals, ±0 and the whole finite "
             "range occur.")
    L.append("* `T.expected`: F32, same shape: `gguf.quants.dequantize(bytes of T, T)` (gguf-py).\n")
    L.append("| type | block (elements) | block bytes | bytes per row | scale fields | ")
    L[-1] = L[-1].rstrip(" |") + " |"
    L.append("| --- | --- | --- | --- | --- |")
    for t in DEQUANT_TYPES:
        bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]]
        sc = "—" if bs == 1 else ", ".join(f"f16 @ byte {o}" for o in scale_offsets(gguf, t))
        L.append(f"| {t} | {bs} | {ts} | {COLS // bs * ts} | {sc} |")
    L.append("")
    for n in deq_notes:
        L.append(f"Cross-check: {n}.\n")
    (OUT_DIR / "README.md").write_text("\n".join(L))


if __name__ == "__main__":
    main()
