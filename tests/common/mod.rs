//! Shared helpers for the integration tests: the real models, fetched on first use.
#![allow(dead_code)]
use hybrid_assistant::fetch::Fetcher;
use hybrid_assistant::registry::Registry;
use std::path::PathBuf;

/// Path of a verified model file; fetches it through `hybrid fetch-models`' code on first use.
pub fn model_path(name: &str) -> PathBuf {
    let registry = Registry::builtin();
    let spec = registry.get(name).unwrap();
    Fetcher::from_env()
        .ensure(spec)
        .unwrap_or_else(|e| panic!("model {name} is not available ({e}); run `hybrid fetch-models {name}`"))
}

pub fn data_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}
pub mod server;
