//! `GET /metrics`: the server's figures in Prometheus' text format (requests and errors by
//! code, tokens, queue, batch, prefix cache, KV bytes, engine restarts, memory).
use super::api::ErrorCode;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Answers of the API routes by status and error code ("" for successes).
#[derive(Default)]
pub struct Responses(Mutex<BTreeMap<(u16, &'static str), u64>>);

/// Counts each `/v1/*` answer by status and error code.
pub async fn count_responses(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    *app.responses.0.lock().unwrap_or_else(|e| e.into_inner()).entry((response.status().as_u16(), code)).or_default() += 1;
    response
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP hybrid_{name} {help}\n# TYPE hybrid_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "hybrid_{name}{labels} {value}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let responses: Vec<(String, f64)> = app
        .responses
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((status, code), n)| (format!("{{status=\"{status}\",code=\"{code}\"}}"), *n as f64))
        .collect();
    metric("http_responses_total", "counter", "Answers of /v1/* by HTTP status and error code (empty for success).", &responses);
    let s = app.engine.stats();
    metric("requests_total", "counter", "Completion requests the engine admitted.", &one(s.requests as f64));
    metric("requests_cancelled_total", "counter", "Requests whose client went away before the end; their generation stopped.", &one(s.cancelled as f64));
    metric("requests_timed_out_total", "counter", "Requests that ran past the request timeout.", &one(s.timed_out as f64));
    metric("requests_crashed_total", "counter", "Requests failed by a panic in the model worker.", &one(s.crashed as f64));
    metric("engine_restarts_total", "counter", "Times the model worker restarted after a panic.", &one(s.restarts as f64));
    metric(
        "engine_up",
        "gauge",
        "1 while the model worker serves, 0 once it has stopped for good.",
        &one(f64::from(u8::from(app.engine.down_reason().is_none()))),
    );
    metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", &one(s.prompt_tokens as f64));
    metric("cached_prompt_tokens_total", "counter", "Prompt tokens taken from the prefix cache.", &one(s.cached_prompt_tokens as f64));
    metric("generated_tokens_total", "counter", "Tokens generated.", &one(s.generated_tokens as f64));
    metric("forward_passes_total", "counter", "Batched forward passes.", &one(s.forward_passes as f64));
    metric("queue_waiting", "gauge", "Requests waiting for a batch slot.", &one(s.waiting as f64));
    metric("queue_capacity", "gauge", "Requests that may wait (--max-queue).", &one(s.max_queue as f64));
    metric("batch_active", "gauge", "Requests in the running batch.", &one(s.active as f64));
    metric("batch_capacity", "gauge", "Requests decoded together at most (--max-batch).", &one(s.max_batch as f64));
    metric("kv_running_bytes", "gauge", "KV cache bytes of the running requests.", &one(s.running_kv_bytes as f64));
    metric("prefix_cache_bytes", "gauge", "KV cache bytes of cached prefixes.", &one(s.prefix_cache.bytes as f64));
    metric("prefix_cache_capacity_bytes", "gauge", "Budget of cached prefixes (--kv-cache-mb).", &one(s.prefix_cache.capacity_bytes as f64));
    metric("prefix_cache_entries", "gauge", "Cached prefixes.", &one(s.prefix_cache.entries as f64));
    let keys: Vec<(String, f64)> = app.keys.all().iter().map(|k| (format!("{{key=\"{}\"}}", k.name), k.in_flight() as f64)).collect();
    if !keys.is_empty() {
        metric("key_requests_in_flight", "gauge", "Completions running per API key.", &keys);
    }
    let (rss, peak) = super::memory_usage();
    metric("resident_memory_bytes", "gauge", "Resident memory of the process.", &one(rss as f64));
    metric("resident_memory_peak_bytes", "gauge", "Peak resident memory of the process.", &one(peak as f64));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}
