// The engine's Web Worker: loads the wasm build and the model files, runs generations, and
// talks to the page only by messages (see assistant.js for the protocol's other side).
//
// page -> worker: {type: 'load', id, model, rewardHead}
//                 {type: 'generate', id, messages, options, cloud: {url, apiKey, model, timeoutMs}}
//                 {type: 'abort', id}
// worker -> page: {type: 'progress', id, file, loaded, total, fromCache}
//                 {type: 'loaded', id, info}
//                 {type: 'event', id, event}   (an engine event: a token, {withdraw_from}, {verified_to})
//                 {type: 'consult', id, ms, error}   (one per cloud request, as it returns)
//                 {type: 'done', id, stats}
//                 {type: 'error', id, message, download}
import init, { Engine } from './pkg/hybrid_assistant.js';
import { fetchVerified, DownloadError } from './download.js';

let engine = null;
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

async function generate({ id, messages, options, cloud }) {
  if (!engine) throw new Error('no model is loaded yet');
  const controller = new AbortController();
  aborts.set(id, controller);
  try {
    const prompt = engine.encodeChat(JSON.stringify(messages));
    const cloudUrl = cloud?.url ? completionsUrl(cloud.url) : null;
    // Stop cuts a consult short, except under the verify policy: there the engine's last
    // consult checks what stands before it stops, and the timeout still bounds it.
    const consultSignal = options.policy === 'verify' ? undefined : controller.signal;
    const fetchCloud = cloudUrl ? async (body) => {
      const started = performance.now();
      try {
        const answer = await consult(cloudUrl, cloud, body, consultSignal);
        const error = answer.status >= 400 ? `HTTP ${answer.status}: ${errorMessage(answer.text)}` : null;
        postMessage({ type: 'consult', id, ms: performance.now() - started, error });
        return answer;
      } catch (e) {
        postMessage({ type: 'consult', id, ms: performance.now() - started, error: e.message });
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

async function consult(url, cloud, body, abortSignal) {
  const headers = { 'Content-Type': 'application/json' };
  if (cloud.apiKey) headers.Authorization = `Bearer ${cloud.apiKey}`;
  const signal = AbortSignal.any([abortSignal, AbortSignal.timeout(cloud.timeoutMs || 10000)].filter(Boolean));
  try {
    const response = await fetch(url, { method: 'POST', headers, body, signal });
    return { status: response.status, text: await response.text() };
  } catch (e) {
    throw new Error(e.name === 'TimeoutError' ? `no answer within ${cloud.timeoutMs || 10000} ms` : e.message);
  }
}
