#!/usr/bin/env bash
# The aarch64 kernels, tested for real: cross-builds the tests for aarch64 (musl, statically
# linked, so no aarch64 sysroot is needed) and runs them under qemu-user:
#   1. the library's model:: tests on qemu's default CPU (`max`: NEON with the dot-product
#      extension) and with HYBRID_KERNELS=scalar, and the kernels' tests (gemv, gemm, cpu,
#      attention, int8, exp) on a Cortex-A53 (NEON without it, so the plain NEON kernels are
#      the detected ones);
#   2. tests/batched_forward.rs on smollm2-135m (the real model through the decode and batched
#      kernels) with HYBRID_KERNELS=neon on both CPUs, and =scalar;
#   3. tests/kernel_sets.rs's checks, which spawn `hybrid` (qemu-user cannot run an aarch64
#      child without binfmt_misc, so they are done from here): HYBRID_KERNELS=avx2 refused,
#      and qwen2.5-coder-0.5b's greedy answer the same with neon and with scalar.
# Idempotent: what is missing is installed into ~/.cache/hybrid-assistant/arm (rustup's
# aarch64 musl standard library; zig and cargo-zigbuild from PyPI as the linker and C
# compiler; qemu-aarch64-static from Debian's qemu-user-static, unpacked without root).
# The build goes to target/arm (or ARM_TARGET_DIR) so that it never waits on, nor
# invalidates, the native one.
# ARM_STEPS (default "unit model answer") runs some parts only.
set -euo pipefail
cd "$(dirname "$0")/../.."

TRIPLE=aarch64-unknown-linux-musl
CACHE=${HYBRID_ARM_CACHE:-$HOME/.cache/hybrid-assistant/arm}
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
QEMU=$CACHE/qemu/qemu-aarch64-static
STEPS=${ARM_STEPS:-unit model answer}

say() { printf '\n== %s\n' "$*"; }
elapsed() { echo "$(($(date +%s) - $1)) s"; }

rustup target list --installed | grep -qx "$TRIPLE" || rustup target add "$TRIPLE"
if [ "$("$CACHE/venv/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]; then
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install --quiet "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
fi
if ! [ -x "$QEMU" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download qemu-user-static >/dev/null)
    dpkg -x "$tmp"/qemu-user-static_*.deb "$tmp/root"
    install -D -m 755 "$tmp/root/usr/bin/qemu-aarch64-static" "$QEMU"
    rm -rf "$tmp"
fi

export PATH=$CACHE/venv/bin:$PATH
export CARGO_TARGET_DIR=${ARM_TARGET_DIR:-target/arm}
RUNNER_VAR=CARGO_TARGET_$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')_RUNNER
# `cargo-zigbuild test` is `cargo test` with zig as the linker; the runner is qemu on CPU, with
# HYBRID_KERNELS=KERNELS unless that is empty. qemu's `max` has the dot-product extension, a
# Cortex-A53 does not: HYBRID_TEST_DOTPROD tells src/model/cpu.rs's test which to expect.
on_cpu() {
    local cpu=$1 kernels=$2 dotprod=1
    shift 2
    [ "$cpu" = max ] || dotprod=0
    env ${kernels:+HYBRID_KERNELS=$kernels} HYBRID_TEST_DOTPROD=$dotprod "$RUNNER_VAR=$QEMU -cpu $cpu" \
        cargo-zigbuild test --quiet --target "$TRIPLE" "$@"
}

start=$(date +%s)
say "build (aarch64, $TRIPLE)"
# An integration test builds `hybrid` too, with the tests' features: no second build of the
# dependencies for a plain `cargo build`.
targets=()
[[ $STEPS == *unit* ]] && targets+=(--lib)
[[ $STEPS == *model* || $STEPS == *answer* ]] && targets+=(--test batched_forward)
cargo-zigbuild test --target "$TRIPLE" --no-run "${targets[@]}"
echo "build: $(elapsed "$start")"

# candle 0.11's aarch64 quantized kernels use `sdot` without asking the CPU, so on the
# Cortex-A53 only the modules that stay off them run: our kernels and what they are made of.
KERNEL_TESTS=(model::gemv model::gemm model::cpu model::attention model::int8 model::exp)
if [[ $STEPS == *unit* ]]; then
    for run in "max" "cortex-a53" "max scalar"; do
        read -r cpu kernels <<<"$run"
        tests=(model::)
        [ "$cpu" = max ] || tests=("${KERNEL_TESTS[@]}")
        say "unit tests ${tests[*]} on cpu $cpu${kernels:+, HYBRID_KERNELS=$kernels}"
        t=$(date +%s)
        on_cpu "$cpu" "$kernels" --lib -- "${tests[@]}"
        echo "unit tests on $cpu${kernels:+ ($kernels)}: $(elapsed "$t")"
    done
fi

# smollm2-135m's formats all have NEON kernels, so its decode stays off candle's on the
# Cortex-A53 too.
if [[ $STEPS == *model* ]]; then
    for run in "max neon" "cortex-a53 neon" "max scalar"; do
        read -r cpu kernels <<<"$run"
        say "tests/batched_forward.rs on smollm2-135m, cpu $cpu, HYBRID_KERNELS=$kernels"
        t=$(date +%s)
        on_cpu "$cpu" "$kernels" --test batched_forward -- smollm2
        echo "smollm2 batched_forward on $cpu ($kernels): $(elapsed "$t")"
    done
fi
if [[ $STEPS == *answer* ]]; then
    hybrid() { "$QEMU" -cpu max "$CARGO_TARGET_DIR/$TRIPLE/debug/hybrid" "$@"; }
    say "hybrid generate: HYBRID_KERNELS=avx2 refused"
    if HYBRID_KERNELS=avx2 hybrid generate --model smollm2-135m --prompt Hello --max-tokens 1 >/dev/null 2>"$CARGO_TARGET_DIR/refused.txt" ||
        ! grep -q "HYBRID_KERNELS=avx2.*neon, scalar" "$CARGO_TARGET_DIR/refused.txt"; then
        echo "HYBRID_KERNELS=avx2 was not refused with the sets this CPU runs:" >&2
        cat "$CARGO_TARGET_DIR/refused.txt" >&2
        exit 1
    fi
    prompt=$'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n'
    for kernels in neon scalar; do
        say "hybrid generate: qwen2.5-coder-0.5b's greedy answer, HYBRID_KERNELS=$kernels"
        t=$(date +%s)
        HYBRID_KERNELS=$kernels hybrid generate --model qwen2.5-coder-0.5b --prompt "$prompt" --max-tokens 24 >"$CARGO_TARGET_DIR/answer-$kernels.txt"
        cat "$CARGO_TARGET_DIR/answer-$kernels.txt"
        echo "answer ($kernels): $(elapsed "$t")"
    done
    if ! cmp -s "$CARGO_TARGET_DIR/answer-neon.txt" "$CARGO_TARGET_DIR/answer-scalar.txt" || [ "$(wc -c <"$CARGO_TARGET_DIR/answer-neon.txt")" -le 20 ]; then
        echo "neon and scalar answers differ (or are empty)" >&2
        exit 1
    fi
fi
say "aarch64 tests passed in $(elapsed "$start")"
