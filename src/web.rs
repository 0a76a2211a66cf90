//! The browser binding (wasm32 only): an [`Engine`] holds the small model (on WebGPU or the
//! CPU, see `backend.rs`), its tokenizer and chat template and the reward head, and runs the
//! same hybrid loop as `hybrid chat`.
//!
//! What belongs to the page stays in JavaScript (`www/worker.js`): downloading and caching
//! the files, hash checks, the cloud's URL, key and timeout (the loop gets a `fetch`
//! function), and abort (the per-token callback answers whether to go on). The engine only
//! ever sees bytes and JSON, so its interface is small and the worker is its only caller.
use crate::backend::{GpuChoice, SmallModel};
use crate::backoff::{parse_retry_after, Backoff};
use crate::cloud::{Completion, CompletionRequest};
use crate::generate::{CloudTransport, HybridConfig, HybridLoop, LoopEvent, Slm};
use crate::gpu::Gpu;
use crate::model::chat::{ChatTemplate, Message};
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::model::{gguf, speed};
use crate::policy::{Policy, PolicyKind};
use crate::reward::RewardHead;
use crate::sampler::{Sampler, SamplerConfig};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use serde::Deserialize;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// One loaded small model (and reward head) in the browser.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Loaded>>,
}

struct Loaded {
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    slm: SmallModel,
    head: Option<RewardHead>,
    /// Outlives answers: a refused key or a rate limit holds consults until the worker says
    /// the cloud settings changed (`resetCloudBackoff`).
    backoff: Backoff,
}

/// The tokenizer, chat template and reward head (checked against the model's width).
type TextSide = (Tokenizer, Option<ChatTemplate>, Option<RewardHead>);

impl Loaded {
    fn text_side(content: &Content, reward_head: Option<Vec<u8>>) -> Result<TextSide> {
        let tokenizer = Tokenizer::from_gguf(content)?;
        let chat = ChatTemplate::from_gguf(content).ok();
        let head = reward_head.map(|b| RewardHead::from_safetensors(&b)).transpose()?;
        let d = crate::model::config::ModelConfig::from_gguf(content)?.n_embd;
        if let Some(h) = &head {
            if h.hidden_size() != d {
                return Err(Error::InvalidInput(format!(
                    "the reward head was trained for a model with hidden size {}, this model has {d}: load the head made for this model, or none (then use maxprob or entropy)",
                    h.hidden_size()
                )));
            }
        }
        Ok((tokenizer, chat, head))
    }
}

/// `generate`'s options, as the worker passes them (camelCase, all optional).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GenerateOptions {
    pub policy: String,
    pub threshold: f32,
    pub max_tokens: usize,
    pub temperature: f32,
    /// 1 keeps the whole distribution.
    pub top_p: f32,
    pub seed: u64,
    pub consult_tokens: usize,
    /// Consults also check the local tokens since the previous one (withdrawing what the
    /// cloud would not have written).
    pub verify: bool,
    /// The verify policy consults after at most this many unchecked local tokens.
    pub verify_every: usize,
    /// Gated policies check the answer's tail before it ends (`HybridConfig::final_check`).
    pub final_check: bool,
    /// The model name to send to the cloud; required when the policy may consult.
    pub cloud_model: Option<String>,
    /// Shown in error messages about the cloud.
    pub cloud_url: String,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            policy: "reward".into(),
            threshold: crate::reward::DEFAULT_THRESHOLD,
            max_tokens: 512,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            consult_tokens: 1,
            verify: true,
            verify_every: crate::generate::DEFAULT_VERIFY_EVERY,
            final_check: true,
            cloud_model: None,
            cloud_url: "the cloud".into(),
        }
    }
}

#[wasm_bindgen]
impl Engine {
    /// Loads a GGUF model (and optionally a reward head in safetensors) from bytes the caller
    /// has already verified, on the CPU.
    #[wasm_bindgen(constructor)]
    pub fn new(gguf_bytes: Vec<u8>, reward_head: Option<Vec<u8>>) -> std::result::Result<Engine, JsError> {
        let mut reader = std::io::Cursor::new(&gguf_bytes[..]);
        let content = gguf::read_content(&mut reader)?;
        let (tokenizer, chat, head) = Loaded::text_side(&content, reward_head)?;
        let decoder = Decoder::from_gguf(&content, &mut reader, &candle_core::Device::Cpu, Default::default())?;
        let slm = SmallModel::cpu(decoder, "this engine was made for the CPU");
        Ok(Engine { inner: Rc::new(RefCell::new(Loaded { tokenizer, chat, slm, head, backoff: Backoff::default() })) })
    }

    /// Like the constructor, with `gpu` choosing the backend (`info()` says which and why):
    /// "auto" WebGPU when the adapter is hardware and a few timed decode steps find it faster
    /// than the CPU, "calibrate" the same timing on a software adapter too, "force" WebGPU
    /// whenever an adapter takes the model, "off" the CPU.
    pub async fn load(gguf_bytes: Vec<u8>, reward_head: Option<Vec<u8>>, gpu: String) -> std::result::Result<Engine, JsError> {
        let choice: GpuChoice = gpu.parse()?;
        let adapter = match choice {
            GpuChoice::Off => None,
            _ => Gpu::new().await?,
        };
        let content = gguf::read_content(&mut std::io::Cursor::new(&gguf_bytes[..]))?;
        let (tokenizer, chat, head) = Loaded::text_side(&content, reward_head)?;
        let slm = SmallModel::choose(gguf_bytes, &content, adapter, choice).await?;
        Ok(Engine { inner: Rc::new(RefCell::new(Loaded { tokenizer, chat, slm, head, backoff: Backoff::default() })) })
    }

    /// What was loaded, as JSON: `{arch, layers, hiddenSize, vocabSize, contextLength,
    /// rewardHead, chatTemplate, backend: "webgpu"|"cpu", adapter, cpuReason, calibration:
    /// {gpu_tok_s, cpu_tok_s}|null}`.
    pub fn info(&self) -> String {
        let loaded = self.inner.borrow();
        let c = loaded.slm.config();
        serde_json::json!({
            "arch": c.arch,
            "layers": c.n_layer,
            "hiddenSize": c.n_embd,
            "vocabSize": loaded.tokenizer.vocab_size(),
            "contextLength": c.context_length,
            "rewardHead": loaded.head.is_some(),
            "chatTemplate": loaded.chat.is_some(),
            "backend": loaded.slm.backend(),
            "adapter": loaded.slm.adapter(),
            "cpuReason": loaded.slm.cpu_reason(),
            "calibration": loaded.slm.calibration(),
        })
        .to_string()
    }

    /// Forgets consult failures: the worker calls it when the cloud settings change, so a
    /// fixed key or URL is tried at once.
    #[wasm_bindgen(js_name = resetCloudBackoff)]
    pub fn reset_cloud_backoff(&self) -> std::result::Result<(), JsError> {
        let mut loaded = self.inner.try_borrow_mut().map_err(|_| JsError::new("a generation is running on this engine"))?;
        loaded.backoff = Backoff::default();
        Ok(())
    }

    /// Token ids of a conversation (`[{role, content}, …]` as JSON) through the model's chat
    /// template, ready for the assistant's reply.
    #[wasm_bindgen(js_name = encodeChat)]
    pub fn encode_chat(&self, messages_json: &str) -> std::result::Result<Vec<u32>, JsError> {
        let messages: Vec<Message> =
            serde_json::from_str(messages_json).map_err(|e| JsError::new(&format!("messages must be a list of {{role, content}}: {e}")))?;
        if messages.is_empty() {
            return Err(JsError::new("no messages: give the assistant something to answer"));
        }
        let loaded = self.inner.borrow();
        let template = loaded.chat.as_ref().ok_or_else(|| JsError::new("this model has no chat template to turn messages into a prompt"))?;
        Ok(loaded.tokenizer.encode(&template.render(&messages, true)?)?)
    }

    /// Prefill and decode speed on this engine's model and backend (`hybrid bench browser`): a
    /// `prompt_tokens`-token prompt, then `gen_tokens` greedy tokens, best of `repeats`.
    /// Resolves to JSON `{prefill_tok_s, decode_tok_s, prompt_tokens, prompt_text, backend}`;
    /// the text lets another engine be measured on the same prompt.
    pub fn bench(&self, prompt_tokens: usize, gen_tokens: usize, repeats: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut loaded = inner.try_borrow_mut().map_err(|_| JsError::new("a generation is running on this engine: benchmark it when idle"))?;
            let loaded = &mut *loaded;
            let prompt = speed::bench_prompt(&loaded.tokenizer, prompt_tokens).map_err(to_js)?;
            let result = speed::measure(&mut loaded.slm, &prompt, gen_tokens, repeats).await.map_err(to_js)?;
            Ok(JsValue::from_str(
                &serde_json::json!({
                    "prefill_tok_s": result.prefill_tok_s,
                    "decode_tok_s": result.decode_tok_s,
                    "prompt_tokens": prompt.len(),
                    "prompt_text": loaded.tokenizer.decode(&prompt),
                    "backend": loaded.slm.backend(),
                })
                .to_string(),
            ))
        })
    }

    /// Where a WebGPU decode step's time goes (`hybrid bench browser --webgpu --profile`): a
    /// `prompt_tokens`-token prompt is prefilled, then one step is run kernel by kernel
    /// (timestamp queries where the adapter has them, else each dispatch waited for). Resolves
    /// to JSON `{timer, kernels: [[kind, seconds], ...]}` in dispatch order; rejects on the CPU.
    pub fn profile(&self, prompt_tokens: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut loaded = inner.try_borrow_mut().map_err(|_| JsError::new("a generation is running on this engine: profile it when idle"))?;
            let loaded = &mut *loaded;
            let prompt = speed::bench_prompt(&loaded.tokenizer, prompt_tokens + 1).map_err(to_js)?;
            let (last, cached) = prompt.split_last().ok_or_else(|| JsError::new("profile needs a prompt"))?;
            loaded.slm.reset();
            loaded.slm.forward(cached).await.map_err(to_js)?;
            let timer = loaded.slm.gpu_timer();
            let Some(times) = loaded.slm.gpu_profile(&[*last]).await else {
                return Err(JsError::new("the model runs on the CPU: nothing to profile on WebGPU").into());
            };
            let kernels: Vec<(String, f64)> = times.map_err(to_js)?.into_iter().map(|(kind, _, _, seconds)| (kind, seconds)).collect();
            loaded.slm.reset();
            Ok(JsValue::from_str(&serde_json::json!({ "timer": timer, "kernels": kernels }).to_string()))
        })
    }

    /// Runs the hybrid loop after `prompt` (token ids). `options` is JSON ([`GenerateOptions`]).
    /// `cloud_fetch(body: string) -> Promise<{status, text}>` sends one completions request
    /// (rejecting on a network error or timeout); `on_event(json: string) -> boolean |
    /// Promise<boolean>` gets each token and answers whether to go on. Resolves to the
    /// statistics as JSON.
    pub fn generate(&self, prompt: Vec<u32>, options: &str, cloud_fetch: Option<js_sys::Function>, on_event: js_sys::Function) -> js_sys::Promise {
        let inner = self.inner.clone();
        let options = options.to_string();
        wasm_bindgen_futures::future_to_promise(async move {
            let stats = run_generation(&inner, &prompt, &options, cloud_fetch, on_event).await.map_err(to_js)?;
            Ok(JsValue::from_str(&stats))
        })
    }
}

async fn run_generation(
    inner: &RefCell<Loaded>,
    prompt: &[u32],
    options: &str,
    cloud_fetch: Option<js_sys::Function>,
    on_event: js_sys::Function,
) -> Result<String> {
    let options: GenerateOptions = serde_json::from_str(options).map_err(|e| Error::InvalidInput(format!("generate options: {e}")))?;
    let kind: PolicyKind = options.policy.parse()?;
    let policy = Policy::new(kind, options.threshold, options.seed)?;
    let mut cloud = match (kind.may_consult(), cloud_fetch, options.cloud_model) {
        (true, Some(fetch), Some(model)) => Some(JsCloud { model, url: options.cloud_url, fetch }),
        (true, _, None) => return Err(Error::InvalidInput("the policy consults the cloud: set cloudModel".into())),
        _ => None,
    };
    let mut guard =
        inner.try_borrow_mut().map_err(|_| Error::InvalidInput("a generation is already running on this engine: wait for it or abort it".into()))?;
    let Loaded { slm, tokenizer, head, backoff, .. } = &mut *guard;
    let mut run = HybridLoop {
        slm,
        tokenizer,
        head: head.as_ref(),
        cloud: cloud.as_mut(),
        policy,
        sampler: Sampler::new(SamplerConfig { temperature: options.temperature, top_p: options.top_p, seed: options.seed }),
        config: HybridConfig {
            max_tokens: options.max_tokens,
            consult_tokens: options.consult_tokens,
            verify: options.verify,
            verify_every: options.verify_every,
            final_check: options.final_check,
            ..Default::default()
        },
        backoff,
    };
    let stats = run.run(prompt, async |event: &LoopEvent| emit(&on_event, event).await).await?;
    let mut summary = stats.summary();
    // Bytes of an unfinished character at the end, for the page to append.
    summary["tail"] = stats.tail.into();
    // Where the model ran; a GPU that failed during this answer says so here.
    summary["backend"] = guard.slm.backend().into();
    summary["cpu_reason"] = guard.slm.cpu_reason().into();
    Ok(summary.to_string())
}

/// Hands one event (a token, `{withdraw_from}` or `{verified_to}`) to JavaScript and awaits
/// its answer: `false` (or a rejection) stops.
async fn emit(on_event: &js_sys::Function, event: &LoopEvent) -> bool {
    let json = serde_json::to_string(event).expect("a loop event serialises");
    let Ok(answer) = on_event.call1(&JsValue::NULL, &JsValue::from_str(&json)) else { return false };
    let answer = match answer.dyn_into::<js_sys::Promise>() {
        Ok(promise) => match JsFuture::from(promise).await {
            Ok(v) => v,
            Err(_) => return false,
        },
        Err(value) => value,
    };
    answer.as_bool().unwrap_or(true)
}

/// The cloud through the worker's `fetch`.
struct JsCloud {
    model: String,
    url: String,
    fetch: js_sys::Function,
}

impl CloudTransport for JsCloud {
    fn model(&self) -> &str {
        &self.model
    }

    async fn complete(&mut self, request: &CompletionRequest) -> Result<Completion> {
        let body = serde_json::to_string(request).map_err(|e| Error::Cloud(e.to_string()))?;
        let promise = self.fetch.call1(&JsValue::NULL, &JsValue::from_str(&body)).map_err(|e| cloud_error(&self.url, e))?;
        let promise = promise.dyn_into::<js_sys::Promise>().map_err(|e| cloud_error(&self.url, e))?;
        let answer = JsFuture::from(promise).await.map_err(|e| cloud_error(&self.url, e))?;
        let field = |name: &str| js_sys::Reflect::get(&answer, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED);
        let status = field("status").as_f64().unwrap_or(0.0) as u16;
        let text = field("text").as_string().unwrap_or_default();
        let retry_after = parse_retry_after(field("retryAfter").as_string().as_deref());
        Completion::from_http(&self.url, status, body.len(), &text).map_err(|e| e.with_retry_after(retry_after))
    }
}

fn to_js(e: Error) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The worker's `fetch` failure: a timeout carries `timeout: true` (worker.js).
fn cloud_error(url: &str, e: JsValue) -> Error {
    let message = match e.dyn_ref::<js_sys::Error>() {
        Some(err) => String::from(err.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    };
    if js_sys::Reflect::get(&e, &JsValue::from_str("timeout")).is_ok_and(|t| t.is_truthy()) {
        return Error::CloudTimeout(format!("the cloud at {url}: {message}"));
    }
    Error::Cloud(format!("cannot reach the cloud at {url}: {message}"))
}
