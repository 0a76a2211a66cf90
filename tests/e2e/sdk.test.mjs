// The OpenAI SDKs against hybrid serve (smollm2-135m, an API key): the JS SDK (npm `openai`)
// in headless Chromium on a page of another origin, so every call passes a CORS preflight
// with the SDK's own headers (x-stainless-*), plain and streamed, with logprobs, and its
// typed errors; then the Python SDK (PyPI `openai`, in target/sdk-venv) through
// openai_sdk_smoke.py.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launchChromium, MODEL, startServer, startStaticHost } from './server.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = fileURLToPath(new URL('../..', import.meta.url));
const KEY = 'sdk-test-key';

const pageHost = await startStaticHost([['/sdk/', `${here}node_modules/openai`]]);
const { child, url } = await startServer(pageHost.url, ['--api-key', KEY, '--no-access-log']);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const sent = [];
  page.on('request', (r) => { if (r.url().startsWith(url)) sent.push({ method: r.method(), headers: r.headers() }); });
  await page.goto(`${pageHost.url}/sdk/package.json`);
  const got = await page.evaluate(async ({ url, key, model }) => {
    const { default: OpenAI } = await import('/sdk/index.mjs');
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, dangerouslyAllowBrowser: true, maxRetries: 0 });
    const prompt = 'def fibonacci(n):';
    const plain = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, logprobs: 2 });
    const stream = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, stream: true });
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.choices.map((c) => c.text).join('');
    const failure = async (call) => {
      try { await call(); return null; } catch (e) { return { name: e.constructor.name, status: e.status, code: e.code, param: e.param }; }
    };
    const wrongKey = await failure(() => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong', dangerouslyAllowBrowser: true, maxRetries: 0 })
      .completions.create({ model, prompt, max_tokens: 1 }));
    const refused = await failure(() => client.completions.create({ model, prompt, max_tokens: 1, frequency_penalty: 1 }));
    const models = (await client.models.list()).data.map((m) => m.id);
    return { plain, streamed, wrongKey, refused, models };
  }, { url, key: KEY, model: MODEL });

  const choice = got.plain.choices[0];
  assert.ok(choice.text.length > 0 && got.plain.usage.completion_tokens === choice.logprobs.tokens.length, JSON.stringify(got.plain));
  assert.equal(got.streamed, choice.text);
  assert.deepEqual(got.models, [MODEL]);
  assert.deepEqual(got.wrongKey, { name: 'AuthenticationError', status: 401, code: 'invalid_api_key', param: null });
  assert.deepEqual(got.refused, { name: 'BadRequestError', status: 400, code: 'unsupported_parameter', param: 'frequency_penalty' });
  // Chromium sends a preflight for these (Playwright does not show it); the calls above
  // succeeding from another origin is what says it passed.
  const post = sent.find((r) => r.method === 'POST');
  assert.ok(post && Object.keys(post.headers).some((h) => h.startsWith('x-stainless-')), `the SDK sent no x-stainless headers: ${JSON.stringify(post)}`);
  console.log(`ok openai js: plain, streamed, models, 401, 400 from the page origin ${pageHost.url}, x-stainless headers through CORS`);

  const python = `${root}target/sdk-venv/bin/python`;
  assert.ok(existsSync(python), `${python} is missing: run make setup (it installs the openai Python package in a venv)`);
  const run = spawnSync(python, [`${here}openai_sdk_smoke.py`, url, KEY, MODEL], { encoding: 'utf8' });
  assert.equal(run.status, 0, `openai python: ${run.stdout}${run.stderr}`);
  console.log(`ok ${run.stdout.trim()}`);
  console.log('sdk e2e: all checks passed');
} finally {
  await browser.close();
  child.kill();
  pageHost.server.close();
}
