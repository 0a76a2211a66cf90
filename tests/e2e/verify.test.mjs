// Verified consults on screen: a correction, end to end. smollm2-135m runs in the page and as
// the cloud (`hybrid serve` on loopback), so the two agree; a loopback proxy between them makes
// the cloud disagree once: in the answer to one scoring consult (a request with `echo: true`)
// it swaps the scores of the top two alternatives at one pending position, so the cloud's
// greedy token there is not the page's.
//
//   node tests/e2e/verify.test.mjs      (make test-e2e; needs `make pkg` and a built hybrid)
//
// Policy `verify`, threshold 0 and a check every 4 tokens: consults happen only when the
// policy forces them. Checks: tokens show before they are checked (class `unverified`) and are
// all checked at the end; the withdrawn spans leave the page and a struck cue shows in their
// place; the correction is a cloud span whose title names the text it replaced; the
// statistics count the correction and the withdrawn tokens; the answer's text is exactly its
// standing tokens, is what the server decodes from the ids the page last sent (so the page
// and the engine agree on what stands), and is what the history keeps across a reload. Stop
// under the verify policy leaves only checked tokens.
// Screenshots: target/e2e/correction.png (the cue on screen) and correction-done.png.
import { mkdirSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { strict as assert } from 'node:assert';
import { launchChromium, MODEL, shots, startServer } from './server.mjs';

const TIMEOUT = 300_000;
const PROMPT = 'Write a Python function that returns the square of a number.';
const VERIFY_EVERY = 4;
const MAX_TOKENS = 32;
// smollm2's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, …) are ids 0..16: a
// forced correction must be an ordinary token, or the answer would just end there.
const FIRST_ORDINARY_ID = 17;

const idOf = (name) => {
  const m = /^token_id:(\d+)$/.exec(name);
  return m ? Number(m[1]) : null;
};

/**
 * A proxy in front of `target`: everything passes through, except that the answer to the
 * second scoring consult gets one position's top two alternatives swapped. It records every
 * completions request and what it did.
 */
function startProxy(target) {
  const log = { scoring: 0, forced: null, natural: [], last: null };
  const server = createServer(async (req, res) => {
    if (req.method !== 'POST' || !req.url.startsWith('/v1/completions')) {
      const upstream = httpRequest(new URL(req.url, target), { method: req.method, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
      return;
    }
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks).toString();
    const headers = { 'Content-Type': 'application/json' };
    if (req.headers.authorization) headers.Authorization = req.headers.authorization;
    const answer = await fetch(new URL(req.url, target), { method: 'POST', headers, body });
    let text = await answer.text();
    const sent = JSON.parse(body);
    if (answer.ok && sent.echo) {
      const out = JSON.parse(text);
      text = JSON.stringify(rewrite(sent, out, log));
    }
    if (answer.ok) log.last = { prompt: JSON.parse(body).prompt, response: JSON.parse(text) };
    res.writeHead(answer.status, { 'Content-Type': answer.headers.get('content-type') || 'application/json' });
    res.end(text);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, log, url: `http://127.0.0.1:${server.address().port}` })));
}

// The echoed positions of a scoring consult's answer, lined up with the prompt.
function rewrite(sent, out, log) {
  log.scoring += 1;
  const choice = out.choices[0];
  const lp = choice.logprobs;
  const generated = choice.token_ids?.length ?? 0;
  const echoed = lp.tokens.length - generated;
  const from = sent.echo_from ?? 0;
  assert.equal(echoed, sent.prompt.length - from, 'the server echoes the positions from echo_from on');
  log.promptLen ??= from; // the first scoring consult checks from the answer's first token
  const ranked = (i) => Object.entries(lp.top_logprobs[i] ?? {}).map(([k, v]) => [idOf(k), v]).sort((a, b) => b[1] - a[1]);
  // Where the cloud already disagrees by itself (near-ties between two builds of one model).
  const mismatch = [...Array(echoed).keys()].find((i) => lp.top_logprobs[i] && ranked(i)[0][0] !== sent.prompt[from + i]);
  if (mismatch !== undefined) {
    log.natural.push({ at: from + mismatch, withdrawn: echoed - mismatch });
    return out;
  }
  if (log.forced || log.scoring < 2) return out;
  // The second pending token (the first when only one is pending): one checked before it.
  const i = Math.min(1, echoed - 1);
  const top = ranked(i);
  const alternative = top.find(([id]) => id !== sent.prompt[from + i] && id >= FIRST_ORDINARY_ID);
  if (!alternative) return out;
  const key = (id) => Object.keys(lp.top_logprobs[i]).find((k) => idOf(k) === id);
  const [bestKey, altKey] = [key(top[0][0]), key(alternative[0])];
  [lp.top_logprobs[i][bestKey], lp.top_logprobs[i][altKey]] = [lp.top_logprobs[i][altKey], lp.top_logprobs[i][bestKey]];
  log.forced = { at: from + i, replacement: alternative[0], withdrawnIds: sent.prompt.slice(from + i) };
  return out;
}

// The server's text for token ids: echo with no new tokens (no `return_tokens_as_token_ids`).
async function decode(serverUrl, ids) {
  const response = await fetch(`${serverUrl}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: ids, max_tokens: 0, echo: true }),
  });
  const text = await response.text();
  assert.ok(response.ok, `decode: HTTP ${response.status} ${text}`);
  return JSON.parse(text).choices[0].text;
}

const answerState = (page) => page.evaluate(() => {
  const answers = document.querySelectorAll('.msg.assistant');
  const el = answers[answers.length - 1];
  const spans = [...el.querySelectorAll('.tok')];
  const stat = (name) => document.querySelector(`#stats [data-stat="${name}"]`).textContent;
  const history = JSON.parse(localStorage.getItem('hybrid-assistant.history'));
  const clone = el.cloneNode(true);
  clone.querySelectorAll('.role, .note').forEach((n) => n.remove());
  return {
    spansText: spans.map((s) => s.textContent).join(''),
    shownText: clone.textContent,
    spans: spans.length,
    unverified: el.querySelectorAll('.tok.unverified').length,
    withdrawnCues: el.querySelectorAll('.withdrawn').length,
    corrections: spans.filter((s) => s.classList.contains('correction')).map((s) => ({ text: s.textContent, className: s.className, title: s.title })),
    stats: Object.fromEntries(['tokens', 'cloud_tokens', 'consults', 'verified_tokens', 'unverified_tokens', 'corrections', 'withdrawn_tokens']
      .map((n) => [n, stat(n)])),
    history: history.at(-1),
  };
});

async function main() {
  mkdirSync(shots, { recursive: true });
  const server = await startServer('*');
  const proxy = await startProxy(server.url);
  const browser = await launchChromium();
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    // Every token span that enters or leaves an answer, as it happens.
    await page.addInitScript(() => {
      window.__spans = [];
      document.addEventListener('DOMContentLoaded', () => {
        new MutationObserver((records) => {
          for (const r of records) {
            for (const n of r.addedNodes) if (n.classList?.contains('tok')) window.__spans.push({ added: n.textContent, unverified: n.classList.contains('unverified') });
            for (const n of r.removedNodes) if (n.classList?.contains('tok')) window.__spans.push({ removed: n.textContent });
          }
        }).observe(document.getElementById('chat'), { childList: true, subtree: true });
      });
    });
    await page.goto(proxy.url);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready', await page.locator('#banners').innerText());
    assert.ok(await page.$('#policy option[value=verify]'), 'the policy menu offers verify');
    console.log(`ok loaded through the proxy at ${proxy.url}`);

    await page.selectOption('#policy', 'verify');
    await page.$eval('#threshold', (el) => { el.value = '0'; el.dispatchEvent(new Event('input')); });
    await page.fill('#verify-every', String(VERIFY_EVERY));
    await page.$eval('#verify-every', (el) => el.dispatchEvent(new Event('change')));
    await page.fill('#max-tokens', String(MAX_TOKENS));
    await page.$eval('#max-tokens', (el) => el.dispatchEvent(new Event('change')));
    assert.ok(await page.$eval('#verify', (el) => el.checked && el.disabled), 'the verify policy keeps verification on');

    await page.fill('#prompt', PROMPT);
    await page.click('#send');
    // The cue of a withdrawal on screen (it fades within a second or two).
    const cue = await page.waitForSelector('.msg.assistant .withdrawn', { timeout: TIMEOUT }).catch(() => null);
    if (cue) await page.screenshot({ path: `${shots}/correction.png` });
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant[data-done=true]').length > 0, null, { timeout: TIMEOUT });
    await page.waitForFunction(() => !document.querySelector('.withdrawn'), null, { timeout: 10_000 });
    const a = await answerState(page);
    const spans = await page.evaluate(() => window.__spans);
    const { log } = proxy;

    // The proxy forced one disagreement; any the two builds found by themselves count too.
    assert.ok(log.forced, `a scoring consult was rewritten (${log.scoring} scoring consults; natural: ${JSON.stringify(log.natural)})`);
    assert.ok(cue, 'a struck cue showed where tokens were withdrawn');
    const corrections = 1 + log.natural.length;
    const withdrawn = log.forced.withdrawnIds.length + log.natural.reduce((n, x) => n + x.withdrawn, 0);
    console.log(`ok forced: position ${log.forced.at} → token ${log.forced.replacement}, ${log.forced.withdrawnIds.length} withdrawn; ${log.scoring} scoring consults, ${log.natural.length} natural corrections`);

    // Shown before checked, checked by the end.
    assert.ok(spans.some((s) => s.unverified), 'local tokens show at once, marked unverified');
    assert.equal(a.unverified, 0, 'the verify policy checks every token before the end');

    // The withdrawn spans left the page; the correction stands in their place with their text in its title.
    const removed = spans.filter((s) => 'removed' in s);
    assert.equal(removed.length, withdrawn, `spans removed from the page: ${JSON.stringify(removed)}`);
    assert.equal(a.corrections.length, corrections, `correction spans: ${JSON.stringify(a.corrections)}`);
    const forcedText = await decode(server.url, log.forced.withdrawnIds);
    const correction = a.corrections.find((c) => c.title.includes(`replaced ${JSON.stringify(forcedText)}`));
    assert.ok(correction, `a correction's title names the withdrawn text ${JSON.stringify(forcedText)}: ${JSON.stringify(a.corrections)}`);
    assert.ok(/\btok cloud\b/.test(correction.className) && correction.title.startsWith('cloud'), `the correction is a cloud token: ${correction.className}`);
    assert.equal(await decode(server.url, [log.forced.replacement]), correction.text, 'the correction is the token the cloud put first');

    // The statistics panel.
    assert.equal(Number(a.stats.corrections), corrections, `corrections in the panel: ${JSON.stringify(a.stats)}`);
    assert.equal(Number(a.stats.withdrawn_tokens), withdrawn, `withdrawn tokens in the panel: ${JSON.stringify(a.stats)}`);
    assert.equal(Number(a.stats.unverified_tokens), 0, 'nothing unchecked');
    assert.equal(Number(a.stats.tokens), a.spans, 'the statistics count the standing spans');
    assert.ok(Number(a.stats.verified_tokens) > 0, `checked tokens: ${a.stats.verified_tokens}`);

    // The text is the standing tokens, the ids the page last sent plus the cloud's answer to them, and the history's.
    const last = log.last;
    // An end-of-generation token ends the answer without being part of it.
    const tail = (last.response.choices[0].token_ids ?? []).filter((id) => id >= FIRST_ORDINARY_ID);
    const answerIds = [...last.prompt.slice(log.promptLen), ...tail];
    const expected = await decode(server.url, answerIds);
    assert.equal(a.shownText, a.spansText, 'nothing but the standing tokens is shown');
    assert.equal(a.spansText, expected, 'the page shows what the engine kept');
    assert.equal(a.history.content, expected, 'the history keeps the standing tokens');
    assert.equal(a.history.tokens.length, a.spans, 'withdrawn tokens left the history');
    console.log(`ok correction on screen: ${a.spans} tokens, ${a.stats.corrections} correction, ${a.stats.withdrawn_tokens} withdrawn, ${a.stats.verified_tokens} checked; "${correction.title}"`);
    await page.hover('.tok.correction');
    await page.screenshot({ path: `${shots}/correction-done.png` });

    // A reload draws the answer from the history: the correction and its title, nothing unchecked.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: TIMEOUT });
    const again = await answerState(page);
    assert.equal(again.spansText, expected, 'the answer survives a reload');
    assert.deepEqual(again.corrections.map((c) => c.title), a.corrections.map((c) => c.title), 'with its corrections');
    assert.equal(again.unverified, 0, 'and its checks');
    console.log('ok reload: the corrected answer kept');

    // Stop under the verify policy: the engine checks what stands before it stops.
    await page.fill('#max-tokens', '400');
    await page.$eval('#max-tokens', (el) => el.dispatchEvent(new Event('change')));
    await page.fill('#prompt', 'Write a long story about a lighthouse keeper, in ten paragraphs.');
    await page.click('#send');
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant')[1]?.querySelectorAll('.tok').length >= 6, null, { timeout: TIMEOUT });
    await page.click('#send'); // Stop
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant[data-done=true]').length > 1, null, { timeout: TIMEOUT });
    const stopped = await answerState(page);
    assert.equal(stopped.history.note, 'Stopped.', 'a stopped answer says so');
    assert.ok(stopped.spans >= 6 && stopped.spans < 400, `stopped early: ${stopped.spans} tokens`);
    assert.equal(stopped.unverified, 0, 'what stands after Stop is checked');
    assert.equal(Number(stopped.stats.unverified_tokens), 0, 'the statistics agree');
    assert.equal(Number(stopped.stats.tokens), stopped.spans, 'the statistics count the standing spans');
    assert.equal(stopped.history.content, stopped.spansText, 'the history keeps the standing tokens');
    console.log(`ok stop: ${stopped.spans} tokens, all checked`);
    assert.deepEqual(errors, [], 'no uncaught errors on the page');
  } finally {
    await browser.close();
    server.child.kill('SIGKILL');
    proxy.server.close();
  }
  console.log(`e2e verify: all checks passed; screenshots in ${shots}`);
}

main().catch((e) => {
  console.error(`e2e verify FAILED: ${e.stack || e}`);
  process.exit(1);
});
