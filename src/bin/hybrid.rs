//! `hybrid`: the command-line front of hybrid-assistant.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hybrid_assistant::fetch::Fetcher;
use hybrid_assistant::eval::round2;
use hybrid_assistant::generate::generate;
use hybrid_assistant::model::tokenizer::TextStream;
use hybrid_assistant::model::Model;
use hybrid_assistant::registry::Registry;
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
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// The model that answers completions: a name (see `hybrid fetch-models`) or a .gguf path.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    cloud_model: String,
    /// Require this key on /v1/* (`Authorization: Bearer KEY` or `X-Api-Key: KEY`).
    #[arg(long, env = "HYBRID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An origin allowed to call the API from a browser (repeatable); the server's own always is.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Memory for cached prompt prefixes (KV caches), least recently used evicted first.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mb: usize,
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
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode speed of our decoder against llama.cpp on the same GGUF.
    Decode(hybrid_assistant::eval::bench::DecodeBenchArgs),
    /// The cloud server under browser-like load: consult cost, batching gain, latency, memory.
    Serve(hybrid_assistant::eval::bench_serve::ServeBenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchModels { names } => fetch_models(&names),
        Command::Generate(args) => run_generate(args),
        Command::Serve(args) => serve(args),
        Command::Bench { which: BenchCommand::Decode(args) } => hybrid_assistant::eval::bench::bench_decode(&args),
        Command::Bench { which: BenchCommand::Serve(args) } => hybrid_assistant::eval::bench_serve::bench_serve(&args),
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
        allow_origins: args.allow_origins,
        engine: hybrid_assistant::server::engine::EngineConfig {
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            kv_cache_bytes: args.kv_cache_mb << 20,
            prefill_chunk: 512,
        },
        max_tokens_cap: args.max_tokens_cap,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_s),
        max_body_bytes: 4 << 20,
        web_root: args.web_root,
    })
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let path = hybrid_assistant::eval::resolve_model(&args.model)?;
    let model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let text = match args.chat {
        true => model.chat_prompt(&args.prompt)?,
        false => args.prompt.clone(),
    };
    let prompt = model.tokenizer.encode(&text)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty: pass some text with --prompt");
    let mut sampler = Sampler::new(SamplerConfig { temperature: args.temperature, top_p: args.top_p, seed: args.seed });
    let Model { mut decoder, tokenizer, .. } = model;
    let mut stream = TextStream::new(&tokenizer);
    let mut out = std::io::stdout().lock();
    let json = args.json;
    let stats = generate(&mut decoder, &tokenizer, &prompt, args.max_tokens, &mut sampler, |id| {
        let piece = stream.push(id);
        let written = match json {
            true => writeln!(out, "{}", serde_json::json!({"id": id, "text": piece})),
            false => write!(out, "{piece}"),
        };
        // A closed pipe (e.g. `| head`) ends generation quietly.
        written.and_then(|_| out.flush()).is_ok()
    })?;
    let rest = stream.finish();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "done": true,
                "tokens": stats.tokens,
                "prompt_tokens": stats.prompt_tokens,
                "prefill_tok_s": round2(stats.prefill_tok_s()),
                "decode_tok_s": round2(stats.decode_tok_s()),
                "stop": format!("{:?}", stats.stop),
            })
        )?;
    } else {
        writeln!(out, "{rest}")?;
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {} tokens at {:.1} tok/s]",
            stats.prompt_tokens,
            stats.prefill_tok_s(),
            stats.tokens,
            stats.decode_tok_s()
        );
    }
    Ok(())
}

