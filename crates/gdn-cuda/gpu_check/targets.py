"""Reads the GPU check's results file and judges the issue's performance targets:

1. per layer-step, our decode kernel ≤ flash-linear-attention's fused recurrent kernel
   (same shape, same way of timing: kernel-hot vs fla-hot core, kernel-cold vs fla-cold core);
2. one token's GDN work across 36 layers ≤ 100 µs including launches
   (kernel-cold-graph and kernel-cold `us_per_token_all_layers`, default tiling).

Exit status 0 when both hold. Usage: python3 targets.py RESULTS_FILE
"""

import json
import sys


def rows(path):
    for line in open(path):
        line = line.strip()
        if line.startswith("{") and '"bench"' in line:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                pass


def main():
    data = list(rows(sys.argv[1]))
    ours = {r["regime"]: r for r in data
            if r.get("bench") == "cuda_bench" and r.get("tiling") == "cols=default warps=default"}
    fla = {r["regime"]: r for r in data if r.get("bench") == "fla_bench" and r.get("variant") == "core"}
    ok = True
    print("\n=== targets ===")
    for mine, theirs in (("kernel-hot", "fla-hot"), ("kernel-cold", "fla-cold"),
                         ("kernel-cold-graph", "fla-cold-graph")):
        if mine in ours and theirs in fla:
            a, b = ours[mine]["us_per_layer_step"], fla[theirs]["us_per_layer_step"]
            verdict = "PASS" if a <= b else "FAIL"
            ok &= a <= b
            print(f"{verdict} per layer-step {mine} {a:.2f} us <= {theirs} {b:.2f} us")
        else:
            ok = False
            print(f"MISSING {mine} or {theirs}")
    best = [ours[r]["us_per_token_all_layers"] for r in ("kernel-cold", "kernel-cold-graph") if r in ours]
    if best:
        layers = ours.get("kernel-cold", ours.get("kernel-cold-graph"))["layers"]
        verdict = "PASS" if min(best) <= 100.0 else "FAIL"
        ok &= min(best) <= 100.0
        print(f"{verdict} one token over {layers} layers: {min(best):.1f} us (target <= 100 us, "
              f"launches {ours.get('kernel-cold', {}).get('us_per_token_all_layers')}, "
              f"graph {ours.get('kernel-cold-graph', {}).get('us_per_token_all_layers')})")
    else:
        ok = False
        print("MISSING kernel-cold rows")
    sweep = [r for r in data if r.get("bench") == "cuda_bench" and r.get("regime") == "kernel-hot"]
    if sweep:
        fastest = min(sweep, key=lambda r: r["us_per_layer_step"])
        print(f"fastest tiling (kernel-hot): {fastest['tiling']} {fastest['us_per_layer_step']:.2f} us")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
