// The options page: edits the settings in chrome.storage.local and asks, at run time, for
// permission to reach exactly the origins they name (no blanket host permission).
import { FIELDS, packagedConfig, effectiveConfig, originsOf } from './host.js';

const $ = (id) => document.getElementById(id);

async function show() {
  const base = await packagedConfig();
  const { settings = {} } = await chrome.storage.local.get('settings');
  const defaults = { cloudUrl: base.cloud.url, cloudModel: base.cloud.model, timeoutMs: 10000, modelUrl: base.model.url, modelSha256: base.model.sha256 };
  for (const field of FIELDS) {
    $(field).value = settings[field] ?? '';
    $(field).placeholder = defaults[field] ?? '';
  }
  return base;
}

const base = await show();

$('options').addEventListener('submit', async (e) => {
  e.preventDefault();
  const settings = Object.fromEntries(FIELDS.map((f) => [f, $(f).value.trim()]));
  const config = effectiveConfig(base, settings);
  if (settings.modelUrl && settings.modelUrl !== base.model.url && !/^[0-9a-f]{64}$/.test(settings.modelSha256)) {
    $('status').textContent = 'Another model needs its sha256 (64 hex digits): the file is checked against it before use.';
    return;
  }
  // Requested inside the click (a user gesture), before anything is awaited.
  const granted = chrome.permissions.request({ origins: originsOf(config) });
  await chrome.storage.local.set({ settings });
  $('status').textContent = 'Saved.';
  try {
    $('status').textContent = (await granted)
      ? `Saved; this extension may reach ${originsOf(config).join(', ')}.`
      : 'Saved, but access to those origins was not granted: the cloud and the model download work only if those servers admit this extension (CORS).';
  } catch (err) {
    $('status').textContent = `Saved; the permission request failed: ${err.message}`;
  }
});

$('reset').addEventListener('click', async () => {
  await chrome.storage.local.remove('settings');
  await show();
  $('status').textContent = 'Back to the defaults.';
});
