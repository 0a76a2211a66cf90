// ---- logit_summary: what the CPU needs of the next-token distribution, so that it reads
// back about a kilobyte instead of the whole vocabulary's logits: the maximum, log Σ exp, the
// entropy, and every logit at or above the `heads`-th largest (up to CAP of them, unordered;
// the CPU sorts them). One workgroup over the n logits. ----
@group(0) @binding(0) var<storage, read> sum_logits: array<f32>;
// [found, max, log Σ exp, entropy, then (id, logit) pairs]; floats as their bits.
@group(0) @binding(1) var<storage, read_write> summary: array<u32>;
@group(0) @binding(2) var<uniform> sum_params: Params;

const THREADS: u32 = 256u;
const CAP: u32 = 128u;
// Logits further than this below the maximum have probability < e^-32 of the top one's
// (TopLogits::SPAN: the CPU drops them too).
const SPAN: f32 = 32.0;
const BINS: u32 = 256u;

var<workgroup> red_m: array<f32, THREADS>;
var<workgroup> red_s: array<f32, THREADS>;
var<workgroup> red_w: array<f32, THREADS>;
var<workgroup> hist: array<atomic<u32>, BINS>;
var<workgroup> found: atomic<u32>;
// The range that holds the wanted-th largest logit, and how many lie above it.
var<workgroup> lo: f32;
var<workgroup> hi: f32;
var<workgroup> above: u32;

// Σ e^(l - m) and Σ e^(l - m)·(l - m) of two sets, each relative to its own maximum m,
// merged relative to the larger maximum.
fn merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
  let m = max(a.x, b.x);
  let ra = exp(a.x - m);
  let rb = exp(b.x - m);
  return vec3<f32>(m, a.y * ra + b.y * rb, ra * (a.z + (a.x - m) * a.y) + rb * (b.z + (b.x - m) * b.y));
}

@compute @workgroup_size(256)
fn logit_summary(@builtin(local_invocation_id) lid: vec3<u32>) {
  let n = sum_params.n;
  let wanted = sum_params.heads;
  let i0 = lid.x;
  // 1. max, Σ e^z and Σ e^z·z (z = l - max) in one pass, online per thread, then a tree.
  var acc = vec3<f32>(-3.0e38, 0.0, 0.0);
  for (var i = i0; i < n; i += THREADS) {
    acc = merge(acc, vec3<f32>(sum_logits[i], 1.0, 0.0));
  }
  red_m[i0] = acc.x;
  red_s[i0] = acc.y;
  red_w[i0] = acc.z;
  if (i0 == 0u) {
    atomicStore(&found, 0u);
  }
  workgroupBarrier();
  for (var stride = THREADS / 2u; stride > 0u; stride >>= 1u) {
    if (i0 < stride) {
      let m = merge(vec3<f32>(red_m[i0], red_s[i0], red_w[i0]), vec3<f32>(red_m[i0 + stride], red_s[i0 + stride], red_w[i0 + stride]));
      red_m[i0] = m.x;
      red_s[i0] = m.y;
      red_w[i0] = m.z;
    }
    workgroupBarrier();
  }
  let top = red_m[0];
  if (i0 == 0u) {
    lo = top - SPAN;
    hi = top + 0.125;
    above = 0u;
  }
  // 2. The wanted-th largest logit: three rounds of a 256-bin histogram over [lo, hi), each
  // narrowing the range to the bin that holds it. With fewer than `wanted` logits in the
  // first range, the range becomes empty at its bottom: all of them are taken.
  for (var round = 0u; round < 3u; round++) {
    atomicStore(&hist[i0], 0u);
    workgroupBarrier();
    let l0 = lo;
    let width = (hi - lo) / f32(BINS);
    if (width > 0.0) {
      for (var i = i0; i < n; i += THREADS) {
        let l = sum_logits[i];
        if (l >= l0 && l < hi) {
          atomicAdd(&hist[min(u32((l - l0) / width), BINS - 1u)], 1u);
        }
      }
    }
    workgroupBarrier();
    if (i0 == 0u && width > 0.0) {
      var seen = above;
      var bin = BINS;
      for (var b = BINS; b > 0u; b--) {
        let c = atomicLoad(&hist[b - 1u]);
        if (seen + c >= wanted) {
          bin = b - 1u;
          break;
        }
        seen += c;
      }
      if (bin < BINS) {
        hi = l0 + f32(bin + 1u) * width;
        lo = l0 + f32(bin) * width;
        above = seen;
      } else {
        hi = lo;
      }
    }
    workgroupBarrier();
  }
  // 3. Everything at or above the range's bottom (one bin lower: rounding at bin edges).
  let threshold = lo - (hi - lo);
  for (var i = i0; i < n; i += THREADS) {
    let l = sum_logits[i];
    if (l >= threshold) {
      let k = atomicAdd(&found, 1u);
      if (k < CAP) {
        summary[4u + 2u * k] = i;
        summary[5u + 2u * k] = bitcast<u32>(l);
      }
    }
  }
  workgroupBarrier();
  if (i0 == 0u) {
    let s = red_s[0];
    summary[0] = min(atomicLoad(&found), CAP);
    summary[1] = bitcast<u32>(top);
    summary[2] = bitcast<u32>(top + log(s));
    summary[3] = bitcast<u32>(log(s) - red_w[0] / s);
  }
}
