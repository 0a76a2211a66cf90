// What a WebGPU adapter in headless Chromium can do at best, kernel shapes stripped to their
// loads and arithmetic: the ceiling against which our decode kernels are judged on that
// adapter (SwiftShader here, docs/gpu.md). Each kernel reads a 27 MiB matrix of 49,152 rows of
// 576 bytes (the shape of smollm2-135m's output matrix in 8 bits) or does as many operations
// on registers; a thread per row; timed as the mean of 4 dispatches after one warm-up.
//
//   node tests/e2e/webgpu-roofline.mjs [--json] [-- extra chromium flags]
import { fileURLToPath } from 'node:url';
import { launchChromium, startStaticHost } from './server.mjs';

const ROWS = 49152;
const VEC4S = 36; // 16-byte words per row
const BYTES = ROWS * VEC4S * 16;
const runtime = 'array<vec4<u32>>';
const fixed = `array<vec4<u32>, ${ROWS * VEC4S}>`;
const dotRow = `var acc = 0i; let base = r * ${VEC4S}u;
  for (var k = 0u; k < ${VEC4S}u; k++) { let v = w[base + k]; let x = inp[k];
    acc += dot4I8Packed(v.x, x.x) + dot4I8Packed(v.y, x.y) + dot4I8Packed(v.z, x.z) + dot4I8Packed(v.w, x.w); }
  o[r] = u32(acc);`;
const readRow = `var acc = vec4<u32>(); let base = r * ${VEC4S}u;
  for (var k = 0u; k < ${VEC4S}u; k++) { acc ^= w[base + k]; }
  o[r] = acc.x ^ acc.y ^ acc.z ^ acc.w ^ inp[0].x;`;
const fma = (unroll) => `var a = bitcast<vec4<f32>>(inp[0]); let x = bitcast<vec4<f32>>(inp[1]); let y = bitcast<vec4<f32>>(inp[2]);
  for (var k = 0u; k < ${(VEC4S * 4) / unroll}u; k++) { ${'a = fma(a, x, y); '.repeat(unroll)}}
  o[r] = bitcast<u32>(a.x + a.y + a.z + a.w) ^ w[0].x;`;
const dotAlu = `var a = i32(r); let x = inp[0];
  for (var k = 0u; k < ${VEC4S * 4}u; k++) { a += dot4I8Packed(x.x ^ u32(a), x.y); }
  o[r] = u32(a) ^ w[0].x;`;

// [name, weights' type, body, what one thread does: bytes read, operations]
const KERNELS = [
  ['load 16 B a thread, runtime-sized array', runtime, readRow, { bytes: BYTES }],
  ['load 16 B a thread, fixed-size array', fixed, readRow, { bytes: BYTES }],
  ['f32 vec4 fma, in a loop', fixed, fma(1), { ops: ROWS * VEC4S * 16, unit: 'G f32 fma/s' }],
  ['f32 vec4 fma, 8 per loop iteration', fixed, fma(8), { ops: ROWS * VEC4S * 16, unit: 'G f32 fma/s' }],
  ['dot4I8Packed, in a loop', fixed, dotAlu, { ops: ROWS * VEC4S * 4 * 4, unit: 'G int8 mac/s' }],
  ['8-bit matvec (dot4I8Packed), runtime-sized', runtime, dotRow, { bytes: BYTES, ops: ROWS * VEC4S * 16, unit: 'G int8 mac/s' }],
  ['8-bit matvec (dot4I8Packed), fixed-size', fixed, dotRow, { bytes: BYTES, ops: ROWS * VEC4S * 16, unit: 'G int8 mac/s' }],
];

function shader(weights, body) {
  return `@group(0) @binding(0) var<storage, read> w: ${weights};
@group(0) @binding(1) var<storage, read> inp: array<vec4<u32>, 64>;
@group(0) @binding(2) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let r = g.x;
  ${body}
}`;
}

// Runs in the page.
async function measure({ kernels, bytes, rows }) {
  const adapter = await navigator.gpu?.requestAdapter();
  if (!adapter) throw new Error('no WebGPU adapter (run chromium with --enable-unsafe-webgpu)');
  const device = await adapter.requestDevice();
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const weights = device.createBuffer({ size: bytes, usage });
  const fill = new Uint32Array(bytes / 4);
  for (let i = 0; i < fill.length; i++) fill[i] = Math.imul(i, 2654435761) >>> 0;
  device.queue.writeBuffer(weights, 0, fill);
  const input = device.createBuffer({ size: 1024, usage });
  device.queue.writeBuffer(input, 0, fill.subarray(0, 256));
  const out = device.createBuffer({ size: rows * 4, usage: GPUBufferUsage.STORAGE });
  const results = [];
  for (const k of kernels) {
    device.pushErrorScope('validation');
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: k.code }), entryPoint: 'main' } });
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [weights, input, out].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const run = async (reps) => {
      const encoder = device.createCommandEncoder();
      for (let i = 0; i < reps; i++) {
        const pass = encoder.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bindGroup);
        pass.dispatchWorkgroups(rows / 64);
        pass.end();
      }
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
    };
    await run(1);
    const error = await device.popErrorScope();
    if (error) throw new Error(`${k.name}: ${error.message}`);
    const t0 = performance.now();
    await run(4);
    results.push({ name: k.name, ms: (performance.now() - t0) / 4 });
  }
  return { adapter: [adapter.info?.vendor, adapter.info?.architecture, adapter.info?.description].filter(Boolean).join(' '), results };
}

const json = process.argv.includes('--json');
const extra = process.argv.includes('--') ? process.argv.slice(process.argv.indexOf('--') + 1) : [];
const { server, url } = await startStaticHost([['/', fileURLToPath(new URL('./bench/', import.meta.url))]]);
const browser = await launchChromium(['--enable-unsafe-webgpu', ...extra]);
try {
  const page = await browser.newPage();
  await page.goto(`${url}/`);
  page.setDefaultTimeout(0);
  const kernels = KERNELS.map(([name, weights, body]) => ({ name, code: shader(weights, body) }));
  const { adapter, results } = await page.evaluate(measure, { kernels, bytes: BYTES, rows: ROWS });
  const rows = results.map((r, i) => {
    const { bytes, ops, unit } = KERNELS[i][3];
    return { ...r, gb_per_s: bytes && bytes / r.ms / 1e6, g_ops_per_s: ops && ops / r.ms / 1e6, unit };
  });
  if (json) {
    console.log(JSON.stringify({ browser: browser.version(), adapter, kernels: rows }));
  } else {
    console.log(`${adapter}, Chromium ${browser.version()}`);
    for (const r of rows) {
      const rate = [r.gb_per_s && `${r.gb_per_s.toFixed(2)} GB/s`, r.g_ops_per_s && `${r.g_ops_per_s.toFixed(2)} ${r.unit}`].filter(Boolean).join(', ');
      console.log(`${r.name.padEnd(46)} ${r.ms.toFixed(1).padStart(7)} ms  ${rate}`);
    }
  }
} finally {
  await browser.close();
  server.close();
}
