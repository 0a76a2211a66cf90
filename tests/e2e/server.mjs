// Loopback servers for the browser tests and benchmark: `hybrid serve` (smollm2-135m on both
// sides) and a plain static file host.
import { spawn } from 'node:child_process';
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = fileURLToPath(new URL('../..', import.meta.url));
export const hybrid = process.env.HYBRID_BIN || `${root}target/debug/hybrid`;
export const shots = `${root}target/e2e`;
export const MODEL = 'smollm2-135m';

/** Debian's chromium, quiet (no background traffic or first-run pages), with `extraArgs`. */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', ...extraArgs],
  });
}

/** Resolves to {child, url} once the server listens; `allowOrigin` may be '*'; `extraArgs` go to `hybrid serve`. */
export function startServer(allowOrigin, extraArgs = []) {
  const child = spawn(hybrid, ['serve', '--addr', '127.0.0.1:0', '--cloud-model', MODEL, '--browser-model', MODEL, '--allow-origin', allowOrigin, ...extraArgs],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`hybrid serve exited (${code}) before listening`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/listening on (\S+)/);
      if (m) resolve({ child, url: m[1] });
    });
  });
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.wasm': 'application/wasm' };

/**
 * A static host on a free loopback port: files as they are, no ranges, no server-side logic.
 * `mounts` is [[urlPrefix, path]]: a prefix ending in '/' serves the directory at path
 * (index.html for directory URLs), any other serves the one file. Resolves to {server, url}.
 */
export function startStaticHost(mounts) {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const mount = mounts.find(([prefix]) => (prefix.endsWith('/') ? path.startsWith(prefix) : path === prefix));
    let file = mount && (mount[0].endsWith('/') ? join(mount[1], path.slice(mount[0].length)) : mount[1]);
    if (file && path.endsWith('/')) file = join(file, 'index.html');
    try {
      const stat = statSync(file);
      if (!stat.isFile()) throw new Error('not a file');
      const { size } = stat;
      res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream', 'Content-Length': size });
      createReadStream(file).on('error', () => res.destroy()).pipe(res);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` })));
}
