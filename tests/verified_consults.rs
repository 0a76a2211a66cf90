//! Verified consults against a real `hybrid serve` on 127.0.0.1: each consult also checks the
//! small model's tokens since the previous one (`echo` + `logprobs`), rolls back where the
//! cloud disagrees, and the `verify` policy's answer is the cloud model's own greedy answer,
//! id for id, on qwen2.5-coder-0.5b → qwen2.5-coder-1.5b.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use common::server::Server;
use hybrid_assistant::backoff::Backoff;
use hybrid_assistant::cloud::{CloudClient, CloudConfig, Completion, CompletionRequest};
use hybrid_assistant::generate::{CloudTransport, HybridConfig, HybridLoop, HybridStats, LoopEvent, NoCloud, Source};
use hybrid_assistant::model::decoder::LoadOptions;
use hybrid_assistant::model::Model;
use hybrid_assistant::policy::{Policy, PolicyKind};
use hybrid_assistant::sampler::{Sampler, SamplerConfig};
use std::time::Duration;

fn model(name: &str) -> Model {
    Model::load_with(&common::model_path(name), LoadOptions::cloud()).unwrap()
}

fn client(server: &Server, model: &str) -> CloudClient {
    CloudClient::new(CloudConfig { url: server.url.clone(), api_key: None, model: model.into(), timeout: Duration::from_secs(120) })
}

/// The first `n` prompts of the training prompt set (real user requests, not HumanEval).
fn prompts(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/prompts/train.jsonl")).unwrap();
    text.lines().take(n).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string()).collect()
}

/// What a consumer that honours withdrawals ends up showing: the answer's ids and text.
#[derive(Default)]
struct Screen {
    ids: Vec<u32>,
    texts: Vec<String>,
    sources: Vec<Source>,
    withdrawals: usize,
    verified_to: usize,
}

impl Screen {
    fn apply(&mut self, event: &LoopEvent) {
        match event {
            LoopEvent::Token(t) => {
                self.ids.push(t.id);
                self.texts.push(t.text.clone());
                self.sources.push(t.source);
            }
            LoopEvent::Withdraw { withdraw_from } => {
                assert!(*withdraw_from >= self.verified_to, "a checked token was withdrawn");
                self.ids.truncate(*withdraw_from);
                self.texts.truncate(*withdraw_from);
                self.sources.truncate(*withdraw_from);
                self.withdrawals += 1;
            }
            LoopEvent::Verified { verified_to } => {
                assert!(*verified_to <= self.ids.len() && *verified_to >= self.verified_to);
                self.verified_to = *verified_to;
            }
        }
    }
}

struct Setup {
    policy: PolicyKind,
    threshold: f32,
    verify: bool,
    verify_every: usize,
    final_check: bool,
    sampler: SamplerConfig,
    max_tokens: usize,
}

fn run<C: CloudTransport>(slm: &mut Model, cloud: Option<&mut C>, prompt: &[u32], s: &Setup) -> (Screen, hybrid_assistant::Result<HybridStats>) {
    let mut hybrid = HybridLoop {
        slm: &mut slm.decoder,
        tokenizer: &slm.tokenizer,
        head: None,
        cloud,
        policy: Policy::new(s.policy, s.threshold, 1).unwrap(),
        sampler: Sampler::new(s.sampler),
        config: HybridConfig { max_tokens: s.max_tokens, verify: s.verify, verify_every: s.verify_every, final_check: s.final_check, ..Default::default() },
        backoff: &mut Backoff::default(),
    };
    let mut screen = Screen::default();
    let stats = pollster::block_on(hybrid.run(prompt, async |e| {
        screen.apply(e);
        true
    }));
    (screen, stats)
}

fn greedy(policy: PolicyKind, threshold: f32, max_tokens: usize) -> Setup {
    Setup { policy, threshold, verify: true, verify_every: 32, final_check: true, sampler: SamplerConfig::default(), max_tokens }
}

/// The screen agrees with the statistics and its text is the ids' text.
fn consistent(screen: &Screen, stats: &HybridStats, slm: &Model) {
    assert_eq!(screen.ids.len(), stats.tokens, "{stats:?}");
    assert_eq!(screen.sources.iter().filter(|&&s| s == Source::Cloud).count(), stats.cloud_tokens);
    assert_eq!(screen.withdrawals, stats.corrections);
    assert_eq!(screen.texts.concat() + &stats.tail, slm.tokenizer.decode(&screen.ids));
}

#[test]
fn verify_gives_the_cloud_models_greedy_answer_id_for_id_on_twenty_prompts() {
    const MAX_TOKENS: usize = 40;
    let server = Server::start(&["--cloud-model", "qwen2.5-coder-1.5b"]);
    let mut slm = model("qwen2.5-coder-0.5b");
    // `hybrid generate --model qwen2.5-coder-1.5b`: the same loop, the cloud model alone.
    let mut cloud_model = model("qwen2.5-coder-1.5b");
    let mut cloud = client(&server, "qwen2.5-coder-1.5b");
    let (mut local, mut corrections, mut withdrawn, mut cloud_tokens) = (0, 0, 0, 0);
    for (i, text) in prompts(20).iter().enumerate() {
        let prompt = slm.tokenizer.encode(&slm.chat_prompt(text).unwrap()).unwrap();
        let (reference, stats) = run::<NoCloud>(&mut cloud_model, None, &prompt, &greedy(PolicyKind::Never, 0.0, MAX_TOKENS));
        let reference_len = stats.unwrap().tokens;
        let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &greedy(PolicyKind::Verify, 0.7, MAX_TOKENS));
        let stats = stats.unwrap();
        assert_eq!(screen.ids, reference.ids, "prompt {i}: {text}");
        assert_eq!(screen.ids.len(), reference_len);
        assert_eq!(stats.unverified_tokens, 0, "prompt {i}: {stats:?}");
        assert_eq!(stats.failed_consults, 0, "{:?}", stats.last_cloud_error);
        consistent(&screen, &stats, &slm);
        local += stats.tokens - stats.cloud_tokens;
        corrections += stats.corrections;
        withdrawn += stats.withdrawn_tokens;
        cloud_tokens += stats.cloud_tokens;
    }
    eprintln!("verify: {local} local tokens kept, {cloud_tokens} from the cloud, {corrections} corrections withdrew {withdrawn}");
    // The point of the policy: most tokens still come from the small model, and the rollback
    // path ran (the two models disagree now and then).
    assert!(local > cloud_tokens, "{local} local against {cloud_tokens} cloud tokens");
    assert!(corrections > 0, "no correction in 20 answers: the rollback path did not run");
}

#[test]
fn gated_policies_verify_by_default_and_their_final_check_makes_the_answer_the_cloud_models() {
    const MAX_TOKENS: usize = 48;
    let server = Server::start(&["--cloud-model", "qwen2.5-coder-1.5b"]);
    let mut slm = model("qwen2.5-coder-0.5b");
    let mut cloud = Recording { client: client(&server, "qwen2.5-coder-1.5b"), scored: 0, plain: 0, drop_echo_after: usize::MAX };
    let mut cloud_model = model("qwen2.5-coder-1.5b");
    let (mut corrections, mut unchecked_without) = (0, 0);
    for text in &prompts(4)[1..] {
        let prompt = slm.tokenizer.encode(&slm.chat_prompt(text).unwrap()).unwrap();
        let (reference, _) = run::<NoCloud>(&mut cloud_model, None, &prompt, &greedy(PolicyKind::Never, 0.0, MAX_TOKENS));
        let setup = greedy(PolicyKind::MaxProb, 0.4, MAX_TOKENS);
        let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &setup);
        let stats = stats.unwrap();
        consistent(&screen, &stats, &slm);
        assert!(cloud.scored > 0 && stats.verified_tokens + stats.withdrawn_tokens > 0, "{stats:?}");
        assert_eq!(stats.unverified_tokens, 0, "{text}: {stats:?}");
        assert_eq!(screen.ids, reference.ids, "{text}");
        corrections += stats.corrections;

        // Without the final check, the tokens after the last consult stay unchecked.
        let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &Setup { final_check: false, ..setup });
        let stats = stats.unwrap();
        consistent(&screen, &stats, &slm);
        assert_eq!(stats.unverified_tokens, screen.ids.len() - screen.verified_to.max(last_cloud(&screen)));
        unchecked_without += stats.unverified_tokens;
    }
    assert!(corrections > 0, "no correction in 3 answers: the rollback path did not run");
    assert!(unchecked_without > 0, "every answer ended on a consult: the test shows nothing about the final check");

    let prompt = slm.tokenizer.encode(&slm.chat_prompt(&prompts(3)[2]).unwrap()).unwrap();
    let (before_scored, before_plain) = (cloud.scored, cloud.plain);
    let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &Setup { verify: false, ..greedy(PolicyKind::MaxProb, 0.6, MAX_TOKENS) });
    let stats = stats.unwrap();
    assert_eq!(cloud.scored, before_scored, "--no-verify sent a scoring consult");
    assert!(cloud.plain > before_plain);
    assert_eq!((stats.verified_tokens, stats.corrections, screen.withdrawals), (0, 0, 0));
}

/// Index after the last cloud token on screen (tokens before it were checked when it came).
fn last_cloud(screen: &Screen) -> usize {
    screen.sources.iter().rposition(|&s| s == Source::Cloud).map_or(0, |i| i + 1)
}

/// Counts scoring and plain consults; after `drop_echo_after` consults the answers lose their
/// echoed scores (an engine or proxy that drops the fields).
struct Recording {
    client: CloudClient,
    scored: usize,
    plain: usize,
    drop_echo_after: usize,
}

impl CloudTransport for Recording {
    fn model(&self) -> &str {
        CloudTransport::model(&self.client)
    }

    async fn complete(&mut self, request: &CompletionRequest) -> hybrid_assistant::Result<Completion> {
        match request.echo {
            true => self.scored += 1,
            false => self.plain += 1,
        }
        let mut answer = self.client.complete(request)?;
        if self.scored + self.plain > self.drop_echo_after {
            answer.echo = None;
        }
        Ok(answer)
    }
}

#[test]
fn a_cloud_that_drops_the_scores_stops_verify_with_a_clear_error_and_gated_policies_go_on() {
    let server = Server::smollm2(&[]);
    let mut slm = model("smollm2-135m");
    let prompt = slm.tokenizer.encode(&slm.chat_prompt(&prompts(1)[0]).unwrap()).unwrap();
    let mut cloud = Recording { client: client(&server, "smollm2-135m"), scored: 0, plain: 0, drop_echo_after: 2 };
    let setup = Setup { verify_every: 4, ..greedy(PolicyKind::Verify, 0.0, 32) };
    let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &setup);
    let error = stats.unwrap_err().to_string();
    assert!(error.contains("verify policy needs the cloud to score"), "{error}");
    // The answer so far was delivered before the error: the tokens checked by the first consults and more.
    assert!(screen.verified_to >= 4 && screen.ids.len() > screen.verified_to, "{} shown, {} checked", screen.ids.len(), screen.verified_to);

    let mut cloud = Recording { client: client(&server, "smollm2-135m"), scored: 0, plain: 0, drop_echo_after: 0 };
    let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &greedy(PolicyKind::Random, 0.3, 32));
    let stats = stats.unwrap();
    assert_eq!(screen.ids.len(), 32);
    assert!(stats.last_cloud_error.as_deref().unwrap_or_default().contains("without checking"), "{:?}", stats.last_cloud_error);
    assert_eq!(cloud.scored, 1, "after one answer without scores, consults stop asking for them");
}

#[test]
fn sampled_answers_are_checked_by_speculative_sampling_and_replay_consistently() {
    let server = Server::start(&["--cloud-model", "qwen2.5-coder-1.5b"]);
    let mut slm = model("qwen2.5-coder-0.5b");
    let mut cloud = client(&server, "qwen2.5-coder-1.5b");
    let prompt = slm.tokenizer.encode(&slm.chat_prompt(&prompts(5)[4]).unwrap()).unwrap();
    let sampler = SamplerConfig { temperature: 0.8, top_p: 1.0, seed: 5 };
    let setup = Setup { sampler, verify_every: 8, ..greedy(PolicyKind::Verify, 0.0, 48) };
    let (screen, stats) = run(&mut slm, Some(&mut cloud), &prompt, &setup);
    let stats = stats.unwrap();
    consistent(&screen, &stats, &slm);
    assert_eq!(stats.unverified_tokens, 0, "{stats:?}");
    assert!(stats.verified_tokens > 0, "{stats:?}");
}

/// A correction rolls the small model back; on the GPU the cache's later positions are simply
/// overwritten: a truncated run continues exactly as a fresh run of the same tokens.
#[test]
fn the_gpu_decoder_rolls_back_to_the_same_state_as_a_fresh_run() {
    use hybrid_assistant::gpu::{decoder::GpuDecoder, Gpu};
    let path = common::model_path("smollm2-135m");
    let gpu = pollster::block_on(Gpu::new()).unwrap().expect("no GPU adapter: install mesa-vulkan-drivers (lavapipe)");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = hybrid_assistant::model::gguf::read_content(&mut file).unwrap();
    let mut gpu = GpuDecoder::from_gguf(gpu, &content, &mut file).unwrap();
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 253, 1345, 28];
    pollster::block_on(gpu.forward(&prompt)).unwrap();
    pollster::block_on(gpu.forward(&[314, 2052, 30])).unwrap();
    gpu.truncate(prompt.len() + 1);
    assert_eq!(gpu.kv_len(), prompt.len() + 1);
    let rolled = pollster::block_on(gpu.forward(&[77])).unwrap();

    gpu.clear();
    pollster::block_on(gpu.forward(&prompt)).unwrap();
    let fresh = pollster::block_on(gpu.forward(&[314, 77])).unwrap();
    assert_eq!(rolled.top, fresh.top);
    assert_eq!(rolled.hidden, fresh.hidden);
}
