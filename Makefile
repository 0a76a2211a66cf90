# The two commands of the README, and the pieces they are made of.
# Everything here is idempotent: a second run only does what is missing.
SHELL := /bin/bash
CARGO ?= cargo
PROMPT ?= Write a Python function that checks whether a string is a palindrome.

.PHONY: demo serve test setup models test-native test-wasm-build test-slow bench bench-serve

## The main job: answer a prompt with the default model (fetched on first use).
demo:
	$(CARGO) run --quiet -- generate --model qwen2.5-coder-0.5b --chat --prompt "$(PROMPT)"

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
