//! `AutoencoderKLQwenImage` (the Wan-2.1-style causal VAE; RGBA for Qwen-Image-Layered), for
//! single-frame images.
//!
//! Mirrors `src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py` at
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py>
//! (maths identical to diffusers 0.42.1). The key remap table is on [`AutoencoderKLQwenImage`].

mod blocks;
mod coders;
mod config;
mod layers;
mod model;
mod tiling;

pub use blocks::{
    AttentionBlock, MidBlock, Resample, ResampleMode, ResidualBlock, UpBlock, upsample_nearest2x,
};
pub use coders::{Decoder, DownBlock, Encoder};
pub use config::AutoencoderKLQwenImageConfig;
pub use layers::{Conv2d, RmsNorm2d, TimeConv};
pub use model::AutoencoderKLQwenImage;
pub use tiling::VaeTiling;
