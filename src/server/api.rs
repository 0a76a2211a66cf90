//! The OpenAI-compatible routes: `POST /v1/completions` (plain and streamed), `GET /v1/models`,
//! `GET /health`, and the one place where errors become OpenAI-shaped JSON responses.
use super::engine::{Event, Failure, Finish, GeneratedToken, Job, PromptScore};
use super::AppState;
use crate::cloud::{Choice, CompletionResponse, LegacyLogprobs, PromptTokensDetails, TopMap, Usage};
use crate::model::tokenizer::Utf8Stream;
use crate::sampler::SamplerConfig;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

/// Most alternatives per token, as OpenAI and vLLM allow.
const MAX_LOGPROBS: u32 = 20;
const MAX_STOPS: usize = 4;
/// OpenAI's default when a request names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 16;

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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {
            "message": self.message, "type": self.kind, "code": self.code, "param": self.param,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// The request body. Fields other engines accept and we do not use are ignored, as vLLM does;
/// the ones whose absence would change the answer (`n`, `best_of`, `suffix`) are refused.
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
    return_token_ids: bool,
    tokens_as_ids: bool,
    stream: bool,
    include_usage: bool,
}

pub async fn completions(State(app): State<Arc<AppState>>, body: Body) -> Response {
    let body = match read_body(body, app.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    match start_completion(&app, &body) {
        Ok((request, events)) => match request.stream {
            true => stream_completion(app, request, events).await,
            false => collect_completion(&app, request, events).await.unwrap_or_else(|e| e.into_response()),
        },
        Err(e) => e.into_response(),
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

fn start_completion(app: &AppState, body: &[u8]) -> Result<(Request, UnboundedReceiver<Event>), ApiError> {
    let request = parse_request(app, body)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        prompt: request.prompt.clone(),
        max_tokens: request.max_tokens,
        sampler: request.sampler,
        stop: request.stop.clone(),
        logprobs: request.logprobs,
        echo_from: request.echo_from,
        cache_salt: request.cache_salt.clone(),
        deadline: Instant::now() + app.request_timeout,
        events: tx,
    };
    app.engine.submit(job).map_err(|_| ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!("the server is busy: {} requests are already waiting; retry after a second", app.engine.stats().max_queue),
        )
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
        return_token_ids: b.return_token_ids.unwrap_or(false),
        tokens_as_ids: b.return_tokens_as_token_ids.unwrap_or(false),
        stream,
        include_usage: stream && b.stream_options.is_some_and(|o| o.include_usage),
    })
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
        Failure::Internal(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message),
    }
}

async fn collect_completion(app: &AppState, request: Request, mut events: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut answer = Answer::new(app);
    let finish = loop {
        match events.recv().await {
            Some(Event::Started { cached_tokens }) => answer.cached_tokens = cached_tokens,
            Some(Event::Prompt { scores }) => {
                answer.push_echo(app, &request, &scores);
            }
            Some(Event::Token(token)) => {
                answer.push(app, &request, &token);
            }
            Some(Event::Done { finish, tail }) => {
                answer.text.push_str(&tail);
                break finish;
            }
            Some(Event::Failed(failure)) => return Err(failure_error(failure, app)),
            None => return Err(failure_error(Failure::Internal("the model worker stopped".into()), app)),
        }
    };
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
async fn stream_completion(app: Arc<AppState>, request: Request, mut events: UnboundedReceiver<Event>) -> Response {
    let mut answer = Answer::new(&app);
    match events.recv().await {
        Some(Event::Started { cached_tokens }) => answer.cached_tokens = cached_tokens,
        Some(Event::Failed(failure)) => return failure_error(failure, &app).into_response(),
        _ => return failure_error(Failure::Internal("the model worker stopped".into()), &app).into_response(),
    }
    struct StreamState {
        app: Arc<AppState>,
        request: Request,
        events: UnboundedReceiver<Event>,
        answer: Answer,
        queued: VecDeque<String>,
        done: bool,
    }
    let state = StreamState { app, request, events, answer, queued: VecDeque::new(), done: false };
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
            match s.events.recv().await {
                Some(Event::Prompt { scores }) => {
                    let (text, lp) = s.answer.push_echo(&s.app, &s.request, &scores);
                    let mut response = chunk(&s, text, lp, None, None);
                    response.choices[0].prompt_token_ids = s.request.return_token_ids.then(|| s.request.prompt.clone());
                    s.queued.push_back(json(response));
                }
                Some(Event::Token(token)) => {
                    let lp = s.answer.push(&s.app, &s.request, &token);
                    let data = json(chunk(&s, token.text, lp, Some(token.id), None));
                    s.queued.push_back(data);
                }
                Some(Event::Done { finish, tail }) => {
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
                Some(Event::Started { .. }) => {}
                Some(Event::Failed(failure)) => {
                    let e = failure_error(failure, &s.app);
                    let body = serde_json::json!({"error": {"message": e.message, "type": e.kind, "code": e.code, "param": null}});
                    s.queued.push_back(body.to_string());
                    s.queued.push_back("[DONE]".into());
                    s.done = true;
                }
                None => s.done = true,
            }
        }
    });
    Sse::new(stream).into_response()
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

pub async fn health(State(app): State<Arc<AppState>>) -> Response {
    let (rss, peak) = super::memory_usage();
    Json(serde_json::json!({
        "status": "ok",
        "model": app.model_name,
        "uptime_s": app.started.elapsed().as_secs(),
        "engine": app.engine.stats(),
        "memory": {"rss_bytes": rss, "peak_rss_bytes": peak},
    }))
    .into_response()
}
