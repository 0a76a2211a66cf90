// The web app end to end: Debian's chromium (playwright-core, headless) against a real
// `hybrid serve` on loopback, smollm2-135m in the browser and as the cloud.
//
//   node tests/e2e/app.test.mjs      (make test-e2e; needs `make pkg` and a built hybrid)
//
// Checks, in order: a file failing its hash is an error with Retry; the download progress
// shows and the page becomes ready; with threshold 1 every token is a .tok.cloud span, with
// threshold 0 none is, and the statistics match the spans; Stop ends an answer; a reload reads the model from the browser cache and keeps the conversation; the
// static site (`hybrid site`) served from another origin answers through the cloud; killing
// the server mid-answer gives .tok.fallback spans, a banner and a finished answer. Screenshots
// go to target/e2e/.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { strict as assert } from 'node:assert';
import { hybrid, launchChromium, MODEL, shots, startServer, startStaticHost } from './server.mjs';

const PROMPT = 'Write a Python function that returns the square of a number.';
const TIMEOUT = 300_000;

// Counts of token spans in the last answer, and the statistics table.
const lastAnswer = (page) => page.evaluate(() => {
  const answers = document.querySelectorAll('.msg.assistant');
  const el = answers[answers.length - 1];
  const count = (sel) => el.querySelectorAll(sel).length;
  const stat = (name) => document.querySelector(`#stats [data-stat="${name}"]`).textContent;
  return {
    text: el.innerText,
    spans: count('.tok'), cloud: count('.tok.cloud'), local: count('.tok.local'), fallback: count('.tok.fallback'),
    stats: { tokens: Number(stat('tokens')), cloud: Number(stat('cloud_tokens')), fallbacks: Number(stat('fallbacks')) },
    note: el.querySelector('.note')?.textContent ?? null,
  };
});

async function setPolicy(page, policy, threshold, maxTokens) {
  await page.selectOption('#policy', policy);
  if (threshold !== undefined) {
    await page.$eval('#threshold', (el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }, String(threshold));
  }
  await page.fill('#max-tokens', String(maxTokens));
  await page.$eval('#max-tokens', (el) => el.dispatchEvent(new Event('change')));
}

async function ask(page, { policy, threshold, maxTokens }) {
  await setPolicy(page, policy, threshold, maxTokens);
  const before = await page.locator('.msg.assistant').count();
  await page.fill('#prompt', PROMPT);
  await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant[data-done=true]').length > n, before, { timeout: TIMEOUT });
  return lastAnswer(page);
}

function statsMatchSpans(a, label) {
  assert.equal(a.stats.tokens, a.spans, `${label}: statistics count ${a.stats.tokens} tokens, the page shows ${a.spans} spans`);
  assert.equal(a.stats.cloud, a.cloud, `${label}: cloud tokens in the statistics vs .tok.cloud spans`);
  assert.equal(a.stats.fallbacks, a.fallback, `${label}: fallbacks in the statistics vs .tok.fallback spans`);
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const siteDir = `${shots}/site`;
  rmSync(siteDir, { recursive: true, force: true });
  const staticHost = await startStaticHost([['/', siteDir]]);
  const server = await startServer(staticHost.url);
  const browser = await launchChromium();
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    // Every text the progress label shows, recorded from before the page's own scripts run.
    await page.addInitScript(() => {
      window.__progress = [];
      document.addEventListener('DOMContentLoaded', () => {
        const label = document.getElementById('download-label');
        new MutationObserver(() => window.__progress.push(label.textContent)).observe(label, { childList: true, characterData: true, subtree: true });
      });
    });

    // 1. A file that fails its hash: a clear error with Retry, and nothing cached. Then the
    //    real file: the download progress shows, then the page is ready.
    const corrupt = async (route) => {
      const config = await (await route.fetch()).json();
      config.model.sha256 = '0'.repeat(64);
      await route.fulfill({ json: config });
    };
    await page.route('**/config.json', corrupt);
    await page.goto(server.url);
    await page.waitForSelector('#banner-download:not([hidden])', { timeout: TIMEOUT });
    const banner = await page.locator('#banner-download').innerText();
    assert.ok(/does not match its sha256/.test(banner) && /Retry/.test(banner), banner);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'error');
    await page.unroute('**/config.json', corrupt);
    await page.reload();
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready', await page.locator('#banners').innerText());
    console.log(`ok hash mismatch: "${banner.split('\n')[0].slice(0, 90)}…", then loaded`);
    const progress = await page.evaluate(() => window.__progress);
    assert.ok(progress.length > 1 && progress.some((t) => /of 93\.8 MiB$/.test(t)), `progress shown: ${progress.slice(0, 3)}`);
    assert.ok(!progress.some((t) => t.includes('from the browser cache')), 'the file that failed its hash was not cached');
    assert.ok(await page.locator('#download').isHidden(), 'the progress bar goes away when loaded');
    assert.ok(await page.$eval('option[value=reward]', (o) => o.disabled), 'no reward head for smollm2: the reward policy is off');
    console.log(`ok load: ${progress.length} progress updates, last "${progress.at(-1)}"`);

    // 2. Threshold 1: every token from the cloud. Threshold 0: none but the final check's
    // (the answer's last token is the cloud's call, src/generate.rs final_check).
    const all = await ask(page, { policy: 'maxprob', threshold: 1, maxTokens: 24 });
    assert.ok(all.spans > 0, 'an answer streamed');
    assert.equal(all.cloud, all.spans, `threshold 1: every token is a .tok.cloud span (${all.cloud} of ${all.spans})`);
    statsMatchSpans(all, 'threshold 1');
    console.log(`ok threshold 1: ${all.cloud}/${all.spans} cloud`);
    const none = await ask(page, { policy: 'maxprob', threshold: 0, maxTokens: 24 });
    assert.ok(none.spans > 0, 'an answer streamed');
    assert.ok(none.cloud <= 1, `threshold 0: no .tok.cloud span but the final check's (${none.cloud})`);
    statsMatchSpans(none, 'threshold 0');
    console.log(`ok threshold 0: ${none.cloud}/${none.spans} cloud`);

    // Stop mid-answer: the answer ends where it was, marked, and the statistics still match.
    await setPolicy(page, 'maxprob', 0, 400);
    const count = await page.locator('.msg.assistant').count();
    await page.fill('#prompt', 'Write a long story about a lighthouse keeper, in ten paragraphs.');
    await page.click('#send');
    await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant')[n]?.querySelectorAll('.tok').length >= 5, count, { timeout: TIMEOUT });
    await page.click('#send'); // the Send button is Stop while generating
    await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant[data-done=true]').length > n, count, { timeout: TIMEOUT });
    const stopped = await lastAnswer(page);
    assert.equal(stopped.note, 'Stopped.', 'a stopped answer says so');
    assert.ok(stopped.spans >= 5 && stopped.spans < 400, `stopped early: ${stopped.spans} tokens`);
    statsMatchSpans(stopped, 'stopped');
    console.log(`ok stop: after ${stopped.spans} tokens`);
    await page.screenshot({ path: `${shots}/answers.png`, fullPage: true });

    // 3. Reload: the model comes from the browser cache and the conversation is still there.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: TIMEOUT });
    const afterReload = await page.evaluate(() => window.__progress);
    assert.ok(afterReload.some((t) => t.includes('from the browser cache')), `cached: ${afterReload}`);
    assert.equal(await page.locator('.msg.assistant[data-done=true]').count(), 3, 'the answers survive a reload');
    assert.equal(await page.locator('.msg.assistant .tok.cloud').count(), all.cloud + none.cloud + stopped.cloud, 'with their cloud marks');
    console.log('ok reload: model from the cache, conversation kept');

    // 4. The static site on another origin, asking this server as its cloud.
    execFileSync(hybrid, ['site', '--out', siteDir, '--cloud-url', server.url, '--cloud-model', MODEL, '--browser-model', MODEL], { stdio: 'inherit' });
    const site = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    site.on('pageerror', (e) => errors.push(`site: ${e.message}`));
    await site.goto(staticHost.url);
    await site.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.equal(await site.evaluate(() => document.body.dataset.state), 'ready', await site.locator('#banners').innerText());
    const fromSite = await ask(site, { policy: 'maxprob', threshold: 1, maxTokens: 12 });
    assert.ok(fromSite.spans > 0 && fromSite.cloud === fromSite.spans, `the site's answer came from the cloud: ${JSON.stringify(fromSite)}`);
    await site.close();
    console.log(`ok static site from ${staticHost.url}: ${fromSite.cloud}/${fromSite.spans} cloud via ${server.url}`);

    // 5. The server dies mid-answer: fallbacks, a banner, and the answer still finishes.
    await setPolicy(page, 'maxprob', 1, 48);
    const before = await page.locator('.msg.assistant').count();
    await page.fill('#prompt', PROMPT);
    await page.click('#send');
    await page.waitForFunction((n) => {
      const a = document.querySelectorAll('.msg.assistant');
      return a.length > n && a[a.length - 1].querySelectorAll('.tok.cloud').length >= 8;
    }, before, { timeout: TIMEOUT });
    server.child.kill('SIGKILL');
    await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant[data-done=true]').length > n, before, { timeout: TIMEOUT });
    const killed = await lastAnswer(page);
    assert.ok(killed.cloud >= 8 && killed.fallback > 0, `cloud tokens before the kill, fallbacks after: ${JSON.stringify(killed)}`);
    assert.equal(killed.note, null, 'the answer finished, not stopped by an error');
    statsMatchSpans(killed, 'server killed');
    assert.ok(await page.locator('#banner-cloud').isVisible(), 'the cloud-unreachable banner shows');
    await page.screenshot({ path: `${shots}/cloud-killed.png`, fullPage: true });
    console.log(`ok server killed: ${killed.cloud} cloud, then ${killed.fallback} fallback of ${killed.spans}`);
    assert.deepEqual(errors, [], 'no uncaught errors on the page');
  } finally {
    await browser.close();
    server.child.kill('SIGKILL');
    staticHost.server.close();
  }
  console.log(`e2e: all checks passed; screenshots in ${shots}`);
}

main().catch((e) => {
  console.error(`e2e FAILED: ${e.stack || e}`);
  process.exit(1);
});
