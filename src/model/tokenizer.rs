//! The tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata so that the ids equal
//! llama.cpp's for the same text.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported. The work is split the way
//! llama.cpp splits it:
//!
//! 1. the text is partitioned on special tokens (control, user-defined and unknown tokens),
//!    longest token first, each occurrence becoming its single id;
//! 2. every remaining fragment goes through the pre-tokenizer regexes that llama.cpp uses for the
//!    model's `tokenizer.ggml.pre`, the GPT-2 byte-to-unicode mapping and BPE merges (a
//!    [`tokenizers::Tokenizer`] without normaliser and without added tokens does this part).
//!
//! Decoding does not go through `tokenizers`: every token's raw bytes are kept in one table
//! ([`Tokenizer::token_bytes`]), so that [`TextStream`] can work on bytes and hold back a
//! multi-byte character split over several tokens.
use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::{Error, Result};

/// `tokenizer.ggml.pre` values this tokenizer knows the pre-tokenizer of.
pub const SUPPORTED_PRE: &[&str] = &[
    "qwen2",
    "deepseek-r1-qwen",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "gpt-2",
];

/// llama.cpp's pre-tokenizer regex for `qwen2`: the HF regex with the case-insensitive group
/// spelled out (`(?i:'s|…)` would also match e.g. `'ſ` under Unicode case folding, llama.cpp's
/// does not).
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Token texts llama.cpp puts in its end-of-generation set whatever their type.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
/// Token texts llama.cpp recognises as end-of-turn (`special_eot_id`) when the metadata has none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
];
/// FIM pad / repo / file-separator tokens: llama.cpp marks them control and end-of-generation.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// A byte-level BPE tokenizer equal to llama.cpp's for the GGUF it was built from.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token texts as stored in the GGUF (byte-level-encoded for normal tokens).
    tokens: Vec<String>,
    token_to_id: HashMap<String, u32>,
    /// Raw bytes of every token, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Special tokens matched in text before BPE, longest first: (text, id).
    specials: Vec<(String, u32)>,
    control: HashSet<u32>,
    eog: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("specials", &self.specials.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

fn meta<'a>(content: &'a Content, key: &str) -> Option<&'a Value> {
    content.metadata.get(key)
}

fn meta_string(content: &Content, key: &str) -> Result<Option<String>> {
    match meta(content, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(tok_err(format!(
            "GGUF metadata `{key}` should be a string, found {:?}",
            v.value_type()
        ))),
    }
}

fn meta_string_array(content: &Content, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = meta(content, key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        return Err(tok_err(format!(
            "GGUF metadata `{key}` should be an array of strings, found {:?}",
            v.value_type()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(tok_err(format!(
                "GGUF metadata `{key}`[{i}] should be a string, found {:?}",
                other.value_type()
            ))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn value_as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn meta_int_array(content: &Content, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(v) = meta(content, key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        return Err(tok_err(format!(
            "GGUF metadata `{key}` should be an array of integers, found {:?}",
            v.value_type()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            value_as_i64(item).ok_or_else(|| {
                tok_err(format!(
                    "GGUF metadata `{key}`[{i}] should be an integer, found {:?}",
                    item.value_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A token id from the metadata; ids outside the vocabulary are ignored as llama.cpp does.
fn meta_token_id(content: &Content, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    match meta(content, key) {
        None => Ok(None),
        Some(v) => {
            let id = value_as_i64(v).ok_or_else(|| {
                tok_err(format!(
                    "GGUF metadata `{key}` should be an integer token id, found {:?}",
                    v.value_type()
                ))
            })?;
            Ok((id >= 0 && (id as u64) < n_vocab as u64).then_some(id as u32))
        }
    }
}

fn meta_bool(content: &Content, key: &str) -> Result<Option<bool>> {
    match meta(content, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match value_as_i64(v) {
            Some(i) => Ok(Some(i != 0)),
            None => Err(tok_err(format!(
                "GGUF metadata `{key}` should be a boolean, found {:?}",
                v.value_type()
            ))),
        },
    }
}

/// GPT-2's byte → printable-character table (`bytes_to_unicode` in openai/gpt-2 encoder.py).
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(256 + n).expect("256..=323 are valid chars");
            n += 1;
            c
        };
    }
    table
}

/// Inverse of [`byte_to_char_table`]: the raw bytes a byte-level token text stands for.
/// Characters outside the table (not produced by the byte-level encoding) keep their UTF-8 bytes.
fn byte_level_decode(text: &str, char_to_byte: &HashMap<char, u8>, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte.get(&c) {
            Some(b) => out.push(*b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level_only = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
    match pre {
        "qwen2" | "deepseek-r1-qwen" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_REGEX.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(format!("cannot compile the qwen2 pre-tokenizer regex: {e}")))?;
            Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                byte_level_only(),
            ])))
        }
        // llama.cpp: `\p{N}` then the GPT-2 regex; HF: Digits(individual) + ByteLevel(use_regex).
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true)),
            ])))
        }
        "gpt-2" => Ok(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, true,
        ))),
        other => Err(tok_err(format!(
            "unsupported pre-tokenizer `tokenizer.ggml.pre` = {other:?}; supported: {}",
            SUPPORTED_PRE.join(", ")
        ))),
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = meta_string(content, "tokenizer.ggml.model")?.ok_or_else(|| {
            tok_err("GGUF metadata has no `tokenizer.ggml.model`; the file carries no tokenizer")
        })?;
        if model != "gpt2" {
            return Err(tok_err(format!(
                "unsupported tokenizer model `tokenizer.ggml.model` = {model:?}; only \"gpt2\" (byte-level BPE) is supported"
            )));
        }
        let pre = meta_string(content, "tokenizer.ggml.pre")?.ok_or_else(|| {
            tok_err(format!(
                "GGUF metadata has no `tokenizer.ggml.pre`; cannot tell which pre-tokenizer to use (supported: {})",
                SUPPORTED_PRE.join(", ")
            ))
        })?;
        let pre_tokenizer = pre_tokenizer_for(&pre)?;

        let tokens = meta_string_array(content, "tokenizer.ggml.tokens")?
            .ok_or_else(|| tok_err("GGUF metadata has no `tokenizer.ggml.tokens`"))?;
        if tokens.is_empty() {
            return Err(tok_err("GGUF metadata `tokenizer.ggml.tokens` is empty"));
        }
        if tokens.len() > u32::MAX as usize {
            return Err(tok_err("GGUF metadata `tokenizer.ggml.tokens` is too long"));
        }
        let n = tokens.len();
        let mut types: Vec<i32> = match meta_int_array(content, "tokenizer.ggml.token_type")? {
            None => vec![TYPE_NORMAL; n],
            Some(t) if t.len() == n => t.into_iter().map(|x| x as i32).collect(),
            Some(t) => {
                return Err(tok_err(format!(
                    "GGUF metadata `tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {n}",
                    t.len()
                )))
            }
        };
        let merges_raw = meta_string_array(content, "tokenizer.ggml.merges")?.ok_or_else(|| {
            tok_err("GGUF metadata has no `tokenizer.ggml.merges` (needed for BPE)")
        })?;

        // token text -> id; like llama.cpp, a repeated text maps to its last id.
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        // Special token ids: metadata first, then llama.cpp's detection by text.
        let id_key = |k: &str| meta_token_id(content, &format!("tokenizer.ggml.{k}"), n);
        let bos = id_key("bos_token_id")?;
        let eos = id_key("eos_token_id")?;
        let mut eot = id_key("eot_token_id")?;
        let mut eom = id_key("eom_token_id")?;
        let mut fim_pre = id_key("fim_pre_token_id")?.or(id_key("prefix_token_id")?);
        let mut fim_suf = id_key("fim_suf_token_id")?.or(id_key("suffix_token_id")?);
        let mut fim_mid = id_key("fim_mid_token_id")?.or(id_key("middle_token_id")?);
        let mut fim_pad = id_key("fim_pad_token_id")?;
        let mut fim_rep = id_key("fim_rep_token_id")?;
        let mut fim_sep = id_key("fim_sep_token_id")?;
        // Tokens that look special become control tokens, as llama.cpp overrides their type.
        let find = |texts: &[&str], slot: &mut Option<u32>, types: &mut Vec<i32>| {
            if slot.is_some() {
                return;
            }
            // Lowest id among the candidates present, for determinism.
            let found = texts
                .iter()
                .filter_map(|t| token_to_id.get(*t).copied())
                .min();
            if let Some(id) = found {
                *slot = Some(id);
                types[id as usize] = TYPE_CONTROL;
            }
        };
        find(EOT_TEXTS, &mut eot, &mut types);
        find(EOM_TEXTS, &mut eom, &mut types);
        find(FIM_PRE_TEXTS, &mut fim_pre, &mut types);
        find(FIM_SUF_TEXTS, &mut fim_suf, &mut types);
        find(FIM_MID_TEXTS, &mut fim_mid, &mut types);
        find(FIM_PAD_TEXTS, &mut fim_pad, &mut types);
        find(FIM_REP_TEXTS, &mut fim_rep, &mut types);
        find(FIM_SEP_TEXTS, &mut fim_sep, &mut types);
        let _ = (fim_pre, fim_suf, fim_mid);

        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep, eos, eot, eom]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.insert(id);
                types[id as usize] = TYPE_CONTROL;
            }
        }

        // Raw bytes of every token.
        let byte_to_char = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (t, ty) in tokens.iter().zip(&types) {
            match *ty {
                TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN => {
                    bytes.extend_from_slice(t.as_bytes())
                }
                _ => byte_level_decode(t, &char_to_byte, &mut bytes),
            }
            offsets.push(bytes.len());
        }

        // Special tokens matched in raw text, longest first (llama.cpp's cache_special_tokens).
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (t, ty))| {
                !t.is_empty() && matches!(**ty, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN)
            })
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let control = types
            .iter()
            .enumerate()
            .filter(|(_, ty)| **ty == TYPE_CONTROL)
            .map(|(i, _)| i as u32)
            .collect();

        // BPE model. Merges naming tokens outside the vocabulary can never apply: drop them.
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                tok_err(format!(
                    "GGUF metadata `tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens separated by a space"
                ))
            })?;
            if token_to_id.contains_key(a)
                && token_to_id.contains_key(b)
                && token_to_id.contains_key(&format!("{a}{b}"))
            {
                merges.push((a.to_string(), b.to_string()));
            }
        }
        // Bytes without a token (smollm2 has none for some ASCII control characters) are dropped
        // when they occur in text, as llama.cpp does.
        let vocab: tokenizers::models::bpe::Vocab =
            token_to_id.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(false)
            .build()
            .map_err(|e| tok_err(format!("cannot build the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));

        let add_bos = meta_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = meta_bool(content, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(tok_err(
                "GGUF metadata sets `tokenizer.ggml.add_bos_token` but has no valid `tokenizer.ggml.bos_token_id`",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(tok_err(
                "GGUF metadata sets `tokenizer.ggml.add_eos_token` but has no valid `tokenizer.ggml.eos_token_id`",
            ));
        }

        Ok(Self {
            inner,
            tokens,
            token_to_id,
            bytes,
            offsets,
            specials,
            control,
            eog,
            bos,
            eos,
            add_bos,
            add_eos,
        })
    }

    /// Ids as llama.cpp produces them with `parse_special = true`: special tokens written in the
    /// text (e.g. `<|im_start|>`) become their single ids; BOS is prepended (and EOS appended)
    /// only if the GGUF sets `add_bos_token` (`add_eos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            ids.extend(self.bos);
        }
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Special(id) => ids.push(id),
                Fragment::Text(s) => self.encode_plain_into(s, &mut ids)?,
            }
        }
        if self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Ids of `text` with no special-token parsing and no BOS/EOS: `<|im_start|>` in the text is
    /// spelled with ordinary tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_plain_into(text, &mut ids)?;
        Ok(ids)
    }

    fn encode_plain_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(format!("cannot encode text: {e}")))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// llama.cpp's `tokenizer_st_partition`: for each special token, longest first, split every
    /// remaining text fragment on its occurrences.
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        if text.is_empty() {
            return fragments;
        }
        for (special, id) in &self.specials {
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                match fragment {
                    Fragment::Text(mut s) => {
                        while let Some(pos) = s.find(special.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&s[..pos]));
                            }
                            next.push(Fragment::Special(*id));
                            s = &s[pos + special.len()..];
                        }
                        if !s.is_empty() {
                            next.push(Fragment::Text(s));
                        }
                    }
                    special_fragment => next.push(special_fragment),
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of `ids`: the concatenated [`token_bytes`](Self::token_bytes), invalid UTF-8
    /// replaced by U+FFFD. Special tokens appear as their text; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            buf.extend_from_slice(self.token_bytes(id));
        }
        match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Raw bytes of one token (for control and user-defined tokens: their text). Empty for an id
    /// outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Whether `id` ends generation: llama.cpp's EOG set (EOS, EOT such as `<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, and the FIM pad/repo/separator tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Whether `id` is a control token (chat markers, EOS, …), which a UI would normally hide.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    /// The end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`encode`](Self::encode) prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of the token whose GGUF text is `text` (byte-level spelling for normal tokens,
    /// e.g. `"Ġthe"`; plain text for special tokens, e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The GGUF text of a token (byte-level spelling for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

/// Incremental detokenizer for streaming: feed ids, get back only complete UTF-8 text; a
/// multi-byte character split over tokens is held back until it is complete.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    utf8: Utf8Stream,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, utf8: Utf8Stream::default() }
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.utf8.push(self.tok.token_bytes(id))
    }

    /// Flushes whatever is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.utf8.finish()
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        self.utf8.has_pending()
    }
}

/// Bytes in, complete UTF-8 text out: what `TextStream` does without holding the tokenizer
/// (for owners that keep the tokenizer elsewhere, such as the server's sequences).
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that became complete (possibly empty). Bytes that can
    /// never become valid UTF-8 are emitted as U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safety net free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or_default());
                    start += valid;
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => break,
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xAD], 'Ń');
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn unknown_pre_lists_supported() {
        let err = pre_tokenizer_for("llama-bpe").unwrap_err().to_string();
        assert!(
            err.contains("llama-bpe") && err.contains("qwen2") && err.contains("smollm"),
            "{err}"
        );
    }

    #[test]
    fn qwen2_regex_compiles() {
        assert!(pre_tokenizer_for("qwen2").is_ok());
        assert!(pre_tokenizer_for("smollm").is_ok());
    }
}
