//! aarch64 NEON tiles. A 64-byte vector of the decoded tile (4 levels of each of 16 weight
//! rows) is four 128-bit registers of 4 rows; 4 activation bytes broadcast to every 32-bit
//! lane meet each in one signed 8-bit dot product per lane: `sdot` with the dot-product
//! extension, else `smull` + `addp` + `sadalp` (see [`Dot`]). The float steps are the scalar
//! reference's, in its order and unfused, so the results are the same bits.
use super::{Tile, BLOCK, ROWS, TILE_BLOCK};
use std::arch::aarch64::*;

/// The signed 8-bit dot product: `acc` + Σ of the 4 products of `w` and `x` bytes in each
/// 32-bit lane. Every product is within ±128 · 127 (activations are within ±127), which the
/// plain kernel relies on: the sum of two fits 16 bits.
pub(crate) trait Dot {
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t;
}

/// Plain NEON: 16 products widened to 16 bits, pairs added in 16 bits, then pairs of pairs
/// into the 32-bit lanes.
pub(crate) struct Plain;

/// The dot-product extension (ARMv8.4, optional from 8.2): `sdot`.
pub(crate) struct Sdot;

impl Dot for Plain {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        let pairs = vpaddq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x)), vmull_high_s8(w, x));
        vpadalq_s16(acc, pairs)
    }
}

impl Dot for Sdot {
    /// Inline assembly: `vdotq_s32` is not a stable intrinsic yet.
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        std::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}

/// 4 activation bytes at `p`, in every 32-bit lane.
#[inline(always)]
pub(crate) unsafe fn broadcast4(p: *const i8) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(p.cast::<i32>().read_unaligned()))
}

/// # Safety
/// `tile.check(C)` passed (NEON is part of every aarch64 CPU).
#[target_feature(enable = "neon")]
pub unsafe fn tile_neon<const C: usize>(tile: &Tile<'_>, wide: bool, out: &mut [[f32; ROWS]; C]) {
    tile_with::<Plain, C>(tile, wide, out)
}

/// # Safety
/// The CPU has the dot-product extension, and `tile.check(C)` passed.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tile_dotprod<const C: usize>(tile: &Tile<'_>, wide: bool, out: &mut [[f32; ROWS]; C]) {
    tile_with::<Sdot, C>(tile, wide, out)
}

/// `out[j][row]` = weight row `row` of the tile · activation row `j`. Levels above 127
/// (`wide`, Q8_0's `q + 128`) are taken as `level - 128`, a signed byte, and 128 · Σ x is
/// added back to the integer sums: the same integers.
#[inline(always)]
unsafe fn tile_with<D: Dot, const C: usize>(tile: &Tile<'_>, wide: bool, out: &mut [[f32; ROWS]; C]) {
    let (cols, blocks) = (tile.cols, tile.cols / BLOCK);
    let (levels, x) = (tile.levels.as_ptr(), tile.x.as_ptr());
    let (zero, ones, flip) = (vdupq_n_s32(0), vdupq_n_s8(1), vdupq_n_u8(if wide { 0x80 } else { 0 }));
    let mut acc = [[vdupq_n_f32(0.0); 4]; C];
    let mut sums = [[zero; 4]; C];
    // Wide levels: Σ x of the half-block so far, in every lane.
    let mut offsets = [zero; C];
    let mut first = [[vdupq_n_f32(0.0); 4]; C];
    // `d · scale · Σ level·x + min · Σx` of one half-block (of the block, with `halves` off),
    // each operation rounded as in `scalar_tile`; the integer sums start over.
    let flush = |sums: &mut [[int32x4_t; 4]; C], offsets: &mut [int32x4_t; C], b: usize, half: usize| {
        let at = (2 * b + half) * ROWS;
        let mut terms = [[vdupq_n_f32(0.0); 4]; C];
        for j in 0..C {
            let d = vdupq_n_f32(*tile.d.get_unchecked(j * blocks + b));
            let sum = vdupq_n_f32(tile.sum(j, b, half));
            let offset = vshlq_n_s32::<7>(offsets[j]);
            for q in 0..4 {
                let total = if wide { vaddq_s32(sums[j][q], offset) } else { sums[j][q] };
                let scales = vld1q_f32(tile.scales.as_ptr().add(at + 4 * q));
                let mins = vld1q_f32(tile.mins.as_ptr().add(at + 4 * q));
                let scaled = vmulq_f32(vmulq_f32(d, scales), vcvtq_f32_s32(total));
                terms[j][q] = vaddq_f32(scaled, vmulq_f32(mins, sum));
                sums[j][q] = zero;
            }
            offsets[j] = zero;
        }
        terms
    };
    for b in 0..blocks {
        for g in 0..8 {
            let a: [int8x16_t; C] = std::array::from_fn(|j| broadcast4(x.add(j * cols + b * BLOCK + 4 * g)));
            for q in 0..4 {
                let w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(levels.add(b * TILE_BLOCK + g * 4 * ROWS + 16 * q)), flip));
                for j in 0..C {
                    sums[j][q] = D::dot(sums[j][q], w, a[j]);
                }
            }
            if wide {
                for j in 0..C {
                    offsets[j] = D::dot(offsets[j], ones, a[j]);
                }
            }
            if g == 3 && tile.halves {
                first = flush(&mut sums, &mut offsets, b, 0);
            }
        }
        // The scalar tile adds a block's two halves together before the running total.
        let last = flush(&mut sums, &mut offsets, b, tile.halves as usize);
        for j in 0..C {
            for q in 0..4 {
                let term = if tile.halves { vaddq_f32(first[j][q], last[j][q]) } else { last[j][q] };
                acc[j][q] = vaddq_f32(acc[j][q], term);
            }
        }
    }
    for j in 0..C {
        for q in 0..4 {
            vst1q_f32(out[j].as_mut_ptr().add(4 * q), acc[j][q]);
        }
    }
}
