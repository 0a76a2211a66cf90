//! The KV cache: every layer's keys and values for the positions seen so far, in f32 or in
//! f16 (half the memory). An f16 value is rounded once, when its row is written, so a row is
//! the same bits however it was batched and whether it came from a cached prefix.
use half::f16;

/// How a KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            _ => Err(format!("`{s}` is not a KV cache type: f32 or f16")),
        }
    }
}

/// A value type the attention kernels read keys and values in.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Sixteen values from `p` on, as f32 lanes.
    ///
    /// # Safety
    /// AVX512F is available and 16 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

/// One layer's keys or values, `[position][kv head][head_dim]`, in the cache's type.
#[derive(Clone, Debug)]
pub enum KvValues {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Default for KvValues {
    fn default() -> Self {
        KvValues::F32(Vec::new())
    }
}

impl From<Vec<f32>> for KvValues {
    fn from(v: Vec<f32>) -> Self {
        KvValues::F32(v)
    }
}

/// `$body` with `$v` bound to the vector, whatever its type.
macro_rules! each {
    ($values:expr, $v:ident => $body:expr) => {
        match $values {
            KvValues::F32($v) => $body,
            KvValues::F16($v) => $body,
        }
    };
}

impl KvValues {
    fn empty(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvValues::F32(Vec::new()),
            KvDtype::F16 => KvValues::F16(Vec::new()),
        }
    }

    pub fn dtype(&self) -> KvDtype {
        match self {
            KvValues::F32(_) => KvDtype::F32,
            KvValues::F16(_) => KvDtype::F16,
        }
    }

    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        each!(self, v => v.capacity())
    }

    pub fn truncate(&mut self, len: usize) {
        each!(self, v => v.truncate(len))
    }

    fn reserve_exact(&mut self, extra: usize) {
        each!(self, v => v.reserve_exact(extra))
    }

    fn shrink_to_fit(&mut self) {
        each!(self, v => v.shrink_to_fit())
    }

    /// Appends f32 values, rounded to the cache's type.
    pub fn extend_from_f32(&mut self, values: &[f32]) {
        match self {
            KvValues::F32(v) => v.extend_from_slice(values),
            KvValues::F16(v) => v.extend(values.iter().map(|&x| f16::from_f32(x))),
        }
    }

    /// The value at `i`, as f32.
    pub fn get(&self, i: usize) -> f32 {
        each!(self, v => v[i].to_f32())
    }

    /// The first `len` values, with capacity for `room` more.
    fn prefix(&self, len: usize, room: usize) -> KvValues {
        fn cut<T: Copy>(v: &[T], len: usize, room: usize) -> Vec<T> {
            let kept = &v[..len.min(v.len())];
            let mut copy = Vec::with_capacity(kept.len() + room);
            copy.extend_from_slice(kept);
            copy
        }
        match self {
            KvValues::F32(v) => KvValues::F32(cut(v, len, room)),
            KvValues::F16(v) => KvValues::F16(cut(v, len, room)),
        }
    }
}

/// Keys and values of one layer for every cached position.
#[derive(Default, Clone)]
pub struct LayerKv {
    pub k: KvValues,
    pub v: KvValues,
}

/// Keys and values of every layer for the positions seen so far.
#[derive(Default, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKv>,
    pub(crate) len: usize,
    /// Values per position in one layer (`n_kv * head_dim`); 0 until first used.
    pub(crate) row: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep only the first `len` positions. Each layer is cut by its own length, so this
    /// also repairs a cache whose first layers appended during a pass that then failed.
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.k.truncate(len * self.row);
            layer.v.truncate(len * self.row);
        }
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// A copy of the first `len` positions only (what a request reuses from a cached prefix),
    /// with capacity for `room` more: the request's new positions then append without the
    /// whole cache being moved to a larger allocation.
    pub fn prefix(&self, len: usize, room: usize) -> KvCache {
        let len = len.min(self.len);
        let (n, extra) = (len * self.row, room * self.row);
        KvCache { layers: self.layers.iter().map(|l| LayerKv { k: l.k.prefix(n, extra), v: l.v.prefix(n, extra) }).collect(), len, row: self.row }
    }

    /// Memory held, counting allocated capacity.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| [&l.k, &l.v]).map(|v| v.capacity() * v.dtype().bytes()).sum()
    }

    /// Makes room for `positions` more without moving the cache again for a while: when it
    /// has to grow, it grows by a quarter beyond what is asked.
    pub fn reserve(&mut self, positions: usize) {
        let extra = positions * self.row;
        for v in self.layers.iter_mut().flat_map(|l| [&mut l.k, &mut l.v]) {
            if v.capacity() - v.len() < extra {
                let grow = extra + (v.len() + extra) / 4;
                v.reserve_exact(grow);
            }
        }
    }

    /// Gives back capacity beyond the stored positions (before the cache is kept for reuse)
    /// where it is more than half of them; less is the growth room `reserve` leaves.
    pub fn trim_excess(&mut self) {
        for v in self.layers.iter_mut().flat_map(|l| [&mut l.k, &mut l.v]) {
            if v.capacity() - v.len() > v.len() / 2 {
                v.shrink_to_fit();
            }
        }
    }

    pub(crate) fn prepare(&mut self, n_layer: usize, row: usize, dtype: KvDtype) {
        if self.layers.len() != n_layer || self.row != row || self.layers.first().is_some_and(|l| l.k.dtype() != dtype) {
            self.layers = (0..n_layer).map(|_| LayerKv { k: KvValues::empty(dtype), v: KvValues::empty(dtype) }).collect();
            self.row = row;
            self.len = 0;
        }
    }
}
