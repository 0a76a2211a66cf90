//! Matrix-vector products for decode steps, on weights repacked once at load.
//!
//! A decode step reads every weight once per token, so its speed is the memory bandwidth it
//! spends on weights, plus what each of its hundreds of small products costs to start.
//! candle 0.11 multiplies one activation row by Q4_K through tiles that hold every sub-block
//! scale and min as an f32 (0.75 bytes per weight against the GGUF's 0.5625), by Q6_K with a
//! 256-bit kernel, and by the 32-value block formats with one dot product per row on its own
//! thread pool. Here 16 weight rows are interleaved so that one 512-bit `vpdpbusd` multiplies
//! 4 activation bytes into 16 row sums (`x86.rs`; `avx2.rs` takes a tile vector as two 256-bit
//! halves, aarch64's `neon.rs` as four 128-bit quarters), and a tile is as large as the 16
//! GGUF blocks it came from (Q4_K: 3% more):
//! - k-quants (Q4_K, Q6_K): 16 rows × one 256-value super-block; 4-bit or 4 + 2-bit levels,
//!   the sub-block scales as bytes applied to the integer sums, the super-block scales as
//!   f16, so there is one float conversion per super-block and row.
//! - 32-value blocks (Q4_0, Q4_1, Q5_0, Q8_0): 16 rows × one block, levels made unsigned
//!   (Q8_0 + 128) with the offset taken back through the activation sums, the scale as f16.
//!
//! Activations are quantized to 8 bits per 256 values (k-quants, ggml's Q8_K) or per 32
//! (ggml's Q8_0), with integer sums per 16. Each output row is computed on its own, in the
//! same order whatever the others, so a weight's result for a row does not depend on which
//! rows are multiplied with it.
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::cpu::KernelSet;
use super::gguf::f16_at;
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

/// Values per k-quant super-block.
const QK: usize = 256;
/// Values per block of the other formats.
const QB: usize = 32;
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
}

/// Byte offsets inside one tile of a 32-value block format (16 rows × 32 values).
mod b32 {
    /// Q4_0, Q4_1, Q5_0 low 4 bits: `[G: 4][row: 16][4]`, byte `j` = `q[8G + j] | q[8G + 4 + j] << 4`;
    /// Q8_0: `[G: 8][row: 16][4]` levels + 128 of values `4G ..`.
    pub const QS: usize = 0;
    /// `[row: 16]` f16 scales after the 4-bit levels, then (Q4_1) the f16 mins.
    pub const D4: usize = 256;
    pub const M4: usize = 288;
    /// Q5_0 high bits: `[row: 16][4]`, bit `2G` of byte `j` for value `8G + j`, bit `2G + 1` for `8G + 4 + j`.
    pub const QH5: usize = 256;
    pub const D5: usize = 320;
    pub const D8: usize = 512;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4K,
    Q6K,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn dtype(self) -> GgmlDType {
        match self {
            Self::Q4K => GgmlDType::Q4K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// Values of a row per tile (one GGUF block), and per activation scale.
    pub fn values(self) -> usize {
        self.dtype().block_size()
    }

    /// Bytes of one GGUF block.
    fn block_bytes(self) -> usize {
        self.dtype().type_size()
    }

    /// A tile holds what the 16 GGUF blocks it came from hold, in as many bytes except for
    /// Q4_K, whose 6-bit sub-block scales and mins take a byte each (3% more).
    fn tile_bytes(self) -> usize {
        match self {
            Self::Q4K => q4k::BYTES,
            Self::Q6K => q6k::BYTES,
            _ => ROWS * self.block_bytes(),
        }
    }

    /// What the stored levels are above the signed ones (`w = d · (level - offset)`).
    fn offset(self) -> i32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q5_0 => 16,
            Self::Q8_0 => 128,
            _ => 0,
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
    /// 256-bit halves of each tile, `vpmaddubsw` + `vpmaddwd` for the 8-bit dot products.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`Kernel::Avx2`] with AVX-VNNI's `vpdpbusd` for the dot products.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// 128-bit quarters of each tile, widening multiplies for the 8-bit dot products.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// [`Kernel::Neon`] with the dot-product extension's `sdot`.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Kernel {
    /// Activation rows that share one unpacking of the weights.
    fn rows_per_pass(self) -> usize {
        match self {
            Kernel::Scalar => 1,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::ROWS_PER_PASS,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::AvxVnni => avx2::ROWS_PER_PASS,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon | Kernel::NeonDot => neon::ROWS_PER_PASS,
        }
    }

    /// The kernel of the process's kernel set, or `None` where the set has none (decode then
    /// stays on candle).
    pub fn detect() -> Option<Self> {
        Self::for_set(KernelSet::active())
    }

    pub fn for_set(set: KernelSet) -> Option<Self> {
        match set {
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => Some(Self::Avx512Vnni),
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 if super::cpu::has_avx_vnni() => Some(Self::AvxVnni),
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => Some(Self::Avx2),
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon if super::cpu::has_neon_dotprod() => Some(Self::NeonDot),
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon => Some(Self::Neon),
            _ => None,
        }
    }

    /// Every kernel this CPU runs, the scalar reference first (the tests compare them).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Kernel::Scalar];
        for set in KernelSet::available() {
            all.extend(Self::for_set(set));
            #[cfg(target_arch = "x86_64")]
            if set == KernelSet::Avx2 && super::cpu::has_avx_vnni() {
                all.push(Self::Avx2);
            }
            #[cfg(target_arch = "aarch64")]
            if set == KernelSet::Neon && super::cpu::has_neon_dotprod() {
                all.push(Self::Neon);
            }
        }
        all
    }
}

/// A weight matrix `(rows, cols)` as tiles of 16 rows × one block (256 values for the
/// k-quants, 32 for the others), tile row by tile row.
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
        let values = format.values();
        if rows % ROWS != 0 || cols % values != 0 || data.len() != rows * cols / values * format.block_bytes() {
            return None;
        }
        let blocks = cols / values;
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
                        _ => pack_block32(format, block, r, tile),
                    }
                }
            }
        };
        tiles.par_chunks_exact_mut(blocks * tile_bytes).enumerate().for_each(pack);
        Some(Self { format, rows, cols, kernel, tiles })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `y = x · Wᵀ` for `x` of `rows` rows, as `rows × self.rows()`. Each task takes one
    /// tile row (16 weight rows) through every activation row, so the weights are read from
    /// memory once however many rows there are.
    pub fn multiply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        Self::multiply_each(&[self], x, rows).pop().expect("one product per weight")
    }

    /// [`multiply`](Self::multiply) for several weights that read the same activations (a
    /// layer's q, k and v; its gate and up): the activations are quantized once and one
    /// parallel loop takes the tile rows of all of them, so the threads meet once, not once
    /// per weight. Each product is exactly what `multiply` gives.
    pub fn multiply_each(weights: &[&Packed], x: &[f32], rows: usize) -> Vec<Vec<f32>> {
        assert!(Self::can_multiply_together(weights), "weights multiplied together share their input size, activation format and kernel");
        let first = weights[0];
        let cols = first.cols;
        let x = super::cpu::vectorized(
            #[inline(always)]
            || Activations::quantize(x, rows, cols, first.format.values()),
        );
        let acts: Vec<Row<'_>> = (0..rows).map(|j| x.row(j, cols)).collect();
        let mut ys: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; w.rows * rows]).collect();
        if rows == 1 {
            // One row's outputs are tile row by tile row already: each task fills its own slice.
            let work = |(w, t, out): (&Packed, usize, &mut [f32])| w.tile_row(t, &acts, out);
            match weights {
                // One weight (the vocabulary projection has thousands of tile rows): no task list.
                [w] => ys[0].par_chunks_exact_mut(ROWS).enumerate().with_min_len(4).for_each(|(t, out)| work((w, t, out))),
                _ => {
                    let tasks: Vec<(&Packed, usize, &mut [f32])> =
                        weights.iter().zip(&mut ys).flat_map(|(&w, y)| y.chunks_exact_mut(ROWS).enumerate().map(move |(t, out)| (w, t, out))).collect();
                    tasks.into_par_iter().with_min_len(4).for_each(work);
                }
            }
            return ys;
        }
        // Several rows: a task's products (`rows × 16`) are columns `16t..` of every row of
        // `y`, written from the task itself so that no thread waits on a reordering pass.
        let outputs: Vec<Columns> = ys.iter_mut().zip(weights).map(|(y, w)| Columns::new(y, w.rows)).collect();
        let tasks: Vec<(usize, usize)> = weights.iter().enumerate().flat_map(|(i, w)| (0..w.rows / ROWS).map(move |t| (i, t))).collect();
        tasks.into_par_iter().with_min_len(4).for_each_init(
            || vec![0f32; rows * ROWS],
            |products, (i, t)| {
                weights[i].tile_row(t, &acts, products);
                outputs[i].write(t, products);
            },
        );
        ys
    }

    /// Whether `multiply_each` takes these weights: one or more, with the same input size,
    /// activation format and kernel.
    pub fn can_multiply_together(weights: &[&Packed]) -> bool {
        weights
            .first()
            .is_some_and(|first| weights.iter().all(|w| w.cols == first.cols && w.format.values() == first.format.values() && w.kernel == first.kernel))
    }

    /// Tile row `t` (16 weight rows) times every activation row, into `out` (`rows × 16`).
    fn tile_row(&self, t: usize, acts: &[Row<'_>], out: &mut [f32]) {
        let tile_row_bytes = self.cols / self.format.values() * self.format.tile_bytes();
        let tiles = &self.tiles[t * tile_row_bytes..][..tile_row_bytes];
        let out: &mut [[f32; ROWS]] = as_rows(out);
        assert!(acts.iter().all(|act| act.covers(self.format, self.cols)), "activation rows of {} values", self.cols);
        for (acts, out) in acts.chunks(self.kernel.rows_per_pass()).zip(out.chunks_mut(self.kernel.rows_per_pass())) {
            match self.kernel {
                Kernel::Scalar => acts.iter().zip(out).for_each(|(act, out)| scalar_tile_row(self.format, tiles, act, out)),
                // SAFETY: SIMD kernels come from `Kernel::for_set` of a set this CPU runs; `tiles`
                // holds whole tiles and `acts` cover them (asserted above).
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { x86::tile_rows(self.format, tiles, acts, out) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::tile_rows(false, self.format, tiles, acts, out) },
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { avx2::tile_rows(true, self.format, tiles, acts, out) },
                #[cfg(target_arch = "aarch64")]
                Kernel::Neon => unsafe { neon::tile_rows(false, self.format, tiles, acts, out) },
                #[cfg(target_arch = "aarch64")]
                Kernel::NeonDot => unsafe { neon::tile_rows(true, self.format, tiles, acts, out) },
            }
        }
    }
}

/// A row-major `rows × cols` output that tasks fill 16 columns at a time, each task its own
/// columns: [`Packed::multiply_each`]'s tasks write into one `y` from several threads.
struct Columns {
    y: *mut f32,
    rows: usize,
    cols: usize,
}

// SAFETY: `write` is the only access through the pointer, and tasks write disjoint columns.
unsafe impl Sync for Columns {}

impl Columns {
    fn new(y: &mut [f32], cols: usize) -> Self {
        assert!(cols % ROWS == 0 && y.len() % cols == 0);
        Self { y: y.as_mut_ptr(), rows: y.len() / cols, cols }
    }

    /// Columns `16t..16t + 16` of every row from `products` (`rows × 16`). Each `t` must be
    /// written by one task only, while the `y` this was made from is otherwise untouched.
    fn write(&self, t: usize, products: &[f32]) {
        assert!(products.len() == self.rows * ROWS && (t + 1) * ROWS <= self.cols, "tile row {t} within the output");
        for (r, row) in products.chunks_exact(ROWS).enumerate() {
            // SAFETY: in bounds (asserted above); no other task writes these columns, and
            // `multiply_each` does not touch `y` until its tasks have ended.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.y.add(r * self.cols + t * ROWS), ROWS) };
        }
    }
}

/// `[f32]` of whole 16-value rows as `[[f32; 16]]`.
fn as_rows(out: &mut [f32]) -> &mut [[f32; ROWS]] {
    let (rows, rest) = out.as_chunks_mut::<ROWS>();
    debug_assert!(rest.is_empty());
    rows
}

/// One activation row: 8-bit values, a scale per tile's worth of values (256 or 32) and the
/// sum of each 16 values.
struct Row<'a> {
    q: &'a [i8],
    d: &'a [f32],
    sums: &'a [i32],
    /// k-quants: the sums of values `64p..` and `64p + 32..`, as the low and high 16 bits
    /// (Q4_K's sub-blocks, two at a time; the x86 kernels' 16-bit multiply-adds take them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pair_sums: &'a [i32],
    /// k-quants: the sums of values `32p..` and `32p + 16..`, likewise (Q6_K's).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pair_sums16: &'a [i32],
}

impl Row<'_> {
    /// Whether the row holds all that the SIMD kernels read, unchecked, for `values` values
    /// of `format`.
    fn covers(&self, format: Format, values: usize) -> bool {
        let blocks = values / format.values();
        self.q.len() >= values
            && self.d.len() >= blocks
            && self.sums.len() >= values / 16
            && (format != Format::Q4K || self.pair_sums.len() >= values / 64)
            && (format != Format::Q6K || self.pair_sums16.len() >= values / 32)
    }
}

/// Activation rows quantized per `group` values (ggml's Q8_K for 256, Q8_0 for 32).
struct Activations {
    q: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
    pair_sums: Vec<i32>,
    pair_sums16: Vec<i32>,
}

impl Activations {
    /// Row `j` of rows of `cols` values.
    fn row(&self, j: usize, cols: usize) -> Row<'_> {
        let blocks = self.d.len() / (self.q.len() / cols);
        fn part(v: &[i32], j: usize, per_row: usize) -> &[i32] {
            match v.is_empty() {
                true => &[],
                false => &v[j * per_row..][..per_row],
            }
        }
        Row {
            q: &self.q[j * cols..][..cols],
            d: &self.d[j * blocks..][..blocks],
            sums: &self.sums[j * cols / 16..][..cols / 16],
            pair_sums: part(&self.pair_sums, j, cols / 64),
            pair_sums16: part(&self.pair_sums16, j, cols / 32),
        }
    }

    #[inline(always)]
    fn quantize(x: &[f32], rows: usize, cols: usize, group: usize) -> Self {
        assert_eq!(x.len(), rows * cols, "{rows} activation rows of {cols} values");
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / group];
        let mut sums = vec![0i32; x.len() / 16];
        let groups = x.chunks_exact(group).zip(q.chunks_exact_mut(group));
        for ((block, q), (d, sums)) in groups.zip(d.iter_mut().zip(sums.chunks_exact_mut(group / 16))) {
            let scale = super::int8::quantize_block(block, q);
            *d = scale;
            for (sum, sixteen) in sums.iter_mut().zip(q.chunks_exact(16)) {
                *sum = sixteen.iter().map(|&v| v as i32).sum();
            }
        }
        // Each sum of 32 levels is within ±32 · 127: it fits 16 bits.
        let pair = |a: i32, b: i32| (a as u16 as u32 | (b as u16 as u32) << 16) as i32;
        let (pair_sums, pair_sums16) = match group {
            QK => (sums.chunks_exact(4).map(|s| pair(s[0] + s[1], s[2] + s[3])).collect(), sums.chunks_exact(2).map(|s| pair(s[0], s[1])).collect()),
            _ => (Vec::new(), Vec::new()),
        };
        Self { q, d, sums, pair_sums, pair_sums16 }
    }
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
        if v % 64 < 32 {
            byte & 0xF
        } else {
            byte >> 4
        }
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

/// Row `r` of a 32-value block format's tile from one GGUF block.
fn pack_block32(format: Format, block: &[u8], r: usize, tile: &mut [u8]) {
    // Q4_0, Q4_1 and Q5_0 keep value v's low 4 bits in nibble v / 16 of byte v % 16.
    let (qs, qh) = match format {
        Format::Q4_0 => (&block[2..18], 0),
        Format::Q4_1 => (&block[4..20], 0),
        Format::Q5_0 => (&block[6..22], u32::from_le_bytes([block[2], block[3], block[4], block[5]])),
        _ => (&block[2..34], 0),
    };
    let low = |v: usize| qs[v % 16] >> (4 * (v / 16)) & 0xF;
    match format {
        Format::Q8_0 => {
            for v in 0..QB {
                tile[b32::QS + (v / 4 * ROWS + r) * 4 + v % 4] = (qs[v] as i8 as i32 + 128) as u8;
            }
            tile[b32::D8 + 2 * r..][..2].copy_from_slice(&block[0..2]);
        }
        _ => {
            for g in 0..QB / 8 {
                for j in 0..4 {
                    tile[b32::QS + (g * ROWS + r) * 4 + j] = low(8 * g + j) | low(8 * g + 4 + j) << 4;
                }
            }
            if format == Format::Q5_0 {
                for j in 0..4 {
                    let high = |v: usize| (qh >> v & 1) as u8;
                    tile[b32::QH5 + r * 4 + j] = (0..QB / 8).fold(0, |byte, g| byte | high(8 * g + j) << (2 * g) | high(8 * g + 4 + j) << (2 * g + 1));
                }
            }
            let d = if format == Format::Q5_0 { b32::D5 } else { b32::D4 };
            tile[d + 2 * r..][..2].copy_from_slice(&block[0..2]);
            if format == Format::Q4_1 {
                tile[b32::M4 + 2 * r..][..2].copy_from_slice(&block[2..4]);
            }
        }
    }
}

/// The level of value `v` of tile row `r`, as the kernels read it.
fn tile_level(format: Format, tile: &[u8], r: usize, v: usize) -> u8 {
    let nibble = |at: usize, v: usize| {
        let byte = tile[at + r * 4 + v % 4];
        if v % 8 < 4 {
            byte & 0xF
        } else {
            byte >> 4
        }
    };
    match format {
        Format::Q4K | Format::Q4_0 | Format::Q4_1 => nibble(q4k::QS + v / 8 * 64, v),
        Format::Q6K => nibble(q6k::low(v / 8), v) | (tile[q6k::high(v / 16) + r * 4 + v % 4] >> (2 * (v % 16 / 4)) & 3) << 4,
        Format::Q5_0 => nibble(b32::QS + v / 8 * 64, v) | (tile[b32::QH5 + r * 4 + v % 4] >> (2 * (v / 8) + v % 8 / 4) & 1) << 4,
        Format::Q8_0 => tile[b32::QS + v / 4 * 64 + r * 4 + v % 4],
    }
}

/// The reference: the SIMD kernel's integer sums and float steps, one lane at a time.
fn scalar_tile_row(format: Format, tiles: &[u8], act: &Row<'_>, out: &mut [f32; ROWS]) {
    let (tile_bytes, values) = (format.tile_bytes(), format.values());
    for (r, out) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            let x = &act.q[b * values..][..values];
            let sums = &act.sums[b * values / 16..][..values / 16];
            let dot = |from: usize, n: usize| -> i32 { (from..from + n).map(|v| tile_level(format, tile, r, v) as i32 * x[v] as i32).sum() };
            let xd = act.d[b];
            match format {
                Format::Q4K => {
                    let (mut total, mut mins) = (0i32, 0i32);
                    for s in 0..8 {
                        total += dot(32 * s, 32) * tile[q4k::SCALES + s * ROWS + r] as i32;
                        mins += tile[q4k::MINS + s * ROWS + r] as i32 * (sums[2 * s] + sums[2 * s + 1]);
                    }
                    acc = (total as f32).mul_add(f16_at(tile, q4k::D + 2 * r) * xd, acc);
                    acc = (-(mins as f32)).mul_add(f16_at(tile, q4k::DMIN + 2 * r) * xd, acc);
                }
                Format::Q6K => {
                    let mut total = 0i32;
                    for t in 0..16 {
                        total += (dot(16 * t, 16) - 32 * sums[t]) * tile[q6k::SCALES + t * ROWS + r] as i8 as i32;
                    }
                    acc = (total as f32).mul_add(f16_at(tile, q6k::D + 2 * r) * xd, acc);
                }
                _ => {
                    let sum = sums[0] + sums[1];
                    let d = match format {
                        Format::Q5_0 => b32::D5,
                        Format::Q8_0 => b32::D8,
                        _ => b32::D4,
                    };
                    let total = dot(0, QB) - format.offset() * sum;
                    acc = (total as f32).mul_add(f16_at(tile, d + 2 * r) * xd, acc);
                    if format == Format::Q4_1 {
                        acc = f16_at(tile, b32::M4 + 2 * r).mul_add(xd * sum as f32, acc);
                    }
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
        let all = Kernel::available();
        #[cfg(target_arch = "x86_64")]
        assert!(!KernelSet::Avx2.runs_here() || all.contains(&Kernel::Avx2), "the AVX2 kernel is tested wherever it runs");
        #[cfg(target_arch = "aarch64")]
        assert!(all.contains(&Kernel::Neon), "the plain NEON kernel is tested wherever it runs");
        all
    }

    const FORMATS: [GgmlDType; 6] = [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0];

    /// The weight that value `v` of row `r` of a tile stands for.
    fn tile_value(format: Format, tile: &[u8], r: usize, v: usize) -> f32 {
        let level = tile_level(format, tile, r, v) as f32;
        let f16_at = |at: usize| f16_at(tile, at + 2 * r);
        match format {
            Format::Q4K => {
                let s = v / 32;
                f16_at(q4k::D) * tile[q4k::SCALES + s * ROWS + r] as f32 * level - f16_at(q4k::DMIN) * tile[q4k::MINS + s * ROWS + r] as f32
            }
            Format::Q6K => f16_at(q6k::D) * tile[q6k::SCALES + v / 16 * ROWS + r] as i8 as f32 * (level - 32.0),
            Format::Q4_1 => f16_at(b32::D4) * level + f16_at(b32::M4),
            Format::Q4_0 => f16_at(b32::D4) * (level - 8.0),
            Format::Q5_0 => f16_at(b32::D5) * (level - 16.0),
            Format::Q8_0 => f16_at(b32::D8) * (level - 128.0),
        }
    }

    /// A tile is exactly the 16 GGUF blocks it came from, Q4_K's 3% more (its byte-wide scales).
    #[test]
    fn tiles_are_the_size_of_their_blocks() {
        for dtype in FORMATS {
            let format = Format::of(dtype).unwrap();
            let blocks = ROWS * dtype.type_size();
            match format {
                Format::Q4K => assert_eq!(format.tile_bytes(), blocks + ROWS * 4),
                _ => assert_eq!(format.tile_bytes(), blocks, "{dtype:?}"),
            }
        }
    }

    /// The tile's levels and scales give back exactly the values candle dequantizes.
    #[test]
    fn packing_reproduces_the_gguf_values() {
        let (n, k) = (32, 512);
        for dtype in FORMATS {
            let (data, expected) = quantized(dtype, n, k, 1);
            let packed = Packed::new(dtype, &data, n, k, Kernel::Scalar).unwrap();
            let (format, values) = (packed.format, packed.format.values());
            for (i, &want) in expected.iter().enumerate() {
                let (row, c) = (i / k, i % k);
                let (t, r, b, v) = (row / ROWS, row % ROWS, c / values, c % values);
                let tile = &packed.tiles[(t * k / values + b) * format.tile_bytes()..][..format.tile_bytes()];
                let got = tile_value(format, tile, r, v);
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{dtype:?} value {i}: {got} != {want}");
            }
        }
    }

    /// Against the f32 product with the dequantized weights (the difference is the 8-bit
    /// rounding of the activations), and every kernel exactly equal to the scalar one.
    #[test]
    fn products_match_the_dequantized_weights_for_every_kernel() {
        // 13 rows: a pass of the most rows the kernels take at once, and a pass of one.
        let (n, k, m) = (48, 768, 13);
        let x = random(m * k, 9);
        for dtype in FORMATS {
            let (data, w) = quantized(dtype, n, k, 2);
            let exact: Vec<f32> = (0..m * n).map(|i| (0..k).map(|c| x[(i / n) * k + c] * w[(i % n) * k + c]).sum()).collect();
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let reference = Packed::new(dtype, &data, n, k, Kernel::Scalar).unwrap().multiply(&x, m);
            for kernel in kernels() {
                let y = Packed::new(dtype, &data, n, k, kernel).unwrap().multiply(&x, m);
                for i in 0..m * n {
                    assert!((y[i] - exact[i]).abs() < 1e-2 * scale, "{kernel:?} {dtype:?} [{i}]: {} vs {}", y[i], exact[i]);
                    assert_eq!(y[i], reference[i], "{kernel:?} {dtype:?} [{i}] against the scalar kernel");
                }
            }
        }
    }

    /// Weights multiplied together (q, k, v of different formats and sizes) give exactly
    /// their products alone, for one row and for a consult's twelve.
    #[test]
    fn multiplying_together_gives_each_product() {
        let k = 512;
        let shapes = [(GgmlDType::Q4K, 64), (GgmlDType::Q6K, 32), (GgmlDType::Q4K, 16)];
        for kernel in kernels() {
            let weights: Vec<Packed> =
                shapes.iter().enumerate().map(|(i, &(dtype, n))| Packed::new(dtype, &quantized(dtype, n, k, 20 + i as u64).0, n, k, kernel).unwrap()).collect();
            let together: Vec<&Packed> = weights.iter().collect();
            assert!(Packed::can_multiply_together(&together));
            for m in [1, 12] {
                let x = random(m * k, 30 + m as u64);
                let ys = Packed::multiply_each(&together, &x, m);
                for (w, y) in weights.iter().zip(ys) {
                    assert_eq!(y, w.multiply(&x, m), "{kernel:?} {:?}, {m} rows", w.format);
                }
            }
            let q8 = Packed::new(GgmlDType::Q8_0, &quantized(GgmlDType::Q8_0, 16, k, 5).0, 16, k, kernel).unwrap();
            assert!(!Packed::can_multiply_together(&[&weights[0], &q8]), "activations quantized per 256 and per 32 values");
        }
    }

    /// Extreme levels and activations (every level at its largest against 127s) do not
    /// overflow the integer sums.
    #[test]
    fn extreme_values_do_not_overflow() {
        let (n, k) = (16, 256);
        for dtype in FORMATS {
            let w: Vec<f32> = (0..n * k).map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let q = QTensor::quantize(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(), dtype).unwrap();
            let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for kernel in kernels() {
                let y = Packed::new(dtype, &q.data().unwrap(), n, k, kernel).unwrap().multiply(&vec![1.0f32; k], 1);
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
        for (dtype, n, k) in [(GgmlDType::Q4K, 151936, 1536), (GgmlDType::Q6K, 151936, 1536), (GgmlDType::Q8_0, 151936, 896), (GgmlDType::Q5_0, 151936, 1536)] {
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
                ours = ours.max(round(&|| drop(packed.multiply(&x, 1))));
            }
            eprintln!("{dtype:?} {n}×{k}: candle {theirs:.1} GB/s of GGUF weights, ours {ours:.1} GB/s");
            // A consult's worth of rows (12): multiply-adds per second, ours against candle's.
            let x12 = random(12 * k, 5);
            let x12t = Tensor::from_vec(x12.clone(), (12, k), &Device::Cpu).unwrap();
            let macs = (12 * n * k) as f64 / bytes;
            let (mut theirs, mut ours) = (0f64, 0f64);
            for _ in 0..3 {
                theirs = theirs.max(round(&|| drop(candle.forward(&x12t).unwrap())) * macs);
                ours = ours.max(round(&|| drop(packed.multiply(&x12, 12))) * macs);
            }
            eprintln!("  12 rows: candle {theirs:.1} GMAC/s, ours {ours:.1} GMAC/s");
        }
    }
}
