//! Activations to 8 bits, for the integer kernels (`gemv`, `gemm`).

/// Quantizes `block` into `q` with one scale, `amax / 127` (returned): each level is
/// `v / scale` rounded to nearest, ties to even, as ggml's Q8_0 and Q8_K do.
#[inline(always)]
pub fn quantize_block(block: &[f32], q: &mut [i8]) -> f32 {
    // The largest |v| by its bit pattern, which orders like the value and vectorizes.
    let amax = f32::from_bits(block.iter().map(|v| v.to_bits() & 0x7FFF_FFFF).max().unwrap_or(0));
    let scale = amax / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    // Adding 1.5 · 2²³ leaves the rounded integer (within ±127) in the low mantissa bits:
    // unlike `round_ties_even() as i8`, whose saturating conversion stays scalar, this vectorizes.
    const SHIFTER: f32 = 12_582_912.0;
    for (q, &v) in q.iter_mut().zip(block) {
        *q = (v * inverse + SHIFTER).to_bits() as u8 as i8;
    }
    scale
}

#[cfg(test)]
mod tests {
    #[test]
    fn levels_are_rounded_to_nearest_even() {
        let block: Vec<f32> = (-127..=127).map(|i| i as f32 * 0.5).chain([63.25, -0.25, 0.75]).collect();
        let mut q = vec![0i8; block.len()];
        let scale = super::quantize_block(&block, &mut q);
        assert_eq!(scale, 63.5 / 127.0);
        for (&v, &q) in block.iter().zip(&q) {
            assert_eq!(q, (v * (1.0 / scale)).round_ties_even() as i8, "{v}");
        }
        assert_eq!(super::quantize_block(&[0.0; 4], &mut [1; 4]), 0.0);
    }
}
