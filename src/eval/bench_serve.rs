//! `hybrid bench serve`: the cloud under the load the browser puts on it, on loopback.
//!
//! Four measurements, each against an anchor taken in the same run:
//! 1. consult cost: a 1-token consult on a 512-token prompt whose first 500 tokens are cached,
//!    against the 1-token consult right after it that adds a single token (one decode step);
//! 2. verification cost: that consult scoring its 12 new tokens (`echo` + `logprobs`, our
//!    `echo_from`) against the same consult unscored;
//! 3. batching: total decode throughput of 8 concurrent sessions against one session alone;
//! 4. load: `--concurrency` sessions replaying growing-prefix 1-token consults, `--requests`
//!    in all, and with `--long-share` some fresh long prompts (up to `--long-max` tokens,
//!    64 tokens answered): latency p50/p99, throughput, 429s, 503s, failures, cache hit rate,
//!    server memory against `--kv-budget-mb` + the model + 20%.
use super::round2;
use crate::cloud::{CloudClient, CloudConfig, CompletionRequest, Prompt};
use crate::generate::percentile;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ServeBenchArgs {
    /// A running server; without it, `hybrid serve --cloud-model MODEL` is started on a free
    /// loopback port for the run.
    #[arg(long)]
    pub url: Option<String>,
    /// The model for the server this command starts.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    pub model: String,
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sessions in the load phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests in the load phase, over all sessions.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Tokens each session generates in the batching phase.
    #[arg(long, default_value_t = 32)]
    pub batch_tokens: usize,
    /// `--kv-budget-mb` of the server this command starts.
    #[arg(long)]
    pub kv_budget_mb: Option<usize>,
    /// Share of load requests that are a fresh long prompt instead of a session's next consult.
    #[arg(long, default_value_t = 0.0)]
    pub long_share: f64,
    /// Longest of those prompts in tokens (they range from 1024 up to it).
    #[arg(long, default_value_t = 8192)]
    pub long_max: usize,
    /// Only the load phase (the server's memory under load), not the three ratios.
    #[arg(long)]
    pub load_only: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    url: String,
    model: String,
    consult_ms: f64,
    decode_step_ms: f64,
    /// The first target: at most 2. The median of paired ratios, not the ratio of the medians.
    consult_vs_decode_step: f64,
    scored_consult_ms: f64,
    unscored_consult_ms: f64,
    /// The target: at most 1.2. Median of paired ratios.
    scored_consult_vs_unscored: f64,
    /// Prompt entries the scored consult's answer echoed: 12 where the server honours
    /// `echo_from`, the whole prompt where it ignores it, 0 where it does not echo (llama.cpp).
    scored_tokens: usize,
    one_session_tok_s: f64,
    eight_sessions_tok_s: f64,
    /// The second target: at least 3.
    eight_vs_one_session: f64,
    load: LoadReport,
}

#[derive(Debug, Default, Serialize)]
struct LoadReport {
    concurrency: usize,
    requests: usize,
    /// Of which fresh long prompts.
    long_requests: usize,
    ok: usize,
    rejected_429: usize,
    /// 503s: the budget refused a request larger than all of it, or the engine was down.
    rejected_503: usize,
    failed: usize,
    seconds: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cache_hit_rate: f64,
    server_peak_rss_mb: f64,
    prefix_cache_mb: f64,
    prefix_cache_capacity_mb: f64,
    kv_budget_mb: Option<usize>,
    /// With a budget: budget + model file + 20%, the bound the peak RSS must stay under.
    rss_bound_mb: Option<f64>,
}

pub fn bench_serve(args: &ServeBenchArgs) -> anyhow::Result<()> {
    let (_own, url) = match &args.url {
        Some(url) => (None, url.trim_end_matches('/').to_string()),
        None => {
            eprintln!("starting hybrid serve --cloud-model {}…", args.model);
            let extra: Vec<String> = args.kv_budget_mb.iter().flat_map(|mb| ["--kv-budget-mb".to_string(), mb.to_string()]).collect();
            let (server, url) = super::OwnServer::start(&args.model, &extra)?;
            (Some(server), url)
        }
    };
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        let mut call = ureq::get(&format!("{url}{path}"));
        if let Some(key) = &args.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        Ok(serde_json::from_str(&call.call()?.into_body().read_to_string()?)?)
    };
    // Our server's details (model, memory, prefix cache); other engines (llama-server, vLLM)
    // have none, and name their model in /v1/models.
    let health = || get("/health/details").ok();
    let model = match health().and_then(|h| Some(h["model"].as_str()?.to_string())) {
        Some(model) => model,
        None => get("/v1/models")
            .ok()
            .and_then(|m| Some(m["data"][0]["id"].as_str()?.to_string()))
            .ok_or_else(|| anyhow::anyhow!("{url} names no model in /health/details or /v1/models: is it an OpenAI-compatible server?"))?,
    };
    let client = |timeout_s| {
        CloudClient::new(CloudConfig { url: url.clone(), api_key: args.api_key.clone(), model: model.clone(), timeout: Duration::from_secs(timeout_s) })
    };
    let consult = |c: &CloudClient, prompt: &[u32], max_tokens| c.complete(&CompletionRequest::consult(&model, Prompt::Ids(prompt.to_vec()), max_tokens, 0));
    let mut rng = StdRng::seed_from_u64(7);
    // Ordinary token ids, clear of special tokens at either end of the vocabulary.
    let mut random_ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(100..20_000)).collect() };

    let mut report = Report { url: url.clone(), model: model.clone(), ..Default::default() };
    if !args.load_only {
        eprintln!("consult cost on a cached 500-token prefix…");
        let c = client(600);
        let (mut consult_ms, mut step_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // Fifteen pairs, and their medians: this kind of machine's neighbours move single
        // requests by 20% or more, and over minutes. The ratio is the median of each pair's own
        // ratio, its two requests a tenth of a second apart, so a slow minute moves both.
        for _ in 0..15 {
            // Each measured request extends the prefix that the request before it left cached,
            // as a session's next consult does: by twelve tokens (the local tokens since its
            // last consult), then by one (a decode step at the same context).
            let mut prompt = random_ids(500);
            consult(&c, &prompt, 1)?;
            let timed = |prompt: &[u32]| -> anyhow::Result<f64> {
                let t = Instant::now();
                consult(&c, prompt, 1)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            prompt.extend(random_ids(12));
            let twelve = timed(&prompt)?;
            prompt.extend(random_ids(1));
            let one = timed(&prompt)?;
            consult_ms.push(twelve);
            step_ms.push(one);
            ratios.push(twelve / one);
        }
        let (consult_ms, decode_step_ms, consult_vs_decode_step) = (median(&consult_ms), median(&step_ms), median(&ratios));

        eprintln!("scored consult against the same consult unscored…");
        // The client's verifying consult is not in CloudClient's request type: plain JSON.
        let post = |body: serde_json::Value| -> anyhow::Result<serde_json::Value> {
            let mut request = ureq::post(&format!("{url}/v1/completions")).header("Content-Type", "application/json");
            if let Some(key) = &args.api_key {
                request = request.header("Authorization", &format!("Bearer {key}"));
            }
            Ok(serde_json::from_str(&request.send(body.to_string().as_bytes())?.into_body().read_to_string()?)?)
        };
        let (mut scored_ms, mut unscored_ms, mut ratios, mut scored_tokens) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for pair in 0..11 {
            // Each timed consult extends a 500-token prefix of its own that a consult before left
            // cached, by 12 tokens; the scored one scores exactly those. Alternating which goes
            // first, so neither always follows the other.
            let prefixes = [random_ids(500), random_ids(500)];
            for prefix in &prefixes {
                consult(&c, prefix, 1)?;
            }
            let mut timed = |prefix: &[u32], scored: bool| -> anyhow::Result<f64> {
                let prompt = [prefix, &random_ids(12)].concat();
                let mut body = serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                    "logprobs": 5, "return_token_ids": true});
                if scored {
                    body["echo"] = true.into();
                    body["echo_from"] = prefix.len().into();
                }
                let t = Instant::now();
                let answer = post(body)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if scored {
                    let entries = answer["choices"][0]["logprobs"]["tokens"].as_array().map_or(0, |t| t.len());
                    scored_tokens = entries.saturating_sub(1);
                }
                Ok(ms)
            };
            let (scored, unscored) = match pair % 2 {
                0 => {
                    let s = timed(&prefixes[0], true)?;
                    (s, timed(&prefixes[1], false)?)
                }
                _ => {
                    let u = timed(&prefixes[1], false)?;
                    (timed(&prefixes[0], true)?, u)
                }
            };
            scored_ms.push(scored);
            unscored_ms.push(unscored);
            ratios.push(scored / unscored);
        }
        let (scored_consult_ms, unscored_consult_ms, scored_vs_unscored) = (median(&scored_ms), median(&unscored_ms), median(&ratios));

        eprintln!("decode throughput, one session and eight…");
        let throughput = |sessions: usize, prompts: Vec<Vec<u32>>| -> anyhow::Result<f64> {
            let t = Instant::now();
            let handles: Vec<_> = prompts
                .into_iter()
                .take(sessions)
                .map(|p| {
                    let c = client(600);
                    let model = model.clone();
                    let n = args.batch_tokens;
                    // With one logprob per token, as consults ask: llama.cpp's server reports
                    // token ids only inside the logprobs.
                    std::thread::spawn(move || c.complete(&CompletionRequest::consult(&model, Prompt::Ids(p), n, 1)).map(|c| c.tokens.len()))
                })
                .collect();
            let mut tokens = 0;
            for h in handles {
                tokens += h.join().map_err(|_| anyhow::anyhow!("a session panicked"))??;
            }
            Ok(tokens as f64 / t.elapsed().as_secs_f64())
        };
        let one = throughput(1, vec![random_ids(16)])?;
        let eight = throughput(8, (0..8).map(|_| random_ids(16)).collect())?;
        report = Report {
            consult_ms: round2(consult_ms),
            decode_step_ms: round2(decode_step_ms),
            consult_vs_decode_step: round2(consult_vs_decode_step),
            scored_consult_ms: round2(scored_consult_ms),
            unscored_consult_ms: round2(unscored_consult_ms),
            scored_consult_vs_unscored: round2(scored_vs_unscored),
            scored_tokens,
            one_session_tok_s: round2(one),
            eight_sessions_tok_s: round2(eight),
            eight_vs_one_session: round2(eight / one),
            ..report
        };
    }

    eprintln!("load: {} sessions, {} consults…", args.concurrency, args.requests);
    let load = load_phase(args, &model, &client)?;
    let h = health().unwrap_or_default();
    let mb = |v: &serde_json::Value| round2(v.as_f64().unwrap_or(0.0) / (1 << 20) as f64);
    let load = LoadReport {
        server_peak_rss_mb: mb(&h["memory"]["peak_rss_bytes"]),
        prefix_cache_mb: mb(&h["engine"]["prefix_cache"]["bytes"]),
        prefix_cache_capacity_mb: mb(&h["engine"]["prefix_cache"]["capacity_bytes"]),
        ..load
    };
    // The model file's size stands for the model's share of the memory.
    let model_mb = crate::eval::resolve_model(&report.model).ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len() as f64 / (1 << 20) as f64);
    report.load =
        LoadReport { kv_budget_mb: args.kv_budget_mb, rss_bound_mb: args.kv_budget_mb.zip(model_mb).map(|(b, m)| round2((b as f64 + m) * 1.2)), ..load };
    match args.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => print_report(&report),
    }
    Ok(())
}

fn load_phase(args: &ServeBenchArgs, model: &str, client: &dyn Fn(u64) -> CloudClient) -> anyhow::Result<LoadReport> {
    let remaining = Arc::new(Mutex::new(args.requests));
    // (ms, long prompt, cached tokens or the error with its HTTP status)
    let results = Arc::new(Mutex::new(Vec::<(f64, bool, Result<usize, (Option<u16>, String)>)>::new()));
    let (long_share, long_max) = (args.long_share, args.long_max.max(1024));
    let t = Instant::now();
    let handles: Vec<_> = (0..args.concurrency.max(1))
        .map(|s| {
            // Longer than the server's own request timeout (300 s by default): what is counted
            // is the server's answer, not the client giving up.
            let (c, remaining, results, model) = (client(330), remaining.clone(), results.clone(), model.to_string());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(1000 + s as u64);
                let mut prompt: Vec<u32> = Vec::new();
                loop {
                    {
                        let mut left = remaining.lock().unwrap_or_else(|e| e.into_inner());
                        if *left == 0 {
                            return;
                        }
                        *left -= 1;
                    }
                    // Now and then a fresh long prompt (a pasted file), answered at length.
                    let long = rng.random_bool(long_share.clamp(0.0, 1.0));
                    let request = match long {
                        true => {
                            let n = rng.random_range(1024..=long_max);
                            CompletionRequest::consult(&model, Prompt::Ids((0..n).map(|_| rng.random_range(100..20_000)).collect()), 64, 0)
                        }
                        // A session: a prompt, then a few local tokens between consults; a
                        // new conversation once it passes 512 tokens.
                        false => {
                            if prompt.is_empty() || prompt.len() > 512 {
                                prompt = (0..64).map(|_| rng.random_range(100..20_000)).collect();
                            }
                            prompt.extend((0..rng.random_range(1..6)).map(|_| rng.random_range(100..20_000u32)));
                            CompletionRequest::consult(&model, Prompt::Ids(prompt.clone()), 1, 0)
                        }
                    };
                    let started = Instant::now();
                    let r = c.complete(&request);
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    let outcome = match r {
                        Ok(done) => {
                            if !long {
                                prompt.extend(done.tokens.iter().map(|t| t.id));
                            }
                            Ok(done.usage.and_then(|u| u.prompt_tokens_details).map_or(0, |d| d.cached_tokens))
                        }
                        Err(e) => {
                            let status = match e {
                                crate::Error::CloudStatus { status, .. } => Some(status),
                                _ => None,
                            };
                            if refusal(status) {
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            Err((status, e.to_string()))
                        }
                    };
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((ms, long, outcome));
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let seconds = t.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let ok_ms: Vec<f64> = results.iter().filter(|r| r.2.is_ok()).map(|r| r.0).collect();
    let refused = |code: u16| results.iter().filter(|r| matches!(&r.2, Err((Some(s), _)) if *s == code)).count();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.2.as_ref().err()).filter(|(s, _)| !refusal(*s)).map(|(_, e)| e).collect();
    if let Some(first) = failures.first() {
        eprintln!("first failure: {first}");
    }
    let hits = results.iter().filter(|r| matches!(r.2, Ok(c) if c > 0)).count();
    Ok(LoadReport {
        concurrency: args.concurrency,
        requests: results.len(),
        long_requests: results.iter().filter(|r| r.1).count(),
        ok: ok_ms.len(),
        rejected_429: refused(429),
        rejected_503: refused(503),
        failed: failures.len(),
        seconds: round2(seconds),
        requests_per_s: round2(ok_ms.len() as f64 / seconds),
        p50_ms: round2(percentile(&ok_ms, 50.0)),
        p99_ms: round2(percentile(&ok_ms, 99.0)),
        cache_hit_rate: round2(hits as f64 / ok_ms.len().max(1) as f64),
        ..Default::default()
    })
}

/// A server that says it is busy (429) or cannot take the request now (503) has answered:
/// the load counts it apart from failures.
fn refusal(status: Option<u16>) -> bool {
    matches!(status, Some(429 | 503))
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn print_report(r: &Report) {
    println!("hybrid bench serve: {} at {}", r.model, r.url);
    if r.consult_ms > 0.0 {
        println!(
            "  consult, 12 new tokens on a cached 500: {:.1} ms; one decode step {:.1} ms; paired ratio {:.2}x  [target <= 2]",
            r.consult_ms, r.decode_step_ms, r.consult_vs_decode_step
        );
        match r.scored_tokens {
            0 => println!("  scored consult: the server echoed no prompt tokens (it does not score prompts: no `echo`)"),
            n => println!(
                "  scored_consult_vs_unscored: {:.2}x  ({:.1} ms scoring {n} tokens vs {:.1} ms unscored, paired)  [target <= 1.2]",
                r.scored_consult_vs_unscored, r.scored_consult_ms, r.unscored_consult_ms
            ),
        }
        println!(
            "  decode throughput: 8 sessions {:.1} tok/s = {:.2}x one session ({:.1} tok/s)  [target >= 3]",
            r.eight_sessions_tok_s, r.eight_vs_one_session, r.one_session_tok_s
        );
    }
    let l = &r.load;
    println!(
        "  load: {} sessions, {} requests ({} long) in {:.1} s ({:.1}/s): {} ok, {} x 429, {} x 503, {} failed; p50 {:.1} ms, p99 {:.1} ms; cache hits {:.0}%",
        l.concurrency,
        l.requests,
        l.long_requests,
        l.seconds,
        l.requests_per_s,
        l.ok,
        l.rejected_429,
        l.rejected_503,
        l.failed,
        l.p50_ms,
        l.p99_ms,
        l.cache_hit_rate * 100.0
    );
    println!("  server memory: peak RSS {:.0} MiB; prefix cache {:.0} of {:.0} MiB", l.server_peak_rss_mb, l.prefix_cache_mb, l.prefix_cache_capacity_mb);
    if let (Some(budget), Some(bound)) = (l.kv_budget_mb, l.rss_bound_mb) {
        println!(
            "  KV budget {budget} MiB: peak RSS {:.0} MiB against budget + model + 20% = {bound:.0} MiB: {}",
            l.server_peak_rss_mb,
            if l.server_peak_rss_mb <= bound { "within" } else { "OVER" }
        );
    }
}
