//! Chat messages and the model's chat template (`tokenizer.chat_template`, a Jinja template),
//! rendered with minijinja the way Hugging Face's `apply_chat_template` and llama.cpp render it:
//! `trim_blocks` and `lstrip_blocks` on, python-style string methods (`.strip()`,
//! `.startswith()`, …) available, `bos_token`/`eos_token`/`add_generation_prompt` set,
//! `raise_exception(msg)` defined and `tools` left undefined.
use candle_core::quantized::gguf_file::{Content, Value};
use minijinja::{Environment, ErrorKind};

use crate::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The text of token `key` (`tokenizer.ggml.bos_token_id` …) or "" if absent/invalid.
fn token_text(content: &Content, key: &str) -> String {
    let id = match content.metadata.get(key) {
        Some(Value::U32(x)) => *x as usize,
        Some(Value::I32(x)) if *x >= 0 => *x as usize,
        Some(Value::U64(x)) => *x as usize,
        Some(Value::I64(x)) if *x >= 0 => *x as usize,
        _ => return String::new(),
    };
    match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => match tokens.get(id) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template in the GGUF's `tokenizer.chat_template`, with the BOS/EOS token texts from
    /// its tokenizer metadata.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let src = match content.metadata.get("tokenizer.chat_template") {
            Some(Value::String(s)) => s,
            Some(v) => {
                return Err(Error::ChatTemplate(format!(
                    "GGUF metadata `tokenizer.chat_template` should be a string, found {:?}",
                    v.value_type()
                )))
            }
            None => {
                return Err(Error::ChatTemplate(
                    "the GGUF file has no `tokenizer.chat_template`; this model has no chat format (use plain completion, or supply a template with ChatTemplate::from_source)"
                        .into(),
                ))
            }
        };
        let bos = token_text(content, "tokenizer.ggml.bos_token_id");
        let eos = token_text(content, "tokenizer.ggml.eos_token_id");
        Self::from_source(src, &bos, &eos)
    }

    /// Compiles a Jinja chat template; a syntax error is reported here, not at render time.
    pub fn from_source(src: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<minijinja::Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("the template raised an exception: {msg}"),
                ))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, src.to_string())
            .map_err(|e| {
                Error::ChatTemplate(format!("cannot compile the template: {}", describe(&e)))
            })?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the opening of an
    /// assistant turn (e.g. `<|im_start|>assistant\n`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(describe(&e)))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| Error::ChatTemplate(format!("cannot render the template: {}", describe(&e))))
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    pub fn eos_token(&self) -> &str {
        &self.eos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_methods_and_raise() {
        let t = ChatTemplate::from_source(
            "{% for m in messages %}{{ m.content.strip() }}{% if m.role.startswith('us') %}!{% endif %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("  hi  ")], false).unwrap(), "hi!");
        let t =
            ChatTemplate::from_source("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }
}
