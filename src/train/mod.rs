//! Native training of the reward head: collect labelled small-model trajectories
//! ([`collect`]), fit the head on them ([`fit`]), and the ranking metrics both the training
//! report and the evaluation print ([`metrics`]).
pub mod collect;
pub mod fit;
pub mod metrics;

use crate::{Error, Result};
use std::path::Path;

/// One prompt of a prompt set (`assets/prompts/*.jsonl`: one `{"id", "prompt", …}` per line).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PromptEntry {
    pub id: String,
    pub prompt: String,
}

pub fn read_prompts(path: &Path) -> Result<Vec<PromptEntry>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File { path: path.to_path_buf(), message: format!("cannot read the prompt set: {e}") })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| Error::File {
                path: path.to_path_buf(),
                message: format!("line {}: {e}; each line must be a JSON object with \"id\" and \"prompt\"", i + 1),
            })
        })
        .collect()
}
