//! The OpenAI-compatible routes: `POST /v1/completions` (plain and streamed), `GET /v1/models`,
//! `GET /health` (and its details, `/metrics`), and the one place where errors become
//! OpenAI-shaped JSON responses.
use super::engine::{Event, Failure, Finish, GeneratedToken, Job, PromptScore, Refused, TokenRules};
use super::keys::{ApiKey, InFlight, OverLimit};
use super::AppState;
use crate::cloud::{Choice, CompletionResponse, LegacyLogprobs, PromptTokensDetails, TopMap, Usage};
use crate::model::tokenizer::Utf8Stream;
use crate::sampler::SamplerConfig;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

/// Most alternatives per token, as OpenAI and vLLM allow.
const MAX_LOGPROBS: u32 = 20;
const MAX_STOPS: usize = 4;
/// OpenAI's default when a request names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Deepest nesting of arrays and objects in a request body: ignored fields are skipped
/// without a depth limit, so a body nested a million levels deep is refused before parsing.
const MAX_JSON_DEPTH: usize = 32;
/// Most `stop_token_ids` one request may give.
const MAX_STOP_TOKEN_IDS: usize = 64;
/// A comment line this often on a quiet stream, so proxies do not close it as idle.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a client is told to wait when the engine is down or restarting.
const RETRY_AFTER_UNAVAILABLE_S: u64 = 5;

/// The error code of an error answer, kept on the response for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);
/// An error answer: `{"error": {"message", "type", "code", "param"}}` with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code, param: None, retry_after_s: None }
    }

    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value", message) }
    }

    fn unsupported(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "unsupported_parameter", message) }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { retry_after_s: Some(RETRY_AFTER_UNAVAILABLE_S), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "engine_unavailable", message) }
    }

    fn queue_full(app: &AppState) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
                format!("the server is busy: {} requests are already waiting; retry after a second", app.engine.stats().max_queue),
            )
        }
    }

    fn over_limit(key: &ApiKey, over: OverLimit) -> Self {
        let (code, message, retry) = match over {
            OverLimit::Concurrency { limit } => {
                ("concurrency_limit_exceeded", format!("API key `{}` already has {limit} requests running, its limit; wait for one to finish", key.name), 1)
            }
            OverLimit::Tokens { limit, retry_after_s } => (
                "tokens_per_minute_exceeded",
                format!("API key `{}` used its {limit} tokens per minute; retry after {retry_after_s} s", key.name),
                retry_after_s,
            ),
        };
        Self { retry_after_s: Some(retry), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", code, message) }
    }

    /// `{"error": {…}}`: the body of an error answer, and of an error event on a stream whose
    /// headers are already out.
    fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// The request body. Fields other engines accept that do not change the answer are ignored,
/// as vLLM does; the ones that would (`n`, `best_of`, `suffix`, penalties, `logit_bias`) are
/// refused unless they hold their neutral value. vLLM's `top_k`, `min_p`, `stop_token_ids`,
/// `ignore_eos` and `min_tokens` are implemented (`TokenRules`).
///
/// `echo` with `logprobs` scores the prompt as OpenAI's legacy API and vLLM do. `echo_from: K`
/// is our extension: only prompt positions `K..` are echoed and scored, so a consult that
/// verifies its last few tokens reuses the cached prefix before them (other engines ignore the
/// field and echo the whole prompt). `cache_salt` (vLLM's): only requests with the same salt
/// share cached prefixes.
#[derive(Debug, Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: Option<serde_json::Value>,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopParam>,
    logprobs: Option<u32>,
    return_token_ids: Option<bool>,
    return_tokens_as_token_ids: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u64>,
    best_of: Option<u64>,
    echo: Option<bool>,
    echo_from: Option<u64>,
    suffix: Option<String>,
    cache_salt: Option<String>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    stop_token_ids: Option<Vec<u64>>,
    ignore_eos: Option<bool>,
    min_tokens: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopParam {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A request after validation.
struct Request {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampler: SamplerConfig,
    stop: Vec<String>,
    logprobs: Option<usize>,
    /// With `echo`, the first prompt position echoed (None: no echo).
    echo_from: Option<usize>,
    cache_salt: String,
    rules: TokenRules,
    return_token_ids: bool,
    tokens_as_ids: bool,
    stream: bool,
    include_usage: bool,
}

/// The caller's API key, when the server has keys (set by the key check).
pub type CallerKey = Option<Arc<ApiKey>>;

pub async fn completions(State(app): State<Arc<AppState>>, key: Option<axum::Extension<Arc<ApiKey>>>, headers: HeaderMap, body: Body) -> Response {
    let key = key.map(|axum::Extension(k)| k);
    completion_response(app, key, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn completion_response(app: Arc<AppState>, key: CallerKey, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_json(&headers)?;
    if let Some(reason) = app.engine.down_reason() {
        return Err(ApiError::unavailable(reason));
    }
    let in_flight = key.as_ref().map(|k| k.begin().map_err(|over| ApiError::over_limit(k, over))).transpose()?;
    let body = read_body(body, app.max_body_bytes).await?;
    // Parsing tokenizes the prompt: on a blocking thread, and only as many at once as the
    // queue holds, so large bodies neither stall the async workers nor pile up unbounded.
    let Ok(permit) = app.parsing.clone().try_acquire_owned() else {
        return Err(ApiError::queue_full(&app));
    };
    let parsed = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            parse_request(&app, &body)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", format!("parsing the request failed: {e}")))??
    };
    let (request, events) = start_completion(&app, parsed, key.as_deref())?;
    let caller = Caller { key, _in_flight: in_flight };
    caller.record(request.prompt.len());
    Ok(match request.stream {
        true => stream_completion(app, request, events, caller).await,
        false => collect_completion(&app, request, events, &caller).await?,
    })
}

/// Who a completion runs for: its key (tokens are counted against it) and its slot.
struct Caller {
    key: CallerKey,
    _in_flight: Option<InFlight>,
}

impl Caller {
    fn record(&self, tokens: usize) {
        if let Some(k) = &self.key {
            k.record(tokens as u64);
        }
    }
}

/// A POST body must say it is JSON: browsers send cross-site `text/plain` POSTs without asking
/// (no CORS preflight), and this check makes them fail.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence.eq_ignore_ascii_case("application/json") {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!(
                "send the body as JSON with `Content-Type: application/json` (got {})",
                if content_type.is_empty() { "no Content-Type".to_string() } else { format!("`{content_type}`") }
            ),
        )),
    }
}

/// The request body, at most `limit` bytes. A larger body is read on and discarded up to four
/// times the limit before the 413 goes out: a server that answers and closes while the client
/// is still sending makes the client see a broken pipe instead of the answer.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut kept, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_body", format!("cannot read the request body: {e}")))?;
        total += chunk.len();
        if total <= limit {
            kept.extend_from_slice(&chunk);
        } else if total > limit.saturating_mul(4) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "invalid_body",
            format!("request body is larger than this server's limit of {limit} bytes"),
        ));
    }
    Ok(kept)
}

fn start_completion(app: &AppState, request: Request, key: Option<&ApiKey>) -> Result<(Request, UnboundedReceiver<Event>), ApiError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Each key has its own cached prefixes: one caller cannot learn from `cached_tokens`
    // whether another sent a prompt.
    let cache_salt = match key {
        Some(k) => format!("{}\u{1f}{}", k.name, request.cache_salt),
        None => request.cache_salt.clone(),
    };
    let job = Job {
        prompt: request.prompt.clone(),
        max_tokens: request.max_tokens,
        sampler: request.sampler,
        stop: request.stop.clone(),
        logprobs: request.logprobs,
        echo_from: request.echo_from,
        cache_salt,
        rules: request.rules.clone(),
        deadline: Instant::now() + app.request_timeout,
        events: tx,
    };
    app.engine.submit(job).map_err(|refused| match refused {
        Refused::QueueFull => ApiError::queue_full(app),
        Refused::Down(reason) => ApiError::unavailable(reason),
    })?;
    Ok((request, rx))
}

fn parse_request(app: &AppState, body: &[u8]) -> Result<Request, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "request body is not a valid completion request: send a JSON object such as {\"prompt\": \"…\", \"max_tokens\": 16}",
        ));
    }
    if json_depth(body) > MAX_JSON_DEPTH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; a completion request needs 3"),
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let b: CompletionBody = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let inner = e.inner();
        let message = match e.path().to_string().as_str() {
            _ if inner.is_syntax() || inner.is_eof() => format!("request body is not valid JSON: {inner}"),
            "." => format!("request body is not a valid completion request: {inner}"),
            path => format!("`{path}`: {inner}"),
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", message)
    })?;
    if let Some(model) = &b.model {
        if model != &app.model_name {
            return Err(ApiError {
                param: Some("model"),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    format!("model `{model}` is not served here; this server serves `{}` (see GET /v1/models)", app.model_name),
                )
            });
        }
    }
    if b.n.unwrap_or(1) != 1 {
        return Err(ApiError::unsupported("n", "`n` other than 1 is not supported: send one request per completion"));
    }
    if b.best_of.unwrap_or(1) != 1 {
        return Err(ApiError::unsupported("best_of", "`best_of` other than 1 is not supported"));
    }
    if b.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "`suffix` (fill-in-the-middle) is not supported"));
    }
    let echo = b.echo.unwrap_or(false);
    let prompt = prompt_ids(app, b.prompt.as_ref())?;
    let max_tokens = match b.max_tokens {
        None => DEFAULT_MAX_TOKENS.min(app.max_tokens_cap),
        // Scoring the prompt only, as OpenAI and vLLM allow.
        Some(0) if echo => 0,
        Some(m) if m >= 1 && m <= app.max_tokens_cap as u64 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` must be between 1 and {} on this server (0 only with `echo: true`, to score the prompt), got {m}", app.max_tokens_cap),
            ))
        }
    };
    let context = app.context_length;
    // A generated token needs a position after the prompt's.
    if prompt.len() + usize::from(max_tokens > 0) > context {
        return Err(ApiError {
            param: Some("prompt"),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                format!("the prompt is {} tokens, but the model's context is {context} tokens; shorten it", prompt.len()),
            )
        });
    }
    if prompt.len() + max_tokens > context {
        return Err(ApiError {
            param: Some("max_tokens"),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                format!(
                    "the prompt ({} tokens) plus max_tokens ({max_tokens}) exceed the model's context of {context} tokens; lower max_tokens to at most {}",
                    prompt.len(),
                    context - prompt.len()
                ),
            )
        });
    }
    let temperature = b.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("`temperature` must be between 0 and 2, got {temperature}")));
    }
    let top_p = b.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
    }
    let logprobs = match b.logprobs {
        Some(k) if k > MAX_LOGPROBS => return Err(ApiError::invalid("logprobs", format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}"))),
        k => k.map(|k| k as usize),
    };
    let echo_from = match (echo, b.echo_from) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid("echo_from", "`echo_from` needs `echo: true`: it says from which prompt position on the prompt is echoed and scored"))
        }
        (true, None) => Some(0),
        (true, Some(k)) => match usize::try_from(k).ok().filter(|&k| k <= prompt.len()) {
            Some(k) => Some(k),
            None => {
                return Err(ApiError::invalid(
                    "echo_from",
                    format!("`echo_from` is {k}, past the end of the prompt, which is {0} tokens: send 0 to {0}", prompt.len()),
                ))
            }
        },
    };
    let rules = token_rules(app, &b)?;
    let stop = match b.stop {
        None => vec![],
        Some(StopParam::One(s)) => vec![s],
        Some(StopParam::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid("stop", format!("`stop` takes up to {MAX_STOPS} non-empty strings")));
    }
    let stream = b.stream.unwrap_or(false);
    Ok(Request {
        prompt,
        max_tokens,
        // No seed: a fresh one, so unseeded sampling varies between requests as users expect.
        sampler: SamplerConfig { temperature, top_p, seed: b.seed.unwrap_or_else(rand::random) },
        stop,
        logprobs,
        echo_from,
        cache_salt: b.cache_salt.unwrap_or_default(),
        rules,
        return_token_ids: b.return_token_ids.unwrap_or(false),
        tokens_as_ids: b.return_tokens_as_token_ids.unwrap_or(false),
        stream,
        include_usage: stream && b.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// vLLM's sampling extras, checked; penalties and logit biases are refused unless neutral.
fn token_rules(app: &AppState, b: &CompletionBody) -> Result<TokenRules, ApiError> {
    for (param, value, neutral) in
        [("presence_penalty", b.presence_penalty, 0.0), ("frequency_penalty", b.frequency_penalty, 0.0), ("repetition_penalty", b.repetition_penalty, 1.0)]
    {
        if value.is_some_and(|v| v != neutral) {
            return Err(ApiError::unsupported(param, format!("`{param}` is not supported here; leave it out (or send {neutral})")));
        }
    }
    if b.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "`logit_bias` is not supported here; leave it out"));
    }
    let top_k = match b.top_k {
        None | Some(0) | Some(-1) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("top_k", format!("`top_k` must be a positive number of tokens (or -1 for all), got {k}"))),
    };
    let min_p = match b.min_p {
        Some(p) if !(0.0..=1.0).contains(&p) => return Err(ApiError::invalid("min_p", format!("`min_p` must be between 0 and 1, got {p}"))),
        p => p.filter(|&p| p > 0.0),
    };
    let ids = b.stop_token_ids.as_deref().unwrap_or_default();
    if ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid("stop_token_ids", format!("`stop_token_ids` takes up to {MAX_STOP_TOKEN_IDS} ids, got {}", ids.len())));
    }
    let vocab = app.tokenizer.vocab_size();
    let stop_token_ids = ids
        .iter()
        .map(|&id| match usize::try_from(id).ok().filter(|&i| i < vocab) {
            Some(i) => Ok(i as u32),
            None => Err(ApiError::invalid("stop_token_ids", format!("{id} is not a token id of this model (ids are 0 to {})", vocab - 1))),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let min_tokens = b.min_tokens.unwrap_or(0);
    let max_tokens = b.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS as u64);
    if min_tokens > max_tokens {
        return Err(ApiError::invalid("min_tokens", format!("`min_tokens` ({min_tokens}) is more than `max_tokens` ({max_tokens})")));
    }
    Ok(TokenRules { top_k, min_p, stop_token_ids, ignore_eos: b.ignore_eos.unwrap_or(false), min_tokens: min_tokens as usize })
}

/// How deeply `body`'s arrays and objects nest (brackets inside strings do not count).
fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in body {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The prompt as token ids: given as ids (checked against the vocabulary) or as text
/// (tokenized with the model's tokenizer, special tokens such as `<|im_start|>` included).
fn prompt_ids(app: &AppState, prompt: Option<&serde_json::Value>) -> Result<Vec<u32>, ApiError> {
    use serde_json::Value;
    let ids = match prompt {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Value::String(text)) => app.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", format!("the prompt cannot be tokenized: {e}")))?,
        Some(Value::Array(items)) if items.iter().any(|v| v.is_string() || v.is_array()) => {
            return Err(ApiError::unsupported("prompt", "batched prompts (a list of strings or of id lists) are not supported: send one request per prompt"))
        }
        Some(Value::Array(items)) => {
            let vocab = app.tokenizer.vocab_size();
            items
                .iter()
                .map(|v| match v.as_u64() {
                    Some(id) if (id as usize) < vocab => Ok(id as u32),
                    _ => Err(ApiError::invalid("prompt", format!("prompt token {v} is not a token id of this model (ids are 0 to {})", vocab - 1))),
                })
                .collect::<Result<Vec<u32>, _>>()?
        }
        Some(other) => return Err(ApiError::invalid("prompt", format!("`prompt` must be a string or a list of token ids, got {}", json_kind(other)))),
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty: send at least one token"));
    }
    Ok(ids)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Object(_) => "an object",
        _ => "something else",
    }
}

/// What all chunks and the final answer of one completion share.
struct Answer {
    id: String,
    created: u64,
    model: String,
    cached_tokens: usize,
    text: String,
    /// Characters of `text`, for `text_offset`.
    chars: usize,
    ids: Vec<u32>,
    logprobs: LegacyLogprobs,
}

impl Answer {
    fn new(app: &AppState) -> Self {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self {
            id: format!("cmpl-{:032x}", rand::random::<u128>()),
            created,
            model: app.model_name.clone(),
            cached_tokens: 0,
            text: String::new(),
            chars: 0,
            ids: Vec::new(),
            logprobs: LegacyLogprobs::default(),
        }
    }

    /// Adds one token; returns its logprobs entry alone (for a stream chunk).
    fn push(&mut self, app: &AppState, request: &Request, token: &GeneratedToken) -> Option<LegacyLogprobs> {
        self.ids.push(token.id);
        let offset = self.push_text(&token.text);
        request.logprobs?;
        let one = LegacyLogprobs {
            tokens: vec![token_name(app, request, token.id)],
            token_logprobs: vec![Some(token.logprob)],
            top_logprobs: vec![Some(top_map(app, request, &token.top, token.id, token.logprob))],
            text_offset: vec![offset],
        };
        self.extend_logprobs(&one);
        Some(one)
    }

    /// Adds the echoed prompt, positions `echo_from..` with their `scores` (from position 1
    /// on; position 0 has none); returns its text and logprobs alone (for a stream chunk).
    fn push_echo(&mut self, app: &AppState, request: &Request, scores: &[PromptScore]) -> (String, Option<LegacyLogprobs>) {
        let from = request.echo_from.unwrap_or(0);
        let start = self.text.len();
        let mut utf8 = Utf8Stream::default();
        let mut echoed = LegacyLogprobs::default();
        let mut scores = scores.iter();
        for (p, &id) in request.prompt.iter().enumerate().skip(from) {
            let offset = self.push_text(&utf8.push(app.tokenizer.token_bytes(id)));
            if request.logprobs.is_none() {
                continue;
            }
            let score = if p == 0 { None } else { scores.next() };
            echoed.tokens.push(token_name(app, request, id));
            echoed.token_logprobs.push(score.map(|s| s.logprob));
            echoed.top_logprobs.push(score.map(|s| top_map(app, request, &s.top, id, s.logprob)));
            echoed.text_offset.push(offset);
        }
        self.push_text(&utf8.finish());
        self.extend_logprobs(&echoed);
        (self.text[start..].to_string(), request.logprobs.map(|_| echoed))
    }

    /// Appends text; returns the character offset it starts at.
    fn push_text(&mut self, text: &str) -> usize {
        let offset = self.chars;
        self.text.push_str(text);
        self.chars += text.chars().count();
        offset
    }

    fn extend_logprobs(&mut self, more: &LegacyLogprobs) {
        self.logprobs.tokens.extend(more.tokens.iter().cloned());
        self.logprobs.token_logprobs.extend(more.token_logprobs.iter().copied());
        self.logprobs.top_logprobs.extend(more.top_logprobs.iter().cloned());
        self.logprobs.text_offset.extend(more.text_offset.iter().copied());
    }

    fn usage(&self, request: &Request) -> Usage {
        Usage {
            prompt_tokens: request.prompt.len(),
            completion_tokens: self.ids.len(),
            total_tokens: request.prompt.len() + self.ids.len(),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: self.cached_tokens }),
        }
    }

    fn response(&self, choices: Vec<Choice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse { id: self.id.clone(), object: "text_completion".into(), created: self.created, model: self.model.clone(), choices, usage }
    }
}

/// A token as `logprobs` names it: its text, or `token_id:N` when the request asks for ids.
fn token_name(app: &AppState, request: &Request, id: u32) -> String {
    match request.tokens_as_ids {
        true => format!("token_id:{id}"),
        false => String::from_utf8_lossy(app.tokenizer.token_bytes(id)).into_owned(),
    }
}

/// The alternatives as `{name: logprob}`; as vLLM does, the actual token is always among them.
fn top_map(app: &AppState, request: &Request, top: &[(u32, f32)], id: u32, logprob: f32) -> TopMap {
    let mut map = TopMap(top.iter().map(|&(t, lp)| (token_name(app, request, t), lp)).collect());
    if !top.iter().any(|&(t, _)| t == id) && !map.0.is_empty() {
        map.0.push((token_name(app, request, id), logprob));
    }
    map
}

fn finish_reason(finish: Finish) -> String {
    match finish {
        Finish::Stop => "stop".into(),
        Finish::Length => "length".into(),
    }
}

fn failure_error(failure: Failure, app: &AppState) -> ApiError {
    match failure {
        Failure::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "timeout",
            format!("the request did not finish within this server's {} s limit; ask for fewer tokens or retry later", app.request_timeout.as_secs()),
        ),
        Failure::Internal(message) | Failure::Crashed(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message),
        Failure::Unavailable(message) => ApiError::unavailable(message),
        // Retrying does not help, so no Retry-After.
        Failure::TooLarge { needed_bytes, budget_bytes } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "insufficient_memory",
            format!(
                "this request needs up to {} MiB of KV cache (its prompt and max_tokens), more than this server's whole budget of {} MiB (--kv-budget-mb); shorten the prompt or lower max_tokens",
                needed_bytes.div_ceil(1 << 20),
                budget_bytes >> 20
            ),
        ),
    }
}

/// The engine dropped a request without a word: it is gone.
fn worker_gone() -> Failure {
    Failure::Unavailable("the model worker stopped; retry shortly".into())
}

/// The engine's next event for a request; one it dropped fails as `worker_gone`.
async fn next_event(events: &mut UnboundedReceiver<Event>) -> Event {
    events.recv().await.unwrap_or_else(|| Event::Failed(worker_gone()))
}

async fn collect_completion(app: &AppState, request: Request, mut events: UnboundedReceiver<Event>, caller: &Caller) -> Result<Response, ApiError> {
    let mut answer = Answer::new(app);
    let finish = loop {
        match next_event(&mut events).await {
            Event::Started { cached_tokens } => answer.cached_tokens = cached_tokens,
            Event::Prompt { scores } => {
                answer.push_echo(app, &request, &scores);
            }
            Event::Token(token) => {
                answer.push(app, &request, &token);
            }
            Event::Done { finish, tail } => {
                answer.text.push_str(&tail);
                break finish;
            }
            Event::Failed(failure) => return Err(failure_error(failure, app)),
        }
    };
    caller.record(answer.ids.len());
    let choice = Choice {
        index: 0,
        text: answer.text.clone(),
        logprobs: request.logprobs.map(|_| answer.logprobs.clone()),
        finish_reason: Some(finish_reason(finish)),
        token_ids: request.return_token_ids.then(|| answer.ids.clone()),
        prompt_token_ids: request.return_token_ids.then(|| request.prompt.clone()),
    };
    let usage = answer.usage(&request);
    Ok(Json(answer.response(vec![choice], Some(usage))).into_response())
}

/// Server-sent events: with echo first a chunk of the echoed prompt (its logprobs, and
/// `prompt_token_ids` when ids are asked for), one chunk per token, a last chunk with the
/// finish reason, the usage chunk if asked for, then `[DONE]`. Headers go out once the request
/// holds a batch slot.
async fn stream_completion(app: Arc<AppState>, request: Request, mut events: UnboundedReceiver<Event>, caller: Caller) -> Response {
    let mut answer = Answer::new(&app);
    match next_event(&mut events).await {
        Event::Started { cached_tokens } => answer.cached_tokens = cached_tokens,
        Event::Failed(failure) => return failure_error(failure, &app).into_response(),
        _ => return failure_error(worker_gone(), &app).into_response(),
    }
    struct StreamState {
        app: Arc<AppState>,
        request: Request,
        events: UnboundedReceiver<Event>,
        answer: Answer,
        queued: VecDeque<String>,
        done: bool,
        caller: Caller,
    }
    let state = StreamState { app, request, events, answer, queued: VecDeque::new(), done: false, caller };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.queued.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.done {
                return None;
            }
            let chunk = |s: &StreamState, text: String, lp: Option<LegacyLogprobs>, id: Option<u32>, finish: Option<Finish>| {
                let choice = Choice {
                    index: 0,
                    text,
                    logprobs: lp,
                    finish_reason: finish.map(finish_reason),
                    token_ids: s.request.return_token_ids.then(|| id.into_iter().collect()),
                    prompt_token_ids: None,
                };
                s.answer.response(vec![choice], None)
            };
            let json = |r: CompletionResponse| serde_json::to_string(&r).expect("responses serialise");
            match next_event(&mut s.events).await {
                Event::Prompt { scores } => {
                    let (text, lp) = s.answer.push_echo(&s.app, &s.request, &scores);
                    let mut response = chunk(&s, text, lp, None, None);
                    response.choices[0].prompt_token_ids = s.request.return_token_ids.then(|| s.request.prompt.clone());
                    s.queued.push_back(json(response));
                }
                Event::Token(token) => {
                    let lp = s.answer.push(&s.app, &s.request, &token);
                    let data = json(chunk(&s, token.text, lp, Some(token.id), None));
                    s.queued.push_back(data);
                }
                Event::Done { finish, tail } => {
                    s.caller.record(s.answer.ids.len());
                    s.answer.text.push_str(&tail);
                    let data = json(chunk(&s, tail, None, None, Some(finish)));
                    s.queued.push_back(data);
                    if s.request.include_usage {
                        let usage = s.answer.usage(&s.request);
                        let data = serde_json::to_string(&s.answer.response(vec![], Some(usage))).expect("serialises");
                        s.queued.push_back(data);
                    }
                    s.queued.push_back("[DONE]".into());
                    s.done = true;
                }
                Event::Started { .. } => {}
                Event::Failed(failure) => {
                    s.caller.record(s.answer.ids.len());
                    s.queued.push_back(failure_error(failure, &s.app).body().to_string());
                    s.queued.push_back("[DONE]".into());
                    s.done = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE)).into_response()
}

pub async fn models(State(app): State<Arc<AppState>>) -> Response {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": app.model_name,
            "object": "model",
            "created": app.started_unix,
            "owned_by": "hybrid-assistant",
            "max_model_len": app.context_length,
        }],
    }))
    .into_response()
}

/// Whether the server can answer: 200 `{"status": "ok"}`, or 503 with why. Open to anyone, so
/// it says nothing more; the numbers are in `/health/details` and `/metrics`, behind the key.
pub async fn health(State(app): State<Arc<AppState>>) -> Response {
    match app.engine.down_reason() {
        None => Json(serde_json::json!({"status": "ok", "model": app.model_name})).into_response(),
        Some(reason) => {
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "unavailable", "reason": reason}))).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_UNAVAILABLE_S));
            response
        }
    }
}

/// The engine's counters, queue and memory as JSON.
pub async fn health_details(State(app): State<Arc<AppState>>) -> Response {
    let (rss, peak) = super::memory_usage();
    Json(serde_json::json!({
        "status": if app.engine.down_reason().is_none() { "ok" } else { "unavailable" },
        "model": app.model_name,
        "uptime_s": app.started.elapsed().as_secs(),
        "kernels": crate::model::cpu::KernelSet::active().describe(),
        "engine": app.engine.stats(),
        "memory": {"rss_bytes": rss, "peak_rss_bytes": peak},
    }))
    .into_response()
}
