//! AVX512 attention. Scores: the query (or two) stays in registers while eight (query, key)
//! pairs are multiplied at once, each into its own accumulator, so the dot products overlap
//! instead of each waiting on its own chain of adds. Weighted values: the output rows stay in
//! registers.
use super::KvElem;
use std::arch::x86_64::*;

/// [`super::score_keys`] for a head of `16 · V` values.
///
/// # Safety
/// AVX512F is available; `query` holds `16 · V` values and `keys` every key of `scores`.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub(super) unsafe fn score_keys<E: KvElem, const V: usize>(query: &[f32], keys: &[E], stride: usize, scale: f32, scores: &mut [f32]) {
    debug_assert_eq!(query.len(), 16 * V);
    let q: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(query.as_ptr().add(16 * c)));
    let keys = keys.as_ptr();
    let mut j = 0;
    // A key's score depends only on where it stands in its block of 32 (which keys a query
    // sees is fixed by its position), never on the other queries of a batch.
    while j + 8 <= scores.len() {
        let dots = sums8(products::<E, V, 8>(&q, keys.add(j * stride), stride));
        _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(dots, _mm256_set1_ps(scale)));
        j += 8;
    }
    for (j, score) in scores.iter_mut().enumerate().skip(j) {
        *score = _mm512_reduce_add_ps(products::<E, V, 1>(&q, keys.add(j * stride), stride)[0]) * scale;
    }
}

/// [`score_keys`] for two queries over the same keys, four keys at a time: each key chunk
/// loaded serves both. Every score is reduced by the same [`sums8`] as alone, so it is the
/// same bits; the caller passes only keys in whole groups of eight for both queries.
///
/// # Safety
/// AVX512F is available; both queries hold `16 · V` values, both score lists are as long, a
/// multiple of 4, and `keys` has every key of them.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub(super) unsafe fn score_keys_pair<E: KvElem, const V: usize>(query: [&[f32]; 2], keys: &[E], stride: usize, scale: f32, scores: [&mut [f32]; 2]) {
    debug_assert!(query.iter().all(|q| q.len() == 16 * V) && scores[0].len() == scores[1].len() && scores[0].len() % 4 == 0);
    let load = |q: &[f32]| -> [__m512; V] { std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c))) };
    let (q0, q1) = (load(query[0]), load(query[1]));
    let keys = keys.as_ptr();
    let [scores0, scores1] = scores;
    for j in (0..scores0.len()).step_by(4) {
        let mut acc = [_mm512_setzero_ps(); 8];
        for c in 0..V {
            for n in 0..4 {
                let key = E::load16(keys.add((j + n) * stride + 16 * c));
                acc[n] = _mm512_fmadd_ps(q0[c], key, acc[n]);
                acc[4 + n] = _mm512_fmadd_ps(q1[c], key, acc[4 + n]);
            }
        }
        let dots = _mm256_mul_ps(sums8(acc), _mm256_set1_ps(scale));
        _mm_storeu_ps(scores0.as_mut_ptr().add(j), _mm256_castps256_ps128(dots));
        _mm_storeu_ps(scores1.as_mut_ptr().add(j), _mm256_extractf128_ps::<1>(dots));
    }
}

/// Lane-wise products of the query with `N` keys from `keys` on, summed over the head's
/// chunks of 16 values: one accumulator per key, so the multiply-adds overlap.
#[inline(always)]
unsafe fn products<E: KvElem, const V: usize, const N: usize>(q: &[__m512; V], keys: *const E, stride: usize) -> [__m512; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for (c, &q) in q.iter().enumerate() {
        for (n, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(q, E::load16(keys.add(n * stride + 16 * c)), *acc);
        }
    }
    acc
}

/// The sums of eight vectors' lanes, in one 256-bit vector: halving all eight together takes
/// 22 shuffles and adds where eight separate reductions take about 64.
#[inline(always)]
unsafe fn sums8(a: [__m512; 8]) -> __m256 {
    // Lanes i and i + 8 of two vectors: [x: 8 partial sums | y: 8].
    let halves = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
    let (b01, b23, b45, b67) = (halves(a[0], a[1]), halves(a[2], a[3]), halves(a[4], a[5]), halves(a[6], a[7]));
    // Then i and i + 4: 128-bit lane k holds vector k's 4 partial sums.
    let quarters = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y));
    let (c0, c1) = (quarters(b01, b23), quarters(b45, b67));
    // Within each 128-bit lane k: [k: 2 partials, k + 4: 2 partials], then the last pair.
    let d = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(c0, c1), _mm512_shuffle_ps::<0xDD>(c0, c1));
    let e = _mm512_add_ps(d, _mm512_permute_ps::<0xB1>(d));
    let order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps256(_mm512_permutexvar_ps(order, e))
}

/// [`super::add_weighted`] for a head of `16 · V` values: the sums stay in registers.
///
/// # Safety
/// AVX512F is available; `out` holds `16 · V` values and `values` one for every weight.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub(super) unsafe fn add_weighted<E: KvElem, const V: usize>(p: &[f32], values: &[E], stride: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), 16 * V);
    let mut acc: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(out.as_ptr().add(16 * c)));
    let values = values.as_ptr();
    for (j, &p) in p.iter().enumerate() {
        let p = _mm512_set1_ps(p);
        for (c, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(p, E::load16(values.add(j * stride + 16 * c)), *acc);
        }
    }
    for (c, acc) in acc.into_iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), acc);
    }
}

/// [`add_weighted`] for two queries with weights for the same values: each value is loaded
/// once for both, and each output gets the same multiply-adds in the same order as alone.
///
/// # Safety
/// AVX512F is available; both outputs hold `16 · V` values, both weight lists are as long,
/// and `values` has one value for every weight.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub(super) unsafe fn add_weighted_pair<E: KvElem, const V: usize>(p: [&[f32]; 2], values: &[E], stride: usize, out: [&mut [f32]; 2]) {
    debug_assert!(out[0].len() == 16 * V && out[1].len() == 16 * V && p[0].len() == p[1].len());
    let load = |out: &[f32]| -> [__m512; V] { std::array::from_fn(|c| _mm512_loadu_ps(out.as_ptr().add(16 * c))) };
    let (mut acc0, mut acc1) = (load(out[0]), load(out[1]));
    let values = values.as_ptr();
    for (j, (&p0, &p1)) in p[0].iter().zip(p[1]).enumerate() {
        let (p0, p1) = (_mm512_set1_ps(p0), _mm512_set1_ps(p1));
        for c in 0..V {
            let v = E::load16(values.add(j * stride + 16 * c));
            acc0[c] = _mm512_fmadd_ps(p0, v, acc0[c]);
            acc1[c] = _mm512_fmadd_ps(p1, v, acc1[c]);
        }
    }
    for (out, acc) in out.into_iter().zip([acc0, acc1]) {
        for (c, acc) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), acc);
        }
    }
}
