//! The GPU backend's quantized kernels against the CPU, for every format our models use:
//! dequantization must equal candle's, and the matrix-vector (decode) and matrix-matrix
//! (prefill) products must match the dequantized matrix times the input quantized to 8 bits
//! per 32 values (as both backends' integer kernels compute it); the logit summary
//! must hold the top logits and the whole vocabulary's normaliser and entropy. Runs on whatever adapter wgpu finds; on a machine without a GPU,
//! Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`, done by `make setup`).
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hybrid_assistant::gpu::quant::{GpuMatrix, FORMATS};
use hybrid_assistant::gpu::Gpu;
use hybrid_assistant::model::int8::quantize_block;

fn gpu() -> Gpu {
    pollster::block_on(Gpu::new())
        .expect("the GPU device opens")
        .expect("no GPU adapter: install Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`) or run on a machine with a GPU")
}

/// Deterministic values in [-2, 2] with a few large ones, as real weights have.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = (state as f32 / u32::MAX as f32) * 4.0 - 2.0;
            if i % 97 == 0 {
                v * 4.0
            } else {
                v
            }
        })
        .collect()
}

/// `x` as the products see it: each 32 values quantized to 8 bits, as the CPU does it.
fn as_8_bit(x: &[f32]) -> Vec<f32> {
    let mut q = [0i8; 32];
    x.chunks(32)
        .flat_map(|block| {
            let scale = quantize_block(block, &mut q[..block.len()]);
            q[..block.len()].iter().map(move |&l| l as f32 * scale).collect::<Vec<_>>()
        })
        .collect()
}

fn quantized(rows: usize, cols: usize, dtype: GgmlDType, seed: u32) -> QTensor {
    let t = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

#[test]
fn dequantize_equals_the_cpu_for_every_format() {
    let gpu = gpu();
    eprintln!("adapter: {} ({:?})", gpu.adapter.name, gpu.adapter.backend);
    for (i, dtype) in FORMATS.into_iter().enumerate() {
        let q = quantized(5, 512, dtype, i as u32);
        let cpu = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = GpuMatrix::upload(&gpu, "w", &q).unwrap();
        let got = pollster::block_on(m.dequantize(&gpu)).unwrap();
        assert_eq!(got.len(), cpu.len());
        for (j, (g, c)) in got.iter().zip(&cpu).enumerate() {
            assert!((g - c).abs() <= 1e-6 * c.abs().max(1.0), "{dtype:?} element {j}: GPU {g}, CPU {c}");
        }
    }
}

#[test]
fn matvec_matches_the_dequantized_product_for_every_format() {
    let gpu = gpu();
    // 768 columns: 24 chunks; 1280: 40 chunks; the K-quants' 256-value blocks need both even.
    for (i, dtype) in FORMATS.into_iter().enumerate() {
        for (rows, cols) in [(67, 768), (5, 1280), (3, 32 * 7)].into_iter().filter(|&(_, c)| c % dtype.block_size() == 0) {
            let q = quantized(rows, cols, dtype, 100 + i as u32);
            let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let x = values(cols, 7);
            let m = GpuMatrix::upload(&gpu, "w", &q).unwrap();
            let got = pollster::block_on(m.product(&gpu, &x, 1)).unwrap();
            let x = as_8_bit(&x);
            for (r, row) in w.iter().enumerate() {
                let want: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = row.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                assert!((got[r] as f64 - want).abs() <= 1e-5 * scale.max(1.0), "{dtype:?} {rows}x{cols} row {r}: GPU {}, CPU {want}", got[r]);
            }
        }
    }
}

#[test]
fn matmul_matches_the_dequantized_product_for_every_format() {
    let gpu = gpu();
    for (i, dtype) in FORMATS.into_iter().enumerate() {
        // Neither the rows nor the tokens fill the last tile.
        let (rows, cols, tokens) = (67, 768, 37);
        let q = quantized(rows, cols, dtype, 200 + i as u32);
        let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let x = values(tokens * cols, 17);
        let m = GpuMatrix::upload(&gpu, "w", &q).unwrap();
        let got = pollster::block_on(m.product(&gpu, &x, tokens)).unwrap();
        let x = as_8_bit(&x);
        assert_eq!(got.len(), tokens * rows);
        for t in 0..tokens {
            let xt = &x[t * cols..(t + 1) * cols];
            for (r, row) in w.iter().enumerate() {
                let want: f64 = row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = row.iter().zip(xt).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                let g = got[t * rows + r];
                assert!((g as f64 - want).abs() <= 1e-5 * scale.max(1.0), "{dtype:?} token {t} row {r}: GPU {g}, CPU {want}");
            }
        }
    }
}

#[test]
fn a_tall_matrix_is_computed_and_dequantized_to_its_last_row() {
    let gpu = gpu();
    // > 65535 rows: dequantization's workgroup per row continues in dispatch dimension y.
    let (rows, cols) = (70_001, 32);
    let q = quantized(rows, cols, GgmlDType::Q8_0, 9);
    let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let x = values(cols, 3);
    let m = GpuMatrix::upload(&gpu, "tall", &q).unwrap();
    let got = pollster::block_on(m.product(&gpu, &x, 1)).unwrap();
    let x = as_8_bit(&x);
    for r in [0, 1, 7, 8, 65_535, 65_536, rows - 2, rows - 1] {
        let want: f32 = w[r].iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((got[r] - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r}: GPU {}, CPU {want}", got[r]);
    }
    let all = pollster::block_on(m.dequantize(&gpu)).unwrap();
    assert_eq!(all[(rows - 1) * cols..], w[rows - 1], "the last row dequantized");
}

#[test]
fn a_matrix_the_adapter_cannot_bind_is_a_clear_error() {
    let gpu = gpu();
    let too_big = gpu.limits.max_storage_buffer_binding_size as usize + 4;
    let err = gpu.storage("huge", &vec![0u8; too_big], wgpu::BufferUsages::empty()).unwrap_err().to_string();
    assert!(err.contains("run on the CPU"), "{err}");
}

#[test]
fn a_matrix_larger_than_one_binding_is_split_by_rows() {
    let mut gpu = gpu();
    // Pretend bindings hold 340 bytes: 4 rows of one (padded) pair of 8-bit chunks, 80 bytes
    // each, so 37 rows become 10 parts.
    gpu.limits.max_storage_buffer_binding_size = 340;
    let q = quantized(37, 32, GgmlDType::Q8_0, 11);
    let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let m = GpuMatrix::upload(&gpu, "split", &q).unwrap();
    for tokens in [1, 2] {
        let x = values(tokens * 32, 5);
        let got = pollster::block_on(m.product(&gpu, &x, tokens)).unwrap();
        let x = as_8_bit(&x);
        for t in 0..tokens {
            for (r, row) in w.iter().enumerate() {
                let want: f32 = row.iter().zip(&x[t * 32..]).map(|(a, b)| a * b).sum();
                let g = got[t * 37 + r];
                assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{tokens} tokens, token {t} row {r}: GPU {g}, CPU {want}");
            }
        }
    }
    let all = pollster::block_on(m.dequantize(&gpu)).unwrap();
    assert_eq!(all, w.concat(), "dequantized across parts");
    // A gather of rows finds each row's part (the embedding lookup of the decoder).
    let ids = [0, 9, 10, 29, 36, 10];
    let rows = pollster::block_on(m.gather(&gpu, &ids)).unwrap();
    for (t, &id) in ids.iter().enumerate() {
        assert_eq!(rows[t * 32..(t + 1) * 32], w[id as usize], "row {id}");
    }
}

#[test]
fn the_logit_summary_holds_the_top_logits_and_the_whole_normaliser() {
    use hybrid_assistant::gpu::decoder::summarize;
    use hybrid_assistant::sampler::TopLogits;
    let gpu = gpu();
    let check = |what: &str, logits: &[f32]| {
        let want = TopLogits::from_logits(logits);
        let got = pollster::block_on(summarize(&gpu, logits)).unwrap();
        assert_eq!(got.ids, want.ids, "{what}: the top ids, in order");
        assert_eq!(got.logits, want.logits, "{what}: their logits");
        assert!(
            (got.log_sum_exp - want.log_sum_exp).abs() <= 1e-4 * want.log_sum_exp.abs().max(1.0),
            "{what}: log Σ exp {} vs {}",
            got.log_sum_exp,
            want.log_sum_exp
        );
        assert!((got.entropy - want.entropy).abs() <= 1e-3 * want.entropy.max(1.0), "{what}: entropy {} vs {}", got.entropy, want.entropy);
    };
    // A vocabulary of qwen's size, logits rounded to 1/64 so that many tie.
    let vocab = 151_936;
    let wide: Vec<f32> = values(vocab, 21).iter().map(|v| (v * 6.0 * 64.0).round() / 64.0).collect();
    check("qwen-sized, with ties", &wide);
    // A peaked distribution: fewer than 64 logits within 32 of the top, and only those kept.
    let mut peaked = vec![-100.0f32; 49_152];
    for (i, l) in [(7usize, 30.0f32), (40_000, 29.5), (3, 12.0), (11, -1.5)] {
        peaked[i] = l;
    }
    check("peaked", &peaked);
    // 100 tokens tied for the top: the lowest ids first, as greedy choice wants.
    let mut tied = values(50_000, 5);
    for i in (0..50_000).step_by(500) {
        tied[i] = 9.0;
    }
    check("tied", &tied);
}

/// `Y = X Wᵀ` in f64 for `tokens` rows of `x` (already as the kernels see it).
fn reference(w: &[Vec<f32>], x: &[f32], tokens: usize) -> Vec<Vec<f64>> {
    let cols = w[0].len();
    (0..tokens).map(|t| w.iter().map(|row| row.iter().zip(&x[t * cols..]).map(|(a, b)| *a as f64 * *b as f64).sum()).collect()).collect()
}

#[test]
fn stacked_matrices_write_each_output_with_its_bias_and_placement() {
    use hybrid_assistant::gpu::bytes_of;
    use hybrid_assistant::gpu::quant::{Batch, Output, Product, QuantizedInput};
    let gpu = gpu();
    let cols = 256;
    // q, k, v as in a layer: different row counts, k and v into a cache at the step's position.
    let (tq, tk, tv) = (quantized(24, cols, GgmlDType::Q4_1, 1), quantized(8, cols, GgmlDType::Q4_0, 2), quantized(8, cols, GgmlDType::Q4K, 3));
    let m = GpuMatrix::stack(&gpu, "qkv", &[&tq, &tk, &tv]).unwrap().expect("one layout: stacked");
    assert!(GpuMatrix::stack(&gpu, "mixed", &[&tq, &quantized(8, cols, GgmlDType::Q8_0, 4)]).unwrap().is_none(), "4-bit and 8-bit layouts do not stack");
    let (tokens, pos) = (3, 5);
    let x = values(tokens * cols, 9);
    let bias_q: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let bias_q = gpu.storage("bias", bytes_of(&bias_q), wgpu::BufferUsages::COPY_SRC).unwrap();
    let (yq, yk, yv) = (gpu.output("q", tokens * 24), gpu.output("k", (pos + tokens) * 8), gpu.output("v", (pos + tokens) * 8));
    let batch = Batch::new(&gpu);
    batch.write(&gpu, tokens, pos);
    let xb = gpu.storage("x", bytes_of(&x), wgpu::BufferUsages::empty()).unwrap();
    let input = QuantizedInput::new(&gpu, &xb, cols, tokens);
    let cached = Product { at_position: true, ..Default::default() };
    let outputs = [
        Output { y: &yq, product: Product { bias: Some(&bias_q), ..Default::default() } },
        Output { y: &yk, product: cached },
        Output { y: &yv, product: cached },
    ];
    let ops = m.product_ops(&gpu, &input, &outputs, &batch).unwrap();
    let mut run = vec![input.quantize()];
    run.extend(ops.iter().map(|o| o.for_tokens(tokens)));
    gpu.run(&run, tokens as u32);
    let x = as_8_bit(&x);
    let dq = |t: &QTensor| t.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let got_q = pollster::block_on(gpu.read_f32(&yq, tokens * 24)).unwrap();
    let got_k = pollster::block_on(gpu.read_f32(&yk, (pos + tokens) * 8)).unwrap();
    let got_v = pollster::block_on(gpu.read_f32(&yv, (pos + tokens) * 8)).unwrap();
    for (name, got, want, rows, at, bias) in [
        ("q", &got_q, reference(&dq(&tq), &x, tokens), 24, 0, true),
        ("k", &got_k, reference(&dq(&tk), &x, tokens), 8, pos, false),
        ("v", &got_v, reference(&dq(&tv), &x, tokens), 8, pos, false),
    ] {
        for t in 0..tokens {
            for r in 0..rows {
                let w = want[t][r] + if bias { r as f64 } else { 0.0 };
                let g = got[(at + t) * rows + r] as f64;
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{name} token {t} row {r}: GPU {g}, CPU {w}");
            }
        }
    }
    assert!(got_k[..pos * 8].iter().all(|&v| v == 0.0), "k's earlier positions untouched");
}

#[test]
fn gate_and_up_stacked_give_silu_gate_times_up() {
    use hybrid_assistant::gpu::bytes_of;
    use hybrid_assistant::gpu::quant::{Batch, Output, Product, QuantizedInput};
    let gpu = gpu();
    let (rows, cols) = (37, 256);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q6K] {
        let (tg, tu) = (quantized(rows, cols, dtype, 5), quantized(rows, cols, dtype, 6));
        let m = GpuMatrix::stack_gated(&gpu, "gate_up", &tg, &tu).unwrap().expect("same layout");
        for tokens in [1, 5] {
            let x = values(tokens * cols, 2);
            let xb = gpu.storage("x", bytes_of(&x), wgpu::BufferUsages::empty()).unwrap();
            let input = QuantizedInput::new(&gpu, &xb, cols, tokens);
            let y = gpu.output("y", tokens * rows);
            let batch = Batch::new(&gpu);
            batch.write(&gpu, tokens, 0);
            let ops = m.product_ops(&gpu, &input, &[Output { y: &y, product: Product::default() }], &batch).unwrap();
            let mut run = vec![input.quantize()];
            run.extend(ops.iter().map(|o| o.for_tokens(tokens)));
            gpu.run(&run, tokens as u32);
            let got = pollster::block_on(gpu.read_f32(&y, tokens * rows)).unwrap();
            let x = as_8_bit(&x);
            let dq = |t: &QTensor| t.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let (g, u) = (reference(&dq(&tg), &x, tokens), reference(&dq(&tu), &x, tokens));
            for t in 0..tokens {
                for r in 0..rows {
                    let want = g[t][r] / (1.0 + (-g[t][r]).exp()) * u[t][r];
                    let got = got[t * rows + r] as f64;
                    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{dtype:?} {tokens} tokens, token {t} row {r}: GPU {got}, CPU {want}");
                }
            }
        }
    }
}

/// Causal attention in f64: `tokens` query rows at positions `pos..`, each over positions
/// 0..=pos + t of the caches, query head h reading KV head h / (heads / kv_heads).
fn attention_reference(q: &[f32], k: &[f32], v: &[f32], (heads, kv_heads, hd): (usize, usize, usize), pos: usize) -> Vec<f64> {
    let tokens = q.len() / (heads * hd);
    let kv_row = kv_heads * hd;
    let mut out = vec![0.0; q.len()];
    for t in 0..tokens {
        for h in 0..heads {
            let (qh, g) = (&q[(t * heads + h) * hd..][..hd], h / (heads / kv_heads));
            let scores: Vec<f64> = (0..=pos + t)
                .map(|j| qh.iter().zip(&k[j * kv_row + g * hd..][..hd]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let top = scores.iter().fold(f64::MIN, |a, &b| a.max(b));
            let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for (j, w) in weights.iter().enumerate() {
                for d in 0..hd {
                    out[(t * heads + h) * hd + d] += w / sum * v[j * kv_row + g * hd + d] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_the_cpu_across_splits_and_shared_kv_heads() {
    use hybrid_assistant::gpu::attention::attend;
    let gpu = gpu();
    // qwen2.5-coder-0.5b's shape (7 query heads per KV head) over 3000 positions, where every
    // split is longer than its shortest; smollm2's (3 per KV head) for a prefill from position
    // 0 and one across the first split boundaries; a head of 128 values.
    for (shape, pos, tokens) in [((14, 2, 64), 2990, 10), ((9, 3, 64), 0, 40), ((9, 3, 64), 100, 200), ((4, 4, 128), 300, 3)] {
        let (heads, kv_heads, hd) = shape;
        let q = values(tokens * heads * hd, 31);
        let (k, v) = (values((pos + tokens) * kv_heads * hd, 32), values((pos + tokens) * kv_heads * hd, 33));
        let got = pollster::block_on(attend(&gpu, &q, &k, &v, shape, pos)).unwrap();
        let want = attention_reference(&q, &k, &v, shape, pos);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (t, h) = (i / (heads * hd), i / hd % heads);
            assert!((*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "{shape:?} from {pos}: token {t} head {h} value {}: GPU {g}, CPU {w}", i % hd);
        }
    }
}
