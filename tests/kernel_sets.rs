//! The CPU kernel set chosen at run time: `HYBRID_KERNELS` forces one of the sets this CPU
//! runs, refuses the others with what to do, and every set gives the same answer.
#![cfg(not(target_arch = "wasm32"))]
mod common;

use hybrid_assistant::model::cpu::KernelSet;
use std::process::{Command, Output};

fn generate(kernels: &str, model: &str, prompt: &str, tokens: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybrid"))
        .args(["generate", "--model", common::model_path(model).to_str().unwrap(), "--prompt", prompt, "--max-tokens", &tokens.to_string()])
        .env("HYBRID_KERNELS", kernels)
        .output()
        .unwrap()
}

#[test]
fn a_set_the_cpu_lacks_or_does_not_know_is_refused_with_what_it_runs() {
    let lacking = if cfg!(target_arch = "aarch64") { "avx2" } else { "neon" };
    let runs: Vec<&str> = KernelSet::available().iter().map(|set| set.name()).collect();
    for wanted in [lacking, "sse9"] {
        let out = generate(wanted, "smollm2-135m", "Hello", 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "HYBRID_KERNELS={wanted} ran: {stderr}");
        assert!(stderr.contains(&format!("HYBRID_KERNELS={wanted}")) && stderr.contains(&runs.join(", ")), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing generated with HYBRID_KERNELS={wanted}");
    }
}

/// Each set's kernels round differently (the SIMD attention sums in another order than the
/// plain loops), but a code prompt's greedy answer, far from near-ties, is the same text.
#[test]
fn every_set_this_cpu_runs_gives_the_same_greedy_answer() {
    let prompt = "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"\n";
    let answers: Vec<(KernelSet, String)> = KernelSet::available()
        .into_iter()
        .map(|set| {
            let out = generate(set.name(), "qwen2.5-coder-0.5b", prompt, 24);
            assert!(out.status.success(), "{set:?}: {}", String::from_utf8_lossy(&out.stderr));
            (set, String::from_utf8(out.stdout).unwrap())
        })
        .collect();
    assert!(answers[0].1.len() > 20, "an answer: {:?}", answers[0].1);
    for (set, answer) in &answers[1..] {
        assert_eq!(answer, &answers[0].1, "{set:?} against {:?}", answers[0].0);
    }
}
