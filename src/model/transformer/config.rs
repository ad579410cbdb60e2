//! `transformer/config.json` of `QwenImageTransformer2DModel`.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py#L877-L891>

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The transformer's config, with diffusers' field names and defaults.
///
/// The real Qwen-Image-Layered values: 60 layers, 24 heads × 128, joint_attention_dim 3584,
/// in_channels 64, out_channels 16, axes_dims_rope [16, 56, 56], use_layer3d_rope and
/// use_additional_t_cond true, zero_cond_t and guidance_embeds false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QwenImageTransformerConfig {
    /// Latent patch size (2: a token is a 2×2 patch of latent pixels).
    pub patch_size: usize,
    /// Channels of a packed token (`4 · z_dim`).
    pub in_channels: usize,
    /// Latent channels out (each token gives `patch_size² · out_channels` values); `None`
    /// means `in_channels`.
    pub out_channels: Option<usize>,
    /// Number of double-stream blocks.
    pub num_layers: usize,
    /// Head size.
    pub attention_head_dim: usize,
    /// Number of heads.
    pub num_attention_heads: usize,
    /// Width of the text embeddings (`encoder_hidden_states`).
    pub joint_attention_dim: usize,
    /// Guidance-distilled variant (not used by Qwen-Image; unsupported here).
    pub guidance_embeds: bool,
    /// RoPE dims per axis (frame/layer, row, column); sums to `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
    /// Zero-timestep conditioning of the image-condition tokens (Qwen-Image-Edit-2511; unsupported here).
    pub zero_cond_t: bool,
    /// `time_text_embed.addition_t_embedding` (Embedding(2, dim)) is added to the timestep embedding.
    pub use_additional_t_cond: bool,
    /// `QwenEmbedLayer3DRope` (layer index on the frame axis, −1 for the condition image)
    /// instead of `QwenEmbedRope`.
    pub use_layer3d_rope: bool,
}

impl Default for QwenImageTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: 2,
            in_channels: 64,
            out_channels: Some(16),
            num_layers: 60,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 3584,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
            zero_cond_t: false,
            use_additional_t_cond: false,
            use_layer3d_rope: false,
        }
    }
}

impl QwenImageTransformerConfig {
    /// `num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`.
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks what this port supports; `file` names the config in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                file: file.to_owned(),
                reason,
            })
        };
        if self.guidance_embeds {
            return bad(
                "guidance_embeds = true (guidance-distilled variant) is not supported".into(),
            );
        }
        if self.zero_cond_t {
            return bad("zero_cond_t = true (per-token modulation index) is not supported".into());
        }
        if self.axes_dims_rope.len() != 3 || self.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return bad(format!(
                "axes_dims_rope {:?} must be 3 even numbers",
                self.axes_dims_rope
            ));
        }
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim {
            return bad(format!(
                "axes_dims_rope {:?} must sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.inner_dim() == 0 || self.patch_size == 0 {
            return bad(
                "num_attention_heads, attention_head_dim and patch_size must be positive".into(),
            );
        }
        Ok(())
    }
}
