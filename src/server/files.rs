//! Model files for the browser at `/models/NAME.gguf`: single-range requests so a download
//! can show progress and resume, `ETag` = the file's sha256 (the registry's, verified when
//! it was fetched) and long-lived cache headers, since a name's content never changes.
use super::api::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub async fn model_file(State(app): State<Arc<AppState>>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve_model(&app, &file, &headers).await.unwrap_or_else(|e| e.into_response())
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", message)
}

async fn serve_model(app: &AppState, file: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let known = || app.registry.names().join(", ");
    let name = file
        .strip_suffix(".gguf")
        .ok_or_else(|| not_found(format!("no such file `{file}`; model files are /models/NAME.gguf for NAME in: {}", known())))?;
    let spec = app
        .registry
        .get(name)
        .map_err(|_| not_found(format!("unknown model `{name}`; known models: {}", known())))?;
    let path = app.fetcher.verified(spec).ok_or_else(|| {
        not_found(format!("model `{name}` is not fetched on this server; run `hybrid fetch-models {name}` there"))
    })?;
    let etag = format!("\"{}\"", spec.sha256);
    let total = spec.bytes;
    let mut response_headers = HeaderMap::new();
    let set = |h: &mut HeaderMap, name, value: String| {
        h.insert(name, HeaderValue::from_str(&value).expect("ASCII header value"));
    };
    set(&mut response_headers, header::ETAG, etag.clone());
    set(&mut response_headers, header::CACHE_CONTROL, "public, max-age=31536000, immutable".into());
    set(&mut response_headers, header::ACCEPT_RANGES, "bytes".into());
    set(&mut response_headers, header::CONTENT_TYPE, "application/octet-stream".into());
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| etag_matches(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    // A Range applies only if the client's copy is this one (If-Range names our ETag).
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => match parse_range(r, total) {
            Ok(range) => Some(range),
            Err(RangeError::Unsatisfiable) => {
                set(&mut response_headers, header::CONTENT_RANGE, format!("bytes */{total}"));
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, response_headers).into_response());
            }
            // A header we do not understand (several ranges, other units) is ignored, as RFC 9110 allows.
            Err(RangeError::Ignored) => None,
        },
        _ => None,
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            set(&mut response_headers, header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, total),
    };
    set(&mut response_headers, header::CONTENT_LENGTH, len.to_string());
    let io_error = |e: std::io::Error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "file_error", format!("{}: {e}", path.display()))
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(io_error)?;
    f.seek(std::io::SeekFrom::Start(start)).await.map_err(io_error)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f.take(len), 1 << 16));
    Ok((status, response_headers, body).into_response())
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*")
}

#[derive(Debug, PartialEq)]
enum RangeError {
    Unsatisfiable,
    Ignored,
}

/// One `bytes=` range as inclusive `(start, end)`: `a-b`, `a-` or the suffix form `-n`.
fn parse_range(header: &str, total: u64) -> Result<(u64, u64), RangeError> {
    let spec = header.trim().strip_prefix("bytes=").ok_or(RangeError::Ignored)?;
    if spec.contains(',') {
        return Err(RangeError::Ignored);
    }
    let (a, b) = spec.split_once('-').ok_or(RangeError::Ignored)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| RangeError::Ignored);
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(RangeError::Ignored),
        (true, false) => {
            let n = number(b)?;
            if n == 0 || total == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            (total.saturating_sub(n), total - 1)
        }
        (false, true) => (number(a)?, total.saturating_sub(1)),
        (false, false) => {
            let (start, end) = (number(a)?, number(b)?);
            if end < start {
                return Err(RangeError::Ignored);
            }
            (start, end.min(total.saturating_sub(1)))
        }
    };
    if start >= total {
        return Err(RangeError::Unsatisfiable);
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok((0, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Ok((990, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 1000), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Err(RangeError::Ignored));
        assert_eq!(parse_range("items=0-1", 1000), Err(RangeError::Ignored));
        assert_eq!(parse_range("bytes=5-1", 1000), Err(RangeError::Ignored));
    }

    #[test]
    fn etags_match_lists_weak_forms_and_star() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }
}
