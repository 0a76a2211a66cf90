// The page's entry: the same chat (app.js) as a web page or as the browser extension's side
// panel. As a web page the configuration is config.json (written by `hybrid serve` or
// `hybrid site`) and the cloud settings live in localStorage, edited in a dialog.
import { startApp } from './app.js';

const CLOUD_KEY = 'hybrid-assistant.cloud';
const $ = (id) => document.getElementById(id);

function savedCloud() {
  try { return JSON.parse(localStorage.getItem(CLOUD_KEY)) ?? {}; } catch { return {}; }
}

function webHost() {
  let base = null;
  const listeners = [];
  const effective = () => {
    const saved = savedCloud();
    return {
      ...base,
      cloud: {
        url: saved.url || base.cloud.url || location.origin,
        apiKey: saved.apiKey || '',
        model: saved.model || base.cloud.model,
        timeoutMs: Number(saved.timeoutMs) || 10000,
      },
    };
  };
  $('settings').addEventListener('close', () => {
    const action = $('settings').returnValue;
    if (action === 'save') {
      localStorage.setItem(CLOUD_KEY, JSON.stringify({
        url: $('cloud-url').value.trim(),
        apiKey: $('cloud-key').value.trim(),
        model: $('cloud-model').value.trim(),
        timeoutMs: Number($('cloud-timeout').value) || 10000,
      }));
    } else if (action === 'reset') {
      localStorage.removeItem(CLOUD_KEY);
    } else {
      return;
    }
    for (const listener of listeners) listener(effective());
  });
  return {
    async loadConfig() {
      try {
        const response = await fetch('config.json', { cache: 'no-cache' });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        base = await response.json();
      } catch (e) {
        throw new Error(`Cannot read config.json (${e.message}): serve this page with \`hybrid serve\` or a site written by \`hybrid site\`.`);
      }
      return effective();
    },
    editSettings() {
      if (!base) return;
      const { cloud } = effective();
      $('cloud-url').value = savedCloud().url || '';
      $('cloud-url').placeholder = base.cloud.url || location.origin;
      $('cloud-key').value = cloud.apiKey;
      $('cloud-model').value = cloud.model;
      $('cloud-timeout').value = cloud.timeoutMs;
      $('settings').showModal();
    },
    onChange(listener) {
      listeners.push(listener);
    },
  };
}

// An extension page has its extension's id; a web page has none.
const host = globalThis.chrome?.runtime?.id
  ? (await import('./extension/host.js')).extensionHost()
  : webHost();
startApp(host);
