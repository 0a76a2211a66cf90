//! `hybrid`: the command-line front of hybrid-assistant.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hybrid_assistant::backoff::Backoff;
use hybrid_assistant::cloud::{CloudClient, CloudConfig};
use hybrid_assistant::fetch::Fetcher;
use hybrid_assistant::generate::{HybridConfig, HybridLoop, HybridStats, LoopEvent, NoCloud, Source};
use hybrid_assistant::model::decoder::LoadOptions;
use hybrid_assistant::model::Model;
use hybrid_assistant::policy::{Policy, PolicyKind};
use hybrid_assistant::registry::Registry;
use hybrid_assistant::reward::RewardHead;
use hybrid_assistant::sampler::{Sampler, SamplerConfig};
use std::io::Write;

#[derive(Parser)]
#[command(name = "hybrid", version, about = "A small local language model that asks a large cloud model only for the tokens it is unsure of")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, assemble and verify model files (no names: all of them).
    FetchModels {
        /// Model names from assets/models.toml.
        names: Vec<String>,
    },
    /// Generate text with one model, streamed to stdout.
    Generate(GenerateArgs),
    /// The cloud: an OpenAI-compatible completions server that also serves the web app.
    Serve(ServeArgs),
    /// Answer a prompt with the small model, asking the cloud for the tokens it is unsure of.
    Chat(ChatArgs),
    /// Write the web app for a static host (app, wasm, config.json; models unless --files-url).
    Site(hybrid_assistant::site::SiteArgs),
    /// The reward head: collect labelled trajectories, train.
    Reward {
        #[command(subcommand)]
        which: RewardCommand,
    },
    /// Cost/quality evaluations.
    Eval {
        #[command(subcommand)]
        which: EvalCommand,
    },
    /// A stand-in for a model where its file cannot be sent (a lent GPU machine takes 64 MiB):
    /// with --header-only, the file cut to its header (metadata, tokenizer and tensor table, a
    /// few MB); else a GGUF of the same shapes with made-up weights, from a header or a file.
    /// Speed runs on it run as on the model; its text is noise.
    SynthGguf {
        /// A model name, a .gguf file or a header written by --header-only.
        #[arg(long)]
        from: String,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        header_only: bool,
    },
    /// Benchmarks, with ratios against an anchor measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A model name (see `hybrid fetch-models`) or a path to a .gguf file.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = SamplerConfig::default().seed)]
    seed: u64,
    /// One JSON object per token, then a summary line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The small model: a name (see `hybrid fetch-models`) or a .gguf path.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    slm: String,
    /// Base URL of an OpenAI-compatible completions server (ours: `hybrid serve`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    cloud: String,
    /// The model name the cloud serves.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    cloud_model: String,
    #[arg(long, env = "HYBRID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// reward, maxprob, entropy, random, never, always, or verify (lossless: the answer is the
    /// cloud model's own, most tokens still made locally).
    #[arg(long, default_value = "reward")]
    policy: PolicyKind,
    /// Consult when the reward (maxprob, verify: top-1 probability) is below it, when entropy
    /// (nats) is above it, or at this rate (random).
    #[arg(long, default_value_t = hybrid_assistant::reward::DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Cloud tokens one consult returns.
    #[arg(long, default_value_t = 1)]
    consult_tokens: usize,
    /// A consult slower than this keeps the small model's token (marked fallback).
    #[arg(long, default_value_t = 5000)]
    cloud_timeout_ms: u64,
    /// The reward head (safetensors); default: the one shipped for --slm in assets/reward/.
    #[arg(long)]
    reward_head: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long)]
    prompt: String,
    /// One JSON object per token, then a statistics line.
    #[arg(long)]
    json: bool,
    /// Seeds the random policy and sampling.
    #[arg(long, default_value_t = SamplerConfig::default().seed)]
    seed: u64,
    /// 0 is greedy; above it, consults check sampled tokens by speculative sampling.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Consults only answer: they do not check the local tokens since the previous one.
    #[arg(long)]
    no_verify: bool,
    /// The verify policy consults after at most this many unchecked local tokens.
    #[arg(long, default_value_t = hybrid_assistant::generate::DEFAULT_VERIFY_EVERY)]
    verify_every: usize,
    /// Gated policies leave the tokens after their last consult unchecked (by default the
    /// answer's tail is checked before it ends, which makes the answer the cloud's).
    #[arg(long)]
    no_final_check: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// The model that answers completions: a name (see `hybrid fetch-models`) or a .gguf path.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    cloud_model: String,
    /// Require this key on /v1/* (`Authorization: Bearer KEY` or `X-Api-Key: KEY`).
    #[arg(long, env = "HYBRID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// API keys, one per line: `KEY [name=NAME] [max_concurrent=N] [tokens_per_minute=N]`.
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// An origin allowed to call the API from a browser (repeatable; `*` for any); the server's own always is.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// A host name the server answers to (repeatable; `*` for any). Default: the loopback names
    /// on a loopback address, any elsewhere. Other Host headers get 421.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// After SIGTERM or Ctrl-C, seconds requests in flight may take before the server exits
    /// (a second signal exits at once).
    #[arg(long, default_value_t = 30)]
    shutdown_timeout_s: u64,
    /// No line on stderr per API request.
    #[arg(long)]
    no_access_log: bool,
    /// How KV caches store keys and values: f16 (half the memory), or f32.
    #[arg(long, default_value = "f16")]
    kv_dtype: hybrid_assistant::model::attention::KvDtype,
    /// Memory for cached prompt prefixes (KV caches), least recently used evicted first.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mb: usize,
    /// Memory for the KV caches of running requests and cached prefixes together: a request
    /// waits until its worst case (prompt + max_tokens) fits; one larger than all of it gets 503.
    #[arg(long)]
    kv_budget_mb: Option<usize>,
    /// Requests that may wait for a batch slot; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Requests decoded together in one forward pass.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_cap: usize,
    /// A request that has not finished after this many seconds fails with 504.
    #[arg(long, default_value_t = 300)]
    request_timeout_s: u64,
    /// Directory holding the web app's www/ and pkg/.
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    web_root: std::path::PathBuf,
    /// The small model the web app runs in the browser (fetched at start, served at /models/).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    browser_model: String,
}

#[derive(Subcommand)]
enum RewardCommand {
    /// Run the small model over prompts and label each position with the cloud model (resumable).
    Collect(hybrid_assistant::train::collect::CollectArgs),
    /// Fit the head on collected data; report ROC-AUC and consult rates next to max-prob and entropy.
    Train(hybrid_assistant::train::fit::TrainArgs),
    /// Score a trained head against max-prob and entropy on another collection (e.g. an evaluation set).
    Report(hybrid_assistant::train::fit::ReportArgs),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Greedy pass@1 on HumanEval for SLM only, cloud only and each policy and threshold, with cloud cost (resumable).
    Humaneval(hybrid_assistant::eval::humaneval_run::HumanEvalArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode speed of our decoder against llama.cpp on the same GGUF.
    Decode(hybrid_assistant::eval::bench::DecodeBenchArgs),
    /// The cloud server under browser-like load: consult cost, batching gain, latency, memory.
    Serve(hybrid_assistant::eval::bench_serve::ServeBenchArgs),
    /// Our engine in headless Chromium against wllama on the same GGUF (needs `make pkg`).
    Browser(hybrid_assistant::eval::bench_browser::BrowserBenchArgs),
}

fn synth_gguf(from: &str, out: &std::path::Path, header_only: bool) -> anyhow::Result<()> {
    use hybrid_assistant::model::gguf;
    let path = match std::path::Path::new(from).is_file() {
        true => std::path::PathBuf::from(from),
        false => hybrid_assistant::eval::resolve_model(from)?,
    };
    let bytes = std::fs::read(&path)?;
    let header = gguf::header_bytes(&bytes)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    match header_only {
        true => std::io::Write::write_all(&mut file, &header)?,
        false => gguf::write_synthetic(&header, &mut file)?,
    }
    std::io::Write::flush(&mut file)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn main() {
    hybrid_assistant::model::cpu::align_candle_with_the_set();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchModels { names } => fetch_models(&names),
        Command::Generate(args) => run_generate(args),
        Command::Serve(args) => serve(args),
        Command::Chat(args) => chat(args),
        Command::Site(args) => hybrid_assistant::site::write_site(&args),
        Command::Reward { which: RewardCommand::Collect(args) } => hybrid_assistant::train::collect::collect(&args).map_err(Into::into),
        Command::Reward { which: RewardCommand::Train(args) } => reward_train(&args),
        Command::Reward { which: RewardCommand::Report(args) } => reward_report(&args),
        Command::Eval { which: EvalCommand::Humaneval(args) } => hybrid_assistant::eval::humaneval_run::run(&args),
        Command::SynthGguf { from, out, header_only } => synth_gguf(&from, &out, header_only),
        Command::Bench { which: BenchCommand::Decode(args) } => hybrid_assistant::eval::bench::bench_decode(&args),
        Command::Bench { which: BenchCommand::Serve(args) } => hybrid_assistant::eval::bench_serve::bench_serve(&args),
        Command::Bench { which: BenchCommand::Browser(args) } => hybrid_assistant::eval::bench_browser::bench_browser(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn fetch_models(names: &[String]) -> Result<()> {
    let registry = Registry::builtin();
    let specs = match names.is_empty() {
        true => registry.models.iter().collect(),
        false => names.iter().map(|n| registry.get(n)).collect::<Result<Vec<_>, _>>()?,
    };
    for path in Fetcher::from_env().ensure_all(&specs)? {
        println!("{}", path.display());
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    anyhow::ensure!(args.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(args.max_tokens_cap >= 1, "--max-tokens-cap must be at least 1");
    hybrid_assistant::server::run(hybrid_assistant::server::ServeConfig {
        addr: args.addr,
        cloud_model: args.cloud_model,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        api_key_file: args.api_key_file,
        allow_origins: args.allow_origins,
        allowed_hosts: args.allowed_hosts,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_s),
        access_log: !args.no_access_log,
        kv_dtype: args.kv_dtype,
        engine: hybrid_assistant::server::engine::EngineConfig {
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            kv_cache_bytes: args.kv_cache_mb << 20,
            kv_budget_bytes: args.kv_budget_mb.map(|mb| mb << 20),
            prefill_chunk: 512,
        },
        max_tokens_cap: args.max_tokens_cap,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_s),
        max_body_bytes: 4 << 20,
        web_root: args.web_root,
        browser_model: args.browser_model,
    })
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let path = hybrid_assistant::eval::resolve_model(&args.model)?;
    // The server's kernels, so that `hybrid generate` gives exactly the tokens `hybrid serve` does.
    let options = LoadOptions::cloud();
    let mut model = Model::load_with(&path, options).with_context(|| format!("loading {}", path.display()))?;
    let prompt = prompt_ids(&model, &args.prompt, args.chat)?;
    let mut run = HybridLoop::<_, NoCloud> {
        slm: &mut model.decoder,
        tokenizer: &model.tokenizer,
        head: None,
        cloud: None,
        policy: Policy::new(PolicyKind::Never, 0.0, 0)?,
        sampler: Sampler::new(SamplerConfig { temperature: args.temperature, top_p: args.top_p, seed: args.seed }),
        config: HybridConfig { max_tokens: args.max_tokens, ..Default::default() },
        backoff: &mut Backoff::default(),
    };
    let mut out = TokenPrinter::new(args.json, false, false);
    let stats = pollster::block_on(run.run(&prompt, async |event| out.event(event)))?;
    if args.json {
        let s = stats.summary();
        let keys = ["done", "tokens", "prompt_tokens", "prefill_tok_s", "stop"];
        let mut line: serde_json::Map<String, serde_json::Value> = keys.iter().map(|&k| (k.to_string(), s[k].clone())).collect();
        line.insert("decode_tok_s".into(), s["local_tok_s"].clone());
        out.line(&serde_json::Value::Object(line))?;
    } else {
        out.finish(&stats)?;
        eprintln!("[{} prompt tokens at {:.1} tok/s, {} tokens at {:.1} tok/s]", stats.prompt_tokens, stats.prefill_tok_s(), stats.tokens, stats.local_tok_s());
    }
    Ok(())
}

fn reward_train(args: &hybrid_assistant::train::fit::TrainArgs) -> Result<()> {
    let report = hybrid_assistant::train::fit::train(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} training positions, {} to choose the epoch (best: {}); head written to {}",
        report.train_positions,
        report.select_positions,
        report.best_epoch,
        args.out.display()
    );
    print_gates(&report.held_out);
    Ok(())
}

fn reward_report(args: &hybrid_assistant::train::fit::ReportArgs) -> Result<()> {
    let comparison = hybrid_assistant::train::fit::report(args)?;
    match args.json {
        true => println!("{}", serde_json::to_string(&comparison)?),
        false => print_gates(&comparison),
    }
    Ok(())
}

fn print_gates(c: &hybrid_assistant::train::fit::GateComparison) {
    println!("{} positions of {} prompts, {:.2}% where the cloud's greedy token differs:", c.positions, c.prompts, c.disagreement * 100.0);
    println!("{:<12} {:>8} {:>24} {:>24}", "gate", "ROC-AUC", "consult to flag 90%", "consult to flag 75%");
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
    for g in &c.gates {
        println!("{:<12} {:>8} {:>24} {:>24}", g.name, g.roc_auc.map_or("-".into(), |a| format!("{a:.4}")), pct(g.consult_for_90), pct(g.consult_for_75));
    }
    println!("thresholds that consult on a share of these positions:");
    let t = |x: Option<f32>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in &c.thresholds_at_rate {
        println!("  {:>4.0}%: reward {}, maxprob {}, entropy {}", r.rate * 100.0, t(r.reward), t(r.maxprob), t(r.entropy));
    }
}

fn chat(args: ChatArgs) -> Result<()> {
    anyhow::ensure!(args.consult_tokens >= 1, "--consult-tokens must be at least 1");
    let path = hybrid_assistant::eval::resolve_model(&args.slm)?;
    let mut model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let prompt = prompt_ids(&model, &args.prompt, true)?;
    let head = match (&args.reward_head, args.policy.needs_reward()) {
        (Some(file), _) => Some(load_head(file)?),
        (None, true) => Some(load_head(&hybrid_assistant::reward::shipped_head(&args.slm).ok_or_else(|| {
            anyhow::anyhow!(
                "no reward head ships for `{}` (assets/reward/ has heads for: {}); pass --reward-head FILE or pick --policy maxprob",
                args.slm,
                hybrid_assistant::reward::SHIPPED_HEADS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
            )
        })?)?),
        (None, false) => None,
    };
    let mut client = CloudClient::new(CloudConfig {
        url: args.cloud.clone(),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        model: args.cloud_model.clone(),
        timeout: std::time::Duration::from_millis(args.cloud_timeout_ms),
    });
    let mut run = HybridLoop {
        slm: &mut model.decoder,
        tokenizer: &model.tokenizer,
        head: head.as_ref(),
        cloud: args.policy.may_consult().then_some(&mut client),
        policy: Policy::new(args.policy, args.threshold, args.seed)?,
        sampler: Sampler::new(SamplerConfig { temperature: args.temperature, top_p: args.top_p, seed: args.seed }),
        config: HybridConfig {
            max_tokens: args.max_tokens,
            consult_tokens: args.consult_tokens,
            verify: !args.no_verify,
            verify_every: args.verify_every,
            final_check: !args.no_final_check,
            ..Default::default()
        },
        backoff: &mut Backoff::default(),
    };
    let colour = !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    // A pipe cannot take text back: it gets only checked text (and the rest at the end).
    let hold = !args.json && !colour && !args.no_verify && args.policy.may_consult();
    let mut out = TokenPrinter::new(args.json, colour, hold);
    let stats = match pollster::block_on(run.run(&prompt, async |event| out.event(event))) {
        Ok(stats) => stats,
        Err(e) => {
            // What was generated stays on screen (held text included) above the error.
            let _ = out.write_upto(usize::MAX).and_then(|_| writeln!(out.out));
            return Err(e.into());
        }
    };
    if args.json {
        out.line(&stats.summary())?;
    } else {
        out.finish(&stats)?;
        eprintln!(
            "[{} tokens, {} from the cloud ({:.1}%) in {} consults, {} fallbacks; {} checked, {} corrections withdrew {}, {} unchecked; local {:.1} tok/s; consult p50 {:.0} ms p95 {:.0} ms{}]",
            stats.tokens,
            stats.cloud_tokens,
            stats.cloud_share() * 100.0,
            stats.consults,
            stats.fallbacks,
            stats.verified_tokens,
            stats.corrections,
            stats.withdrawn_tokens,
            stats.unverified_tokens,
            stats.local_tok_s(),
            stats.consult_ms_percentile(50.0),
            stats.consult_ms_percentile(95.0),
            if colour { "; \x1b[1;36mcloud\x1b[0m, \x1b[33mfallback\x1b[0m" } else { "" },
        );
        if let Some(e) = &stats.last_cloud_error {
            eprintln!("[the cloud failed at least once; the last error: {e}]");
        }
    }
    Ok(())
}

/// The prompt's token ids, wrapped as a user message with the chat template when `chat`.
fn prompt_ids(model: &Model, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let text = match chat {
        true => model.chat_prompt(prompt)?,
        false => prompt.to_string(),
    };
    let ids = model.tokenizer.encode(&text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty: pass some text with --prompt");
    Ok(ids)
}

fn load_head(path: &std::path::Path) -> Result<RewardHead> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the reward head {}", path.display()))?;
    RewardHead::from_safetensors(&bytes).with_context(|| format!("loading the reward head {}", path.display()))
}

/// Writes tokens to stdout as they come: text (cloud and fallback tokens coloured on a
/// terminal, withdrawn text erased) or one JSON object per event. With `hold`, text is
/// written once the cloud has checked it (a pipe cannot take text back). A closed pipe
/// (e.g. `| head`) ends generation.
struct TokenPrinter {
    out: std::io::StdoutLock<'static>,
    json: bool,
    colour: bool,
    hold: bool,
    /// The text of each answer token so far, and how many of them are written.
    pieces: Vec<String>,
    written: usize,
}

impl TokenPrinter {
    fn new(json: bool, colour: bool, hold: bool) -> Self {
        Self { out: std::io::stdout().lock(), json, colour, hold, pieces: Vec::new(), written: 0 }
    }

    fn event(&mut self, event: &LoopEvent) -> bool {
        let written = match (self.json, event) {
            (true, LoopEvent::Token(t)) => {
                writeln!(self.out, "{}", serde_json::json!({"id": t.id, "text": t.text, "source": t.source, "reward": t.reward}))
            }
            (true, other) => writeln!(self.out, "{}", serde_json::to_string(other).expect("events serialise")),
            (false, LoopEvent::Token(t)) => {
                self.pieces.push(t.text.clone());
                match self.hold {
                    true => Ok(()),
                    false => self.write_piece(t.source),
                }
            }
            (false, LoopEvent::Verified { verified_to }) if self.hold => self.write_upto(*verified_to),
            (false, LoopEvent::Verified { .. }) => Ok(()),
            (false, LoopEvent::Withdraw { withdraw_from }) => self.withdraw(*withdraw_from),
        };
        written.and_then(|_| self.out.flush()).is_ok()
    }

    fn write_piece(&mut self, source: Source) -> std::io::Result<()> {
        let text = self.pieces.last().expect("pushed");
        self.written = self.pieces.len();
        match (self.colour, source) {
            (true, Source::Cloud) => write!(self.out, "\x1b[1;36m{text}\x1b[0m"),
            (true, Source::Fallback) => write!(self.out, "\x1b[33m{text}\x1b[0m"),
            _ => write!(self.out, "{text}"),
        }
    }

    fn write_upto(&mut self, end: usize) -> std::io::Result<()> {
        let end = end.min(self.pieces.len());
        if end > self.written {
            write!(self.out, "{}", self.pieces[self.written..end].concat())?;
            self.written = end;
        }
        Ok(())
    }

    /// Takes back the text of tokens `from..`: on a terminal it is erased (up to the start of
    /// the lines it spans); held text was never written.
    fn withdraw(&mut self, from: usize) -> std::io::Result<()> {
        let from = from.min(self.pieces.len());
        let shown = self.written.max(from);
        let erased: String = self.pieces[from..shown].concat();
        self.pieces.truncate(from);
        self.written = self.written.min(from);
        if erased.is_empty() || !self.colour {
            return Ok(());
        }
        let kept = self.pieces.concat();
        let column = kept.rsplit('\n').next().unwrap_or("").chars().count();
        match erased.matches('\n').count() {
            0 => write!(self.out, "\x1b[{}D\x1b[K", erased.chars().count()),
            lines => write!(self.out, "\x1b[{lines}F{}\x1b[J", if column > 0 { format!("\x1b[{column}C") } else { String::new() }),
        }
    }

    fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        Ok(writeln!(self.out, "{value}")?)
    }

    fn finish(&mut self, stats: &HybridStats) -> Result<()> {
        self.write_upto(self.pieces.len())?;
        Ok(writeln!(self.out, "{}", stats.tail)?)
    }
}
