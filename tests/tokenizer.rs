//! The tokenizer built from GGUF metadata must give llama.cpp's ids exactly.
//!
//! Reference vectors (made with llama.cpp, special tokens parsed, no BOS) live in
//! `tests/data/tokenizer/`. Models are found in `$HYBRID_MODELS` or
//! `~/.cache/hybrid-assistant/models`; run `hybrid fetch-models` first.
#![cfg(not(target_arch = "wasm32"))] // native only; tests/web.rs is the browser suite
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
    Content::read(&mut file)
        .unwrap_or_else(|e| panic!("{}: not a readable GGUF: {e}", path.display()))
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
    // llama.cpp's EOG set: <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>.
    assert_eq!(q.eog_ids(), vec![151643, 151645, 151662, 151663, 151664]);
    assert!(q.is_control(151644) && !q.is_control(151657) && !q.is_control(9707));
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
    // <|endoftext|>, <|im_end|> and <reponame> (llama.cpp's FIM repo token).
    assert_eq!(s.eog_ids(), vec![0, 2, 4]);
    assert_eq!(s.encode("<|im_start|>").unwrap(), vec![1]);
}

#[test]
fn no_bos_added_for_these_models() {
    for m in [SMOLLM2, QWEN_05B] {
        let tok = tokenizer(m);
        let ids = tok.encode("hi").unwrap();
        assert_ne!(
            ids.first().copied(),
            tok.bos_id(),
            "{m}: no BOS expected: {ids:?}"
        );
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
            assert_eq!(
                tok.decode(&ids),
                s,
                "{m}: decode(encode(s)) != s, ids {ids:?}"
            );
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
        assert!(
            split,
            "{m}: expected some emoji to be split over tokens: {ids:?}"
        );
        let (out, held) = stream_all(tok, &ids);
        assert_eq!(out, text, "{m}");
        assert!(
            held > 0,
            "{m}: the stream should have held back a partial character"
        );
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
        assert!(
            pieces[..ids.len() - 1].iter().all(String::is_empty),
            "{pieces:?}"
        );
    }
    assert_eq!(stream.finish(), "");
    // An incomplete character at the end is flushed lossily.
    let first = tok.token_id("ð").unwrap(); // byte 0xF0 alone
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
    md.insert(
        "tokenizer.ggml.eos_token_id".into(),
        Value::U32(n as u32 - 1),
    );
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
    let end = tok.token_id("<|end|>").unwrap();
    assert_eq!(end, 257);
    assert_eq!(
        ids,
        vec![tok.token_id("a").unwrap(), tok.token_id("Ġt").unwrap(), end]
    );
    assert!(tok.is_eog(end), "<|end|> is an end-of-generation token");
    assert_eq!(tok.vocab_size(), 258);
    assert_eq!(tok.decode(&ids), "a t<|end|>");
}

#[test]
fn bad_metadata_gives_clear_errors() {
    let err = |c: &Content| Tokenizer::from_gguf(c).unwrap_err().to_string();

    let e = err(&synthetic(Some("llama-bpe")));
    assert!(
        e.contains("llama-bpe") && e.contains("qwen2") && e.contains("smollm"),
        "{e}"
    );

    let e = err(&synthetic(None));
    assert!(e.contains("tokenizer.ggml.pre"), "{e}");

    let mut c = synthetic(Some("qwen2"));
    c.metadata
        .insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    let e = err(&c);
    assert!(e.contains("llama") && e.contains("gpt2"), "{e}");

    let mut c = synthetic(Some("qwen2"));
    c.metadata.remove("tokenizer.ggml.tokens");
    assert!(err(&c).contains("tokenizer.ggml.tokens"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.remove("tokenizer.ggml.merges");
    assert!(err(&c).contains("tokenizer.ggml.merges"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(vec![Value::String("nospace".into())]),
    );
    assert!(err(&c).contains("nospace"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(vec![Value::I32(1)]),
    );
    assert!(err(&c).contains("token_type"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata
        .insert("tokenizer.ggml.tokens".into(), Value::U32(3));
    assert!(err(&c).contains("tokenizer.ggml.tokens"));

    let mut c = synthetic(Some("qwen2"));
    c.metadata
        .insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    assert!(err(&c).contains("bos_token_id"));
}

fn check_embedded(model: &str, json: &str) {
    let tok = tokenizer(model);
    let vectors: Vec<Vector> = serde_json::from_str(json).expect("embedded vectors are valid JSON");
    let failures: Vec<String> = vectors
        .iter()
        .filter_map(|v| {
            let ids = tok.encode(&v.text).unwrap();
            (ids != v.ids).then(|| {
                format!(
                    "{:?}\n  llama.cpp: {:?}\n  ours:      {:?}",
                    v.text, v.ids, ids
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{model}: {} vectors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_edge_cases_match_llama_cpp() {
    check_embedded(SMOLLM2, EXTRA_SMOLLM2);
}

#[test]
fn qwen_edge_cases_match_llama_cpp() {
    check_embedded(QWEN_05B, EXTRA_QWEN);
    check_embedded(QWEN_15B, EXTRA_QWEN);
}

/// More llama.cpp vectors (node-llama-cpp 3.21.1, llama.cpp v0.4.0 prebuilt, `tokenize(text, true)`)
/// for strings chosen to hit the pre-tokenizer's edge cases: Unicode case folding in
/// contractions (`'ſt`), non-ASCII digits and whitespace, combining marks, control bytes that
/// smollm2's vocabulary cannot spell, partial and adjacent special tokens, private-use and
/// unassigned code points.
const EXTRA_SMOLLM2: &str = r#"[
    {"text":"'\u017ft 'S 'LL \u02bcs \u2019s it\u2019s I'M 'RE 'Ve","ids":[23,144,140,100,637,67,637,16421,216,149,137,99,16107,99,357,417,99,339,23,61,637,3256,637,25917]},
    {"text":"\u216b \u00bd \u00b2 \u0663\u0664\u0665 \u096a\u0968 \ud835\udfd9\ud835\udfda \u2460\u2461","ids":[173,223,121,216,16738,216,19133,216,164,113,164,114,164,115,216,9310,120,9310,118,216,23159,249,243,23159,249,244,216,173,235,250,173,235,111]},
    {"text":"e\u0301 a\u0308 \u0915\u094d\u0937\u093f \u0e44\u0e17\u0e22 \u0e20\u0e32\u0e29\u0e32","ids":[85,151,219,253,151,226,42034,16525,4300,132,27011,216,31933,222,10283,241,10283,112,216,10283,250,43662,10283,119,43662]},
    {"text":"\u00a0\u1680\u2000\u2001\u200a\u2028\u2029\u202f\u205f\u3000x","ids":[15442,172,244,218,321,218,321,219,321,228,321,118,321,119,321,124,32571,249,12109,218,104]},
    {"text":"a\u0085b\u000bc\fd\u001ce\u001ff","ids":[81,141,223,82,199,83,200,84,213,85,215,86]},
    {"text":"ctrl \u0000\u0001\u0004\u007f end","ids":[39673,216,190,191,217,1112]},
    {"text":"<|im_end|><|im_end|> <|im_start|assistant <|im_end <|<|endoftext|>|>","ids":[2,2,2067,108,306,79,3738,108,520,9531,2067,108,306,79,486,2067,108,0,108,46]},
    {"text":"<reponame>x<file_sep>y<filename>z<tool_call></tool_call><|fim_prefix|>","ids":[4,104,5,105,6,106,44,19324,79,4350,29299,19324,79,4350,21198,108,86,306,79,12821,108,46]},
    {"text":"  \n  \n\t\n \r\r\n\n\n   x   \n","ids":[256,11181,3354,3805,201,201,1116,11181,1792,333,198]},
    {"text":"      ","ids":[5013]},
    {"text":"\n\n\n\n","ids":[22342]},
    {"text":"x\u200by\u200dz\ufeffw","ids":[104,321,229,105,321,231,106,186,136,140,103]},
    {"text":"\ud83d\udc69\ud83c\udffd\u200d\ud83d\udcbb \ud83e\uddd1\u200d\ud83e\udd1d\u200d\ud83e\uddd1 \ud83e\udee0\ud83e\udee1 \ud83c\udff4\udb40\udc67\udb40\udc62\udb40\udc73\udb40\udc63\udb40\udc74\udb40\udc7f","ids":[10813,235,119,10813,233,138,321,231,10813,236,136,15107,117,235,321,231,10813,114,247,321,231,10813,117,235,15107,121,250,10813,121,111,15107,233,129,188,250,219,117,188,250,219,112,188,250,219,128,188,250,219,113,188,250,219,129,188,250,219,140]},
    {"text":"\ue000\uf8ff \udb80\udc00 \u0378 \udb40\udc01","ids":[185,218,218,186,113,140,216,188,125,218,218,216,152,133,216,188,250,218,219]},
    {"text":"\ud835\udd18\ud835\udd2b\ud835\udd26\ud835\udd20\ud835\udd2c\ud835\udd21\ud835\udd22 \ud835\udc01\ud835\udc28\ud835\udc25\ud835\udc1d","ids":[23159,238,242,23159,238,121,23159,238,116,23159,238,250,23159,238,122,23159,238,111,23159,238,112,216,45100,219,45100,118,45100,115,45100,247]},
    {"text":"\uff21\uff42\uff43\uff11\uff12\uff13\uff01\uff1f","ids":[8083,111,186,138,220,186,138,221,8083,235,8083,236,8083,237,8083,219,8083,249]},
    {"text":"$$\\frac{a}{b}$$ ~~~ ``` ''' \"\"\" ... ---> <=> |> <|","ids":[9212,76,18169,107,81,15009,82,109,9212,216,9493,110,47182,7855,1620,4563,21749,46,10204,46,2504,46,2067,108]},
    {"text":"    def __init__(self, x: int = 0) -> None:\n        self.x = x  # comment\n\n\n\nclass A:\n\tpass\r\n","ids":[333,753,2758,2563,3762,771,28,1792,42,464,446,216,32,25,4722,1943,42,448,639,30,104,446,1792,216,907,5189,16506,198,2064,330,42,198,197,5467,2738]},
    {"text":"3.14e-10 0x1F 0b1010 1_000_000 -0.0 +\u221e","ids":[35,30,33,36,85,29,33,32,216,32,104,33,54,216,32,82,33,32,33,32,216,33,79,32,32,32,79,32,32,32,731,32,30,32,1232,22052,248]},
    {"text":"\u0391\u0392\u0393 \u03b1\u03b2\u03b3 \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 \u00dcn\u00efc\u00f6d\u00e9","ids":[153,235,153,236,153,237,19521,22235,23098,5470,249,46879,16464,32547,41337,7872,9175,5549,246,94,25972,83,7466,84,2756]},
    {"text":"\u2019\u2019\u2019 \u201c\u201d \u00ab\u00bb \u2039\u203a \u201e","ids":[417,417,417,619,573,23708,20306,459,134,321,135,40163]},
    {"text":"a'b a's a'sb 's 'd 'dd '","ids":[81,23,82,253,506,253,506,82,637,99,637,84,637,2977,637]},
    {"text":"IT'S THEY'LL don'T","ids":[2901,23,67,6462,73,23,16421,1326,23,68]},
    {"text":" !","ids":[5728]},
    {"text":"  !","ids":[216,5728]},
    {"text":" \n","ids":[3717]},
    {"text":" \t","ids":[216,197]},
    {"text":"\t ","ids":[197,216]},
    {"text":"a \n b","ids":[81,3717,278]},
    {"text":"a\u00a0\u00a0b","ids":[81,15442,15442,82]},
    {"text":"hello<|endoftext|>","ids":[28120,0]},
    {"text":"<|endoftext|>hello","ids":[0,28120]},
    {"text":"\uff11\uff12\uff13\uff14 12345678901234567890","ids":[8083,235,8083,236,8083,237,8083,238,216,33,34,35,36,37,38,39,40,41,32,33,34,35,36,37,38,39,40,41,32]}
]"#;
const EXTRA_QWEN: &str = r#"[
    {"text":"'\u017ft 'S 'LL \u02bcs \u2019s it\u2019s I'M 'RE 'Ve","ids":[6,144815,83,364,50,364,4086,220,144803,82,17744,82,432,748,358,27603,364,787,364,42612]},
    {"text":"\u216b \u00bd \u00b2 \u0663\u0664\u0665 \u096a\u0968 \ud835\udfd9\ud835\udfda \u2460\u2461","ids":[70467,104,220,26062,220,29456,220,149,96,149,97,149,98,220,12619,103,12619,101,220,56252,253,247,56252,253,248,220,48312,254,48312,94]},
    {"text":"e\u0301 a\u0308 \u0915\u094d\u0937\u093f \u0e44\u0e17\u0e22 \u0e20\u0e32\u0e29\u0e32","ids":[68,53839,264,136,230,47809,30484,115,38851,220,125451,220,127382]},
    {"text":"\u00a0\u1680\u2000\u2001\u200a\u2028\u2029\u202f\u205f\u3000x","ids":[4102,124999,222,378,222,378,223,378,232,378,101,378,102,378,107,52133,253,22441,87]},
    {"text":"a\u0085b\u000bc\fd\u001ce\u001ff","ids":[64,126,227,65,199,66,200,67,216,68,219,69]},
    {"text":"ctrl \u0000\u0001\u0004\u007f end","ids":[11933,220,188,189,192,221,835]},
    {"text":"<|im_end|><|im_end|> <|im_start|assistant <|im_end <|<|endoftext|>|>","ids":[151645,151645,82639,318,4906,91,77091,82639,318,6213,82639,151643,91,29]},
    {"text":"<reponame>x<file_sep>y<filename>z<tool_call></tool_call><|fim_prefix|>","ids":[27,265,618,373,28257,27,1192,54775,82244,27,8404,29,89,151657,151658,151659]},
    {"text":"  \n  \n\t\n \r\r\n\n\n   x   \n","ids":[30779,1572,220,201,201,1406,256,856,5872]},
    {"text":"      ","ids":[981]},
    {"text":"\n\n\n\n","ids":[1022]},
    {"text":"x\u200by\u200dz\ufeffw","ids":[87,15692,88,378,235,89,3225,86]},
    {"text":"\ud83d\udc69\ud83c\udffd\u200d\ud83d\udcbb \ud83e\uddd1\u200d\ud83e\udd1d\u200d\ud83e\uddd1 \ud83e\udee0\ud83e\udee1 \ud83c\udff4\udb40\udc67\udb40\udc62\udb40\udc73\udb40\udc63\udb40\udc74\udb40\udc7f","ids":[145233,145375,378,235,145851,11162,100,239,378,235,146392,378,235,148738,11162,104,254,9284,104,94,11162,237,112,175,15675,100,175,15675,95,175,15675,111,175,15675,96,175,15675,112,175,15675,123]},
    {"text":"\ue000\uf8ff \udb80\udc00 \u0378 \udb40\udc01","ids":[170,222,222,171,96,123,220,175,108,222,222,220,137,116,220,175,63219,223]},
    {"text":"\ud835\udd18\ud835\udd2b\ud835\udd26\ud835\udd20\ud835\udd2c\ud835\udd21\ud835\udd22 \ud835\udc01\ud835\udc28\ud835\udc25\ud835\udc1d","ids":[124026,246,124026,104,149880,124026,254,149881,124026,94,149879,81250,238,223,146513,146928,146927]},
    {"text":"\uff21\uff42\uff43\uff11\uff12\uff13\uff01\uff1f","ids":[133054,144454,144196,20109,24918,33517,6313,11319]},
    {"text":"$$\\frac{a}{b}$$ ~~~ ``` ''' \"\"\" ... ---> <=> |> <|","ids":[14085,59,37018,90,64,15170,65,92,14085,3968,5817,54275,11456,4210,2503,69726,71505,58721,82639]},
    {"text":"    def __init__(self, x: int = 0) -> None:\n        self.x = x  # comment\n\n\n\nclass A:\n\tpass\r\n","ids":[262,707,1304,2327,3804,721,11,856,25,526,284,220,15,8,1464,2240,510,286,656,1993,284,856,220,671,3980,1022,1040,362,510,41431,319]},
    {"text":"3.14e-10 0x1F 0b1010 1_000_000 -0.0 +\u221e","ids":[18,13,16,19,68,12,16,15,220,15,87,16,37,220,15,65,16,15,16,15,220,16,62,15,15,15,62,15,15,15,481,15,13,15,488,144677]},
    {"text":"\u0391\u0392\u0393 \u03b1\u03b2\u03b3 \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 \u00dcn\u00efc\u00f6d\u00e9","ids":[144842,144946,145281,19043,51255,59374,79484,26991,8178,137144,30512,77,37572,66,2956,128505]},
    {"text":"\u2019\u2019\u2019 \u201c\u201d \u00ab\u00bb \u2039\u203a \u201e","ids":[527,527,527,1036,854,12486,12992,636,117,68109,14835]},
    {"text":"a'b a's a'sb 's 'd 'dd '","ids":[64,90853,264,594,264,594,65,364,82,364,67,364,631,364]},
    {"text":"IT'S THEY'LL don'T","ids":[952,13272,62493,6,4086,1513,17323]},
    {"text":" !","ids":[753]},
    {"text":"  !","ids":[220,753]},
    {"text":" \n","ids":[715]},
    {"text":" \t","ids":[7018]},
    {"text":"\t ","ids":[3677]},
    {"text":"a \n b","ids":[64,715,293]},
    {"text":"a\u00a0\u00a0b","ids":[64,4102,4102,65]},
    {"text":"hello<|endoftext|>","ids":[14990,151643]},
    {"text":"<|endoftext|>hello","ids":[151643,14990]},
    {"text":"\uff11\uff12\uff13\uff14 12345678901234567890","ids":[20109,24918,33517,45602,220,16,17,18,19,20,21,22,23,24,15,16,17,18,19,20,21,22,23,24,15]}
]"#;
