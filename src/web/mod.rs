//! The browser fence: the only module that touches `web-sys`, `js-sys` and `wasm-bindgen`.
//!
//! - [`app`]: the page (main thread): mounts the editor, the service worker, the worker's messages.
//! - [`editor_ui`]: the layer editor in the page (canvas, layers panel, files, shortcuts).
//! - [`status`]: the page's status line.
//! - [`worker`]: the Web Worker: owns the GPU device and (later) the model.
//! - [`adapter`]: the WebGPU adapter facts wgpu does not carry (vendor, architecture).
//! - [`download`]: model download with `fetch` Range requests into OPFS (worker).
//! - [`models`]: the worker's model cache service (state, download, delete, load source).
//! - [`opfs`]: OPFS storage of model files, quota check, cache manager, `OpfsSource`.
//! - [`http`]: [`http::HttpSource`], model files read with HTTP range requests.
//! - [`run`]: the page's model picker, load / decompose / cancel controls and progress.
//! - [`storage_ui`]: the storage manager under the model card (every cached revision, what
//!   no listed model reads, and its removal).
//! - [`confirm`]: the second click the buttons that delete model files ask for.

pub mod adapter;
pub mod app;
pub mod confirm;
pub mod download;
pub mod editor_ui;
pub mod http;
pub mod models;
pub mod opfs;
pub mod run;
pub mod status;
pub mod storage_ui;
pub mod worker;

use js_sys::{Array, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

/// The `ArrayBuffer`s behind the pixel buffers of a serialized message (`image.pixels`,
/// `layers[i].pixels`), to pass as `postMessage`'s transfer list: they move, not copy.
/// serde-wasm-bindgen gives every byte buffer its own `ArrayBuffer`, so moving one is safe.
pub fn pixel_buffers(message: &JsValue) -> Array {
    let out = Array::new();
    let push = |rgba: &JsValue| {
        if let Ok(pixels) = Reflect::get(rgba, &"pixels".into())
            && let Some(bytes) = pixels.dyn_ref::<Uint8Array>()
        {
            out.push(&bytes.buffer());
        }
    };
    if let Ok(image) = Reflect::get(message, &"image".into())
        && image.is_object()
    {
        push(&image);
    }
    if let Ok(layers) = Reflect::get(message, &"layers".into())
        && Array::is_array(&layers)
    {
        for layer in Array::from(&layers).iter() {
            push(&layer);
        }
    }
    out
}

/// A readable message from a JS exception or value.
pub fn js_error_text(value: &JsValue) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// `950 KB`, `3.0 MB`, `41.2 GB` (decimal units, as the Hub shows sizes).
pub(crate) fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", (b / 1e3).ceil())
    }
}
