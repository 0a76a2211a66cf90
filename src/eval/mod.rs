//! Native-only evaluation and benchmarks.
pub mod bench;
pub mod bench_serve;
pub mod humaneval;
pub mod sandbox;
pub mod plot;

use crate::fetch::Fetcher;
use crate::registry::Registry;
use crate::Result;
use std::path::{Path, PathBuf};

/// A registry model name (fetched and verified on first use) or a path to a .gguf file.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf> {
    let path = Path::new(name_or_path);
    if name_or_path.ends_with(".gguf") && path.is_file() {
        return Ok(path.to_path_buf());
    }
    let registry = Registry::builtin();
    Fetcher::from_env().ensure(registry.get(name_or_path)?)
}

/// Two decimals, for printed figures.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
