//! `hybrid reward collect` and `hybrid reward train` end to end on smollm2-135m (both sides,
//! short answers): shards are written, a rerun resumes instead of redoing them, other
//! settings are refused, and training writes a head that loads and a report with the head
//! next to the max-prob and entropy gates.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn hybrid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybrid")).args(args).output().unwrap()
}

fn collect(prompts: &Path, out: &Path, max_tokens: &str, extra: &[&str]) -> Output {
    let mut args = vec!["reward", "collect", "--slm", "smollm2-135m", "--cloud-model", "smollm2-135m", "--max-tokens", max_tokens, "--shard-size", "2"];
    let (p, o) = (prompts.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--prompts", p, "--out", o]);
    args.extend_from_slice(extra);
    hybrid(&args)
}

#[test]
fn collect_resumes_and_train_reports_the_head_next_to_the_simple_gates() {
    common::model_path("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "prompt": format!("Write a short Python snippet number {i} that prints a greeting.")}).to_string())
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let data = dir.path().join("data");

    let first = collect(&prompts, &data, "12", &["--limit", "4"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let shard0 = data.join("shard-00000.safetensors");
    let stamp = std::fs::metadata(&shard0).unwrap().modified().unwrap();
    assert!(data.join("shard-00001.safetensors").exists() && !data.join("shard-00002.safetensors").exists());

    // Without --limit the rest is collected; finished shards are not redone.
    let rest = collect(&prompts, &data, "12", &[]);
    assert!(rest.status.success(), "{}", String::from_utf8_lossy(&rest.stderr));
    assert_eq!(std::fs::metadata(&shard0).unwrap().modified().unwrap(), stamp);
    assert!(data.join("shard-00003.safetensors").exists());
    let shard = hybrid_assistant::train::collect::Shard::load(&shard0).unwrap();
    assert!(shard.len() > 2 && shard.len() <= 2 * 12);
    // One model on both sides, and attention is batch-invariant: the teacher-forced cloud
    // agrees with every proposal.
    assert!(shard.agree.iter().all(|&a| a == 1), "{:?}", shard.agree);
    assert_eq!(shard.hidden.len(), shard.len() * 576);

    // Other settings on the same directory are refused with what to do.
    let other = collect(&prompts, &data, "20", &[]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("use another --out"), "{}", String::from_utf8_lossy(&other.stderr));

    // One class only (every label agrees): training still runs and reports; ROC-AUC is undefined.
    let head = dir.path().join("head.safetensors");
    let train = hybrid(&["reward", "train", "--data", data.to_str().unwrap(), "--out", head.to_str().unwrap(), "--epochs", "2", "--val-fraction", "0.5", "--json"]);
    let stderr = String::from_utf8_lossy(&train.stderr);
    assert!(train.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&train.stdout).unwrap();
    let gates: Vec<&str> = report["held_out"]["gates"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(gates, ["reward head", "max-prob", "entropy"]);
    assert!(report["train_positions"].as_u64().unwrap() > 0 && report["held_out"]["positions"].as_u64().unwrap() > 0);
    let loaded = hybrid_assistant::reward::RewardHead::from_safetensors(&std::fs::read(&head).unwrap()).unwrap();
    assert_eq!(loaded.hidden_size(), 576);
    assert!(head.with_extension("json").exists());

    // The same comparison on a whole collection the head never saw.
    let scored = hybrid(&["reward", "report", "--data", data.to_str().unwrap(), "--head", head.to_str().unwrap(), "--json"]);
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    let all: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert_eq!(all["gates"].as_array().unwrap().len(), 3);
    assert_eq!(all["prompts"], 8);

    // HumanEval is collected only to score heads on: training on it is refused.
    let eval_data = dir.path().join("humaneval");
    let he = collect(Path::new("humaneval"), &eval_data, "8", &["--limit", "2"]);
    assert!(he.status.success(), "{}", String::from_utf8_lossy(&he.stderr));
    let refused = hybrid(&["reward", "train", "--data", eval_data.to_str().unwrap(), "--out", dir.path().join("x.safetensors").to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("evaluation set"), "{}", String::from_utf8_lossy(&refused.stderr));
    let scored = hybrid(&["reward", "report", "--data", eval_data.to_str().unwrap(), "--head", head.to_str().unwrap(), "--json"]);
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
}
