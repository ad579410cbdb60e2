//! qwen-layered-web: Qwen-Image-Layered in the browser on WebGPU.
pub mod editor;
