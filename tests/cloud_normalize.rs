//! The response normaliser on fixtures written from the documented formats of vLLM
//! (legacy logprobs with `token_ids`, or `return_tokens_as_token_ids`) and llama.cpp's server
//! (`logprobs.content` on /v1/completions, `completion_probabilities` on /completion).
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
mod common;

use hybrid_assistant::cloud::{normalize, CloudToken, TopToken};

fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(common::data_path(&format!("cloud/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn top(id: Option<u32>, text: &str, logprob: f32) -> TopToken {
    TopToken { id, text: text.into(), logprob }
}

/// " world!" as two tokens; alternatives with ids where the engine gives them.
fn expected(with_top_ids: bool) -> Vec<CloudToken> {
    let id = |i| with_top_ids.then_some(i);
    vec![
        CloudToken {
            id: 1879,
            text: " world".into(),
            logprob: Some(-0.3125),
            top: vec![top(id(1879), " world", -0.3125), top(id(1052), " there", -1.875)],
        },
        CloudToken { id: 0, text: "!".into(), logprob: Some(-1.25), top: vec![top(id(0), "!", -1.25), top(id(11), ",", -1.4375)] },
    ]
}

#[test]
fn vllm_legacy_logprobs_with_token_ids() {
    assert_eq!(normalize(&fixture("vllm_completion.json")).unwrap(), expected(false));
}

#[test]
fn llamacpp_v1_completions_content() {
    assert_eq!(normalize(&fixture("llamacpp_v1_completion.json")).unwrap(), expected(true));
}

#[test]
fn llamacpp_native_completion_probabilities() {
    assert_eq!(normalize(&fixture("llamacpp_completion.json")).unwrap(), expected(true));
}

#[test]
fn vllm_tokens_as_token_ids() {
    let tokens = normalize(&fixture("vllm_tokens_as_ids.json")).unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].id, 1879);
    assert_eq!(tokens[0].text, " world", "a lone token takes the choice's text");
    assert_eq!(tokens[0].top[1], top(Some(1052), "token_id:1052", -1.875));
}

#[test]
fn a_response_without_ids_says_what_to_ask_for() {
    let mut v = fixture("vllm_completion.json");
    v["choices"][0].as_object_mut().unwrap().remove("token_ids");
    let err = normalize(&v).unwrap_err().to_string();
    assert!(err.contains("return_token_ids"), "{err}");
}

#[test]
fn a_response_without_logprobs_still_gives_ids() {
    let mut v = fixture("vllm_completion.json");
    v["choices"][0]["logprobs"] = serde_json::Value::Null;
    let tokens = normalize(&v).unwrap();
    assert_eq!(tokens.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1879, 0]);
    assert!(tokens.iter().all(|t| t.logprob.is_none() && t.top.is_empty()));
}

#[test]
fn garbage_is_a_clear_error() {
    let err = normalize(&serde_json::json!({"choices": []})).unwrap_err().to_string();
    assert!(err.contains("unexpected completion response"), "{err}");
    let err = normalize(&serde_json::json!({"choices": [{"logprobs": {"content": [{"token": "x"}]}}]})).unwrap_err().to_string();
    assert!(err.contains("id"), "{err}");
}
