#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server (examples/serve, or llama.cpp's llama-server for
the side-by-side figure), over loopback, bounded in requests and time. Standard library only.

  python3 docs/bench/serve_load.py --url http://127.0.0.1:8080 --concurrency 1,8 \
      --tokens 64 --prompt-tokens 16 --rounds 2 [--rss-pid PID --rss-requests 1000]

For each concurrency C, C client threads each send `--rounds` streaming /v1/completions
requests one after the other (distinct token-id prompts, temperature 0, ignore_eos, exactly
`--tokens` tokens). Reported per C: aggregate generated tokens per second of wall time (first
request sent to last stream ended), per-stream decode rate, and time to first token p50/p99.
With --rss-pid, then sends --rss-requests short requests and reports the server's VmRSS
before and after (a leak shows as growth). Prints one JSON object per measurement.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlparse


def stream_completion(url, model, prompt, tokens, timeout):
    """One streaming request; returns (ttft_s, total_s, generated_tokens)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    if model:
        body["model"] = model
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    ttft, pieces, usage_tokens = None, 0, None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error chunk: {chunk}")
        for choice in chunk.get("choices", []):
            if choice.get("text"):
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
        usage = chunk.get("usage") or {}
        usage_tokens = usage.get("completion_tokens", usage_tokens)
    total = time.perf_counter() - start
    conn.close()
    return ttft if ttft is not None else total, total, usage_tokens or pieces


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_concurrency(args, clients):
    results, errors = [], []
    lock = threading.Lock()

    def client(index):
        for r in range(args.rounds):
            prompt = [(7 + 131 * index + 17 * r + 29 * k) % args.vocab for k in range(args.prompt_tokens)]
            try:
                outcome = stream_completion(args.url, args.model, prompt, args.tokens, args.timeout)
                with lock:
                    results.append(outcome)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = [r[0] for r in results]
    tokens = sum(r[2] for r in results)
    per_stream = [(r[2] - 1) / (r[1] - r[0]) for r in results if r[1] > r[0] and r[2] > 1]
    return {
        "concurrency": clients, "requests": len(results), "errors": errors[:3],
        "error_count": len(errors), "generated_tokens": tokens, "wall_s": round(wall, 3),
        "aggregate_tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "per_stream_decode_tok_s": round(statistics.mean(per_stream), 2) if per_stream else 0.0,
        "ttft_p50_ms": round(1e3 * percentile(ttfts, 0.5), 1) if ttfts else None,
        "ttft_p99_ms": round(1e3 * percentile(ttfts, 0.99), 1) if ttfts else None,
    }


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default=None, help="model id to send (default: none)")
    p.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="requests per client")
    p.add_argument("--vocab", type=int, default=1000, help="prompt token ids stay below this")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--warmup", type=int, default=1, help="requests before measuring")
    p.add_argument("--rss-pid", type=int, default=None)
    p.add_argument("--rss-requests", type=int, default=0)
    p.add_argument("--label", default="")
    args = p.parse_args()
    for i in range(args.warmup):
        stream_completion(args.url, args.model, [1 + i, 2, 3], 4, args.timeout)
    for clients in [int(c) for c in args.concurrency.split(",")]:
        row = run_concurrency(args, clients)
        row["label"] = args.label
        print(json.dumps(row), flush=True)
    if args.rss_pid and args.rss_requests:
        before = rss_kib(args.rss_pid)
        samples = []
        for i in range(args.rss_requests):
            prompt = [(3 + 11 * i + 5 * k) % args.vocab for k in range(args.prompt_tokens)]
            stream_completion(args.url, args.model, prompt, 4, args.timeout)
            if (i + 1) % max(1, args.rss_requests // 10) == 0:
                samples.append(rss_kib(args.rss_pid))
        print(json.dumps({"label": args.label, "rss_requests": args.rss_requests,
                          "rss_before_kib": before, "rss_samples_kib": samples}), flush=True)


if __name__ == "__main__":
    main()
