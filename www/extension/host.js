// The extension's side of the chat (see app.js for the host interface): defaults from the
// packaged config.json, the user's settings from chrome.storage.local (edited on the options
// page), and the selection the context menu hands over through chrome.storage.session.

/** The settings the options page edits; empty values mean the packaged default. */
export const FIELDS = ['cloudUrl', 'apiKey', 'cloudModel', 'timeoutMs', 'modelUrl', 'modelSha256'];

export async function packagedConfig() {
  const response = await fetch(chrome.runtime.getURL('config.json'));
  if (!response.ok) throw new Error('the extension has no config.json: build it with `make extension`');
  return response.json();
}

/** The effective configuration: the packaged one with the user's settings over it. */
export function effectiveConfig(base, settings = {}) {
  const ownModel = settings.modelUrl && settings.modelUrl !== base.model.url;
  return {
    // Another model needs its own hash; its size comes from the download, and the packaged
    // reward head (made for the packaged model) no longer applies.
    model: ownModel
      ? { name: settings.modelUrl.split('/').pop(), url: settings.modelUrl, sha256: settings.modelSha256, bytes: 0 }
      : base.model,
    rewardHead: ownModel ? null : base.rewardHead,
    cloud: {
      url: settings.cloudUrl || base.cloud.url,
      apiKey: settings.apiKey || '',
      model: settings.cloudModel || base.cloud.model,
      timeoutMs: Number(settings.timeoutMs) || 10000,
    },
  };
}

/** Origin patterns the configuration needs to reach (the cloud and the model files). */
export function originsOf(config) {
  const urls = [config.cloud.url, config.model.url, config.rewardHead?.url].filter(Boolean);
  return [...new Set(urls.map((u) => `${new URL(u).origin}/*`))];
}

export function extensionHost() {
  let base = null;
  return {
    async loadConfig() {
      base = await packagedConfig();
      const { settings } = await chrome.storage.local.get('settings');
      const config = effectiveConfig(base, settings);
      const origins = originsOf(config);
      if (!(await chrome.permissions.contains({ origins }))) {
        config.notice = `This extension has not been allowed to reach ${origins.map((o) => o.slice(0, -2)).join(' and ')}; ` +
          'unless that server admits it (CORS), open Cloud settings and Save to grant it.';
      }
      return config;
    },
    editSettings() {
      chrome.runtime.openOptionsPage();
    },
    onChange(listener) {
      chrome.storage.onChanged.addListener((changes, area) => {
        if (area === 'local' && changes.settings) listener(effectiveConfig(base, changes.settings.newValue));
      });
    },
    onPrompt(listener) {
      const take = async () => {
        const { pendingPrompt } = await chrome.storage.session.get('pendingPrompt');
        if (!pendingPrompt) return;
        await chrome.storage.session.remove('pendingPrompt');
        listener(pendingPrompt);
      };
      chrome.storage.onChanged.addListener((changes, area) => {
        if (area === 'session' && changes.pendingPrompt?.newValue) take();
      });
      take();
    },
  };
}
