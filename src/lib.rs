//! qwen-layered-web: Qwen-Image-Layered (one image → N editable RGBA layers) running on the
//! visitor's GPU through WebGPU, in Rust compiled to WebAssembly.
//!
//! Everything outside [`web`] compiles and is tested natively; [`web`] is the only module that
//! touches the browser (`web-sys`, `js-sys`, `wasm-bindgen`).

pub mod bench;
pub mod caption;
pub mod cli_args;
pub mod download;
pub mod editor;
pub mod error;
pub mod gpu;
pub mod image_io;
pub mod kernels;
pub mod model;
pub mod pipeline;
pub mod protocol;
pub mod registry;
pub mod run_settings;
pub mod text;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
