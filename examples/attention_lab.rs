//! Times the attention kernels (`src/gpu/attention.wgsl`) on random data on the default
//! adapter: the best of 9 profiled runs of each dispatch.
//!   cargo run --example attention_lab -- HEADS KV_HEADS HEAD_DIM POS TOKENS
use hybrid_assistant::gpu::attention::Attention;
use hybrid_assistant::gpu::{bytes_of, Gpu};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let [heads, kv_heads, hd, pos, tokens] = args[..] else { panic!("HEADS KV_HEADS HEAD_DIM POS TOKENS") };
    let gpu = pollster::block_on(Gpu::new()).unwrap().unwrap();
    let random = |n: usize, seed: u32| -> Vec<f32> {
        (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 8) as f32 / (1 << 24) as f32 - 0.5).collect()
    };
    let storage = |v: &[f32]| gpu.storage("x", bytes_of(v), wgpu::BufferUsages::empty()).unwrap();
    let kv_row = kv_heads * hd;
    let (q, k, v) = (storage(&random(tokens * heads * hd, 1)), storage(&random((pos + tokens) * kv_row, 2)), storage(&random((pos + tokens) * kv_row, 3)));
    let out = gpu.output("out", tokens * heads * hd);
    // Params (params.wgsl): n, heads, kv_heads, pos, eps, kv_row, offset, rope_layout.
    let params = gpu.uniform("params", bytes_of(&[hd as u32, heads as u32, kv_heads as u32, pos as u32, 0, kv_row as u32, 0, 0]));
    let attention = Attention::new(&gpu, heads, kv_heads, hd, tokens).unwrap();
    let ops = attention.ops(&gpu, &q, &k, &v, &out, &params);
    let mut best = [f64::MAX; 2];
    for _ in 0..9 {
        let times = pollster::block_on(gpu.profile(&[&ops[0], &ops[1]], tokens as u32)).unwrap();
        for (b, t) in best.iter_mut().zip(times) {
            *b = b.min(t);
        }
    }
    println!("{heads}/{kv_heads} heads of {hd}, {tokens} tokens at {pos}: attention {:.3} ms, combine {:.3} ms", best[0] * 1e3, best[1] * 1e3);
}
