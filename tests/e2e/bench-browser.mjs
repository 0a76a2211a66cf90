// The browser benchmark's runner (called by `hybrid bench browser`): serves pkg/, the bench
// page, wllama and the GGUF on a loopback port, runs the page in headless chromium and prints
// one JSON line with both engines' figures.
//
//   node tests/e2e/bench-browser.mjs --model PATH.gguf [--prompt-tokens 256] [--gen-tokens 64] [--repeats 3] [--webgpu]
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    'prompt-tokens': { type: 'string', default: '256' },
    'gen-tokens': { type: 'string', default: '64' },
    repeats: { type: 'string', default: '3' },
    webgpu: { type: 'boolean', default: false },
  },
});
if (!args.model) throw new Error('--model PATH.gguf is required');
const root = fileURLToPath(new URL('../..', import.meta.url));
const here = fileURLToPath(new URL('.', import.meta.url));
const routes = [
  ['/pkg/', join(root, 'pkg')],
  ['/wllama/', join(here, 'node_modules/@wllama/wllama')],
  ['/bench/', join(here, 'bench')],
];
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };

const server = createServer((req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  let file = path === '/model.gguf' ? args.model : null;
  for (const [prefix, dir] of routes) if (!file && path.startsWith(prefix)) file = join(dir, path.slice(prefix.length));
  if (file && path.endsWith('/')) file = join(file, 'index.html');
  try {
    const stat = statSync(file);
    if (!stat.isFile()) throw new Error('not a file');
    const { size } = stat;
    res.writeHead(200, { 'Content-Type': types[extname(file)] || 'application/octet-stream', 'Content-Length': size });
    createReadStream(file).pipe(res);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    ...(args.webgpu ? ['--enable-unsafe-webgpu'] : [])],
});
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
  });
  result.browser = browser.version();
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
