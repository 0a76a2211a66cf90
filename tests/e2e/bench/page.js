// `hybrid bench browser`'s page: our engine (the wasm build in pkg/, on the CPU) and wllama
// (llama.cpp in wasm, one thread, no GPU) on the same GGUF and prompt, in the same tab.
import init, { Engine } from '/pkg/hybrid_assistant.js';
import { Wllama } from '/wllama/esm/index.js';

const log = (line) => { document.getElementById('log').textContent += `${line}\n`; };

window.runBench = async ({ modelUrl, promptTokens, genTokens, repeats, webgpu }) => {
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
    onGpu.free();
    log(`ours (WebGPU): ${JSON.stringify(gpu)}`);
  }

  const wllama = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' }, { suppressNativeLog: true });
  await wllama.loadModel([new Blob([bytes])], { n_threads: 1, n_gpu_layers: 0, n_ctx: 2048, n_batch: 512, seed: 1 });
  const anchor = { prefill_tok_s: 0, decode_tok_s: 0, prompt_tokens: 0 };
  for (let i = 0; i < Math.max(1, repeats); i++) {
    const r = await wllama.createCompletion({
      prompt: ours.prompt_text, max_tokens: genTokens, temperature: 0, cache_prompt: false, ignore_eos: true,
    });
    const t = r.timings;
    anchor.prefill_tok_s = Math.max(anchor.prefill_tok_s, t.prompt_per_second);
    anchor.decode_tok_s = Math.max(anchor.decode_tok_s, t.predicted_per_second);
    anchor.prompt_tokens = t.prompt_n;
    anchor.decoded_tokens = t.predicted_n;
  }
  await wllama.exit();
  log(`wllama (1 thread): ${JSON.stringify(anchor)}`);
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  return { ours: { ...ours, prompt_text: undefined }, webgpu: gpu, wllama: anchor, webgpu_adapter: Boolean(adapter) };
};
log('ready');
