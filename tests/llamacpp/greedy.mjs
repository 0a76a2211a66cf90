// Reference greedy continuations from llama.cpp (node-llama-cpp, prebuilt CPU binary).
//
//   node greedy.mjs --model PATH.gguf --prompts PROMPTS.json --tokens 32 --out OUT.json [--threads 2]
//
// PROMPTS.json is a JSON array of prompt strings. Each prompt is tokenized with special tokens parsed
// and no BOS, then evaluated on a fresh context with the low-level sequence API (no chat wrapper):
// temperature 0 = llama.cpp's greedy sampler (pure argmax), no repetition penalty, no other samplers.
// Generation continues past end-of-generation tokens (yieldEogToken: true), so every entry has
// exactly --tokens ids. OUT.json: [{"prompt": ..., "prompt_ids": [...], "ids": [...]}, ...].
// Install first: `npm ci --no-audit --no-fund` (postinstall is skipped via package.json config;
// NODE_LLAMA_CPP_SKIP_DOWNLOAD=true also works) — nothing is downloaded or built.
import { parseArgs, loadLlama, describeLlama, readJson, writeJson } from "./common.mjs";

const args = parseArgs(["model", "prompts", "out"], { tokens: "32", threads: "2" });
const nTokens = Number(args.tokens);
const threads = Number(args.threads);
const prompts = readJson(args.prompts);

const llama = await loadLlama();
process.stderr.write(`${describeLlama(llama)}\n`);
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });

const out = [];
for (const prompt of prompts) {
    const promptIds = Array.from(model.tokenize(prompt, true));
    const contextSize = promptIds.length + nTokens + 16;
    const context = await model.createContext({ contextSize, batchSize: contextSize, sequences: 1, threads });
    const sequence = context.getSequence();
    const ids = [];
    for await (const token of sequence.evaluate(promptIds, { temperature: 0, yieldEogToken: true })) {
        ids.push(token);
        if (ids.length >= nTokens) break;
    }
    const eog = ids.filter((t) => model.isEogToken(t));
    process.stderr.write(`${JSON.stringify(prompt)} -> ${JSON.stringify(model.detokenize(ids, true))}` +
        (eog.length ? ` (EOG tokens generated: ${eog.join(",")})` : "") + "\n");
    out.push({ prompt, prompt_ids: promptIds, ids });
    await context.dispose();
}
writeJson(args.out, out);
process.stderr.write(`wrote ${out.length} entries to ${args.out}\n`);
await model.dispose();
await llama.dispose();
