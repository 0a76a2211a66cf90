// ---- rope: rotates every head of row t in place for position pos + t ----
@group(0) @binding(0) var<storage, read_write> rope_x: array<f32>;
// [position][head_dim / 2] cosines, then the sines, computed once on the CPU.
@group(0) @binding(1) var<storage, read> rope_table: array<f32>;
@group(0) @binding(2) var<uniform> rope_params: Params;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
  let half = rope_params.n / 2u;
  let pairs = rope_params.heads * half;
  let p = gid.x;
  if (p >= pairs) {
    return;
  }
  let t = gid.y;
  let pos = rope_params.pos + t;
  let head = p / half;
  let i = p % half;
  let base = rope_params.offset + (t * rope_params.heads + head) * rope_params.n;
  var a = base + 2u * i;
  var b = a + 1u;
  if (rope_params.rope_layout == 1u) {
    a = base + i;
    b = a + half;
  }
  let angles = arrayLength(&rope_table) / 2u;
  let c = rope_table[pos * half + i];
  let s = rope_table[angles + pos * half + i];
  let x0 = rope_x[a];
  let x1 = rope_x[b];
  rope_x[a] = x0 * c - x1 * s;
  rope_x[b] = x0 * s + x1 * c;
}
