//! The hybrid decoding loop, the same code natively and in the browser: the small model
//! proposes a token, the reward head scores it, the policy keeps it or asks the cloud for the
//! next token(s) given the whole prefix, and whatever is emitted is fed back to the small
//! model. Every consult also verifies (`verify.rs`): the cloud scores the local tokens since
//! the previous consult, and where it disagrees the small model's KV cache is rolled back,
//! the later tokens are withdrawn (an event every consumer handles) and the cloud's token
//! takes their place. A cloud that fails, is slow or refuses leaves the small model's token
//! in place (marked `fallback`, still unchecked); after repeated failures consults pause and
//! are retried later.
//!
//! Only the transport of the cloud call ([`CloudTransport`]) and the model backend ([`Slm`])
//! differ between native and wasm; the loop is `async` so the browser can await `fetch`.
//! `hybrid generate` is this loop with the `never` policy.
use crate::backoff::{Backoff, CloudHold};
use crate::cloud::{Completion, CompletionRequest, PositionScore, Prompt};
use crate::model::decoder::{Decoder, Step};
use crate::model::tokenizer::{TextStream, Tokenizer};
use crate::policy::{Policy, Signals};
use crate::reward::RewardHead;
use crate::sampler::{Sampler, TopLogits};
use crate::verify::{Pending, Verdict};
use crate::{Error, Result};
use serde::Serialize;
use web_time::Instant;

/// The small model as the loop sees it. `forward` is async because on the GPU the browser
/// delivers results through its event loop.
#[allow(async_fn_in_trait)]
pub trait Slm {
    /// Forgets the previous conversation (empties the KV cache).
    fn reset(&mut self);
    /// Forgets every cached token from position `len` on (a verification's rollback).
    fn truncate(&mut self, len: usize);
    /// Runs new tokens after the cached ones; the step predicts the token after the last.
    async fn forward(&mut self, tokens: &[u32]) -> Result<SlmStep>;
    /// The input embedding of a token (the reward head reads it).
    fn token_embedding(&self, id: u32) -> Result<Vec<f32>>;
}

/// What the loop reads of a step: the most likely next tokens, and the final hidden state
/// (the reward head's input).
#[derive(Debug, Clone)]
pub struct SlmStep {
    pub top: TopLogits,
    pub hidden: Vec<f32>,
}

impl From<Step> for SlmStep {
    fn from(step: Step) -> Self {
        Self { top: TopLogits::from_logits(&step.logits), hidden: step.hidden }
    }
}

impl Slm for Decoder {
    fn reset(&mut self) {
        self.cache_mut().clear();
    }

    fn truncate(&mut self, len: usize) {
        self.cache_mut().truncate(len);
    }

    async fn forward(&mut self, tokens: &[u32]) -> Result<SlmStep> {
        Ok(Decoder::forward(self, tokens)?.into())
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        Decoder::token_embedding(self, id)
    }
}

/// How a consult reaches the cloud. Native: a blocking HTTP client; browser: `fetch`.
/// The future need not be `Send`: in the browser nothing is.
#[allow(async_fn_in_trait)]
pub trait CloudTransport {
    /// The model name to put in requests.
    fn model(&self) -> &str;
    async fn complete(&mut self, request: &CompletionRequest) -> Result<Completion>;
}

#[cfg(not(target_arch = "wasm32"))]
impl CloudTransport for crate::cloud::CloudClient {
    fn model(&self) -> &str {
        &self.config().model
    }

    async fn complete(&mut self, request: &CompletionRequest) -> Result<Completion> {
        crate::cloud::CloudClient::complete(self, request)
    }
}

/// Where an emitted token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The small model's proposal, accepted.
    Local,
    /// Supplied by the cloud model.
    Cloud,
    /// The small model's proposal, kept because the consult it needed failed or was skipped.
    Fallback,
}

/// One emitted token, as the UI renders it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenEvent {
    pub id: u32,
    /// The text this token completes (may be empty while a multi-byte character is split).
    pub text: String,
    pub source: Source,
    /// The reward head's score of the small model's proposal at this position, when scored.
    pub reward: Option<f32>,
    /// The small model's probability of this token, when known: not for the cloud's second
    /// and later tokens of a consult, nor for one outside the small model's top tokens.
    pub slm_prob: Option<f32>,
}

/// What the loop tells its consumer, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LoopEvent {
    Token(TokenEvent),
    /// The answer's tokens from index `withdraw_from` on are taken back: the cloud disagreed
    /// there. The next token event is the correction.
    Withdraw {
        withdraw_from: usize,
    },
    /// The answer's tokens before index `verified_to` are checked by the cloud.
    Verified {
        verified_to: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token was chosen (not emitted).
    EndOfGeneration,
    /// `max_tokens` were emitted.
    MaxTokens,
    /// The caller asked to stop.
    Stopped,
}

/// Everything the loop needs besides the models.
#[derive(Debug, Clone)]
pub struct HybridConfig {
    pub max_tokens: usize,
    /// Tokens one consult asks the cloud for (1 as in the paper; more saves round trips).
    pub consult_tokens: usize,
    /// Each consult also checks the local tokens since the previous one (`--no-verify` turns
    /// it off: consults then only answer).
    pub verify: bool,
    /// The `verify` policy consults after at most this many unchecked local tokens.
    pub verify_every: usize,
    /// With verification on, gated policies check the answer's tail before it ends too (the
    /// end proposal, the last token of `max_tokens` and the consumer's stop are the cloud's
    /// call), so their answers are the cloud's as well; it costs a consult per answer and one
    /// per correction there. Off, the tokens after the last consult stay unchecked.
    pub final_check: bool,
    /// Alternatives the cloud returns per checked position (sampling's residual reads them).
    pub verify_alternatives: usize,
    /// Sent as `cache_salt` (vLLM's and our server's): only requests with the same salt share
    /// cached prefixes (the evaluation gives each setting its own).
    pub cache_salt: Option<String>,
}

/// Default of `verify_every` (the web app reads it through the engine's defaults).
pub const DEFAULT_VERIFY_EVERY: usize = 64;

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            consult_tokens: 1,
            verify: true,
            verify_every: DEFAULT_VERIFY_EVERY,
            final_check: true,
            verify_alternatives: 5,
            cache_salt: None,
        }
    }
}

/// What one answer cost and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct HybridStats {
    pub prompt_tokens: usize,
    /// Tokens emitted (end-of-generation excluded).
    pub tokens: usize,
    pub cloud_tokens: usize,
    /// Consults sent (successful or not).
    pub consults: usize,
    pub fallbacks: usize,
    /// Local tokens the cloud checked and kept.
    pub verified_tokens: usize,
    /// Checks that found a token the cloud would not have chosen (each a rollback).
    pub corrections: usize,
    /// Local tokens taken back by those corrections.
    pub withdrawn_tokens: usize,
    /// Local tokens of the final answer no consult checked.
    pub unverified_tokens: usize,
    pub failed_consults: usize,
    /// Consults the policy wanted while consults were paused (each a fallback, no request).
    pub skipped_consults: usize,
    pub bytes_up: usize,
    pub bytes_down: usize,
    /// Sum of the prompt lengths of all consults: what an API billing every prompt charges.
    pub cloud_prompt_tokens: usize,
    /// Of those, the ones the cloud reported as served from its prefix cache.
    pub cloud_cached_tokens: usize,
    pub cloud_completion_tokens: usize,
    /// Seconds of the prompt's forward pass in the small model.
    pub prefill_secs: f64,
    /// Small-model forward passes after the prompt, and their seconds.
    pub decode_steps: usize,
    pub decode_secs: f64,
    /// Milliseconds of each consult, in order.
    pub consult_ms: Vec<f64>,
    pub stop: StopReason,
    /// The last consult failure, for the UI's banner.
    pub last_cloud_error: Option<String>,
    /// Why consults were held back when the answer ended (the back-off outlives the answer).
    pub cloud_hold: Option<CloudHold>,
    /// Text of bytes still pending after the last token (an incomplete character), to append.
    pub tail: String,
}

impl HybridStats {
    fn new(prompt_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            tokens: 0,
            cloud_tokens: 0,
            consults: 0,
            fallbacks: 0,
            verified_tokens: 0,
            corrections: 0,
            withdrawn_tokens: 0,
            unverified_tokens: 0,
            failed_consults: 0,
            skipped_consults: 0,
            bytes_up: 0,
            bytes_down: 0,
            cloud_prompt_tokens: 0,
            cloud_cached_tokens: 0,
            cloud_completion_tokens: 0,
            prefill_secs: 0.0,
            decode_steps: 0,
            decode_secs: 0.0,
            consult_ms: Vec::new(),
            stop: StopReason::MaxTokens,
            last_cloud_error: None,
            cloud_hold: None,
            tail: String::new(),
        }
    }

    /// Share of emitted tokens that came from the cloud.
    pub fn cloud_share(&self) -> f64 {
        self.cloud_tokens as f64 / self.tokens.max(1) as f64
    }

    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// Small-model decode speed (forward passes after the prompt), cloud time excluded.
    pub fn local_tok_s(&self) -> f64 {
        match self.decode_steps {
            0 => 0.0,
            n => n as f64 / self.decode_secs.max(1e-9),
        }
    }

    /// The `p`-th percentile (0–100, nearest rank) of consult latency in ms; 0 without consults.
    pub fn consult_ms_percentile(&self, p: f64) -> f64 {
        percentile(&self.consult_ms, p)
    }

    /// The statistics line of `hybrid chat --json` and the evaluation.
    pub fn summary(&self) -> serde_json::Value {
        let r2 = |x: f64| (x * 100.0).round() / 100.0;
        serde_json::json!({
            "done": true,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "cloud_tokens": self.cloud_tokens,
            "cloud_share": (self.cloud_share() * 1e4).round() / 1e4,
            "consults": self.consults,
            "fallbacks": self.fallbacks,
            "verified_tokens": self.verified_tokens,
            "corrections": self.corrections,
            "withdrawn_tokens": self.withdrawn_tokens,
            "unverified_tokens": self.unverified_tokens,
            "failed_consults": self.failed_consults,
            "skipped_consults": self.skipped_consults,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "cloud_prompt_tokens": self.cloud_prompt_tokens,
            "cloud_cached_tokens": self.cloud_cached_tokens,
            "cloud_completion_tokens": self.cloud_completion_tokens,
            "prefill_tok_s": r2(self.prefill_tok_s()),
            "local_tok_s": r2(self.local_tok_s()),
            "consult_ms_p50": r2(self.consult_ms_percentile(50.0)),
            "consult_ms_p95": r2(self.consult_ms_percentile(95.0)),
            "stop": self.stop,
            "last_cloud_error": self.last_cloud_error,
            "cloud_hold": self.cloud_hold,
        })
    }
}

/// Whether a failed consult was the engine refusing the request (a 4xx other than a refused
/// key, a timeout or a rate limit) rather than the network or the server failing, the key
/// being wrong or the server being busy.
fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::CloudStatus { status: 400..=499, .. } if !matches!(e, Error::CloudStatus { status: 401 | 403 | 408 | 429, .. }))
}

/// Nearest-rank percentile of unsorted values; 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One answer's worth of hybrid decoding. Build it, then [`run`](Self::run).
pub struct HybridLoop<'a, M: Slm, C: CloudTransport> {
    pub slm: &'a mut M,
    pub tokenizer: &'a Tokenizer,
    /// Scores every proposal when present (the `reward` policy requires it).
    pub head: Option<&'a RewardHead>,
    /// `None` runs the small model alone: wanted consults become fallbacks.
    pub cloud: Option<&'a mut C>,
    pub policy: Policy,
    pub sampler: Sampler,
    pub config: HybridConfig,
    /// Kept by the caller across the answers sent to the same cloud settings.
    pub backoff: &'a mut Backoff,
}

/// The tokens one consult supplied; `ended` when the cloud chose to end the answer after them.
/// `scores`: the cloud's scores of the checked positions, when it was asked for them.
struct CloudAnswer {
    ids: Vec<u32>,
    ended: bool,
    scores: Option<Result<Vec<PositionScore>>>,
}

/// One token of the answer so far, as verification needs it.
struct Emitted {
    id: u32,
    source: Source,
    /// The small model's distribution it was drawn from (local and fallback tokens).
    q: Vec<(u32, f32)>,
}

/// Type for a loop without a cloud (`hybrid generate`, the `never` policy).
pub enum NoCloud {}

impl CloudTransport for NoCloud {
    fn model(&self) -> &str {
        match *self {}
    }

    async fn complete(&mut self, _: &CompletionRequest) -> Result<Completion> {
        match *self {}
    }
}

impl<M: Slm, C: CloudTransport> HybridLoop<'_, M, C> {
    /// Generates after `prompt` (token ids, e.g. a rendered chat template) on a fresh KV cache,
    /// awaiting `on_event` for each event (tokens, withdrawals, checks); returning `false`
    /// from it stops generation. It is async so the browser can yield to its event loop there
    /// (that is how an abort message reaches a worker busy generating).
    pub async fn run(&mut self, prompt: &[u32], mut on_event: impl AsyncFnMut(&LoopEvent) -> bool) -> Result<HybridStats> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty: give the model some text".into()));
        }
        if self.policy.kind().needs_reward() && self.head.is_none() {
            return Err(Error::InvalidInput(
                "the reward policy needs a reward head (`--reward-head FILE`, default assets/reward/); or pick maxprob, entropy, random, verify, never or always".into(),
            ));
        }
        let lossless = self.policy.kind().lossless();
        // Whether the answer's tail is checked before it ends (always so under `verify`).
        let checks_tail = lossless || (self.config.verify && self.config.final_check && self.policy.kind().may_consult() && self.cloud.is_some());
        if lossless && !self.config.verify {
            return Err(Error::InvalidInput("the verify policy checks every token: it cannot run with verification off (drop --no-verify)".into()));
        }
        let mut stats = HybridStats::new(prompt.len());
        let mut context = prompt.to_vec();
        let mut answer: Vec<Emitted> = Vec::new();
        // Tokens of `answer` before this index are checked (or came from the cloud).
        let mut checked = 0;
        // Set when the cloud turns out not to score prompts: gated policies stop asking.
        let mut scoring_unavailable = false;
        // The consumer asked to stop while local tokens were unchecked: under the verify
        // policy one more consult checks them first (and a correction goes on generating).
        let mut stop_requested = false;
        let mut text = TextStream::new(self.tokenizer);

        self.slm.reset();
        let t = Instant::now();
        let mut step = self.slm.forward(prompt).await?;
        stats.prefill_secs = t.elapsed().as_secs_f64();

        'generation: while stats.tokens < self.config.max_tokens {
            let proposal = self.sampler.sample_top(&step.top);
            let features = step.top.features(proposal);
            let reward = match self.head {
                Some(head) => Some(head.score(&step.hidden, &self.slm.token_embedding(proposal)?, &features)?),
                None => None,
            };
            let signals = Signals { reward, top1_prob: features.top1_p, entropy: features.entropy };
            let slm_prob = Some(features.log_p.exp());
            let unchecked = answer.len() - checked;
            // A checked tail: the last token and an end proposal are the cloud's call. The
            // verify policy's stretches never grow past `verify_every` either.
            let forced =
                (checks_tail && !scoring_unavailable && (stop_requested || self.tokenizer.is_eog(proposal) || stats.tokens + 1 >= self.config.max_tokens))
                    || (lossless && unchecked >= self.config.verify_every.max(1));

            // What this position emits: the proposal, or the cloud's token(s).
            let mut emitted: Vec<TokenEvent> = Vec::new();
            let mut cloud_ended = false;
            let local = |source| TokenEvent { id: proposal, text: String::new(), source, reward, slm_prob };
            if !forced && !self.policy.consult(&signals)? {
                emitted.push(local(Source::Local));
            } else {
                let budget = (self.config.max_tokens - stats.tokens).min(self.config.consult_tokens.max(1));
                let score_from = (self.config.verify && unchecked > 0 && !scoring_unavailable).then_some(prompt.len() + checked);
                match self.consult(&context, budget, score_from, &mut stats).await {
                    None if stop_requested => {
                        stats.stop = StopReason::Stopped;
                        break 'generation;
                    }
                    None => emitted.push(local(Source::Fallback)),
                    Some(cloud) => {
                        let pending: Vec<Pending> = answer[checked..].iter().map(|e| Pending { id: e.id, q: e.q.clone() }).collect();
                        let sampler = &mut self.sampler;
                        let checks = cloud.scores.map(|scores| scores.and_then(|scores| crate::verify::check(&pending, &scores, sampler)));
                        let mut scored = false;
                        let verdict = match checks {
                            None => Verdict::Accepted,
                            Some(Ok(verdict)) => {
                                scored = true;
                                verdict
                            }
                            Some(Err(e)) if lossless => {
                                stats.tail = text.finish();
                                return Err(Error::Cloud(format!(
                                    "the verify policy needs the cloud to score the answer's tokens, and it did not ({e}); the answer so far stays unchecked"
                                )));
                            }
                            Some(Err(e)) => {
                                stats.last_cloud_error = Some(format!("{e}; consults go on without checking the local tokens"));
                                scoring_unavailable = true;
                                Verdict::Accepted
                            }
                        };
                        match verdict {
                            Verdict::Accepted => {
                                if scored {
                                    stats.verified_tokens += unchecked;
                                    checked = answer.len();
                                    if !on_event(&LoopEvent::Verified { verified_to: checked }).await {
                                        stats.stop = StopReason::Stopped;
                                        break 'generation;
                                    }
                                }
                                if stop_requested {
                                    stats.stop = StopReason::Stopped;
                                    break 'generation;
                                }
                                for (i, &id) in cloud.ids.iter().enumerate() {
                                    // The small model's view of the first cloud token is known; of later ones it is not.
                                    let slm_prob = if i == 0 { step.top.log_prob(id).map(f32::exp) } else { None };
                                    let reward = if i == 0 { reward } else { None };
                                    emitted.push(TokenEvent { id, text: String::new(), source: Source::Cloud, reward, slm_prob });
                                }
                                cloud_ended = cloud.ended;
                            }
                            Verdict::Rejected { index, token } => {
                                stop_requested = false;
                                let at = checked + index;
                                stats.verified_tokens += index;
                                stats.corrections += 1;
                                for e in answer.drain(at..) {
                                    stats.withdrawn_tokens += 1;
                                    stats.tokens -= 1;
                                    match e.source {
                                        Source::Cloud => stats.cloud_tokens -= 1,
                                        Source::Fallback => stats.fallbacks -= 1,
                                        Source::Local => {}
                                    }
                                }
                                checked = at;
                                context.truncate(prompt.len() + at);
                                self.slm.truncate(context.len());
                                // The text stream holds back split characters: replay what is kept.
                                text = TextStream::new(self.tokenizer);
                                for e in &answer {
                                    text.push(e.id);
                                }
                                if !on_event(&LoopEvent::Withdraw { withdraw_from: at }).await {
                                    stats.stop = StopReason::Stopped;
                                    break 'generation;
                                }
                                let slm_prob = None;
                                emitted.push(TokenEvent { id: token, text: String::new(), source: Source::Cloud, reward: None, slm_prob });
                            }
                        }
                    }
                }
            }

            let mut fed = Vec::with_capacity(emitted.len());
            for mut event in emitted {
                if self.tokenizer.is_eog(event.id) {
                    stats.stop = StopReason::EndOfGeneration;
                    break 'generation;
                }
                event.text = text.push(event.id);
                stats.tokens += 1;
                match event.source {
                    Source::Cloud => stats.cloud_tokens += 1,
                    Source::Fallback => stats.fallbacks += 1,
                    Source::Local => {}
                }
                let q = match event.source {
                    Source::Cloud => Vec::new(),
                    _ => self.sampler.distribution(&step.top),
                };
                answer.push(Emitted { id: event.id, source: event.source, q });
                if event.source == Source::Cloud && checked + 1 == answer.len() {
                    checked = answer.len();
                }
                fed.push(event.id);
                if !on_event(&LoopEvent::Token(event)).await {
                    if !checks_tail || scoring_unavailable || checked == answer.len() {
                        stats.stop = StopReason::Stopped;
                        break 'generation;
                    }
                    stop_requested = true;
                    break;
                }
            }
            context.extend_from_slice(&fed);
            if cloud_ended {
                stats.stop = StopReason::EndOfGeneration;
                break;
            }
            if stats.tokens >= self.config.max_tokens {
                break;
            }
            let t = Instant::now();
            step = self.slm.forward(&fed).await?;
            stats.decode_secs += t.elapsed().as_secs_f64();
            stats.decode_steps += 1;
        }
        stats.unverified_tokens = answer[checked..].iter().filter(|e| e.source != Source::Cloud).count();
        stats.cloud_hold = self.backoff.hold(self.backoff.now());
        stats.tail = text.finish();
        Ok(stats)
    }

    /// Asks the cloud for up to `budget` tokens after `context` and, with `score_from`, for
    /// its scores of `context[score_from..]`. `None` when the consult failed, was refused or
    /// skipped by the back-off: the caller keeps its own token.
    /// Engines leave the end-of-generation token out of the answer and say `finish_reason:
    /// "stop"` instead (llama.cpp lists it last): then the answer ends there (possibly with no
    /// tokens at all).
    async fn consult(&mut self, context: &[u32], budget: usize, score_from: Option<usize>, stats: &mut HybridStats) -> Option<CloudAnswer> {
        let Some(cloud) = self.cloud.as_deref_mut() else {
            stats.skipped_consults += 1;
            return None;
        };
        if !self.backoff.allows(self.backoff.now()) {
            stats.skipped_consults += 1;
            return None;
        }
        let mut plain = CompletionRequest::consult(cloud.model(), Prompt::Ids(context.to_vec()), budget, 1);
        plain.cache_salt.clone_from(&self.config.cache_salt);
        let t = Instant::now();
        let (answer, refused) = match score_from {
            None => (cloud.complete(&plain).await, None),
            Some(from) => match cloud.complete(&plain.clone().scoring(from, self.config.verify_alternatives)).await {
                // An engine that refuses to score prompts still answers the consult.
                Err(e) if is_refusal(&e) => (cloud.complete(&plain).await, Some(e)),
                answer => (answer, None),
            },
        };
        stats.consult_ms.push(t.elapsed().as_secs_f64() * 1e3);
        stats.consults += 1;
        stats.cloud_prompt_tokens += context.len();
        let vocab = self.tokenizer.vocab_size();
        let checked = answer.and_then(|c| {
            stats.bytes_up += c.bytes_up;
            stats.bytes_down += c.bytes_down;
            if let Some(usage) = &c.usage {
                stats.cloud_cached_tokens += usage.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens);
            }
            let mut ids: Vec<u32> = c.tokens.iter().map(|t| t.id).take(budget).collect();
            let mut ended = c.finish_reason.as_deref() == Some("stop") && ids.len() < budget;
            // llama.cpp's server lists the end-of-generation token it stopped on among the
            // answer's tokens; others leave it out. Either way the answer ends there.
            if ids.last().is_some_and(|&id| self.tokenizer.is_eog(id)) {
                ids.pop();
                ended = true;
            }
            let scores = score_from.map(|from| match (refused, &c.echo) {
                (Some(e), _) => Err(Error::Cloud(format!("the cloud refused to score the prompt's tokens ({e})"))),
                (None, Some(echo)) => crate::cloud::position_scores(echo, context, from),
                (None, None) => {
                    Err(Error::Cloud("the cloud returned no scores of the prompt's tokens (`echo` with `logprobs`): use hybrid serve or vLLM".into()))
                }
            });
            match ids.iter().find(|&&id| id as usize >= vocab) {
                _ if ids.is_empty() && !ended => Err(Error::Cloud("the cloud answered with no tokens".into())),
                Some(bad) => Err(Error::Cloud(format!(
                    "the cloud answered token id {bad}, outside the small model's vocabulary of {vocab}: the two models must share a tokenizer"
                ))),
                None => Ok(CloudAnswer { ids, ended, scores }),
            }
        });
        match checked {
            Ok(answer) => {
                self.backoff.record_success();
                stats.cloud_completion_tokens += answer.ids.len();
                Some(answer)
            }
            Err(e) => {
                self.backoff.record_failure(self.backoff.now(), &e);
                stats.failed_consults += 1;
                stats.last_cloud_error = Some(e.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_4xx_that_is_not_busy_or_late() {
        let answer = |status: u16, body: &str| Completion::from_http("http://c/v1/completions", status, 0, body).err().unwrap();
        assert!(is_refusal(&answer(400, r#"{"error":{"message":"echo is not supported"}}"#)));
        // An error page that is not JSON still carries its status and first line.
        let page = answer(422, "<html>Unprocessable</html>\n<body>");
        assert!(is_refusal(&page) && page.to_string().contains("HTTP 422: <html>Unprocessable</html>"), "{page}");
        for status in [401, 403, 408, 429, 500, 503] {
            assert!(!is_refusal(&answer(status, r#"{"error":{"message":"busy"}}"#)), "{status}");
        }
        assert!(!is_refusal(&Error::Cloud("cannot reach the cloud".into())));
    }

    #[test]
    fn statistics_report_share_speed_and_latency_percentiles() {
        let mut st = HybridStats::new(10);
        st.tokens = 40;
        st.cloud_tokens = 2;
        st.decode_steps = 20;
        st.decode_secs = 0.5;
        st.consult_ms = vec![30.0, 10.0, 20.0, 40.0, 1000.0];
        assert!((st.cloud_share() - 0.05).abs() < 1e-12);
        assert!((st.local_tok_s() - 40.0).abs() < 1e-9);
        assert_eq!(st.consult_ms_percentile(50.0), 30.0);
        assert_eq!(st.consult_ms_percentile(95.0), 1000.0);
        let s = st.summary();
        assert_eq!(s["cloud_share"], 0.05);
        assert_eq!(s["consult_ms_p50"], 30.0);
        assert_eq!(HybridStats::new(3).consult_ms_percentile(95.0), 0.0);
        assert_eq!(HybridStats::new(3).cloud_share(), 0.0);
    }
}
