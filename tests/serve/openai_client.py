"""OpenAI's own Python client against examples/serve (run by tests/serve_openai.rs).

Usage: python openai_client.py BASE_URL MODEL_ID
Checks, on a server started on the tiny Qwen3-Next fixture:
  * /v1/models lists MODEL_ID;
  * completions and chat completions, streaming and not: the streamed pieces add up to the
    non-streaming answer (greedy), usage is reported, finish_reason is set;
  * 16 concurrent streaming clients x 64 tokens: every stream completes, and each equals what
    its prompt gives alone (the same request sent on its own first), nothing lost or duplicated;
  * bad input surfaces as the client's BadRequestError / NotFoundError.
Exits non-zero with a message on the first failure.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
GREEDY = dict(temperature=0, extra_body={"repetition_penalty": 1.0})


def check(condition, message):
    if not condition:
        sys.exit(f"FAIL: {message}")


ids = [m.id for m in client.models.list().data]
check(ids == [model], f"/v1/models lists {ids}, expected [{model!r}]")

# Completions: one answer versus its stream.
prompt = [296, 387, 388, 11, 322, 361, 380, 295]
whole = client.completions.create(model=model, prompt=prompt, max_tokens=24, **GREEDY)
check(whole.usage.prompt_tokens == len(prompt), f"usage {whole.usage}")
check(whole.choices[0].finish_reason in ("stop", "length"), f"{whole.choices[0]}")
pieces, finish = [], None
for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=24, stream=True, **GREEDY):
    for choice in chunk.choices:
        pieces.append(choice.text)
        finish = choice.finish_reason or finish
check("".join(pieces) == whole.choices[0].text, f"stream {pieces!r} vs {whole.choices[0].text!r}")
check(finish == whole.choices[0].finish_reason, f"stream finish {finish}")

# Chat completions, with include_usage.
messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello there"}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=16, **GREEDY)
check(chat.choices[0].message.role == "assistant", f"{chat.choices[0]}")
check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, f"{chat.usage}")
pieces, usage = [], None
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, stream=True,
    stream_options={"include_usage": True}, **GREEDY)
for chunk in stream:
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
    usage = chunk.usage or usage
check("".join(pieces) == chat.choices[0].message.content, f"chat stream {pieces!r}")
check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"{usage}")

# 16 concurrent streams x 64 tokens, each against its prompt alone.
prompts = [[(t + 53 * i) % 1000 for t in prompt] for i in range(16)]


def alone(p):
    r = client.completions.create(model=model, prompt=p, max_tokens=64, extra_body={"ignore_eos": True, "repetition_penalty": 1.0}, temperature=0)
    return r.choices[0].text, r.usage.completion_tokens


def streamed(p):
    text, chunks, usage = [], 0, None
    for chunk in client.completions.create(
            model=model, prompt=p, max_tokens=64, stream=True,
            extra_body={"ignore_eos": True, "repetition_penalty": 1.0}, temperature=0):
        chunks += 1
        for choice in chunk.choices:
            text.append(choice.text)
        usage = getattr(chunk, "usage", None) or usage
    return "".join(text), usage


expected = [alone(p) for p in prompts]
with ThreadPoolExecutor(max_workers=16) as pool:
    got = list(pool.map(streamed, prompts))
for i, ((want, n), (text, usage)) in enumerate(zip(expected, got)):
    check(n == 64, f"prompt {i}: {n} tokens alone, expected 64 (ignore_eos)")
    check(text == want, f"prompt {i}: concurrent stream {text!r} differs from alone {want!r}")
    check(usage is not None and usage.completion_tokens == 64, f"prompt {i}: usage {usage}")

# Bad input raises the client's own error classes.
try:
    client.completions.create(model=model, prompt="x", max_tokens=0)
    check(False, "max_tokens=0 was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "max_tokens", f"{e.body}")
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    check(False, "an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.body.get("code") == "model_not_found", f"{e.body}")

print("openai client: all checks passed")
