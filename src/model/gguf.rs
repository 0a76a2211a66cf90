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
        v.to_f32().or_else(|_| v.to_f64().map(|x| x as f32)).map_err(|e| Error::Gguf(format!("metadata `{key}` is not a float: {e}")))
    }

    fn get_str(&self, key: &str) -> Result<&str> {
        self.value(key)?.to_string().map(|s| s.as_str()).map_err(|e| Error::Gguf(format!("metadata `{key}` is not a string: {e}")))
    }
}

impl Metadata for Content {
    fn value(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::Gguf(format!("metadata key `{key}` is missing")))
    }
}

/// Reads one tensor, with an error naming it when it is absent.
pub fn tensor<R: Read + Seek>(content: &Content, reader: &mut R, name: &str, device: &Device) -> Result<QTensor> {
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

/// The bytes of a GGUF file up to its tensor data: the header, metadata (tokenizer included)
/// and tensor table, a few megabytes. With [`write_synthetic`] it stands in for the model in
/// speed runs on a machine the weights cannot be sent to.
pub fn header_bytes(file: &[u8]) -> Result<Vec<u8>> {
    let content = read_content(&mut std::io::Cursor::new(file))?;
    Ok(file[..content.tensor_data_offset as usize].to_vec())
}

/// Writes a GGUF of the same shapes as the file `header` was cut from ([`header_bytes`]; a
/// whole file works too), with made-up weights: every tensor's blocks of its own type and size,
/// levels pseudo-random and scales small and finite. Speed does not depend on the values, so
/// prefill and decode run as on the real model; the text it writes is noise.
pub fn write_synthetic(header: &[u8], out: &mut impl std::io::Write) -> Result<()> {
    use candle_core::quantized::GgmlDType;
    let content = read_content(&mut std::io::Cursor::new(header))?;
    let start = content.tensor_data_offset as usize;
    out.write_all(&header[..start])?;
    let mut tensors: Vec<_> = content.tensor_infos.iter().collect();
    tensors.sort_by_key(|(_, info)| info.offset);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move || {
        // xorshift64: cheap, and the same file on every machine.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut written = 0usize;
    for (name, info) in tensors {
        let offset = info.offset as usize;
        if offset < written {
            return Err(Error::Gguf(format!("tensor `{name}` overlaps the one before it")));
        }
        out.write_all(&vec![0u8; offset - written])?;
        let dtype = info.ggml_dtype;
        let elements = info.shape.elem_count();
        let blocks = elements / dtype.block_size();
        let mut bytes = vec![0u8; blocks * dtype.type_size()];
        bytes.chunks_mut(8).for_each(|c| c.copy_from_slice(&random().to_le_bytes()[..c.len()]));
        // Each block's f16 fields (at byte offsets) and what they are set to, so that weights
        // come out centred and about ±0.12: a scale of 8 / the largest level, and for the
        // formats with unsigned levels a min that subtracts the middle level (the k-quants'
        // 6-bit sub-block scales and mins all set to 1 by `SUB_SCALES_OF_ONE`).
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let fields: Vec<(usize, [u8; 2])> = match dtype {
            GgmlDType::Q4_0 => vec![(0, f16(1.0 / 64.0))],
            GgmlDType::Q5_0 => vec![(0, f16(1.0 / 128.0))],
            GgmlDType::Q8_0 => vec![(0, f16(1.0 / 1024.0))],
            GgmlDType::Q4_1 => vec![(0, f16(1.0 / 64.0)), (2, f16(-7.5 / 64.0))],
            GgmlDType::Q5_1 => vec![(0, f16(1.0 / 128.0)), (2, f16(-15.5 / 128.0))],
            GgmlDType::Q4K => vec![(0, f16(1.0 / 64.0)), (2, f16(7.5 / 64.0))],
            GgmlDType::Q5K => vec![(0, f16(1.0 / 128.0)), (2, f16(15.5 / 128.0))],
            GgmlDType::Q6K => vec![(208, f16(1.0 / 4096.0))],
            _ => vec![],
        };
        const SUB_SCALES_OF_ONE: [u8; 12] = [1, 1, 1, 1, 1, 1, 1, 1, 0x11, 0x11, 0x11, 0x11];
        match dtype {
            GgmlDType::F32 => {
                // Norm weights near 1, the rest small: activations stay finite.
                let around = if info.shape.rank() == 1 { 1.0 } else { 0.0 };
                for (i, v) in bytes.chunks_mut(4).enumerate() {
                    v.copy_from_slice(&(around + ((i * 7919 % 101) as f32 - 50.0) / 5000.0).to_le_bytes());
                }
            }
            GgmlDType::F16 | GgmlDType::BF16 => {
                for (i, v) in bytes.chunks_mut(2).enumerate() {
                    let x = ((i * 7919 % 101) as f32 - 50.0) / 5000.0;
                    let b = if dtype == GgmlDType::F16 { half::f16::from_f32(x).to_le_bytes() } else { half::bf16::from_f32(x).to_le_bytes() };
                    v.copy_from_slice(&b);
                }
            }
            _ => {
                if matches!(dtype, GgmlDType::Q2K | GgmlDType::Q3K) {
                    return Err(Error::Gguf(format!("tensor `{name}` is {dtype:?}: made-up weights of that type are not written")));
                }
                for block in bytes.chunks_mut(dtype.type_size()) {
                    fields.iter().for_each(|(at, value)| block[*at..at + 2].copy_from_slice(value));
                    if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K) {
                        block[4..16].copy_from_slice(&SUB_SCALES_OF_ONE);
                    }
                }
            }
        }
        out.write_all(&bytes)?;
        written = offset + bytes.len();
    }
    Ok(())
}
