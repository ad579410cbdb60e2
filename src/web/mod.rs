//! The browser fence: the only module that touches `web-sys`, `js-sys` and `wasm-bindgen`.
//!
//! - [`app`]: the page (main thread): mounts the editor, the service worker, the worker's messages.
//! - [`editor_ui`]: the layer editor in the page (canvas, layers panel, files, shortcuts).
//! - [`status`]: the page's status line.
//! - [`worker`]: the Web Worker: owns the GPU device and (later) the model.
//! - [`adapter`]: the WebGPU adapter facts wgpu does not carry (vendor, architecture).

pub mod adapter;
pub mod app;
pub mod editor_ui;
pub mod status;
pub mod worker;

use wasm_bindgen::{JsCast, JsValue};

/// A readable message from a JS exception or value.
pub fn js_error_text(value: &JsValue) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
