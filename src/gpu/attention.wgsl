// ---- attention: one workgroup per query head h and token t, over positions 0..=pos + t ----
@group(0) @binding(0) var<storage, read> att_q: array<f32>;
@group(0) @binding(1) var<storage, read> att_k: array<f32>;
@group(0) @binding(2) var<storage, read> att_v: array<f32>;
@group(0) @binding(3) var<storage, read_write> att_out: array<f32>;
@group(0) @binding(4) var<uniform> att_params: Params;

// 8 KiB of the 16 KiB of workgroup memory WebGPU guarantees; the GPU context is this long.
const MAX_POSITIONS: u32 = 2048u;
var<workgroup> scores: array<f32, MAX_POSITIONS>;
var<workgroup> reduce: array<f32, 64>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let hd = att_params.n;
  let h = wid.x;
  let t = wid.y;
  let g = h / (att_params.heads / att_params.kv_heads);
  let seen = att_params.pos + t + 1u;
  let scale = 1.0 / sqrt(f32(hd));
  let q = (t * att_params.heads + h) * hd;
  var m = -3.4e38;
  for (var j = lid.x; j < seen; j += 64u) {
    let k = j * att_params.kv_row + g * hd;
    var dot = 0.0;
    for (var d = 0u; d < hd; d++) {
      dot += att_q[q + d] * att_k[k + d];
    }
    scores[j] = dot * scale;
    m = max(m, dot * scale);
  }
  reduce[lid.x] = m;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      reduce[lid.x] = max(reduce[lid.x], reduce[lid.x + stride]);
    }
    workgroupBarrier();
  }
  let top = reduce[0];
  workgroupBarrier();
  var s = 0.0;
  for (var j = lid.x; j < seen; j += 64u) {
    let e = exp(scores[j] - top);
    scores[j] = e;
    s += e;
  }
  reduce[lid.x] = s;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      reduce[lid.x] += reduce[lid.x + stride];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / reduce[0];
  for (var d = lid.x; d < hd; d += 64u) {
    var acc = 0.0;
    for (var j = 0u; j < seen; j++) {
      acc += scores[j] * att_v[j * att_params.kv_row + g * hd + d];
    }
    att_out[q + d] = acc * inv;
  }
}
