// ---- silu_mul: gate = silu(gate) * up, row t of each ----
@group(0) @binding(0) var<storage, read_write> ffn_gate: array<f32>;
@group(0) @binding(1) var<storage, read> ffn_up: array<f32>;
@group(0) @binding(2) var<uniform> ffn_params: Params;

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < ffn_params.n) {
    let i = gid.y * ffn_params.n + gid.x;
    let g = ffn_gate[i];
    ffn_gate[i] = g / (1.0 + exp(-g)) * ffn_up[i];
  }
}
