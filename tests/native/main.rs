//! The native integration tests, in one test binary (`cargo test --test native`).
//!
//! Every test file used to be its own binary, and each one linked the whole crate with Burn,
//! cubecl and wgpu: about 230 MB and a minute of codegen apiece in a debug build, which filled
//! the CI machine's disk. One binary per suite is also how the GPU tests share one lavapipe
//! device (`common::gpu()`).
//!
//! Run one module with a filter on its path, e.g. `cargo test --test native vae_tiling:: --
//! --nocapture`. Kept apart on purpose: `fuzz_parsers` (it installs a counting global
//! allocator) and the files that also run in the browser (`editor`, `export`, `open_image`,
//! `pipeline_math`).
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;

mod caption_parity;
mod cli;
mod fetch;
mod fullsize_block;
mod gguf;
mod gpu_native;
mod kernels;
mod kernels_attention;
mod layered_parity;
mod memory_plan;
mod text_encoder_load;
mod text_encoder_parity;
mod transformer_parity;
mod transformer_streaming;
mod vae_parity;
mod vae_tiling;
mod weights;
mod wgpu_parity;
