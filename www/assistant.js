// The Assistant API: the engine in a Web Worker behind a small promise / async-iterator
// interface, so a page never blocks on the model.
//
//   const assistant = await Assistant.load({
//     model: {name, url, sha256, bytes}, rewardHead: {name, url, sha256, bytes} | null,
//     cloud: {url, apiKey, model, timeoutMs},
//     gpu: 'auto',   // 'auto': WebGPU on a hardware adapter when timed faster than the CPU;
//                    // 'calibrate': the same timing on a software adapter too;
//                    // 'force': WebGPU whenever an adapter takes the model; 'off': the CPU
//     onProgress: ({file, loaded, total, fromCache}) => {} });
//   assistant.info.backend: 'webgpu' | 'cpu' (info.cpuReason says why, info.calibration has
//   both speeds when auto timed them)
//   for await (const item of assistant.generate(messages, {policy, threshold, maxTokens,
//       temperature, consultTokens, verify, verifyEvery, finalCheck, signal, onConsult})) {
//     if (item.done) console.log(item.stats);          // last item: the statistics
//     else if ('withdraw_from' in item) ...            // see below
//     else if ('verified_to' in item) ...
//     else console.log(item.text, item.source);        // a token
//   }
//
// The items, in the engine's order (src/generate.rs LoopEvent):
//   {id, text, source: 'local'|'cloud'|'fallback', reward, slm_prob}   a token of the answer
//   {withdraw_from: N}   the answer's tokens from index N on (0-based, counting the tokens still
//                        standing) are taken back: the cloud disagreed there. The next token
//                        (source 'cloud') is the correction.
//   {verified_to: N}     the tokens before index N are checked by the cloud. Cloud tokens are
//                        checked by construction: one right after checked tokens extends the
//                        checked prefix without an event.
//   {done: true, stats}  the statistics (tokens, cloud_tokens, consults, verified_tokens,
//                        corrections, withdrawn_tokens, unverified_tokens, …; stats.tail: bytes
//                        of an unfinished character to append)
// Options the caller leaves out take the engine's defaults (src/web.rs GenerateOptions):
// `verify` (true: every consult also checks the local tokens since the previous one),
// `verifyEvery` (the verify policy consults after at most this many unchecked tokens) and
// `finalCheck` (true: gated policies check the answer's tail before it ends, so the answer is
// the cloud's; false leaves the tokens after the last consult unchecked).
//
// A failed load rejects with an Error whose `download` is true when retrying may help.

export class Assistant {
  #worker;
  #nextId = 1;
  #pending = new Map(); // id -> {onMessage, onFailure}
  #cloud;
  // Bumped by every assignment to `cloud`: the engine then forgets its back-off (a refused key,
  // a rate limit), so saved settings are tried at once even when they did not change.
  #cloudVersion = 0;
  info = null;

  get cloud() { return this.#cloud; }
  set cloud(cloud) { this.#cloud = cloud; this.#cloudVersion += 1; }

  constructor(worker, cloud) {
    this.#worker = worker;
    this.cloud = cloud;
    worker.onmessage = ({ data }) => this.#pending.get(data.id)?.onMessage(data);
    worker.onerror = (e) => {
      const error = new Error(`the engine stopped: ${e.message || 'the worker crashed (out of memory?)'}; reload the page`);
      for (const { onFailure } of this.#pending.values()) onFailure(error);
      this.#pending.clear();
    };
  }

  /** Starts the worker and loads the model and reward head (downloaded once, then cached). */
  static async load({ model, rewardHead = null, cloud = null, gpu = 'auto', onProgress = () => {}, workerUrl } = {}) {
    const worker = new Worker(workerUrl || new URL('./worker.js', import.meta.url), { type: 'module' });
    const assistant = new Assistant(worker, cloud);
    try {
      await assistant.reload({ model, rewardHead, gpu, onProgress });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return assistant;
  }

  /** Loads (another) model into the running worker; also the way to retry a failed download. */
  reload({ model, rewardHead = null, gpu = 'auto', onProgress = () => {} }) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const finish = (f, v) => { this.#pending.delete(id); f(v); };
      this.#pending.set(id, {
        onFailure: (e) => finish(reject, e),
        onMessage: (m) => {
          if (m.type === 'progress') onProgress(m);
          else if (m.type === 'loaded') { this.info = m.info; finish(resolve, m.info); }
          else if (m.type === 'error') finish(reject, Object.assign(new Error(m.message), { download: m.download }));
        },
      });
      this.#worker.postMessage({ type: 'load', id, model, rewardHead, gpu });
    });
  }

  /** Streams the reply to `messages` ([{role, content}]): the engine's events (tokens,
   *  withdrawals, checks; see the header), then {done: true, stats}. `onConsult({ms, error,
   *  trouble})` hears of each cloud request as it returns (worker.js lists the kinds of
   *  `trouble`; `stats.cloud_hold` says why consults were held back at the end). */
  async *generate(messages, { signal, onConsult = () => {}, ...options } = {}) {
    const id = this.#nextId++;
    const queue = [];
    let wake = null;
    let finished = false;
    const push = (item) => { finished ||= Boolean(item.done || item.error); queue.push(item); wake?.(); };
    this.#pending.set(id, {
      onFailure: (error) => push({ error }),
      onMessage: (m) => {
        if (m.type === 'event') push(m.event);
        else if (m.type === 'consult') onConsult({ ms: m.ms, error: m.error, trouble: m.trouble });
        else if (m.type === 'done') push({ done: true, stats: m.stats });
        else if (m.type === 'error') push({ error: new Error(m.message) });
      },
    });
    const abort = () => this.#worker.postMessage({ type: 'abort', id });
    signal?.addEventListener('abort', abort);
    this.#worker.postMessage({ type: 'generate', id, messages, options, cloud: this.#cloud, cloudVersion: this.#cloudVersion });
    try {
      for (;;) {
        while (!queue.length) await new Promise((r) => { wake = r; });
        wake = null;
        const item = queue.shift();
        if (item.error) throw item.error;
        yield item;
        if (item.done) return;
      }
    } finally {
      signal?.removeEventListener('abort', abort);
      // A consumer that stops reading early also stops the engine.
      this.#pending.delete(id);
      if (!finished) abort();
    }
  }

  terminate() {
    this.#worker.terminate();
  }
}
