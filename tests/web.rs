//! The browser half of the parity check, run by `wasm-pack test --headless --chrome` (make
//! test-wasm): in headless Chrome the tokenizer, decoder, policies, normaliser and reward head
//! give what they give natively (tests/data/web_parity.json, checked natively by
//! tests/web_parity.rs), and the `Engine` binding the worker uses generates the same ids, on
//! the CPU and on WebGPU (Chromium's software adapter, `--enable-unsafe-webgpu` in
//! webdriver.json), and the GPU attention kernel as Tint and SwiftShader compile it.
//! smollm2-135m comes from a `hybrid serve` whose URL is fixed at build time in
//! HYBRID_TEST_MODEL_URL.
#![cfg(target_arch = "wasm32")]
mod parity;

use hybrid_assistant::web::Engine;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn smollm2() -> Vec<u8> {
    let url = option_env!("HYBRID_TEST_MODEL_URL")
        .expect("build with HYBRID_TEST_MODEL_URL=http://…/models/smollm2-135m.gguf (`make test-wasm` starts a server and sets it)");
    let window = web_sys::window().expect("runs in a browser window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url)).await.expect("the model server answers").into();
    assert!(response.ok(), "{url}: HTTP {}", response.status());
    let buffer = JsFuture::from(response.array_buffer().unwrap()).await.unwrap();
    js_sys::Uint8Array::new(&buffer).to_vec()
}

#[wasm_bindgen_test]
async fn browser_results_match_the_native_ones() {
    let bytes = smollm2().await;
    let expected: serde_json::Value = serde_json::from_str(parity::VECTORS).unwrap();
    let native_greedy: Vec<u32> = serde_json::from_value(expected["greedy_ids"].clone()).unwrap();
    let actual = parity::compute(&bytes, Some(&native_greedy));
    parity::assert_matches_vectors(&expected, &actual);

    // The binding the worker calls, on the CPU and on WebGPU: chat template, then the hybrid
    // loop with no cloud. Free-running, so the same ids up to the first near-tie (each choice
    // was checked teacher-forced above).
    let first_tie = expected["greedy_margins"].as_array().unwrap().iter().position(|m| m.as_f64().unwrap() < parity::NEAR_TIE).unwrap_or(16);
    let native: Vec<u64> = native_greedy.iter().map(|&i| i as u64).collect();
    let engine = Engine::new(bytes.clone(), None).unwrap();
    let cpu_ids = generate_ids(&engine, "cpu", &expected).await;
    assert_eq!(cpu_ids[..first_tie], native[..first_tie], "wasm CPU against native");
    // "force": SwiftShader is a software adapter, which "auto" leaves for the CPU.
    let gpu_ids = generate_ids(&Engine::load(bytes, None, "force".into()).await.unwrap(), "webgpu", &expected).await;
    assert_eq!(gpu_ids[..first_tie], native[..first_tie], "WebGPU against native");

    // Bad input is an error that says what to do, not a panic.
    let err = engine.encode_chat("not json").err().expect("an error");
    assert!(JsValue::from(err).dyn_into::<js_sys::Error>().unwrap().message().as_string().unwrap().contains("list of {role, content}"));
}

/// The batched quantized kernel (SIMD128 here) against the scalar reference, for every
/// format it decodes, with a partial tile and an odd number of activation rows.
#[wasm_bindgen_test]
fn batched_kernel_matches_the_scalar_one() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use hybrid_assistant::model::gemm::{matmul_with, Activations, Kernel};
    assert_ne!(Kernel::best(), Kernel::Scalar, "the wasm build has SIMD128");
    let (n, k, m) = (37, 512, 5);
    let values =
        |len: usize, seed: u32| (0..len).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
    let acts = Activations::quantize(&values(m * k, 7), m, k);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
        let w = QTensor::quantize(&Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap(), dtype).unwrap();
        let data = w.data().unwrap();
        let reference = matmul_with(Kernel::Scalar, dtype, &data, n, k, &acts);
        let simd = matmul_with(Kernel::best(), dtype, &data, n, k, &acts);
        let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in simd.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "{dtype:?} [{i}]: SIMD128 {a} vs scalar {b}");
        }
    }
}

/// 16 greedy ids from the engine through `generate` (the `never` policy), after checking
/// that it runs on `backend`.
async fn generate_ids(engine: &Engine, backend: &str, expected: &serde_json::Value) -> Vec<u64> {
    let info: serde_json::Value = serde_json::from_str(&engine.info()).unwrap();
    assert_eq!(info["arch"], "llama");
    assert_eq!(info["backend"], backend, "WebGPU in headless Chromium needs --enable-unsafe-webgpu: {info}");
    let prompt = engine.encode_chat(r#"[{"role":"user","content":"Write a Python function that checks whether a number is prime."}]"#).unwrap();
    assert_eq!(serde_json::json!(prompt), expected["prompt_ids"]);
    let ids = Rc::new(RefCell::new(Vec::<u64>::new()));
    let sink = ids.clone();
    let on_event = Closure::<dyn FnMut(String) -> bool>::new(move |json: String| {
        let event: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(event["source"], "local");
        sink.borrow_mut().push(event["id"].as_u64().unwrap());
        true
    });
    let done = engine.generate(prompt, r#"{"policy":"never","maxTokens":16}"#, None, on_event.as_ref().unchecked_ref::<js_sys::Function>().clone());
    let stats: serde_json::Value = serde_json::from_str(&JsFuture::from(done).await.unwrap().as_string().unwrap()).unwrap();
    assert_eq!((stats["tokens"].as_u64(), stats["backend"].as_str()), (Some(16), Some(backend)), "{stats}");
    let ids = ids.borrow().clone();
    ids
}

/// The GPU attention kernel on WebGPU (Tint compiles its WGSL, not naga) against causal
/// attention on the CPU, in smollm2-135m's shape: a prefill from position 0 and one decode
/// step past the first split.
#[wasm_bindgen_test]
async fn webgpu_attention_matches_the_cpu() {
    use hybrid_assistant::gpu::{attention::attend, Gpu};
    let gpu = Gpu::new().await.unwrap().expect("WebGPU in headless Chromium needs --enable-unsafe-webgpu");
    let values =
        |n: usize, seed: u32| (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
    let (heads, kv_heads, hd) = (9, 3, 64);
    for (pos, tokens) in [(0, 20), (300, 1)] {
        let q = values(tokens * heads * hd, 1);
        let (k, v) = (values((pos + tokens) * kv_heads * hd, 2), values((pos + tokens) * kv_heads * hd, 3));
        let got = attend(&gpu, &q, &k, &v, (heads, kv_heads, hd), pos).await.unwrap();
        for t in 0..tokens {
            for h in 0..heads {
                let (qh, g) = (&q[(t * heads + h) * hd..][..hd], h / (heads / kv_heads));
                let scores: Vec<f32> =
                    (0..=pos + t).map(|j| qh.iter().zip(&k[(j * kv_heads + g) * hd..][..hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()).collect();
                let top = scores.iter().fold(f32::MIN, |a, &b| a.max(b));
                let weights: Vec<f32> = scores.iter().map(|s| (s - top).exp()).collect();
                let sum: f32 = weights.iter().sum();
                for d in 0..hd {
                    let want: f32 = weights.iter().enumerate().map(|(j, w)| w / sum * v[(j * kv_heads + g) * hd + d]).sum();
                    let have = got[(t * heads + h) * hd + d];
                    assert!((have - want).abs() <= 1e-3, "from {pos}: token {t} head {h} value {d}: WebGPU {have}, CPU {want} ({:?})", gpu.adapter);
                }
            }
        }
    }
}
