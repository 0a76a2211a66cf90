//! Reading GGUF files: the header and metadata (candle's parser), typed metadata
//! access with errors that name the missing key, and tensors by name.
use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use std::io::{Read, Seek};

/// Typed access to GGUF metadata.
pub trait Metadata {
    fn value(&self, key: &str) -> Result<&Value>;

    fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.value(key)?;
        // Writers differ in the integer width they use for the same key.
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map_err(|e| Error::Gguf(format!("metadata `{key}` is not an integer: {e}")))
    }

    fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.value(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| Error::Gguf(format!("metadata `{key}` is not a float: {e}")))
    }

    fn get_str(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| Error::Gguf(format!("metadata `{key}` is not a string: {e}")))
    }
}

impl Metadata for Content {
    fn value(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| Error::Gguf(format!("metadata key `{key}` is missing")))
    }
}

/// Reads one tensor, with an error naming it when it is absent.
pub fn tensor<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor> {
    if !content.tensor_infos.contains_key(name) {
        return Err(Error::Gguf(format!("tensor `{name}` is missing")));
    }
    Ok(content.tensor(reader, name, device)?)
}

/// Reads the header of a GGUF stream, with a message that says what to do when it is not one.
pub fn read_content<R: Read + Seek>(reader: &mut R) -> Result<Content> {
    Content::read(reader).map_err(|e| {
        Error::Gguf(format!(
            "cannot parse the GGUF header ({}); the file may be truncated or not a GGUF model: fetch it again with `hybrid fetch-models`",
            crate::error::first_line(&e)
        ))
    })
}

/// The little-endian f16 at byte `at` of a GGUF block, as f32 (block scales and mins).
pub fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}
