#!/bin/bash
# The GPU benchmark on a lent machine (the device tool), where the models cannot be sent (the
# working tree it takes is 64 MiB): `make device-bundle` puts a stripped `hybrid`, the browser
# models' GGUF headers and Debian's Vulkan loader in .device/; then, with carry [".device"]:
#
#   bash tests/device/bench_gpu.sh      -> $OUT/bench-gpu.json (hybrid bench decode --json per
#                                          model), $OUT/gpu.txt, $OUT/log
#
# The weights are made up on the machine (`hybrid synth-gguf`: the same shapes and formats, so
# the same speed); llama.cpp's builds do not fit beside them, so there is no anchor in this run.
set -u
cd "$(dirname "$0")/../.."
D=.device
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
for f in "$D"/*.deb; do dpkg -x "$f" /; done
ldconfig
# NVIDIA's Vulkan driver where the container keeps it, unless the loader already finds one.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && [ -z "$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null)" ]; then export VK_DRIVER_FILES=$icd; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
export XDG_RUNTIME_DIR=/tmp/xdg-device
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
echo "[" >"$OUT/bench-gpu.json"
sep=""
for m in smollm2-135m qwen2.5-coder-0.5b; do
  "$D/hybrid" synth-gguf --from "$D/$m.header" --out "/tmp/$m.gguf" 2>>"$OUT/log" || exit 1
  echo "$sep" >>"$OUT/bench-gpu.json"
  timeout 240 "$D/hybrid" bench decode --model "/tmp/$m.gguf" --gpu --gpu-only --no-llama-cpp --profile --repeats 3 --gen-tokens 64 --json \
    >>"$OUT/bench-gpu.json" 2>>"$OUT/log" || { echo "$m failed" >>"$OUT/log"; exit 1; }
  sep=","
done
echo "]" >>"$OUT/bench-gpu.json"
cat "$OUT/gpu.txt" "$OUT/bench-gpu.json"
