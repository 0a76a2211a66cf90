// The browser benchmark's runner (called by `hybrid bench browser`): serves pkg/, the bench
// page, wllama and the GGUF on a loopback port, runs the page in headless chromium and prints
// one JSON line with both engines' figures.
//
//   node tests/e2e/bench-browser.mjs --model PATH.gguf [--prompt-tokens 256] [--gen-tokens 64] [--repeats 3] [--webgpu [--profile]]
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { launchChromium, startStaticHost } from './server.mjs';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    'prompt-tokens': { type: 'string', default: '256' },
    'gen-tokens': { type: 'string', default: '64' },
    repeats: { type: 'string', default: '3' },
    webgpu: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
  },
});
if (!args.model) throw new Error('--model PATH.gguf is required');
const root = fileURLToPath(new URL('../..', import.meta.url));
const here = fileURLToPath(new URL('.', import.meta.url));
const { server, url: base } = await startStaticHost([
  ['/pkg/', join(root, 'pkg')],
  ['/wllama/', join(here, 'node_modules/@wllama/wllama')],
  ['/bench/', join(here, 'bench')],
  ['/model.gguf', args.model],
]);

const browser = await launchChromium(args.webgpu ? ['--enable-unsafe-webgpu'] : []);
try {
  const page = await browser.newPage();
  page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  page.on('pageerror', (e) => process.stderr.write(`page error: ${e.message}\n`));
  await page.goto(`${base}/bench/`);
  await page.waitForFunction(() => typeof window.runBench === 'function');
  page.setDefaultTimeout(0);
  const result = await page.evaluate((a) => window.runBench(a), {
    modelUrl: `${base}/model.gguf`,
    promptTokens: Number(args['prompt-tokens']),
    genTokens: Number(args['gen-tokens']),
    repeats: Number(args.repeats),
    webgpu: args.webgpu,
    profile: args.profile,
  });
  result.browser = browser.version();
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
