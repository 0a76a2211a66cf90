//! x86-64 tiles. The decoded tile puts 4 consecutive levels of each of 16 weight rows side
//! by side (64 bytes); 4 activation bytes broadcast to every 32-bit lane meet them in one
//! unsigned × signed 8-bit dot product per lane, so the lanes accumulate 16 outputs at once.
//! AVX512-VNNI does that in one `vpdpbusd` on 512 bits; AVX-VNNI in two on 256-bit halves;
//! plain AVX2 with `vpmaddubsw` + `vpmaddwd`, and for levels above 127 (Q8_0), whose 16-bit
//! pair sums would saturate, with the top bit split off.
use super::{Tile, BLOCK, ROWS, TILE_BLOCK};
use std::arch::x86_64::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512Vnni,
    AvxVnni,
    Avx2,
}

impl Kernel {
    /// Activation rows per call: what the registers hold alongside the accumulators.
    pub fn cols(self) -> usize {
        match self {
            Self::Avx512Vnni => 4,
            _ => 2,
        }
    }

    /// # Safety
    /// The CPU has the kernel's features (`detect` returned it), and `tile.check(C)` passed.
    pub unsafe fn run<const C: usize>(self, tile: &Tile<'_>, wide: bool, out: &mut [[f32; ROWS]; C]) {
        match (self, wide) {
            (Self::Avx512Vnni, _) => tile_avx512vnni(tile, out),
            (Self::AvxVnni, _) => tile_avxvnni(tile, out),
            (Self::Avx2, false) => tile_avx2(tile, out),
            (Self::Avx2, true) => tile_avx2_wide(tile, out),
        }
    }
}

/// 4 activation bytes at `p`, in every 32-bit lane.
#[inline(always)]
unsafe fn broadcast4(p: *const i8) -> i32 {
    p.cast::<i32>().read_unaligned()
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn tile_avx512vnni<const C: usize>(tile: &Tile<'_>, out: &mut [[f32; ROWS]; C]) {
    let (cols, blocks) = (tile.cols, tile.cols / BLOCK);
    let (levels, x) = (tile.levels.as_ptr(), tile.x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); C];
    let mut sums = [_mm512_setzero_si512(); C];
    // Scales (× the activation scale) and mins of one half-block into the float sums.
    let flush = |acc: &mut [__m512; C], sums: &mut [__m512i; C], b: usize, half: usize| {
        let at = (2 * b + half) * ROWS;
        let scales = _mm512_loadu_ps(tile.scales.as_ptr().add(at));
        let mins = _mm512_loadu_ps(tile.mins.as_ptr().add(at));
        for j in 0..C {
            let d = _mm512_set1_ps(*tile.d.get_unchecked(j * blocks + b));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[j]), _mm512_mul_ps(scales, d), acc[j]);
            acc[j] = _mm512_fmadd_ps(mins, _mm512_set1_ps(tile.sum(j, b, half)), acc[j]);
            sums[j] = _mm512_setzero_si512();
        }
    };
    for b in 0..blocks {
        for g in 0..8 {
            let w = _mm512_loadu_si512(levels.add(b * TILE_BLOCK + g * 4 * ROWS).cast());
            for j in 0..C {
                let a = _mm512_set1_epi32(broadcast4(x.add(j * cols + b * BLOCK + 4 * g)));
                sums[j] = _mm512_dpbusd_epi32(sums[j], w, a);
            }
            if g == 3 && tile.halves {
                flush(&mut acc, &mut sums, b, 0);
            }
        }
        flush(&mut acc, &mut sums, b, tile.halves as usize);
    }
    for j in 0..C {
        _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]);
    }
}

macro_rules! tile_256 {
    ($name:ident, $features:literal, $dot:ident) => {
        /// The 16 rows as two 256-bit halves (rows 0–7, 8–15).
        #[target_feature(enable = $features)]
        unsafe fn $name<const C: usize>(tile: &Tile<'_>, out: &mut [[f32; ROWS]; C]) {
            let (cols, blocks) = (tile.cols, tile.cols / BLOCK);
            let (levels, x) = (tile.levels.as_ptr(), tile.x.as_ptr());
            let mut acc = [[_mm256_setzero_ps(); 2]; C];
            let mut sums = [[_mm256_setzero_si256(); 2]; C];
            let flush = |acc: &mut [[__m256; 2]; C], sums: &mut [[__m256i; 2]; C], b: usize, half: usize| {
                let at = (2 * b + half) * ROWS;
                for part in 0..2 {
                    let scales = _mm256_loadu_ps(tile.scales.as_ptr().add(at + 8 * part));
                    let mins = _mm256_loadu_ps(tile.mins.as_ptr().add(at + 8 * part));
                    for j in 0..C {
                        let d = _mm256_set1_ps(*tile.d.get_unchecked(j * blocks + b));
                        let a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j][part]), _mm256_mul_ps(scales, d), acc[j][part]);
                        acc[j][part] = _mm256_fmadd_ps(mins, _mm256_set1_ps(tile.sum(j, b, half)), a);
                        sums[j][part] = _mm256_setzero_si256();
                    }
                }
            };
            for b in 0..blocks {
                for g in 0..8 {
                    let w = levels.add(b * TILE_BLOCK + g * 4 * ROWS);
                    let w = [_mm256_loadu_si256(w.cast()), _mm256_loadu_si256(w.add(32).cast())];
                    for j in 0..C {
                        let a = _mm256_set1_epi32(broadcast4(x.add(j * cols + b * BLOCK + 4 * g)));
                        sums[j][0] = $dot(sums[j][0], w[0], a);
                        sums[j][1] = $dot(sums[j][1], w[1], a);
                    }
                    if g == 3 && tile.halves {
                        flush(&mut acc, &mut sums, b, 0);
                    }
                }
                flush(&mut acc, &mut sums, b, tile.halves as usize);
            }
            for j in 0..C {
                _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j][0]);
                _mm256_storeu_ps(out[j].as_mut_ptr().add(8), acc[j][1]);
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,avxvnni")]
pub(crate) fn dot_avxvnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, w, a)
}

#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn dot_avx2(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)))
}

/// Levels up to 255: the low 7 bits and the top bit (× 128) separately.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn dot_avx2_wide(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let low = _mm256_and_si256(w, _mm256_set1_epi8(0x7F));
    let top = _mm256_and_si256(_mm256_srli_epi16(w, 7), _mm256_set1_epi8(1));
    let low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, a), _mm256_set1_epi16(1));
    let top = _mm256_madd_epi16(_mm256_maddubs_epi16(top, a), _mm256_set1_epi16(128));
    _mm256_add_epi32(acc, _mm256_add_epi32(low, top))
}

tile_256!(tile_avxvnni, "avx2,fma,avxvnni", dot_avxvnni);
tile_256!(tile_avx2, "avx2,fma", dot_avx2);
tile_256!(tile_avx2_wide, "avx2,fma", dot_avx2_wide);
