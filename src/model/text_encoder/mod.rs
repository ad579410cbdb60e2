//! The language model of Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration` minus the vision
//! tower), the text encoder of Qwen-Image-Layered.
//!
//! Mirrors `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py` (transformers 5.24.0):
//! `Qwen2_5_VLTextModel` (token embedding, decoder layers with grouped-query attention, q/k/v
//! bias, rotate-half M-RoPE, SwiGLU MLP, RMSNorm, final norm) and the `lm_head`.
//!
//! - Prompt encoding (`crate::text::PromptEncoder`) runs [`QwenLanguageModel::forward`] once
//!   over the templated prompt with 1-D positions and keeps the post-norm last hidden state.
//! - Generation (captioning) calls [`QwenLanguageModel::forward_embeds`] with a [`KvCache`]
//!   of fixed capacity (prompt plus new tokens): a prefill over the whole prompt (M-RoPE
//!   positions from [`RopePositions`], image features spliced into the embeddings by the
//!   caller), then one token per call, every one with the same tensor shapes, and
//!   [`QwenLanguageModel::logits`] on the last hidden state.
//!
//! The vision tower (`visual.*`) is not here; [`QwenLanguageModel::load`] skips its tensors.
//!
//! [`LoadOptions`] choose the precision of the linear layers (f32, 8- or 4-bit blocks) and
//! where the `[vocab, D]` token embedding is kept ([`EmbeddingMode`]): on the device, or left
//! in storage with only the rows a prompt uses read at encode time (the browser: the real
//! table is 2.18 GB in f32, over WebGPU's per-buffer limit).

mod attention;
mod config;
mod decoder;
mod model;
mod rope;

pub use attention::{CacheStep, KvCache, LayerCache, Qwen2Attention};
pub use config::{QwenTextConfig, TEXT_ENCODER_FOLDER};
pub use decoder::Qwen2DecoderLayer;
pub use model::{
    Embedding, EmbeddingMode, LoadOptions, QwenLanguageModel, QwenTextModel, device_bytes,
    is_linear_weight, is_vision_key, read_bytes, stored_quantized_layout,
};
pub use rope::{RopePositions, RopeTables, TextRope, apply_rotary_pos_emb};
