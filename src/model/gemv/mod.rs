//! Matrix-vector products for decode steps on k-quant weights (Q4_K, Q6_K), repacked once
//! at load.
//!
//! A decode step reads every weight once per token, so its speed is the memory bandwidth it
//! spends on weights. candle 0.11 multiplies one activation row by Q4_K through tiles that
//! hold every sub-block scale and min as an f32 (0.75 bytes per weight against the GGUF's
//! 0.5625), and by Q6_K with a 256-bit kernel. Here 16 weight rows of one 256-value
//! super-block are interleaved so that one 512-bit `vpdpbusd` multiplies 4 activation bytes
//! into 16 row sums, and a tile is exactly as large as the 16 GGUF blocks it came from: 4-bit
//! (Q4_K) or 4 + 2-bit (Q6_K) levels, the sub-block scales as bytes, the super-block scales
//! as f16. Sub-block scales are applied to the integer sums, so there is one float
//! conversion per super-block and row.
//!
//! Activations are quantized to 8 bits per 256 values with integer sums per 16 (ggml's Q8_K).
//! Each output row is computed on its own, in the same order whatever the others, so a
//! weight's result for a row does not depend on which rows are multiplied with it.
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per super-block.
const QK: usize = 256;
/// Weight rows per tile: the 16 lanes of a 512-bit register of 32-bit sums.
pub const ROWS: usize = 16;

/// Byte offsets inside one Q4_K tile (16 rows × 256 values).
mod q4k {
    /// `[G: 32][row: 16][4]`, byte `j` = `q[8G + j] | q[8G + 4 + j] << 4`.
    pub const QS: usize = 0;
    /// `[sub-block: 8][row: 16]` 6-bit scales, then mins.
    pub const SCALES: usize = 2048;
    pub const MINS: usize = 2176;
    /// `[row: 16]` f16 super-block scale, then the scale of the mins.
    pub const D: usize = 2304;
    pub const DMIN: usize = 2336;
    pub const BYTES: usize = 2368;
    /// GGUF block: d, dmin (f16), 12 bytes of packed 6-bit scales and mins, 128 bytes of nibbles.
    pub const BLOCK_BYTES: usize = 144;
}

/// Byte offsets inside one Q6_K tile (16 rows × 256 values).
mod q6k {
    /// Per sub-block `t` of 16 values, 192 bytes read in order: two vectors of low 4 bits,
    /// `P` = 2t and 2t + 1, each `[row: 16][4]` with byte `j` = `lo(q[8P + j]) | lo(q[8P + 4 + j]) << 4`;
    /// then one of high 2 bits, `[row: 16][4]` with byte `j` = `hi(q[16t + j]) | hi(q[16t + 4 + j]) << 2
    /// | hi(q[16t + 8 + j]) << 4 | hi(q[16t + 12 + j]) << 6`.
    pub const SUB_BLOCK: usize = 192;
    pub const fn low(p: usize) -> usize {
        SUB_BLOCK * (p / 2) + 64 * (p % 2)
    }
    pub const fn high(t: usize) -> usize {
        SUB_BLOCK * t + 128
    }
    /// `[sub-block of 16 values: 16][row: 16]` signed 8-bit scales.
    pub const SCALES: usize = 3072;
    /// `[row: 16]` f16 super-block scale.
    pub const D: usize = 3328;
    pub const BYTES: usize = 3360;
    /// GGUF block: 128 bytes of low nibbles, 64 of high bits, 16 scales, d (f16).
    pub const BLOCK_BYTES: usize = 210;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4K,
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    fn tile_bytes(self) -> usize {
        match self {
            Self::Q4K => q4k::BYTES,
            Self::Q6K => q6k::BYTES,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => q4k::BLOCK_BYTES,
            Self::Q6K => q6k::BLOCK_BYTES,
        }
    }
}

/// Which implementation multiplies the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain integer sums in the same order as the SIMD kernel: the tests' reference.
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The SIMD kernel where the CPU has one; else `None` and decode stays on candle.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Some(Self::Avx512Vnni);
        }
        None
    }
}

/// A weight matrix `(rows, cols)` as tiles of 16 rows × 256 values, tile row by tile row.
pub struct Packed {
    format: Format,
    rows: usize,
    cols: usize,
    kernel: Kernel,
    tiles: Vec<u8>,
}

impl Packed {
    /// Repacks GGUF blocks of `dtype` for `kernel`, or `None` for formats and shapes it
    /// does not cover (rows not a multiple of 16).
    pub fn new(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize, kernel: Kernel) -> Option<Self> {
        let format = Format::of(dtype)?;
        if rows % ROWS != 0 || cols % QK != 0 || data.len() != rows * cols / QK * format.block_bytes() {
            return None;
        }
        let blocks = cols / QK;
        let tile_bytes = format.tile_bytes();
        let mut tiles = vec![0u8; rows / ROWS * blocks * tile_bytes];
        let row_bytes = blocks * format.block_bytes();
        let pack = |(t, tile_row): (usize, &mut [u8])| {
            for (b, tile) in tile_row.chunks_exact_mut(tile_bytes).enumerate() {
                for r in 0..ROWS {
                    let block = &data[(t * ROWS + r) * row_bytes + b * format.block_bytes()..][..format.block_bytes()];
                    match format {
                        Format::Q4K => pack_q4k(block, r, tile),
                        Format::Q6K => pack_q6k(block, r, tile),
                    }
                }
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            tiles.par_chunks_exact_mut(blocks * tile_bytes).enumerate().for_each(pack);
        }
        #[cfg(target_arch = "wasm32")]
        tiles.chunks_exact_mut(blocks * tile_bytes).enumerate().for_each(pack);
        Some(Self { format, rows, cols, kernel, tiles })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `y = W · x` for each of the `x.rows` activation rows, as `x.rows × rows`.
    pub fn matvec(&self, x: &Activations) -> Vec<f32> {
        assert_eq!(x.cols, self.cols, "activation rows of {} values for a matrix of {} columns", x.cols, self.cols);
        let blocks = self.cols / QK;
        let tile_row_bytes = blocks * self.format.tile_bytes();
        let mut y = vec![0f32; x.rows * self.rows];
        for (j, y) in y.chunks_exact_mut(self.rows).enumerate() {
            let act = Row {
                q: &x.q[j * self.cols..][..self.cols],
                d: &x.d[j * blocks..][..blocks],
                sums: &x.sums[j * blocks * 16..][..blocks * 16],
            };
            let work = |(t, out): (usize, &mut [f32])| {
                let tiles = &self.tiles[t * tile_row_bytes..][..tile_row_bytes];
                let out: &mut [f32; ROWS] = out.try_into().expect("16 outputs per tile");
                self.tile_row(tiles, &act, out);
            };
            #[cfg(not(target_arch = "wasm32"))]
            {
                use rayon::prelude::*;
                y.par_chunks_exact_mut(ROWS).enumerate().with_min_len(4).for_each(work);
            }
            #[cfg(target_arch = "wasm32")]
            y.chunks_exact_mut(ROWS).enumerate().for_each(work);
        }
        y
    }

    fn tile_row(&self, tiles: &[u8], act: &Row<'_>, out: &mut [f32; ROWS]) {
        match self.kernel {
            Kernel::Scalar => scalar_tile_row(self.format, tiles, act, out),
            // SAFETY: `Avx512Vnni` comes from `Kernel::detect`; `tiles` and `act` hold whole super-blocks.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { x86::tile_row(self.format, tiles, act, out) },
        }
    }
}

/// One activation row: 8-bit values, a scale per 256 and the sum of each 16 values.
pub struct Row<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
}

/// Activation rows quantized per 256 values (ggml's Q8_K).
pub struct Activations {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl Activations {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % QK, 0, "rows must be whole 256-value super-blocks");
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / QK];
        let mut sums = vec![0i32; x.len() / 16];
        for ((block, q), (d, sums)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d.iter_mut().zip(sums.chunks_exact_mut(16))) {
            let amax = f32::from_bits(block.iter().map(|v| v.to_bits() & 0x7FFF_FFFF).max().unwrap_or(0));
            let scale = amax / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(block) {
                *q = (v * inverse).round_ties_even() as i32 as i8;
            }
            *d = scale;
            for (sum, sixteen) in sums.iter_mut().zip(q.chunks_exact(16)) {
                *sum = sixteen.iter().map(|&v| v as i32).sum();
            }
        }
        Self { rows, cols, q, d, sums }
    }
}

fn read_f16(b: &[u8]) -> f16 {
    f16::from_le_bytes([b[0], b[1]])
}

/// Row `r` of a Q4_K tile from one GGUF block.
fn pack_q4k(block: &[u8], r: usize, tile: &mut [u8]) {
    let scales = &block[4..16];
    for s in 0..8 {
        let (sc, mn) = match s {
            0..4 => (scales[s] & 63, scales[s + 4] & 63),
            _ => ((scales[s + 4] & 0xF) | ((scales[s - 4] >> 6) << 4), (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4)),
        };
        tile[q4k::SCALES + s * ROWS + r] = sc;
        tile[q4k::MINS + s * ROWS + r] = mn;
    }
    tile[q4k::D + 2 * r..][..2].copy_from_slice(&block[0..2]);
    tile[q4k::DMIN + 2 * r..][..2].copy_from_slice(&block[2..4]);
    // GGUF: 32-byte chunk c holds values 64c.. in its low nibbles and 64c + 32.. in its high.
    let qs = &block[16..144];
    let level = |v: usize| {
        let byte = qs[v / 64 * 32 + v % 32];
        if v % 64 < 32 { byte & 0xF } else { byte >> 4 }
    };
    for g in 0..QK / 8 {
        for j in 0..4 {
            tile[q4k::QS + (g * ROWS + r) * 4 + j] = level(8 * g + j) | level(8 * g + 4 + j) << 4;
        }
    }
}

/// Row `r` of a Q6_K tile from one GGUF block.
fn pack_q6k(block: &[u8], r: usize, tile: &mut [u8]) {
    let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
    // ggml's order: each 128-value half h uses ql[64h..], qh[32h..]; value 32·k + l of a half
    // takes its low bits from ql (nibble k / 2 of byte l + 32·(k % 2)) and its high bits from
    // bits 2k of qh[l].
    let level = |v: usize| {
        let (h, k, l) = (v / 128, v % 128 / 32, v % 32);
        let low = ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2)) & 0xF;
        let high = qh[32 * h + l] >> (2 * k) & 3;
        low | high << 4
    };
    for p in 0..QK / 8 {
        for j in 0..4 {
            tile[q6k::low(p) + r * 4 + j] = level(8 * p + j) & 0xF | (level(8 * p + 4 + j) & 0xF) << 4;
        }
    }
    for h in 0..QK / 16 {
        for j in 0..4 {
            let high = |i: usize| level(16 * h + 4 * i + j) >> 4;
            tile[q6k::high(h) + r * 4 + j] = high(0) | high(1) << 2 | high(2) << 4 | high(3) << 6;
        }
    }
    for (t, &sc) in scales.iter().enumerate() {
        tile[q6k::SCALES + t * ROWS + r] = sc;
    }
    tile[q6k::D + 2 * r..][..2].copy_from_slice(&block[208..210]);
}

/// The level of value `v` of tile row `r`, and the tests' way back to the weights.
fn tile_level(format: Format, tile: &[u8], r: usize, v: usize) -> u8 {
    let nibble = |at: usize, v: usize| {
        let byte = tile[at + r * 4 + v % 4];
        if v % 8 < 4 { byte & 0xF } else { byte >> 4 }
    };
    match format {
        Format::Q4K => nibble(q4k::QS + v / 8 * 64, v),
        Format::Q6K => nibble(q6k::low(v / 8), v) | (tile[q6k::high(v / 16) + r * 4 + v % 4] >> (2 * (v % 16 / 4)) & 3) << 4,
    }
}

/// The reference: the SIMD kernel's integer sums and float steps, one lane at a time.
fn scalar_tile_row(format: Format, tiles: &[u8], act: &Row<'_>, out: &mut [f32; ROWS]) {
    let tile_bytes = format.tile_bytes();
    for (r, out) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            let x = &act.q[b * QK..][..QK];
            let sums = &act.sums[b * 16..][..16];
            let dot = |from: usize, n: usize| -> i32 {
                (from..from + n).map(|v| tile_level(format, tile, r, v) as i32 * x[v] as i32).sum()
            };
            let xd = act.d[b];
            match format {
                Format::Q4K => {
                    let (mut total, mut mins) = (0i32, 0i32);
                    for s in 0..8 {
                        total += dot(32 * s, 32) * tile[q4k::SCALES + s * ROWS + r] as i32;
                        mins += tile[q4k::MINS + s * ROWS + r] as i32 * (sums[2 * s] + sums[2 * s + 1]);
                    }
                    let d = read_f16(&tile[q4k::D + 2 * r..]).to_f32();
                    let dmin = read_f16(&tile[q4k::DMIN + 2 * r..]).to_f32();
                    acc = (total as f32).mul_add(d * xd, acc);
                    acc = (-(mins as f32)).mul_add(dmin * xd, acc);
                }
                Format::Q6K => {
                    let mut total = 0i32;
                    for t in 0..16 {
                        total += (dot(16 * t, 16) - 32 * sums[t]) * tile[q6k::SCALES + t * ROWS + r] as i8 as i32;
                    }
                    let d = read_f16(&tile[q6k::D + 2 * r..]).to_f32();
                    acc = (total as f32).mul_add(d * xd, acc);
                }
            }
        }
        *out = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as random;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn quantized(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q.data().unwrap().into_owned(), values)
    }

    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        all.extend(Kernel::detect());
        all
    }

    /// The tile's levels and scales give back exactly the values candle dequantizes.
    #[test]
    fn packing_reproduces_the_gguf_values() {
        let (n, k) = (32, 512);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (data, expected) = quantized(dtype, n, k, 1);
            let packed = Packed::new(dtype, &data, n, k, Kernel::Scalar).unwrap();
            let format = packed.format;
            for (i, &want) in expected.iter().enumerate() {
                let (row, c) = (i / k, i % k);
                let (t, r, b, v) = (row / ROWS, row % ROWS, c / QK, c % QK);
                let tile = &packed.tiles[(t * k / QK + b) * format.tile_bytes()..][..format.tile_bytes()];
                let level = tile_level(format, tile, r, v) as f32;
                let got = match format {
                    Format::Q4K => {
                        let s = v / 32;
                        let d = read_f16(&tile[q4k::D + 2 * r..]).to_f32() * tile[q4k::SCALES + s * ROWS + r] as f32;
                        let m = read_f16(&tile[q4k::DMIN + 2 * r..]).to_f32() * tile[q4k::MINS + s * ROWS + r] as f32;
                        d * level - m
                    }
                    Format::Q6K => {
                        let sc = tile[q6k::SCALES + v / 16 * ROWS + r] as i8 as f32;
                        read_f16(&tile[q6k::D + 2 * r..]).to_f32() * sc * (level - 32.0)
                    }
                };
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{dtype:?} value {i}: {got} != {want}");
            }
        }
    }

    /// Against the f32 product with the dequantized weights (the difference is the 8-bit
    /// rounding of the activations), and every kernel exactly equal to the scalar one.
    #[test]
    fn products_match_the_dequantized_weights_for_every_kernel() {
        let (n, k, m) = (48, 768, 3);
        let x = random(m * k, 9);
        let acts = Activations::quantize(&x, m, k);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (data, w) = quantized(dtype, n, k, 2);
            let exact: Vec<f32> = (0..m * n).map(|i| (0..k).map(|c| x[(i / n) * k + c] * w[(i % n) * k + c]).sum()).collect();
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let reference = Packed::new(dtype, &data, n, k, Kernel::Scalar).unwrap().matvec(&acts);
            for kernel in kernels() {
                let y = Packed::new(dtype, &data, n, k, kernel).unwrap().matvec(&acts);
                for i in 0..m * n {
                    assert!((y[i] - exact[i]).abs() < 1e-2 * scale, "{kernel:?} {dtype:?} [{i}]: {} vs {}", y[i], exact[i]);
                    assert_eq!(y[i], reference[i], "{kernel:?} {dtype:?} [{i}] against the scalar kernel");
                }
            }
        }
    }

    /// Extreme levels and activations (all 15s or 63s against ±127) do not overflow the
    /// integer sums.
    #[test]
    fn extreme_values_do_not_overflow() {
        let (n, k) = (16, 256);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let w: Vec<f32> = (0..n * k).map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let q = QTensor::quantize(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(), dtype).unwrap();
            let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let acts = Activations::quantize(&vec![1.0f32; k], 1, k);
            for kernel in kernels() {
                let y = Packed::new(dtype, &q.data().unwrap(), n, k, kernel).unwrap().matvec(&acts);
                for (r, v) in y.iter().enumerate() {
                    let want: f32 = values[r * k..][..k].iter().sum();
                    assert!((v - want).abs() < 1e-2 * k as f32, "{kernel:?} {dtype:?} row {r}: {v} vs {want}");
                }
            }
        }
    }

    /// Bandwidth against candle's single-row kernels on qwen2.5-coder-1.5b's shapes:
    /// `cargo test --lib gemv::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let Some(kernel) = Kernel::detect() else { return eprintln!("no SIMD kernel on this CPU") };
        // Large enough (about 190 MB) to stream from memory, as a decode step does.
        for (dtype, n, k) in [(GgmlDType::Q4K, 151936, 1536), (GgmlDType::Q6K, 151936, 1536)] {
            let w = QTensor::quantize(&Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap(), dtype).unwrap();
            let data = w.data().unwrap().into_owned();
            let bytes = data.len() as f64;
            let candle = QMatMul::from_qtensor(w).unwrap();
            let packed = Packed::new(dtype, &data, n, k, kernel).unwrap();
            let x = random(k, 4);
            let xt = Tensor::from_vec(x.clone(), (1, k), &Device::Cpu).unwrap();
            // Best of 5 rounds of 5 products each, the two taking turns (the machine's
            // bandwidth varies with its neighbours).
            let round = |f: &dyn Fn()| {
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                bytes / 1e9 / (t.elapsed().as_secs_f64() / 5.0)
            };
            let (mut theirs, mut ours) = (0f64, 0f64);
            for _ in 0..5 {
                theirs = theirs.max(round(&|| drop(candle.forward(&xt).unwrap())));
                ours = ours.max(round(&|| drop(packed.matvec(&Activations::quantize(&x, 1, k)))));
            }
            eprintln!("{dtype:?} {n}×{k}: candle {theirs:.1} GB/s of GGUF weights, ours {ours:.1} GB/s");
        }
    }
}
