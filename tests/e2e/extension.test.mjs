// The browser extension end to end: `hybrid site --extension` builds it for a real
// `hybrid serve` on loopback (smollm2-135m on both sides), headless chromium loads it
// unpacked, and its pages are driven as a user would.
//
//   node tests/e2e/extension.test.mjs      (make test-e2e; needs `make pkg` and a built hybrid)
//
// Checks: the options page shows the packaged defaults and saves to chrome.storage.local; the
// context-menu handler hands the selection to the side panel's prompt box; the side panel
// page downloads the model with progress and streams an answer as .tok spans, all .tok.cloud
// at threshold 1. A screenshot of the side panel goes to target/e2e/side-panel.png.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { strict as assert } from 'node:assert';
import { chromium } from 'playwright-core';
import { hybrid, MODEL, shots, startServer } from './server.mjs';

const TIMEOUT = 300_000;
const SELECTION = 'def square(x):\n    return x * x';

async function main() {
  mkdirSync(shots, { recursive: true });
  // Any origin may call: the extension's id is only known once it is loaded.
  const server = await startServer('*');
  const dir = `${shots}/extension`;
  rmSync(dir, { recursive: true, force: true });
  execFileSync(hybrid, ['site', '--extension', '--out', dir, '--cloud-url', server.url, '--cloud-model', MODEL, '--browser-model', MODEL], { stdio: 'inherit' });
  const profile = mkdtempSync(join(tmpdir(), 'hybrid-extension-'));
  const launch = () => chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 420, height: 900 }, // about a side panel's width
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
      `--disable-extensions-except=${dir}`, `--load-extension=${dir}`],
  });
  let context;
  try {
    // Chromium's zygote sometimes fails to fork its GPU process on a loaded machine: one retry.
    context = await launch().catch((e) => {
      console.log(`chromium did not start (${String(e).split('\n')[0]}); retrying once`);
      return launch();
    });
  } catch (e) {
    server.child.kill('SIGKILL');
    throw e;
  }
  const errors = [];
  try {
    const worker = context.serviceWorkers()[0] || await context.waitForEvent('serviceworker', { timeout: 30_000 });
    const id = new URL(worker.url()).host;
    const page = (path) => `chrome-extension://${id}/${path}`;
    console.log(`ok loaded: extension ${id}, service worker ${new URL(worker.url()).pathname}`);

    // Options: the packaged defaults show; a change lands in chrome.storage.local.
    const options = await context.newPage();
    options.on('pageerror', (e) => errors.push(`options: ${e.message}`));
    await options.goto(page('extension/options.html'));
    await options.waitForFunction(() => document.getElementById('cloudUrl').placeholder !== '');
    assert.equal(await options.$eval('#cloudUrl', (el) => el.placeholder), server.url);
    assert.match(await options.$eval('#modelUrl', (el) => el.placeholder), /\/models\/smollm2-135m\.gguf$/);
    await options.fill('#timeoutMs', '20000');
    await options.click('button[type=submit]');
    await options.waitForFunction(() => document.getElementById('status').textContent.startsWith('Saved'));
    const stored = await options.evaluate(() => chrome.storage.local.get('settings'));
    assert.equal(stored.settings.timeoutMs, '20000', JSON.stringify(stored));
    await options.close();
    console.log('ok options: defaults shown, settings saved to chrome.storage.local');

    // The context menu's handler: the selection becomes the side panel's prompt.
    await worker.evaluate(async (text) => {
      const [tab] = await chrome.tabs.query({});
      await globalThis.askAboutSelection({ selectionText: text }, tab ?? { windowId: chrome.windows.WINDOW_ID_CURRENT });
    }, SELECTION);

    // The side panel page: download with progress, then an answer as marked spans.
    const panel = await context.newPage();
    panel.on('pageerror', (e) => errors.push(`side panel: ${e.message}`));
    await panel.addInitScript(() => {
      window.__progress = [];
      document.addEventListener('DOMContentLoaded', () => {
        const label = document.getElementById('download-label');
        new MutationObserver(() => window.__progress.push(label.textContent)).observe(label, { childList: true, subtree: true });
      });
    });
    await panel.goto(page('index.html'));
    await panel.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.equal(await panel.evaluate(() => document.body.dataset.state), 'ready', await panel.locator('#banners').innerText());
    const progress = await panel.evaluate(() => window.__progress);
    assert.ok(progress.some((t) => /of 93\.8 MiB$/.test(t)), `download progress: ${progress.slice(-2)}`);
    await panel.waitForFunction((text) => document.getElementById('prompt').value === text, SELECTION, { timeout: 10_000 });
    console.log('ok side panel: model downloaded with progress; the selection is the prompt');

    await panel.selectOption('#policy', 'maxprob');
    await panel.$eval('#threshold', (el) => { el.value = '1'; el.dispatchEvent(new Event('input')); });
    await panel.fill('#max-tokens', '16');
    await panel.$eval('#max-tokens', (el) => el.dispatchEvent(new Event('change')));
    await panel.click('#send');
    await panel.waitForSelector('.msg.assistant[data-done=true]', { timeout: TIMEOUT });
    const answer = await panel.evaluate(() => {
      const el = document.querySelector('.msg.assistant');
      return { spans: el.querySelectorAll('.tok').length, cloud: el.querySelectorAll('.tok.cloud').length, note: el.querySelector('.note')?.textContent };
    });
    assert.ok(answer.spans > 0 && answer.cloud === answer.spans, `threshold 1: every token from the cloud: ${JSON.stringify(answer)}`);
    assert.equal(await panel.locator('.msg.user').first().innerText().then((t) => t.includes('return x * x')), true);
    await panel.screenshot({ path: `${shots}/side-panel.png` });
    console.log(`ok answer: ${answer.cloud}/${answer.spans} tokens from the cloud`);
    assert.deepEqual(errors, [], 'no uncaught errors in the extension pages');
  } finally {
    await context.close();
    server.child.kill('SIGKILL');
    rmSync(profile, { recursive: true, force: true });
  }
  console.log(`extension e2e: all checks passed; screenshot in ${shots}/side-panel.png`);
}

main().catch((e) => {
  console.error(`extension e2e FAILED: ${e.stack || e}`);
  process.exit(1);
});
