//! `hybrid serve` over real HTTP on 127.0.0.1, smollm2-135m as the cloud model: answers equal
//! `hybrid generate`'s, prefix-cache hits change nothing, concurrent sessions each get their
//! own answer, every bad input gets its 4xx, auth and CORS, the queue bound, streaming, stop
//! strings, timeouts, model files with ranges, the native client, a clean SIGTERM, and prompt
//! scoring (`echo` + `logprobs`, our `echo_from`) against the CPU decoder's own scores.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use common::server::{call, completion, post_json, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Command;

const PROMPTS: [&str; 4] = ["def fibonacci(n):", "The capital of France is", "import numpy as np\n", "Once upon a time"];

/// `hybrid generate --json` ids for a raw-text prompt.
fn generate_ids(prompt: &str, max_tokens: usize) -> Vec<u32> {
    let out = Command::new(env!("CARGO_BIN_EXE_hybrid"))
        .args(["generate", "--model", "smollm2-135m", "--json", "--max-tokens", &max_tokens.to_string(), "--prompt", prompt])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v.get("id").map(|id| id.as_u64().unwrap() as u32))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v["choices"][0]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn logprobs(v: &Value) -> Vec<f64> {
    v["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn greedy(prompt: Value, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 3, "return_token_ids": true})
}

/// Asserts an OpenAI-shaped error with this status whose message mentions `needle`.
fn assert_error(answer: &common::server::Answer, status: u16, needle: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let v = answer.json();
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {v}"));
    assert!(v["error"]["type"].is_string() && v["error"]["code"].is_string(), "{v}");
    assert!(message.contains(needle), "message {message:?} does not mention {needle:?}");
}

#[test]
fn greedy_answers_equal_hybrid_generate_for_text_and_id_prompts() {
    let server = Server::smollm2(&[]);
    for prompt in PROMPTS {
        let expected = generate_ids(prompt, 12);
        let a = completion(&server, greedy(json!(prompt), 12));
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        assert_eq!(ids(&v), expected, "prompt {prompt:?}");
        let prompt_ids = v["choices"][0]["prompt_token_ids"].clone();
        // The same prompt as ids gives the same answer, and a 1-token consult its first token.
        let b = completion(&server, greedy(prompt_ids.clone(), 12)).json();
        assert_eq!(ids(&b), expected);
        let c = completion(&server, greedy(prompt_ids, 1)).json();
        assert_eq!(ids(&c), expected[..1]);
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 1);
    }
}

#[test]
fn prefix_cache_hits_give_the_same_answers_as_a_server_without_cache() {
    let cached = Server::smollm2(&[]);
    let uncached = Server::smollm2(&["--kv-cache-mb", "0"]);
    // A conversation that grows: each consult's prompt extends the previous one.
    let mut prompt: Vec<u32> = completion(&uncached, greedy(json!(PROMPTS[0]), 1)).json()["choices"][0]["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let mut hits = 0;
    for round in 0..6 {
        let a = completion(&cached, greedy(json!(prompt), 4)).json();
        let b = completion(&uncached, greedy(json!(prompt), 4)).json();
        assert_eq!(ids(&a), ids(&b), "round {round}");
        for (x, y) in logprobs(&a).iter().zip(logprobs(&b)) {
            assert!((x - y).abs() < 0.05, "round {round}: logprobs {x} vs {y}");
        }
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let reused = a["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() as usize;
        if round > 0 {
            // Everything but the last prompt token came from the cache.
            assert_eq!(reused, prompt.len() - 1, "round {round}");
            hits += 1;
        }
        prompt.extend(ids(&a));
    }
    assert_eq!(hits, 5);
    let health = call("GET", &format!("{}/health/details", cached.url), &[], None).json();
    assert!(health["engine"]["cached_prompt_tokens"].as_u64().unwrap() > 0);
    assert!(health["engine"]["prefix_cache"]["bytes"].as_u64().unwrap() > 0);
    let health = call("GET", &format!("{}/health/details", uncached.url), &[], None).json();
    assert_eq!(health["engine"]["prefix_cache"]["bytes"], 0);
}

#[test]
fn a_cache_salt_keeps_prefixes_apart() {
    let server = Server::smollm2(&[]);
    let ask = |salt: Option<&str>| {
        let mut body = greedy(json!(PROMPTS[0]), 1);
        if let Some(salt) = salt {
            body["cache_salt"] = json!(salt);
        }
        completion(&server, body).json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
    };
    assert_eq!(ask(Some("a")), 0);
    assert_eq!(ask(Some("b")), 0, "another salt reused salt a's prefix");
    assert_eq!(ask(None), 0, "no salt reused a salted prefix");
    assert!(ask(Some("a")) > 0, "the same salt did not reuse its own prefix");
}

#[test]
fn concurrent_sessions_get_their_own_answers() {
    let server = Server::smollm2(&["--kv-cache-mb", "0"]);
    let expected: Vec<Vec<u32>> = PROMPTS.iter().map(|p| ids(&completion(&server, greedy(json!(p), 16)).json())).collect();
    let url = server.url.clone();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let v = post_json(&format!("{url}/v1/completions"), &greedy(json!(PROMPTS[i % 4]), 16)).json();
                (i, ids(&v))
            })
        })
        .collect();
    for h in handles {
        let (i, got) = h.join().unwrap();
        assert_eq!(got, expected[i % 4], "session {i}");
    }
    let health = call("GET", &format!("{}/health/details", server.url), &[], None).json();
    let kernels = health["kernels"].as_str().unwrap_or_default();
    assert!(kernels.starts_with(hybrid_assistant::model::cpu::KernelSet::detect().name()), "the kernel set in use: {health}");
    let engine = &health["engine"];
    // Batched: fewer forward passes than tokens generated.
    assert!(engine["forward_passes"].as_u64().unwrap() < engine["generated_tokens"].as_u64().unwrap(), "no batching happened: {engine}");
}

#[test]
fn every_bad_input_gets_a_4xx_that_says_what_was_wrong() {
    let server = Server::smollm2(&["--max-tokens-cap", "64"]);
    let url = format!("{}/v1/completions", server.url);
    let post = |body: &str| call("POST", &url, &[("Content-Type", "application/json")], Some(body.as_bytes()));
    assert_error(&post("{\"prompt\": "), 400, "not valid JSON");
    assert_error(&post("[1,2]"), 400, "not a valid completion request");
    assert_error(&post(r#"{"prompt": "x", "max_tokens": "ten"}"#), 400, "max_tokens");
    let c = |body: Value| completion(&server, body);
    assert_error(&c(json!({"max_tokens": 1})), 400, "`prompt` is required");
    assert_error(&c(json!({"prompt": ""})), 400, "empty");
    assert_error(&c(json!({"prompt": []})), 400, "empty");
    assert_error(&c(json!({"prompt": {"a": 1}})), 400, "string or a list of token ids");
    assert_error(&c(json!({"prompt": ["a", "b"]})), 400, "one request per prompt");
    assert_error(&c(json!({"prompt": [1, 49152]})), 400, "49152");
    assert_error(&c(json!({"prompt": [1, -3]})), 400, "-3");
    assert_error(&c(json!({"prompt": vec![1; 8192]})), 400, "context");
    assert_error(&c(json!({"prompt": vec![1; 8150], "max_tokens": 60})), 400, "lower max_tokens");
    assert_error(&c(json!({"prompt": "x", "max_tokens": 0})), 400, "between 1 and 64");
    assert_error(&c(json!({"prompt": "x", "max_tokens": 65})), 400, "between 1 and 64");
    assert_error(&c(json!({"prompt": "x", "n": 2})), 400, "`n`");
    assert_error(&c(json!({"prompt": "x", "best_of": 3})), 400, "best_of");
    assert_error(&c(json!({"prompt": "x", "suffix": "y"})), 400, "suffix");
    assert_error(&c(json!({"prompt": "x", "logprobs": 21})), 400, "logprobs");
    assert_error(&c(json!({"prompt": "x", "temperature": 2.5})), 400, "temperature");
    assert_error(&c(json!({"prompt": "x", "top_p": 0})), 400, "top_p");
    assert_error(&c(json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})), 400, "stop");
    assert_error(&c(json!({"prompt": "x", "model": "gpt-4"})), 404, "gpt-4");
    let huge = json!({"prompt": "x".repeat(5 << 20)}).to_string();
    assert_error(&post(&huge), 413, "limit");
    // Defaults are not errors: n = 1, echo = false, an empty suffix, our own model name.
    let ok = c(json!({"prompt": "x", "n": 1, "echo": false, "suffix": "", "model": "smollm2-135m", "max_tokens": 2}));
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn api_key_guards_v1_but_not_health() {
    let server = Server::smollm2(&["--api-key", "s3cret-key"]);
    let models = format!("{}/v1/models", server.url);
    assert_error(&call("GET", &models, &[], None), 401, "needs an API key");
    assert_error(&call("GET", &models, &[("Authorization", "Bearer wrong")], None), 401, "wrong");
    assert_error(&call("GET", &models, &[("X-Api-Key", "s3cret-ke")], None), 401, "wrong");
    let ok = call("GET", &models, &[("Authorization", "Bearer s3cret-key")], None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["data"][0]["id"], "smollm2-135m");
    assert_eq!(ok.json()["data"][0]["max_model_len"], 8192);
    let body = greedy(json!("Hi"), 1).to_string();
    let url = format!("{}/v1/completions", server.url);
    let with_key = call("POST", &url, &[("Content-Type", "application/json"), ("X-Api-Key", "s3cret-key")], Some(body.as_bytes()));
    assert_eq!(with_key.status, 200, "{}", with_key.body);
    assert_error(&call("POST", &url, &[("Content-Type", "application/json")], Some(body.as_bytes())), 401, "API key");
    assert_eq!(call("GET", &format!("{}/health", server.url), &[], None).status, 200);
}

#[test]
fn cors_allows_listed_origins_and_the_servers_own_only() {
    let server = Server::smollm2(&["--api-key", "k", "--allow-origin", "https://app.example"]);
    let url = format!("{}/v1/completions", server.url);
    let preflight = |origin: &str| {
        call(
            "OPTIONS",
            &url,
            &[("Origin", origin), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization, x-api-key, content-type")],
            None,
        )
    };
    let own = server.url.clone();
    for origin in ["https://app.example", own.as_str()] {
        let a = preflight(origin);
        assert!(a.status < 300, "preflight from {origin}: {}", a.status);
        assert_eq!(a.header("access-control-allow-origin"), Some(origin));
        let allowed = a.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        for h in ["authorization", "x-api-key", "content-type"] {
            assert!(allowed.contains(h), "{h} not in {allowed}");
        }
    }
    let a = preflight("https://evil.example");
    assert_eq!(a.header("access-control-allow-origin"), None);
    // A real request from an allowed origin carries the header (and still needs the key).
    let a = call("GET", &format!("{}/v1/models", server.url), &[("Origin", "https://app.example"), ("X-Api-Key", "k")], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), Some("https://app.example"));
}

#[test]
fn a_request_over_the_queue_bound_gets_429_with_retry_after() {
    let server = Server::smollm2(&["--max-batch", "1", "--max-queue", "1"]);
    let url = format!("{}/v1/completions", server.url);
    // A holds the only batch slot while it streams.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true}).to_string();
    let stream = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    let mut lines = BufReader::new(stream.into_body().into_reader()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    // B waits in the queue.
    let waiting = std::thread::spawn({
        let url = url.clone();
        move || post_json(&url, &json!({"prompt": "Hi", "max_tokens": 2})).status
    });
    let health = format!("{}/health/details", server.url);
    let t = std::time::Instant::now();
    while call("GET", &health, &[], None).json()["engine"]["waiting"] != 1 {
        assert!(t.elapsed().as_secs() < 20, "B never queued");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // C finds the queue full.
    let c = post_json(&url, &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_error(&c, 429, "busy");
    assert_eq!(c.header("retry-after"), Some("1"));
    // Closing A's stream frees the slot; B then completes.
    drop(lines);
    assert_eq!(waiting.join().unwrap(), 200);
}

#[test]
fn streaming_matches_the_plain_answer_and_ends_with_done() {
    let server = Server::smollm2(&[]);
    let plain = completion(&server, greedy(json!(PROMPTS[2]), 20)).json();
    let mut body = greedy(json!(PROMPTS[2]), 20);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let a = completion(&server, body);
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/event-stream"));
    let data: Vec<&str> = a.body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    let streamed_ids: Vec<u32> = chunks.iter().filter_map(|c| c["choices"][0]["token_ids"].as_array()).flatten().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(streamed_ids, ids(&plain));
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, vec![&json!("length")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(usage["prompt_tokens"], plain["usage"]["prompt_tokens"]);
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let server = Server::smollm2(&[]);
    let free = completion(&server, greedy(json!(PROMPTS[0]), 24)).json();
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string taken from the second half of the free-running answer (whatever the model
    // writes), one that does not already occur at its very start: text must be left before it.
    let (stop, at) = text
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i >= text.len() / 2)
        .map(|i| text[i..].chars().take(4).collect::<String>())
        .map(|stop| {
            let at = text.find(&stop).expect("the stop string is in the answer");
            (stop, at)
        })
        .find(|&(_, at)| at > 0)
        .unwrap_or_else(|| panic!("{text:?}: no 4 characters of its second half first occur after its start"));
    let mut body = greedy(json!(PROMPTS[0]), 24);
    body["stop"] = json!([stop.as_str(), "never-appears"]);
    let v = completion(&server, body).json();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &text[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_request_past_the_timeout_gets_504() {
    let server = Server::smollm2(&["--request-timeout-s", "1", "--max-tokens-cap", "8000"]);
    let a = completion(&server, json!({"prompt": "Once upon a time", "max_tokens": 7000, "temperature": 0}));
    assert_error(&a, 504, "1 s");
    // The server goes on serving.
    assert_eq!(completion(&server, greedy(json!("Hi"), 2)).status, 200);
}

#[test]
fn model_files_are_served_with_ranges_etag_and_cache_headers() {
    let server = Server::smollm2(&[]);
    let path = common::model_path("smollm2-135m");
    let file = std::fs::read(&path).unwrap();
    let spec = hybrid_assistant::registry::Registry::builtin().get("smollm2-135m").unwrap().clone();
    let url = format!("{}/models/smollm2-135m.gguf", server.url);
    let etag = format!("\"{}\"", spec.sha256);
    let a = call("GET", &url, &[("Range", "bytes=0-3")], None);
    assert_eq!(a.status, 206);
    assert_eq!(a.body, "GGUF");
    assert_eq!(a.header("content-range"), Some(format!("bytes 0-3/{}", file.len()).as_str()));
    assert_eq!(a.header("etag"), Some(etag.as_str()));
    assert!(a.header("cache-control").unwrap().contains("immutable"));
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    // Resuming from the middle gives exactly the file's bytes.
    let start = file.len() - 1000;
    let a = call("GET", &url, &[("Range", &format!("bytes={start}-"))], None);
    assert_eq!(a.status, 206);
    assert_eq!(a.header("content-length"), Some("1000"));
    let resumed = ureq::get(&url).header("Range", &format!("bytes={start}-")).call().unwrap().into_body().read_to_vec().unwrap();
    assert_eq!(resumed, file[start..]);
    assert_eq!(call("GET", &url, &[("If-None-Match", &etag)], None).status, 304);
    assert_eq!(call("GET", &url, &[("Range", &format!("bytes={}-", file.len()))], None).status, 416);
    // A stale If-Range gets the whole file instead of a wrong piece.
    let head = call("HEAD", &url, &[("Range", "bytes=0-3"), ("If-Range", "\"old\"")], None);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(file.len().to_string().as_str()));
    let missing = call("GET", &format!("{}/models/gpt-5.gguf", server.url), &[], None);
    assert_error(&missing, 404, "unknown model");
}

#[test]
fn the_native_client_reads_our_server() {
    use hybrid_assistant::cloud::{CloudClient, CloudConfig, CompletionRequest, Prompt};
    let server = Server::smollm2(&["--api-key", "k"]);
    let expected = generate_ids(PROMPTS[1], 3);
    let config = |key: Option<&str>| CloudConfig {
        url: server.url.clone(),
        api_key: key.map(String::from),
        model: "smollm2-135m".into(),
        timeout: std::time::Duration::from_secs(30),
    };
    let client = CloudClient::new(config(Some("k")));
    let c = client.complete(&CompletionRequest::consult("smollm2-135m", Prompt::Text(PROMPTS[1].into()), 3, 5)).unwrap();
    assert_eq!(c.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), expected);
    assert!(c.tokens.iter().all(|t| t.top.len() == 5 && t.logprob.is_some_and(|l| l <= 0.0)));
    assert_eq!(c.tokens[0].top[0].text, c.tokens[0].text, "greedy takes the top alternative");
    assert!(c.bytes_up > 0 && c.bytes_down > 0);
    let err = CloudClient::new(config(Some("bad"))).complete(&CompletionRequest::consult("smollm2-135m", Prompt::Ids(vec![1]), 1, 0));
    assert!(err.unwrap_err().to_string().contains("401"));
    let nobody = CloudConfig { url: "http://127.0.0.1:9".into(), ..config(None) };
    let err = CloudClient::new(nobody).complete(&CompletionRequest::consult("m", Prompt::Ids(vec![1]), 1, 0));
    assert!(err.unwrap_err().to_string().contains("cannot reach the cloud"));
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let mut server = Server::smollm2(&[]);
    let url = format!("{}/v1/completions", server.url);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "stream": true}).to_string();
    let response = ureq::post(&url).header("Content-Type", "application/json").send(body.as_bytes()).unwrap();
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"), "the stream was cut");
    assert!(rest.len() >= 63, "{} chunks after SIGTERM", rest.len());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(server.url.trim_start_matches("http://")).is_err());
}

/// The CPU decoder with the server's kernels.
fn cpu_model() -> hybrid_assistant::model::Model {
    use hybrid_assistant::model::decoder::LoadOptions;
    let path = common::model_path("smollm2-135m");
    hybrid_assistant::model::Model::load_with(&path, LoadOptions::cloud()).unwrap()
}

/// Teacher-forced log-softmax of `prompt[p]` given `prompt[..p]` for p >= 1, and each row's argmax.
fn teacher_forced(model: &mut hybrid_assistant::model::Model, prompt: &[u32]) -> Vec<(f64, u32)> {
    model.decoder.cache_mut().clear();
    let steps = model.decoder.forward_all(prompt).unwrap();
    steps
        .iter()
        .zip(&prompt[1..])
        .map(|(step, &next)| {
            let max = step.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z = max + step.logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
            (step.logits[next as usize] as f64 - z, hybrid_assistant::sampler::argmax(&step.logits))
        })
        .collect()
}

fn scoring(prompt: &[u32], echo_from: Option<usize>, max_tokens: usize) -> Value {
    let mut body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "echo": true, "logprobs": 5,
        "return_token_ids": true, "return_tokens_as_token_ids": true});
    if let Some(k) = echo_from {
        body["echo_from"] = json!(k);
    }
    body
}

/// The echoed entries of an answer with `return_tokens_as_token_ids`: (id, logprob, best
/// alternative) per entry, generated tokens included.
fn entries(v: &Value) -> Vec<(u32, Option<f64>, Option<u32>)> {
    let lp = &v["choices"][0]["logprobs"];
    let id = |name: &str| name.strip_prefix("token_id:").unwrap().parse::<u32>().unwrap();
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), lp["token_logprobs"].as_array().unwrap().len());
    assert_eq!(tokens.len(), lp["top_logprobs"].as_array().unwrap().len());
    assert_eq!(tokens.len(), lp["text_offset"].as_array().unwrap().len());
    (0..tokens.len())
        .map(|i| {
            let top = lp["top_logprobs"][i].as_object().map(|m| {
                let best = m.iter().max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap();
                id(best.0)
            });
            (id(tokens[i].as_str().unwrap()), lp["token_logprobs"][i].as_f64(), top)
        })
        .collect()
}

fn prompt_of(server: &Server, text: &str) -> Vec<u32> {
    let v = completion(server, greedy(json!(text), 1)).json();
    v["choices"][0]["prompt_token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn echo_scores_the_prompt_as_the_cpu_decoder_does() {
    let server = Server::smollm2(&[]);
    let mut model = cpu_model();
    // Over 64 scored rows: the prompt is computed in several passes, its scores collected.
    let text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n";
    let prompt = prompt_of(&server, &format!("{text}{}{text}# test\nfor i in range(10):\n    print(", text.replace("fibonacci", "fib")));
    assert!(prompt.len() > 100, "{} tokens", prompt.len());
    let expected = teacher_forced(&mut model, &prompt);
    let v = completion(&server, scoring(&prompt, None, 3)).json();
    let got = entries(&v);
    let generated = ids(&v);
    assert_eq!(generated.len(), 3);
    assert_eq!(got.len(), prompt.len() + 3, "the echoed prompt, then the generated tokens");
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [prompt.clone(), generated].concat());
    assert_eq!((got[0].1, got[0].2), (None, None), "position 0 has no score");
    assert!(v["choices"][0]["logprobs"]["top_logprobs"][0].is_null());
    for (p, ((_, lp, top), (want, argmax))) in got[1..prompt.len()].iter().zip(&expected).enumerate() {
        let lp = lp.unwrap();
        assert!((lp - want).abs() < 1e-4, "position {}: {lp} vs {want}", p + 1);
        assert_eq!(top.unwrap(), *argmax, "position {}: top-1", p + 1);
    }
    // The actual token is among the alternatives even when it is not in the top 5.
    let tops = v["choices"][0]["logprobs"]["top_logprobs"].as_array().unwrap();
    for (i, top) in tops.iter().enumerate().skip(1) {
        assert!(top.as_object().unwrap().contains_key(&format!("token_id:{}", got[i].0)), "entry {i}");
    }
    assert_eq!(v["choices"][0]["prompt_token_ids"], json!(prompt));
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // In a batch with other requests, scored or not, the same scores.
    let url = format!("{}/v1/completions", server.url);
    let bodies = [scoring(&prompt, Some(40), 3), greedy(json!(PROMPTS[2]), 8), scoring(&prompt[..50], None, 4)];
    let handles: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || post_json(&url, &body).json())
        })
        .collect();
    let answers: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (tail, short) = (entries(&answers[0]), entries(&answers[2]));
    assert_eq!(tail.len(), prompt.len() - 40 + 3);
    for (e, g) in tail.iter().zip(&got[40..]) {
        assert!(e.0 == g.0 && e.2 == g.2 && (e.1.unwrap() - g.1.unwrap()).abs() < 1e-4, "{e:?} vs {g:?}");
    }
    for (e, g) in short[1..50].iter().zip(&got[1..50]) {
        assert!(e.0 == g.0 && e.2 == g.2 && (e.1.unwrap() - g.1.unwrap()).abs() < 1e-4, "{e:?} vs {g:?}");
    }
}

#[test]
fn echo_of_a_text_prompt_is_the_prompt_then_the_completion() {
    let server = Server::smollm2(&[]);
    let prompt = PROMPTS[0];
    let plain = completion(&server, greedy(json!(prompt), 8)).json();
    let mut body = greedy(json!(prompt), 8);
    body["echo"] = json!(true);
    let v = completion(&server, body).json();
    let completion_text = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), format!("{prompt}{completion_text}"));
    assert_eq!(ids(&v), ids(&plain), "token_ids stay the generated ones");
    let lp = &v["choices"][0]["logprobs"];
    let n = plain["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens[..n].concat(), prompt);
    assert_eq!(lp["text_offset"][n], prompt.chars().count(), "the completion's offsets follow the prompt");
    assert_eq!(lp["text_offset"][0], 0);
    assert!(lp["token_logprobs"][0].is_null() && lp["token_logprobs"][1].is_f64());
    // Without logprobs: the text only, no scores.
    let v = completion(&server, json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "echo": true})).json();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), format!("{prompt}{completion_text}"));
    assert!(v["choices"][0]["logprobs"].is_null());
}

#[test]
fn echo_from_echoes_and_scores_the_tail_only() {
    let server = Server::smollm2(&["--kv-cache-mb", "0"]);
    let prompt = prompt_of(&server, "import numpy as np\nimport matplotlib.pyplot as plt\n");
    let full = entries(&completion(&server, scoring(&prompt, None, 2)).json());
    for k in [0, 1, 5, prompt.len() - 1, prompt.len()] {
        let v = completion(&server, scoring(&prompt, Some(k), 2)).json();
        let got = entries(&v);
        assert_eq!(got.len(), prompt.len() - k + 2, "echo_from {k}");
        for (i, (g, f)) in got.iter().zip(&full[k..]).enumerate() {
            assert_eq!(g.0, f.0, "echo_from {k}, entry {i}");
            assert_eq!(g.2, f.2, "echo_from {k}, entry {i}");
            match (g.1, f.1) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-4, "echo_from {k}, entry {i}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "echo_from {k}, entry {i}"),
            }
        }
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"][0], 0, "echo_from {k}: the text starts at the echo");
    }
}

#[test]
fn echo_from_on_an_extended_prompt_reuses_the_cached_prefix() {
    let cached = Server::smollm2(&[]);
    let fresh = Server::smollm2(&["--kv-cache-mb", "0"]);
    let first = prompt_of(&cached, "def fibonacci(n):\n    if n < 2:");
    // The next consult: the first prompt, then local tokens since; score those.
    let mut next = first.clone();
    next.extend(prompt_of(&fresh, "\n        return n\n    return fib"));
    let body = scoring(&next, Some(first.len()), 1);
    let a = completion(&cached, body.clone()).json();
    let b = completion(&fresh, body).json();
    // All of it: the cached entry keeps its last row's logits, which score the first new token.
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], first.len(), "{a}");
    assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (ea, eb) = (entries(&a), entries(&b));
    assert_eq!(ea.len(), next.len() - first.len() + 1);
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!((x.0, x.2), (y.0, y.2));
        assert!((x.1.unwrap() - y.1.unwrap()).abs() < 1e-4, "{x:?} vs {y:?}");
    }
    // Scoring from before the cached end reuses the prefix up to the row before it.
    let d = completion(&cached, scoring(&next, Some(first.len() - 2), 1)).json();
    assert_eq!(d["usage"]["prompt_tokens_details"]["cached_tokens"], first.len() - 3, "{d}");
    for (x, y) in entries(&d)[2..].iter().zip(&ea) {
        assert_eq!((x.0, x.1, x.2), (y.0, y.1, y.2));
    }
    // Plain echo scores from position 1, so it can reuse nothing; the answer is the same.
    let c = completion(&cached, scoring(&next, None, 1)).json();
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(ids(&c), ids(&a));
}

#[test]
fn max_tokens_0_with_echo_scores_without_generating() {
    let server = Server::smollm2(&[]);
    let prompt = PROMPTS[1];
    let v = completion(&server, json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2, "return_token_ids": true})).json();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(c["text"], prompt);
    assert_eq!(c["token_ids"], json!([]));
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let n = c["prompt_token_ids"].as_array().unwrap().len();
    assert_eq!(c["logprobs"]["tokens"].as_array().unwrap().len(), n);
    // The prompt was computed and kept: the next consult on it reuses it.
    let again = completion(&server, greedy(c["prompt_token_ids"].clone(), 1)).json();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], n - 1);
}

#[test]
fn streaming_with_echo_sends_the_prompt_first() {
    let server = Server::smollm2(&[]);
    let prompt = prompt_of(&server, PROMPTS[3]);
    let plain = completion(&server, scoring(&prompt, Some(2), 6)).json();
    let mut body = scoring(&prompt, Some(2), 6);
    body["stream"] = json!(true);
    let a = completion(&server, body);
    assert_eq!(a.status, 200, "{}", a.body);
    let data: Vec<&str> = a.body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["prompt_token_ids"], json!(prompt));
    assert_eq!(first["token_ids"], json!([]));
    assert_eq!(first["logprobs"]["tokens"].as_array().unwrap().len(), prompt.len() - 2);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    let streamed: Vec<Value> = chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array()).flatten().cloned().collect();
    assert_eq!(json!(streamed), plain["choices"][0]["logprobs"]["token_logprobs"]);
}

#[test]
fn bad_echo_requests_get_400s_naming_the_parameter() {
    let server = Server::smollm2(&["--max-tokens-cap", "64"]);
    let c = |body: Value| completion(&server, body);
    let param = |a: &common::server::Answer| a.json()["error"]["param"].clone();
    let a = c(json!({"prompt": vec![1; 8193], "echo": true, "max_tokens": 0}));
    assert_error(&a, 400, "context");
    assert_eq!(param(&a), "prompt");
    // A full context can be scored, but not continued.
    let a = c(json!({"prompt": vec![1; 8192], "echo": true, "echo_from": 8192, "max_tokens": 1}));
    assert_error(&a, 400, "context");
    let a = c(json!({"prompt": vec![1; 8190], "echo": true, "max_tokens": 3}));
    assert_error(&a, 400, "lower max_tokens");
    assert_eq!(param(&a), "max_tokens");
    let a = c(json!({"prompt": "x", "echo": true, "logprobs": 21}));
    assert_error(&a, 400, "between 0 and 20");
    assert_eq!(param(&a), "logprobs");
    let a = c(json!({"prompt": [1, 2, 3], "echo": true, "echo_from": 4}));
    assert_error(&a, 400, "3 tokens");
    assert_eq!(param(&a), "echo_from");
    let a = c(json!({"prompt": [1, 2, 3], "echo_from": 1}));
    assert_error(&a, 400, "needs `echo: true`");
    assert_eq!(param(&a), "echo_from");
    let a = c(json!({"prompt": [1, 2, 3], "echo": false, "echo_from": 1}));
    assert_eq!(param(&a), "echo_from");
    let a = c(json!({"prompt": "x", "max_tokens": 0}));
    assert_error(&a, 400, "0 only with `echo: true`");
    assert_eq!(param(&a), "max_tokens");
    assert_error(&c(json!({"prompt": "x", "echo_from": -1, "echo": true})), 400, "echo_from");
}
