// The web app's choice of backend in chromium with WebGPU on (`--enable-unsafe-webgpu`; without
// a GPU its adapter is SwiftShader, a software renderer): by default the model runs on the CPU
// and the header (#backend) says so and why; `?gpu=calibrate` times both backends there and
// picks the CPU; `?gpu=force` puts it on the software adapter.
//
//   node tests/e2e/backend.test.mjs      (make test-e2e; needs `make pkg` and a built hybrid)
import { mkdirSync } from 'node:fs';
import { strict as assert } from 'node:assert';
import { launchChromium, shots, startServer } from './server.mjs';

const TIMEOUT = 300_000;

async function backendAfterLoad(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready', await page.locator('#banners').innerText());
  return page.$eval('#backend', (el) => ({ text: el.textContent, backend: el.dataset.backend }));
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const server = await startServer('http://localhost');
  const browser = await launchChromium(['--enable-unsafe-webgpu']);
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const auto = await backendAfterLoad(page, server.url);
    const adapter = await page.evaluate(async () => {
      const a = await navigator.gpu?.requestAdapter();
      return a ? `${a.info?.vendor} ${a.info?.architecture} ${a.info?.description}`.trim() : null;
    });
    assert.ok(adapter, 'chromium offers a WebGPU adapter with --enable-unsafe-webgpu');
    await page.screenshot({ path: `${shots}/backend-auto.png` });
    assert.equal(auto.backend, 'cpu', `a software adapter is not used by default: ${auto.text}`);
    assert.match(auto.text, /CPU · wasm SIMD \(.*software renderer/, 'the header says the CPU and why');
    console.log(`ok auto on "${adapter}": ${auto.text}`);

    // Calibration on the same adapter (auto skips it on a software one): a few timed decode
    // steps on each backend pick the CPU, and the header gives both speeds.
    const calibrated = await backendAfterLoad(page, `${server.url}?gpu=calibrate`);
    assert.equal(calibrated.backend, 'cpu', `calibration on SwiftShader picks the CPU: ${calibrated.text}`);
    assert.match(calibrated.text, /CPU · wasm SIMD \(measured faster here: CPU [\d.]+ tok\/s, WebGPU [\d.]+ tok\/s\)/);
    console.log(`ok calibrate: ${calibrated.text}`);

    const forced = await backendAfterLoad(page, `${server.url}?gpu=force`);
    assert.equal(forced.backend, 'webgpu', `?gpu=force runs on the software adapter: ${forced.text}`);
    assert.match(forced.text, /WebGPU · .*\(\?gpu=force\)/);
    console.log(`ok force: ${forced.text}`);
    assert.deepEqual(errors, [], 'no uncaught errors on the page');
  } finally {
    await browser.close();
    server.child.kill('SIGKILL');
  }
  console.log('backend e2e: all checks passed');
}

main().catch((e) => {
  console.error(`backend e2e FAILED: ${e.stack || e}`);
  process.exit(1);
});
