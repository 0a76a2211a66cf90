//! The model worker: one thread that owns the decoder and runs every admitted request in
//! one batched forward pass per step (continuous batching). New requests join between steps
//! with their prompt (minus what the prefix cache already holds) as a prefill chunk; running
//! ones contribute one decode token each. Requests wait in a bounded queue for a slot.
//!
//! The thread is supervised: a panic in a step fails that step's requests, the engine starts
//! again from a clean state (no running requests, an empty prefix cache) and serves on. After
//! `MAX_RESTARTS` panics within `RESTART_WINDOW` it stops for good and says so through
//! [`EngineHandle::down`]; the server then answers 503 and exits non-zero, for a supervisor
//! to restart the process.
use super::prefix_cache::{PrefixCache, PrefixCacheStats, Weigh};
use super::stop::StopText;
use crate::model::decoder::{Decoder, KvCache, Sequence};
use crate::model::tokenizer::{Tokenizer, Utf8Stream};
use crate::sampler::{Sampler, SamplerConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

/// Most positions reserved ahead in a copied prefix cache.
const PREFIX_ROOM_CAP: usize = 512;
/// Most rows of one request that get logits in one pass: a scored prompt's chunk is cut
/// shorter, so its logits (a vocabulary of floats per row) stay tens of MB, not hundreds.
const LOGIT_ROWS_CAP: usize = 64;
/// Panics within `RESTART_WINDOW` after which the engine gives up instead of restarting.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Requests decoded together in one forward pass.
    pub max_batch: usize,
    /// Requests allowed to wait for a batch slot; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Budget for cached prefixes' KV memory.
    pub kv_cache_bytes: usize,
    /// Budget for the KV memory of running requests and cached prefixes together (None: only
    /// the prefix cache is bounded). A request is admitted when its worst case (prompt +
    /// `max_tokens` positions) fits beside the running ones; cached prefixes give way.
    pub kv_budget_bytes: Option<usize>,
    /// Most prompt rows one step computes, so a long prompt does not stall running decodes.
    pub prefill_chunk: usize,
}

/// One completion request as the engine sees it: validated token ids and parameters.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// Number of top alternatives to report per token (None: no logprobs at all).
    pub logprobs: Option<usize>,
    /// Echo the prompt from this position on: an `Event::Prompt` comes before the first token,
    /// with scores of those positions when `logprobs` is set. `max_tokens` may then be 0.
    pub echo_from: Option<usize>,
    /// Prefixes are shared only between requests with the same salt (vLLM's `cache_salt`;
    /// empty: the common pool).
    pub cache_salt: String,
    pub rules: TokenRules,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// vLLM's sampling extras, applied by the engine: which tokens may be drawn and which end the
/// answer. The defaults change nothing.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// Draw only among the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Draw only tokens at least `min_p` times as likely as the most likely one (after temperature).
    pub min_p: Option<f32>,
    /// Tokens that end the answer as the end-of-generation token does (not part of the text).
    pub stop_token_ids: Vec<u32>,
    /// End-of-generation tokens do not end the answer: they are generated as any other token.
    pub ignore_eos: bool,
    /// End-of-generation and `stop_token_ids` cannot be drawn before this many tokens.
    pub min_tokens: usize,
}

impl TokenRules {
    /// `logits` with what these rules forbid at `-inf`, or None when they forbid nothing.
    fn mask(&self, logits: &[f32], tokenizer: &Tokenizer, generated: usize, temperature: f32) -> Option<Vec<f32>> {
        let early = generated < self.min_tokens;
        if self.top_k.is_none() && self.min_p.is_none() && !early {
            return None;
        }
        let mut masked = logits.to_vec();
        if early {
            let ends = tokenizer.eog_ids().into_iter().filter(|_| !self.ignore_eos).chain(self.stop_token_ids.iter().copied());
            for id in ends {
                if let Some(l) = masked.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let mut floor = f32::NEG_INFINITY;
        if let Some(k) = self.top_k.filter(|&k| k < masked.len()) {
            let mut sorted = masked.clone();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            floor = *kth;
        }
        if let Some(min_p) = self.min_p.filter(|&p| p > 0.0) {
            // p_i / p_max >= min_p at temperature T  <=>  l_i >= l_max + T ln(min_p).
            let top = masked.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            floor = floor.max(top + temperature.max(f32::MIN_POSITIVE) * min_p.ln());
        }
        for l in masked.iter_mut().filter(|l| **l < floor) {
            *l = f32::NEG_INFINITY;
        }
        Some(masked)
    }

    /// Whether `id` ends the answer.
    fn ends(&self, id: u32, tokenizer: &Tokenizer) -> bool {
        (!self.ignore_eos && tokenizer.is_eog(id)) || self.stop_token_ids.contains(&id)
    }
}

impl Job {
    /// The first prompt position that gets a score, if any does (position 0 never can).
    fn scored_from(&self) -> Option<usize> {
        match (self.echo_from, self.logprobs) {
            (Some(from), Some(_)) => Some(from.max(1)),
            _ => None,
        }
    }

    /// The first prompt row whose logits are needed: the row before the first scored position
    /// (row p's logits score position p + 1), else the last row (it predicts the first new token).
    fn logits_from(&self) -> usize {
        let last = self.prompt.len() - 1;
        self.scored_from().map_or(last, |p| (p - 1).min(last))
    }
}

#[derive(Debug)]
pub enum Event {
    /// The request got a batch slot; this many prompt tokens came from the prefix cache.
    Started {
        cached_tokens: usize,
    },
    /// With echo: the prompt is computed; the scores of positions `scored_from..` in order
    /// (empty without logprobs).
    Prompt {
        scores: Vec<PromptScore>,
    },
    Token(GeneratedToken),
    /// The end; `tail` is text held back until now (a split character, a false stop start).
    Done {
        finish: Finish,
        tail: String,
    },
    Failed(Failure),
}

#[derive(Debug, Clone)]
pub struct GeneratedToken {
    pub id: u32,
    /// Text released with this token: complete UTF-8 only, stop strings held back and cut.
    pub text: String,
    /// Natural-log probability of `id` under the model's distribution (no temperature).
    pub logprob: f32,
    /// Top alternatives, best first (empty unless logprobs were asked for).
    pub top: Vec<(u32, f32)>,
}

/// How the model scores one prompt token given the tokens before it.
#[derive(Debug, Clone)]
pub struct PromptScore {
    /// Natural-log probability of the prompt's token at this position.
    pub logprob: f32,
    /// Top alternatives, best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` generated.
    Length,
}

#[derive(Debug, Clone)]
pub enum Failure {
    Timeout,
    Internal(String),
    /// The engine panicked in this request's step and restarted; the request may be retried.
    Crashed(String),
    /// The engine has stopped for good (the server is about to exit).
    Unavailable(String),
    /// The request's worst-case KV cache is larger than the whole KV budget.
    TooLarge {
        needed_bytes: usize,
        budget_bytes: usize,
    },
}

/// Faults a test can inject into a running server (`HYBRID_INJECT_PANIC`, refused by release
/// builds): the engine's forward pass panics on any prompt whose text contains `panic_on`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub panic_on: Option<String>,
}

/// Live numbers for /health.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct EngineStats {
    pub waiting: usize,
    pub active: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub forward_passes: u64,
    /// Requests whose client went away before the end (their generation stopped).
    pub cancelled: u64,
    /// Requests that ran past the request timeout.
    pub timed_out: u64,
    /// Requests failed by a panic in their step.
    pub crashed: u64,
    /// Times the engine restarted after a panic.
    pub restarts: u64,
    /// KV cache bytes of the running requests.
    pub running_kv_bytes: usize,
    pub prefix_cache: PrefixCacheStats,
}

/// The request side's handle: submits jobs, reads stats. Cloning is cheap.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
    max_queue: usize,
    /// Why the engine stopped for good; None while it serves.
    down: watch::Receiver<Option<String>>,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full; the caller should answer 429.
    QueueFull,
    /// The engine has stopped for good; the caller should answer 503.
    Down(String),
}

impl EngineHandle {
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        if let Some(reason) = self.down_reason() {
            return Err(Refused::Down(reason));
        }
        let admitted = self.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| (w < self.max_queue).then_some(w + 1)).is_ok();
        if !admitted {
            return Err(Refused::QueueFull);
        }
        if self.jobs.send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Down(self.down_reason().unwrap_or_else(|| "the model worker stopped".into())));
        }
        Ok(())
    }

    /// Why the engine stopped for good, if it has.
    pub fn down_reason(&self) -> Option<String> {
        self.down.borrow().clone()
    }

    /// Resolves when the engine stops for good, with why.
    pub async fn down(&self) -> String {
        let mut down = self.down.clone();
        let reason = match down.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the model worker stopped".into(),
        };
        reason
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = *self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting = self.waiting.load(Ordering::SeqCst);
        s
    }
}

/// Starts the worker thread; it ends when every handle is dropped and the last request is done,
/// or when it gives up after repeated panics.
pub fn start(decoder: Decoder, tokenizer: Arc<Tokenizer>, config: EngineConfig, faults: Faults) -> EngineHandle {
    let (jobs, rx) = mpsc::channel();
    let (down_tx, down) = watch::channel(None);
    let waiting = Arc::new(AtomicUsize::new(0));
    let counters = EngineStats {
        max_batch: config.max_batch,
        max_queue: config.max_queue,
        prefix_cache: PrefixCacheStats { capacity_bytes: config.kv_cache_bytes, ..Default::default() },
        ..Default::default()
    };
    let stats = Arc::new(Mutex::new(counters));
    let handle = EngineHandle { jobs, waiting: waiting.clone(), stats: stats.clone(), max_queue: config.max_queue, down };
    let mut engine = Engine {
        decoder,
        tokenizer,
        prefix_cache: PrefixCache::new(config.kv_cache_bytes),
        config,
        active: Vec::new(),
        jobs: rx,
        waiting,
        stats,
        counters,
        faults,
        restarts: Vec::new(),
        held: None,
        down: down_tx,
    };
    std::thread::Builder::new()
        .name("hybrid-engine".into())
        .spawn(move || {
            let reason = match catch_unwind(AssertUnwindSafe(|| engine.run())) {
                Ok(Ok(())) => return,
                Ok(Err(reason)) => reason,
                Err(payload) => format!("the model worker panicked outside a step: {}", panic_message(&*payload)),
            };
            eprintln!("hybrid serve: {reason}");
            engine.stop_for_good(&reason);
            // Whatever still waits is told, not dropped.
            let running = engine.active.drain(..).map(|r| r.job);
            for job in engine.held.take().into_iter().chain(running).chain(engine.jobs.try_iter()) {
                let _ = job.events.send(Event::Failed(Failure::Unavailable(reason.clone())));
            }
        })
        .expect("the engine thread starts");
    handle
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

struct Engine {
    decoder: Decoder,
    tokenizer: Arc<Tokenizer>,
    prefix_cache: PrefixCache<Computed>,
    config: EngineConfig,
    active: Vec<Running>,
    jobs: mpsc::Receiver<Job>,
    waiting: Arc<AtomicUsize>,
    /// What /health reads; `counters` is this thread's copy, published once per step.
    stats: Arc<Mutex<EngineStats>>,
    counters: EngineStats,
    faults: Faults,
    /// When the engine restarted after a panic, within the last `RESTART_WINDOW`.
    restarts: Vec<Instant>,
    /// The next request in line, taken from the queue but waiting for KV memory (it still
    /// counts as waiting).
    held: Option<Job>,
    /// Where the handles learn that the engine stopped for good.
    down: watch::Sender<Option<String>>,
}

/// Whether a request's KV cache fits under the budget.
enum Fit {
    Now,
    /// After some running requests finish.
    Later,
    Never(usize),
}

/// What a prefix-cache entry holds: the keys and values of its tokens, and the logits of its
/// last row, so a consult that scores from the entry's end need not compute that row again.
struct Computed {
    kv: KvCache,
    last_logits: Option<Vec<f32>>,
}

impl Weigh for Computed {
    fn bytes(&self) -> usize {
        self.kv.bytes() + self.last_logits.as_ref().map_or(0, |l| l.capacity() * std::mem::size_of::<f32>())
    }
}

/// A request holding a batch slot.
struct Running {
    job: Job,
    cache: KvCache,
    /// The logits of the last row in `cache`, when known.
    last_logits: Option<Vec<f32>>,
    /// Tokens whose keys and values are in `cache`, in order.
    fed: Vec<u32>,
    /// Tokens still to feed: the uncached rest of the prompt, then each sampled token.
    pending: Vec<u32>,
    generated: usize,
    /// Scores of the prompt positions computed so far (echo with logprobs).
    scores: Vec<PromptScore>,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopText,
    /// The prompt carries the injected-panic marker (`Faults::panic_on`).
    faulty: bool,
    /// KV bytes set aside for this request under the budget: its worst case.
    reserved: usize,
}

impl Running {
    /// Text still held back at the end: an incomplete character, a possible stop start.
    fn flush(&mut self) -> String {
        let rest = self.utf8.finish();
        let released = self.stop.push(&rest);
        match released.stopped {
            true => released.text,
            false => released.text + &self.stop.finish(),
        }
    }
}

impl Engine {
    /// Serves until every handle is dropped (Ok) or panics come too often to go on (Err: why).
    fn run(&mut self) -> Result<(), String> {
        loop {
            if self.active.is_empty() && self.held.is_none() {
                // Idle: sleep until a request arrives, or end when the server is gone.
                match self.jobs.recv() {
                    Ok(job) => self.held = Some(job),
                    Err(_) => return Ok(()),
                }
            }
            while self.active.len() < self.config.max_batch {
                let Some(job) = self.held.take().or_else(|| self.jobs.try_recv().ok()) else { break };
                match self.fits(&job) {
                    Fit::Now => self.admit(job),
                    // First in, first served: the requests behind wait too.
                    Fit::Later if Instant::now() <= job.deadline && !job.events.is_closed() => {
                        self.held = Some(job);
                        break;
                    }
                    Fit::Later => self.refuse(job, Failure::Timeout),
                    Fit::Never(needed_bytes) => {
                        let budget_bytes = self.config.kv_budget_bytes.unwrap_or(0);
                        self.refuse(job, Failure::TooLarge { needed_bytes, budget_bytes })
                    }
                }
            }
            self.fit_prefix_cache();
            self.drop_abandoned();
            if !self.active.is_empty() {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.step())) {
                    self.restart(&panic_message(&*payload))?;
                }
            }
            self.publish_stats();
        }
    }

    /// After a panic in a step: fails the running requests (their state may be half-updated),
    /// empties the prefix cache (an entry may be half-written), and goes on, unless this is
    /// one panic too many.
    fn restart(&mut self, message: &str) -> Result<(), String> {
        let now = Instant::now();
        self.restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        self.restarts.push(now);
        let give_up = (self.restarts.len() > MAX_RESTARTS).then(|| {
            format!(
                "the model worker panicked {} times within {} s (last: {message}); it stops, and the server exits for its supervisor to restart it",
                self.restarts.len(),
                RESTART_WINDOW.as_secs()
            )
        });
        // Said before the step's requests hear of the panic, so a client that checks at once
        // finds the server down, not up.
        if let Some(reason) = &give_up {
            self.stop_for_good(reason);
        }
        eprintln!("hybrid serve: the model worker panicked ({message}); failing {} requests and restarting", self.active.len());
        let failure = Failure::Crashed(format!("the model worker failed while computing this request ({message}) and restarted; retry the request"));
        for r in self.active.drain(..) {
            let _ = r.job.events.send(Event::Failed(failure.clone()));
            self.counters.crashed += 1;
        }
        self.prefix_cache = PrefixCache::new(self.config.kv_cache_bytes);
        self.counters.restarts += 1;
        give_up.map_or(Ok(()), Err)
    }

    /// Tells the handles the engine has stopped: new requests get 503, `/health` says so.
    fn stop_for_good(&self, reason: &str) {
        self.down.send_replace(Some(reason.to_string()));
    }

    /// Worst-case KV bytes of a request: every position of its prompt and answer, with the
    /// quarter of growth room `KvCache::reserve` leaves.
    fn reservation(&self, job: &Job) -> usize {
        (job.prompt.len() + job.max_tokens) * self.decoder.kv_bytes_per_position() * 5 / 4
    }

    /// KV bytes the running requests hold or may grow to.
    fn running_bytes(&self) -> usize {
        self.active.iter().map(|r| r.reserved.max(r.cache.bytes())).sum()
    }

    fn fits(&self, job: &Job) -> Fit {
        let Some(budget) = self.config.kv_budget_bytes else { return Fit::Now };
        let needed = self.reservation(job);
        match (needed > budget, self.running_bytes() + needed > budget) {
            (true, _) => Fit::Never(needed),
            (false, true) => Fit::Later,
            (false, false) => Fit::Now,
        }
    }

    /// Cached prefixes get what the running requests leave of the budget.
    fn fit_prefix_cache(&mut self) {
        if let Some(budget) = self.config.kv_budget_bytes {
            self.prefix_cache.set_capacity(budget.saturating_sub(self.running_bytes()).min(self.config.kv_cache_bytes));
        }
    }

    /// A request that leaves the queue without running.
    fn refuse(&mut self, job: Job, failure: Failure) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(Event::Failed(failure));
    }

    fn admit(&mut self, job: Job) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if Instant::now() > job.deadline {
            let _ = job.events.send(Event::Failed(Failure::Timeout));
            return;
        }
        // At least the last prompt token is computed: its logits give the first new token. A
        // scored prompt computes every row whose logits score it, so a cached prefix is reused
        // up to the row before its first scored position (plain echo scores from position 1,
        // so it reuses nothing), or up to the entry's end when that row is the entry's last,
        // whose logits the entry keeps (a consult scoring the tokens added since the last one).
        let logits_from = job.logits_from();
        let mut scores = Vec::new();
        let (reused, cache, last_logits) = match self.prefix_cache.take_extended(&job.cache_salt, &job.prompt) {
            // Extended in place; each forward pass reserves what it appends.
            Some((common, Computed { mut kv, last_logits })) => match last_logits {
                Some(logits) if common == logits_from + 1 && common < job.prompt.len() => {
                    if let (Some(k), Some(_)) = (job.logprobs, job.scored_from()) {
                        let (logprob, top) = log_probs(&logits, job.prompt[common], k);
                        scores.push(PromptScore { logprob, top });
                    }
                    (common, kv, Some(logits))
                }
                _ => {
                    let reused = common.min(logits_from);
                    kv.truncate(reused);
                    (reused, kv, None)
                }
            },
            None => match self.prefix_cache.lookup(&job.cache_salt, &job.prompt) {
                Some((common, computed)) => {
                    let reused = common.min(logits_from);
                    // The copy gets room for the rest of the prompt and the answer, so the
                    // first passes do not move it again (a longer answer grows it as usual).
                    let room = (job.prompt.len() - reused + job.max_tokens).min(PREFIX_ROOM_CAP);
                    (reused, computed.kv.prefix(reused, room), None)
                }
                None => (0, KvCache::default(), None),
            },
        };
        self.counters.requests += 1;
        self.counters.prompt_tokens += job.prompt.len() as u64;
        self.counters.cached_prompt_tokens += reused as u64;
        if job.events.send(Event::Started { cached_tokens: reused }).is_err() {
            self.counters.cancelled += 1;
            return; // the client is gone
        }
        let faulty = self.faults.panic_on.as_ref().is_some_and(|marker| self.tokenizer.decode(&job.prompt).contains(marker.as_str()));
        self.active.push(Running {
            faulty,
            reserved: self.reservation(&job),
            fed: job.prompt[..reused].to_vec(),
            pending: job.prompt[reused..].to_vec(),
            cache,
            last_logits,
            generated: 0,
            scores,
            sampler: Sampler::new(job.sampler),
            utf8: Utf8Stream::default(),
            stop: StopText::new(job.stop.clone()),
            job,
        });
    }

    /// Requests whose client went away or whose time ran out leave the batch; what they
    /// computed still goes to the prefix cache.
    fn drop_abandoned(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.active.len() {
            let r = &self.active[i];
            if r.job.events.is_closed() || now > r.job.deadline {
                let r = self.active.swap_remove(i);
                match r.job.events.is_closed() {
                    true => self.counters.cancelled += 1,
                    false => self.counters.timed_out += 1,
                }
                let _ = r.job.events.send(Event::Failed(Failure::Timeout));
                self.keep(r);
            } else {
                i += 1;
            }
        }
    }

    /// One forward pass over every running request: decodes first, then prompt chunks up to
    /// the row budget.
    fn step(&mut self) {
        let mut budget = self.config.prefill_chunk.max(1);
        let mut rows: Vec<usize> = vec![0; self.active.len()];
        // Per request, the rows at the end of its chunk that get logits.
        let mut tails: Vec<usize> = vec![0; self.active.len()];
        let decoding = |r: &Running| r.generated > 0;
        for pass in [true, false] {
            for ((r, n), tail) in self.active.iter().zip(rows.iter_mut()).zip(tails.iter_mut()) {
                if decoding(r) == pass && budget > 0 {
                    let (start, from) = (r.fed.len(), r.job.logits_from());
                    *n = r.pending.len().min(budget).max(usize::from(pass));
                    if !pass {
                        *n = (*n).min(from.saturating_sub(start) + LOGIT_ROWS_CAP);
                    }
                    // A prompt chunk before `from` still computes its last row's logits.
                    *tail = (start + *n).saturating_sub(start.max(from)).max(1);
                    budget = budget.saturating_sub(*n);
                }
            }
        }
        if self.active.iter().zip(&rows).any(|(r, &n)| n > 0 && r.faulty) {
            panic!("injected fault: a prompt carries the HYBRID_INJECT_PANIC marker");
        }
        let mut batch: Vec<Sequence> =
            self.active.iter_mut().zip(&rows).filter(|(_, &n)| n > 0).map(|(r, &n)| Sequence { cache: &mut r.cache, tokens: &r.pending[..n] }).collect();
        let tails: Vec<usize> = rows.iter().zip(&tails).filter(|(&n, _)| n > 0).map(|(_, &t)| t).collect();
        let result = self.decoder.forward_tails(&mut batch, &tails);
        drop(batch);
        self.counters.forward_passes += 1;
        let steps = match result {
            Ok(steps) => steps,
            Err(e) => {
                // Inputs are validated before they get here, so this is a bug: fail the
                // requests of this pass rather than loop on it.
                let message = format!("the model failed: {e}");
                let mut i = 0;
                for n in rows {
                    if n > 0 {
                        let r = self.active.remove(i);
                        let _ = r.job.events.send(Event::Failed(Failure::Internal(message.clone())));
                    } else {
                        i += 1;
                    }
                }
                return;
            }
        };
        let mut steps = steps.into_iter();
        let mut finished = Vec::new();
        for (i, &n) in rows.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let mut rows = steps.next().expect("steps for each sequence");
            let r = &mut self.active[i];
            let prompting = r.generated == 0;
            if let (true, Some(from), Some(k)) = (prompting, r.job.scored_from(), r.job.logprobs) {
                use rayon::prelude::*;
                // Row q's logits score the prompt's token at q + 1.
                let first = r.fed.len() + n - rows.len();
                let prompt = &r.job.prompt;
                let scored = rows.par_iter().enumerate().filter_map(|(j, step)| {
                    let q = first + j;
                    let &next = prompt.get(q + 1).filter(|_| q + 1 >= from)?;
                    let (logprob, top) = log_probs(&step.logits, next, k);
                    Some(PromptScore { logprob, top })
                });
                r.scores.par_extend(scored);
            }
            r.fed.extend(r.pending.drain(..n));
            if !r.pending.is_empty() {
                r.last_logits = rows.pop().map(|step| step.logits);
                continue;
            }
            if prompting && r.job.echo_from.is_some() {
                let scores = std::mem::take(&mut r.scores);
                let _ = r.job.events.send(Event::Prompt { scores });
            }
            if prompting && r.job.max_tokens == 0 {
                let _ = r.job.events.send(Event::Done { finish: Finish::Length, tail: String::new() });
            }
            let last = rows.pop().expect("at least one row gets logits");
            let done = prompting && r.job.max_tokens == 0 || self.sample_next(i, &last.logits);
            self.active[i].last_logits = Some(last.logits);
            if done {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let r = self.active.swap_remove(i);
            self.keep(r);
        }
    }

    /// Samples request `i`'s next token from `logits` and reports it. Returns true when
    /// the request is done.
    fn sample_next(&mut self, i: usize, logits: &[f32]) -> bool {
        let r = &mut self.active[i];
        let masked = r.job.rules.mask(logits, &self.tokenizer, r.generated, r.job.sampler.temperature);
        let id = r.sampler.sample(masked.as_deref().unwrap_or(logits));
        if r.job.rules.ends(id, &self.tokenizer) {
            let tail = r.flush();
            let _ = r.job.events.send(Event::Done { finish: Finish::Stop, tail });
            return true;
        }
        r.generated += 1;
        self.counters.generated_tokens += 1;
        let (logprob, top) = match r.job.logprobs {
            Some(k) => log_probs(logits, id, k),
            None => (f32::NAN, Vec::new()),
        };
        let piece = r.utf8.push(self.tokenizer.token_bytes(id));
        let released = r.stop.push(&piece);
        let sent = r.job.events.send(Event::Token(GeneratedToken { id, text: released.text, logprob, top })).is_ok();
        if released.stopped || r.generated >= r.job.max_tokens {
            let (finish, tail) = match released.stopped {
                true => (Finish::Stop, String::new()),
                false => (Finish::Length, r.flush()),
            };
            let _ = r.job.events.send(Event::Done { finish, tail });
            return true;
        }
        r.pending.push(id);
        if !sent {
            self.counters.cancelled += 1; // the client is gone
        }
        !sent
    }

    /// A finished request's KV cache goes to the prefix cache for the next consult.
    fn keep(&mut self, mut r: Running) {
        r.cache.trim_excess();
        self.fit_prefix_cache();
        self.prefix_cache.insert(&r.job.cache_salt, r.fed, Computed { kv: r.cache, last_logits: r.last_logits });
    }

    /// Copies this thread's counters to where /health reads them, once per step.
    fn publish_stats(&mut self) {
        self.counters.active = self.active.len();
        self.counters.running_kv_bytes = self.active.iter().map(|r| r.cache.bytes()).sum();
        self.counters.prefix_cache = self.prefix_cache.stats();
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.counters;
    }
}

/// Log-probability of `id` and the `k` most likely tokens with theirs, from raw logits.
pub fn log_probs(logits: &[f32], id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + sum_exp(logits, max).ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || l > top[top.len() - 1].1 {
                let at = top.partition_point(|&(_, t)| t >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
    }
    let top = top.into_iter().map(|(t, l)| (t, l - log_sum)).collect();
    (logits[id as usize] - log_sum, top)
}

/// `Σ e^(l - max)`, in lanes that vectorize; chunks' sums add up in f64, as over a vocabulary
/// of 150K terms one f32 sum drifts by 1e-4 and more.
fn sum_exp(logits: &[f32], max: f32) -> f64 {
    use crate::model::exp::exp;
    const LANES: usize = 16;
    logits
        .chunks(1024)
        .map(|chunk| {
            let mut lanes = [0f32; LANES];
            let mut groups = chunk.chunks_exact(LANES);
            for group in &mut groups {
                for (lane, &l) in lanes.iter_mut().zip(group) {
                    *lane += exp(l - max);
                }
            }
            let rest: f32 = groups.remainder().iter().map(|&l| exp(l - max)).sum();
            lanes.iter().map(|&s| f64::from(s)).sum::<f64>() + f64::from(rest)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_are_normalised_and_ranked() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (lp, top) = log_probs(&logits, 2, 3);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp - (2.0f32.exp() / z).ln()).abs() < 1e-6);
        // Ties keep the lower id first, as greedy sampling does.
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((top[0].1 - (3.0f32.exp() / z).ln()).abs() < 1e-6);
        assert!(log_probs(&logits, 0, 0).1.is_empty());
    }

    #[test]
    fn the_normaliser_of_a_vocabulary_is_exact_to_a_millionth() {
        // 151936 logits (qwen2.5's vocabulary), spread as a model's are.
        let logits: Vec<f32> = (0..151_936u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32) * 30.0 - 20.0).collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exact: f64 = logits.iter().map(|&l| (f64::from(l) - f64::from(max)).exp()).sum();
        assert!((sum_exp(&logits, max) / exact - 1.0).abs() < 1e-6);
    }
}
