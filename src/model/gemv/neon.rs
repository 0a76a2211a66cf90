//! aarch64 NEON: each 64-byte tile vector (4 levels of each of 16 weight rows) is taken as
//! four 128-bit quarters of 4 rows, and 4 broadcast activation bytes meet each quarter in one
//! signed 8-bit dot product per 32-bit lane (`sdot`, or plain NEON's widening multiplies:
//! [`Dot`]). `sdot` is signed × signed, so the levels go in as signed bytes: 4 to 6-bit
//! levels as they are (Q6_K's less its 32), Q8_0's `q + 128` as `q` (its top bit flipped),
//! which leaves the integer total of the scalar reference. The float steps are the
//! reference's, fused where it uses `mul_add`, so the results are the same bits.
use super::{b32, q4k, q6k, Format, Row, QB, QK, ROWS};
use crate::model::gemm::neon::{broadcast4, Dot, Plain, Sdot};
use std::arch::aarch64::*;

/// Activation rows per pass over a tile row: one float accumulator per quarter for each, and
/// an integer chain or two while a sub-block is summed, fill the 32 registers at four.
pub const ROWS_PER_PASS: usize = 4;

/// `out[j]` = the 16 weight rows of `tiles` · activation row `acts[j]`, for 1 to 4 rows, with
/// the dot-product extension if `dotprod`.
///
/// # Safety
/// The CPU has the dot-product extension if `dotprod`; `tiles` holds whole tiles and every
/// row covers them (`Row::covers`).
pub(super) unsafe fn tile_rows(dotprod: bool, format: Format, tiles: &[u8], acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    let blocks = tiles.len() / format.tile_bytes();
    match (acts.len(), dotprod) {
        (1, false) => rows_neon::<1>(format, tiles.as_ptr(), blocks, acts, out),
        (2, false) => rows_neon::<2>(format, tiles.as_ptr(), blocks, acts, out),
        (3, false) => rows_neon::<3>(format, tiles.as_ptr(), blocks, acts, out),
        (_, false) => rows_neon::<4>(format, tiles.as_ptr(), blocks, acts, out),
        (1, true) => rows_dotprod::<1>(format, tiles.as_ptr(), blocks, acts, out),
        (2, true) => rows_dotprod::<2>(format, tiles.as_ptr(), blocks, acts, out),
        (3, true) => rows_dotprod::<3>(format, tiles.as_ptr(), blocks, acts, out),
        (_, true) => rows_dotprod::<4>(format, tiles.as_ptr(), blocks, acts, out),
    }
}

#[target_feature(enable = "neon")]
unsafe fn rows_neon<const C: usize>(format: Format, tiles: *const u8, blocks: usize, acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    rows::<Plain, C>(format, tiles, blocks, acts, out)
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_dotprod<const C: usize>(format: Format, tiles: *const u8, blocks: usize, acts: &[Row<'_>], out: &mut [[f32; ROWS]]) {
    rows::<Sdot, C>(format, tiles, blocks, acts, out)
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
        for (q, acc) in acc.into_iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(4 * q), acc);
        }
    }
}

#[inline(always)]
unsafe fn load(p: *const u8, at: usize) -> uint8x16_t {
    vld1q_u8(p.add(at))
}

/// 4 per-row bytes at `at` (one quarter's rows) as 32-bit lanes, unsigned or signed.
#[inline(always)]
unsafe fn bytes_u(p: *const u8, at: usize) -> int32x4_t {
    let four = vreinterpret_u8_u32(vdup_n_u32(p.add(at).cast::<u32>().read_unaligned()));
    vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(four))))
}

#[inline(always)]
unsafe fn bytes_i(p: *const u8, at: usize) -> int32x4_t {
    let four = vreinterpret_s8_u32(vdup_n_u32(p.add(at).cast::<u32>().read_unaligned()));
    vmovl_s16(vget_low_s16(vmovl_s8(four)))
}

/// 4 per-row f16 values at `at` (one quarter's rows), exactly converted.
#[inline(always)]
unsafe fn f16x4(p: *const u8, at: usize) -> float32x4_t {
    vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p.add(at))))
}

#[inline(always)]
unsafe fn signed(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

#[inline(always)]
unsafe fn q4k_rows<D: Dot, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[float32x4_t; 4]; C] {
    let low4 = vdupq_n_u8(0x0F);
    let mut acc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * q4k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        let sums: [*const i32; C] = std::array::from_fn(|j| acts[j].sums[b * QK / 16..].as_ptr());
        for q in 0..4 {
            let mut total = [vdupq_n_s32(0); C];
            for s in 0..8 {
                let mut a = [vdupq_n_s32(0); C];
                for g in 4 * s..4 * s + 4 {
                    let w = load(tile, q4k::QS + g * 64 + 16 * q);
                    let (lo, hi) = (signed(vandq_u8(w, low4)), signed(vshrq_n_u8::<4>(w)));
                    for j in 0..C {
                        a[j] = D::dot(D::dot(a[j], lo, broadcast4(x[j].add(8 * g))), hi, broadcast4(x[j].add(8 * g + 4)));
                    }
                }
                let scale = bytes_u(tile, q4k::SCALES + s * ROWS + 4 * q);
                for j in 0..C {
                    total[j] = vmlaq_s32(total[j], a[j], scale);
                }
            }
            let mut mins = [vdupq_n_s32(0); C];
            for s in 0..8 {
                let min = bytes_u(tile, q4k::MINS + s * ROWS + 4 * q);
                for j in 0..C {
                    mins[j] = vmlaq_n_s32(mins[j], min, *sums[j].add(2 * s) + *sums[j].add(2 * s + 1));
                }
            }
            let (d, dmin) = (f16x4(tile, q4k::D + 8 * q), f16x4(tile, q4k::DMIN + 8 * q));
            for j in 0..C {
                let xd = vdupq_n_f32(*acts[j].d.get_unchecked(b));
                acc[j][q] = vfmaq_f32(acc[j][q], vcvtq_f32_s32(total[j]), vmulq_f32(d, xd));
                acc[j][q] = vfmsq_f32(acc[j][q], vcvtq_f32_s32(mins[j]), vmulq_f32(dmin, xd));
            }
        }
    }
    acc
}

#[inline(always)]
unsafe fn q6k_rows<D: Dot, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[float32x4_t; 4]; C] {
    let (low4, high2, bias) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30), vdupq_n_s8(32));
    // Each level is its low nibble with its 2 high bits moved to bits 4-5 (0..63), less 32:
    // the scalar reference's `dot - 32 · sum` within the dot product.
    let level = |low: uint8x16_t, high: uint8x16_t| vsubq_s8(signed(vorrq_u8(low, vandq_u8(high, high2))), bias);
    let mut acc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * q6k::BYTES);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QK..].as_ptr());
        for q in 0..4 {
            let mut total = [vdupq_n_s32(0); C];
            for t in 0..16 {
                let (w0, w1, h) = (load(tile, q6k::low(2 * t) + 16 * q), load(tile, q6k::low(2 * t + 1) + 16 * q), load(tile, q6k::high(t) + 16 * q));
                let levels = [
                    level(vandq_u8(w0, low4), vshlq_n_u8::<4>(h)),
                    level(vshrq_n_u8::<4>(w0), vshlq_n_u8::<2>(h)),
                    level(vandq_u8(w1, low4), h),
                    level(vshrq_n_u8::<4>(w1), vshrq_n_u8::<2>(h)),
                ];
                let scale = bytes_i(tile, q6k::SCALES + t * ROWS + 4 * q);
                for j in 0..C {
                    let a = D::dot(vdupq_n_s32(0), levels[0], broadcast4(x[j].add(16 * t)));
                    let a = D::dot(a, levels[1], broadcast4(x[j].add(16 * t + 4)));
                    let a = D::dot(a, levels[2], broadcast4(x[j].add(16 * t + 8)));
                    let a = D::dot(a, levels[3], broadcast4(x[j].add(16 * t + 12)));
                    total[j] = vmlaq_s32(total[j], a, scale);
                }
            }
            let d = f16x4(tile, q6k::D + 8 * q);
            for j in 0..C {
                let xd = vdupq_n_f32(*acts[j].d.get_unchecked(b));
                acc[j][q] = vfmaq_f32(acc[j][q], vcvtq_f32_s32(total[j]), vmulq_f32(d, xd));
            }
        }
    }
    acc
}

/// The 32-value block formats, `F` = 0: Q4_0, 1: Q4_1, 2: Q5_0, 3: Q8_0.
#[inline(always)]
unsafe fn block32_rows<D: Dot, const F: usize, const C: usize>(tiles: *const u8, blocks: usize, acts: &[Row<'_>; C]) -> [[float32x4_t; 4]; C] {
    let format = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0][F];
    let (bytes, offset) = (format.tile_bytes(), format.offset());
    let d_at = [b32::D4, b32::D4, b32::D5, b32::D8][F];
    let (low4, bit4, top) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x10), vdupq_n_u8(0x80));
    let mut acc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..blocks {
        let tile = tiles.add(b * bytes);
        let x: [*const i8; C] = std::array::from_fn(|j| acts[j].q[b * QB..].as_ptr());
        for q in 0..4 {
            let mut a = [vdupq_n_s32(0); C];
            if F == 3 {
                // `q + 128` with its top bit flipped is `q`: Σ q·x is the reference's
                // Σ (q + 128)·x - 128 · Σ x, so no offset is taken off below.
                for g in 0..8 {
                    let w = signed(veorq_u8(load(tile, b32::QS + g * 64 + 16 * q), top));
                    for j in 0..C {
                        a[j] = D::dot(a[j], w, broadcast4(x[j].add(4 * g)));
                    }
                }
            } else {
                let high = if F == 2 { load(tile, b32::QH5 + 16 * q) } else { vdupq_n_u8(0) };
                for g in 0..4 {
                    let w = load(tile, b32::QS + g * 64 + 16 * q);
                    let (mut lo, mut hi) = (vandq_u8(w, low4), vshrq_n_u8::<4>(w));
                    if F == 2 {
                        // Bits 2g and 2g + 1 of each byte of `high` to bit 4 (a negative count
                        // shifts right).
                        lo = vorrq_u8(lo, vandq_u8(vshlq_u8(high, vdupq_n_s8(4 - 2 * g as i8)), bit4));
                        hi = vorrq_u8(hi, vandq_u8(vshlq_u8(high, vdupq_n_s8(3 - 2 * g as i8)), bit4));
                    }
                    for j in 0..C {
                        a[j] = D::dot(D::dot(a[j], signed(lo), broadcast4(x[j].add(8 * g))), signed(hi), broadcast4(x[j].add(8 * g + 4)));
                    }
                }
            }
            let d = f16x4(tile, d_at + 8 * q);
            let m = if F == 1 { f16x4(tile, b32::M4 + 8 * q) } else { vdupq_n_f32(0.0) };
            for j in 0..C {
                let sum = *acts[j].sums.get_unchecked(2 * b) + *acts[j].sums.get_unchecked(2 * b + 1);
                let total = if F == 3 { a[j] } else { vsubq_s32(a[j], vdupq_n_s32(offset * sum)) };
                let xd = *acts[j].d.get_unchecked(b);
                acc[j][q] = vfmaq_f32(acc[j][q], vcvtq_f32_s32(total), vmulq_f32(d, vdupq_n_f32(xd)));
                if F == 1 {
                    acc[j][q] = vfmaq_f32(acc[j][q], m, vdupq_n_f32(xd * sum as f32));
                }
            }
        }
    }
    acc
}
