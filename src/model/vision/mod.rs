//! The Qwen2.5-VL vision tower (`visual.*` of the text encoder checkpoint), used only to caption
//! an image when the prompt is empty.
//!
//! <transformers 5.24 `models/qwen2_5_vl/modeling_qwen2_5_vl.py`
//! `Qwen2_5_VisionTransformerPretrainedModel`>

mod config;
mod layout;
mod model;

pub use config::VisionConfig;
pub use layout::{SegmentBatch, VisionLayout};
pub use model::{
    PatchEmbed, PatchMerger, Qwen2_5VisionTransformer, VisionAttention, VisionBlock, VisionTower,
    VisionTrace,
};
