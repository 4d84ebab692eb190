"""flash-linear-attention's fused recurrent Gated DeltaNet decode at a layer shape, timed the way
cuda_bench times our kernel, for the per-layer-step comparison. One JSON object per line.

Rows (`regime`), all T = 1, B = 1, f32 state [HV, K, V] (fla's default layout):
- fla-hot:          one layer's state, calls back to back, CUDA events around the loop.
- fla-cold:         one token through `--layers` layers with distinct states, back to back.
- fla-cold-graph:   the same loop captured once as a CUDA graph and replayed.
- fla-do-bench:     triton.testing.do_bench of one call (it flushes L2 between calls).
Each with `core` (fla kernel only: q, k, v, log-decay g and beta precomputed, L2 norm in
kernel) and, with --full, `full` (plus PyTorch ops for what our kernel also fuses: causal conv +
SiLU, gates). Needs torch, triton, einops and fla-core (carried as a wheel).
"""

import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton

from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--hk", type=int, default=16)
    p.add_argument("--hv", type=int, default=32)
    p.add_argument("--dk", type=int, default=128)
    p.add_argument("--dv", type=int, default=128)
    p.add_argument("--kernel", type=int, default=4)
    p.add_argument("--layers", type=int, default=36)
    p.add_argument("--iters", type=int, default=2000)
    return p.parse_args()


def events_us(fn, iters):
    """Mean µs per call of fn over iters calls, CUDA events around the loop (after warm-up)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1e3 / iters


def main():
    a = parse()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    hk, hv, dk, dv, K = a.hk, a.hv, a.dk, a.dv, a.kernel
    conv_dim = 2 * hk * dk + hv * dv

    def layer_inputs():
        return dict(
            q=torch.randn(1, 1, hk, dk, device=dev),
            k=torch.randn(1, 1, hk, dk, device=dev),
            v=torch.randn(1, 1, hv, dv, device=dev),
            g=F.logsigmoid(torch.randn(1, 1, hv, device=dev)),
            beta=torch.rand(1, 1, hv, device=dev),
            state=torch.randn(1, hv, dk, dv, device=dev) * 0.1,
            # For the `full` variant: raw mixed_qkv, conv state and weights, raw a / b.
            x=torch.randn(1, conv_dim, device=dev),
            conv_state=torch.randn(1, conv_dim, K, device=dev),
            conv_w=torch.randn(conv_dim, K, device=dev) * 0.5,
            a_raw=torch.randn(1, 1, hv, device=dev),
            b_raw=torch.randn(1, 1, hv, device=dev),
            A_log=torch.log(torch.rand(hv, device=dev) * 15 + 1),
            dt_bias=torch.randn(hv, device=dev),
        )

    layers = [layer_inputs() for _ in range(a.layers)]

    def core(L):
        o, s = fused_recurrent_gated_delta_rule(
            L["q"], L["k"], L["v"], g=L["g"], beta=L["beta"], initial_state=L["state"],
            output_final_state=True, use_qk_l2norm_in_kernel=True,
        )
        return o

    def full(L):
        # What a model using fla pays besides the recurrence: conv update + SiLU (torch ops, no
        # causal-conv1d extension here) and the gates; the recurrence with in-kernel gating.
        L["conv_state"].copy_(torch.roll(L["conv_state"], shifts=-1, dims=-1))
        L["conv_state"][:, :, -1] = L["x"]
        mixed = F.silu((L["conv_state"] * L["conv_w"]).sum(-1))
        q, k, v = torch.split(mixed, [hk * dk, hk * dk, hv * dv], dim=-1)
        o, s = fused_recurrent_gated_delta_rule(
            q.view(1, 1, hk, dk), k.view(1, 1, hk, dk), v.view(1, 1, hv, dv),
            g=L["a_raw"], beta=L["b_raw"], initial_state=L["state"], output_final_state=True,
            use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=L["A_log"],
            dt_bias=L["dt_bias"], use_beta_sigmoid_in_kernel=True,
        )
        return o

    state_bytes = hv * dk * dv * 4
    device_name = torch.cuda.get_device_name()

    def emit(regime, variant, us_per_layer_step, n_layers):
        print(json.dumps({
            "bench": "fla_bench", "regime": regime, "variant": variant, "device": device_name,
            "hk": hk, "hv": hv, "dk": dk, "dv": dv, "layers": n_layers,
            "us_per_layer_step": round(us_per_layer_step, 3),
            "us_per_token_all_layers": round(us_per_layer_step * n_layers, 3),
            "effective_gb_s": round(2 * state_bytes / (us_per_layer_step * 1e3), 1),
        }), flush=True)

    for variant, fn in (("core", core), ("full", full)):
        try:
            emit("fla-hot", variant, events_us(lambda: fn(layers[0]), a.iters), 1)
            cold_iters = max(a.iters // a.layers, 20)
            emit("fla-cold", variant,
                 events_us(lambda: [fn(L) for L in layers], cold_iters) / a.layers, a.layers)
            # CUDA graph of one token through all layers (fla's kernels are graph-capturable).
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    [fn(L) for L in layers]
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                [fn(L) for L in layers]
            emit("fla-cold-graph", variant, events_us(graph.replay, cold_iters) / a.layers, a.layers)
            ms = triton.testing.do_bench(lambda: fn(layers[0]), warmup=50, rep=300)
            emit("fla-do-bench", variant, ms * 1e3, 1)
        except Exception as e:  # report and go on: one failing variant must not hide the others
            print(json.dumps({"bench": "fla_bench", "variant": variant, "error": repr(e)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
