//! `hybrid synth-gguf`: a model's header (a few MB) grows back into a GGUF of the same shapes
//! and formats with made-up weights, which loads and runs like the model (what the GPU
//! benchmark on a lent machine runs, where the weights cannot be sent).
#![cfg(not(target_arch = "wasm32"))] // native only
mod common;

use hybrid_assistant::model::decoder::Decoder;
use hybrid_assistant::model::gguf;

#[test]
fn a_header_grows_back_into_a_model_of_the_same_shapes_that_runs() {
    let file = std::fs::read(common::model_path("smollm2-135m")).unwrap();
    let header = gguf::header_bytes(&file).unwrap();
    assert!(header.len() < 4 << 20, "the header is small enough to send: {} bytes", header.len());
    let mut synthetic = Vec::new();
    gguf::write_synthetic(&header, &mut synthetic).unwrap();
    assert_eq!(synthetic.len(), file.len());
    assert_eq!(synthetic[..header.len()], header[..]);
    assert_ne!(synthetic[header.len()..], file[header.len()..], "the weights are made up");

    let [real, made_up] = [&file, &synthetic].map(|bytes| gguf::read_content(&mut std::io::Cursor::new(&bytes[..])).unwrap());
    assert_eq!(real.metadata.len(), made_up.metadata.len());
    for (name, info) in &real.tensor_infos {
        let other = &made_up.tensor_infos[name];
        assert_eq!((info.ggml_dtype, info.shape.dims(), info.offset), (other.ggml_dtype, other.shape.dims(), other.offset), "{name}");
    }
    let mut reader = std::io::Cursor::new(&synthetic[..]);
    let mut decoder = Decoder::from_gguf(&made_up, &mut reader, &candle_core::Device::Cpu, Default::default()).unwrap();
    let step = decoder.forward(&[1, 2, 3, 4]).unwrap();
    assert!(step.logits.iter().all(|x| x.is_finite()), "made-up weights keep the logits finite");
    assert!(step.logits.iter().any(|&x| x != step.logits[0]), "and not all equal");
}
