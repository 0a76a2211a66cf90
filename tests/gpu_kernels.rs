//! The GPU backend's quantized kernels against the CPU, for every format our models use:
//! dequantization must equal candle's, and a matrix-vector product must match the dequantized
//! matrix times the vector. Runs on whatever adapter wgpu finds; on a machine without a GPU,
//! Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`, done by `make setup`).
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hybrid_assistant::gpu::quant::{GpuMatrix, FORMATS};
use hybrid_assistant::gpu::Gpu;

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
            if i % 97 == 0 { v * 4.0 } else { v }
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
    for (i, dtype) in FORMATS.into_iter().enumerate() {
        let (rows, cols) = (67, 768);
        let q = quantized(rows, cols, dtype, 100 + i as u32);
        let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let x = values(cols, 7);
        let m = GpuMatrix::upload(&gpu, "w", &q).unwrap();
        let got = pollster::block_on(m.matvec(&gpu, &x)).unwrap();
        for (r, row) in w.iter().enumerate() {
            let want: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = row.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            assert!((got[r] as f64 - want).abs() <= 1e-5 * scale.max(1.0), "{dtype:?} row {r}: GPU {}, CPU {want}", got[r]);
        }
    }
}

#[test]
fn matvec_covers_more_rows_than_one_dispatch_dimension_holds() {
    let gpu = gpu();
    let (rows, cols) = (70_000, 32); // > 65535 workgroups: rows continue in the second dimension
    let q = quantized(rows, cols, GgmlDType::Q8_0, 9);
    let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let x = values(cols, 3);
    let got = pollster::block_on(GpuMatrix::upload(&gpu, "tall", &q).unwrap().matvec(&gpu, &x)).unwrap();
    for r in [0, 1, 65534, 65535, 65536, rows - 1] {
        let want: f32 = w[r].iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((got[r] - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r}: GPU {}, CPU {want}", got[r]);
    }
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
    // Pretend bindings hold 10 rows of 34-byte Q8_0 blocks: 37 rows become 4 parts.
    gpu.limits.max_storage_buffer_binding_size = 10 * 34;
    let q = quantized(37, 32, GgmlDType::Q8_0, 11);
    let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let m = GpuMatrix::upload(&gpu, "split", &q).unwrap();
    let x = values(32, 5);
    let got = pollster::block_on(m.matvec(&gpu, &x)).unwrap();
    for (r, row) in w.iter().enumerate() {
        let want: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((got[r] - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r}: GPU {}, CPU {want}", got[r]);
    }
    let all = pollster::block_on(m.dequantize(&gpu)).unwrap();
    assert_eq!(all, w.concat(), "dequantized across parts");
    // A one-row lookup finds its part (the embedding lookup of the decoder).
    let out = gpu.output("row", 32);
    let ops = m.rows_ops(&gpu, Some(1), &out);
    for row in [0, 9, 10, 29, 36] {
        gpu.run(&[hybrid_assistant::gpu::quant::lookup(&gpu, &ops, row)]);
        assert_eq!(pollster::block_on(gpu.read_f32(&out, 32)).unwrap(), w[row], "row {row}");
    }
}
