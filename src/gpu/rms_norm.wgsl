// ---- rms_norm: out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight, a workgroup per row t ----
@group(0) @binding(0) var<storage, read> norm_x: array<f32>;
@group(0) @binding(1) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> norm_out: array<f32>;
@group(0) @binding(3) var<uniform> norm_params: Params;

var<workgroup> sums: array<f32, 256>;

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let n = norm_params.n;
  let x0 = norm_params.offset + wid.y * n;
  let out0 = wid.y * n;
  var s = 0.0;
  for (var i = lid.x; i < n; i += 256u) {
    s += norm_x[x0 + i] * norm_x[x0 + i];
  }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var stride = 128u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      sums[lid.x] += sums[lid.x + stride];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(sums[0] / f32(n) + norm_params.eps);
  for (var i = lid.x; i < n; i += 256u) {
    norm_out[out0 + i] = norm_x[x0 + i] * inv * norm_weight[i];
  }
}
