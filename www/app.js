// The chat: loads the engine (assistant.js), streams answers with every token marked by where
// it came from, and keeps the conversation, the draft and the controls in localStorage so a
// reload or a crash loses nothing. Where the configuration and the cloud settings come from
// is the host's business: the web page (main.js: config.json, a settings dialog) or the
// browser extension (extension/host.js: chrome.storage, the options page).
//
// host = {
//   loadConfig(): Promise<{model, rewardHead, cloud: {url, apiKey, model, timeoutMs}, notice?}>,
//   editSettings(): void,
//   onChange(callback(config)): settings changed,
//   onPrompt?(callback(text)): text to put in the prompt box (the extension's selection),
// }
import { Assistant } from './assistant.js';

const $ = (id) => document.getElementById(id);
const STORE = 'hybrid-assistant.';
const load = (key, fallback) => {
  try { return JSON.parse(localStorage.getItem(STORE + key)) ?? fallback; } catch { return fallback; }
};
const save = (key, value) => {
  try { localStorage.setItem(STORE + key, JSON.stringify(value)); } catch (e) { showError(`cannot save in this browser: ${e.message}`); }
};

// Threshold slider range and default per policy (entropy is in nats, the rest in [0, 1]).
const POLICIES = {
  reward: { max: 1, step: 0.01, initial: 0.7 },
  maxprob: { max: 1, step: 0.01, initial: 0.6 },
  entropy: { max: 6, step: 0.05, initial: 1.0 },
  random: { max: 1, step: 0.01, initial: 0.05 },
  never: null,
  always: null,
  // The max-prob gate; the engine adds the consults that check every token.
  verify: { max: 1, step: 0.01, initial: 0.7 },
};

let config = null;
let assistant = null;
let running = null; // AbortController of the answer being generated
// [{role, content, tokens?: [[text, source, reward, prob, replaced?]], checked?, stats?, note?}]:
// `replaced` is the withdrawn text a correction took the place of; `checked` (answers that
// ran with verification) counts the leading tokens the cloud checked.
const history = load('history', []);
// verifyEvery null: the engine's default.
const controls = { policy: 'reward', thresholds: {}, consultTokens: 1, maxTokens: 512, gpu: true, verify: true, verifyEvery: null, ...load('controls', {}) };

function setState(state) {
  document.body.dataset.state = state;
  const ready = state === 'ready';
  $('prompt').disabled = !(ready || state === 'generating');
  $('send').disabled = !(ready || state === 'generating');
  $('send').textContent = state === 'generating' ? 'Stop' : 'Send';
}

function show(id, detail) {
  const el = $(id);
  if (detail !== undefined) el.querySelector('.detail').textContent = detail;
  el.hidden = false;
}

function showError(message) {
  show('banner-error', message);
}

// The cloud banner says what happened and what to do: a failed consult's `trouble` (worker.js)
// or, at the end of an answer, the engine's back-off hold (`stats.cloud_hold`, src/backoff.rs).
let countdown = null;
function showCloudTrouble(trouble, error) {
  clearInterval(countdown);
  const banner = $('banner-cloud');
  const say = (text) => { banner.querySelector('.detail').textContent = text; };
  const kind = trouble?.kind;
  banner.dataset.kind = kind || 'failing';
  // What the user can fix in the settings: the key, or the URL the browser cannot reach.
  banner.querySelector('.open-settings').hidden = !['unauthorized', 'network'].includes(kind);
  if (kind === 'unauthorized') {
    say(`The cloud refused the API key (HTTP ${trouble.status}). Set the right key in Settings; until then no consult is sent.`);
  } else if (kind === 'rate_limited' && trouble.retryAfterS != null) {
    const until = performance.now() + trouble.retryAfterS * 1000;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - performance.now()) / 1000));
      say(`The cloud is rate-limiting this key: consults wait ${left} s (its Retry-After).`);
      if (!left) clearInterval(countdown);
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else if (kind === 'rate_limited') {
    say(`The cloud is rate-limiting this key (HTTP 429): consults back off. ${error ?? ''}`);
  } else if (kind === 'timeout') {
    say(`The cloud did not answer in time: ${error}. Consults back off and retry; a longer timeout in Settings may help.`);
  } else if (kind === 'network') {
    say(`${error}.`);
  } else if (kind === 'paused') {
    say(`Consults are paused after repeated failures; the next one is tried in ${Math.ceil(trouble.pauseS)} s.${error ? ` The last: ${error}.` : ''}`);
  } else if (kind === 'server') {
    say(`The cloud failed: ${error}. Consults back off and retry.`);
  } else {
    say(`The cloud refused the request: ${error}.`);
  }
  banner.hidden = false;
}

// The engine's hold at the end of an answer, in the same words as the consult that caused it.
function showCloudHold(hold, error) {
  if (hold.kind === 'unauthorized') showCloudTrouble({ kind: 'unauthorized', status: hold.status }, error);
  else if (hold.kind === 'rate_limited') showCloudTrouble({ kind: 'rate_limited', retryAfterS: hold.retry_after_s }, error);
  else if ($('banner-cloud').hidden) showCloudTrouble({ kind: 'paused', pauseS: hold.pause_s }, error);
}

// ---- controls ----

function renderControls() {
  $('policy').value = controls.policy;
  const range = POLICIES[controls.policy];
  const slider = $('threshold');
  slider.disabled = !range;
  if (range) {
    slider.max = range.max;
    slider.step = range.step;
    slider.value = controls.thresholds[controls.policy] ?? range.initial;
  }
  $('threshold-value').textContent = range ? Number(slider.value).toFixed(2) : '–';
  $('consult-tokens').value = controls.consultTokens;
  $('max-tokens').value = controls.maxTokens;
  $('use-gpu').checked = controls.gpu;
  // The verify policy is verification: it cannot run without it.
  const lossless = controls.policy === 'verify';
  $('verify').checked = lossless || controls.verify;
  $('verify').disabled = lossless || !mayConsult(controls.policy);
  $('verify-every').value = controls.verifyEvery ?? '';
  $('verify-every').disabled = !lossless;
}

const mayConsult = (policy) => policy !== 'never';

function readControls() {
  controls.policy = $('policy').value;
  if (POLICIES[controls.policy]) controls.thresholds[controls.policy] = Number($('threshold').value);
  controls.consultTokens = Math.max(1, Number($('consult-tokens').value) || 1);
  controls.maxTokens = Math.max(1, Number($('max-tokens').value) || 512);
  controls.gpu = $('use-gpu').checked;
  if (!$('verify').disabled) controls.verify = $('verify').checked;
  const every = Number($('verify-every').value);
  controls.verifyEvery = $('verify-every').value.trim() && every >= 1 ? Math.round(every) : null;
  save('controls', controls);
}

// ---- the conversation ----

function messageElement(role) {
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  const label = document.createElement('span');
  label.className = 'role';
  label.textContent = role === 'user' ? 'You' : 'Assistant';
  el.append(label);
  $('chat').append(el);
  return el;
}

function tokenSpan({ text, source, reward, slm_prob: prob }, replaced) {
  const span = document.createElement('span');
  span.className = `tok ${source}`;
  span.textContent = text;
  const parts = [source];
  if (reward != null) parts.push(`reward ${reward.toFixed(3)}`);
  if (prob != null) parts.push(`small model p ${prob.toFixed(3)}`);
  if (replaced != null) {
    span.classList.add('correction');
    parts.push(`correction: replaced ${JSON.stringify(replaced)}`);
  }
  span.title = parts.join(' · ');
  return span;
}

// One answer on screen and in the history: its standing tokens, how many of them the cloud
// has checked, and the withdrawals. Tokens past the checked prefix are shown at once, marked
// `unverified` until a check or a correction covers them.
class AnswerView {
  constructor(el, { verifying }) {
    this.el = el;
    this.verifying = verifying;
    this.spans = [];
    this.tokens = []; // history entries, parallel to spans
    this.checked = 0;
    this.replaced = null; // withdrawn text awaiting its correction
  }

  push(token, replaced = this.replaced) {
    this.replaced = null;
    const span = tokenSpan(token, replaced);
    const i = this.spans.length;
    // A cloud token right after the checked prefix extends it.
    if (token.source === 'cloud' && i === this.checked) this.checked += 1;
    if (this.verifying && token.source !== 'cloud' && i >= this.checked) span.classList.add('unverified');
    this.el.append(span);
    this.spans.push(span);
    const entry = [token.text, token.source, token.reward, token.slm_prob];
    if (replaced != null) entry.push(replaced);
    this.tokens.push(entry);
  }

  verified(to) {
    for (let i = this.checked; i < Math.min(to, this.spans.length); i++) this.spans[i].classList.remove('unverified');
    this.checked = Math.max(this.checked, to);
  }

  // Tokens from `from` on leave the page and the history; a struck copy fades out where they
  // were, and the next token (the correction) remembers their text for its tooltip.
  withdraw(from) {
    this.verified(from);
    const removed = this.spans.splice(from);
    const gone = this.tokens.splice(from);
    this.replaced = gone.map((t) => t[0]).join('');
    const cue = document.createElement('span');
    cue.className = 'withdrawn';
    cue.textContent = this.replaced;
    cue.setAttribute('aria-hidden', 'true');
    removed[0]?.before(cue);
    for (const span of removed) span.remove();
    const drop = () => cue.remove();
    cue.addEventListener('animationend', drop);
    setTimeout(drop, 3000); // no animation (reduced motion, hidden tab): still goes
    return gone;
  }

  get text() {
    return this.tokens.map((t) => t[0]).join('');
  }
}

function note(el, text) {
  const n = document.createElement('span');
  n.className = 'note';
  n.textContent = text;
  el.append(n);
}

function renderHistory() {
  $('chat').replaceChildren();
  for (const m of history) {
    const el = messageElement(m.role);
    if (m.tokens) {
      const view = new AnswerView(el, { verifying: m.checked != null });
      view.checked = m.checked ?? 0;
      for (const [text, source, reward, slm_prob, replaced] of m.tokens) view.push({ text, source, reward, slm_prob }, replaced);
      el.dataset.done = 'true';
    } else {
      el.append(m.content);
    }
    if (m.note) note(el, m.note);
  }
}

function showStats(s) {
  const cell = (name) => document.querySelector(`#stats [data-stat="${name}"]`);
  cell('tokens').textContent = s.tokens;
  cell('cloud_tokens').textContent = s.cloud_tokens;
  cell('cloud_share').textContent = `${(100 * s.cloud_share).toFixed(1)}%`;
  cell('consults').textContent = s.consults;
  cell('fallbacks').textContent = s.fallbacks;
  cell('local_tok_s').textContent = s.local_tok_s.toFixed(1);
  cell('verified_tokens').textContent = s.verified_tokens ?? '–';
  cell('unverified_tokens').textContent = s.unverified_tokens ?? '–';
  cell('corrections').textContent = s.corrections ?? '–';
  cell('withdrawn_tokens').textContent = s.withdrawn_tokens ?? '–';
  cell('consult_ms').textContent = s.consults ? `${Math.round(s.consult_ms_p50)} / ${Math.round(s.consult_ms_p95)} ms` : '–';
}

// Nearest-rank percentile, as the engine computes it.
function percentile(values, p) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length))) - 1];
}

async function send(text) {
  readControls();
  history.push({ role: 'user', content: text });
  save('history', history);
  save('draft', '');
  messageElement('user').append(text);
  const el = messageElement('assistant');
  const verifying = mayConsult(controls.policy) && (controls.policy === 'verify' || controls.verify);
  const view = new AnswerView(el, { verifying });
  const live = {
    tokens: 0, cloud_tokens: 0, fallbacks: 0, consults: 0, cloud_share: 0, local_tok_s: 0, consult_ms_p50: 0, consult_ms_p95: 0,
    verified_tokens: 0, unverified_tokens: 0, corrections: 0, withdrawn_tokens: 0,
  };
  const consultMs = [];
  const started = performance.now();
  running = new AbortController();
  setState('generating');
  const messages = history.map(({ role, content }) => ({ role, content }));
  const options = {
    policy: controls.policy,
    threshold: controls.thresholds[controls.policy] ?? POLICIES[controls.policy]?.initial ?? 0,
    maxTokens: controls.maxTokens,
    consultTokens: controls.consultTokens,
    signal: running.signal,
    onConsult: ({ ms, error, trouble }) => {
      consultMs.push(ms);
      live.consults = consultMs.length;
      live.consult_ms_p50 = percentile(consultMs, 50);
      live.consult_ms_p95 = percentile(consultMs, 95);
      if (error) showCloudTrouble(trouble, error);
      else { clearInterval(countdown); $('banner-cloud').hidden = true; }
    },
  };
  // Left out, the engine's defaults apply (verification on; its own stretch length).
  if (controls.policy !== 'verify' && !controls.verify) options.verify = false;
  if (controls.policy === 'verify' && controls.verifyEvery) options.verifyEvery = controls.verifyEvery;
  const count = (source, n) => {
    live.tokens += n;
    if (source === 'cloud') live.cloud_tokens += n;
    if (source === 'fallback') live.fallbacks += n;
  };
  let stats = null;
  let failure = null;
  try {
    for await (const item of assistant.generate(messages, options)) {
      if (item.done) { stats = item.stats; break; }
      if ('withdraw_from' in item) {
        const checkedBefore = view.checked;
        const gone = view.withdraw(item.withdraw_from);
        live.verified_tokens += Math.max(0, item.withdraw_from - checkedBefore);
        for (const [, source] of gone) count(source, -1);
        live.corrections += 1;
        live.withdrawn_tokens += gone.length;
      } else if ('verified_to' in item) {
        live.verified_tokens += Math.max(0, item.verified_to - view.checked);
        view.verified(item.verified_to);
      } else {
        view.push(item);
        count(item.source, 1);
      }
      live.unverified_tokens = view.tokens.slice(view.checked).filter((t) => t[1] !== 'cloud').length;
      live.cloud_share = live.tokens ? live.cloud_tokens / live.tokens : 0;
      live.local_tok_s = live.tokens / ((performance.now() - started) / 1000);
      showStats(live);
      el.scrollIntoView({ block: 'end' });
    }
  } catch (e) {
    failure = e.message;
  }
  running = null;
  const tokens = view.tokens;
  if (stats) {
    if (stats.tail) { el.append(stats.tail); tokens.push([stats.tail, 'local', null, null]); }
    showStats(stats);
    // The back-off outlives the answer: a hold set by an earlier answer is shown again.
    if (stats.cloud_hold) showCloudHold(stats.cloud_hold, stats.last_cloud_error);
    if (stats.backend) showBackend(stats.backend, stats.cpu_reason || whyOf(assistant.info));
  }
  const noteText = failure ? `The answer stopped: ${failure}` : stats?.stop === 'stopped' ? 'Stopped.' : null;
  if (noteText) note(el, noteText);
  el.dataset.done = 'true';
  const entry = { role: 'assistant', content: tokens.map((t) => t[0]).join(''), tokens, stats, note: noteText };
  // The tail is the last token's unfinished bytes: checked when that token was.
  if (verifying) entry.checked = view.checked + (stats?.tail && view.checked === view.spans.length ? 1 : 0);
  history.push(entry);
  save('history', history);
  setState('ready');
}

// ---- start-up ----

async function loadEngine() {
  $('banner-download').hidden = true;
  $('download').hidden = false;
  setState('loading');
  const files = [config.model, config.rewardHead].filter(Boolean);
  const totalBytes = files.reduce((n, f) => n + f.bytes, 0);
  const done = new Map();
  const onProgress = ({ file, loaded, fromCache }) => {
    done.set(file, loaded);
    const sum = [...done.values()].reduce((a, b) => a + b, 0);
    $('download-file').textContent = file;
    $('download-label').textContent = `${(sum / 2 ** 20).toFixed(1)} of ${(totalBytes / 2 ** 20).toFixed(1)} MiB${fromCache ? ' (from the browser cache)' : ''}`;
    $('download-progress').value = sum / totalBytes;
  };
  const choice = gpuChoice();
  try {
    const spec = { model: config.model, rewardHead: config.rewardHead, gpu: choice.gpu, onProgress };
    if (assistant) await assistant.reload(spec);
    else assistant = await Assistant.load({ ...spec, cloud: config.cloud });
  } catch (e) {
    $('download').hidden = true;
    setState('error');
    if (e.download) show('banner-download', e.message);
    else showError(`The model could not be loaded: ${e.message}`);
    return;
  }
  $('download').hidden = true;
  showModel();
  const info = assistant.info;
  if (choice.gpu === 'auto' && info.calibration) {
    save(`backend:${config.model.sha256}`, { backend: info.backend, adapter: info.adapter, why: `${whyOf(info)}, measured on first load` });
  }
  showBackend(info.backend, choice.why || whyOf(info));
  const noHead = !assistant.info.rewardHead;
  $('policy').querySelector('option[value=reward]').disabled = noHead;
  if (noHead && controls.policy === 'reward') { controls.policy = 'maxprob'; renderControls(); }
  setState('ready');
}

// The engine's `gpu` (auto | force | calibrate | off): off when unticked, else the page's ?gpu=, else
// what calibration found on an earlier load of this model in this browser, else auto (a
// software adapter is left for the CPU; on a hardware one a few timed steps on each pick).
function gpuChoice() {
  if (!controls.gpu) return { gpu: 'off', why: 'WebGPU is switched off' };
  const asked = new URLSearchParams(location.search).get('gpu');
  if (asked === 'force' || asked === 'off') return { gpu: asked, why: `?gpu=${asked}` };
  // Times both backends even on a software adapter (not cached: it is asked for each load).
  if (asked === 'calibrate') return { gpu: asked };
  const cached = load(`backend:${config.model.sha256}`, null);
  if (cached) return { gpu: cached.backend === 'webgpu' ? 'force' : 'off', why: cached.why };
  return { gpu: 'auto' };
}

// Why the engine runs where it does, from its info.
function whyOf(info) {
  const c = info.calibration;
  const speeds = c ? `WebGPU ${c.gpu_tok_s.toFixed(1)} tok/s, CPU ${c.cpu_tok_s.toFixed(1)} tok/s` : '';
  if (info.backend === 'webgpu') return c ? `faster here: ${speeds}` : 'WebGPU takes the model';
  return info.cpuReason || 'no WebGPU';
}

// Which backend runs the model and why, in the header; on the CPU a banner says why too.
function showBackend(backend, why) {
  const where = backend === 'webgpu' ? `WebGPU · ${assistant.info.adapter || 'GPU'}` : 'CPU · wasm SIMD';
  $('backend').textContent = `${where} (${why})`;
  $('backend').dataset.backend = backend;
  $('banner-cpu').hidden = backend === 'webgpu';
  if (backend !== 'webgpu') $('banner-cpu').querySelector('.detail').textContent = why;
}

function showModel() {
  const info = assistant?.info;
  $('model-status').textContent = `${config.model.name}${info ? ` (${info.layers} layers)` : ''} · cloud: ${config.cloud.model}`;
}

// New settings: a new cloud applies to the next answer; another model is loaded at once.
function applyConfig(next) {
  const modelChanged = next.model.url !== config.model.url || next.model.sha256 !== config.model.sha256;
  config = next;
  if (assistant) assistant.cloud = config.cloud;
  if (modelChanged && !running) loadEngine();
  else showModel();
}

export async function startApp(host) {
  renderControls();
  renderHistory();
  $('prompt').value = load('draft', '');

  $('policy').addEventListener('change', () => { readControls(); renderControls(); });
  $('threshold').addEventListener('input', () => { readControls(); renderControls(); });
  $('consult-tokens').addEventListener('change', readControls);
  $('max-tokens').addEventListener('change', readControls);
  $('verify').addEventListener('change', readControls);
  $('verify-every').addEventListener('change', readControls);
  $('use-gpu').addEventListener('change', () => { readControls(); if (!running && config) loadEngine(); });
  $('prompt').addEventListener('input', () => save('draft', $('prompt').value));
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit(); }
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    if (running) { running.abort(); return; }
    const text = $('prompt').value.trim();
    if (!text || document.body.dataset.state !== 'ready') return;
    $('prompt').value = '';
    send(text);
  });
  $('clear').addEventListener('click', () => {
    if (running) running.abort();
    history.length = 0;
    save('history', history);
    renderHistory();
  });
  $('open-settings').addEventListener('click', () => host.editSettings());
  $('banner-cloud').querySelector('.open-settings').addEventListener('click', () => host.editSettings());
  $('retry-download').addEventListener('click', loadEngine);
  host.onPrompt?.((text) => {
    $('prompt').value = text;
    save('draft', text);
    $('prompt').focus();
  });

  try {
    config = await host.loadConfig();
  } catch (e) {
    setState('error');
    showError(e.message);
    return;
  }
  if (config.notice) show('banner-notice', config.notice);
  host.onChange(applyConfig);
  showModel();
  await loadEngine();
}
