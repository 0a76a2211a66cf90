//! AVX512-VNNI: one `vpdpbusd` multiplies 4 levels of each of 16 weight rows (64 bytes) by
//! 4 broadcast activation bytes into 16 row sums.
use super::{b32, q4k, q6k, Format, Row, QB, QK, ROWS};
use std::arch::x86_64::*;

/// Activation rows per pass over a tile row: the tile's levels are unpacked once for all of
/// them, and each row still gets exactly the operations it would get alone. Twelve, a
/// consult's worth: the tile row is then streamed from memory under a single pass's
/// multiply-adds. 8 + 4 rows took 7% longer on one core of a Zen 4 (2% on two); in a
/// profile the 8-row pass, which met each tile row first, cost more per row than the 4-row
/// pass after it. More would not fit: each row keeps two sums in registers.
pub const ROWS_PER_PASS: usize = 12;

/// `out[j]` = the 16 weight rows of `tiles` · activation row `acts[j]`, for 1 to 12 rows.
///
/// # Safety
/// The CPU has AVX512F/BW/VNNI; `tiles` holds whole tiles and every row covers them (`Row::covers`).
pub(super) unsafe fn tile_rows(format: Format, tiles: &[u8], acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    match acts.len() {
        1 => tile_rows_n::<1>(format, tiles, acts, out),
        2 => tile_rows_n::<2>(format, tiles, acts, out),
        3 => tile_rows_n::<3>(format, tiles, acts, out),
        4 => tile_rows_n::<4>(format, tiles, acts, out),
        5 => tile_rows_n::<5>(format, tiles, acts, out),
        6 => tile_rows_n::<6>(format, tiles, acts, out),
        7 => tile_rows_n::<7>(format, tiles, acts, out),
        8 => tile_rows_n::<8>(format, tiles, acts, out),
        9 => tile_rows_n::<9>(format, tiles, acts, out),
        10 => tile_rows_n::<10>(format, tiles, acts, out),
        11 => tile_rows_n::<11>(format, tiles, acts, out),
        _ => tile_rows_n::<12>(format, tiles, acts, out),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn tile_rows_n<const C: usize>(format: Format, tiles: &[u8], acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    let blocks = tiles.len() / format.tile_bytes();
    let acts: &[Row<'_>; C] = acts.try_into().expect("C activation rows");
    let t = tiles.as_ptr();
    let acc = match format {
        Format::Q4K => q4k_rows(t, blocks, acts),
        Format::Q6K => q6k_rows(t, blocks, acts),
        Format::Q4_0 => block32_rows::<0, C>(t, blocks, acts),
        Format::Q4_1 => block32_rows::<1, C>(t, blocks, acts),
        Format::Q5_0 => block32_rows::<2, C>(t, blocks, acts),
        Format::Q8_0 => block32_rows::<3, C>(t, blocks, acts),
    };
    for (out, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }
}

#[inline(always)]
unsafe fn broadcast4(x: *const i8, at: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(x.add(at) as *const i32))
}

/// Asks for `lines` cache lines of the next tile from `at` on: the tile layout interleaves
/// several short streams, which the hardware prefetchers follow poorly.
#[inline(always)]
unsafe fn prefetch(next_tile: *const u8, at: usize, lines: usize) {
    for i in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(next_tile.add(at + 64 * i) as *const i8);
    }
}

/// Each 32-bit lane of `low` and `high` (values within 16 bits) as one pair of 16-bit values,
/// the operand `vpdpwssd` multiplies pairwise.
#[inline(always)]
unsafe fn pairs16(low: __m512i, high: __m512i) -> __m512i {
    _mm512_or_si512(_mm512_and_si512(low, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(high, 16))
}

#[inline(always)]
unsafe fn load(p: *const u8, at: usize) -> __m512i {
    _mm512_loadu_si512(p.add(at) as *const _)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4k_rows<const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [__m512; C] {
    let low4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..blocks {
        let tile = tiles.add(b * q4k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        let mut total = [_mm512_setzero_si512(); C];
        for s in 0..8 {
            prefetch(tile.add(q4k::BYTES), s * 5 * 64, 5);
            // Two chains per row (low and high nibbles) so consecutive dot products do not
            // wait on each other.
            let (mut a, mut c) = ([_mm512_setzero_si512(); C], [_mm512_setzero_si512(); C]);
            for g in 4 * s..4 * s + 4 {
                let w = load(tile, q4k::QS + g * 64);
                let (lo, hi) = (_mm512_and_si512(w, low4), _mm512_and_si512(_mm512_srli_epi16(w, 4), low4));
                for j in 0..C {
                    a[j] = _mm512_dpbusd_epi32(a[j], lo, broadcast4(x[j], 8 * g));
                    c[j] = _mm512_dpbusd_epi32(c[j], hi, broadcast4(x[j], 8 * g + 4));
                }
            }
            // Each chain sums 16 levels (≤ 15) times activations (≤ 127): it fits 16 bits, so
            // both chains take the sub-block's scale in one 16-bit multiply-add.
            let scales = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(q4k::SCALES + s * ROWS) as *const _));
            let scales = pairs16(scales, scales);
            for j in 0..C {
                let pair = _mm512_mask_blend_epi16(0xAAAA_AAAA, a[j], _mm512_slli_epi32(c[j], 16));
                total[j] = _mm512_dpwssd_epi32(total[j], pair, scales);
            }
        }
        // Σ_s min_s · (sum of sub-block s): sub-blocks two at a time as 16-bit pairs.
        let mut mins = [_mm512_setzero_si512(); C];
        for p in 0..4 {
            let min = |s: usize| _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(q4k::MINS + s * ROWS) as *const _));
            let pair = pairs16(min(2 * p), min(2 * p + 1));
            for j in 0..C {
                mins[j] = _mm512_dpwssd_epi32(mins[j], pair, _mm512_set1_epi32(*acts[j].pair_sums.get_unchecked(4 * b + p)));
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(q4k::D) as *const _));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(q4k::DMIN) as *const _));
        for j in 0..C {
            let xd = _mm512_set1_ps(*acts[j].d.get_unchecked(b));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[j]), _mm512_mul_ps(d, xd), acc[j]);
            acc[j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins[j]), _mm512_mul_ps(dmin, xd), acc[j]);
        }
    }
    acc
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q6k_rows<const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [__m512; C] {
    let (low4, high2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..blocks {
        let tile = tiles.add(b * q6k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        let (mut total, mut offset) = ([_mm512_setzero_si512(); C], [_mm512_setzero_si512(); C]);
        for t in 0..16 {
            prefetch(tile.add(q6k::BYTES), t * 4 * 64, 4);
            let (w0, w1, h) = (load(tile, q6k::low(2 * t)), load(tile, q6k::low(2 * t + 1)), load(tile, q6k::high(t)));
            // Each level is its low nibble with its 2 high bits moved to bits 4-5 (0..63).
            let levels = [
                _mm512_or_si512(_mm512_and_si512(w0, low4), _mm512_and_si512(_mm512_slli_epi16(h, 4), high2)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w0, 4), low4), _mm512_and_si512(_mm512_slli_epi16(h, 2), high2)),
                _mm512_or_si512(_mm512_and_si512(w1, low4), _mm512_and_si512(h, high2)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w1, 4), low4), _mm512_and_si512(_mm512_srli_epi16(h, 2), high2)),
            ];
            let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(tile.add(q6k::SCALES + t * ROWS) as *const _));
            for j in 0..C {
                let a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), levels[0], broadcast4(x[j], 16 * t));
                let a = _mm512_dpbusd_epi32(a, levels[1], broadcast4(x[j], 16 * t + 4));
                let a = _mm512_dpbusd_epi32(a, levels[2], broadcast4(x[j], 16 * t + 8));
                let a = _mm512_dpbusd_epi32(a, levels[3], broadcast4(x[j], 16 * t + 12));
                total[j] = _mm512_add_epi32(total[j], _mm512_mullo_epi32(a, scales));
            }
        }
        // Levels are stored +32: take 32 · Σ_t scale_t · (sum of sub-block t) back off, the
        // sub-blocks two at a time as 16-bit pairs.
        for p in 0..8 {
            let scale = |t: usize| _mm512_cvtepi8_epi32(_mm_loadu_si128(tile.add(q6k::SCALES + t * ROWS) as *const _));
            let pair = pairs16(scale(2 * p), scale(2 * p + 1));
            for j in 0..C {
                let sums = _mm512_set1_epi32(*acts[j].pair_sums16.get_unchecked(8 * b + p));
                offset[j] = _mm512_dpwssd_epi32(offset[j], pair, sums);
            }
        }
        for j in 0..C {
            total[j] = _mm512_sub_epi32(total[j], _mm512_slli_epi32(offset[j], 5));
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(q6k::D) as *const _));
        for j in 0..C {
            let xd = _mm512_set1_ps(*acts[j].d.get_unchecked(b));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[j]), _mm512_mul_ps(d, xd), acc[j]);
        }
    }
    acc
}

/// The 32-value block formats, `F` = 0: Q4_0, 1: Q4_1, 2: Q5_0, 3: Q8_0 (a constant, so each
/// gets its own loop).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn block32_rows<const F: usize, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [__m512; C] {
    let format = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0][F];
    let (bytes, offset) = (format.tile_bytes(), format.offset());
    let d_at = [b32::D4, b32::D4, b32::D5, b32::D8][F];
    let (low4, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..blocks {
        let tile = tiles.add(b * bytes);
        prefetch(tile.add(8 * bytes), 0, bytes.div_ceil(64));
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QB..].as_ptr());
        let (mut a, mut c) = ([_mm512_setzero_si512(); C], [_mm512_setzero_si512(); C]);
        if F == 3 {
            for g in 0..8 {
                let w = load(tile, b32::QS + g * 64);
                for j in 0..C {
                    match g % 2 {
                        0 => a[j] = _mm512_dpbusd_epi32(a[j], w, broadcast4(x[j], 4 * g)),
                        _ => c[j] = _mm512_dpbusd_epi32(c[j], w, broadcast4(x[j], 4 * g)),
                    }
                }
            }
        } else {
            let h = if F == 2 { load(tile, b32::QH5) } else { _mm512_setzero_si512() };
            for g in 0..4 {
                let w = load(tile, b32::QS + g * 64);
                let (mut lo, mut hi) = (_mm512_and_si512(w, low4), _mm512_and_si512(_mm512_srli_epi16(w, 4), low4));
                if F == 2 {
                    // Bits 2g and 2g + 1 of each byte of `h` to bit 4 (constant shifts once unrolled).
                    let to_bit4 = |bit: u32| match bit {
                        0 => _mm512_slli_epi16(h, 4),
                        1 => _mm512_slli_epi16(h, 3),
                        2 => _mm512_slli_epi16(h, 2),
                        3 => _mm512_slli_epi16(h, 1),
                        4 => h,
                        5 => _mm512_srli_epi16(h, 1),
                        6 => _mm512_srli_epi16(h, 2),
                        _ => _mm512_srli_epi16(h, 3),
                    };
                    lo = _mm512_or_si512(lo, _mm512_and_si512(to_bit4(2 * g as u32), bit4));
                    hi = _mm512_or_si512(hi, _mm512_and_si512(to_bit4(2 * g as u32 + 1), bit4));
                }
                for j in 0..C {
                    a[j] = _mm512_dpbusd_epi32(a[j], lo, broadcast4(x[j], 8 * g));
                    c[j] = _mm512_dpbusd_epi32(c[j], hi, broadcast4(x[j], 8 * g + 4));
                }
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(d_at) as *const _));
        let m = if F == 1 { _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(b32::M4) as *const _)) } else { _mm512_setzero_ps() };
        for j in 0..C {
            let sum = *acts[j].sums.get_unchecked(2 * b) + *acts[j].sums.get_unchecked(2 * b + 1);
            let total = _mm512_sub_epi32(_mm512_add_epi32(a[j], c[j]), _mm512_set1_epi32(offset * sum));
            let xd = *acts[j].d.get_unchecked(b);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, _mm512_set1_ps(xd)), acc[j]);
            if F == 1 {
                acc[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(xd * sum as f32), acc[j]);
            }
        }
    }
    acc
}
