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
        CloudToken { id: 1879, text: " world".into(), logprob: Some(-0.3125), top: vec![top(id(1879), " world", -0.3125), top(id(1052), " there", -1.875)] },
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

/// llama.cpp's /v1/completions carries `finish_reason` and `usage` as OpenAI does, beside
/// logprobs in its own `content` shape: both are read (the typed legacy parse used to fail on
/// that shape and drop them, so an end-of-text answer looked like "no tokens").
#[test]
fn llamacpp_v1_completions_keep_finish_reason_and_usage() {
    let text = fixture("llamacpp_v1_completion.json").to_string().replace("\"length\"", "\"stop\"");
    let done = hybrid_assistant::cloud::Completion::from_http("http://llama/v1/completions", 200, 10, &text).unwrap();
    assert_eq!(done.tokens, expected(true));
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    let usage = done.usage.expect("usage read");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (1, 2, 3));
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

/// An echo answer in the legacy shape with `token_id:N` names: prompt [7, 8, 9] echoed from
/// position `from`, then one generated token (vLLM and our server).
fn legacy_echo(from: usize) -> serde_json::Value {
    let prompt = [7u32, 8, 9];
    let mut tokens = vec![];
    let mut lps = vec![];
    let mut tops = vec![];
    for (p, &id) in prompt.iter().enumerate().skip(from) {
        tokens.push(format!("token_id:{id}"));
        if p == 0 {
            lps.push(serde_json::Value::Null);
            tops.push(serde_json::Value::Null);
        } else {
            lps.push(serde_json::json!(-0.5 * p as f32));
            // The cloud's favourite at position 2 is 4, not the prompt's 9.
            let best = if p == 2 { 4 } else { id };
            tops.push(serde_json::json!({format!("token_id:{best}"): -0.1, format!("token_id:{id}"): -0.5 * p as f32}));
        }
    }
    tokens.push("token_id:5".into());
    lps.push(serde_json::json!(-0.2));
    tops.push(serde_json::json!({"token_id:5": -0.2}));
    serde_json::json!({"choices": [{"text": "", "token_ids": [5], "finish_reason": "length",
        "logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": vec![0; 4 - from]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
}

#[test]
fn echoed_prompt_scores_are_split_from_the_answer_and_lined_up_with_the_prompt() {
    use hybrid_assistant::cloud::{echoed, position_scores};
    for from in [0, 1] {
        let body = legacy_echo(from);
        // The generated token alone, whatever was echoed before it.
        assert_eq!(normalize(&body).unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), vec![5]);
        let echo = echoed(&body).unwrap().unwrap();
        assert_eq!(echo.len(), 3 - from);
        // Asked from position 1: an engine that honours echo_from (from = 1) and one that
        // echoes everything (from = 0) give the same scores.
        let scores = position_scores(&echo, &[7, 8, 9], 1).unwrap();
        assert_eq!(scores.iter().map(|s| s.id).collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(scores[0].top[0].0, 8);
        assert_eq!(scores[1].top[0], (4, -0.1));
        assert_eq!(scores[1].logprob, Some(-1.0));
    }
    let echo = echoed(&legacy_echo(0)).unwrap().unwrap();
    let e = position_scores(&echo, &[7, 8, 9, 10, 11], 3).unwrap_err().to_string();
    assert!(e.contains("echoed 3 prompt tokens"), "{e}");
    let e = position_scores(&echo, &[7, 6, 9], 1).unwrap_err().to_string();
    assert!(e.contains("at position 1"), "{e}");
    // No echo at all: none.
    assert!(echoed(&fixture("vllm_completion.json")).unwrap().is_none());
}

#[test]
fn vllm_prompt_logprobs_are_read_as_scores() {
    use hybrid_assistant::cloud::{echoed, position_scores};
    let mut body = fixture("vllm_completion.json");
    body["choices"][0]["prompt_logprobs"] = serde_json::json!([null,
        {"8": {"logprob": -0.3, "rank": 1, "decoded_token": "b"}},
        {"4": {"logprob": -0.2, "rank": 1, "decoded_token": "x"}, "9": {"logprob": -2.5, "rank": 3, "decoded_token": "c"}}]);
    let echo = echoed(&body).unwrap().unwrap();
    let scores = position_scores(&echo, &[7, 8, 9], 1).unwrap();
    assert_eq!(scores[0].top, vec![(8, -0.3)]);
    assert_eq!(scores[1].top, vec![(4, -0.2), (9, -2.5)]);
    assert_eq!(scores[1].logprob, Some(-2.5));
}

#[test]
fn scores_named_by_text_only_ask_for_token_ids() {
    use hybrid_assistant::cloud::{echoed, position_scores};
    let mut body = legacy_echo(1);
    body["choices"][0]["logprobs"]["top_logprobs"][0] = serde_json::json!({"b": -0.1});
    let echo = echoed(&body).unwrap().unwrap();
    let e = position_scores(&echo, &[7, 8, 9], 1).unwrap_err().to_string();
    assert!(e.contains("return_tokens_as_token_ids"), "{e}");
}
