//! GGUF weight blocks decoded into what the kernels read: one unsigned 8-bit level per value,
//! and per group of 16 values a scale and a min, so that `value = scale · level + min`
//! exactly as ggml dequantizes it. Formats whose values are `d · (q - offset)` get
//! `min = -offset · d`; formats with their own min (Q4_1, Q5_1, the K-quants) keep it.
use candle_core::quantized::GgmlDType;
use crate::model::gguf::f16_at;

/// Values per scale/min entry. Q6_K scales every 16 values; the other formats every 32, which
/// is written as two equal entries.
pub const GROUP: usize = 16;

/// The formats we decode (the rest stay on candle's kernels).
pub fn supports(dtype: GgmlDType) -> bool {
    layout(dtype).is_some()
}

/// (values per block, bytes per block, largest level).
fn layout(dtype: GgmlDType) -> Option<(usize, usize, u8)> {
    Some(match dtype {
        GgmlDType::Q4_0 => (32, 18, 15),
        GgmlDType::Q4_1 => (32, 20, 15),
        GgmlDType::Q5_0 => (32, 22, 31),
        GgmlDType::Q5_1 => (32, 24, 31),
        GgmlDType::Q8_0 => (32, 34, 255),
        GgmlDType::Q4K => (256, 144, 15),
        GgmlDType::Q5K => (256, 176, 31),
        GgmlDType::Q6K => (256, 210, 63),
        _ => return None,
    })
}

/// Bytes of one row of `cols` values.
pub fn row_bytes(dtype: GgmlDType, cols: usize) -> usize {
    let (values, bytes, _) = layout(dtype).expect("a supported format");
    cols / values * bytes
}

/// Whether levels can exceed 127 (only Q8_0's `q + 128`): kernels whose 16-bit pair sums
/// would saturate then take a slower exact path.
pub fn wide_levels(dtype: GgmlDType) -> bool {
    layout(dtype).is_some_and(|(_, _, max)| max > 127)
}

/// Whether the two 16-value halves of a 32-value block have their own scales (Q6_K).
pub fn scales_per_half(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::Q6K
}

/// Decodes one row: `levels` has `cols` entries, `scales` and `mins` `cols / GROUP`.
pub fn unpack_row(dtype: GgmlDType, row: &[u8], levels: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
    let (values, bytes, _) = layout(dtype).expect("a supported format");
    let groups = values / GROUP;
    for (i, block) in row.chunks_exact(bytes).enumerate() {
        let levels = &mut levels[i * values..][..values];
        let (scales, mins) = (&mut scales[i * groups..][..groups], &mut mins[i * groups..][..groups]);
        match dtype {
            GgmlDType::Q4_0 => {
                let d = f16_at(block, 0);
                nibbles(&block[2..18], levels);
                scales.fill(d);
                mins.fill(-8.0 * d);
            }
            GgmlDType::Q4_1 => {
                nibbles(&block[4..20], levels);
                scales.fill(f16_at(block, 0));
                mins.fill(f16_at(block, 2));
            }
            GgmlDType::Q5_0 => {
                let d = f16_at(block, 0);
                fifth_bits(&block[6..22], u32::from_le_bytes(block[2..6].try_into().unwrap()), levels);
                scales.fill(d);
                mins.fill(-16.0 * d);
            }
            GgmlDType::Q5_1 => {
                fifth_bits(&block[8..24], u32::from_le_bytes(block[4..8].try_into().unwrap()), levels);
                scales.fill(f16_at(block, 0));
                mins.fill(f16_at(block, 2));
            }
            GgmlDType::Q8_0 => {
                let d = f16_at(block, 0);
                for (l, &q) in levels.iter_mut().zip(&block[2..34]) {
                    *l = (q as i8 as i16 + 128) as u8;
                }
                scales.fill(d);
                mins.fill(-128.0 * d);
            }
            GgmlDType::Q4K => q4_k(block, levels, scales, mins),
            GgmlDType::Q5K => q5_k(block, levels, scales, mins),
            GgmlDType::Q6K => q6_k(block, levels, scales, mins),
            _ => unreachable!("checked by layout"),
        }
    }
}

/// ggml's 4-bit layout: value j in the low nibble of byte j, value j + 16 in its high nibble.
fn nibbles(qs: &[u8], levels: &mut [u8]) {
    for (j, &q) in qs.iter().enumerate() {
        levels[j] = q & 0x0F;
        levels[j + 16] = q >> 4;
    }
}

/// Q5_0/Q5_1: the 4-bit layout plus bit j of `qh` as bit 4 of value j.
fn fifth_bits(qs: &[u8], qh: u32, levels: &mut [u8]) {
    nibbles(qs, levels);
    for (j, l) in levels.iter_mut().enumerate() {
        *l |= (((qh >> j) & 1) as u8) << 4;
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = match j < 4 {
        true => (q[j] & 63, q[j + 4] & 63),
        false => ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)),
    };
    (sc as f32, m as f32)
}

/// Q4_K: d, dmin, 12 bytes of packed 6-bit scales and mins, then per 64 values 32 bytes whose
/// low nibbles are the first 32 values and high nibbles the next 32.
fn q4_k(block: &[u8], levels: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let (packed, qs) = (&block[4..16], &block[16..144]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let shift = 4 * (j % 2);
        for l in 0..32 {
            levels[32 * j + l] = (qs[32 * (j / 2) + l] >> shift) & 0x0F;
        }
        scales[2 * j..2 * j + 2].fill(d * sc);
        mins[2 * j..2 * j + 2].fill(-(dmin * m));
    }
}

/// Q5_K: Q4_K's layout plus a fifth bit per value from 32 bytes of `qh`.
fn q5_k(block: &[u8], levels: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let (packed, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let high = (qh[l] >> j) & 1;
            levels[32 * j + l] = ((qs[32 * (j / 2) + l] >> shift) & 0x0F) | high << 4;
        }
        scales[2 * j..2 * j + 2].fill(d * sc);
        mins[2 * j..2 * j + 2].fill(-(dmin * m));
    }
}

/// Q6_K: low nibbles (128 bytes), high 2-bit pairs (64 bytes), 16 signed 8-bit scales, d;
/// `value = d · scale · (q - 32)` per 16 values.
fn q6_k(block: &[u8], levels: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
    let (ql, qh, sc) = (&block[0..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let out = &mut levels[128 * half..];
        for l in 0..32 {
            out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    for g in 0..16 {
        let s = d * sc[g] as i8 as f32;
        scales[g] = s;
        mins[g] = -32.0 * s;
    }
}
