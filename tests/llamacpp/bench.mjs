// llama.cpp speed reference (node-llama-cpp, prebuilt CPU binary; with --gpu vulkan its prebuilt
// Vulkan binary with every layer on the GPU).
//
//   node bench.mjs --model PATH.gguf --threads N [--prompt-tokens 256] [--gen-tokens 64] [--repeats 3]
//                  [--gpu vulkan [--expect-device NAME]]
//
// llama.cpp's Vulkan build skips CPU-type devices (lavapipe, SwiftShader) unless
// GGML_VK_VISIBLE_DEVICES names them, and then runs every layer on the CPU without an error:
// a figure from such a run is no GPU anchor. So with --gpu vulkan this refuses to report unless
// llama.cpp named the Vulkan device it uses (and, with --expect-device, that it is NAME) and
// put every layer on it. `hybrid bench decode --gpu` sets GGML_VK_VISIBLE_DEVICES to its own
// adapter's index and passes that adapter's name.
//
// Each repeat uses a fresh context/sequence: the prompt (real English text, tokenized and
// repeated/cut to exactly --prompt-tokens ids, no BOS) is evaluated in ONE batch (batchSize >=
// prompt length) -> prefill tok/s = prompt_tokens / (time until the first sampled token). Then
// --gen-tokens tokens are decoded greedily one at a time (temperature 0, EOG tokens do not stop
// it) -> decode tok/s = gen_tokens / (time for those single-token evaluations), prefill excluded.
// The BEST (highest) figure of the repeats is reported for each, as ONE JSON line on stdout;
// per-repeat figures and llama.cpp's own log lines go to stderr.
// Install first: `npm ci --no-audit --no-fund` (postinstall is skipped via package.json config;
// NODE_LLAMA_CPP_SKIP_DOWNLOAD=true also works) — nothing is downloaded or built.
import { parseArgs, die, loadLlama, describeLlama, nodeLlamaCppVersion } from "./common.mjs";

const args = parseArgs(["model", "threads"], { "prompt-tokens": "256", "gen-tokens": "64", repeats: "3", gpu: "none", "expect-device": "" });
if (!["none", "vulkan", "cuda"].includes(args.gpu)) die(`--gpu takes none, vulkan or cuda, not ${args.gpu}`);
const gpu = args.gpu === "none" ? false : args.gpu;
const threads = Number(args.threads);
const promptTokens = Number(args["prompt-tokens"]);
const genTokens = Number(args["gen-tokens"]);
const repeats = Number(args.repeats);

const TEXT = `The history of computing is a story of abstraction layered upon abstraction. Early machines were
programmed by physically rewiring circuits, and every new problem required engineers to rebuild the machine.
Stored-program computers changed that: instructions became data, and software was born. Assemblers,
compilers and operating systems followed, each hiding the details of the layer beneath it. Today a
programmer can write a few lines of Python that train a neural network on a graphics card, without ever
thinking about transistors, memory buses or instruction pipelines. Yet performance still depends on those
details. Caches reward programs that touch memory in predictable patterns, vector units reward code that
processes many numbers at once, and multiple cores reward work that can be split into independent pieces.
Language models running on ordinary laptops are a good example: most of their time is spent multiplying
large matrices of quantized weights, so the speed of a token depends on memory bandwidth as much as on
arithmetic throughput.`;

const llama = await loadLlama(gpu).catch((e) => die(`llama.cpp's ${gpu || "CPU"} build does not load here: ${String(e.message).split("\n")[0]}`));
process.stderr.write(`${describeLlama(llama)}\n`);
// getLlama falls back to the CPU when the GPU build cannot load: that is no GPU anchor.
if (gpu && llama.gpu !== gpu) die(`llama.cpp's ${gpu} build did not load (it runs on ${llama.gpu || "the CPU"})`);
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: gpu ? "max" : 0 });
const gpuDevices = gpu ? await llama.getGpuDeviceNames() : [];
if (gpu === "vulkan") {
    if (gpuDevices.length === 0) {
        die("llama.cpp's Vulkan build uses no Vulkan device and would run on the CPU: it skips CPU-type adapters " +
            "(lavapipe, SwiftShader) unless GGML_VK_VISIBLE_DEVICES names them (e.g. GGML_VK_VISIBLE_DEVICES=0)");
    }
    const expected = args["expect-device"];
    if (expected && !gpuDevices.includes(expected)) {
        die(`llama.cpp's Vulkan build runs on ${gpuDevices.join(", ")}, not on ${expected}: set GGML_VK_VISIBLE_DEVICES to that device's index`);
    }
}
const layers = model.fileInsights.totalLayers;
if (gpu && model.gpuLayers < layers) die(`llama.cpp put ${model.gpuLayers} of ${layers} layers on the GPU: no GPU anchor`);

const textIds = Array.from(model.tokenize(TEXT, false));
const promptIds = Array.from({ length: promptTokens }, (_, i) => textIds[i % textIds.length]);
const contextSize = promptTokens + genTokens + 16;

const now = () => Number(process.hrtime.bigint()) / 1e9;
const runs = [];
for (let r = 0; r < repeats; r++) {
    const context = await model.createContext({ contextSize, batchSize: contextSize, sequences: 1, threads });
    const sequence = context.getSequence();
    const t0 = now();
    let t1 = 0, n = 0;
    // The first yielded token comes from the prefill; each later one is one single-token decode.
    for await (const _ of sequence.evaluate(promptIds, { temperature: 0, yieldEogToken: true })) {
        if (n === 0) t1 = now();
        if (++n > genTokens) break;
    }
    const t2 = now();
    const run = { prefill_tok_s: promptTokens / (t1 - t0), decode_tok_s: genTokens / (t2 - t1) };
    process.stderr.write(`repeat ${r + 1}/${repeats}: prefill ${run.prefill_tok_s.toFixed(1)} tok/s, decode ${run.decode_tok_s.toFixed(1)} tok/s\n`);
    runs.push(run);
    await context.dispose();
}
const best = (key) => Math.round(Math.max(...runs.map((x) => x[key])) * 100) / 100;
const r = llama.llamaCppRelease;
console.log(JSON.stringify({
    engine: "llama.cpp",
    version: `node-llama-cpp ${nodeLlamaCppVersion()} (${llama.buildType} ${r.repo}@${r.release}, ${gpu || "cpu"})`,
    device: gpu ? gpuDevices.join(", ") : "cpu",
    model: args.model,
    threads,
    prompt_tokens: promptTokens,
    gen_tokens: genTokens,
    prefill_tok_s: best("prefill_tok_s"),
    decode_tok_s: best("decode_tok_s"),
}));
await model.dispose();
await llama.dispose();
