//! `hybrid eval humaneval`: greedy pass@1 on HumanEval for the small model alone, the cloud
//! model alone, and every policy at every threshold, with the cloud-token share, consults
//! per 100 tokens and the cloud cost counted two ways (work the cloud really did after its
//! prefix cache, and what an API billing every prompt in full would charge), each next to
//! cloud-only generation of the same answers.
//!
//! Hybrid configurations consult a real completions server (`--cloud URL`, or our own
//! `hybrid serve` started on a free loopback port). Cloud-only runs the cloud model in this
//! process on the same prompt ids: the same greedy tokens the server gives (its attention is
//! batch-invariant), without one HTTP round trip per token.
//!
//! Every answer is appended to `<out>.answers.jsonl` as soon as it is scored; a rerun skips
//! what is there. Problems run in order with every configuration each, so a partial run
//! still compares all configurations on the same problems.
use super::humaneval::{instruction, load_problems, Problem};
use super::plot::{line_plot, HLine, PlotSpec, Series};
use super::sandbox;
use crate::backoff::Backoff;
use crate::cloud::{CloudClient, CloudConfig};
use crate::generate::{CloudTransport, HybridConfig, HybridLoop, HybridStats, LoopEvent, NoCloud};
use crate::model::decoder::LoadOptions;
use crate::model::Model;
use crate::policy::{Policy, PolicyKind};
use crate::reward::RewardHead;
use crate::sampler::Sampler;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct HumanEvalArgs {
    /// The small model (name or .gguf path).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub slm: String,
    /// A running completions server; without it, `hybrid serve --cloud-model M` is started on loopback.
    #[arg(long)]
    pub cloud: Option<String>,
    /// The cloud model (name or .gguf path): served, and run in-process for cloud-only.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    pub cloud_model: String,
    #[arg(long, env = "HYBRID_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, value_delimiter = ',', default_value = "reward,maxprob,entropy,random,verify")]
    pub policies: Vec<PolicyKind>,
    /// Thresholds per policy, `POLICY=T` (repeat a policy for several); a bare number applies
    /// to every listed policy whose threshold is a probability (reward, maxprob, random). The
    /// default is the README table's settings, so a plain run resumes and extends that table.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "reward=0.6,reward=0.7,reward=0.85,maxprob=0.65,maxprob=0.75,maxprob=0.9,entropy=0.4,entropy=0.65,random=0.04,verify=0.7"
    )]
    pub thresholds: Vec<String>,
    /// Gated policies' consults only answer, as before verified consults (their rows keep
    /// the plain `policy@t` names; verified rows are `policy@t+verify`).
    #[arg(long)]
    pub no_verify: bool,
    /// The verify policy consults after at most this many unchecked local tokens.
    #[arg(long, default_value_t = crate::generate::DEFAULT_VERIFY_EVERY)]
    pub verify_every: usize,
    /// Gated policies with verification leave the tokens after their last consult unchecked
    /// (rows `policy@t+verify`; with the final check they are `policy@t+verify+final`).
    #[arg(long)]
    pub no_final_check: bool,
    #[arg(long, default_value_t = 1)]
    pub consult_tokens: usize,
    /// The reward head; default: the one shipped for --slm.
    #[arg(long)]
    pub reward_head: Option<PathBuf>,
    /// Tokens per answer at most (answers also end when their first code block closes).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Only the first N problems.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The JSON summary; answers go to <out>.answers.jsonl, the plot to <out>.svg.
    #[arg(long, default_value = "assets/eval/humaneval.json")]
    pub out: PathBuf,
    /// Seconds a test program may run.
    #[arg(long, default_value_t = 10)]
    pub test_timeout_s: u64,
}

/// One configuration: a policy at a threshold. `never` is the small model alone, `always` the
/// cloud alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub policy: PolicyKind,
    pub threshold: f32,
    pub consult_tokens: usize,
    /// Consults check the local tokens since the previous one.
    #[serde(default)]
    pub verify: bool,
    #[serde(default)]
    pub verify_every: usize,
    /// Gated policies with verification check the answer's tail before it ends.
    #[serde(default)]
    pub final_check: bool,
}

impl Setting {
    /// The name in tables and the answers file; runs with other `--consult-tokens` share the
    /// SLM-only and cloud-only answers and add their own hybrid ones.
    fn key(&self) -> String {
        let base = match self.policy {
            PolicyKind::Never => return "slm-only".into(),
            PolicyKind::Always => return "cloud-only".into(),
            PolicyKind::Verify => format!("verify@{}/every{}", self.threshold, self.verify_every),
            p if self.verify && self.final_check => format!("{p}@{}+verify+final", self.threshold),
            p if self.verify => format!("{p}@{}+verify", self.threshold),
            p => format!("{p}@{}", self.threshold),
        };
        match self.consult_tokens {
            1 => base,
            k => format!("{base}/k{k}"),
        }
    }
}

/// One scored answer, as stored in the answers file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub setting: String,
    pub task_id: String,
    pub passed: bool,
    /// `passed`, `failed` or `timeout`.
    pub outcome: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub cloud_tokens: usize,
    pub consults: usize,
    pub fallbacks: usize,
    pub cloud_prompt_tokens: usize,
    pub cloud_cached_tokens: usize,
    pub cloud_completion_tokens: usize,
    /// Verification: local tokens checked and kept, corrections, local tokens they withdrew,
    /// local tokens of the answer left unchecked.
    #[serde(default)]
    pub verified_tokens: usize,
    #[serde(default)]
    pub corrections: usize,
    #[serde(default)]
    pub withdrawn_tokens: usize,
    #[serde(default)]
    pub unverified_tokens: usize,
    pub answer: String,
    /// sha256 of the reward head, for answers that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
}

/// The summary of one configuration over the problems every configuration has answered.
#[derive(Debug, Clone, Serialize)]
pub struct SettingSummary {
    pub setting: String,
    pub policy: PolicyKind,
    pub threshold: f32,
    pub problems: usize,
    pub pass_at_1: f64,
    pub cloud_share: f64,
    pub consults_per_100_tokens: f64,
    /// Local tokens withdrawn by corrections, per 100 local tokens made (kept or withdrawn).
    pub withdrawn_per_100_local: f64,
    pub corrections: usize,
    /// Answers identical to cloud-only's, character for character.
    pub same_as_cloud_only: usize,
    /// Share of the SLM-only → cloud-only pass@1 gap this configuration recovers.
    pub gap_recovered: Option<f64>,
    /// Cloud work actually done: prompt tokens computed after prefix-cache hits (prefill,
    /// batched and cheap per token) and tokens generated (decode, one step each).
    pub cloud_prefill_tokens: usize,
    pub cloud_decode_tokens: usize,
    /// What an API billing every request's whole prompt charges: the sum of all consults'
    /// prompt tokens, plus the completion tokens.
    pub billed_prompt_tokens: usize,
    pub billed_completion_tokens: usize,
    /// Cloud-only generation of these same answers, one request each: prompt and answer tokens.
    pub cloud_only_prompt_tokens: usize,
    pub cloud_only_completion_tokens: usize,
    /// (prefill + decode) / cloud-only (prompt + answer).
    pub work_vs_cloud_only: f64,
    /// decode / cloud-only answer tokens: the expensive sequential steps.
    pub decode_vs_cloud_only: f64,
    /// (billed prompt + completion) / cloud-only (prompt + answer).
    pub billed_vs_cloud_only: f64,
}

/// SLM-only and cloud-only first, then each listed policy at each of its thresholds.
fn settings(args: &HumanEvalArgs) -> anyhow::Result<Vec<Setting>> {
    let consult_tokens = args.consult_tokens;
    let plain = |policy, threshold| Setting { policy, threshold, consult_tokens, verify: false, verify_every: 0, final_check: false };
    let mut all = vec![plain(PolicyKind::Never, 0.0), plain(PolicyKind::Always, 1.0)];
    for item in &args.thresholds {
        let (policies, value) = match item.split_once('=') {
            Some((p, v)) => (vec![p.parse::<PolicyKind>()?], v),
            None => {
                (args.policies.iter().copied().filter(|p| matches!(p, PolicyKind::Reward | PolicyKind::MaxProb | PolicyKind::Random)).collect(), item.as_str())
            }
        };
        let threshold: f32 = value.trim().parse().with_context(|| format!("--thresholds: `{item}` is not POLICY=NUMBER or NUMBER"))?;
        for policy in policies.into_iter().filter(|p| args.policies.contains(p) && p.may_consult() && *p != PolicyKind::Always) {
            Policy::new(policy, threshold, 0)?;
            let verify = policy == PolicyKind::Verify || !args.no_verify;
            let verify_every = if policy == PolicyKind::Verify { args.verify_every.max(1) } else { 0 };
            let final_check = policy == PolicyKind::Verify || (verify && !args.no_final_check);
            all.push(Setting { verify, verify_every, final_check, ..plain(policy, threshold) });
        }
    }
    Ok(all)
}

/// Paths next to the summary.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("humaneval");
    out.with_file_name(format!("{stem}{suffix}"))
}

pub fn run(args: &HumanEvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.consult_tokens >= 1, "--consult-tokens must be at least 1");
    let mut problems = load_problems()?;
    problems.truncate(args.limit.unwrap_or(problems.len()));
    let settings = settings(args)?;
    let answers_path = sibling(&args.out, ".answers.jsonl");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let head_path = match (&args.reward_head, settings.iter().any(|s| s.policy.needs_reward())) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(
            crate::reward::shipped_head(&args.slm)
                .with_context(|| format!("no reward head ships for {}; pass --reward-head FILE or leave `reward` out of --policies", args.slm))?,
        ),
        (None, false) => None,
    };
    let (head, head_sha256) = match &head_path {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (Some(RewardHead::from_safetensors(&bytes)?), Some(crate::fetch::sha256_file(path)?))
        }
        None => (None, None),
    };
    // Answers of another reward head are stale: they are redone (and replaced in summaries).
    let mut records: Vec<AnswerRecord> = read_records(&answers_path)?.into_iter().filter(|r| r.head_sha256.is_none() || r.head_sha256 == head_sha256).collect();
    let done: HashSet<(String, String)> = records.iter().map(|r| (r.setting.clone(), r.task_id.clone())).collect();

    let mut slm = Model::load(&crate::eval::resolve_model(&args.slm)?).with_context(|| format!("loading {}", args.slm))?;
    let pending = |s: &Setting| problems.iter().any(|p| !done.contains(&(s.key(), p.task_id.clone())));
    let mut cloud_model = match pending(&settings[1]) {
        // The server's kernels: cloud-only answers are what `hybrid serve` would give.
        true => Some(
            Model::load_with(&crate::eval::resolve_model(&args.cloud_model)?, LoadOptions::cloud()).with_context(|| format!("loading {}", args.cloud_model))?,
        ),
        false => None,
    };
    let needs_server = settings.iter().filter(|s| s.policy != PolicyKind::Never && s.policy != PolicyKind::Always).any(pending);
    anyhow::ensure!(
        !(args.no_verify && args.policies.contains(&PolicyKind::Verify)),
        "--no-verify leaves the gated policies' consults unchecked; the verify policy always checks: leave `verify` out of --policies"
    );
    let (_own_server, url) = match (&args.cloud, needs_server) {
        (Some(url), _) => (None, url.clone()),
        (None, true) => {
            eprintln!("starting hybrid serve --cloud-model {} on loopback…", args.cloud_model);
            let (server, url) = super::OwnServer::start(&args.cloud_model, &[])?;
            (Some(server), url)
        }
        (None, false) => (None, String::new()),
    };
    let mut client = CloudClient::new(CloudConfig {
        url,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        model: args.cloud_model.clone(),
        timeout: Duration::from_secs(120),
    });

    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&answers_path)?;
    let config = HybridConfig { max_tokens: args.max_tokens, consult_tokens: args.consult_tokens, ..Default::default() };
    for (index, problem) in problems.iter().enumerate() {
        let prompt = slm.tokenizer.encode(&slm.chat_prompt(&instruction(problem))?)?;
        for setting in &settings {
            if done.contains(&(setting.key(), problem.task_id.clone())) {
                continue;
            }
            let policy = Policy::new(setting.policy, setting.threshold, 1000 + index as u64)?;
            let (answer, stats) = match setting.policy {
                PolicyKind::Always => {
                    let cloud = cloud_model.as_mut().expect("loaded when cloud-only is pending");
                    let mut run = HybridLoop::<_, NoCloud> {
                        slm: &mut cloud.decoder,
                        tokenizer: &cloud.tokenizer,
                        head: None,
                        cloud: None,
                        policy: Policy::new(PolicyKind::Never, 0.0, 0)?,
                        sampler: Sampler::new(Default::default()),
                        config: config.clone(),
                        backoff: &mut Backoff::default(),
                    };
                    let (answer, mut stats) = answer_with(&mut run, &prompt)?;
                    // The whole answer is the cloud's, from one request.
                    stats.cloud_tokens = stats.tokens;
                    stats.cloud_prompt_tokens = stats.prompt_tokens;
                    stats.cloud_completion_tokens = stats.tokens;
                    stats.consults = 1;
                    (answer, stats)
                }
                _ => {
                    // Each setting has its own prefix cache on the server (`cache_salt`): its
                    // cloud work is counted from cold, not from another setting's consults.
                    let config = HybridConfig {
                        verify: setting.verify,
                        verify_every: setting.verify_every.max(1),
                        final_check: setting.final_check,
                        cache_salt: Some(setting.key()),
                        ..config.clone()
                    };
                    let mut run = HybridLoop {
                        slm: &mut slm.decoder,
                        tokenizer: &slm.tokenizer,
                        // Only the reward policy reads the score: the others skip the head's work.
                        head: head.as_ref().filter(|_| setting.policy.needs_reward()),
                        cloud: setting.policy.may_consult().then_some(&mut client),
                        policy,
                        sampler: Sampler::new(Default::default()),
                        config,
                        backoff: &mut Backoff::default(),
                    };
                    answer_with(&mut run, &prompt)?
                }
            };
            if stats.failed_consults > 0 {
                bail!(
                    "{} consults failed on {} ({}); the evaluation needs a working cloud: check it and rerun (finished answers are kept)",
                    stats.failed_consults,
                    problem.task_id,
                    stats.last_cloud_error.unwrap_or_default()
                );
            }
            let mut record = score(problem, setting, answer, &stats, Duration::from_secs(args.test_timeout_s))?;
            if setting.policy.needs_reward() {
                record.head_sha256.clone_from(&head_sha256);
            }
            eprintln!(
                "{} {:<16} {:<6} {:>3} tokens, {:>2} from the cloud",
                problem.task_id, record.setting, record.outcome, record.tokens, record.cloud_tokens
            );
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
            file.flush()?;
            records.push(record);
        }
    }

    let summaries = summarise(&settings, &records, &problems);
    let report = serde_json::json!({
        "slm": args.slm,
        "cloud_model": args.cloud_model,
        "consult_tokens": args.consult_tokens,
        "max_tokens": args.max_tokens,
        "settings": summaries,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(sibling(&args.out, ".svg"), plot(&summaries, args))?;
    print_table(&summaries);
    eprintln!("wrote {}, {} and {}", args.out.display(), sibling(&args.out, ".svg").display(), answers_path.display());
    Ok(())
}

/// Runs one answer, ending it when its first code block closes (the rest is prose the test
/// never reads). Withdrawn tokens leave the answer.
fn answer_with<M: crate::generate::Slm, C: CloudTransport>(run: &mut HybridLoop<'_, M, C>, prompt: &[u32]) -> anyhow::Result<(String, HybridStats)> {
    let mut pieces: Vec<String> = Vec::new();
    let stats = pollster::block_on(run.run(prompt, async |event| match event {
        LoopEvent::Token(token) => {
            pieces.push(token.text.clone());
            !code_block_closed(&pieces.concat())
        }
        LoopEvent::Withdraw { withdraw_from } => {
            pieces.truncate(*withdraw_from);
            true
        }
        LoopEvent::Verified { .. } => true,
    }))?;
    Ok((pieces.concat() + &stats.tail, stats))
}

/// Whether the answer's first fenced code block has been closed by a fence line.
pub fn code_block_closed(answer: &str) -> bool {
    let Some(open) = answer.find("```") else { return false };
    let Some(newline) = answer[open..].find('\n') else { return false };
    answer[open + newline + 1..].lines().any(|line| line.trim_start().starts_with("```"))
}

fn score(problem: &Problem, setting: &Setting, answer: String, stats: &HybridStats, timeout: Duration) -> anyhow::Result<AnswerRecord> {
    let outcome = sandbox::check(problem, &answer, timeout)?;
    Ok(AnswerRecord {
        setting: setting.key(),
        task_id: problem.task_id.clone(),
        passed: outcome.passed(),
        outcome: match outcome {
            sandbox::Outcome::Passed => "passed",
            sandbox::Outcome::Failed { .. } => "failed",
            sandbox::Outcome::TimedOut => "timeout",
        }
        .into(),
        prompt_tokens: stats.prompt_tokens,
        tokens: stats.tokens,
        cloud_tokens: stats.cloud_tokens,
        consults: stats.consults,
        fallbacks: stats.fallbacks,
        cloud_prompt_tokens: stats.cloud_prompt_tokens,
        cloud_cached_tokens: stats.cloud_cached_tokens,
        cloud_completion_tokens: stats.cloud_completion_tokens,
        verified_tokens: stats.verified_tokens,
        corrections: stats.corrections,
        withdrawn_tokens: stats.withdrawn_tokens,
        unverified_tokens: stats.unverified_tokens,
        answer,
        head_sha256: None,
    })
}

fn read_records(path: &Path) -> anyhow::Result<Vec<AnswerRecord>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    // A line cut by an interrupted run is dropped; its answer is redone.
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Figures per configuration over the problems that every configuration has answered.
pub fn summarise(settings: &[Setting], records: &[AnswerRecord], problems: &[Problem]) -> Vec<SettingSummary> {
    let by_key: BTreeMap<(String, String), &AnswerRecord> = records.iter().map(|r| ((r.setting.clone(), r.task_id.clone()), r)).collect();
    let common: Vec<&Problem> = problems.iter().filter(|p| settings.iter().all(|s| by_key.contains_key(&(s.key(), p.task_id.clone())))).collect();
    let mut out: Vec<SettingSummary> = settings
        .iter()
        .map(|s| {
            let rs: Vec<&AnswerRecord> = common.iter().map(|p| by_key[&(s.key(), p.task_id.clone())]).collect();
            let n = rs.len().max(1) as f64;
            let sum = |f: fn(&AnswerRecord) -> usize| rs.iter().map(|r| f(r)).sum::<usize>();
            let tokens = sum(|r| r.tokens).max(1);
            let (only_prompt, only_answer) = (sum(|r| r.prompt_tokens), sum(|r| r.tokens));
            let prefill = sum(|r| r.cloud_prompt_tokens - r.cloud_cached_tokens.min(r.cloud_prompt_tokens));
            let decode = sum(|r| r.cloud_completion_tokens);
            let billed_prompt = sum(|r| r.cloud_prompt_tokens);
            let cloud_only = (only_prompt + only_answer).max(1) as f64;
            let withdrawn = sum(|r| r.withdrawn_tokens);
            let local_made = tokens - sum(|r| r.cloud_tokens).min(tokens) + withdrawn;
            let same_as_cloud_only = common
                .iter()
                .zip(&rs)
                .filter(|(p, r)| by_key.get(&("cloud-only".to_string(), p.task_id.clone())).is_some_and(|c| c.answer == r.answer))
                .count();
            SettingSummary {
                setting: s.key(),
                policy: s.policy,
                threshold: s.threshold,
                problems: rs.len(),
                pass_at_1: rs.iter().filter(|r| r.passed).count() as f64 / n,
                cloud_share: sum(|r| r.cloud_tokens) as f64 / tokens as f64,
                consults_per_100_tokens: 100.0 * sum(|r| r.consults) as f64 / tokens as f64,
                withdrawn_per_100_local: 100.0 * withdrawn as f64 / local_made.max(1) as f64,
                corrections: sum(|r| r.corrections),
                same_as_cloud_only,
                gap_recovered: None,
                cloud_prefill_tokens: prefill,
                cloud_decode_tokens: decode,
                billed_prompt_tokens: billed_prompt,
                billed_completion_tokens: decode,
                cloud_only_prompt_tokens: only_prompt,
                cloud_only_completion_tokens: only_answer,
                work_vs_cloud_only: (prefill + decode) as f64 / cloud_only,
                decode_vs_cloud_only: decode as f64 / only_answer.max(1) as f64,
                billed_vs_cloud_only: (billed_prompt + decode) as f64 / cloud_only,
            }
        })
        .collect();
    let (slm, cloud) = (out[0].pass_at_1, out[1].pass_at_1);
    for s in &mut out {
        s.gap_recovered = (cloud > slm).then(|| (s.pass_at_1 - slm) / (cloud - slm));
    }
    out
}

fn plot(summaries: &[SettingSummary], args: &HumanEvalArgs) -> String {
    let mut series: Vec<Series> = Vec::new();
    for policy in &args.policies {
        for verified in [false, true] {
            let verified_row = |s: &&SettingSummary| s.setting.ends_with("+verify") || s.policy == PolicyKind::Verify;
            let mut points: Vec<(f64, f64)> =
                summaries.iter().filter(|s| s.policy == *policy && verified_row(s) == verified).map(|s| (s.cloud_share * 100.0, s.pass_at_1 * 100.0)).collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = match (verified, *policy) {
                (true, p) if p != PolicyKind::Verify => format!("{p} + verify"),
                (_, p) => p.to_string(),
            };
            series.push(Series { name, points });
        }
    }
    let widest = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let hline = |s: &SettingSummary, label: &str| HLine { label: format!("{label} {:.1}%", s.pass_at_1 * 100.0), y: s.pass_at_1 * 100.0 };
    line_plot(&PlotSpec {
        title: format!("HumanEval pass@1 ({} problems), {} + cloud", summaries[0].problems, args.slm),
        x_label: "tokens from the cloud (%)".into(),
        y_label: "pass@1 (%)".into(),
        series,
        hlines: vec![hline(&summaries[0], "SLM only"), hline(&summaries[1], "cloud only")],
        x_range: Some((0.0, widest * 1.1)),
        y_range: None,
    })
}

fn print_table(summaries: &[SettingSummary]) {
    println!("| setting | problems | pass@1 | gap recovered | cloud tokens | consults /100 tok | withdrawn /100 local | same as cloud-only | cloud prefill / decode tokens | work vs cloud-only | decode vs cloud-only | billed vs cloud-only |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in summaries {
        println!(
            "| {} | {} | {:.1}% | {} | {:.1}% | {:.2} | {:.1} | {} | {} / {} | {:.2}× | {:.2}× | {:.2}× |",
            s.setting,
            s.problems,
            s.pass_at_1 * 100.0,
            s.gap_recovered.map_or("-".into(), |g| format!("{:.0}%", g * 100.0)),
            s.cloud_share * 100.0,
            s.consults_per_100_tokens,
            s.withdrawn_per_100_local,
            s.same_as_cloud_only,
            s.cloud_prefill_tokens,
            s.cloud_decode_tokens,
            s.work_vs_cloud_only,
            s.decode_vs_cloud_only,
            s.billed_vs_cloud_only,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_when_its_first_code_block_closes() {
        assert!(!code_block_closed("Here is the function:\n"));
        assert!(!code_block_closed("Here:\n```python\ndef f():\n    return 1\n"));
        assert!(!code_block_closed("Here:\n```python\ndef f():\n    return 1\n``"));
        assert!(code_block_closed("Here:\n```python\ndef f():\n    return 1\n```"));
        assert!(code_block_closed("```\nx = 1\n```\nMore text"));
        // A fence inside the opening line does not count as closing.
        assert!(!code_block_closed("```python"));
    }

    fn record(setting: &str, task: &str, passed: bool, tokens: usize, cloud: usize, consults: &[(usize, usize)]) -> AnswerRecord {
        AnswerRecord {
            setting: setting.into(),
            task_id: task.into(),
            passed,
            outcome: String::new(),
            prompt_tokens: 100,
            tokens,
            cloud_tokens: cloud,
            consults: consults.len(),
            fallbacks: 0,
            cloud_prompt_tokens: consults.iter().map(|c| c.0).sum(),
            cloud_cached_tokens: consults.iter().map(|c| c.1).sum(),
            cloud_completion_tokens: cloud,
            verified_tokens: 0,
            corrections: 0,
            withdrawn_tokens: 0,
            unverified_tokens: 0,
            answer: String::new(),
            head_sha256: None,
        }
    }

    #[test]
    fn the_summary_counts_gap_share_and_both_costs_on_problems_all_settings_answered() {
        let problem =
            |id: &str| Problem { task_id: id.into(), prompt: String::new(), canonical_solution: String::new(), test: String::new(), entry_point: "f".into() };
        let problems = [problem("a"), problem("b"), problem("c")];
        let settings = [
            Setting { policy: PolicyKind::Never, threshold: 0.0, consult_tokens: 1, verify: false, verify_every: 0, final_check: false },
            Setting { policy: PolicyKind::Always, threshold: 1.0, consult_tokens: 1, verify: false, verify_every: 0, final_check: false },
            Setting { policy: PolicyKind::MaxProb, threshold: 0.5, consult_tokens: 1, verify: false, verify_every: 0, final_check: false },
        ];
        let records = vec![
            record("slm-only", "a", false, 50, 0, &[]),
            record("slm-only", "b", false, 50, 0, &[]),
            record("cloud-only", "a", true, 50, 50, &[(100, 0)]),
            record("cloud-only", "b", true, 50, 50, &[(100, 0)]),
            // Two consults on `a`: prompt 110 (none cached) then 140 (110 cached).
            record("maxprob@0.5", "a", true, 50, 2, &[(110, 0), (140, 110)]),
            record("maxprob@0.5", "b", false, 50, 0, &[]),
            // `c` is answered by one setting only: left out everywhere.
            record("slm-only", "c", true, 50, 0, &[]),
        ];
        let s = summarise(&settings, &records, &problems);
        assert!(s.iter().all(|x| x.problems == 2));
        assert_eq!((s[0].pass_at_1, s[1].pass_at_1, s[2].pass_at_1), (0.0, 1.0, 0.5));
        assert_eq!(s[2].gap_recovered, Some(0.5));
        assert_eq!(s[2].cloud_share, 0.02);
        assert_eq!(s[2].consults_per_100_tokens, 2.0);
        // Work: 110 + 30 computed prompt tokens, 2 generated; billed: 250 + 2; cloud-only: 2 × (100 + 50).
        assert_eq!((s[2].cloud_prefill_tokens, s[2].cloud_decode_tokens, s[2].billed_prompt_tokens), (140, 2, 250));
        assert_eq!((s[2].cloud_only_prompt_tokens, s[2].cloud_only_completion_tokens), (200, 100));
        assert!((s[2].work_vs_cloud_only - 142.0 / 300.0).abs() < 1e-12);
        assert!((s[2].billed_vs_cloud_only - 252.0 / 300.0).abs() < 1e-12);
        assert_eq!(s[2].decode_vs_cloud_only, 0.02);
        assert_eq!(s[1].billed_vs_cloud_only, 1.0);
        let key = |policy, threshold, consult_tokens, verify, verify_every, final_check| {
            Setting { policy, threshold, consult_tokens, verify, verify_every, final_check }.key()
        };
        assert_eq!(key(PolicyKind::Reward, 0.25, 4, false, 0, false), "reward@0.25/k4");
        assert_eq!(key(PolicyKind::Reward, 0.25, 1, true, 0, false), "reward@0.25+verify");
        assert_eq!(key(PolicyKind::MaxProb, 0.4, 1, true, 0, true), "maxprob@0.4+verify+final");
        assert_eq!(key(PolicyKind::Verify, 0.7, 1, true, 32, true), "verify@0.7/every32");
    }
}
