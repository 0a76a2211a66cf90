//! The tokenizer built from GGUF metadata must give llama.cpp's ids exactly.
//!
//! Reference vectors (made with llama.cpp, special tokens parsed, no BOS) live in
//! `tests/data/tokenizer/`. Models are found in `$HYBRID_MODELS` or
//! `~/.cache/hybrid-assistant/models`; run `hybrid fetch-models` first.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use hybrid_assistant::model::tokenizer::{TextStream, Tokenizer};

const SMOLLM2: &str = "smollm2-135m";
const QWEN_05B: &str = "qwen2.5-coder-0.5b";
const QWEN_15B: &str = "qwen2.5-coder-1.5b";

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
    Content::read(&mut file).unwrap_or_else(|e| panic!("{}: not a readable GGUF: {e}", path.display()))
}

/// Tokenizers are built once per model and shared by the tests of this binary.
fn tokenizer(name: &str) -> &'static Tokenizer {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<String, &'static Tokenizer>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = map.get(name) {
        return t;
    }
    let tok = Tokenizer::from_gguf(&gguf_content(name))
        .unwrap_or_else(|e| panic!("building the tokenizer of {name}: {e}"));
    let leaked: &'static Tokenizer = Box::leak(Box::new(tok));
    map.insert(name.to_string(), leaked);
    leaked
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer")
}

#[derive(serde::Deserialize)]
struct Vector {
    text: String,
    ids: Vec<u32>,
}

fn load_vectors(file: &str) -> Vec<Vector> {
    let path = data_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reference vectors {} missing ({e}); generate them with tests/llamacpp/tokenize.mjs",
            path.display()
        )
    });
    let v: Vec<Vector> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!v.is_empty(), "{} has no vectors", path.display());
    v
}

fn hard_strings() -> Vec<String> {
    let path = data_dir().join("hard_strings.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} missing ({e})", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Extra strings covering the cases the tokenizer's design depends on.
fn own_strings() -> Vec<String> {
    [
        "",
        "Hello world",
        " Hello  world  ",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "def f(x):\n    return x * 2\n\n\n",
        "1234567890 3.14159 1,000,000",
        "I'm you're they've we'll he'd it's DON'T I'M",
        "naïve café — “quotes” 中文字符 日本語 한국어 العربية",
        "emoji 🦀🚀😀👍🏽👨‍👩‍👧 done",
        "\t\ttabs\r\nand\r\n\r\nCRLF   \n",
        "<tool_call>{\"a\": 1}</tool_call>",
        "<|im_start|><|im_end|><|endoftext|>",
        "e\u{301} combining, \u{a0}nbsp, \u{200b}zwsp, \u{3000}ideographic",
        "'ſt 'S 'LL ʼs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check_vectors(model: &str, file: &str) {
    let tok = tokenizer(model);
    let vectors = load_vectors(file);
    let mut failures = Vec::new();
    for v in &vectors {
        match tok.encode(&v.text) {
            Ok(ids) if ids == v.ids => {}
            Ok(ids) => failures.push(format!(
                "text {:?}\n  llama.cpp: {:?}\n  ours:      {:?}",
                v.text, v.ids, ids
            )),
            Err(e) => failures.push(format!("text {:?}: error {e}", v.text)),
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} of {} vectors from {file} differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_vectors(SMOLLM2, "smollm2-135m.json");
}

#[test]
fn qwen_05b_matches_llama_cpp() {
    check_vectors(QWEN_05B, "qwen2.5-coder.json");
}

#[test]
fn qwen_15b_matches_llama_cpp() {
    check_vectors(QWEN_15B, "qwen2.5-coder.json");
}

#[test]
fn qwen_known_ids() {
    let tok = tokenizer(QWEN_05B);
    assert_eq!(tok.vocab_size(), 151936);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![9707, 1879]);
    assert_eq!(
        tok.encode("<|im_start|>user\nhi<|im_end|>").unwrap(),
        vec![151644, 872, 198, 6023, 151645]
    );
    // Without special-token parsing the marker is spelled with ordinary tokens.
    let plain = tok.encode_plain("<|im_start|>").unwrap();
    assert!(plain.len() > 1 && !plain.contains(&151644), "{plain:?}");
    assert_eq!(tok.decode(&plain), "<|im_start|>");
    // User-defined tokens are matched too.
    assert_eq!(tok.encode("<tool_call>").unwrap(), vec![151657]);
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
}

#[test]
fn special_ids_and_eog() {
    let q = tokenizer(QWEN_05B);
    assert_eq!(q.eos_id(), Some(151645));
    assert_eq!(q.bos_id(), Some(151643));
    assert_eq!(q.token_id("<|im_end|>"), Some(151645));
    assert_eq!(q.token_id("<|endoftext|>"), Some(151643));
    assert!(q.is_eog(151645), "<|im_end|> ends generation");
    assert!(q.is_eog(151643), "<|endoftext|> ends generation");
    assert!(!q.is_eog(151644), "<|im_start|> does not end generation");
    assert!(!q.is_eog(9707));
    assert!(!q.is_eog(u32::MAX));
    assert_eq!(q.token_bytes(151645), b"<|im_end|>");
    assert_eq!(q.token_bytes(9707), b"Hello");
    assert_eq!(q.token_bytes(1879), b" world");
    assert_eq!(q.token_bytes(198), b"\n");
    assert_eq!(q.token_bytes(u32::MAX), b"");

    let s = tokenizer(SMOLLM2);
    assert_eq!(s.vocab_size(), 49152);
    let eos = s.eos_id().expect("smollm2 has an eos id");
    assert_eq!(eos, 2);
    assert_eq!(s.token_bytes(eos), b"<|im_end|>");
    assert!(s.is_eog(eos));
    assert!(s.is_eog(s.token_id("<|endoftext|>").unwrap()));
    assert!(!s.is_eog(s.token_id("<|im_start|>").unwrap()));
    assert_eq!(s.encode("<|im_start|>").unwrap(), vec![1]);
}

#[test]
fn no_bos_added_for_these_models() {
    for m in [SMOLLM2, QWEN_05B] {
        let tok = tokenizer(m);
        let ids = tok.encode("hi").unwrap();
        assert_ne!(ids.first().copied(), tok.bos_id(), "{m}: no BOS expected: {ids:?}");
    }
}

fn all_strings() -> Vec<String> {
    let mut v = own_strings();
    if data_dir().join("hard_strings.json").exists() {
        v.extend(hard_strings());
    }
    v
}

#[test]
fn round_trip_decode() {
    for m in [SMOLLM2, QWEN_05B] {
        let tok = tokenizer(m);
        for s in all_strings() {
            let ids = tok.encode(&s).unwrap();
            assert_eq!(tok.decode(&ids), s, "{m}: decode(encode(s)) != s, ids {ids:?}");
            let plain = tok.encode_plain(&s).unwrap();
            assert_eq!(tok.decode(&plain), s, "{m}: plain round trip");
        }
    }
}

fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut stream = TextStream::new(tok);
    let mut out = String::new();
    let mut held = 0;
    for &id in ids {
        let piece = stream.push(id);
        if piece.is_empty() && !tok.token_bytes(id).is_empty() {
            held += 1;
        }
        out.push_str(&piece);
    }
    out.push_str(&stream.finish());
    (out, held)
}

#[test]
fn text_stream_holds_split_characters() {
    let text = "crab 🦀, family 👨‍👩‍👧, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🫠 done";
    for m in [SMOLLM2, QWEN_05B] {
        let tok = tokenizer(m);
        let ids = tok.encode(text).unwrap();
        // At least one token on its own is not valid UTF-8: a character split over tokens.
        let split = ids
            .iter()
            .any(|&id| std::str::from_utf8(tok.token_bytes(id)).is_err());
        assert!(split, "{m}: expected some emoji to be split over tokens: {ids:?}");
        let (out, held) = stream_all(tok, &ids);
        assert_eq!(out, text, "{m}");
        assert!(held > 0, "{m}: the stream should have held back a partial character");
        for s in all_strings() {
            let ids = tok.encode(&s).unwrap();
            assert_eq!(stream_all(tok, &ids).0, s, "{m}: streamed text differs");
        }
    }
}

#[test]
fn text_stream_emits_complete_text_per_token() {
    let tok = tokenizer(QWEN_05B);
    // 🦀 = F0 9F A6 80: feed its bytes' tokens one by one.
    let ids = tok.encode_plain("🦀").unwrap();
    let mut stream = TextStream::new(tok);
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(pieces.concat(), "🦀");
    if ids.len() > 1 {
        assert!(pieces[..ids.len() - 1].iter().all(String::is_empty), "{pieces:?}");
    }
    assert_eq!(stream.finish(), "");
    // An incomplete character at the end is flushed lossily.
    let first = tok.token_id(&"ð".to_string()).unwrap(); // byte 0xF0 alone
    let mut stream = TextStream::new(tok);
    assert_eq!(stream.push(first), "");
    assert_eq!(stream.push(tok.token_id("a").unwrap()), "\u{FFFD}a");
    assert_eq!(stream.push(first), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

// ---- bad metadata: clear errors, no panics -------------------------------------------------

fn synthetic(pre: Option<&str>) -> Content {
    // A byte-level vocabulary: the 256 byte characters, "Ġt" from one merge, and one control token.
    let mut tokens = Vec::new();
    for c in ('!'..='~').chain('¡'..='¬').chain('®'..='ÿ') {
        tokens.push(c.to_string());
    }
    for n in 0..68u32 {
        tokens.push(char::from_u32(256 + n).unwrap().to_string());
    }
    tokens.push("Ġt".to_string());
    tokens.push("<|end|>".to_string());
    let n = tokens.len();
    let mut types = vec![Value::I32(1); n];
    types[n - 1] = Value::I32(3);
    let mut md = HashMap::new();
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    if let Some(pre) = pre {
        md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    }
    md.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    md.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(vec![Value::String("Ġ t".into())]),
    );
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(n as u32 - 1));
    Content {
        magic: VersionedMagic::GgufV3,
        metadata: md,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

#[test]
fn synthetic_vocab_works() {
    let tok = Tokenizer::from_gguf(&synthetic(Some("qwen2"))).unwrap();
    let ids = tok.encode("a t<|end|>").unwrap();
    assert_eq!(ids, vec![tok.token_id("a").unwrap(), tok.token_id("Ġt").unwrap(), 325]);
    assert!(tok.is_eog(325));
    assert_eq!(tok.decode(&ids), "a t<|end|>");
}

#[test]
fn bad_metadata_gives_clear_errors() {
    let err = |c: &Content| Tokenizer::from_gguf(c).unwrap_err().to_string();

    let e = err(&synthetic(Some("llama-bpe")));
    assert!(e.contains("llama-bpe") && e.contains("qwen2") && e.contains("smollm"), "{e}");

    let e = err(&synthetic(None));
    assert!(e.contains("tokenizer.ggml.pre"), "{e}");

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    let e = err(&c);
    assert!(e.contains("llama") && e.contains("gpt2"), "{e}");

    let mut c = synthetic(Some("qwen2"));
    c.metadata.remove("tokenizer.ggml.tokens");
    assert!(err(&c).contains("tokenizer.ggml.tokens"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.remove("tokenizer.ggml.merges");
    assert!(err(&c).contains("tokenizer.ggml.merges"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("nospace".into())]));
    assert!(err(&c).contains("nospace"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1)]));
    assert!(err(&c).contains("token_type"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
    assert!(err(&c).contains("tokenizer.ggml.tokens"));

    // A vocabulary missing a byte cannot be byte-level BPE.
    let mut c = synthetic(Some("qwen2"));
    if let Some(Value::Array(t)) = c.metadata.get_mut("tokenizer.ggml.tokens") {
        t[0] = Value::String("!!".into());
    }
    assert!(err(&c).contains("byte"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    assert!(err(&c).contains("bos_token_id"));
}
