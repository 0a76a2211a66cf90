// Shared helpers for the llama.cpp reference scripts (see README.md).
// node-llama-cpp's own postinstall (which could try to download/build llama.cpp) is disabled by
// `"config": {"nodeLlamaCppPostinstall": "skip"}` in package.json (env alternative:
// NODE_LLAMA_CPP_SKIP_DOWNLOAD=true). At run time we load only the prebuilt CPU binary shipped in
// the npm package `@node-llama-cpp/linux-x64` (gpu: false, build: "never", skipDownload: true).
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

/** Parse `--key value` pairs into an object; exits with usage on missing required keys. */
export function parseArgs(required, defaults = {}) {
    const args = { ...defaults };
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i += 2) {
        if (!argv[i].startsWith("--") || i + 1 >= argv.length) die(`bad argument: ${argv[i]}`);
        args[argv[i].slice(2)] = argv[i + 1];
    }
    for (const k of required) if (args[k] == null) die(`missing --${k}`);
    return args;
}

export function die(msg) {
    process.stderr.write(`error: ${msg}\n`);
    process.exit(2);
}

/** A llama instance from the prebuilt binaries: the CPU build by default, or `gpu: "vulkan"` for
 * the prebuilt Vulkan build (`@node-llama-cpp/linux-x64-vulkan`, the GPU anchor; on lavapipe
 * where there is no GPU; `getGpuDeviceNames()` says which devices it uses). llama.cpp's warnings and errors go
 * to stderr. */
export async function loadLlama(gpu = false) {
    return await getLlama({
        gpu,
        build: "never",
        skipDownload: true,
        usePrebuiltBinaries: true,
        progressLogs: false,
        logLevel: LlamaLogLevel.warn,
        logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
    });
}

export function describeLlama(llama) {
    const r = llama.llamaCppRelease;
    return `node-llama-cpp ${nodeLlamaCppVersion()} (${llama.buildType}, llama.cpp ${r.repo}@${r.release}, gpu=${llama.gpu})`;
}

export function nodeLlamaCppVersion() {
    const url = new URL("./node_modules/node-llama-cpp/package.json", import.meta.url);
    return JSON.parse(fs.readFileSync(url, "utf8")).version;
}

export const readJson = (path) => JSON.parse(fs.readFileSync(path, "utf8"));
/** Write an array as JSON with one element per line (diff-friendly, still plain JSON). */
export const writeJson = (path, items) =>
    fs.writeFileSync(path, "[\n" + items.map((x) => JSON.stringify(x)).join(",\n") + "\n]\n");
