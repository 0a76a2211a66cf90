// The extension's service worker: the toolbar button opens the side panel, and the context
// menu item hands the selected text to it as the prompt. The engine never runs here (a
// service worker cannot keep a model in memory); it runs in the side panel's Web Worker.
const MENU_ID = 'ask-selection';

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.create({ id: MENU_ID, title: 'Ask the assistant about the selection', contexts: ['selection'] });
  chrome.sidePanel.setPanelBehavior({ openPanelOnActionClick: true });
});

/** Opens the side panel with `selectionText` as the prompt. */
export function askAboutSelection(info, tab) {
  // open() first: it must run within the click's user gesture, before any await.
  const opened = chrome.sidePanel.open({ windowId: tab.windowId }).catch((e) => console.warn(`side panel: ${e.message}`));
  const stored = chrome.storage.session.set({ pendingPrompt: info.selectionText });
  return Promise.all([opened, stored]);
}

chrome.contextMenus.onClicked.addListener((info, tab) => {
  if (info.menuItemId === MENU_ID) askAboutSelection(info, tab);
});

// For the end-to-end test, which cannot click a context menu.
globalThis.askAboutSelection = askAboutSelection;
