// The engine's Web Worker: loads the wasm build and the model files, runs generations, and
// talks to the page only by messages (see assistant.js for the protocol's other side).
//
// page -> worker: {type: 'load', id, model, rewardHead}
//                 {type: 'generate', id, messages, options, cloud: {url, apiKey, model, timeoutMs}, cloudVersion}
//                 {type: 'abort', id}
// worker -> page: {type: 'progress', id, file, loaded, total, fromCache}
//                 {type: 'loaded', id, info}
//                 {type: 'event', id, event}   (an engine event: a token, {withdraw_from}, {verified_to})
//                 {type: 'consult', id, ms, error, trouble}   (one per cloud request, as it returns;
//                   trouble: {kind: 'unauthorized'|'rate_limited'|'timeout'|'network'|'server'|
//                   'refused', status, retryAfterS} when it failed)
//                 {type: 'done', id, stats}
//                 {type: 'error', id, message, download}
import init, { Engine } from './pkg/hybrid_assistant.js';
import { fetchVerified, DownloadError } from './download.js';

let engine = null;
// The cloud settings' version of the last answer: the engine's back-off (a refused key, a rate
// limit) holds until the page sets the cloud again.
let lastCloudVersion = null;
const aborts = new Map(); // generation id -> AbortController

// A macrotask boundary: lets an 'abort' message in between two tokens.
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();
const yieldToEvents = () => new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(0); });

self.onmessage = async ({ data }) => {
  const { type, id } = data;
  try {
    if (type === 'load') await load(data);
    else if (type === 'generate') await generate(data);
    else if (type === 'abort') aborts.get(id)?.abort();
  } catch (e) {
    postMessage({ type: 'error', id, message: e.message || String(e), download: e instanceof DownloadError });
  }
};

async function load({ id, model, rewardHead, gpu = 'auto' }) {
  if (aborts.size) throw new Error('an answer is being generated: stop it before loading another model');
  await init();
  const progress = (file) => (loaded, total, fromCache) =>
    postMessage({ type: 'progress', id, file: file.name, loaded, total, fromCache });
  const modelBytes = await fetchVerified(model, progress(model));
  const headBytes = rewardHead ? await fetchVerified(rewardHead, progress(rewardHead)) : undefined;
  engine?.free();
  engine = null;
  engine = await Engine.load(modelBytes, headBytes, gpu);
  postMessage({ type: 'loaded', id, info: JSON.parse(engine.info()) });
}

async function generate({ id, messages, options, cloud, cloudVersion }) {
  if (!engine) throw new Error('no model is loaded yet');
  const controller = new AbortController();
  aborts.set(id, controller);
  try {
    const prompt = engine.encodeChat(JSON.stringify(messages));
    if (cloudVersion !== lastCloudVersion) engine.resetCloudBackoff();
    lastCloudVersion = cloudVersion;
    const cloudUrl = cloud?.url ? completionsUrl(cloud.url) : null;
    // Stop cuts a consult short, except under the verify policy: there the engine's last
    // consult checks what stands before it stops, and the timeout still bounds it.
    const consultSignal = options.policy === 'verify' ? undefined : controller.signal;
    const fetchCloud = cloudUrl ? async (body) => {
      const started = performance.now();
      try {
        const answer = await consult(cloudUrl, cloud, body, consultSignal);
        const failed = answer.status >= 400;
        const error = failed ? `HTTP ${answer.status}: ${errorMessage(answer.text)}` : null;
        const trouble = failed ? httpTrouble(answer.status, answer.retryAfter) : null;
        postMessage({ type: 'consult', id, ms: performance.now() - started, error, trouble });
        return answer;
      } catch (e) {
        const trouble = { kind: e.timeout ? 'timeout' : 'network' };
        if (!controller.signal.aborted) postMessage({ type: 'consult', id, ms: performance.now() - started, error: e.message, trouble });
        throw e;
      }
    } : undefined;
    const engineOptions = { ...options, cloudModel: cloud?.model, cloudUrl: cloud?.url || 'the cloud' };
    const onEvent = async (json) => {
      postMessage({ type: 'event', id, event: JSON.parse(json) });
      await yieldToEvents();
      return !controller.signal.aborted;
    };
    const stats = await engine.generate(prompt, JSON.stringify(engineOptions), fetchCloud, onEvent);
    postMessage({ type: 'done', id, stats: JSON.parse(stats) });
  } finally {
    aborts.delete(id);
  }
}

function errorMessage(text) {
  try { return JSON.parse(text).error.message; } catch { return text.slice(0, 200); }
}

function completionsUrl(base) {
  const url = new URL(base, self.location.href).href.replace(/\/+$/, '');
  return url.endsWith('/v1') ? `${url}/completions` : `${url}/v1/completions`;
}

// What kind of failure an HTTP error status is (the page says what to do about each).
function httpTrouble(status, retryAfter) {
  if (status === 401 || status === 403) return { kind: 'unauthorized', status };
  if (status === 429) return { kind: 'rate_limited', status, retryAfterS: retryAfter && Number.isFinite(+retryAfter) ? +retryAfter : null };
  if (status === 408) return { kind: 'timeout', status };
  return { kind: status >= 500 ? 'server' : 'refused', status };
}

async function consult(url, cloud, body, abortSignal) {
  const headers = { 'Content-Type': 'application/json' };
  if (cloud.apiKey) headers.Authorization = `Bearer ${cloud.apiKey}`;
  const timeoutMs = cloud.timeoutMs || 10000;
  const signal = AbortSignal.any([abortSignal, AbortSignal.timeout(timeoutMs)].filter(Boolean));
  try {
    const response = await fetch(url, { method: 'POST', headers, body, signal });
    // Retry-After reaches a page only when the server lists it in Access-Control-Expose-Headers (hybrid serve does).
    return { status: response.status, text: await response.text(), retryAfter: response.headers.get('Retry-After') };
  } catch (e) {
    if (e.name === 'TimeoutError') throw Object.assign(new Error(`no answer within ${timeoutMs} ms`), { timeout: true });
    // fetch says only "Failed to fetch" for a refused connection and a CORS refusal alike.
    const origin = new URL(url).origin;
    throw new Error(`the browser could not reach ${origin} (${e.message}): the server is down, or it does not allow requests from this page's origin ${self.location.origin} (CORS)`);
  }
}
