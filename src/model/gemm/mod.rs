//! Batched quantized matrix products, `y = x · Wᵀ` for several rows of `x` at once: a
//! prompt's tokens in prefill, the decode tokens of several sessions on the server.
//!
//! candle multiplies most quantized formats by one activation row at a time, so m rows cost
//! m passes over the weights, each decoding every block again. Here 16 weight rows at a time
//! are decoded once (`unpack.rs`) into 8-bit levels with a scale and a min per 16 values,
//! interleaved so that one SIMD register holds 4 consecutive levels of each of the 16 rows
//! (`Decoded`). Activation rows are quantized to 8 bits per 32 values (as ggml's Q8_0). A
//! kernel then broadcasts 4 activation bytes and multiplies them with the 16 rows at once,
//! summing into 16 integer lanes, one per output: no horizontal sums, and the scales and
//! mins are applied once per block (`x86.rs`: AVX512-VNNI, or AVX-VNNI/AVX2 in 256 bits;
//! `neon.rs`: aarch64 NEON, with `sdot` where the CPU has it; `wasm.rs`: SIMD128;
//! `scalar_tile` elsewhere and as the tests' reference). With
//! `w = scale · level + min` per group and `x ≈ d · q` per block,
//! `x · w = Σ_groups (d · scale · Σ level·q + min · Σx)`.
//!
//! One activation row is not worth decoding the weights for: the decoder leaves single
//! decode steps to candle's matrix-vector kernels.
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
mod unpack;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use super::cpu::KernelSet;
use candle_core::quantized::GgmlDType;
pub use unpack::supports;
use unpack::GROUP;

const BLOCK: usize = 32;
/// Weight rows per tile: the 16 lanes of a 512-bit register of 32-bit sums.
pub const ROWS: usize = 16;
/// Bytes of one block of a tile: 32 levels of 16 rows.
const TILE_BLOCK: usize = BLOCK * ROWS;

/// 16 decoded weight rows (padded with zero rows at the end of a matrix), block by block:
/// `levels[b][g][row][4]` holds values `32b + 4g .. 32b + 4g + 4` of each row;
/// `scales[b][half][row]` and `mins[b][half][row]` apply to values `32b + 16·half ..` + 16.
#[derive(Default)]
pub struct Decoded {
    blocks: usize,
    levels: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
    row_levels: Vec<u8>,
    row_scales: Vec<f32>,
    row_mins: Vec<f32>,
}

impl Decoded {
    #[inline(always)]
    fn decode(&mut self, dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) {
        let blocks = cols / BLOCK;
        let row_bytes = unpack::row_bytes(dtype, cols);
        self.blocks = blocks;
        self.levels.clear();
        self.levels.resize(blocks * TILE_BLOCK, 0);
        self.scales.clear();
        self.scales.resize(blocks * 2 * ROWS, 0.0);
        self.mins.clear();
        self.mins.resize(blocks * 2 * ROWS, 0.0);
        self.row_levels.resize(cols, 0);
        self.row_scales.resize(cols / GROUP, 0.0);
        self.row_mins.resize(cols / GROUP, 0.0);
        for r in 0..rows {
            let row = &data[r * row_bytes..][..row_bytes];
            unpack::unpack_row(dtype, row, &mut self.row_levels, &mut self.row_scales, &mut self.row_mins);
            for b in 0..blocks {
                let tile = &mut self.levels[b * TILE_BLOCK..][..TILE_BLOCK];
                for (g, four) in self.row_levels[b * BLOCK..][..BLOCK].chunks_exact(4).enumerate() {
                    tile[g * 4 * ROWS + 4 * r..][..4].copy_from_slice(four);
                }
                for half in 0..2 {
                    self.scales[(2 * b + half) * ROWS + r] = self.row_scales[2 * b + half];
                    self.mins[(2 * b + half) * ROWS + r] = self.row_mins[2 * b + half];
                }
            }
        }
    }
}

/// What a kernel multiplies: one `Decoded` tile and `C` consecutive activation rows (`x`,
/// `d`, `sums` start at the first of them; rows are `cols` values apart).
pub struct Tile<'a> {
    pub levels: &'a [u8],
    pub scales: &'a [f32],
    pub mins: &'a [f32],
    pub x: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [f32],
    pub cols: usize,
    /// The two halves of a block have their own scales (Q6_K); else one multiply per block.
    pub halves: bool,
}

impl Tile<'_> {
    /// That the slices hold a whole tile and `c` activation rows (kernels read them unchecked).
    pub fn check(&self, c: usize) {
        let blocks = self.cols / BLOCK;
        assert!(
            self.levels.len() >= blocks * TILE_BLOCK
                && self.scales.len() >= blocks * 2 * ROWS
                && self.mins.len() >= blocks * 2 * ROWS
                && self.x.len() >= c * self.cols
                && self.d.len() >= c * blocks
                && self.sums.len() >= c * blocks * 2,
            "a tile with {c} activation rows needs whole rows"
        );
    }

    /// The activation sum that multiplies half `half` of block `b`'s mins for row `j`, and
    /// with `halves` off, that of the whole block.
    #[inline(always)]
    pub fn sum(&self, j: usize, b: usize, half: usize) -> f32 {
        let at = j * (self.cols / GROUP) + 2 * b;
        match self.halves {
            true => self.sums[at + half],
            false => self.sums[at] + self.sums[at + 1],
        }
    }
}

/// Which tile implementation this machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    X86(x86::Kernel),
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    /// Plain NEON, and NEON with the dot-product extension.
    #[cfg(target_arch = "aarch64")]
    Neon,
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Kernel {
    /// The kernel of the process's kernel set.
    pub fn best() -> Self {
        Self::for_set(KernelSet::active())
    }

    fn for_set(set: KernelSet) -> Self {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            let _ = set; // the browser has one SIMD kernel
            return Kernel::Simd128;
        }
        #[allow(unreachable_code)]
        match set {
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => Kernel::X86(x86::Kernel::Avx512Vnni),
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 if super::cpu::has_avx_vnni() => Kernel::X86(x86::Kernel::AvxVnni),
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => Kernel::X86(x86::Kernel::Avx2),
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon if super::cpu::has_neon_dotprod() => Kernel::NeonDot,
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon => Kernel::Neon,
            _ => Kernel::Scalar,
        }
    }

    /// Every kernel this machine can run, the process's first (the tests compare them).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::best()];
        for set in KernelSet::available() {
            let kernel = Self::for_set(set);
            if !all.contains(&kernel) {
                all.push(kernel);
            }
            #[cfg(target_arch = "x86_64")]
            if set == KernelSet::Avx2 && !all.contains(&Kernel::X86(x86::Kernel::Avx2)) {
                all.push(Kernel::X86(x86::Kernel::Avx2));
            }
            #[cfg(target_arch = "aarch64")]
            if set == KernelSet::Neon && !all.contains(&Kernel::Neon) {
                all.push(Kernel::Neon);
            }
        }
        if !all.contains(&Kernel::Scalar) {
            all.push(Kernel::Scalar);
        }
        all
    }

    /// Activation rows per call.
    fn cols(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::X86(k) => k.cols(),
            _ => 2,
        }
    }

    /// `out[j][lane]` = weight row `lane` of the tile · activation row `j`, for `c` rows.
    fn run(self, tile: &Tile<'_>, c: usize, wide: bool, out: &mut [[f32; ROWS]]) {
        tile.check(c);
        match c {
            1 => self.run_rows::<1>(tile, wide, out),
            2 => self.run_rows::<2>(tile, wide, out),
            3 => self.run_rows::<3>(tile, wide, out),
            _ => self.run_rows::<4>(tile, wide, out),
        }
    }

    fn run_rows<const C: usize>(self, tile: &Tile<'_>, wide: bool, out: &mut [[f32; ROWS]]) {
        let out: &mut [[f32; ROWS]; C] = (&mut out[..C]).try_into().expect("room for C rows");
        match self {
            Kernel::Scalar => scalar_tile(tile, out),
            // SAFETY: `X86` kernels come from `x86::Kernel::detect` or below it; `run` checked the tile.
            #[cfg(target_arch = "x86_64")]
            Kernel::X86(k) => unsafe { k.run(tile, wide, out) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Kernel::Simd128 => wasm::tile(tile, out),
            // SAFETY: NEON kernels come from `for_set` of a set this CPU runs (`NeonDot` where
            // it has dotprod); `run` checked the tile.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { neon::tile_neon(tile, wide, out) },
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => unsafe { neon::tile_dotprod(tile, wide, out) },
        }
        let _ = wide; // only the x86 AVX2 and NEON kernels take another path for levels above 127
    }
}

/// The reference tile: plain integer sums, the same arithmetic as the SIMD ones.
fn scalar_tile<const C: usize>(tile: &Tile<'_>, out: &mut [[f32; ROWS]; C]) {
    let (cols, blocks) = (tile.cols, tile.cols / BLOCK);
    for (j, out) in out.iter_mut().enumerate() {
        for (row, out) in out.iter_mut().enumerate() {
            let mut total = 0f32;
            for b in 0..blocks {
                let mut halves = [0i32; 2];
                for g in 0..8 {
                    for t in 0..4 {
                        let level = tile.levels[b * TILE_BLOCK + g * 4 * ROWS + 4 * row + t] as i32;
                        halves[g / 4] += level * tile.x[j * cols + b * BLOCK + 4 * g + t] as i32;
                    }
                }
                let d = tile.d[j * blocks + b];
                let at = |half: usize| (2 * b + half) * ROWS + row;
                total += match tile.halves {
                    true => (0..2).map(|h| d * tile.scales[at(h)] * halves[h] as f32 + tile.mins[at(h)] * tile.sum(j, b, h)).sum::<f32>(),
                    false => d * tile.scales[at(0)] * (halves[0] + halves[1]) as f32 + tile.mins[at(0)] * tile.sum(j, b, 0),
                };
            }
            *out = total;
        }
    }
}

/// Activation rows quantized to 8 bits per 32 values, with the sum of each 16 values (which
/// the weights' mins multiply).
pub struct Activations {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl Activations {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % BLOCK, 0, "rows must be whole 32-value blocks");
        let blocks = x.len() / BLOCK;
        let (mut q, mut d, mut sums) = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks * 2]);
        let quantize_block = |((block, q), (d, sums)): ((&[f32], &mut [i8]), (&mut f32, &mut [f32]))| {
            super::cpu::vectorized(
                #[inline(always)]
                || {
                    let scale = super::int8::quantize_block(block, q);
                    *d = scale;
                    for (sum, half) in sums.iter_mut().zip(q.chunks_exact(GROUP)) {
                        *sum = scale * half.iter().map(|&v| v as i32).sum::<i32>() as f32;
                    }
                },
            )
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            x.par_chunks_exact(BLOCK)
                .zip(q.par_chunks_exact_mut(BLOCK))
                .zip(d.par_iter_mut().zip(sums.par_chunks_exact_mut(2)))
                .with_min_len(256)
                .for_each(quantize_block);
        }
        #[cfg(target_arch = "wasm32")]
        x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(d.iter_mut().zip(sums.chunks_exact_mut(2))).for_each(quantize_block);
        Self { rows, cols, q, d, sums }
    }
}

/// Whether a batch with this weight should come here rather than go to candle: candle 0.11
/// has its own tiled kernels (AVX512-VNNI, AMX) for Q4_K, Q6_K and Q8_0 matrices of whole
/// 256-value blocks and 16-row groups, which are faster than ours for those; everything else
/// it multiplies one activation row at a time.
pub fn preferred(dtype: GgmlDType, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() == KernelSet::Avx512 && matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q8_0) && n % 16 == 0 && k % 256 == 0 {
        return false;
    }
    let _ = (n, k); // only read where candle has tiles (x86)
    supports(dtype)
}

/// `x` (`m × k`) times the transpose of the quantized `n × k` matrix in `data` (GGUF blocks
/// of `dtype`, which `supports`), as `m × n`.
pub fn matmul(dtype: GgmlDType, data: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    matmul_with(Kernel::best(), dtype, data, n, k, &Activations::quantize(x, m, k))
}

pub fn matmul_with(kernel: Kernel, dtype: GgmlDType, data: &[u8], n: usize, k: usize, acts: &Activations) -> Vec<f32> {
    assert!(supports(dtype), "{dtype:?} has no batched kernel");
    assert_eq!(acts.cols, k, "activation rows of {} values for a matrix of {k} columns", acts.cols);
    let row_bytes = unpack::row_bytes(dtype, k);
    assert_eq!(data.len(), n * row_bytes, "{n} rows of {k} {dtype:?} values");
    let (m, blocks) = (acts.rows, k / BLOCK);
    let (wide, halves) = (unpack::wide_levels(dtype), unpack::scales_per_half(dtype));
    // Each task decodes 16 weight rows and writes their products with every activation row
    // into its own slice (`m × 16`), scattered into `y` at the end.
    let work = |decoded: &mut Decoded, (chunk, out): (usize, &mut [f32])| {
        let rows = (n - chunk * ROWS).min(ROWS);
        super::cpu::vectorized(
            #[inline(always)]
            || decoded.decode(dtype, &data[chunk * ROWS * row_bytes..][..rows * row_bytes], rows, k),
        );
        let mut dots = [[0f32; ROWS]; 4];
        let mut j = 0;
        while j < m {
            let c = (m - j).min(kernel.cols());
            let tile = Tile {
                levels: &decoded.levels,
                scales: &decoded.scales,
                mins: &decoded.mins,
                x: &acts.q[j * k..],
                d: &acts.d[j * blocks..],
                sums: &acts.sums[j * 2 * blocks..],
                cols: k,
                halves,
            };
            kernel.run(&tile, c, wide, &mut dots);
            for (i, dots) in dots[..c].iter().enumerate() {
                out[(j + i) * ROWS..][..ROWS].copy_from_slice(dots);
            }
            j += c;
        }
    };
    // One decoding buffer per thread, kept between calls.
    thread_local!(static DECODED: std::cell::RefCell<Decoded> = Default::default());
    let work = |item| DECODED.with_borrow_mut(|decoded| work(decoded, item));
    let chunks = n.div_ceil(ROWS);
    let mut by_chunk = vec![0f32; chunks * m * ROWS];
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        by_chunk.par_chunks_mut(m * ROWS).enumerate().for_each(work);
    }
    #[cfg(target_arch = "wasm32")]
    by_chunk.chunks_mut(m * ROWS).enumerate().for_each(work);
    let mut y = vec![0f32; m * n];
    for (chunk, products) in by_chunk.chunks_exact(m * ROWS).enumerate() {
        let (r0, rows) = (chunk * ROWS, (n - chunk * ROWS).min(ROWS));
        for (y, products) in y.chunks_exact_mut(n).zip(products.chunks_exact(ROWS)) {
            y[r0..r0 + rows].copy_from_slice(&products[..rows]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as random;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    const FORMATS: [GgmlDType; 8] =
        [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

    fn quantized(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q.data().unwrap().into_owned(), values)
    }

    /// `scale · level + min` gives back exactly the values candle dequantizes, in the
    /// interleaved places the kernels read them from.
    #[test]
    fn decoding_reproduces_every_format() {
        let (n, k) = (3, 512);
        for dtype in FORMATS {
            let (data, expected) = quantized(dtype, n, k, 1);
            let mut d = Decoded::default();
            d.decode(dtype, &data, n, k);
            for (i, &want) in expected.iter().enumerate() {
                let (row, c) = (i / k, i % k);
                let (b, g, t) = (c / BLOCK, c % BLOCK / 4, c % 4);
                let level = d.levels[b * TILE_BLOCK + g * 4 * ROWS + 4 * row + t] as f32;
                let at = (2 * b + g / 4) * ROWS + row;
                let got = d.scales[at] * level + d.mins[at];
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{dtype:?} value {i}: {got} != {want}");
            }
        }
    }

    /// Against the f32 product with the dequantized weights; the difference is the 8-bit
    /// rounding of the activations. A partial last tile, every activation-row count of a
    /// call, and every kernel.
    #[test]
    fn products_match_the_dequantized_weights_for_every_kernel() {
        let (n, k, m) = (37, 512, 7);
        let x = random(m * k, 9);
        let acts = Activations::quantize(&x, m, k);
        #[cfg(target_arch = "aarch64")]
        assert!(Kernel::available().contains(&Kernel::Neon), "the plain NEON kernel is tested wherever it runs");
        for dtype in FORMATS {
            let (data, w) = quantized(dtype, n, k, 2);
            let exact: Vec<f32> = (0..m * n).map(|i| (0..k).map(|c| x[(i / n) * k + c] * w[(i % n) * k + c]).sum()).collect();
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let reference = matmul_with(Kernel::Scalar, dtype, &data, n, k, &acts);
            for kernel in Kernel::available() {
                let y = matmul_with(kernel, dtype, &data, n, k, &acts);
                for i in 0..m * n {
                    assert!((y[i] - exact[i]).abs() < 1e-2 * scale, "{kernel:?} {dtype:?} [{i}]: {} vs {}", y[i], exact[i]);
                    // Integer sums are exact; only the order of float additions differs.
                    assert!((y[i] - reference[i]).abs() < 1e-5 * scale, "{kernel:?} {dtype:?} [{i}]: {} vs scalar {}", y[i], reference[i]);
                    // The NEON kernels keep the scalar order too.
                    #[cfg(target_arch = "aarch64")]
                    if matches!(kernel, Kernel::Neon | Kernel::NeonDot) {
                        assert_eq!(y[i], reference[i], "{kernel:?} {dtype:?} [{i}] against the scalar kernel");
                    }
                }
            }
        }
    }

    /// Q8_0's levels reach 255: the AVX2 path must not saturate on large products.
    #[test]
    fn extreme_levels_and_activations_do_not_saturate() {
        let (n, k, m) = (4, 64, 2);
        let mut w = vec![1.0f32; n * k];
        w[..k].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 1.0 } else { -1.0 });
        let q = QTensor::quantize(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        let data = q.data().unwrap().into_owned();
        let acts = Activations::quantize(&vec![1.0f32; m * k], m, k);
        for kernel in Kernel::available() {
            let y = matmul_with(kernel, GgmlDType::Q8_0, &data, n, k, &acts);
            for (i, v) in y.iter().enumerate() {
                let want: f32 = (0..k).map(|c| w[(i % n) * k + c]).sum();
                assert!((v - want).abs() < 1e-3 * k as f32, "{kernel:?} [{i}]: {v} vs {want}");
            }
        }
    }

    /// Speed against candle's kernels: `cargo test --lib gemm::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let (n, k, m) = (1536, 1536, 256);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let (data, _) = quantized(dtype, n, k, 3);
            let x = random(m * k, 4);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let candle = QMatMul::from_qtensor(QTensor::quantize(&Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap(), dtype).unwrap()).unwrap();
            let _ = candle.forward(&xt).unwrap();
            let time = |f: &dyn Fn()| {
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                (n * k * m) as f64 / 1e9 / (t.elapsed().as_secs_f64() / 5.0)
            };
            let theirs = time(&|| drop(candle.forward(&xt).unwrap()));
            let ours = time(&|| drop(matmul(dtype, &data, n, k, &x, m)));
            eprintln!("{dtype:?}: candle {theirs:.1} GMAC/s, ours {ours:.1} GMAC/s ({:?})", Kernel::best());
        }
    }
}
