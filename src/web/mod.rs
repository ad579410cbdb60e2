//! The browser fence: the only module that touches `web-sys`, `js-sys` and `wasm-bindgen`.
//!
//! - [`app`]: the page (main thread): DOM, file opening, canvas, and the worker's messages.
//! - [`worker`]: the Web Worker: owns the GPU device and (later) the model.
//! - [`adapter`]: the WebGPU adapter facts wgpu does not carry (vendor, architecture).
//! - [`download`]: model download with `fetch` Range requests into OPFS (worker).
//! - [`opfs`]: OPFS storage of model files, quota check, cache manager, `OpfsSource`.

pub mod adapter;
pub mod app;
pub mod download;
pub mod opfs;
pub mod worker;

use wasm_bindgen::{JsCast, JsValue};

/// A readable message from a JS exception or value.
pub fn js_error_text(value: &JsValue) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
