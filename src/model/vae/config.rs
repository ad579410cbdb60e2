//! `vae/config.json` of `AutoencoderKLQwenImage`.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L684-L720>

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The VAE's config, with diffusers' field names and class defaults.
///
/// The Layered checkpoint differs from Qwen-Image's only by `input_channels = 4` (RGBA);
/// `latents_mean` / `latents_std` are read from the file, never hard-coded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLQwenImageConfig {
    /// Channels of the first stage (96 in the real model).
    pub base_dim: usize,
    /// Latent channels (16).
    pub z_dim: usize,
    /// Channel multipliers per stage.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more).
    pub num_res_blocks: usize,
    /// Scales at which attention blocks are inserted in the stages (empty in Qwen-Image).
    pub attn_scales: Vec<f64>,
    /// Per encoder downsampling: whether it also downsamples time (`downsample3d`).
    pub temperal_downsample: Vec<bool>,
    /// Dropout (inference ignores it).
    pub dropout: f64,
    /// Image channels: 3 (RGB) or 4 (RGBA, Layered).
    pub input_channels: usize,
    /// Per-channel latent mean (`z_dim` values).
    pub latents_mean: Vec<f32>,
    /// Per-channel latent std (`z_dim` values).
    pub latents_std: Vec<f32>,
}

impl Default for AutoencoderKLQwenImageConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            input_channels: 3,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
        }
    }
}

impl AutoencoderKLQwenImageConfig {
    /// Pixels per latent pixel along each side: `2^len(temperal_downsample)` (8).
    pub fn spatial_compression_ratio(&self) -> usize {
        1 << self.temperal_downsample.len()
    }

    /// Checks what this port supports; `file` names the config in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                file: file.to_owned(),
                reason,
            })
        };
        if self.dim_mult.is_empty() || self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return bad(format!(
                "temperal_downsample ({} entries) must have one entry fewer than dim_mult ({})",
                self.temperal_downsample.len(),
                self.dim_mult.len()
            ));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return bad(format!(
                "latents_mean ({}) and latents_std ({}) must have z_dim = {} values",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        if self.base_dim == 0 || self.z_dim == 0 || self.input_channels == 0 {
            return bad("base_dim, z_dim and input_channels must be positive".into());
        }
        Ok(())
    }
}
