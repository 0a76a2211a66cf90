//! `hybrid serve` under faults and abuse, over real HTTP on 127.0.0.1 with smollm2-135m as the
//! cloud model: an engine panic (the `HYBRID_INJECT_PANIC` test hook) fails its batch and the
//! server serves on, repeated panics stop it with a non-zero exit; a client that disconnects
//! stops its generation; 415 and 421 for what browsers must not do; keys with their own
//! limits and prefix caches; vLLM's sampling extras and the refusal of penalties; the drain
//! deadline and the second signal; and thousands of hostile requests, each answered with a
//! well-formed 4xx, after which the server still answers as before.
#![cfg(not(target_arch = "wasm32"))] // native only
mod common;

use common::server::{call, completion, post_json, Answer, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const MARKER: &str = "PANIC-NOW-7f3a";
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

/// `body` streamed: the SSE lines as they come.
fn stream(server: &Server, body: Value, headers: &[(&str, &str)]) -> (u16, std::io::Lines<BufReader<impl std::io::Read>>) {
    let mut request = agent().post(&format!("{}/v1/completions", server.url)).header(JSON.0, JSON.1);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send(with_field(&body, "stream", json!(true)).to_string().as_bytes()).unwrap();
    let status = response.status().as_u16();
    (status, BufReader::new(response.into_body().into_reader()).lines())
}

/// A sample of `/metrics`: `name` is the metric's name after `hybrid_`, with its labels if it has any.
fn metric(server: &Server, key: Option<&str>, name: &str) -> f64 {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let text = call("GET", &format!("{}/metrics", server.url), &headers, None).body;
    let line = text.lines().find(|l| l.starts_with(&format!("hybrid_{name} "))).unwrap_or_else(|| panic!("no hybrid_{name} in /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `base` with `field` set to `value`.
fn with_field(base: &Value, field: &str, value: Value) -> Value {
    let mut body = base.clone();
    body[field] = value;
    body
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let v = answer.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.len() > 10), "{v}");
}

fn ids(v: &Value) -> Vec<u64> {
    v["choices"][0]["token_ids"].as_array().unwrap_or_else(|| panic!("no token_ids: {v}")).iter().map(|x| x.as_u64().unwrap()).collect()
}

fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn an_engine_panic_fails_its_batch_and_the_server_serves_on() {
    let server = Server::start_with_env(&["--cloud-model", "smollm2-135m", "--browser-model", "smollm2-135m"], &[("HYBRID_INJECT_PANIC", MARKER)]);
    let before = completion(&server, json!({"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, "return_token_ids": true}));
    assert_eq!(before.status, 200, "{}", before.body);
    // A long answer is running when the faulty prompt joins its batch.
    let (status, mut lines) = stream(&server, json!({"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": true, "temperature": 0}), &[]);
    assert_eq!(status, 200);
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    let crashed = completion(&server, json!({"prompt": format!("say {MARKER} now"), "max_tokens": 4}));
    assert_error(&crashed, 500, "internal_error");
    assert!(crashed.json()["error"]["message"].as_str().unwrap().contains("retry"), "{}", crashed.body);
    // The running stream ends with an error event, then [DONE].
    let rest: Vec<String> = lines.map_while(Result::ok).filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    let error: Value = serde_json::from_str(rest[rest.len() - 2].trim_start_matches("data: ")).unwrap();
    assert_eq!(error["error"]["code"], "internal_error", "{error}");
    // The engine restarted: the same request gets the same answer.
    let after = completion(&server, json!({"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, "return_token_ids": true}));
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(ids(&after.json()), ids(&before.json()));
    assert_eq!(call("GET", &format!("{}/health", server.url), &[], None).json()["status"], "ok");
    assert_eq!(metric(&server, None, "engine_restarts_total"), 1.0);
    assert_eq!(metric(&server, None, "requests_crashed_total"), 2.0);
    assert_eq!(metric(&server, None, "engine_up"), 1.0);
    assert!(metric(&server, None, "http_responses_total{status=\"500\",code=\"internal_error\"}") >= 1.0);
}

#[test]
fn repeated_panics_stop_the_server_with_a_nonzero_exit() {
    let mut server = Server::start_with_env(&["--cloud-model", "smollm2-135m", "--browser-model", "smollm2-135m"], &[("HYBRID_INJECT_PANIC", MARKER)]);
    for i in 0..4 {
        let answer = completion(&server, json!({"prompt": format!("{i} {MARKER}"), "max_tokens": 2}));
        assert_error(&answer, 500, "internal_error");
    }
    // The fourth panic within a minute is one too many: the worker stops and so does the
    // process, for its supervisor to restart it. Until it is gone, /health says 503.
    let health = agent().get(&format!("{}/health", server.url)).call();
    if let Ok(response) = health {
        assert_eq!(response.status().as_u16(), 503);
        assert!(response.headers().get("retry-after").is_some());
    }
    let status = wait_for_exit(&mut server.child, Duration::from_secs(10)).expect("the server exits after its worker stopped");
    assert!(!status.success(), "{status:?}");
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let server = Server::smollm2(&[]);
    let (_, mut lines) = stream(&server, json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true, "temperature": 0}), &[]);
    for _ in 0..5 {
        lines.next().unwrap().unwrap();
    }
    drop(lines);
    let start = Instant::now();
    while metric(&server, None, "requests_cancelled_total") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the request was never cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let generated = metric(&server, None, "generated_tokens_total");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&server, None, "generated_tokens_total"), generated, "generation went on after the cancel");
    assert!(generated < 3000.0, "{generated}");
    assert_eq!(metric(&server, None, "batch_active"), 0.0);
}

#[test]
fn the_kv_budget_queues_what_does_not_fit_and_refuses_what_never_will() {
    // smollm2-135m keeps 30 layers x 2 x 192 f16 values per position: 22.5 KiB, 28.1 KiB with
    // growth room, so 10 MiB hold about 360 positions.
    let server = Server::smollm2(&["--kv-budget-mb", "10", "--max-batch", "4"]);
    let never = completion(&server, json!({"prompt": "Once upon a time", "max_tokens": 400}));
    assert_error(&never, 503, "insufficient_memory");
    assert!(never.json()["error"]["message"].as_str().unwrap().contains("--kv-budget-mb"), "{}", never.body);
    // Two requests of 200 positions each: the second waits for the first, then runs.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 196, "ignore_eos": true, "temperature": 0});
    let (_, mut first) = stream(&server, body.clone(), &[]);
    assert!(first.next().unwrap().unwrap().starts_with("data: "));
    let second = std::thread::spawn({
        let url = format!("{}/v1/completions", server.url);
        let body = body.clone();
        move || (post_json(&url, &body), Instant::now())
    });
    let start = Instant::now();
    while metric(&server, None, "queue_waiting") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the second request never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metric(&server, None, "batch_active"), 1.0, "the second request runs beside the first");
    let running = metric(&server, None, "kv_running_bytes");
    assert!(running > 0.0 && running <= 10.0 * 1048576.0, "{running}");
    assert!(metric(&server, None, "prefix_cache_capacity_bytes") + running <= 10.0 * 1048576.0);
    let rest: Vec<String> = first.map_while(Result::ok).filter(|l| l.starts_with("data: ")).collect();
    let first_done = Instant::now();
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    let (answer, second_done) = second.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["usage"]["completion_tokens"], 196);
    assert!(second_done >= first_done, "the second request finished before the first");
}

#[test]
fn browsers_cannot_post_text_or_rebind_a_name_and_sdk_headers_pass_cors() {
    let server = Server::smollm2(&[]);
    let url = format!("{}/v1/completions", server.url);
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    // A cross-site form or `fetch` with text/plain needs no preflight: refused.
    assert_error(&call("POST", &url, &[("Content-Type", "text/plain")], Some(body.as_bytes())), 415, "unsupported_media_type");
    assert_error(&call("POST", &url, &[], Some(body.as_bytes())), 415, "unsupported_media_type");
    assert_eq!(call("POST", &url, &[("Content-Type", "application/json; charset=utf-8")], Some(body.as_bytes())).status, 200);
    // DNS rebinding: another site's name resolving to 127.0.0.1 arrives with that name.
    let port = server.url.rsplit(':').next().unwrap().to_string();
    for path in ["/health", "/v1/models", "/", "/config.json"] {
        let answer = call("GET", &format!("{}{path}", server.url), &[("Host", &format!("evil.example:{port}"))], None);
        assert_error(&answer, 421, "host_not_allowed");
    }
    assert_eq!(call("GET", &format!("{}/health", server.url), &[("Host", &format!("localhost:{port}"))], None).status, 200);
    // The OpenAI SDKs' headers pass the preflight from the server's own origin.
    let preflight = call(
        "OPTIONS",
        &url,
        &[
            ("Origin", server.url.as_str()),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, x-stainless-os, x-stainless-retry-count, openai-organization, x-request-id"),
        ],
        None,
    );
    assert!(preflight.status < 300, "{}", preflight.status);
    let allowed = preflight.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for h in ["x-stainless-os", "x-stainless-retry-count", "openai-organization", "x-request-id"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    // Request ids: the caller's, else one of ours.
    let tagged = call("POST", &url, &[JSON, ("X-Request-Id", "client-42")], Some(body.as_bytes()));
    assert_eq!(tagged.header("x-request-id"), Some("client-42"));
    let untagged = call("POST", &url, &[JSON], Some(body.as_bytes()));
    assert!(untagged.header("x-request-id").is_some_and(|id| id.starts_with("req-")));

    // --allowed-host replaces the loopback default.
    let named = Server::smollm2(&["--allowed-host", "api.example", "--allowed-host", "127.0.0.1"]);
    let port = named.url.rsplit(':').next().unwrap().to_string();
    assert_eq!(call("GET", &format!("{}/health", named.url), &[("Host", "api.example")], None).status, 200);
    assert_error(&call("GET", &format!("{}/health", named.url), &[("Host", &format!("localhost:{port}"))], None), 421, "host_not_allowed");
}

#[test]
fn keys_have_their_own_limits_and_prefix_caches() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.txt");
    let mut f = std::fs::File::create(&file).unwrap();
    writeln!(f, "# test keys\nsk-one name=one max_concurrent=1\nsk-rate name=rate tokens_per_minute=20\nsk-c name=c\nsk-d name=d").unwrap();
    let server = Server::smollm2(&["--api-key-file", file.to_str().unwrap(), "--api-key", "sk-plain"]);
    let url = format!("{}/v1/completions", server.url);
    let with = |key: &str, body: Value| call("POST", &url, &[JSON, ("Authorization", &format!("Bearer {key}"))], Some(body.to_string().as_bytes()));
    let short = json!({"prompt": "Hi", "max_tokens": 2});
    // One request at a time for `one`; others are not held back by it.
    let (status, mut lines) =
        stream(&server, json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true}), &[("Authorization", "Bearer sk-one")]);
    assert_eq!(status, 200);
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    let refused = with("sk-one", short.clone());
    assert_error(&refused, 429, "concurrency_limit_exceeded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(with("sk-c", short.clone()).status, 200);
    assert_eq!(with("sk-plain", short.clone()).status, 200);
    assert_eq!(metric(&server, Some("sk-c"), "key_requests_in_flight{key=\"one\"}"), 1.0);
    drop(lines);
    let start = Instant::now();
    while with("sk-one", short.clone()).status != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "the slot was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 20 tokens a minute for `rate`: the first request uses them up.
    assert_eq!(with("sk-rate", json!({"prompt": "one two three four five six seven eight nine ten", "max_tokens": 16, "ignore_eos": true})).status, 200);
    let limited = with("sk-rate", short.clone());
    assert_error(&limited, 429, "tokens_per_minute_exceeded");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&wait), "{wait}");
    // Each key has its own cached prefixes: `d` learns nothing of `c`'s prompt.
    let prompt = json!({"prompt": "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.", "max_tokens": 2});
    let cached = |key: &str| with(key, prompt.clone()).json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert_eq!(cached("sk-c"), 0);
    assert!(cached("sk-c") > 10);
    assert_eq!(cached("sk-d"), 0);
    // Numbers need a key; /health says only whether the server is up.
    assert_error(&call("GET", &format!("{}/metrics", server.url), &[], None), 401, "invalid_api_key");
    assert_error(&call("GET", &format!("{}/health/details", server.url), &[], None), 401, "invalid_api_key");
    let health = call("GET", &format!("{}/health", server.url), &[], None).json();
    assert_eq!(health, json!({"status": "ok", "model": "smollm2-135m"}));
    let details = call("GET", &format!("{}/health/details", server.url), &[("X-Api-Key", "sk-d")], None).json();
    assert!(details["engine"]["requests"].as_u64().unwrap() > 5, "{details}");
}

#[test]
fn a_bad_key_file_stops_the_server_with_the_line_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.txt");
    std::fs::write(&file, "sk-a name=a\nsk-b max_concurrent=lots\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hybrid"))
        .args(["serve", "--addr", "127.0.0.1:0", "--cloud-model", "smollm2-135m", "--browser-model", "smollm2-135m", "--api-key-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keys.txt:2: max_concurrent takes a positive whole number"), "{stderr}");
}

#[test]
fn vllm_sampling_extras_work_and_penalties_are_refused() {
    let server = Server::smollm2(&[]);
    let greedy = |extra: Value| {
        let mut body = json!({"prompt": "def fibonacci(n):", "max_tokens": 12, "temperature": 0, "return_token_ids": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let answer = completion(&server, body);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    };
    let plain = ids(&greedy(json!({})));
    // top_k = 1 at a temperature is greedy; a tiny min_p at temperature 0 changes nothing.
    assert_eq!(ids(&greedy(json!({"temperature": 1.0, "top_k": 1, "seed": 3}))), plain);
    assert_eq!(ids(&greedy(json!({"min_p": 0.05}))), plain);
    // A stop token id ends the answer before it, as the end-of-text token does.
    let at = (1..plain.len()).find(|&i| !plain[..i].contains(&plain[i])).unwrap();
    let stopped = greedy(json!({"stop_token_ids": [plain[at]]}));
    assert_eq!(ids(&stopped), plain[..at].to_vec());
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    // A chat answer that ends early: min_tokens holds the end back, ignore_eos ignores it.
    let chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let short = completion(&server, json!({"prompt": chat, "max_tokens": 64, "temperature": 0})).json();
    assert_eq!(short["choices"][0]["finish_reason"], "stop", "{short}");
    let n = short["usage"]["completion_tokens"].as_u64().unwrap();
    let held = completion(&server, json!({"prompt": chat, "max_tokens": 64, "temperature": 0, "min_tokens": n + 3})).json();
    assert!(held["usage"]["completion_tokens"].as_u64().unwrap() >= n + 3, "{held}");
    let ignored = completion(&server, json!({"prompt": chat, "max_tokens": 64, "temperature": 0, "ignore_eos": true})).json();
    assert_eq!(ignored["usage"]["completion_tokens"], 64, "{ignored}");
    assert_eq!(ignored["choices"][0]["finish_reason"], "length");
    // What would change the answer and is not implemented is refused, naming the field;
    // its neutral value is accepted.
    for (field, value) in
        [("presence_penalty", json!(0.5)), ("frequency_penalty", json!(-1)), ("repetition_penalty", json!(1.2)), ("logit_bias", json!({"50": 5}))]
    {
        let answer = completion(&server, with_field(&json!({"prompt": "Hi", "max_tokens": 1}), field, value));
        assert_error(&answer, 400, "unsupported_parameter");
        assert_eq!(answer.json()["error"]["param"], field);
    }
    assert_eq!(completion(&server, json!({"prompt": "Hi", "max_tokens": 1, "presence_penalty": 0, "repetition_penalty": 1, "logit_bias": {}})).status, 200);
    for (field, value) in [("top_k", json!(-3)), ("min_p", json!(1.5)), ("stop_token_ids", json!([49152])), ("min_tokens", json!(5))] {
        let answer = completion(&server, with_field(&json!({"prompt": "Hi", "max_tokens": 2}), field, value));
        assert_error(&answer, 400, "invalid_value");
        assert_eq!(answer.json()["error"]["param"], field);
    }
}

#[test]
fn a_second_signal_exits_at_once_and_the_drain_has_a_deadline() {
    let long = json!({"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let mut server = Server::smollm2(&[]);
    let (_, mut lines) = stream(&server, long.clone(), &[]);
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    let pid = server.child.id().to_string();
    let kill = |pid: &str| assert!(Command::new("kill").args(["-TERM", pid]).status().unwrap().success());
    kill(&pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.child.try_wait().unwrap().is_none(), "the first signal drains, it does not exit");
    kill(&pid);
    let status = wait_for_exit(&mut server.child, Duration::from_secs(1)).expect("a second signal exits within a second");
    assert!(!status.success(), "{status:?}");

    let mut server = Server::smollm2(&["--shutdown-timeout-s", "1"]);
    let (_, mut lines) = stream(&server, long, &[]);
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    kill(&server.child.id().to_string());
    let status = wait_for_exit(&mut server.child, Duration::from_secs(4)).expect("the drain deadline ends the process");
    assert!(!status.success(), "{status:?}");
}

/// One hostile request: (headers, body). Each breaks at least one rule, so none may succeed.
fn hostile(rng: &mut impl rand::Rng, vocab: u64) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let json_headers = vec![("Content-Type", "application/json".to_string())];
    let base = json!({"prompt": "Hi", "max_tokens": 1});
    let with = |field: &str, value: Value| with_field(&base, field, value).to_string().into_bytes();
    let wrong: Vec<(&str, Value)> = vec![
        ("max_tokens", json!("16")),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(1.5)),
        ("max_tokens", json!(18446744073709551615u64)),
        ("max_tokens", json!(100000)),
        ("max_tokens", json!([])),
        ("temperature", json!("NaN")),
        ("temperature", json!("inf")),
        ("temperature", json!(1e39)),
        ("temperature", json!(-0.1)),
        ("temperature", json!(2.5)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("top_p", json!({})),
        ("prompt", json!(5)),
        ("prompt", json!(true)),
        ("prompt", json!({"text": "Hi"})),
        ("prompt", json!([])),
        ("prompt", json!([-1])),
        ("prompt", json!([1e10])),
        ("prompt", json!([vocab])),
        ("prompt", json!([[1, 2]])),
        ("prompt", json!(["a", "b"])),
        ("prompt", json!("")),
        ("prompt", Value::Null),
        ("logprobs", json!(21)),
        ("logprobs", json!(-1)),
        ("logprobs", json!("3")),
        ("stop", json!(5)),
        ("stop", json!([""])),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stop", json!([1])),
        ("n", json!(2)),
        ("best_of", json!(3)),
        ("echo", json!("yes")),
        ("echo_from", json!(1)),
        ("stream", json!("true")),
        ("seed", json!(-1)),
        ("seed", json!("x")),
        ("top_k", json!(-2)),
        ("min_p", json!(1.5)),
        ("stop_token_ids", json!([-1])),
        ("stop_token_ids", json!([1e12])),
        ("stop_token_ids", json!("x")),
        ("min_tokens", json!(100)),
        ("presence_penalty", json!(1)),
        ("logit_bias", json!({"1": 5})),
        ("model", json!("gpt-4")),
        ("suffix", json!("x")),
        ("cache_salt", json!(5)),
        ("stream_options", json!("all")),
        ("return_token_ids", json!(1)),
    ];
    match rng.random_range(0..10) {
        // Bytes that are not JSON at all (invalid UTF-8 among them).
        0 => {
            let mut body: Vec<u8> = (0..rng.random_range(0..300)).map(|_| rng.random()).collect();
            body.insert(0, b"x[1\"\xff\x00]"[rng.random_range(0..7)]);
            (json_headers, body)
        }
        // A valid body cut short.
        1 => {
            let mut body = json!({"prompt": "Hi there", "max_tokens": 3, "temperature": 0.5, "stop": ["\n"]}).to_string().into_bytes();
            body.truncate(rng.random_range(0..body.len() - 1));
            (json_headers, body)
        }
        // A field of the wrong type or out of range, among unknown fields.
        2..=4 => {
            let (field, value) = wrong[rng.random_range(0..wrong.len())].clone();
            let mut body: Value = serde_json::from_slice(&with(field, value)).unwrap();
            if rng.random_bool(0.3) {
                body["some_other_engines_field"] = json!({"nested": [1, 2, {"x": null}]});
            }
            (json_headers, body.to_string().into_bytes())
        }
        // Deep nesting, past the parser's depth limit.
        5 => {
            let depth = rng.random_range(200..20_000);
            let (open, close) = if rng.random_bool(0.5) { ("[", "]") } else { ("{\"a\":", "}") };
            let body = format!("{{\"prompt\": \"Hi\", \"max_tokens\": 1, \"x\": {}1{}}}", open.repeat(depth), close.repeat(depth));
            (json_headers, body.into_bytes())
        }
        // Invalid UTF-8 inside a string.
        6 => {
            let mut body = b"{\"prompt\": \"Hi ".to_vec();
            body.extend([0xff, 0xfe, 0xc3, 0x28][..rng.random_range(1..5)].iter());
            body.extend(b"\", \"max_tokens\": 1}");
            (json_headers, body)
        }
        // Prompts past the context, or echo from past the prompt's end.
        7 => match rng.random_bool(0.5) {
            true => (json_headers, json!({"prompt": vec![42; 8200 + rng.random_range(0..500)], "max_tokens": 1}).to_string().into_bytes()),
            false => {
                (json_headers, json!({"prompt": [1, 2, 3], "echo": true, "echo_from": rng.random_range(4..u32::MAX), "max_tokens": 0}).to_string().into_bytes())
            }
        },
        // A good body sent as text, or with no type: what a cross-site form sends.
        8 => {
            let headers = match rng.random_bool(0.5) {
                true => vec![("Content-Type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"][rng.random_range(0..3)].to_string())],
                false => vec![],
            };
            (headers, base.to_string().into_bytes())
        }
        // Request ids and other headers of odd shapes, with a bad body.
        _ => {
            let mut headers = json_headers;
            headers.push(("X-Request-Id", "x".repeat(rng.random_range(0..400))));
            (headers, with("temperature", json!(-5)))
        }
    }
}

#[test]
fn thousands_of_hostile_requests_get_well_formed_4xx_and_the_server_answers_after() {
    use rand::SeedableRng;
    let server = Server::smollm2(&[]);
    let url = format!("{}/v1/completions", server.url);
    let reference = json!({"prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0, "return_token_ids": true});
    let before = ids(&post_json(&url, &reference).json());
    let vocab = 49152;
    const REQUESTS: usize = 5200;
    const THREADS: usize = 4;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut seen = std::collections::BTreeMap::<u16, usize>::new();
                for i in 0..REQUESTS / THREADS {
                    let (headers, body) = hostile(&mut rng, vocab);
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let answer = call("POST", &url, &headers, Some(&body));
                    assert!(
                        (400..500).contains(&answer.status),
                        "request {i} of thread {t}: {} for {:?}",
                        answer.status,
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                    let v: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body));
                    for field in ["message", "type", "code"] {
                        assert!(v["error"][field].is_string(), "no error.{field}: {v}");
                    }
                    *seen.entry(answer.status).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    // A few bodies over the 4 MiB limit, alongside.
    for _ in 0..8 {
        let huge = format!("{{\"prompt\": \"{}\", \"max_tokens\": 1}}", "a".repeat(4 << 20));
        assert_error(&call("POST", &url, &[JSON], Some(huge.as_bytes())), 413, "invalid_body");
    }
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        for (status, n) in w.join().expect("a fuzz thread failed") {
            *seen.entry(status).or_default() += n;
        }
    }
    eprintln!("hostile requests by status: {seen:?}");
    assert!(seen.values().sum::<usize>() >= 5000);
    for status in [400, 404, 415] {
        assert!(seen.contains_key(&status), "no {status} among {seen:?}");
    }
    assert_eq!(ids(&post_json(&url, &reference).json()), before, "the server answers differently after the fuzzing");
    assert_eq!(call("GET", &format!("{}/health", server.url), &[], None).json()["status"], "ok");
}
