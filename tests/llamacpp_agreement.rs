//! Greedy output against llama.cpp's on the same GGUF (ids recorded by
//! tests/llamacpp/greedy.mjs into tests/data/greedy/). Near-ties can flip between kernels,
//! after which free-running outputs part ways for good, so llama.cpp's ids are teacher-forced
//! and every position is compared; the free-running common prefix is reported too.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use hybrid_assistant::model::Model;
use hybrid_assistant::sampler::argmax;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
}

/// A token llama.cpp chose that is not our argmax must be a near-tie for us: within this
/// share of our logit range below our best logit (kernels differ in the last bits and in how
/// they quantize activations).
const NEAR_TIE: f32 = 1e-2;

/// Teacher-forces llama.cpp's greedy ids. Returns, per prompt, at how many of the positions
/// our greedy choice equals llama.cpp's, and asserts that every other position is a near-tie.
fn agreement(name: &str) -> Vec<usize> {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(common::data_path(&format!("greedy/{name}.json"))).unwrap()).unwrap();
    let mut model = Model::load(&common::model_path(name)).unwrap();
    cases
        .iter()
        .map(|case| {
            assert_eq!(model.tokenizer.encode(&case.prompt).unwrap(), case.prompt_ids, "{name}: prompt ids differ from llama.cpp's");
            model.decoder.cache_mut().clear();
            let mut logits = model.decoder.forward(&case.prompt_ids).unwrap().logits;
            let (mut prefix, mut equal, mut worst_gap) = (None, 0, 0.0f32);
            // Like the recording, run through end-of-generation tokens.
            for (i, &theirs) in case.ids.iter().enumerate() {
                let ours = argmax(&logits);
                if ours == theirs {
                    equal += 1;
                } else {
                    prefix.get_or_insert(i);
                    let (max, min) = logits.iter().fold((f32::MIN, f32::MAX), |(a, b), &x| (a.max(x), b.min(x)));
                    let gap = (logits[ours as usize] - logits[theirs as usize]) / (max - min);
                    worst_gap = worst_gap.max(gap);
                    assert!(gap < NEAR_TIE, "{name}: at step {i} of {:?} llama.cpp chose {theirs}, {gap} of the logit range below our {ours}", case.prompt);
                }
                logits = model.decoder.forward(&[theirs]).unwrap().logits;
            }
            eprintln!(
                "{name}: first {prefix}/{n} greedy ids equal llama.cpp's, {equal}/{n} positions agree teacher-forced (worst near-tie {worst_gap:.1e}) for {:?}",
                case.prompt,
                prefix = prefix.unwrap_or(case.ids.len()),
                n = case.ids.len()
            );
            equal
        })
        .collect()
}

/// Out of 32 positions per prompt, at least 30 must agree exactly (measured: 30-32 on every
/// prompt and model); the rest must be near-ties (checked in `agreement`).
fn check(name: &str) {
    let got = agreement(name);
    assert!(got.iter().all(|&g| g >= 30), "{name}: positions agreeing per prompt {got:?}, expected at least 30 of 32");
}

#[test]
fn smollm2_greedy_agrees_with_llama_cpp() {
    check("smollm2-135m");
}

#[test]
fn qwen2_0_5b_greedy_agrees_with_llama_cpp() {
    check("qwen2.5-coder-0.5b");
}

#[test]
#[ignore = "1.1 GB model; run with `make test-slow`"]
fn qwen2_1_5b_greedy_agrees_with_llama_cpp() {
    check("qwen2.5-coder-1.5b");
}
