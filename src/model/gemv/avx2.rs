//! AVX2 (and AVX-VNNI): each 64-byte tile vector, 4 levels of each of 16 weight rows, is
//! taken as two 256-bit halves (rows 0–7, 8–15), and 4 broadcast activation bytes meet each
//! half in one unsigned × signed 8-bit dot product per 32-bit lane: `vpdpbusd` with AVX-VNNI,
//! else `vpmaddubsw` + `vpmaddwd` (whose 16-bit pair sums saturate above 127 · 127 · 2: the
//! levels up to 255 of Q8_0 go through [`Dot::dot_wide`]). The integer sums and float steps
//! are those of the scalar reference, so the results are the same bits.
// `h` (the half) and `j` (the activation row) index several arrays and pointers at once.
#![allow(clippy::needless_range_loop)]
use super::{b32, q4k, q6k, Format, Row, QB, QK, ROWS};
use crate::model::gemm::x86::{dot_avx2_wide, dot_avxvnni};
use std::arch::x86_64::*;

/// Activation rows per pass over a tile row: two float accumulators each (one per half) and
/// two integer chains while a sub-block is summed fill the 16 registers at four.
pub const ROWS_PER_PASS: usize = 4;

/// Sums of 8-bit products per 32-bit lane (4 unsigned levels of a row times 4 signed
/// activations), over a few vectors at a time. Without AVX-VNNI, `vpmaddubsw` leaves each
/// lane's sum in two 16-bit halves; those are added up in 16 bits for as long as they fit and
/// widened once (`vpmaddwd`, which also applies a scale), instead of after every product.
trait Dot {
    /// A running sum; `add` may be called as long as the lane's total stays within ±32767
    /// (or without limit where `WIDE_SUMS`: the sums are 32 bits).
    type Sum: Copy;
    const WIDE_SUMS: bool;
    unsafe fn zero() -> Self::Sum;
    /// `s` + the products of levels up to 63 (`w`) and activations (`x`).
    unsafe fn add(s: Self::Sum, w: __m256i, x: __m256i) -> Self::Sum;
    /// The lanes' totals as 32-bit integers.
    unsafe fn total(s: Self::Sum) -> __m256i;
    /// The totals times `scales16`: 32-bit lanes holding one 16-bit scale in both halves.
    unsafe fn scaled(s: Self::Sum, scales16: __m256i) -> __m256i;
    /// `acc` + the products of levels up to 255, as 32-bit lanes.
    unsafe fn dot_wide(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

struct Maddubs;
struct Vnni;

impl Dot for Maddubs {
    /// Two 16-bit partial sums per lane.
    type Sum = __m256i;
    const WIDE_SUMS: bool = false;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn add(s: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi16(s, _mm256_maddubs_epi16(w, x))
    }
    #[inline(always)]
    unsafe fn total(s: __m256i) -> __m256i {
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn scaled(s: __m256i, scales16: __m256i) -> __m256i {
        _mm256_madd_epi16(s, scales16)
    }
    #[inline(always)]
    unsafe fn dot_wide(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        dot_avx2_wide(acc, w, x)
    }
}

impl Dot for Vnni {
    /// One 32-bit sum per lane.
    type Sum = __m256i;
    const WIDE_SUMS: bool = true;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn add(s: __m256i, w: __m256i, x: __m256i) -> __m256i {
        dot_avxvnni(s, w, x)
    }
    #[inline(always)]
    unsafe fn total(s: __m256i) -> __m256i {
        s
    }
    #[inline(always)]
    unsafe fn scaled(s: __m256i, scales16: __m256i) -> __m256i {
        // The total fits 16 bits: its low half, signed, times the scale.
        _mm256_madd_epi16(_mm256_and_si256(s, _mm256_set1_epi32(0xFFFF)), scales16)
    }
    #[inline(always)]
    unsafe fn dot_wide(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        dot_avxvnni(acc, w, x)
    }
}

/// `out[j]` = the 16 weight rows of `tiles` · activation row `acts[j]`, for 1 to 4 rows, with
/// AVX-VNNI's dot products if `vnni`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (and AVX-VNNI if `vnni`); `tiles` holds whole tiles and
/// every row covers them (`Row::covers`).
pub(super) unsafe fn tile_rows(vnni: bool, format: Format, tiles: &[u8], acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    let blocks = tiles.len() / format.tile_bytes();
    match (acts.len(), vnni) {
        (1, false) => rows_avx2::<1>(format, tiles.as_ptr(), blocks, acts, out),
        (2, false) => rows_avx2::<2>(format, tiles.as_ptr(), blocks, acts, out),
        (3, false) => rows_avx2::<3>(format, tiles.as_ptr(), blocks, acts, out),
        (_, false) => rows_avx2::<4>(format, tiles.as_ptr(), blocks, acts, out),
        (1, true) => rows_avxvnni::<1>(format, tiles.as_ptr(), blocks, acts, out),
        (2, true) => rows_avxvnni::<2>(format, tiles.as_ptr(), blocks, acts, out),
        (3, true) => rows_avxvnni::<3>(format, tiles.as_ptr(), blocks, acts, out),
        (_, true) => rows_avxvnni::<4>(format, tiles.as_ptr(), blocks, acts, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<const C: usize>(format: Format, tiles: *const u8, blocks: usize, acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    rows::<Maddubs, C>(format, tiles, blocks, acts, out)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows_avxvnni<const C: usize>(format: Format, tiles: *const u8, blocks: usize, acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    rows::<Vnni, C>(format, tiles, blocks, acts, out)
}

#[inline(always)]
unsafe fn rows<D: Dot, const C: usize>(format: Format, tiles: *const u8, blocks: usize, acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    let acts: &[Row<'_>; C] = acts.try_into().expect("C activation rows");
    let acc = match format {
        Format::Q4K => q4k_rows::<D, C>(tiles, blocks, acts),
        Format::Q6K => q6k_rows::<D, C>(tiles, blocks, acts),
        Format::Q4_0 => block32_rows::<D, 0, C>(tiles, blocks, acts),
        Format::Q4_1 => block32_rows::<D, 1, C>(tiles, blocks, acts),
        Format::Q5_0 => block32_rows::<D, 2, C>(tiles, blocks, acts),
        Format::Q8_0 => block32_rows::<D, 3, C>(tiles, blocks, acts),
    };
    for (out, acc) in out.iter_mut().zip(acc) {
        _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
    }
}

#[inline(always)]
unsafe fn broadcast4(x: *const i8, at: usize) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(x.add(at) as *const i32))
}

/// Half `h` (rows 8h..8h + 8) of the 64-byte vector at `at`.
#[inline(always)]
unsafe fn load(p: *const u8, at: usize, h: usize) -> __m256i {
    _mm256_loadu_si256(p.add(at + 32 * h) as *const _)
}

/// Half `h` of 16 per-row bytes at `at`, as 32-bit lanes (unsigned or signed).
#[inline(always)]
unsafe fn bytes_u(p: *const u8, at: usize, h: usize) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(at + 8 * h) as *const _))
}

#[inline(always)]
unsafe fn bytes_i(p: *const u8, at: usize, h: usize) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(at + 8 * h) as *const _))
}

/// Half `h` of 16 per-row f16 values at `at`.
#[inline(always)]
unsafe fn halves_f16(p: *const u8, at: usize, h: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p.add(at + 16 * h) as *const _))
}

/// Each 32-bit lane of `low` and `high` (values within 16 bits) as one pair of 16-bit values,
/// the operand `vpmaddwd` multiplies pairwise.
#[inline(always)]
unsafe fn pairs16(low: __m256i, high: __m256i) -> __m256i {
    _mm256_blend_epi16::<0xAA>(low, _mm256_slli_epi32(high, 16))
}

#[inline(always)]
unsafe fn prefetch(next_tile: *const u8, at: usize, lines: usize) {
    for i in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(next_tile.add(at + 64 * i) as *const i8);
    }
}

#[inline(always)]
unsafe fn q4k_rows<D: Dot, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[__m256; 2]; C] {
    let low4 = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * q4k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        for h in 0..2 {
            let mut total = [_mm256_setzero_si256(); C];
            for s in 0..8 {
                if h == 0 {
                    prefetch(tile.add(q4k::BYTES), s * 5 * 64, 5);
                }
                // A sub-block's 32 levels (≤ 15) times activations (≤ 127): within 16 bits.
                let mut sum = [D::zero(); C];
                for g in 4 * s..4 * s + 4 {
                    let w = load(tile, q4k::QS + g * 64, h);
                    let (lo, hi) = (_mm256_and_si256(w, low4), _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
                    for j in 0..C {
                        sum[j] = D::add(sum[j], lo, broadcast4(x[j], 8 * g));
                        sum[j] = D::add(sum[j], hi, broadcast4(x[j], 8 * g + 4));
                    }
                }
                let scales = bytes_u(tile, q4k::SCALES + s * ROWS, h);
                let scales = pairs16(scales, scales);
                for j in 0..C {
                    total[j] = _mm256_add_epi32(total[j], D::scaled(sum[j], scales));
                }
            }
            let mut mins = [_mm256_setzero_si256(); C];
            for p in 0..4 {
                let pair = pairs16(bytes_u(tile, q4k::MINS + 2 * p * ROWS, h), bytes_u(tile, q4k::MINS + (2 * p + 1) * ROWS, h));
                for j in 0..C {
                    let sums = _mm256_set1_epi32(*acts[j].pair_sums.get_unchecked(4 * b + p));
                    mins[j] = _mm256_add_epi32(mins[j], _mm256_madd_epi16(pair, sums));
                }
            }
            let (d, dmin) = (halves_f16(tile, q4k::D, h), halves_f16(tile, q4k::DMIN, h));
            for j in 0..C {
                let xd = _mm256_set1_ps(*acts[j].d.get_unchecked(b));
                acc[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[j]), _mm256_mul_ps(d, xd), acc[j][h]);
                acc[j][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins[j]), _mm256_mul_ps(dmin, xd), acc[j][h]);
            }
        }
    }
    acc
}

#[inline(always)]
unsafe fn q6k_rows<D: Dot, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[__m256; 2]; C] {
    let (low4, high2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * q6k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        for h in 0..2 {
            let (mut total, mut offset) = ([_mm256_setzero_si256(); C], [_mm256_setzero_si256(); C]);
            for t in 0..16 {
                if h == 0 {
                    prefetch(tile.add(q6k::BYTES), t * 4 * 64, 4);
                }
                let (w0, w1, hb) = (load(tile, q6k::low(2 * t), h), load(tile, q6k::low(2 * t + 1), h), load(tile, q6k::high(t), h));
                // Each level is its low nibble with its 2 high bits moved to bits 4-5 (0..63).
                let levels = [
                    _mm256_or_si256(_mm256_and_si256(w0, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), high2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w0, 4), low4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), high2)),
                    _mm256_or_si256(_mm256_and_si256(w1, low4), _mm256_and_si256(hb, high2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w1, 4), low4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), high2)),
                ];
                let scales = bytes_i(tile, q6k::SCALES + t * ROWS, h);
                let scales16 = pairs16(scales, scales);
                for j in 0..C {
                    // Two vectors of levels (≤ 63) at a time stay within 16 bits.
                    let first = D::add(D::add(D::zero(), levels[0], broadcast4(x[j], 16 * t)), levels[1], broadcast4(x[j], 16 * t + 4));
                    let second = D::add(D::add(D::zero(), levels[2], broadcast4(x[j], 16 * t + 8)), levels[3], broadcast4(x[j], 16 * t + 12));
                    let product = match D::WIDE_SUMS {
                        // One 32-bit sum per lane, up to 16 · 63 · 127: a 32-bit multiply.
                        true => _mm256_mullo_epi32(_mm256_add_epi32(D::total(first), D::total(second)), scales),
                        false => _mm256_add_epi32(D::scaled(first, scales16), D::scaled(second, scales16)),
                    };
                    total[j] = _mm256_add_epi32(total[j], product);
                }
            }
            // Levels are stored +32: take 32 · Σ_t scale_t · (sum of sub-block t) back off.
            for p in 0..8 {
                let pair = pairs16(bytes_i(tile, q6k::SCALES + 2 * p * ROWS, h), bytes_i(tile, q6k::SCALES + (2 * p + 1) * ROWS, h));
                for j in 0..C {
                    let sums = _mm256_set1_epi32(*acts[j].pair_sums16.get_unchecked(8 * b + p));
                    offset[j] = _mm256_add_epi32(offset[j], _mm256_madd_epi16(pair, sums));
                }
            }
            let d = halves_f16(tile, q6k::D, h);
            for j in 0..C {
                let total = _mm256_sub_epi32(total[j], _mm256_slli_epi32(offset[j], 5));
                let xd = _mm256_set1_ps(*acts[j].d.get_unchecked(b));
                acc[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, xd), acc[j][h]);
            }
        }
    }
    acc
}

/// The 32-value block formats, `F` = 0: Q4_0, 1: Q4_1, 2: Q5_0, 3: Q8_0.
#[inline(always)]
unsafe fn block32_rows<D: Dot, const F: usize, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[__m256; 2]; C] {
    let format = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0][F];
    let (bytes, offset) = (format.tile_bytes(), format.offset());
    let d_at = [b32::D4, b32::D4, b32::D5, b32::D8][F];
    let (low4, bit4) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * bytes);
        prefetch(tile.add(8 * bytes), 0, bytes.div_ceil(64));
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QB..].as_ptr());
        for h in 0..2 {
            let (mut a, mut c) = ([_mm256_setzero_si256(); C], [_mm256_setzero_si256(); C]);
            if F == 3 {
                for g in 0..8 {
                    let w = load(tile, b32::QS + g * 64, h);
                    for j in 0..C {
                        match g % 2 {
                            0 => a[j] = D::dot_wide(a[j], w, broadcast4(x[j], 4 * g)),
                            _ => c[j] = D::dot_wide(c[j], w, broadcast4(x[j], 4 * g)),
                        }
                    }
                }
            } else {
                let (mut lo_sum, mut hi_sum) = ([D::zero(); C], [D::zero(); C]);
                let high = if F == 2 { load(tile, b32::QH5, h) } else { _mm256_setzero_si256() };
                for g in 0..4 {
                    let w = load(tile, b32::QS + g * 64, h);
                    let (mut lo, mut hi) = (_mm256_and_si256(w, low4), _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
                    if F == 2 {
                        // Bits 2g and 2g + 1 of each byte of `high` to bit 4.
                        let to_bit4 = |bit: u32| match bit {
                            0 => _mm256_slli_epi16(high, 4),
                            1 => _mm256_slli_epi16(high, 3),
                            2 => _mm256_slli_epi16(high, 2),
                            3 => _mm256_slli_epi16(high, 1),
                            4 => high,
                            5 => _mm256_srli_epi16(high, 1),
                            6 => _mm256_srli_epi16(high, 2),
                            _ => _mm256_srli_epi16(high, 3),
                        };
                        lo = _mm256_or_si256(lo, _mm256_and_si256(to_bit4(2 * g as u32), bit4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(to_bit4(2 * g as u32 + 1), bit4));
                    }
                    for j in 0..C {
                        lo_sum[j] = D::add(lo_sum[j], lo, broadcast4(x[j], 8 * g));
                        hi_sum[j] = D::add(hi_sum[j], hi, broadcast4(x[j], 8 * g + 4));
                    }
                }
                // 16 levels (≤ 31) times activations per sum: within 16 bits.
                for j in 0..C {
                    (a[j], c[j]) = (D::total(lo_sum[j]), D::total(hi_sum[j]));
                }
            }
            let d = halves_f16(tile, d_at, h);
            let m = if F == 1 { halves_f16(tile, b32::M4, h) } else { _mm256_setzero_ps() };
            for j in 0..C {
                let sum = *acts[j].sums.get_unchecked(2 * b) + *acts[j].sums.get_unchecked(2 * b + 1);
                let total = _mm256_sub_epi32(_mm256_add_epi32(a[j], c[j]), _mm256_set1_epi32(offset * sum));
                let xd = *acts[j].d.get_unchecked(b);
                acc[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, _mm256_set1_ps(xd)), acc[j][h]);
                if F == 1 {
                    acc[j][h] = _mm256_fmadd_ps(m, _mm256_set1_ps(xd * sum as f32), acc[j][h]);
                }
            }
        }
    }
    acc
}
