//! Chat templates from the models' GGUF metadata, rendered exactly as Hugging Face's
//! `apply_chat_template` (jinja2 with trim_blocks/lstrip_blocks) renders them.
//! Models are found in `$HYBRID_MODELS` or `~/.cache/hybrid-assistant/models`.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use hybrid_assistant::model::chat::{ChatTemplate, Message};

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HYBRID_MODELS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set and HYBRID_MODELS is not set");
    PathBuf::from(home).join(".cache/hybrid-assistant/models")
}

fn gguf_content(name: &str) -> Content {
    let path = models_dir().join(format!("{name}.gguf"));
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "model {name} not found at {} ({e}); run `hybrid fetch-models` first (or set HYBRID_MODELS)",
            path.display()
        )
    });
    Content::read(&mut file)
        .unwrap_or_else(|e| panic!("{}: not a readable GGUF: {e}", path.display()))
}

fn template(name: &str) -> ChatTemplate {
    ChatTemplate::from_gguf(&gguf_content(name))
        .unwrap_or_else(|e| panic!("chat template of {name}: {e}"))
}

fn sys_user() -> Vec<Message> {
    vec![Message::system("You are terse."), Message::user("Hi!")]
}

fn user_only() -> Vec<Message> {
    vec![Message::user("What is 2+2?")]
}

fn multi_turn() -> Vec<Message> {
    vec![
        Message::user("Hi"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Tell me a joke."),
    ]
}

const QWEN_DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";
const SMOLLM_DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn check_qwen(name: &str) {
    let t = template(name);
    assert_eq!(t.eos_token(), "<|im_end|>");
    assert_eq!(t.bos_token(), "<|endoftext|>");
    assert_eq!(
        t.render(&sys_user(), true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&user_only(), true).unwrap(),
        format!("{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render(&user_only(), false).unwrap(),
        format!("{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    );
    assert_eq!(
        t.render(&multi_turn(), false).unwrap(),
        format!(
            "{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
        )
    );
}

#[test]
fn qwen_05b_template() {
    check_qwen("qwen2.5-coder-0.5b");
}

#[test]
fn qwen_15b_template() {
    check_qwen("qwen2.5-coder-1.5b");
}

#[test]
fn smollm2_template() {
    let t = template("smollm2-135m");
    assert_eq!(t.eos_token(), "<|im_end|>");
    assert_eq!(t.bos_token(), "<|im_start|>");
    assert_eq!(
        t.render(&sys_user(), true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&user_only(), true).unwrap(),
        format!("{SMOLLM_DEFAULT_SYSTEM}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render(&multi_turn(), false).unwrap(),
        format!(
            "{SMOLLM_DEFAULT_SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
        )
    );
}

#[test]
fn broken_template_is_a_clear_error() {
    let err = ChatTemplate::from_source("{% for m in messages %}{{ m.content }}", "", "")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chat template:"), "{err}");
    assert!(err.contains("cannot compile"), "{err}");
    assert!(err.to_lowercase().contains("syntax"), "{err}");

    let err = ChatTemplate::from_source("{{ messages[0].content | no_such_filter }}", "", "")
        .and_then(|t| t.render(&user_only(), false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_filter") || err.contains("filter"),
        "{err}"
    );
}

#[test]
fn template_features() {
    // bos/eos variables, raise_exception, python string methods, trim/lstrip blocks, tools undefined.
    let src = "{{ bos_token }}{% if tools %}TOOLS{% endif %}\n\
               {% for m in messages %}\n\
                 {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n\
                 [{{ m.role.upper() }}:{{ m.content.strip() }}:{% if m.content.startswith(' x') %}yes{% endif %}]\n\
               {% endfor %}\n\
               {% if add_generation_prompt %}GO{% endif %}{{ eos_token }}";
    let t = ChatTemplate::from_source(src, "<s>", "</s>").unwrap();
    assert_eq!(
        t.render(&[Message::user(" x y ")], true).unwrap(),
        "<s>[USER:x y:yes]\nGO</s>"
    );
    let err = t
        .render(&[Message::new("robot", "hi")], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad role robot"), "{err}");
    let t = ChatTemplate::from_source("{{ messages | length }}", "", "").unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "0");
}

#[test]
fn missing_template_is_a_clear_error() {
    let c = Content {
        magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
        metadata: Default::default(),
        tensor_infos: Default::default(),
        tensor_data_offset: 0,
    };
    let err = ChatTemplate::from_gguf(&c).unwrap_err().to_string();
    assert!(err.contains("tokenizer.chat_template"), "{err}");
}

#[test]
fn message_serde() {
    let m: Message = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
    assert_eq!(m.role, "user");
    assert_eq!(
        serde_json::to_string(&Message::assistant("x")).unwrap(),
        r#"{"role":"assistant","content":"x"}"#
    );
}
