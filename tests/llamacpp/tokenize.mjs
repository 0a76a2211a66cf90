// Reference tokenization with llama.cpp's tokenizer (node-llama-cpp, prebuilt CPU binary).
//
//   node tokenize.mjs --model PATH.gguf --strings IN.json --out OUT.json
//
// IN.json is a JSON array of strings; OUT.json becomes [{"text": ..., "ids": [...]}, ...].
// Special tokens such as <|im_start|> are parsed into their single ids; no BOS/EOS is added
// (llama.cpp is called with add_special=false). Only the vocabulary is loaded (vocabOnly).
// Install first: `npm ci --no-audit --no-fund` (postinstall is skipped via package.json config;
// NODE_LLAMA_CPP_SKIP_DOWNLOAD=true also works) — nothing is downloaded or built.
import { parseArgs, loadLlama, describeLlama, readJson, writeJson } from "./common.mjs";

const args = parseArgs(["model", "strings", "out"]);
const strings = readJson(args.strings);
const llama = await loadLlama();
process.stderr.write(`${describeLlama(llama)}\n`);
const model = await llama.loadModel({ modelPath: args.model, vocabOnly: true, gpuLayers: 0 });

const out = strings.map((text) => ({ text, ids: Array.from(model.tokenize(text, true)) }));
writeJson(args.out, out);
process.stderr.write(`wrote ${out.length} entries to ${args.out}\n`);
await model.dispose();
await llama.dispose();
