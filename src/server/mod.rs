//! `hybrid serve`: the cloud side. One process serves the OpenAI-compatible completions API
//! on the cloud model (continuous batching and prefix reuse in `engine`), the web app
//! (`www/`, `pkg/`) and the model files the browser downloads (`files`).
pub mod api;
pub mod engine;
pub mod files;
pub mod prefix_cache;
pub mod stop;

use crate::fetch::Fetcher;
use crate::model::decoder::{Kernels, LoadOptions};
use crate::model::Model;
use crate::registry::Registry;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engine::{EngineConfig, EngineHandle};
use sha2::{Digest, Sha256};
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
    /// Origins allowed to call the API from a browser (the server's own always are).
    pub allow_origins: Vec<String>,
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
    /// sha256 of the API key: comparing digests takes the same time whatever the key's length.
    pub api_key_digest: Option<[u8; 32]>,
    pub registry: Registry,
    pub fetcher: Fetcher,
    pub started: Instant,
    pub started_unix: u64,
    /// What `/config.json` tells the web app.
    pub app_config: crate::site::AppConfig,
}

/// Loads the model, binds, prints `listening on http://ADDR`, and serves until SIGTERM or
/// Ctrl-C; requests in flight then finish before it returns.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let path = crate::eval::resolve_model(&config.cloud_model)?;
    // Row-invariant kernels: a cached prefix and any batch give exactly one request's tokens.
    let options = LoadOptions { kernels: Kernels::RowInvariant };
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
    let engine = engine::start(model.decoder, tokenizer.clone(), config.engine);
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
        api_key_digest: config.api_key.as_deref().map(|k| Sha256::digest(k.as_bytes()).into()),
        registry: Registry::builtin(),
        fetcher: Fetcher::from_env(),
        started: Instant::now(),
        started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        app_config,
    });
    let app = router(state, &config, addr);
    println!(
        "hybrid serve: listening on http://{addr} (web app: {} in the browser; model {model_name}, context {context_length}, batch {}, queue {}, prefix cache {} MiB{})",
        config.browser_model,
        config.engine.max_batch,
        config.engine.max_queue,
        config.engine.kv_cache_bytes >> 20,
        if config.api_key.is_some() { ", API key required" } else { "" }
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    println!("hybrid serve: stopped");
    Ok(())
}

fn router(state: Arc<AppState>, config: &ServeConfig, addr: SocketAddr) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(api::completions))
        .route("/v1/models", get(api::models))
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
        .with_state(state)
        // Outermost, so a preflight is answered before authentication.
        .layer(cors(config, addr))
}

fn cors(config: &ServeConfig, addr: SocketAddr) -> CorsLayer {
    // `--allow-origin '*'`: any page may call (a public cloud; the API key still applies).
    let origins = match config.allow_origins.iter().any(|o| o == "*") {
        true => AllowOrigin::any(),
        false => {
            let mut allowed: Vec<HeaderValue> =
                config.allow_origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()).collect();
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
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-api-key"), header::RANGE, header::IF_RANGE])
        .expose_headers([header::CONTENT_RANGE, header::CONTENT_LENGTH, header::ETAG, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// With a key configured, `/v1/*` needs `Authorization: Bearer KEY` or `X-Api-Key: KEY`.
async fn require_api_key(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.api_key_digest else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let ok = key.is_some_and(|k| {
        let digest: [u8; 32] = Sha256::digest(k.trim().as_bytes()).into();
        constant_time_eq(&digest, expected)
    });
    match ok {
        true => next.run(request).await,
        false => api::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            match key {
                None => "this server needs an API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
                Some(_) => "the API key is wrong; check the key configured for this server (--api-key or HYBRID_API_KEY)",
            },
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_all_bytes() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(super::constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!super::constant_time_eq(&a, &b));
    }
}
