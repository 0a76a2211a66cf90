// `hybrid bench browser`'s page: our engine (the wasm build in pkg/, on the CPU, and with
// `webgpu` on WebGPU) and wllama (llama.cpp in wasm, one thread; with `webgpu` also on its WebGPU
// backend) on the same GGUF and prompt, in the same tab.
import init, { Engine } from '/pkg/hybrid_assistant.js';
import { Wllama } from '/wllama/esm/index.js';

const log = (line) => { document.getElementById('log').textContent += `${line}\n`; };

window.runBench = async ({ modelUrl, promptTokens, genTokens, repeats, webgpu, profile }) => {
  const bytes = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
  log(`model: ${bytes.length} bytes`);

  await init();
  const engine = new Engine(bytes, undefined);
  const ours = JSON.parse(await engine.bench(promptTokens, genTokens, repeats));
  engine.free();
  log(`ours (wasm CPU): ${JSON.stringify({ prefill: ours.prefill_tok_s, decode: ours.decode_tok_s })}`);

  let gpu = null;
  if (webgpu) {
    // "force": the benchmark measures WebGPU even on a software adapter, which "auto" leaves.
    const onGpu = await Engine.load(bytes, undefined, "force");
    const info = JSON.parse(onGpu.info());
    gpu = info.backend === 'webgpu'
      ? { ...JSON.parse(await onGpu.bench(promptTokens, genTokens, repeats)), adapter: info.adapter, prompt_text: undefined }
      : { error: info.cpuReason };
    if (profile && info.backend === 'webgpu') gpu.profile = byKind(JSON.parse(await onGpu.profile(promptTokens)));
    onGpu.free();
    log(`ours (WebGPU): ${JSON.stringify(gpu)}`);
  }

  const wllama = await measureWllama(bytes, ours.prompt_text, genTokens, repeats, 0);
  log(`wllama (1 thread): ${JSON.stringify(wllama)}`);
  // wllama's WebGPU backend (llama.cpp's ggml-webgpu) on the same adapter: the GPU anchor.
  // llama.cpp's WebGPU backend requires shader-f16 of the device and, on an adapter without it
  // (SwiftShader), quietly runs every layer on the CPU.
  const adapterInfo = webgpu && navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  const wllamaGpu = !webgpu ? null
    : !adapterInfo?.features.has('shader-f16')
      ? { error: `llama.cpp's WebGPU backend needs shader-f16, which this adapter (${adapterInfo?.info?.architecture || 'none'}) lacks` }
      : await measureWllama(bytes, ours.prompt_text, genTokens, repeats, 999).catch((e) => ({ error: String(e) }));
  if (wllamaGpu) log(`wllama (WebGPU): ${JSON.stringify(wllamaGpu)}`);
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  return { ours: { ...ours, prompt_text: undefined }, webgpu: gpu, wllama, wllama_webgpu: wllamaGpu, webgpu_adapter: Boolean(adapter) };
};

/** A profiled step's kernels summed per kind, largest first: {timer, step_ms, kernels: [{kind,
 * calls, ms, share}]}. */
function byKind({ timer, kernels }) {
  const kinds = new Map();
  for (const [kind, seconds] of kernels) {
    const k = kinds.get(kind) ?? { kind, calls: 0, ms: 0 };
    k.calls += 1;
    k.ms += seconds * 1e3;
    kinds.set(kind, k);
  }
  const stepMs = [...kinds.values()].reduce((a, k) => a + k.ms, 0);
  const list = [...kinds.values()].sort((a, b) => b.ms - a.ms).map((k) => ({ ...k, share: k.ms / stepMs }));
  return { timer, step_ms: stepMs, kernels: list };
}

/** wllama's best prefill and decode of `prompt` over `repeats` runs, one thread, `gpuLayers`
 * layers on WebGPU. A GPU run must say (in llama.cpp's load log) that it put every layer on the
 * GPU: llama.cpp falls back to the CPU without an error where it finds no usable adapter. */
async function measureWllama(bytes, prompt, genTokens, repeats, gpuLayers) {
  const lines = [];
  const keep = (...a) => lines.push(a.join(' '));
  const wllama = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' }, { logger: { debug: keep, log: keep, warn: keep, error: keep } });
  try {
    await wllama.loadModel([new Blob([bytes])], { n_threads: 1, n_gpu_layers: gpuLayers, n_ctx: 2048, n_batch: 512, seed: 1 });
    const result = { prefill_tok_s: 0, decode_tok_s: 0, prompt_tokens: 0 };
    if (gpuLayers > 0) {
      const offload = lines.map((l) => /offloaded (\d+)\/(\d+) layers to GPU/.exec(l)).find(Boolean);
      const gpuLines = lines.filter((l) => /gpu|adapter/i.test(l)).slice(0, 8).join(' / ');
      if (!offload || offload[1] !== offload[2]) throw new Error(`wllama did not put every layer on WebGPU: ${offload ? offload[0] : 'no offload line in its log'} (${gpuLines})`);
      result.offload = offload[0];
      result.log = gpuLines;
    }
    for (let i = 0; i < Math.max(1, repeats); i++) {
      const r = await wllama.createCompletion({ prompt, max_tokens: genTokens, temperature: 0, cache_prompt: false, ignore_eos: true });
      const t = r.timings;
      result.prefill_tok_s = Math.max(result.prefill_tok_s, t.prompt_per_second);
      result.decode_tok_s = Math.max(result.decode_tok_s, t.predicted_per_second);
      result.prompt_tokens = t.prompt_n;
      result.decoded_tokens = t.predicted_n;
    }
    return result;
  } finally {
    await wllama.exit();
  }
}
log('ready');
