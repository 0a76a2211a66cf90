//! The hybrid loop against a real `hybrid serve` on 127.0.0.1, smollm2-135m on both sides:
//! `never` gives only local tokens (the small model's greedy answer), `always` gives the
//! cloud's greedy answer exactly (one token or several per consult), and a server killed
//! mid-answer turns the rest into fallbacks without losing text, with consults backing off;
//! a refused key is sent once in a session and a rate limit's `Retry-After` is waited out.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use common::server::{completion, Server};
use hybrid_assistant::backoff::{Backoff, CloudHold};
use hybrid_assistant::cloud::{CloudClient, CloudConfig, Completion, CompletionRequest};
use hybrid_assistant::generate::{CloudTransport, HybridConfig, HybridLoop, HybridStats, LoopEvent, NoCloud, Source, TokenEvent};
use hybrid_assistant::model::decoder::LoadOptions;
use hybrid_assistant::model::Model;
use hybrid_assistant::policy::{Policy, PolicyKind};
use hybrid_assistant::sampler::{Sampler, SamplerConfig};
use serde_json::json;
use std::time::Duration;

const PROMPT: &str = "Write a Python function that reverses a list.";
const MAX_TOKENS: usize = 40;

/// The small model with the server's row-invariant kernels: the same arithmetic on both
/// sides, so "the same model" gives exactly the same tokens.
fn model() -> Model {
    Model::load_with(&common::model_path("smollm2-135m"), LoadOptions::cloud()).unwrap()
}

fn client(server: &Server) -> CloudClient {
    CloudClient::new(CloudConfig { url: server.url.clone(), api_key: None, model: "smollm2-135m".into(), timeout: Duration::from_secs(30) })
}

fn run<C: CloudTransport>(model: &mut Model, cloud: Option<&mut C>, policy: PolicyKind, consult_tokens: usize) -> (Vec<TokenEvent>, HybridStats) {
    run_with(model, cloud, policy, consult_tokens, &mut Backoff::default())
}

/// One answer; `backoff` carries consult failures over from the caller's earlier answers.
fn run_with<C: CloudTransport>(
    model: &mut Model,
    cloud: Option<&mut C>,
    policy: PolicyKind,
    consult_tokens: usize,
    backoff: &mut Backoff,
) -> (Vec<TokenEvent>, HybridStats) {
    let prompt = model.tokenizer.encode(&model.chat_prompt(PROMPT).unwrap()).unwrap();
    let mut hybrid = HybridLoop {
        slm: &mut model.decoder,
        tokenizer: &model.tokenizer,
        head: None,
        cloud,
        policy: Policy::new(policy, 0.5, 1).unwrap(),
        sampler: Sampler::new(SamplerConfig::default()),
        config: HybridConfig { max_tokens: MAX_TOKENS, consult_tokens, ..Default::default() },
        backoff,
    };
    let mut events = Vec::new();
    let stats = pollster::block_on(hybrid.run(&prompt, async |e| {
        if let LoopEvent::Token(t) = e {
            events.push(t.clone());
        }
        true
    }))
    .unwrap();
    (events, stats)
}

fn ids(events: &[TokenEvent]) -> Vec<u32> {
    events.iter().map(|e| e.id).collect()
}

/// The server's own greedy answer to the same chat prompt.
fn cloud_greedy(server: &Server, model: &Model) -> Vec<u32> {
    let prompt = model.tokenizer.encode(&model.chat_prompt(PROMPT).unwrap()).unwrap();
    let body =
        completion(server, json!({"model": "smollm2-135m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true})).json();
    body["choices"][0]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn never_is_the_small_model_alone_and_always_is_the_cloud_exactly() {
    let server = Server::smollm2(&[]);
    let mut model = model();
    let expected = cloud_greedy(&server, &model);
    assert!(!expected.is_empty());

    let (local, stats) = run::<NoCloud>(&mut model, None, PolicyKind::Never, 1);
    assert!(local.iter().all(|e| e.source == Source::Local));
    assert_eq!(stats.consults, 0);
    assert_eq!(stats.cloud_tokens, 0);
    // Same model on both sides: the small model's greedy answer is the cloud's.
    assert_eq!(ids(&local), expected);

    for k in [1, 4] {
        let mut cloud = client(&server);
        let (events, stats) = run(&mut model, Some(&mut cloud), PolicyKind::Always, k);
        assert_eq!(ids(&events), expected, "always with --consult-tokens {k}");
        assert!(events.iter().all(|e| e.source == Source::Cloud), "k={k}");
        assert_eq!(stats.cloud_tokens, events.len());
        assert_eq!(stats.fallbacks + stats.failed_consults, 0, "{:?}", stats.last_cloud_error);
        // K tokens per consult: about tokens/K consults (one more when the cloud ends the answer).
        let per = stats.tokens.div_ceil(k);
        assert!((per..=per + 1).contains(&stats.consults), "k={k}: {} consults for {} tokens", stats.consults, stats.tokens);
        // The prefix cache serves most of each consult's prompt.
        assert!(stats.cloud_cached_tokens * 10 >= stats.cloud_prompt_tokens * 8, "{stats:?}");
        assert!(stats.bytes_up > 0 && stats.bytes_down > 0);
        let text: String = events.iter().map(|e| e.text.as_str()).collect::<String>() + &stats.tail;
        assert_eq!(text, model.tokenizer.decode(&ids(&events)));
    }
}

#[test]
fn a_consult_slower_than_the_timeout_keeps_the_small_models_token() {
    let server = Server::smollm2(&[]);
    let mut model = model();
    let expected = cloud_greedy(&server, &model);
    let mut impatient =
        CloudClient::new(CloudConfig { url: server.url.clone(), api_key: None, model: "smollm2-135m".into(), timeout: Duration::from_micros(1) });
    let (events, stats) = run(&mut model, Some(&mut impatient), PolicyKind::Always, 1);
    assert!(events.iter().all(|e| e.source == Source::Fallback));
    assert_eq!(ids(&events), expected);
    // A timeout pauses consults at once: a cloud that does not answer costs one timeout per pause.
    assert!(stats.failed_consults >= 1 && stats.skipped_consults > 0 && stats.cloud_tokens == 0, "{stats:?}");
    assert!(stats.last_cloud_error.as_deref().unwrap_or_default().contains("no answer within 0 ms"), "{:?}", stats.last_cloud_error);
}

/// Kills the server just before its `kill_at`-th consult; every later consult fails.
struct KillAfter {
    client: CloudClient,
    server: Option<Server>,
    calls: usize,
    kill_at: usize,
}

impl CloudTransport for KillAfter {
    fn model(&self) -> &str {
        CloudTransport::model(&self.client)
    }

    async fn complete(&mut self, request: &CompletionRequest) -> hybrid_assistant::Result<Completion> {
        self.calls += 1;
        if self.calls == self.kill_at {
            drop(self.server.take());
        }
        self.client.complete(request)
    }
}

#[test]
fn a_server_killed_mid_answer_turns_into_fallbacks_without_losing_text() {
    let server = Server::smollm2(&[]);
    let mut model = model();
    let expected = cloud_greedy(&server, &model);
    let mut cloud = KillAfter { client: client(&server), server: Some(server), calls: 0, kill_at: 6 };
    let (events, stats) = run(&mut model, Some(&mut cloud), PolicyKind::Always, 1);

    // Five cloud tokens, then the rest of the answer from the small model, marked.
    let sources: Vec<Source> = events.iter().map(|e| e.source).collect();
    assert_eq!(&sources[..5], &[Source::Cloud; 5]);
    assert!(sources[5..].iter().all(|&s| s == Source::Fallback), "{sources:?}");
    assert_eq!(stats.fallbacks, events.len() - 5);
    // Nothing lost: the answer is the same greedy text (one model on both sides), whole.
    assert_eq!(ids(&events), expected);
    assert_eq!(stats.tokens, events.len());
    // Back-off: three failures, then consults pause instead of hammering a dead server.
    assert!(stats.failed_consults >= 3 && stats.skipped_consults > 0, "{stats:?}");
    assert_eq!(stats.failed_consults + stats.skipped_consults, stats.fallbacks);
    assert!(stats.last_cloud_error.as_deref().unwrap_or_default().contains("cannot reach the cloud"), "{:?}", stats.last_cloud_error);
}

#[test]
fn a_refused_key_is_tried_once_in_a_session_and_its_answers_complete_locally() {
    let server = Server::smollm2(&["--api-key", "the-right-key"]);
    let mut model = model();
    let local = ids(&run::<NoCloud>(&mut model, None, PolicyKind::Never, 1).0);
    let mut cloud = CloudClient::new(CloudConfig {
        url: server.url.clone(),
        api_key: Some("a-wrong-key".into()),
        model: "smollm2-135m".into(),
        timeout: Duration::from_secs(30),
    });
    let mut backoff = Backoff::default();
    for answer in 0..2 {
        let (events, stats) = run_with(&mut model, Some(&mut cloud), PolicyKind::Always, 1, &mut backoff);
        assert_eq!(ids(&events), local, "answer {answer}: the small model's answer, whole");
        assert!(events.iter().all(|e| e.source == Source::Fallback));
        // One request in the whole session: the 401 holds every later consult, across answers.
        assert_eq!(stats.failed_consults, usize::from(answer == 0), "answer {answer}: {stats:?}");
        assert_eq!(stats.cloud_hold, Some(CloudHold::Unauthorized { status: 401 }));
        assert_eq!(stats.summary()["cloud_hold"]["kind"], "unauthorized");
    }
    // New settings, new back-off: the right key is used at once.
    cloud = CloudClient::new(CloudConfig { api_key: Some("the-right-key".into()), ..cloud.config().clone() });
    let (_, stats) = run_with(&mut model, Some(&mut cloud), PolicyKind::Always, 1, &mut Backoff::default());
    assert_eq!((stats.failed_consults, stats.cloud_tokens), (0, stats.tokens), "{stats:?}");
}

/// A loopback HTTP server that answers every request with 429 and `Retry-After: 30`, counting them.
fn rate_limited_cloud() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#;
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, requests)
}

#[test]
fn a_rate_limit_holds_consults_for_its_retry_after() {
    let (url, requests) = rate_limited_cloud();
    let mut model = model();
    let mut cloud = CloudClient::new(CloudConfig { url, api_key: None, model: "smollm2-135m".into(), timeout: Duration::from_secs(30) });
    let (events, stats) = run(&mut model, Some(&mut cloud), PolicyKind::Always, 1);
    assert_eq!(events.len(), MAX_TOKENS);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1, "consults went on during the Retry-After wait");
    assert_eq!((stats.failed_consults, stats.skipped_consults), (1, MAX_TOKENS - 1), "{stats:?}");
    match stats.cloud_hold {
        Some(CloudHold::RateLimited { retry_after_s }) => assert!((20.0..=30.0).contains(&retry_after_s), "{retry_after_s}"),
        other => panic!("expected a rate-limit hold, got {other:?}"),
    }
    assert!(stats.last_cloud_error.as_deref().unwrap_or_default().contains("HTTP 429: slow down"), "{:?}", stats.last_cloud_error);
}
