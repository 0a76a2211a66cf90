// Model files for the engine: from the Cache API when a verified copy is there, else
// downloaded with progress (resuming with a Range request when the connection drops),
// checked against the expected sha256 with Web Crypto, and only then cached.
// Used by the worker; plain functions so they run in any worker or page.

const CACHE_NAME = 'hybrid-assistant-files-v1';
const ATTEMPTS = 5;

/** An error the page shows with a Retry button. */
export class DownloadError extends Error {}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The verified bytes of `file` = {name, url, sha256, bytes}. `onProgress(loaded, total, fromCache)`.
 */
export async function fetchVerified(file, onProgress) {
  if (!globalThis.crypto?.subtle) {
    throw new DownloadError(
      'this page is not a secure context, so the browser cannot check file hashes: open it over https or on localhost');
  }
  const cache = globalThis.caches ? await caches.open(CACHE_NAME) : null;
  const cached = cache && await cache.match(file.url);
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (await sha256Hex(bytes) === file.sha256) {
      onProgress(bytes.length, bytes.length, true);
      return bytes;
    }
    await cache.delete(file.url); // a stale or damaged copy: fetch it again
  }
  const bytes = await download(file, onProgress);
  const got = await sha256Hex(bytes);
  if (got !== file.sha256) {
    throw new DownloadError(
      `${file.name}: the downloaded file does not match its sha256 (expected ${file.sha256.slice(0, 12)}…, ` +
      `got ${got.slice(0, 12)}…); it was discarded. Retry; if it happens again the server has another file than config.json names.`);
  }
  if (cache) {
    try {
      await cache.put(file.url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
    } catch (e) {
      // A full quota only costs the next visit a download; this one goes on.
      console.warn(`not cached (${e.message}); it will be downloaded again next time`);
    }
  }
  return bytes;
}

async function download(file, onProgress) {
  let buffer = null;
  let received = 0;
  let etag = null;
  let lastError = null;
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    const headers = {};
    if (received > 0) {
      headers.Range = `bytes=${received}-`;
      if (etag) headers['If-Range'] = etag;
    }
    let response;
    try {
      response = await fetch(file.url, { headers, cache: 'no-store' });
    } catch (e) {
      lastError = `cannot reach ${file.url} (${e.message})`;
      continue;
    }
    if (!response.ok) {
      lastError = `${file.url} answered HTTP ${response.status}`;
      if (response.status === 404) break; // retrying will not make it appear
      continue;
    }
    if (response.status !== 206) received = 0; // the server sent the whole file again
    etag = response.headers.get('ETag') || etag;
    if (!buffer) {
      const length = Number(response.headers.get('Content-Length')) || 0;
      const total = file.bytes || (response.status === 200 ? length : 0);
      if (!total) throw new DownloadError(`${file.url}: the size of the file is unknown (no bytes in config.json, no Content-Length)`);
      buffer = new Uint8Array(total);
    }
    try {
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (received + value.length > buffer.length) {
          throw new DownloadError(`${file.url} is larger than the ${buffer.length} bytes config.json names`);
        }
        buffer.set(value, received);
        received += value.length;
        onProgress(received, buffer.length, false);
      }
      if (received === buffer.length) return buffer;
      lastError = `${file.url} ended after ${received} of ${buffer.length} bytes`;
    } catch (e) {
      if (e instanceof DownloadError) throw e;
      lastError = `the download of ${file.url} broke off at ${received} of ${buffer.length} bytes (${e.message})`;
    }
  }
  throw new DownloadError(`${file.name}: ${lastError}. Check the connection and retry.`);
}
