//! Decode-step time with an f32 and an f16 KV cache, the cloud's kernels (`LoadOptions::cloud`):
//! a random prompt of CONTEXT tokens prefilled once per cache type, then STEPS decode steps
//! taken alternately on each, so a slow minute of the machine slows both. Prints the median
//! step of each and their ratio.
//!   cargo run --example kv_dtype_lab -- MODEL CONTEXT STEPS
use hybrid_assistant::model::attention::KvDtype;
use hybrid_assistant::model::decoder::{KvCache, LoadOptions, Sequence};
use hybrid_assistant::model::Model;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, context, steps] = &args[..] else { panic!("MODEL CONTEXT STEPS") };
    let (context, steps): (usize, usize) = (context.parse().unwrap(), steps.parse().unwrap());
    let path = hybrid_assistant::eval::resolve_model(model).unwrap();
    let load = |kv_dtype| Model::load_with(&path, LoadOptions { kv_dtype, ..LoadOptions::cloud() }).unwrap();
    let models = [load(KvDtype::F32), load(KvDtype::F16)];
    let prompt: Vec<u32> = (0..context as u32).map(|i| 100 + i.wrapping_mul(2654435761) % 20_000).collect();
    let mut caches = [KvCache::default(), KvCache::default()];
    for (m, cache) in models.iter().zip(&mut caches) {
        for chunk in prompt.chunks(512) {
            m.decoder.forward_tails(&mut [Sequence { cache, tokens: chunk }], &[1]).unwrap();
        }
    }
    let mut times = [Vec::new(), Vec::new()];
    for step in 0..steps {
        for (i, (m, cache)) in models.iter().zip(&mut caches).enumerate() {
            let t = Instant::now();
            m.decoder.forward_tails(&mut [Sequence { cache, tokens: &[100 + step as u32] }], &[1]).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f32_ms, f16_ms) = (median(&mut times[0]), median(&mut times[1]));
    println!(
        "{model}, context {context}: decode step f32 {f32_ms:.1} ms, f16 {f16_ms:.1} ms: f16 / f32 = {:.3} (KV {} MiB against {} MiB)",
        f16_ms / f32_ms,
        caches[1].bytes() >> 20,
        caches[0].bytes() >> 20
    );
}
