//! hybrid-assistant: a small language model that runs in the browser (or natively) and
//! asks a large cloud model only for the tokens it is unsure of. See shared DESIGN.md.
pub mod backend;
pub mod backoff;
pub mod cloud;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
#[cfg(not(target_arch = "wasm32"))]
pub mod fetch;
pub mod generate;
pub mod gpu;
pub mod model;
pub mod policy;
pub mod registry;
pub mod reward;
pub mod sampler;
#[cfg(not(target_arch = "wasm32"))]
pub mod server;
#[cfg(not(target_arch = "wasm32"))]
pub mod site;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
pub mod verify;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
