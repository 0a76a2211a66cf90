//! Native-only evaluation and benchmarks.
pub mod bench;
pub mod bench_browser;
pub mod bench_serve;
pub mod humaneval;
pub mod humaneval_run;
pub mod plot;
pub mod sandbox;

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

/// A `hybrid serve` this process started on a free loopback port; stopped when dropped.
pub struct OwnServer(std::process::Child);

impl OwnServer {
    /// Starts `hybrid serve --cloud-model MODEL EXTRA…` (without its access log) and returns
    /// it with its base URL.
    pub fn start(model: &str, extra: &[String]) -> anyhow::Result<(OwnServer, String)> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--addr", "127.0.0.1:0", "--no-access-log", "--cloud-model", model])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let server = OwnServer(child);
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if let Some(rest) = line?.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                // Keep draining, so the server never blocks on a full stdout pipe.
                std::thread::spawn(move || lines.map_while(std::io::Result::ok).for_each(drop));
                return Ok((server, url));
            }
        }
        anyhow::bail!("hybrid serve exited before listening; run it by hand to see why")
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
