// Cloud failures on screen, each with its own words and what to do. The page (smollm2-135m,
// served by `hybrid serve` on loopback) is pointed through its Cloud settings dialog at a
// second loopback server that fails in one way at a time:
//   unauthorized  401: the banner names the key and Settings; the back-off outlives the answer
//                 (the next answer sends no request) and a settings change lifts it
//   rate_limited  429 with Retry-After: 30: a countdown, one request for the whole answer
//   cors          no Access-Control-Allow-Origin: the banner (state 'network': fetch cannot tell
//                 it from a server that is down) names the cloud's origin, the page's and CORS
//   timeout       never answers (timeout 800 ms in Settings): the banner says so
//   server        500: a server error
// Every answer completes with fallback tokens. Screenshots: target/e2e/cloud-<kind>.png.
//
//   node tests/e2e/cloud-failures.test.mjs      (make test-e2e; needs `make pkg` and a built hybrid)
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { strict as assert } from 'node:assert';
import { launchChromium, shots, startServer } from './server.mjs';

const TIMEOUT = 300_000;
const PROMPT = 'Write a Python function that returns the square of a number.';
const MAX_TOKENS = 8;

/** A loopback "cloud" that fails as `state.mode` says and counts completions requests. */
function startFailingCloud() {
  const state = { mode: 'unauthorized', requests: 0 };
  const cors = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Allow-Headers': 'authorization, content-type', 'Access-Control-Expose-Headers': 'Retry-After' };
  const server = createServer(async (req, res) => {
    if (req.method === 'OPTIONS') {
      res.writeHead(204, state.mode === 'cors' ? {} : { ...cors, 'Access-Control-Allow-Methods': 'POST' }).end();
      return;
    }
    for await (const _ of req);
    state.requests += 1;
    const error = (status, message, extra = {}) =>
      res.writeHead(status, { 'Content-Type': 'application/json', ...cors, ...extra }).end(JSON.stringify({ error: { message } }));
    if (state.mode === 'unauthorized') error(401, 'invalid API key');
    else if (state.mode === 'rate_limited') error(429, 'slow down', { 'Retry-After': '30' });
    else if (state.mode === 'server') error(500, 'the model crashed');
    else if (state.mode === 'cors') error(200, 'never readable: no CORS headers', { 'Access-Control-Allow-Origin': 'http://elsewhere.invalid' });
    // 'timeout': never answers.
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, url: `http://127.0.0.1:${server.address().port}` })));
}

async function saveSettings(page, { url, apiKey = '', timeoutMs = 10000 }) {
  await page.click('#open-settings');
  await page.fill('#cloud-url', url);
  await page.fill('#cloud-key', apiKey);
  await page.fill('#cloud-timeout', String(timeoutMs));
  await page.click('#settings button[value=save]');
}

async function answer(page) {
  const before = await page.locator('.msg.assistant').count();
  await page.fill('#prompt', PROMPT);
  await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant[data-done=true]').length > n, before, { timeout: TIMEOUT });
  return page.evaluate(() => {
    const el = [...document.querySelectorAll('.msg.assistant')].at(-1);
    const banner = document.getElementById('banner-cloud');
    return {
      spans: el.querySelectorAll('.tok').length,
      fallback: el.querySelectorAll('.tok.fallback').length,
      note: el.querySelector('.note')?.textContent ?? null,
      banner: banner.hidden ? null : { kind: banner.dataset.kind, text: banner.innerText, settingsButton: !banner.querySelector('.open-settings').hidden },
    };
  });
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const server = await startServer('*');
  const cloud = await startFailingCloud();
  const browser = await launchChromium();
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready', await page.locator('#banners').innerText());
    // Consult on every token (max-prob gate at 1): each answer tries the cloud at once.
    await page.selectOption('#policy', 'maxprob');
    await page.$eval('#threshold', (el) => { el.value = '1'; el.dispatchEvent(new Event('input')); });
    await page.fill('#max-tokens', String(MAX_TOKENS));
    await page.$eval('#max-tokens', (el) => el.dispatchEvent(new Event('change')));

    // `kind`: the cloud's failure mode and the banner's state, except that the browser cannot
    // tell a CORS refusal from a server that is down (both are 'network').
    const check = async (mode, expect, settings = {}, kind = mode) => {
      cloud.state.mode = mode;
      await saveSettings(page, { url: cloud.url, ...settings });
      const before = cloud.state.requests;
      const a = await answer(page);
      assert.equal(a.note, null, `${kind}: the answer completes`);
      assert.ok(a.spans > 0 && a.fallback === a.spans, `${kind}: every token is a fallback: ${JSON.stringify(a)}`);
      assert.equal(a.banner?.kind, kind, `${kind}: the banner's state: ${JSON.stringify(a.banner)}`);
      for (const words of expect) assert.ok(a.banner.text.includes(words), `${kind}: the banner says "${words}": ${a.banner.text}`);
      assert.equal(a.banner.settingsButton, ['unauthorized', 'network'].includes(kind), `${kind}: a settings button where the fix is there`);
      await page.screenshot({ path: `${shots}/cloud-${mode}.png` });
      console.log(`ok ${mode}: ${cloud.state.requests - before} request(s); "${a.banner.text.split('\n')[0]}"`);
      return cloud.state.requests - before;
    };

    assert.equal(await check('unauthorized', ['refused the API key (HTTP 401)', 'Settings'], { apiKey: 'wrong-1' }), 1, 'one request, then the key is held');
    // The banner's button opens the settings dialog.
    await page.click('#banner-cloud .open-settings');
    assert.ok(await page.$eval('#settings', (d) => d.open), 'the banner opens the cloud settings');
    await page.click('#settings button[value=cancel]');
    const again = await answer(page);
    assert.equal(cloud.state.requests, 1, 'the next answer sends nothing with the same refused key');
    assert.equal(again.banner?.kind, 'unauthorized', 'and still says why');
    assert.equal(await check('unauthorized', ['refused the API key'], { apiKey: 'wrong-2' }), 1, 'a new key is tried at once');

    assert.equal(await check('rate_limited', ['rate-limiting', 'Retry-After']), 1, 'one request during the Retry-After wait');
    const countdown = await page.$eval('#banner-cloud', (el) => Number(/wait (\d+) s/.exec(el.innerText)?.[1]));
    assert.ok(countdown > 0 && countdown <= 30, `a countdown from Retry-After: ${countdown}`);

    await check('cors', ['could not reach', cloud.url, new URL(server.url).origin, 'CORS'], {}, 'network');
    assert.equal(await check('timeout', ['did not answer in time', 'no answer within 800 ms'], { timeoutMs: 800 }), 1, 'a timeout pauses consults at once');
    await check('server', ['HTTP 500', 'the model crashed']);
    assert.deepEqual(errors, [], 'no uncaught errors on the page');
  } finally {
    await browser.close();
    server.child.kill('SIGKILL');
    cloud.server.closeAllConnections?.();
    cloud.server.close();
  }
  console.log(`e2e cloud failures: all checks passed; screenshots in ${shots}`);
}

main().catch((e) => {
  console.error(`e2e FAILED: ${e.stack || e}`);
  process.exit(1);
});
