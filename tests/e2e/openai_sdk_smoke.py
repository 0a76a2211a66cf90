"""The OpenAI Python SDK (PyPI `openai`) against hybrid serve: models, completions plain and
streamed with logprobs and usage, vLLM's extras through `extra_body`, and its typed errors
for a wrong key and a refused parameter. Usage: openai_sdk_smoke.py URL KEY MODEL."""
import sys

import openai

url, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

assert [m.id for m in client.models.list().data] == [model]

prompt = "def fibonacci(n):"
plain = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
choice = plain.choices[0]
assert choice.finish_reason in ("length", "stop"), choice
assert plain.usage.completion_tokens == len(choice.logprobs.tokens) > 0, plain
assert "".join(choice.logprobs.tokens) == choice.text, choice
assert all(len(top) >= 2 for top in choice.logprobs.top_logprobs), choice.logprobs

chunks = client.completions.create(
    model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
)
text, usage = "", None
for chunk in chunks:
    text += "".join(c.text for c in chunk.choices)
    usage = chunk.usage or usage
assert text == choice.text, (text, choice.text)
assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage

# vLLM's sampling extras travel in extra_body, as with vLLM.
greedy_k = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=1.0, extra_body={"top_k": 1})
assert greedy_k.choices[0].text == choice.text, greedy_k

try:
    openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).completions.create(model=model, prompt=prompt, max_tokens=1)
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e

try:
    client.completions.create(model=model, prompt=prompt, max_tokens=1, presence_penalty=0.5)
    raise AssertionError("presence_penalty was accepted")
except openai.BadRequestError as e:
    assert e.param == "presence_penalty" and e.code == "unsupported_parameter", e

print(f"openai python {openai.__version__}: models, plain, streamed, extra_body, 401, 400 ok")
