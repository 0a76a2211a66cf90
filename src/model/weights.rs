//! Quantized projection weights as the decoder uses them. With `Kernels::Fastest`, several
//! activation rows at once (prefill, batched decode) go through our batched kernels (`gemm`)
//! and a single row through our matrix-vector kernels on weights repacked at load (`gemv`,
//! AVX512-VNNI); with `Kernels::RowInvariant` every row goes through `gemv`. Where `gemv` has
//! no kernel, candle's run. Formats without a SIMD kernel in candle (Q5_0, Q4_1) are
//! rewritten once at load time into formats that have one, without changing the values they
//! encode:
//! - Q5_0 `d * (q - 16)` with 5-bit `q` is exactly Q8_0 with the same scale.
//! - Q4_1 `d * q + m` is Q4_0 `d * (q - 8)` plus a per-block offset `c = m + 8d`, whose
//!   contribution to `x · w` is `c` times the sum of `x` over the block (`add_block_offsets`).
use super::decoder::Kernels;
use super::gguf::f16_at;
use super::{gemm, gemv, with_values};
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use std::borrow::Cow;

const BLOCK: usize = 32;
/// From this many activation rows on, decoding the weights once for all of them (`gemm`)
/// beats one candle matrix-vector product per row.
const BATCHED_FROM_ROWS: usize = 2;

/// `y = x · Wᵀ` for a quantized `W` of shape `(out, in)`.
pub struct QWeight {
    matmul: QMatMul,
    /// Whether batches go through `gemm` (`Kernels::Fastest`).
    batched: bool,
    /// For rewritten Q4_1: the per-block offsets, `in / 32` rows of `out`.
    block_offsets: Option<Vec<f32>>,
    /// The same weights repacked for `gemv`, which takes single rows (`Kernels::Fastest`) or
    /// every row (`Kernels::RowInvariant`: its result for a row never depends on the others).
    repacked: Option<gemv::Packed>,
}

impl QWeight {
    pub fn new(tensor: QTensor, kernels: Kernels) -> Result<Self> {
        let batched = kernels == Kernels::Fastest;
        if kernels == Kernels::CandleReference {
            return Ok(Self { matmul: QMatMul::from_qtensor(tensor)?, batched, block_offsets: None, repacked: None });
        }
        // Packed from the GGUF's own blocks, before any rewrite.
        let repacked = repacked(&tensor, kernels)?;
        if repacked.is_some() && !batched {
            // Every row goes to `gemv` (`Kernels::RowInvariant`): candle's kernels never run,
            // so the weight needs no rewrite for them.
            return Ok(Self { matmul: QMatMul::from_qtensor(tensor)?, batched, block_offsets: None, repacked });
        }
        Ok(Self { repacked, ..Self::rewritten(tensor, batched)? })
    }

    /// The weight in formats candle has SIMD kernels for (module docs), without `gemv`.
    fn rewritten(tensor: QTensor, batched: bool) -> Result<Self> {
        let device = tensor.device();
        let (out, inp) = tensor.shape().dims2()?;
        Ok(match tensor.dtype() {
            GgmlDType::Q5_0 => {
                let q8 = q5_0_to_q8_0(&tensor.data()?)?;
                Self { matmul: qmatmul(q8, GgmlDType::Q8_0, (out, inp), &device)?, batched, block_offsets: None, repacked: None }
            }
            GgmlDType::Q4_1 => {
                let (q4_0, offsets) = q4_1_to_q4_0(&tensor.data()?)?;
                let offsets = transpose(&offsets, out, inp / BLOCK);
                Self { matmul: qmatmul(q4_0, GgmlDType::Q4_0, (out, inp), &device)?, batched, block_offsets: Some(offsets), repacked: None }
            }
            _ => Self { matmul: QMatMul::from_qtensor(tensor)?, batched, block_offsets: None, repacked: None },
        })
    }

    /// A weight shared with the embedding table (tied output projection), used as it is.
    pub fn from_arc(tensor: std::sync::Arc<QTensor>, kernels: Kernels) -> Result<Self> {
        let repacked = repacked(&tensor, kernels)?;
        Ok(Self { matmul: QMatMul::from_arc(tensor)?, batched: kernels == Kernels::Fastest, block_offsets: None, repacked })
    }

    fn batched_here(w: &QTensor) -> bool {
        let (out, inp) = w.shape().dims2().unwrap_or((0, 0));
        gemm::preferred(w.dtype(), out, inp)
    }

    /// The weight repacked for `gemv`, where `rows` activation rows go there.
    fn gemv_for(&self, rows: usize) -> Option<&gemv::Packed> {
        self.repacked.as_ref().filter(|_| rows < BATCHED_FROM_ROWS || !self.batched)
    }

    /// `forward` of each weight on the same `x` (a layer's q, k and v; its gate and up). Where
    /// all of them go to `gemv` with the same activation format, they run as one product
    /// ([`gemv::Packed::multiply_each`]), with the same results.
    pub fn forward_each<const N: usize>(weights: [&QWeight; N], x: &Tensor) -> Result<[Tensor; N]> {
        let rows = x.dim(0)?;
        let packed: Option<Vec<&gemv::Packed>> = weights.iter().map(|w| w.gemv_for(rows)).collect();
        let ys: Vec<Tensor> = match packed {
            Some(packed) if gemv::Packed::can_multiply_together(&packed) => {
                let ys = with_values(x, |x| gemv::Packed::multiply_each(&packed, x, rows))?;
                ys.into_iter().zip(packed).map(|(y, p)| Ok(Tensor::from_vec(y, (rows, p.rows()), x.device())?)).collect::<Result<_>>()?
            }
            _ => weights.iter().map(|w| w.forward(x)).collect::<Result<_>>()?,
        };
        Ok(ys.try_into().unwrap_or_else(|_| unreachable!("one product per weight")))
    }

    /// `x`: `(rows, in)` → `(rows, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        if let Some(packed) = self.gemv_for(rows) {
            let y = with_values(x, |x| packed.multiply(x, rows))?;
            return Ok(Tensor::from_vec(y, (rows, packed.rows()), x.device())?);
        }
        let batched = match &self.matmul {
            QMatMul::QTensor(w) if self.batched && rows >= BATCHED_FROM_ROWS && Self::batched_here(w) => Some(w),
            _ => None,
        };
        if batched.is_none() && self.block_offsets.is_none() {
            return Ok(self.matmul.forward(x)?);
        }
        // Both remaining paths work on the values: read them out once.
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut y = match batched {
            Some(w) => {
                let (out, inp) = w.shape().dims2()?;
                gemm::matmul(w.dtype(), &w.data()?, out, inp, &values, rows)
            }
            None => self.matmul.forward(x)?.flatten_all()?.to_vec1::<f32>()?,
        };
        let out = y.len() / rows;
        if let Some(offsets) = &self.block_offsets {
            add_block_offsets(&mut y, out, &q8_block_sums(&values), offsets);
        }
        Ok(Tensor::from_vec(y, (rows, out), x.device())?)
    }
}

/// The weight repacked for `gemv`, where this CPU has a kernel for its format (not for the
/// parity tests' `Kernels::CandleReference`).
fn repacked(tensor: &QTensor, kernels: Kernels) -> Result<Option<gemv::Packed>> {
    let (out, inp) = tensor.shape().dims2()?;
    Ok(match (kernels, gemv::Kernel::detect()) {
        (Kernels::Fastest | Kernels::RowInvariant, Some(kernel)) => gemv::Packed::new(tensor.dtype(), &tensor.data()?, out, inp, kernel),
        _ => None,
    })
}

/// `y[row] += Σ_b sums[row][b] · offsets[b]`, each row on its own in a fixed order (so a row's
/// result does not depend on the others), as vectorized multiply-adds over the outputs.
fn add_block_offsets(y: &mut [f32], out: usize, sums: &[f32], offsets: &[f32]) {
    let blocks = offsets.len() / out;
    let add = |(y, sums): (&mut [f32], &[f32])| {
        for (&s, offsets) in sums.iter().zip(offsets.chunks_exact(out)) {
            y.iter_mut().zip(offsets).for_each(|(y, &c)| *y += s * c);
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        y.par_chunks_exact_mut(out).zip(sums.par_chunks_exact(blocks)).with_min_len(8).for_each(add);
    }
    #[cfg(target_arch = "wasm32")]
    y.chunks_exact_mut(out).zip(sums.chunks_exact(blocks)).for_each(add);
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|i| values[(i % rows) * cols + i / rows]).collect()
}

/// Per 32-value block, the sum of `x` as ggml's Q8_1 activations carry it (quantized to
/// 8 bits, summed, stored as f16), so Q4_1 offsets meet the same numbers as in llama.cpp.
fn q8_block_sums(x: &[f32]) -> Vec<f32> {
    let mut sums = Vec::with_capacity(x.len() / BLOCK);
    // A loop, not `collect`: `collect`'s own function would not be compiled for the set.
    super::cpu::vectorized(
        #[inline(always)]
        || {
            for block in x.chunks_exact(BLOCK) {
                let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: i32 = block.iter().map(|&v| (v * id).round() as i32).sum();
                sums.push(f16::from_f32(q as f32 * d).to_f32());
            }
        },
    );
    sums
}

fn qtensor(bytes: Vec<u8>, dtype: GgmlDType, shape: (usize, usize), device: &Device) -> Result<QTensor> {
    let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype)?;
    Ok(QTensor::new(storage, shape)?)
}

fn qmatmul(bytes: Vec<u8>, dtype: GgmlDType, shape: (usize, usize), device: &Device) -> Result<QMatMul> {
    Ok(QMatMul::from_qtensor(qtensor(bytes, dtype, shape, device)?)?)
}

fn blocks<'a>(bytes: &'a [u8], size: usize, format: &str) -> Result<std::slice::ChunksExact<'a, u8>> {
    match bytes.len() % size {
        0 => Ok(bytes.chunks_exact(size)),
        _ => Err(Error::Gguf(format!("{format} tensor data is not a whole number of {size}-byte blocks"))),
    }
}

/// Q5_0 blocks (d: f16, qh: u32 high bits, qs: 16 bytes of low nibbles) to Q8_0 (d: f16, 32 × i8).
pub fn q5_0_to_q8_0(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 22 * 34);
    for b in blocks(bytes, 22, "Q5_0")? {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        out.extend_from_slice(&b[0..2]);
        for j in 0..32 {
            let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
            let high = ((qh >> j) & 1) as u8;
            out.push(((low | high << 4) as i8 - 16) as u8);
        }
    }
    Ok(out)
}

/// Q4_1 blocks (d: f16, m: f16, qs: 16 bytes) to Q4_0 blocks (d: f16, the same qs) and the
/// per-block offsets `m + 8d`.
pub fn q4_1_to_q4_0(bytes: &[u8]) -> Result<(Vec<u8>, Vec<f32>)> {
    let n = bytes.len() / 20;
    let (mut out, mut offsets) = (Vec::with_capacity(n * 18), Vec::with_capacity(n));
    for b in blocks(bytes, 20, "Q4_1")? {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        out.extend_from_slice(&b[0..2]);
        out.extend_from_slice(&b[4..20]);
        offsets.push(m + 8.0 * d);
    }
    Ok((out, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as random;

    /// The rewritten weight encodes exactly the values of the original.
    fn check_lossless(dtype: GgmlDType) {
        let (out, inp) = (64, 256);
        let w = Tensor::from_vec(random(out * inp, 1), (out, inp), &Device::Cpu).unwrap();
        let original = QTensor::quantize(&w, dtype).unwrap();
        let expected = original.dequantize(&Device::Cpu).unwrap();
        let bytes = original.data().unwrap();
        let rewritten = match dtype {
            GgmlDType::Q5_0 => {
                let q8 = q5_0_to_q8_0(&bytes).unwrap();
                let t = qtensor(q8, GgmlDType::Q8_0, (out, inp), &Device::Cpu).unwrap();
                t.dequantize(&Device::Cpu).unwrap()
            }
            _ => {
                let (q4, offsets) = q4_1_to_q4_0(&bytes).unwrap();
                let t = qtensor(q4, GgmlDType::Q4_0, (out, inp), &Device::Cpu).unwrap();
                let offsets = Tensor::from_vec(offsets, (out, inp / BLOCK, 1), &Device::Cpu).unwrap();
                let d = t.dequantize(&Device::Cpu).unwrap().reshape((out, inp / BLOCK, BLOCK)).unwrap();
                d.broadcast_add(&offsets).unwrap().reshape((out, inp)).unwrap()
            }
        };
        let diff = (expected - rewritten).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{dtype:?}: rewritten weights differ by {diff}");
    }

    #[test]
    fn q5_0_as_q8_0_is_lossless() {
        check_lossless(GgmlDType::Q5_0);
    }

    #[test]
    fn q4_1_as_q4_0_plus_offsets_is_lossless() {
        check_lossless(GgmlDType::Q4_1);
    }

    #[test]
    fn rewritten_matmul_matches_the_original_format() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0] {
            // 320 inputs: not a multiple of 256, so candle keeps Q8_0 activations (as llama.cpp
            // does for these formats) rather than its tiled kernels' Q8_K ones.
            let (out, inp, rows) = (96, 320, 5);
            let w = Tensor::from_vec(random(out * inp, 2), (out, inp), &Device::Cpu).unwrap();
            let x = Tensor::from_vec(random(rows * inp, 3), (rows, inp), &Device::Cpu).unwrap();
            let original = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let rewritten = QWeight::rewritten(QTensor::quantize(&w, dtype).unwrap(), false).unwrap();
            let (a, b) = (original.forward(&x).unwrap(), rewritten.forward(&x).unwrap());
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff / scale < 2e-3, "{dtype:?}: {diff} of {scale}");
        }
    }
}
