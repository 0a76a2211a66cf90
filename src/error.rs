//! The library's one error type. Every message says what was wrong and what to do about it.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },

    #[error("model registry is invalid: {0}")]
    Registry(String),

    #[error("{0}")]
    Fetch(String),

    #[error("model file hash mismatch for {name}: expected {expected}, got {actual}; the file was deleted, run `hybrid fetch-models {name}` again")]
    HashMismatch { name: String, expected: String, actual: String },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("GGUF file is not usable: {0}")]
    Gguf(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("{0}")]
    InvalidInput(String),

    /// The GPU backend failed or cannot take this model; the CPU can.
    #[error("GPU: {0}")]
    Gpu(String),

    /// The cloud call failed: unreachable, or an answer we cannot read.
    #[error("{0}")]
    Cloud(String),

    /// The cloud did not answer within the consult's timeout.
    #[error("{0}")]
    CloudTimeout(String),

    /// The cloud answered with an HTTP error status (its own message in `message`; how long
    /// it asked to wait, from `Retry-After`).
    #[error("{message}")]
    CloudStatus { status: u16, message: String, retry_after: Option<std::time::Duration> },

    // candle appends a backtrace to its messages when RUST_BACKTRACE is set: keep the message.
    #[error("tensor computation failed: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The cloud's `Retry-After` for an HTTP error status (see `backoff::parse_retry_after`).
    pub fn with_retry_after(self, wait: Option<std::time::Duration>) -> Self {
        match self {
            Error::CloudStatus { status, message, .. } => Error::CloudStatus { status, message, retry_after: wait },
            other => other,
        }
    }
}

/// The first line of a message (candle appends a backtrace when RUST_BACKTRACE is set).
pub(crate) fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

pub type Result<T> = std::result::Result<T, Error>;
