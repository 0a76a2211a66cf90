//! Attention on the GPU (`attention.wgsl`), split across workgroups as flash-decoding does:
//! `attention` reads a KV head's rows once for all the query heads that share it and writes a
//! partial softmax per split of the positions, `combine` merges the splits. Workgroup memory
//! does not grow with the context, so the KV cache is bounded by memory, not by the kernel.
use super::decoder::Params;
use super::{bytes_of, Gpu, Groups, Op};
use crate::{Error, Result};
use std::sync::Arc;

/// Splits per KV head and token at most (the dispatch's workgroups; splits a short context
/// does not need return at once).
const SPLITS: u32 = 8;
/// Positions a split takes at least: each split's partial costs a merge across its threads,
/// and on lavapipe one split per KV head of a 256-token context was no slower than two.
const SPAN: u32 = 256;

/// The two pipelines for one head shape, and the partials they pass between them.
pub struct Attention {
    attention: Arc<wgpu::ComputePipeline>,
    combine: Arc<wgpu::ComputePipeline>,
    part: wgpu::Buffer,
    stats: wgpu::Buffer,
    heads: u32,
    kv_heads: u32,
}

impl Attention {
    /// For `heads` query heads sharing `kv_heads` KV heads of `head_dim` values, and steps of
    /// up to `tokens` tokens.
    pub fn new(gpu: &Gpu, heads: usize, kv_heads: usize, head_dim: usize, tokens: usize) -> Result<Self> {
        if !head_dim.is_multiple_of(4) || head_dim > 128 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Error::Gpu(format!(
                "the attention kernel takes heads of up to 128 values in fours, shared by whole groups of query heads, not {heads} heads of {head_dim} on {kv_heads} KV heads; run on the CPU"
            )));
        }
        let hd4 = head_dim / 4;
        // A software adapter runs a workgroup as one SIMD row of 8 lanes; elsewhere more
        // threads, as many as keep the merge's workgroup memory (WG * HD4 vec4s) at 8 KiB.
        let wg = if gpu.is_software() { 8 } else { (512 / hd4).min(32) };
        let group = heads / kv_heads;
        let key = format!("attention-{hd4}-{group}-{wg}");
        let source = || {
            format!(
                "const HD4: u32 = {hd4}u;\nconst GROUP: u32 = {group}u;\nconst WG: u32 = {wg}u;\nconst SPLITS: u32 = {SPLITS}u;\nconst SPAN: u32 = {SPAN}u;\n{}\n{}",
                include_str!("params.wgsl"),
                include_str!("attention.wgsl")
            )
        };
        let attention = gpu.pipeline(&key, source, "attention");
        let combine = gpu.pipeline(&key, source, "combine");
        let partials = tokens * heads * SPLITS as usize;
        Ok(Self {
            attention,
            combine,
            part: gpu.output("attention partials", partials * head_dim),
            stats: gpu.output("attention partial stats", partials * 2),
            heads: heads as u32,
            kv_heads: kv_heads as u32,
        })
    }

    /// The dispatches of attention of `q` over the caches `k` and `v` into `out`, at the
    /// position and shape in `params` (`Params` with n = head_dim, heads, kv_heads, kv_row, pos).
    pub fn ops(&self, gpu: &Gpu, q: &wgpu::Buffer, k: &wgpu::Buffer, v: &wgpu::Buffer, out: &wgpu::Buffer, params: &wgpu::Buffer) -> [Op; 2] {
        let (part, stats) = (&self.part, &self.stats);
        [
            gpu.op(self.attention.clone(), &[(0, q), (1, k), (2, v), (3, part), (4, stats), (5, params)], Groups::per_token(self.kv_heads * SPLITS))
                .named("attention"),
            gpu.op(self.combine.clone(), &[(3, part), (4, stats), (5, params), (6, out)], Groups::per_token(self.heads)).named("attention combine"),
        ]
    }
}

/// Attention on the GPU of `q` (`tokens` rows of `heads * head_dim`; the shape is
/// `(heads, kv_heads, head_dim)`) at positions
/// `pos..pos + tokens` over caches `k` and `v` (a row of `kv_heads * head_dim` per position,
/// causal: token t sees positions 0..=pos + t), for tests of the kernel.
pub async fn attend(gpu: &Gpu, q: &[f32], k: &[f32], v: &[f32], (heads, kv_heads, head_dim): (usize, usize, usize), pos: usize) -> Result<Vec<f32>> {
    let tokens = q.len() / (heads * head_dim);
    let attention = Attention::new(gpu, heads, kv_heads, head_dim, tokens)?;
    let storage = |label, values: &[f32]| gpu.storage(label, bytes_of(values), wgpu::BufferUsages::empty());
    let (qb, kb, vb) = (storage("q", q)?, storage("k", k)?, storage("v", v)?);
    let out = gpu.output("attention", q.len());
    let params = Params {
        n: head_dim as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        pos: pos as u32,
        kv_row: (kv_heads * head_dim) as u32,
        ..Default::default()
    };
    let params = gpu.uniform("attention", &params.bytes());
    let ops = attention.ops(gpu, &qb, &kb, &vb, &out, &params);
    gpu.run(&[&ops[0], &ops[1]], tokens as u32);
    let got = gpu.read_f32(&out, q.len()).await?;
    gpu.check()?;
    Ok(got)
}
