# The two commands of the README, and the pieces they are made of.
# Everything here is idempotent: a second run only does what is missing.
SHELL := /bin/bash
CARGO ?= cargo
PROMPT ?= Write a Python function that checks whether a string is a palindrome.

.PHONY: demo serve chat test setup models test-native test-wasm-build test-slow bench bench-serve reward-data reward-head eval-humaneval
PORT ?= 8080
HYBRID := ./target/debug/hybrid

## The main job: the cloud (qwen2.5-coder-1.5b) on 127.0.0.1:$(PORT), and the small model
## (qwen2.5-coder-0.5b) answering with it, cloud tokens marked. Models fetched on first use.
demo:
	$(CARGO) build --quiet
	$(HYBRID) fetch-models qwen2.5-coder-0.5b qwen2.5-coder-1.5b >/dev/null
	@$(HYBRID) serve --addr 127.0.0.1:$(PORT) >/dev/null & server=$$!; trap 'kill $$server' EXIT; \
	  until curl -sf http://127.0.0.1:$(PORT)/health >/dev/null; do kill -0 $$server || exit 1; sleep 1; done; \
	  $(HYBRID) chat --cloud http://127.0.0.1:$(PORT) --prompt "$(PROMPT)"

## The small model answering with a cloud already running at CLOUD.
CLOUD ?= http://127.0.0.1:$(PORT)
chat:
	$(CARGO) run --quiet -- chat --cloud $(CLOUD) --prompt "$(PROMPT)"

## The cloud: OpenAI-compatible completions on qwen2.5-coder-1.5b at http://127.0.0.1:8080.
serve:
	$(CARGO) run --quiet -- serve

## The whole test suite, installing what it needs.
test: setup models test-wasm-build test-native

setup:
	rustup target add wasm32-unknown-unknown >/dev/null

# The suite runs real models; fetch them once, verified against assets/models.toml.
models:
	$(CARGO) run --quiet -- fetch-models smollm2-135m qwen2.5-coder-0.5b

test-native:
	$(CARGO) test

test-wasm-build:
	$(CARGO) build --target wasm32-unknown-unknown --lib

## Slow checks kept out of CI's time budget: parity and llama.cpp agreement on qwen2.5-coder-1.5b.
test-slow:
	$(CARGO) run --quiet -- fetch-models qwen2.5-coder-1.5b
	$(CARGO) test -- --ignored

## Prefill/decode speed against llama.cpp for the three models.
bench:
	for m in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do $(CARGO) run --quiet -- bench decode --model $$m; done

## The cloud server under browser-like load (starts its own server on a free loopback port).
bench-serve:
	$(CARGO) run --quiet -- bench serve --model qwen2.5-coder-1.5b --concurrency 32 --requests 2000

## The reward head for qwen2.5-coder-0.5b -> qwen2.5-coder-1.5b (resumable; hours on 2 cores).
REWARD_DATA ?= $(HOME)/.cache/hybrid-assistant/reward/q05-q15
reward-data:
	$(CARGO) run --quiet -- reward collect --slm qwen2.5-coder-0.5b --cloud-model qwen2.5-coder-1.5b --prompts assets/prompts/train.jsonl --out $(REWARD_DATA) --max-tokens 256

reward-head:
	$(CARGO) run --quiet -- reward train --data $(REWARD_DATA) --out assets/reward/qwen2.5-coder-0.5b.safetensors

## Cost/quality on HumanEval (resumable; writes assets/eval/humaneval.json, .svg, .answers.jsonl).
EVAL_ARGS ?=
eval-humaneval:
	$(CARGO) run --quiet -- eval humaneval --slm qwen2.5-coder-0.5b --cloud-model qwen2.5-coder-1.5b $(EVAL_ARGS)
