//! AVX512 attention. Scores: the query stays in registers while eight keys are multiplied at once, each
//! into its own accumulator, so the dot products overlap instead of each waiting on its own
//! chain of adds. Weighted values: the output row stays in registers.
use std::arch::x86_64::*;

/// [`super::score_keys`] for a head of `16 · V` values.
///
/// # Safety
/// AVX512F is available; `query` holds `16 · V` values and `keys` every key of `scores`.
pub(super) unsafe fn score_keys<const V: usize>(query: &[f32], keys: &[f32], stride: usize, scale: f32, scores: &mut [f32]) {
    debug_assert_eq!(query.len(), 16 * V);
    let q: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(query.as_ptr().add(16 * c)));
    let keys = keys.as_ptr();
    let mut j = 0;
    while j + 8 <= scores.len() {
        let dots = dots::<V, 8>(&q, keys.add(j * stride), stride);
        for (score, dot) in scores[j..j + 8].iter_mut().zip(dots) {
            *score = dot * scale;
        }
        j += 8;
    }
    for (j, score) in scores.iter_mut().enumerate().skip(j) {
        *score = dots::<V, 1>(&q, keys.add(j * stride), stride)[0] * scale;
    }
}

/// `N` keys from `keys` on: each dot product is the same chain of multiply-adds and the same
/// reduction however many are computed together, so a score never depends on its neighbours.
#[inline(always)]
unsafe fn dots<const V: usize, const N: usize>(q: &[__m512; V], keys: *const f32, stride: usize) -> [f32; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for (c, &q) in q.iter().enumerate() {
        for (n, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(keys.add(n * stride + 16 * c)), *acc);
        }
    }
    acc.map(|acc| _mm512_reduce_add_ps(acc))
}

/// [`super::add_weighted`] for a head of `16 · V` values: the sums stay in registers.
///
/// # Safety
/// AVX512F is available; `out` holds `16 · V` values and `values` one for every weight.
pub(super) unsafe fn add_weighted<const V: usize>(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), 16 * V);
    let mut acc: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(out.as_ptr().add(16 * c)));
    let values = values.as_ptr();
    for (j, &p) in p.iter().enumerate() {
        let p = _mm512_set1_ps(p);
        for (c, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(p, _mm512_loadu_ps(values.add(j * stride + 16 * c)), *acc);
        }
    }
    for (c, acc) in acc.into_iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), acc);
    }
}
