//! `vision_config` of `text_encoder/config.json` (`Qwen2_5_VLVisionConfig`, transformers 5.24).

use serde::Deserialize;

use crate::error::{Error, Result};

/// The vision tower's settings.
///
/// Real Qwen2.5-VL-7B values: depth 32, hidden 1280, 16 heads, MLP 3420, patch 14, temporal
/// patch 2, merge 2, window 112, full-attention blocks [7, 15, 23, 31], out 3584.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Width of the blocks.
    pub hidden_size: usize,
    /// SwiGLU MLP width.
    pub intermediate_size: usize,
    /// Attention heads (`head_dim = hidden_size / num_heads`).
    pub num_heads: usize,
    /// Image channels (3).
    pub in_channels: usize,
    /// Merger output width (= the language model's hidden size).
    pub out_hidden_size: usize,
    /// Spatial patch side.
    pub patch_size: usize,
    /// Patches merged per side by the merger.
    pub spatial_merge_size: usize,
    /// Frames per patch.
    pub temporal_patch_size: usize,
    /// Window side in pixels for the windowed blocks.
    pub window_size: usize,
    /// Blocks that attend over the whole image instead of windows.
    pub fullatt_block_indexes: Vec<usize>,
    /// Base of the 2-D rotary embedding.
    pub rope_theta: f64,
}

#[derive(Deserialize)]
struct Raw {
    depth: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_heads: usize,
    #[serde(alias = "in_chans")]
    in_channels: Option<usize>,
    out_hidden_size: usize,
    patch_size: usize,
    spatial_merge_size: usize,
    temporal_patch_size: usize,
    window_size: usize,
    fullatt_block_indexes: Vec<usize>,
    hidden_act: Option<String>,
    rope_parameters: Option<serde_json::Value>,
}

impl VisionConfig {
    /// Reads the `vision_config` object of a `Qwen2_5_VLConfig` JSON; `file` names it in errors.
    pub fn from_model_config(config: &serde_json::Value, file: &str) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            file: file.to_owned(),
            reason,
        };
        let v = config.get("vision_config").ok_or_else(|| {
            bad("no \"vision_config\": the captioning vision tower needs it".into())
        })?;
        let raw: Raw =
            serde_json::from_value(v.clone()).map_err(|e| bad(format!("vision_config: {e}")))?;
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(bad(format!(
                "vision_config.hidden_act \"{act}\" is not supported (only silu)"
            )));
        }
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .unwrap_or(10_000.0);
        let cfg = Self {
            depth: raw.depth,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_heads: raw.num_heads,
            in_channels: raw.in_channels.unwrap_or(3),
            out_hidden_size: raw.out_hidden_size,
            patch_size: raw.patch_size,
            spatial_merge_size: raw.spatial_merge_size,
            temporal_patch_size: raw.temporal_patch_size,
            window_size: raw.window_size,
            fullatt_block_indexes: raw.fullatt_block_indexes,
            rope_theta,
        };
        if cfg.num_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_heads)
            || !cfg.head_dim().is_multiple_of(4)
        {
            return Err(bad(format!(
                "vision hidden_size {} must split into {} heads of a multiple of 4",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        if cfg.spatial_merge_size == 0
            || cfg.patch_size == 0
            || cfg.window_size / cfg.spatial_merge_size / cfg.patch_size == 0
        {
            return Err(bad(format!(
                "window_size {} is smaller than one merged patch ({} × {})",
                cfg.window_size, cfg.spatial_merge_size, cfg.patch_size
            )));
        }
        if let Some(&i) = cfg.fullatt_block_indexes.iter().find(|&&i| i >= cfg.depth) {
            return Err(bad(format!(
                "fullatt_block_indexes has {i}, but depth is {}",
                cfg.depth
            )));
        }
        Ok(cfg)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Length of one `pixel_values` row (`C · T · P · P`).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches per merged token (`merge²`).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }

    /// Window side in merged tokens (`window_size / merge / patch`, 4 for Qwen2.5-VL).
    pub fn window_tokens(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}
