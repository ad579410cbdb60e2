//! `Qwen2_5_VLDecoderLayer` and `Qwen2MLP`.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>

use burn::module::Module;
use burn::tensor::Tensor;

use super::attention::{CacheStep, LayerCache, Qwen2Attention};
use super::config::QwenTextConfig;
use super::rope::RopeTables;
use crate::error::Result;
use crate::model::nn::{RmsNorm, SwiGluMlp};
use crate::weights::{TensorLoader, WeightSource};

/// One pre-norm decoder layer: `h = x + attn(norm1(x)); out = h + mlp(norm2(h))`.
///
/// Checkpoint keys under `model.layers.{i}.`: `input_layernorm`, `self_attn.*`,
/// `post_attention_layernorm`, `mlp.*`.
#[derive(Module, Debug)]
pub struct Qwen2DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Causal GQA self-attention.
    pub self_attn: Qwen2Attention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: SwiGluMlp,
}

impl Qwen2DecoderLayer {
    /// Loads `{prefix}.*`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        c: &QwenTextConfig,
    ) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            input_layernorm: RmsNorm::load(
                l,
                &format!("{prefix}.input_layernorm"),
                d,
                c.rms_norm_eps,
            )
            .await?,
            self_attn: Qwen2Attention::load(
                l,
                &format!("{prefix}.self_attn"),
                d,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
            )
            .await?,
            post_attention_layernorm: RmsNorm::load(
                l,
                &format!("{prefix}.post_attention_layernorm"),
                d,
                c.rms_norm_eps,
            )
            .await?,
            mlp: SwiGluMlp::load(l, &format!("{prefix}.mlp"), d, c.intermediate_size, false)
                .await?,
        })
    }

    /// - x: `[B, S, D]`, rope: tables for the `S` tokens, cache: this layer's keys/values
    ///   `[B, KVH, capacity, Dh]` and the step (see [`Qwen2Attention::forward`])
    /// - returns `[B, S, D]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(&mut LayerCache, &CacheStep)>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}
