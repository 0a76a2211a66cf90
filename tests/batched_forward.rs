//! `Decoder::forward_batch` (what the server's continuous batching runs) against one
//! sequence at a time: the same logits and hidden states for each sequence, whatever else
//! shares the pass, and caches left untouched by a failed pass. With the kernels the server
//! loads (`Kernels::RowInvariant`).
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use hybrid_assistant::model::cpu::KernelSet;
use hybrid_assistant::model::decoder::{Decoder, KvCache, LoadOptions, Sequence};
use hybrid_assistant::model::Model;
use hybrid_assistant::sampler::argmax;

fn load(name: &str) -> Model {
    Model::load_with(&common::model_path(name), LoadOptions::cloud()).unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let spread = b.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) - b.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / spread
}

/// Decodes `steps` greedy tokens for every prompt in one batch per step (prompts prefilled
/// together in the first pass), and returns each sequence's ids and last logits.
fn batched(decoder: &Decoder, prompts: &[Vec<u32>], steps: usize) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::default()).collect();
    let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<(Vec<u32>, Vec<f32>)> = prompts.iter().map(|_| (vec![], vec![])).collect();
    for _ in 0..steps {
        let mut batch: Vec<Sequence> = caches.iter_mut().zip(&inputs).map(|(cache, tokens)| Sequence { cache, tokens }).collect();
        let steps = decoder.forward_batch(&mut batch).unwrap();
        for ((step, input), o) in steps.into_iter().zip(inputs.iter_mut()).zip(out.iter_mut()) {
            let id = argmax(&step.logits);
            o.0.push(id);
            o.1 = step.logits;
            *input = vec![id];
        }
    }
    out
}

fn check_model(name: &str) {
    let mut model = load(name);
    let texts = ["def fibonacci(n):", "The capital of France is", "1, 2, 3, 4,", "<|im_start|>user\nHi<|im_end|>\n"];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenizer.encode(t).unwrap()).collect();
    let steps = 8;
    let together = batched(&model.decoder, &prompts, steps);
    for (prompt, (ids, logits)) in prompts.iter().zip(&together) {
        let alone = batched(&model.decoder, std::slice::from_ref(prompt), steps);
        assert_eq!(ids, &alone[0].0, "{name}: greedy ids differ when batched");
        let d = max_rel_diff(logits, &alone[0].1);
        assert!(d < 2e-2, "{name}: batched logits differ by {d} of the range");
    }
    // The convenience `forward` on the decoder's own cache is the same computation.
    model.decoder.cache_mut().clear();
    let step = model.decoder.forward(&prompts[0]).unwrap();
    assert_eq!(argmax(&step.logits), together[0].0[0]);
    assert_eq!(step.hidden.len(), model.decoder.config().n_embd);
}

/// Row invariance is a property of each kernel set's kernels: this file's tests run again
/// under every other set this CPU runs (`HYBRID_KERNELS`), each set in a child process.
#[test]
fn every_test_here_passes_under_every_kernel_set_this_cpu_runs() {
    if std::env::var_os("HYBRID_KERNELS").is_some() {
        return; // a child, or a run that chose its set
    }
    for set in KernelSet::available().into_iter().filter(|&set| set != KernelSet::active()) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--skip", "every_test_here_passes_under_every_kernel_set"])
            .env("HYBRID_KERNELS", set.name())
            .env("MISTRALRS_FORCE_AVX2", "1")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "under HYBRID_KERNELS={}: {report}{}", set.name(), String::from_utf8_lossy(&out.stderr));
        assert!(report.contains("test result: ok. 6 passed"), "every test ran under {}: {report}", set.name());
    }
}

#[test]
fn batch_equals_one_at_a_time_smollm2() {
    check_model("smollm2-135m");
}

#[test]
fn batch_equals_one_at_a_time_qwen_05b() {
    check_model("qwen2.5-coder-0.5b");
}

#[test]
fn a_bad_sequence_fails_the_pass_and_leaves_every_cache_as_it_was() {
    let model = load("smollm2-135m");
    let vocab = model.decoder.vocab_size() as u32;
    let (mut a, mut b) = (KvCache::default(), KvCache::default());
    model.decoder.forward_batch(&mut [Sequence { cache: &mut a, tokens: &[1, 2, 3] }]).unwrap();
    let err =
        model.decoder.forward_batch(&mut [Sequence { cache: &mut a, tokens: &[4] }, Sequence { cache: &mut b, tokens: &[vocab] }]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert_eq!((a.len(), b.len()), (3, 0));
    let err = model.decoder.forward_batch(&mut [Sequence { cache: &mut b, tokens: &[] }]).unwrap_err().to_string();
    assert!(err.contains("at least one token"), "{err}");
}

/// A pass that wants only each sequence's last logits computes just those rows in the last
/// layer (after every row's keys and values). The logits, hidden states and the cache the next
/// pass reads must be exactly those of the pass that computes every row.
#[test]
fn last_layer_on_the_last_rows_only_changes_no_bit() {
    let mut model = load("smollm2-135m");
    let prompts: Vec<Vec<u32>> = ["def fibonacci(n):\n    if n < 2:", "1, 2, 3, 4,"].iter().map(|t| model.tokenizer.encode(t).unwrap()).collect();
    for prompt in &prompts {
        model.decoder.cache_mut().clear();
        let every = model.decoder.forward_all(prompt).unwrap().pop().unwrap();
        let next = model.decoder.forward(&[argmax(&every.logits)]).unwrap();
        model.decoder.cache_mut().clear();
        let last = model.decoder.forward(prompt).unwrap();
        assert_eq!(last.logits, every.logits, "last-row logits");
        assert_eq!(last.hidden, every.hidden, "last-row hidden state");
        assert_eq!(model.decoder.forward(&[argmax(&last.logits)]).unwrap().logits, next.logits, "the step after it");
    }
    // Two sequences in one pass: each gets its own last row.
    let (mut a, mut b) = (KvCache::default(), KvCache::default());
    let both = model.decoder.forward_batch(&mut [Sequence { cache: &mut a, tokens: &prompts[0] }, Sequence { cache: &mut b, tokens: &prompts[1] }]).unwrap();
    for (prompt, step) in prompts.iter().zip(&both) {
        model.decoder.cache_mut().clear();
        assert_eq!(model.decoder.forward_all(prompt).unwrap().pop().unwrap().logits, step.logits, "batched last rows");
    }
}

/// `forward_tails` (what prompt scoring runs): each sequence's last rows, trimmed in the last
/// layer and batched with others, are exactly `forward_all`'s rows; bad tail counts are refused.
#[test]
fn tails_of_a_batch_equal_forward_all_bit_for_bit() {
    let mut model = load("smollm2-135m");
    let prompts: Vec<Vec<u32>> = ["def fibonacci(n):\n    if n < 2:", "1, 2, 3, 4,"].iter().map(|t| model.tokenizer.encode(t).unwrap()).collect();
    let every: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| {
            model.decoder.cache_mut().clear();
            model.decoder.forward_all(p).unwrap().into_iter().map(|s| s.logits).collect()
        })
        .collect();
    let tails = [3, 1];
    let (mut a, mut b) = (KvCache::default(), KvCache::default());
    let steps =
        model.decoder.forward_tails(&mut [Sequence { cache: &mut a, tokens: &prompts[0] }, Sequence { cache: &mut b, tokens: &prompts[1] }], &tails).unwrap();
    for ((got, want), &k) in steps.iter().zip(&every).zip(&tails) {
        assert_eq!(got.len(), k);
        for (g, w) in got.iter().zip(&want[want.len() - k..]) {
            assert_eq!(&g.logits, w);
        }
    }
    assert_eq!((a.len(), b.len()), (prompts[0].len(), prompts[1].len()));
    // A pass split in two, with a tail in each part, as a prompt fed in chunks is.
    let mut c = KvCache::default();
    let (head, rest) = prompts[0].split_at(4);
    let first = model.decoder.forward_tails(&mut [Sequence { cache: &mut c, tokens: head }], &[2]).unwrap();
    let second = model.decoder.forward_tails(&mut [Sequence { cache: &mut c, tokens: rest }], &[rest.len()]).unwrap();
    let split: Vec<&Vec<f32>> = first[0].iter().chain(&second[0]).map(|s| &s.logits).collect();
    assert_eq!(split, every[0][2..].iter().collect::<Vec<_>>());
    let mut d = KvCache::default();
    for bad in [0, 3] {
        let err = model.decoder.forward_tails(&mut [Sequence { cache: &mut d, tokens: &[1, 2] }], &[bad]).unwrap_err();
        assert!(err.to_string().contains("ask for 1 to 2"), "{err}");
    }
}

/// An f16 KV cache (`hybrid serve --kv-dtype f16`): each row is rounded once, when written,
/// so a prompt computed whole, in two passes (a cached prefix, then the rest) and batched
/// with another gives the same bits; it takes half the memory of f32 and leaves the greedy
/// answer and the logits as they are within rounding.
#[test]
fn an_f16_cache_is_row_invariant_half_the_size_and_close_to_f32() {
    use hybrid_assistant::model::attention::KvDtype;
    let path = common::model_path("smollm2-135m");
    let mut half = Model::load_with(&path, LoadOptions { kv_dtype: KvDtype::F16, ..LoadOptions::cloud() }).unwrap();
    let full = Model::load_with(&path, LoadOptions { kv_dtype: KvDtype::F32, ..LoadOptions::cloud() }).unwrap();
    let prompts: Vec<Vec<u32>> =
        ["def fibonacci(n):\n    if n < 2:", "1, 2, 3, 4,", "The capital of France is"].iter().map(|t| half.tokenizer.encode(t).unwrap()).collect();
    for prompt in &prompts {
        half.decoder.cache_mut().clear();
        let whole: Vec<Vec<f32>> = half.decoder.forward_all(prompt).unwrap().into_iter().map(|s| s.logits).collect();
        let mut cache = KvCache::default();
        let (head, rest) = prompt.split_at(prompt.len() / 2);
        half.decoder.forward_tails(&mut [Sequence { cache: &mut cache, tokens: head }], &[1]).unwrap();
        let mut other = KvCache::default();
        let steps = half
            .decoder
            .forward_tails(&mut [Sequence { cache: &mut cache, tokens: rest }, Sequence { cache: &mut other, tokens: &prompts[1] }], &[rest.len(), 1])
            .unwrap();
        let split: Vec<&Vec<f32>> = steps[0].iter().map(|s| &s.logits).collect();
        assert_eq!(split, whole[head.len()..].iter().collect::<Vec<_>>(), "a cached f16 prefix changes bits");
        let mut f32_cache = KvCache::default();
        for part in [head, rest] {
            full.decoder.forward_tails(&mut [Sequence { cache: &mut f32_cache, tokens: part }], &[1]).unwrap();
        }
        assert_eq!(cache.bytes() * 2, f32_cache.bytes(), "f16 is half of f32");
    }
    // f32's greedy answers, teacher-forced through the f16 cache: each step picks the same
    // token unless f32's own is a near-tie there (within 2.5% of the range, the size of f16's
    // effect on the logits), and the logits stay
    // within f16's rounding of keys and values (about 2.4% of the range after 8 steps on
    // smollm2-135m; llama.cpp's default cache type).
    for prompt in &prompts {
        let (ids, _) = &batched(&full.decoder, std::slice::from_ref(prompt), 8)[0];
        let (with_f16, with_f32) = (forced(&half.decoder, prompt, ids), forced(&full.decoder, prompt, ids));
        for (step, ((h, f), &id)) in with_f16.iter().zip(&with_f32).zip(ids).enumerate() {
            let d = max_rel_diff(h, f);
            assert!(d < 5e-2, "f16 logits differ from f32 by {d} of the range at step {step}");
            let spread = h.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) - h.iter().fold(f32::INFINITY, |m, &x| m.min(x));
            let best = h[argmax(h) as usize];
            assert!(
                argmax(h) == id || best - h[id as usize] < 2.5e-2 * spread,
                "f16 changed greedy token {step} ({id}) by more than a near-tie: {} of the range",
                (best - h[id as usize]) / spread
            );
        }
    }
}

/// Each step's logits with `ids` fed back as the answer (the first from the prompt's pass).
fn forced(decoder: &Decoder, prompt: &[u32], ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::default();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for &id in ids {
        let mut step = decoder.forward_batch(&mut [Sequence { cache: &mut cache, tokens: &input }]).unwrap();
        out.push(step.pop().unwrap().logits);
        input = vec![id];
    }
    out
}
