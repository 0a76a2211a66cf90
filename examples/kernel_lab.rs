//! A bench for trying a matrix-vector kernel shape before it goes into `src/gpu/quant.wgsl`:
//! times one WGSL file on random data on the default adapter (lavapipe here).
//!   cargo run --example kernel_lab -- FILE.wgsl ROWS COLS WORKGROUPS_X WORDS_PER_ROW [WORKGROUPS_Y]
//! The shader's entry is `main`, with bindings 0 `w` (u32 words), 1 `x` (f32, or a uniform
//! as large as the device binds if it declares `var<uniform> x`), 2 `y` (f32 out), 3 a
//! uniform `{rows, cols, words, pad}`.
use hybrid_assistant::gpu::{bytes_of, Gpu, Groups};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let source = std::fs::read_to_string(&args[1]).unwrap();
    let rows: usize = args[2].parse().unwrap();
    let cols: usize = args[3].parse().unwrap();
    let groups_x: u32 = args[4].parse().unwrap();
    let words_per_row: usize = args[5].parse().unwrap();
    let groups_y: u32 = args.get(6).map_or(1, |s| s.parse().unwrap());
    let gpu = pollster::block_on(Gpu::new()).unwrap().unwrap();
    let w: Vec<u32> = (0..rows * words_per_row).map(|i| (i as u32).wrapping_mul(2654435761)).collect();
    let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.1).collect();
    let wb = gpu.storage("w", bytes_of(&w), wgpu::BufferUsages::empty()).unwrap();
    // A shader that declares `var<uniform> x` gets x in a uniform buffer as large as the
    // device binds (the shader's array must fit it).
    let xb = if source.contains("var<uniform> x") {
        let mut padded = x.clone();
        padded.resize(gpu.limits.max_uniform_buffer_binding_size as usize / 4, 0.0);
        gpu.uniform("x", bytes_of(&padded))
    } else {
        gpu.storage("x", bytes_of(&x), wgpu::BufferUsages::empty()).unwrap()
    };
    let yb = gpu.output("y", rows * 8);
    let dims = gpu.uniform("dims", bytes_of(&[rows as u32, cols as u32, words_per_row as u32, 0u32]));
    let pipeline = gpu.pipeline("lab", || source.clone(), "main");
    let op = gpu.op(pipeline, &[(0, &wb), (1, &xb), (2, &yb), (3, &dims)], Groups::fixed(groups_x, groups_y));
    gpu.run(&[&op], 1);
    pollster::block_on(gpu.wait()).unwrap();
    // LAB_DISPATCHES=n: n dispatches in one pass per run (what a decode step does).
    let per_pass: usize = std::env::var("LAB_DISPATCHES").map_or(1, |v| v.parse().unwrap());
    let ops: Vec<&_> = std::iter::repeat_n(&op, per_pass).collect();
    // The best of 7 batches of 10 dispatches: the machine's other work only ever slows a batch.
    let n = 10;
    let dt = (0..7)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                gpu.run(&ops, 1);
            }
            pollster::block_on(gpu.wait()).unwrap();
            t.elapsed().as_secs_f64() / (n * per_pass) as f64
        })
        .fold(f64::INFINITY, f64::min);
    let y = pollster::block_on(gpu.read_f32(&yb, 4)).unwrap();
    gpu.check().unwrap();
    println!("{:.3} ms  {:.2} GB/s  {:.2} GMAC/s   y0={:?}", dt * 1e3, (w.len() * 4) as f64 / dt / 1e9, (rows * cols) as f64 / dt / 1e9, &y[..2]);
}
