//! The reward head's training prompts (assets/prompts/train.jsonl): well-formed, and
//! disjoint from HumanEval, which is for evaluation only (DESIGN.md).
#![cfg(not(target_arch = "wasm32"))]

use hybrid_assistant::eval::humaneval::load_problems;
use std::collections::{HashMap, HashSet};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/prompts/train.jsonl");
/// Word windows this long shared with a HumanEval prompt count as overlap.
const WINDOW: usize = 8;

/// (id, prompt) per line; panics naming the line if one is malformed.
fn train_prompts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(PATH).unwrap_or_else(|e| panic!("{PATH}: {e}"));
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{PATH}:{}", i + 1);
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: not JSON ({e})"));
        let id = match &value["id"] {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => panic!("{at}: \"id\" must be a non-empty string or a number, got {other}"),
        };
        let prompt = value["prompt"].as_str().unwrap_or_else(|| panic!("{at}: no \"prompt\" string"));
        assert!(!prompt.trim().is_empty(), "{at}: empty prompt");
        prompts.push((id, prompt.to_string()));
    }
    prompts
}

/// Identifier-like words: runs of letters, digits and `_`.
fn words(text: &str) -> HashSet<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect()
}

/// Lower-cased whitespace-separated words, joined by single spaces, `WINDOW` at a time.
fn windows(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    words.windows(WINDOW).map(|w| w.join(" ")).collect()
}

#[test]
fn train_prompts_are_well_formed() {
    let prompts = train_prompts();
    assert!(prompts.len() >= 400, "only {} prompts in {PATH}; need at least 400", prompts.len());
    let mut seen = HashMap::new();
    for (line, (id, _)) in prompts.iter().enumerate() {
        if let Some(first) = seen.insert(id.clone(), line + 1) {
            panic!("{PATH}: id {id:?} on lines {first} and {}", line + 1);
        }
    }
}

#[test]
fn train_prompts_do_not_name_humaneval_functions() {
    let problems = load_problems().unwrap();
    let mut hits = Vec::new();
    for (id, prompt) in train_prompts() {
        let found = words(&prompt);
        for p in problems.iter().filter(|p| found.contains(p.entry_point.as_str())) {
            hits.push(format!("{id}: `{}` ({})", p.entry_point, p.task_id));
        }
    }
    assert!(hits.is_empty(), "{} training prompts name a HumanEval entry point:\n{}", hits.len(), hits.join("\n"));
}

#[test]
fn train_prompts_share_no_8_word_window_with_humaneval() {
    let problems = load_problems().unwrap();
    let mut owner: HashMap<String, &str> = HashMap::new();
    for p in &problems {
        for w in windows(&p.prompt) {
            owner.entry(w).or_insert(&p.task_id);
        }
    }
    let mut hits = Vec::new();
    for (id, prompt) in train_prompts() {
        for w in windows(&prompt) {
            if let Some(task) = owner.get(&w) {
                hits.push(format!("{id}: \"{w}\" ({task})"));
            }
        }
    }
    assert!(hits.is_empty(), "{} {WINDOW}-word windows shared with HumanEval:\n{}", hits.len(), hits.join("\n"));
}
