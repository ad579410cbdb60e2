//! The models of Qwen-Image-Layered (text encoder, transformer, VAE), one implementation for every Burn device
//! (Flex on the CPU for tests, wgpu natively, WebGPU in the browser): synchronous maths, no
//! browser code. Weights come through [`crate::weights`].

pub mod nn;
pub mod profile;
pub mod text_encoder;
pub mod transformer;
pub mod vae;
pub mod vision;
