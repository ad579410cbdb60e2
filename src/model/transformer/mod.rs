//! `QwenImageTransformer2DModel` (the Qwen-Image MMDiT, Layered variant: VLD-MMDiT with
//! Layer3D RoPE and the additional timestep embedding).
//!
//! Mirrors `src/diffusers/models/transformers/transformer_qwenimage.py` at
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py>
//! (maths identical to diffusers 0.42.1). The key remap table is on [`QwenImageTransformer2DModel`].

mod attention;
mod block;
mod config;
mod embeddings;
mod model;
mod streaming;

pub use attention::QwenDoubleStreamAttention;
pub use block::{BlockLimits, QwenImageTransformerBlock};
pub use config::QwenImageTransformerConfig;
pub use embeddings::{
    ImgShape, QwenEmbedRope, QwenTimestepProjEmbeddings, RopeDevice, RopeTables, TIMESTEP_PROJ_DIM,
    TimestepEmbedding, apply_rotary_emb, timestep_proj,
};
pub use model::{
    AdaLayerNormContinuous, ForwardTrace, QwenImageTransformer2DModel, TransformerInput,
};
pub use streaming::{BlockProvider, BlockStream, ResidentBlocks, StreamStats};
