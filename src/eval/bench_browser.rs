//! `hybrid bench browser`: prefill and decode speed of our engine in headless Chromium (the
//! wasm build in pkg/, CPU path; with `--webgpu` also its WebGPU path) against wllama (llama.cpp
//! compiled to wasm, one thread; with `--webgpu` also on llama.cpp's WebGPU backend) on the same
//! GGUF and prompt in the same tab, with ratios. The page and its runner are
//! tests/e2e/bench/ and tests/e2e/bench-browser.mjs.
use super::bench::MeasureArgs;
use super::{resolve_model, round2};
use crate::model::speed::Speed;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct BrowserBenchArgs {
    /// A model name or a path to a .gguf file.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Also measure our WebGPU path (Chromium with --enable-unsafe-webgpu; without a GPU that
    /// is a software adapter, slow).
    #[arg(long)]
    pub webgpu: bool,
    /// With --webgpu: each kernel's share of a WebGPU decode step.
    #[arg(long, requires = "webgpu")]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

/// Our WebGPU path's figures, or why it did not run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum GpuResult {
    Ran { prefill_tok_s: f64, decode_tok_s: f64, adapter: Option<String>, profile: Option<StepProfile> },
    Refused { error: Option<String> },
}

/// A WebGPU decode step kernel by kernel, summed per kind (the page's `byKind`).
#[derive(Debug, Serialize, Deserialize)]
struct StepProfile {
    timer: String,
    step_ms: f64,
    kernels: Vec<KindTime>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KindTime {
    kind: String,
    calls: usize,
    ms: f64,
    share: f64,
}

/// wllama on its WebGPU backend, or why it did not run there.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum WllamaGpu {
    Ran { prefill_tok_s: f64, decode_tok_s: f64, offload: String },
    Failed { error: String },
}

/// What the page reports.
#[derive(Debug, Deserialize)]
struct PageResult {
    ours: Speed,
    webgpu: Option<GpuResult>,
    wllama: Speed,
    wllama_webgpu: Option<WllamaGpu>,
    webgpu_adapter: bool,
    browser: String,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    browser: String,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeats: usize,
    cpu: Speed,
    /// Our WebGPU path (null unless --webgpu).
    webgpu: Option<GpuResult>,
    webgpu_adapter: bool,
    wllama: Speed,
    /// wllama on WebGPU, the same adapter (null unless --webgpu).
    wllama_webgpu: Option<WllamaGpu>,
    cpu_prefill_vs_wllama: f64,
    cpu_decode_vs_wllama: f64,
    webgpu_decode_vs_wllama: Option<f64>,
    webgpu_prefill_vs_wllama_webgpu: Option<f64>,
    webgpu_decode_vs_wllama_webgpu: Option<f64>,
    /// Our WebGPU decode against our own wasm CPU path in the same tab.
    webgpu_decode_vs_wasm_cpu: Option<f64>,
}

pub fn bench_browser(args: &BrowserBenchArgs) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    anyhow::ensure!(root.join("pkg/hybrid_assistant_bg.wasm").is_file(), "no wasm build in {}: build it with `make pkg`", root.join("pkg").display());
    let e2e = root.join("tests/e2e");
    if !e2e.join("node_modules/@wllama/wllama").is_dir() || !e2e.join("node_modules/playwright-core").is_dir() {
        eprintln!("installing the benchmark's npm packages into {} …", e2e.display());
        let status = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&e2e).status().context("running npm")?;
        anyhow::ensure!(status.success(), "npm ci failed in {}", e2e.display());
    }
    let path = resolve_model(&args.model)?;
    let on = if args.webgpu { " and on WebGPU" } else { "" };
    eprintln!("measuring in headless chromium: ours (wasm CPU) and wllama (1 thread){on}, best of {} …", args.measure.repeats);
    let output = Command::new("node")
        .arg(e2e.join("bench-browser.mjs"))
        .args(["--model".as_ref(), path.as_os_str()])
        .args(["--prompt-tokens", &args.measure.prompt_tokens.to_string()])
        .args(["--gen-tokens", &args.measure.gen_tokens.to_string()])
        .args(["--repeats", &args.measure.repeats.to_string()])
        .args(args.webgpu.then_some("--webgpu"))
        .args(args.profile.then_some("--profile"))
        .output()
        .context("cannot run node; install Node.js 18+")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let page: PageResult = match (output.status.success(), line) {
        (true, Some(line)) => serde_json::from_str(line).with_context(|| format!("unexpected benchmark output `{line}`"))?,
        _ => anyhow::bail!("the browser benchmark failed: {}", String::from_utf8_lossy(&output.stderr).lines().rev().take(6).collect::<Vec<_>>().join(" | ")),
    };
    let ours_gpu = match &page.webgpu {
        Some(GpuResult::Ran { prefill_tok_s, decode_tok_s, .. }) => Some((*prefill_tok_s, *decode_tok_s)),
        _ => None,
    };
    let wllama_gpu = match &page.wllama_webgpu {
        Some(WllamaGpu::Ran { prefill_tok_s, decode_tok_s, .. }) => Some((*prefill_tok_s, *decode_tok_s)),
        _ => None,
    };
    let report = Report {
        model: args.model.clone(),
        browser: page.browser,
        prompt_tokens: args.measure.prompt_tokens,
        gen_tokens: args.measure.gen_tokens,
        repeats: args.measure.repeats,
        cpu_prefill_vs_wllama: round2(page.ours.prefill_tok_s / page.wllama.prefill_tok_s),
        cpu_decode_vs_wllama: round2(page.ours.decode_tok_s / page.wllama.decode_tok_s),
        webgpu_decode_vs_wllama: ours_gpu.map(|(_, decode)| round2(decode / page.wllama.decode_tok_s)),
        webgpu_prefill_vs_wllama_webgpu: ours_gpu.zip(wllama_gpu).map(|((p, _), (wp, _))| round2(p / wp)),
        webgpu_decode_vs_wllama_webgpu: ours_gpu.zip(wllama_gpu).map(|((_, d), (_, wd))| round2(d / wd)),
        webgpu_decode_vs_wasm_cpu: ours_gpu.map(|(_, decode)| round2(decode / page.ours.decode_tok_s)),
        cpu: page.ours,
        webgpu: page.webgpu,
        webgpu_adapter: page.webgpu_adapter,
        wllama: page.wllama,
        wllama_webgpu: page.wllama_webgpu,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} in headless Chromium {}: {}-token prompt, {} decoded tokens, best of {}",
        report.model, report.browser, report.prompt_tokens, report.gen_tokens, report.repeats
    );
    println!("{:<22}{:>16}{:>16}", "", "prefill tok/s", "decode tok/s");
    println!("{:<22}{:>16.1}{:>16.1}", "ours, wasm CPU", report.cpu.prefill_tok_s, report.cpu.decode_tok_s);
    match &report.webgpu {
        Some(GpuResult::Ran { prefill_tok_s, decode_tok_s, adapter, .. }) => {
            println!(
                "{:<22}{:>16.1}{:>16.1}   on {}",
                "ours, WebGPU",
                prefill_tok_s,
                decode_tok_s,
                adapter.as_deref().filter(|a| !a.is_empty()).unwrap_or("an unnamed adapter")
            )
        }
        Some(GpuResult::Refused { error }) => println!("{:<22}   did not run: {}", "ours, WebGPU", error.as_deref().unwrap_or("no adapter")),
        None => println!("{:<22}   not measured (--webgpu)", "ours, WebGPU"),
    }
    println!("{:<22}{:>16.1}{:>16.1}", "wllama, 1 thread", report.wllama.prefill_tok_s, report.wllama.decode_tok_s);
    match &report.wllama_webgpu {
        Some(WllamaGpu::Ran { prefill_tok_s, decode_tok_s, offload }) => {
            println!("{:<22}{prefill_tok_s:>16.1}{decode_tok_s:>16.1}   ({offload})", "wllama, WebGPU")
        }
        Some(WllamaGpu::Failed { error }) => println!("{:<22}   did not run: {error}", "wllama, WebGPU"),
        None => {}
    }
    println!("{:<22}{:>15.2}x{:>15.2}x", "wasm CPU / wllama", report.cpu_prefill_vs_wllama, report.cpu_decode_vs_wllama);
    if let (Some(p), Some(d)) = (report.webgpu_prefill_vs_wllama_webgpu, report.webgpu_decode_vs_wllama_webgpu) {
        println!("{:<22}{p:>15.2}x{d:>15.2}x", "WebGPU / wllama WebGPU");
    }
    if let Some(d) = report.webgpu_decode_vs_wasm_cpu {
        println!("{:<22}{:>16}{d:>15.2}x", "WebGPU / wasm CPU", "");
    }
    if let Some(GpuResult::Ran { profile: Some(p), .. }) = &report.webgpu {
        println!("\na WebGPU decode step, kernel by kernel (timed by {}): {:.1} ms", p.timer, p.step_ms);
        println!("{:<40}{:>6}{:>10}{:>8}", "kernel", "calls", "ms", "share");
        for k in &p.kernels {
            println!("{:<40}{:>6}{:>10.2}{:>7.1}%", k.kind, k.calls, k.ms, 100.0 * k.share);
        }
    }
    Ok(())
}
