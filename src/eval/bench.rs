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
    /// Also measure our decoder on the GPU (wgpu: Vulkan, Metal or DX12; lavapipe without a GPU).
    #[arg(long)]
    pub gpu: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    threads: usize,
    /// Our decoder on the GPU (with --gpu), and the adapter it ran on.
    gpu: Option<Speed>,
    gpu_adapter: Option<String>,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeats: usize,
    ours: Speed,
    llama_cpp: Option<Speed>,
    prefill_vs_llama_cpp: Option<f64>,
    decode_vs_llama_cpp: Option<f64>,
}

pub fn bench_decode(args: &DecodeBenchArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // candle sizes its thread pools from this variable when they are first used.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let path = resolve_model(&args.model)?;
    let repeats = args.measure.repeats.max(1);

    eprintln!("measuring our decoder ({} runs)…", repeats);
    let ours = bench_ours(&path, args.measure.prompt_tokens, args.measure.gen_tokens, repeats)?;
    let (gpu, gpu_adapter) = match args.gpu {
        true => {
            eprintln!("measuring our decoder on the GPU ({} runs)…", repeats);
            let (speed, adapter) = bench_gpu(&path, args.measure.prompt_tokens, args.measure.gen_tokens, repeats)?;
            (Some(speed), Some(adapter))
        }
        false => (None, None),
    };
    let llama_cpp = match args.no_llama_cpp {
        true => None,
        false => {
            eprintln!("measuring llama.cpp ({} runs)…", repeats);
            Some(bench_llama_cpp(&path, threads, args.measure.prompt_tokens, args.measure.gen_tokens, repeats)?)
        }
    };
    let report = Report {
        model: args.model.clone(),
        threads,
        gpu,
        gpu_adapter,
        prompt_tokens: args.measure.prompt_tokens,
        gen_tokens: args.measure.gen_tokens,
        repeats,
        prefill_vs_llama_cpp: llama_cpp.as_ref().map(|l| round2(ours.prefill_tok_s / l.prefill_tok_s)),
        decode_vs_llama_cpp: llama_cpp.as_ref().map(|l| round2(ours.decode_tok_s / l.decode_tok_s)),
        ours,
        llama_cpp,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} threads, {}-token prompt, {} decoded tokens, best of {}",
        report.model, threads, report.prompt_tokens, report.gen_tokens, repeats
    );
    println!("{:<14}{:>16}{:>16}", "", "prefill tok/s", "decode tok/s");
    println!("{:<14}{:>16.1}{:>16.1}", "ours", report.ours.prefill_tok_s, report.ours.decode_tok_s);
    if let (Some(g), Some(adapter)) = (&report.gpu, &report.gpu_adapter) {
        println!("{:<14}{:>16.1}{:>16.1}   on {adapter}", "ours, GPU", g.prefill_tok_s, g.decode_tok_s);
    }
    if let (Some(l), Some(p), Some(d)) = (&report.llama_cpp, report.prefill_vs_llama_cpp, report.decode_vs_llama_cpp) {
        println!("{:<14}{:>16.1}{:>16.1}", "llama.cpp", l.prefill_tok_s, l.decode_tok_s);
        println!("{:<14}{:>15.2}x{:>15.2}x", "ours/llama.cpp", p, d);
    }
    Ok(())
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
    let gpu = pollster::block_on(crate::gpu::Gpu::new())?.ok_or_else(|| anyhow::anyhow!("no GPU adapter (without a GPU: apt-get install mesa-vulkan-drivers)"))?;
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

/// Runs tests/llamacpp/bench.mjs (installing its npm packages on first use).
fn bench_llama_cpp(path: &Path, threads: usize, prompt_tokens: usize, gen_tokens: usize, repeats: usize) -> Result<Speed> {
    let dir = llama_cpp_dir();
    if !dir.join("node_modules/node-llama-cpp").is_dir() {
        eprintln!("installing node-llama-cpp into {} …", dir.display());
        run_checked(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci")?;
    }
    let output = Command::new("node")
        .arg(dir.join("bench.mjs"))
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
    serde_json::from_str(line).map_err(|e| Error::InvalidInput(format!("unexpected llama.cpp benchmark output `{line}`: {e}")))
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| Error::InvalidInput(format!("cannot run {what}: {e}")))?;
    match status.success() {
        true => Ok(()),
        false => Err(Error::InvalidInput(format!("{what} failed ({status})"))),
    }
}
