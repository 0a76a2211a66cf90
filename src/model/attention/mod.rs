//! Rotary embeddings, the KV cache and causal self-attention, on plain slices.
//!
//! Written by hand rather than with tensor ops for one property: every query row is computed
//! with the same arithmetic in the same order whatever else is in the batch (how many rows,
//! which sequences, how much of the prompt came from a cache). So a prompt served from the
//! prefix cache, a prompt prefilled whole, and a decode step batched with other requests give
//! bit-identical attention outputs. Appending to the cache is amortised O(1), and truncating
//! it is free.
mod kv;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use kv::{KvCache, KvDtype, KvElem, KvValues, LayerKv};

use super::config::{ModelConfig, RopeLayout};
use super::exp::exp;
use rayon::prelude::*;

/// Rotary tables, `[position][head_dim / 2]`.
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    layout: RopeLayout,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32)).collect();
        let angles: Vec<f32> = (0..cfg.context_length).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f)).collect();
        Self { cos: angles.iter().map(|a| a.cos()).collect(), sin: angles.iter().map(|a| a.sin()).collect(), half, layout: cfg.rope_layout }
    }

    /// The tables, `[position][head_dim / 2]` cosines and sines (the GPU backend uploads them).
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates every head of one row (`n_heads * head_dim` values) for position `pos`.
    #[inline(always)]
    pub fn apply(&self, row: &mut [f32], pos: usize) {
        let (cos, sin) = (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        for head in row.chunks_exact_mut(2 * self.half) {
            for i in 0..self.half {
                let (a, b) = match self.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + self.half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// Causal attention of `q` (`rows × n_head × head_dim`, the rows at `positions`) over the
/// cached keys and values (which already include these rows). Grouped-query: query head `h`
/// reads kv head `h / (n_head / n_kv)`. Returns `rows × n_head × head_dim`.
///
/// One task takes one query head through up to `ROWS_PER_TASK` rows, so each cached key it
/// reads from memory serves all of them. Each query still gets exactly the operations it
/// would get alone, in the same order.
pub fn attend(cfg: &ModelConfig, q: &[f32], positions: &[usize], kv: &LayerKv) -> Vec<f32> {
    match (&kv.k, &kv.v) {
        (KvValues::F32(k), KvValues::F32(v)) => attend_over(cfg, q, positions, k, v),
        (KvValues::F16(k), KvValues::F16(v)) => attend_over(cfg, q, positions, k, v),
        _ => unreachable!("a layer's keys and values share one type"),
    }
}

fn attend_over<E: KvElem>(cfg: &ModelConfig, q: &[f32], positions: &[usize], keys: &[E], values: &[E]) -> Vec<f32> {
    const ROWS_PER_TASK: usize = 16;
    let (hd, n_head, n_kv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
    let group = n_head / n_kv;
    let row = n_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let rows = positions.len();
    let chunks = rows.div_ceil(ROWS_PER_TASK);
    // Task t: head t / chunks, rows from (t % chunks) · ROWS_PER_TASK on. Its outputs are
    // `[row][head_dim]` in `by_task`, moved into place at the end.
    let task_rows = |t: usize| {
        let first = (t % chunks) * ROWS_PER_TASK;
        first..(first + ROWS_PER_TASK).min(rows)
    };
    let mut by_task = vec![0f32; q.len()];
    let mut outputs = Vec::with_capacity(n_head * chunks);
    let mut rest = by_task.as_mut_slice();
    for t in 0..n_head * chunks {
        let (this, tail) = std::mem::take(&mut rest).split_at_mut(task_rows(t).len() * hd);
        outputs.push((t, this));
        rest = tail;
    }
    outputs.into_par_iter().for_each(|(t, out)| {
        super::cpu::vectorized(
            #[inline(always)]
            || {
                let h = t / chunks;
                let kv_off = (h / group) * hd;
                let queries: Vec<&[f32]> = task_rows(t).map(|r| &q[(r * n_head + h) * hd..][..hd]).collect();
                let seen: Vec<usize> = task_rows(t).map(|r| positions[r] + 1).collect();
                let longest = seen.iter().copied().max().unwrap_or(0);
                // Keys a block at a time, so each block is read from memory once for every query of
                // the task.
                const KEYS_PER_BLOCK: usize = 32;
                let keys = &keys[kv_off..];
                let mut scores: Vec<Vec<f32>> = seen.iter().map(|&n| vec![0f32; n]).collect();
                for block in (0..longest).step_by(KEYS_PER_BLOCK) {
                    // The keys of this block for a query that sees `seen`.
                    let part = |seen: usize| block.min(seen)..seen.min(block + KEYS_PER_BLOCK);
                    let keys = &keys[block * row..];
                    // Two queries at a time: each key read serves both.
                    for (queries, scores) in queries.chunks(2).zip(scores.chunks_mut(2)) {
                        match (queries, scores) {
                            ([q0, q1], [s0, s1]) => {
                                let (r0, r1) = (part(s0.len()), part(s1.len()));
                                score_keys_pair([q0, q1], keys, row, scale, [&mut s0[r0], &mut s1[r1]]);
                            }
                            (queries, scores) => {
                                let r = part(scores[0].len());
                                score_keys(queries[0], keys, row, scale, &mut scores[0][r]);
                            }
                        }
                    }
                }
                // A loop, not `collect`: `collect`'s own function would not be compiled for the set.
                let mut sums = Vec::with_capacity(scores.len());
                for scores in &mut scores {
                    sums.push(exponentiate(scores));
                }
                let values = &values[kv_off..];
                for block in (0..longest).step_by(KEYS_PER_BLOCK) {
                    // The weights of this block's positions, for a query that sees `p.len()`.
                    let part = |p: &[f32]| -> (usize, usize) { (block.min(p.len()), p.len().min(block + KEYS_PER_BLOCK)) };
                    let values = &values[block * row..];
                    // Two queries at a time: each value read serves both.
                    let mut rows = out.chunks_exact_mut(hd).zip(&scores);
                    while let Some((out0, p0)) = rows.next() {
                        let (a0, b0) = part(p0);
                        match rows.next() {
                            Some((out1, p1)) => {
                                let (a1, b1) = part(p1);
                                add_weighted_pair([&p0[a0..b0], &p1[a1..b1]], values, row, [out0, out1]);
                            }
                            None => add_weighted(&p0[a0..b0], values, row, out0),
                        }
                    }
                }
                for (out, sum) in out.chunks_exact_mut(hd).zip(sums) {
                    let inv = 1.0 / sum;
                    out.iter_mut().for_each(|o| *o *= inv);
                }
            },
        )
    });
    let mut out = vec![0f32; q.len()];
    let mut from = by_task.chunks_exact(hd);
    for t in 0..n_head * chunks {
        for (r, head_out) in task_rows(t).zip(&mut from) {
            out[(r * n_head + t / chunks) * hd..][..hd].copy_from_slice(head_out);
        }
    }
    out
}

/// Whether the attention kernels of the AVX512 set run (elsewhere the plain loops, which
/// give other bits: the whole process uses one or the other).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    super::cpu::KernelSet::active() == super::cpu::KernelSet::Avx512
}

/// `out += Σ_j p[j] · value j`, value `j` being the `out.len()` floats at `values[j · stride..]`,
/// added in order of `j` (so adding a range of positions at a time gives the same sums).
#[inline(always)]
fn add_weighted<E: KvElem>(p: &[f32], values: &[E], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    assert!(p.is_empty() || values.len() >= (p.len() - 1) * stride + hd, "a value for every weight");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the AVX512 set runs only where the CPU has it; the values were checked above.
    match hd {
        _ if !avx512() => {}
        64 => return unsafe { x86::add_weighted::<E, 4>(p, values, stride, out) },
        128 => return unsafe { x86::add_weighted::<E, 8>(p, values, stride, out) },
        _ => {}
    }
    for (j, &p) in p.iter().enumerate() {
        out.iter_mut().zip(&values[j * stride..][..hd]).for_each(|(o, &x)| *o += p * x.to_f32());
    }
}

/// [`add_weighted`] for two queries over the same values, with the same sums: the positions
/// both weigh together, then each one's rest.
#[inline(always)]
fn add_weighted_pair<E: KvElem>(p: [&[f32]; 2], values: &[E], stride: usize, out: [&mut [f32]; 2]) {
    let [out0, out1] = out;
    #[cfg(target_arch = "x86_64")]
    let common = p[0].len().min(p[1].len());
    #[cfg(target_arch = "x86_64")]
    if avx512() && common > 0 && out0.len() == out1.len() && matches!(out0.len(), 64 | 128) {
        let hd = out0.len();
        assert!(values.len() >= (common - 1) * stride + hd, "a value for every weight");
        // SAFETY: `avx512()`: the CPU has AVX512F; the values were checked above.
        unsafe {
            match hd {
                64 => x86::add_weighted_pair::<E, 4>([&p[0][..common], &p[1][..common]], values, stride, [&mut *out0, &mut *out1]),
                _ => x86::add_weighted_pair::<E, 8>([&p[0][..common], &p[1][..common]], values, stride, [&mut *out0, &mut *out1]),
            }
        }
        add_weighted(&p[0][common..], &values[common * stride..], stride, out0);
        add_weighted(&p[1][common..], &values[common * stride..], stride, out1);
        return;
    }
    add_weighted(p[0], values, stride, out0);
    add_weighted(p[1], values, stride, out1);
}

/// `scores[j] = scale · (query · key j)`, key `j` being the `query.len()` floats at
/// `keys[j · stride..]`.
#[inline(always)]
fn score_keys<E: KvElem>(query: &[f32], keys: &[E], stride: usize, scale: f32, scores: &mut [f32]) {
    let hd = query.len();
    assert!(scores.is_empty() || keys.len() >= (scores.len() - 1) * stride + hd, "keys for every score");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the AVX512 set runs only where the CPU has it; the keys were checked above.
    match hd {
        _ if !avx512() => {}
        64 => return unsafe { x86::score_keys::<E, 4>(query, keys, stride, scale, scores) },
        128 => return unsafe { x86::score_keys::<E, 8>(query, keys, stride, scale, scores) },
        _ => {}
    }
    for (j, score) in scores.iter_mut().enumerate() {
        *score = dot(query, &keys[j * stride..][..hd]) * scale;
    }
}

/// [`score_keys`] for two queries, with the same scores: the keys both see in whole groups
/// of eight together, then each one's rest.
#[inline(always)]
fn score_keys_pair<E: KvElem>(query: [&[f32]; 2], keys: &[E], stride: usize, scale: f32, scores: [&mut [f32]; 2]) {
    let [s0, s1] = scores;
    // `score_keys` reduces keys in groups of eight from the first on, the rest one by one.
    #[cfg(target_arch = "x86_64")]
    let common = s0.len().min(s1.len()) / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    if avx512() && common > 0 && query[0].len() == query[1].len() && matches!(query[0].len(), 64 | 128) {
        assert!(keys.len() >= (common - 1) * stride + query[0].len(), "keys for every score");
        // SAFETY: `avx512()`: the CPU has AVX512F; the keys were checked above.
        unsafe {
            match query[0].len() {
                64 => x86::score_keys_pair::<E, 4>(query, keys, stride, scale, [&mut s0[..common], &mut s1[..common]]),
                _ => x86::score_keys_pair::<E, 8>(query, keys, stride, scale, [&mut s0[..common], &mut s1[..common]]),
            }
        }
        let rest = keys.get(common * stride..).unwrap_or_default();
        score_keys(query[0], rest, stride, scale, &mut s0[common..]);
        score_keys(query[1], rest, stride, scale, &mut s1[common..]);
        return;
    }
    score_keys(query[0], keys, stride, scale, s0);
    score_keys(query[1], keys, stride, scale, s1);
}

/// `e^(s - max)` for each score, in place; returns their sum (the softmax's denominator).
#[inline(always)]
fn exponentiate(scores: &mut [f32]) -> f32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    sum(scores)
}

/// The sum of `values` in sixteen interleaved partial sums (vectorises; the order is fixed).
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a += v);
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with eight independent accumulators (vectorises; the order is fixed).
#[inline(always)]
fn dot<E: KvElem>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k].to_f32();
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y.to_f32()).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n_head: usize, n_kv: usize, hd: usize, layout: RopeLayout) -> ModelConfig {
        ModelConfig {
            arch: "test".into(),
            n_ff: 8,
            n_layer: 1,
            n_embd: n_head * hd,
            n_head,
            n_head_kv: n_kv,
            head_dim: hd,
            context_length: 64,
            rms_eps: 1e-6,
            rope_base: 10000.0,
            rope_layout: layout,
            qkv_bias: false,
        }
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Attention written the textbook way, in f64.
    fn reference(cfg: &ModelConfig, q: &[f32], positions: &[usize], kv: &LayerKv) -> Vec<f32> {
        let (hd, n_head, n_kv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let mut out = vec![0f32; q.len()];
        for (r, &p) in positions.iter().enumerate() {
            for h in 0..n_head {
                let g = h / (n_head / n_kv);
                let qv = &q[(r * n_head + h) * hd..][..hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = (j * n_kv + g) * hd;
                        qv.iter().enumerate().map(|(d, a)| *a as f64 * kv.k.get(k + d) as f64).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let y: f64 = (0..=p).map(|j| e[j] / z * kv.v.get((j * n_kv + g) * hd + d) as f64).sum();
                    out[(r * n_head + h) * hd + d] = y as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_textbook_and_is_batch_invariant() {
        // Head sizes of the portable and the SIMD paths; more rows than one task takes and
        // more positions than one block of keys; caches of both types (the textbook reads
        // the f16 cache's rounded values).
        for dtype in [KvDtype::F32, KvDtype::F16] {
            for (n_head, n_kv, hd, len) in [(4, 2, 16, 10), (4, 2, 64, 40), (2, 1, 128, 45), (3, 3, 48, 7)] {
                let c = cfg(n_head, n_kv, hd, RopeLayout::Halves);
                let (q_row, kv_row) = (n_head * hd, n_kv * hd);
                let mut cache = KvCache::default();
                cache.prepare(1, kv_row, dtype);
                let kv = &mut cache.layers[0];
                kv.k.extend_from_f32(&pseudo_random(len * kv_row, 1));
                kv.v.extend_from_f32(&pseudo_random(len * kv_row, 2));
                let kv = &*kv;
                let q = pseudo_random(len * q_row, 3);
                let positions: Vec<usize> = (0..len).collect();
                let all = attend(&c, &q, &positions, kv);
                let expected = reference(&c, &q, &positions, kv);
                for (a, b) in all.iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-5, "{dtype:?}, head size {hd}: {a} vs {b}");
                }
                // The last row alone (a decode step after a cached prefix) and the prompt in two
                // pieces (a cached prefix, then the rest) give the same bits.
                let last = attend(&c, &q[(len - 1) * q_row..], &[len - 1], kv);
                assert_eq!(last, all[(len - 1) * q_row..], "{dtype:?}, head size {hd}: the last row alone");
                let cut = len / 3;
                let rest = attend(&c, &q[cut * q_row..], &positions[cut..], kv);
                assert_eq!(rest, all[cut * q_row..], "{dtype:?}, head size {hd}: rows after a cached prefix");
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position_in_both_layouts() {
        // head_dim 4: pair 0 turns by pos radians (inv_freq 1), pair 1 by pos / 100.
        for (layout, pairs) in [(RopeLayout::Interleaved, [(0, 1), (2, 3)]), (RopeLayout::Halves, [(0, 2), (1, 3)])] {
            let rope = Rope::new(&cfg(1, 1, 4, layout));
            let x = [1.0f32, 2.0, 3.0, 4.0];
            let mut row = x;
            rope.apply(&mut row, 0);
            assert_eq!(row, x, "position 0 is the identity");
            rope.apply(&mut row, 5);
            for ((a, b), angle) in pairs.into_iter().zip([5.0f32, 0.05]) {
                let (c, s) = (angle.cos(), angle.sin());
                assert!((row[a] - (x[a] * c - x[b] * s)).abs() < 1e-5);
                assert!((row[b] - (x[a] * s + x[b] * c)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn truncate_and_clear_cut_every_layer() {
        let mut kv = KvCache::default();
        kv.prepare(2, 3, KvDtype::F16);
        for l in &mut kv.layers {
            l.k.extend_from_f32(&[0.0; 12]);
            l.v.extend_from_f32(&[0.0; 12]);
        }
        kv.len = 4;
        let head = kv.prefix(3, 2);
        assert_eq!((head.len(), head.layers[0].k.len(), head.layers[1].v.len()), (3, 9, 9));
        assert!(head.layers[0].k.capacity() >= 15, "room for 2 more positions");
        assert_eq!(head.bytes(), 2 * 2 * head.layers[0].k.capacity() * 2, "f16: two bytes a value");
        kv.truncate(2);
        assert_eq!((kv.len(), kv.layers[0].k.len(), kv.layers[1].v.len()), (2, 6, 6));
        kv.clear();
        assert!(kv.is_empty() && kv.layers[0].k.is_empty());
    }
}
