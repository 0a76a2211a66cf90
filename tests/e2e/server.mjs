// `hybrid serve` on a free loopback port for the browser tests, smollm2-135m on both sides.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
export const hybrid = process.env.HYBRID_BIN || `${root}target/debug/hybrid`;
export const shots = `${root}target/e2e`;
export const MODEL = 'smollm2-135m';

/** Resolves to {child, url} once the server listens; `allowOrigin` may be '*'. */
export function startServer(allowOrigin) {
  const child = spawn(hybrid, ['serve', '--addr', '127.0.0.1:0', '--cloud-model', MODEL, '--browser-model', MODEL, '--allow-origin', allowOrigin],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`hybrid serve exited (${code}) before listening`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/listening on (\S+)/);
      if (m) resolve({ child, url: m[1] });
    });
  });
}
