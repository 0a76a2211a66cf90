//! `hybrid bench decode`: prefill and decode speed of our decoder and, in the same run
//! on the same GGUF and thread count, of llama.cpp (through node-llama-cpp), with ratios.
use super::{resolve_model, round2};
use crate::model::speed::{self, Speed};
use crate::model::Model;
use crate::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The measurement both speed benchmarks make (decode natively, browser in Chromium).
#[derive(clap::Args, Debug)]
pub struct MeasureArgs {
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Runs per engine; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

#[derive(clap::Args, Debug)]
pub struct DecodeBenchArgs {
    /// A model name or a path to a .gguf file.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// Threads for both engines (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Skip the llama.cpp anchor (no ratios).
    #[arg(long)]
    pub no_llama_cpp: bool,
    /// Also measure our decoder on the GPU (wgpu: Vulkan, Metal or DX12; lavapipe without a
    /// GPU), and llama.cpp's Vulkan build on the same adapter as its anchor.
    #[arg(long)]
    pub gpu: bool,
    /// Skip our CPU decoder and llama.cpp's CPU build (with --gpu: the GPU pair alone).
    #[arg(long)]
    pub gpu_only: bool,
    /// With --gpu: each kernel's share of a decode step and of a prefill chunk.
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    threads: usize,
    /// The CPU kernel set our decoder ran (`HYBRID_KERNELS` or the fastest here).
    kernels: String,
    /// Our decoder on the GPU (with --gpu), and the adapter it ran on.
    gpu: Option<Speed>,
    gpu_adapter: Option<String>,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeats: usize,
    ours: Option<Speed>,
    llama_cpp: Option<Speed>,
    prefill_vs_llama_cpp: Option<f64>,
    decode_vs_llama_cpp: Option<f64>,
    /// llama.cpp's Vulkan build with every layer on the GPU (with --gpu), and its device.
    llama_cpp_vulkan: Option<Speed>,
    llama_cpp_vulkan_device: Option<String>,
    gpu_prefill_vs_llamacpp_vulkan: Option<f64>,
    gpu_decode_vs_llamacpp_vulkan: Option<f64>,
    /// llama.cpp's CUDA build (with --gpu, where its prebuilt binary loads: an NVIDIA GPU and
    /// its driver), else why it did not run.
    llama_cpp_cuda: Option<Speed>,
    llama_cpp_cuda_skipped: Option<String>,
    gpu_prefill_vs_llamacpp_cuda: Option<f64>,
    gpu_decode_vs_llamacpp_cuda: Option<f64>,
    /// With --profile: per kernel kind, a decode step's and a prefill chunk's time.
    gpu_profile: Option<GpuProfile>,
}

/// Where a GPU step's time goes, per kernel kind.
#[derive(Debug, Serialize)]
pub struct GpuProfile {
    /// "timestamp queries" (on the device) or "cpu" (each dispatch waited for).
    pub timer: String,
    pub decode: Vec<KernelTime>,
    pub prefill: Vec<KernelTime>,
    pub prefill_tokens: usize,
    /// A whole decode step timed from the CPU (median of 9): the kernels, the dispatches
    /// between them, the submission and the readback.
    pub decode_wall_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct KernelTime {
    pub kind: String,
    /// Dispatches per step.
    pub calls: usize,
    pub ms: f64,
    pub share: f64,
    pub gb_s: Option<f64>,
    pub gflop_s: Option<f64>,
}

pub fn bench_decode(args: &DecodeBenchArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // candle sizes its thread pools from this variable when they are first used.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let path = resolve_model(&args.model)?;
    let repeats = args.measure.repeats.max(1);

    let (prompt_tokens, gen_tokens) = (args.measure.prompt_tokens, args.measure.gen_tokens);
    let cpu = !(args.gpu && args.gpu_only);
    let ours = match cpu {
        true => {
            eprintln!("measuring our decoder ({repeats} runs)…");
            Some(bench_ours(&path, prompt_tokens, gen_tokens, repeats)?)
        }
        false => None,
    };
    let (gpu, gpu_adapter) = match args.gpu {
        true => {
            eprintln!("measuring our decoder on the GPU ({repeats} runs)…");
            let (speed, adapter) = bench_gpu(&path, prompt_tokens, gen_tokens, repeats)?;
            (Some(speed), Some(adapter))
        }
        false => (None, None),
    };
    let gpu_profile = match args.gpu && args.profile {
        true => {
            eprintln!("profiling our GPU decoder…");
            Some(profile_gpu(&path, prompt_tokens)?)
        }
        false => None,
    };
    let llama_cpp = match args.no_llama_cpp || !cpu {
        true => None,
        false => {
            eprintln!("measuring llama.cpp ({repeats} runs)…");
            Some(bench_llama_cpp(&path, threads, prompt_tokens, gen_tokens, repeats, LlamaCppBuild::Cpu)?.0)
        }
    };
    let (llama_cpp_vulkan, llama_cpp_vulkan_device) = match args.no_llama_cpp || !args.gpu {
        true => (None, None),
        false => {
            eprintln!("measuring llama.cpp's Vulkan build ({repeats} runs)…");
            let build = LlamaCppBuild::Vulkan { device: gpu_adapter.as_deref() };
            let (speed, device) = bench_llama_cpp(&path, threads, prompt_tokens, gen_tokens, repeats, build)?;
            (Some(speed), Some(device))
        }
    };
    let (llama_cpp_cuda, llama_cpp_cuda_skipped) = match args.no_llama_cpp || !args.gpu {
        true => (None, None),
        false => {
            eprintln!("measuring llama.cpp's CUDA build where it loads ({repeats} runs)…");
            match bench_llama_cpp(&path, threads, prompt_tokens, gen_tokens, repeats, LlamaCppBuild::Cuda) {
                Ok((speed, _)) => (Some(speed), None),
                Err(e) => (None, Some(e.to_string())),
            }
        }
    };
    let ratio = |a: Option<&Speed>, b: Option<&Speed>, f: fn(&Speed) -> f64| a.zip(b).map(|(a, b)| round2(f(a) / f(b)));
    type Metric = fn(&Speed) -> f64;
    let (prefill, decode): (Metric, Metric) = (|s| s.prefill_tok_s, |s| s.decode_tok_s);
    let report = Report {
        model: args.model.clone(),
        threads,
        kernels: crate::model::cpu::KernelSet::active().describe(),
        prompt_tokens,
        gen_tokens,
        repeats,
        prefill_vs_llama_cpp: ratio(ours.as_ref(), llama_cpp.as_ref(), prefill),
        decode_vs_llama_cpp: ratio(ours.as_ref(), llama_cpp.as_ref(), decode),
        gpu_prefill_vs_llamacpp_vulkan: ratio(gpu.as_ref(), llama_cpp_vulkan.as_ref(), prefill),
        gpu_decode_vs_llamacpp_vulkan: ratio(gpu.as_ref(), llama_cpp_vulkan.as_ref(), decode),
        gpu_prefill_vs_llamacpp_cuda: ratio(gpu.as_ref(), llama_cpp_cuda.as_ref(), prefill),
        gpu_decode_vs_llamacpp_cuda: ratio(gpu.as_ref(), llama_cpp_cuda.as_ref(), decode),
        llama_cpp_cuda,
        llama_cpp_cuda_skipped,
        gpu,
        gpu_adapter,
        ours,
        llama_cpp,
        llama_cpp_vulkan,
        llama_cpp_vulkan_device,
        gpu_profile,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} threads, kernels {}, {}-token prompt, {} decoded tokens, best of {}",
        report.model, threads, report.kernels, report.prompt_tokens, report.gen_tokens, repeats
    );
    println!("{:<22}{:>16}{:>16}", "", "prefill tok/s", "decode tok/s");
    let row = |name: &str, s: &Speed, on: &str| println!("{name:<22}{:>16.1}{:>16.1}{on}", s.prefill_tok_s, s.decode_tok_s);
    let ratios = |name: &str, p: Option<f64>, d: Option<f64>| {
        if let (Some(p), Some(d)) = (p, d) {
            println!("{name:<22}{p:>15.2}x{d:>15.2}x");
        }
    };
    if let Some(s) = &report.ours {
        row("ours", s, "");
    }
    if let Some(s) = &report.llama_cpp {
        row("llama.cpp", s, "");
    }
    ratios("ours/llama.cpp", report.prefill_vs_llama_cpp, report.decode_vs_llama_cpp);
    if let (Some(s), Some(adapter)) = (&report.gpu, &report.gpu_adapter) {
        row("ours, GPU", s, &format!("   on {adapter}"));
    }
    if let (Some(s), Some(device)) = (&report.llama_cpp_vulkan, &report.llama_cpp_vulkan_device) {
        row("llama.cpp Vulkan", s, &format!("   on {device}"));
    }
    ratios("GPU/llama.cpp Vulkan", report.gpu_prefill_vs_llamacpp_vulkan, report.gpu_decode_vs_llamacpp_vulkan);
    if let Some(s) = &report.llama_cpp_cuda {
        row("llama.cpp CUDA", s, "");
    }
    ratios("GPU/llama.cpp CUDA", report.gpu_prefill_vs_llamacpp_cuda, report.gpu_decode_vs_llamacpp_cuda);
    if let Some(why) = &report.llama_cpp_cuda_skipped {
        println!("{:<22}   did not run: {why}", "llama.cpp CUDA");
    }
    if let Some(profile) = &report.gpu_profile {
        print_profile(&format!("a decode step (timed by {}; the whole step, wall clock: {:.1} ms)", profile.timer, profile.decode_wall_ms), &profile.decode);
        print_profile(&format!("a {}-token prefill chunk (timed by {})", profile.prefill_tokens, profile.timer), &profile.prefill);
    }
    Ok(())
}

fn print_profile(title: &str, kernels: &[KernelTime]) {
    let total: f64 = kernels.iter().map(|k| k.ms).sum();
    println!("\nGPU kernels, {title}: {total:.2} ms");
    println!("{:<18}{:>7}{:>10}{:>8}{:>9}{:>10}", "kernel", "calls", "ms", "share", "GB/s", "GFLOP/s");
    let figure = |x: Option<f64>| x.map_or("".to_string(), |x| format!("{x:.1}"));
    for k in kernels {
        println!("{:<18}{:>7}{:>10.3}{:>7.1}%{:>9}{:>10}", k.kind, k.calls, k.ms, 100.0 * k.share, figure(k.gb_s), figure(k.gflop_s));
    }
}

/// Each kernel kind's time in a decode step after a `prompt_tokens` prompt (the median of
/// several steps) and in a prefill chunk of [`crate::gpu::decoder::CHUNK`] tokens.
fn profile_gpu(path: &Path, prompt_tokens: usize) -> anyhow::Result<GpuProfile> {
    use crate::gpu::decoder::{GpuDecoder, CHUNK};
    let bytes = std::fs::read(path)?;
    let mut reader = std::io::Cursor::new(&bytes[..]);
    let content = crate::model::gguf::read_content(&mut reader)?;
    let prompt = speed::bench_prompt(&crate::model::tokenizer::Tokenizer::from_gguf(&content)?, prompt_tokens.max(CHUNK))?;
    let gpu = pollster::block_on(crate::gpu::Gpu::new())?.ok_or_else(|| anyhow::anyhow!("no GPU adapter"))?;
    let timer = match gpu.has_timestamps() {
        true => "timestamp queries",
        false => "cpu",
    };
    let mut decoder = GpuDecoder::from_gguf(gpu, &content, &mut reader)?;
    let chunk = pollster::block_on(decoder.profile(&prompt[..CHUNK]))?;
    pollster::block_on(decoder.forward(&prompt[..prompt_tokens.max(1)]))?;
    // The median over steps of each op: a single dispatch timed from the CPU is noisy.
    let steps: Vec<_> = (0..9).map(|_| pollster::block_on(decoder.profile(&prompt[..1]))).collect::<Result<_>>()?;
    let decode: Vec<_> = (0..steps[0].len())
        .map(|i| {
            let mut t: Vec<f64> = steps.iter().map(|s| s[i].3).collect();
            t.sort_by(f64::total_cmp);
            (steps[0][i].0.clone(), steps[0][i].1, steps[0][i].2, t[t.len() / 2])
        })
        .collect();
    let mut walls: Vec<f64> = (0..9)
        .map(|i| {
            let start = std::time::Instant::now();
            pollster::block_on(decoder.forward(&prompt[i..i + 1])).map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    walls.sort_by(f64::total_cmp);
    Ok(GpuProfile {
        timer: timer.into(),
        decode: by_kind(&decode, 1),
        prefill: by_kind(&chunk, CHUNK),
        prefill_tokens: CHUNK,
        decode_wall_ms: round3(walls[4]),
    })
}

/// Op times summed per kind, largest first, with achieved bandwidth and arithmetic rate.
fn by_kind(ops: &[(String, u64, u64, f64)], tokens: usize) -> Vec<KernelTime> {
    let total: f64 = ops.iter().map(|o| o.3).sum();
    let mut kinds: Vec<(String, usize, u64, u64, f64)> = Vec::new();
    for (kind, bytes, flops, t) in ops {
        match kinds.iter_mut().find(|k| &k.0 == kind) {
            Some(k) => {
                k.1 += 1;
                k.2 += bytes;
                k.3 += flops;
                k.4 += t;
            }
            None => kinds.push((kind.clone(), 1, *bytes, *flops, *t)),
        }
    }
    kinds.sort_by(|a, b| b.4.total_cmp(&a.4));
    kinds
        .into_iter()
        .map(|(kind, calls, bytes, flops, t)| KernelTime {
            // A matrix-vector op in a prefill is the output projection of its last token.
            gflop_s: (flops > 0).then(|| round2((flops * if kind.starts_with("matvec") { 1 } else { tokens as u64 }) as f64 / t / 1e9)),
            kind,
            calls,
            ms: round3(t * 1e3),
            share: round3(t / total),
            gb_s: (bytes > 0).then(|| round2(bytes as f64 / t / 1e9)),
        })
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Best-of-`repeats` prefill of `prompt_tokens` ids and decode of `gen_tokens` greedy tokens.
fn bench_ours(path: &Path, prompt_tokens: usize, gen_tokens: usize, repeats: usize) -> Result<Speed> {
    let mut model = Model::load(path)?;
    let prompt = speed::bench_prompt(&model.tokenizer, prompt_tokens)?;
    pollster::block_on(speed::measure(&mut model.decoder, &prompt, gen_tokens, repeats))
}

/// The same measurement with the model on the GPU; refuses to fall back to the CPU.
fn bench_gpu(path: &Path, prompt_tokens: usize, gen_tokens: usize, repeats: usize) -> anyhow::Result<(Speed, String)> {
    let bytes = std::fs::read(path)?;
    let content = crate::model::gguf::read_content(&mut std::io::Cursor::new(&bytes[..]))?;
    let prompt = speed::bench_prompt(&crate::model::tokenizer::Tokenizer::from_gguf(&content)?, prompt_tokens)?;
    let gpu =
        pollster::block_on(crate::gpu::Gpu::new())?.ok_or_else(|| anyhow::anyhow!("no GPU adapter (without a GPU: apt-get install mesa-vulkan-drivers)"))?;
    let mut slm = pollster::block_on(crate::backend::SmallModel::load(bytes, &content, Some(gpu)))?;
    if let Some(reason) = slm.cpu_reason() {
        anyhow::bail!("the model did not go onto the GPU: {reason}");
    }
    let adapter = slm.adapter().unwrap_or_default();
    Ok((pollster::block_on(speed::measure(&mut slm, &prompt, gen_tokens, repeats))?, adapter))
}

fn llama_cpp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/llamacpp")
}

/// Our adapter's index among the Vulkan devices, for `GGML_VK_VISIBLE_DEVICES`: wgpu and
/// llama.cpp both list them in the driver's order. llama.cpp's Vulkan build skips CPU-type
/// devices such as lavapipe unless that variable names them, and then runs on the CPU.
fn vulkan_index(adapter: &str) -> Option<usize> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.iter().position(|a| a.get_info().name == adapter)
}

/// Which of llama.cpp's prebuilt builds tests/llamacpp/bench.mjs runs.
pub enum LlamaCppBuild<'a> {
    Cpu,
    /// The Vulkan build with every layer on the GPU: on `device` (an adapter name) where given,
    /// else on the device llama.cpp picks.
    Vulkan {
        device: Option<&'a str>,
    },
    /// The CUDA build with every layer on the GPU (an NVIDIA GPU with its driver).
    Cuda,
}

/// Runs tests/llamacpp/bench.mjs (installing its npm packages on first use) with `build`;
/// bench.mjs refuses to report a Vulkan run that is not on the named device. The speed, and the
/// device it ran on.
pub fn bench_llama_cpp(path: &Path, threads: usize, prompt_tokens: usize, gen_tokens: usize, repeats: usize, build: LlamaCppBuild) -> Result<(Speed, String)> {
    let dir = llama_cpp_dir();
    if !dir.join("node_modules/node-llama-cpp").is_dir() {
        eprintln!("installing node-llama-cpp into {} …", dir.display());
        run_checked(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci")?;
    }
    let mut node = Command::new("node");
    node.arg(dir.join("bench.mjs"));
    match build {
        LlamaCppBuild::Cpu => node.args(["--gpu", "none"]),
        LlamaCppBuild::Vulkan { device: None } => node.args(["--gpu", "vulkan"]),
        LlamaCppBuild::Cuda => node.args(["--gpu", "cuda"]),
        LlamaCppBuild::Vulkan { device: Some(device) } => {
            if let (Some(index), None) = (vulkan_index(device), std::env::var_os("GGML_VK_VISIBLE_DEVICES")) {
                node.env("GGML_VK_VISIBLE_DEVICES", index.to_string());
            }
            node.args(["--gpu", "vulkan", "--expect-device", device])
        }
    };
    let output = node
        .args(["--model".as_ref(), path.as_os_str()])
        .args(["--threads", &threads.to_string()])
        .args(["--prompt-tokens", &prompt_tokens.to_string()])
        .args(["--gen-tokens", &gen_tokens.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .output()
        .map_err(|e| Error::InvalidInput(format!("cannot run node ({e}); install Node.js 18+ to measure llama.cpp")))?;
    if !output.status.success() {
        return Err(Error::InvalidInput(format!(
            "llama.cpp benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(flatten)]
        speed: Speed,
        #[serde(default)]
        device: String,
    }
    let parsed: Line = serde_json::from_str(line).map_err(|e| Error::InvalidInput(format!("unexpected llama.cpp benchmark output `{line}`: {e}")))?;
    Ok((parsed.speed, parsed.device))
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| Error::InvalidInput(format!("cannot run {what}: {e}")))?;
    match status.success() {
        true => Ok(()),
        false => Err(Error::InvalidInput(format!("{what} failed ({status})"))),
    }
}
