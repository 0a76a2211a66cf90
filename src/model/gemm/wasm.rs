//! The wasm SIMD128 tile. SIMD128 has no 8-bit dot product, so a quad of weight rows (4
//! levels of 4 rows, 16 bytes) is widened to 16 bits and multiplied with the 4 broadcast
//! activations by `i32x4.dot_i16x8_s`, which leaves each row's sum in two lanes (one per
//! pair of values); the pairs are added once per block, when the scales are applied.
use super::{Tile, BLOCK, ROWS, TILE_BLOCK};
use core::arch::wasm32::*;

/// `out[j][row]` = weight row `row` of the tile · activation row `j`.
pub fn tile<const C: usize>(tile: &Tile<'_>, out: &mut [[f32; ROWS]; C]) {
    let (cols, blocks) = (tile.cols, tile.cols / BLOCK);
    let zero = i32x4_splat(0);
    let mut acc = [[f32x4_splat(0.0); 4]; C];
    // Per activation row, per quad of weight rows: two rows' pair sums in each vector.
    let mut sums = [[zero; 8]; C];
    let flush = |acc: &mut [[v128; 4]; C], sums: &mut [[v128; 8]; C], b: usize, half: usize| {
        let at = (2 * b + half) * ROWS;
        for j in 0..C {
            let d = f32x4_splat(tile.d[j * blocks + b]);
            let sum = f32x4_splat(tile.sum(j, b, half));
            for q in 0..4 {
                let (p, r) = (sums[j][2 * q], sums[j][2 * q + 1]);
                let rows = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(p, r), i32x4_shuffle::<1, 3, 5, 7>(p, r));
                // SAFETY: `check` made sure scales and mins hold whole tiles.
                let (scales, mins) = unsafe {
                    (v128_load(tile.scales.as_ptr().add(at + 4 * q).cast()), v128_load(tile.mins.as_ptr().add(at + 4 * q).cast()))
                };
                let scaled = f32x4_mul(f32x4_mul(f32x4_convert_i32x4(rows), scales), d);
                acc[j][q] = f32x4_add(acc[j][q], f32x4_add(scaled, f32x4_mul(mins, sum)));
                sums[j][2 * q] = zero;
                sums[j][2 * q + 1] = zero;
            }
        }
    };
    for b in 0..blocks {
        for g in 0..8 {
            let mut a = [zero; C];
            for (j, a) in a.iter_mut().enumerate() {
                // SAFETY: `check` made sure the tile has C activation rows of `cols` values.
                let four = unsafe { tile.x.as_ptr().add(j * cols + b * BLOCK + 4 * g).cast::<i32>().read_unaligned() };
                *a = i16x8_extend_low_i8x16(i32x4_splat(four));
            }
            for q in 0..4 {
                // SAFETY: as above, for the levels.
                let w = unsafe { v128_load(tile.levels.as_ptr().add(b * TILE_BLOCK + g * 4 * ROWS + 16 * q).cast()) };
                let (low, high) = (u16x8_extend_low_u8x16(w), u16x8_extend_high_u8x16(w));
                for j in 0..C {
                    sums[j][2 * q] = i32x4_add(sums[j][2 * q], i32x4_dot_i16x8(low, a[j]));
                    sums[j][2 * q + 1] = i32x4_add(sums[j][2 * q + 1], i32x4_dot_i16x8(high, a[j]));
                }
            }
            if g == 3 && tile.halves {
                flush(&mut acc, &mut sums, b, 0);
            }
        }
        flush(&mut acc, &mut sums, b, tile.halves as usize);
    }
    for j in 0..C {
        for q in 0..4 {
            // SAFETY: `out[j]` has 16 entries.
            unsafe { v128_store(out[j].as_mut_ptr().add(4 * q).cast(), acc[j][q]) };
        }
    }
}
