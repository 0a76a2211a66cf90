//! `hybrid serve`: the cloud side. One process serves the OpenAI-compatible completions API
//! on the cloud model (continuous batching and prefix reuse in `engine`), the web app
//! (`www/`, `pkg/`) and the model files the browser downloads (`files`). API keys and their
//! limits are in `keys`, the Prometheus figures in `metrics`.
pub mod api;
pub mod engine;
pub mod files;
pub mod keys;
pub mod metrics;
pub mod prefix_cache;
pub mod stop;

use crate::fetch::Fetcher;
use crate::model::attention::KvDtype;
use crate::model::decoder::LoadOptions;
use crate::model::Model;
use crate::registry::Registry;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engine::{EngineConfig, EngineHandle, Faults};
use keys::Keys;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Registry name or .gguf path of the model that answers completions.
    pub cloud_model: String,
    pub api_key: Option<String>,
    /// One key per line, with optional limits (`keys`).
    pub api_key_file: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (the server's own always are).
    pub allow_origins: Vec<String>,
    /// Host names the server answers to (`*`: any); empty: the loopback names on a loopback
    /// address, any elsewhere.
    pub allowed_hosts: Vec<String>,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take before the process exits.
    pub shutdown_timeout: Duration,
    /// A line on stderr per API request.
    pub access_log: bool,
    /// How KV caches store keys and values (f16: half the memory).
    pub kv_dtype: KvDtype,
    pub engine: EngineConfig,
    pub max_tokens_cap: usize,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Directory holding `www/` and `pkg/`.
    pub web_root: PathBuf,
    /// The small model the web app runs (a registry name): fetched at start, served at
    /// `/models/NAME.gguf` and named in `/config.json` with its shipped reward head.
    pub browser_model: String,
}

/// Everything a handler needs, shared by all requests.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<crate::model::tokenizer::Tokenizer>,
    pub model_name: String,
    pub context_length: usize,
    pub max_tokens_cap: usize,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// The accepted API keys; empty: none needed.
    pub keys: Keys,
    /// Lowercase host names a request's Host header may carry; None: any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Requests being parsed (tokenized) at once, at most the queue's size.
    pub parsing: Arc<tokio::sync::Semaphore>,
    pub responses: metrics::Responses,
    pub access_log: bool,
    pub registry: Registry,
    pub fetcher: Fetcher,
    pub started: Instant,
    pub started_unix: u64,
    /// What `/config.json` tells the web app.
    pub app_config: crate::site::AppConfig,
}

/// Loads the model, binds, prints `listening on http://ADDR`, and serves until SIGTERM or
/// Ctrl-C; requests in flight then finish before it returns (within `shutdown_timeout`; a
/// second signal exits at once). An error when the model worker stopped for good.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(config))
}

/// The test-only faults of `HYBRID_INJECT_PANIC`; a release build refuses them.
fn faults_from_env() -> anyhow::Result<Faults> {
    let panic_on = std::env::var("HYBRID_INJECT_PANIC").ok().filter(|m| !m.is_empty());
    if panic_on.is_some() && !cfg!(dev_build) {
        anyhow::bail!("HYBRID_INJECT_PANIC is a test hook and this is a release build, which refuses it: unset it");
    }
    if let Some(marker) = &panic_on {
        eprintln!("hybrid serve: test hook on: prompts containing {marker:?} make the model worker panic");
    }
    Ok(Faults { panic_on })
}

/// `--allowed-host`, else the loopback names for a loopback address (a page on another site
/// that rebinds its DNS name to 127.0.0.1 sends its own name as Host), else any.
fn allowed_hosts(config: &ServeConfig) -> Option<Vec<String>> {
    if config.allowed_hosts.iter().any(|h| h == "*") {
        return None;
    }
    if !config.allowed_hosts.is_empty() {
        return Some(config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect());
    }
    match config.addr.ip().is_loopback() {
        true => Some(["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec()),
        false => None,
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let faults = faults_from_env()?;
    let mut keys = match &config.api_key_file {
        Some(path) => Keys::load(path)?,
        None => Keys::default(),
    };
    if let Some(key) = &config.api_key {
        keys.add_plain(key)?;
    }
    let path = crate::eval::resolve_model(&config.cloud_model)?;
    // Row-invariant kernels: a cached prefix and any batch give exactly one request's tokens.
    let options = LoadOptions { kv_dtype: config.kv_dtype, ..LoadOptions::cloud() };
    let model = Model::load_with(&path, options).with_context(|| format!("loading {}", path.display()))?;
    let model_name = match config.cloud_model.ends_with(".gguf") {
        true => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        false => config.cloud_model.clone(),
    };
    let context_length = model.decoder.config().context_length;
    let browser_model = crate::site::browser_model(&config.browser_model)?;
    crate::eval::resolve_model(&browser_model.name)?;
    let head = crate::site::HeadFile::shipped(&browser_model.name)?;
    let app_config = crate::site::app_config(&browser_model, head.as_ref(), "", "", &model_name);
    let tokenizer = Arc::new(model.tokenizer);
    let engine = engine::start(model.decoder, tokenizer.clone(), config.engine, faults);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}; is another server running there? pick another --addr", config.addr))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        model_name: model_name.clone(),
        context_length,
        max_tokens_cap: config.max_tokens_cap,
        request_timeout: config.request_timeout,
        max_body_bytes: config.max_body_bytes,
        keys,
        allowed_hosts: allowed_hosts(&config),
        parsing: Arc::new(tokio::sync::Semaphore::new(config.engine.max_queue.max(1))),
        responses: Default::default(),
        access_log: config.access_log,
        registry: Registry::builtin(),
        fetcher: Fetcher::from_env(),
        started: Instant::now(),
        started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        app_config,
    });
    let engine = state.engine.clone();
    let keys = match state.keys.all().len() {
        0 => String::new(),
        1 => ", API key required".into(),
        n => format!(", {n} API keys"),
    };
    let app = router(state, &config, addr);
    println!(
        "hybrid serve: listening on http://{addr} (web app: {} in the browser; model {model_name}, context {context_length}, batch {}, queue {}, prefix cache {} MiB{}, kernels {}{keys})",
        config.browser_model,
        config.engine.max_batch,
        config.engine.max_queue,
        config.engine.kv_cache_bytes >> 20,
        config.engine.kv_budget_bytes.map_or(String::new(), |b| format!(", KV budget {} MiB", b >> 20)) + &format!(", KV cache {:?}", config.kv_dtype).to_lowercase(),
        crate::model::cpu::KernelSet::active().describe(),
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let stopping = {
        let engine = engine.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {},
                reason = engine.down() => println!("hybrid serve: shutting down: {reason}"),
            }
            drain_deadline(config.shutdown_timeout);
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(stopping).await?;
    if let Some(reason) = engine.down_reason() {
        anyhow::bail!("the model worker stopped: {reason}");
    }
    println!("hybrid serve: stopped");
    Ok(())
}

/// While requests in flight finish: exits when `timeout` runs out or at a second signal.
fn drain_deadline(timeout: Duration) {
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(timeout) => println!("hybrid serve: requests still running after {} s (--shutdown-timeout); exiting", timeout.as_secs()),
            () = shutdown_signal() => println!("hybrid serve: second signal; exiting without waiting"),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    });
}

fn router(state: Arc<AppState>, config: &ServeConfig, addr: SocketAddr) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(api::completions))
        .route("/v1/models", get(api::models))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count_responses))
        .route("/metrics", get(metrics::metrics))
        .route("/health/details", get(api::health_details))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_api_key));
    let www = config.web_root.join("www");
    let pkg = config.web_root.join("pkg");
    Router::new()
        .merge(api)
        .route("/health", get(api::health))
        .route("/models/{file}", get(files::model_file))
        .route("/config.json", get(async |State(app): State<Arc<AppState>>| axum::Json(app.app_config.clone())))
        .nest_service("/reward", ServeDir::new(config.web_root.join("assets/reward")))
        .nest_service("/pkg", ServeDir::new(pkg))
        .fallback_service(ServeDir::new(www))
        .with_state(state.clone())
        // Outermost, so a preflight is answered before authentication.
        .layer(axum::middleware::from_fn_with_state(state, check_host_and_tag))
        .layer(cors(config, addr))
}

/// Refuses a Host header the server does not answer to (421), and tags every request with an
/// id, the caller's `x-request-id` when it sends a usable one: echoed in the response's
/// `x-request-id` and in the log line of each API request.
async fn check_host_and_tag(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("req-{:016x}", rand::random::<u64>()), str::to_string);
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host.as_str(), |(name, _)| name).to_string(),
    };
    let (method, path, started) = (request.method().clone(), request.uri().path().to_string(), Instant::now());
    let mut response = match &app.allowed_hosts {
        Some(allowed) if !allowed.contains(&name) => api::ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            "host_not_allowed",
            format!("this server does not answer to the host `{host}`; use one of {} or start it with --allowed-host {name}", allowed.join(", ")),
        )
        .into_response(),
        _ => next.run(request).await,
    };
    if app.access_log && (path.starts_with("/v1/") || response.status() == StatusCode::MISDIRECTED_REQUEST) {
        let code = response.extensions().get::<api::ErrorCode>().map_or("", |c| c.0);
        eprintln!(
            "hybrid serve: request_id={id} method={method} path={path} status={} code={} ms={}",
            response.status().as_u16(),
            if code.is_empty() { "-" } else { code },
            started.elapsed().as_millis()
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn cors(config: &ServeConfig, addr: SocketAddr) -> CorsLayer {
    // `--allow-origin '*'`: any page may call (a public cloud; the API key still applies).
    let origins = match config.allow_origins.iter().any(|o| o == "*") {
        true => AllowOrigin::any(),
        false => {
            let mut allowed: Vec<HeaderValue> = config.allow_origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()).collect();
            let port = addr.port();
            allowed.push(HeaderValue::from_str(&format!("http://{addr}")).expect("an address is ASCII"));
            if addr.ip().is_loopback() || addr.ip().is_unspecified() {
                for host in ["127.0.0.1", "localhost"] {
                    allowed.push(HeaderValue::from_str(&format!("http://{host}:{port}")).expect("ASCII"));
                }
            }
            AllowOrigin::list(allowed)
        }
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::OPTIONS])
        .allow_headers(allowed_request_headers())
        .expose_headers([header::CONTENT_RANGE, header::CONTENT_LENGTH, header::ETAG, header::RETRY_AFTER, REQUEST_ID])
        .max_age(Duration::from_secs(600))
}

/// Headers a browser may send to the API: ours, and those the OpenAI SDKs add in a browser
/// (`x-stainless-*`, `openai-*`), which would otherwise fail the CORS preflight.
fn allowed_request_headers() -> Vec<HeaderName> {
    let mut names = vec![header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE, header::IF_RANGE, HeaderName::from_static("x-api-key"), REQUEST_ID];
    names.extend(
        [
            "x-stainless-arch",
            "x-stainless-lang",
            "x-stainless-os",
            "x-stainless-package-version",
            "x-stainless-runtime",
            "x-stainless-runtime-version",
            "x-stainless-retry-count",
            "x-stainless-timeout",
            "x-stainless-async",
            "x-stainless-helper-method",
            "x-stainless-poll-helper",
            "x-stainless-raw-response",
            "openai-organization",
            "openai-project",
            "openai-beta",
            "openai-version",
        ]
        .map(HeaderName::from_static),
    );
    names
}

/// With keys configured, `/v1/*`, `/metrics` and `/health/details` need `Authorization:
/// Bearer KEY` or `X-Api-Key: KEY`; the key found rides along as a request extension.
async fn require_api_key(State(app): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    if app.keys.is_empty() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match key.and_then(|k| app.keys.find(k)) {
        Some(found) => {
            request.extensions_mut().insert(found);
            next.run(request).await
        }
        None => api::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            match key {
                None => "this server needs an API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
                Some(_) => "the API key is wrong; check the keys configured for this server (--api-key, HYBRID_API_KEY or --api-key-file)",
            },
        )
        .into_response(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    println!("hybrid serve: shutting down; finishing requests in flight");
}

/// Resident and peak resident memory of this process in bytes, from /proc (0 elsewhere).
pub fn memory_usage() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return (0, 0) };
    let field =
        |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).map_or(0, |kb| kb * 1024);
    (field("VmRSS:"), field("VmHWM:"))
}
