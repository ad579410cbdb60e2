//! `Qwen2_5_VLDecoderLayer` and `Qwen2MLP`.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::attention::{LayerCache, Qwen2Attention};
use super::config::QwenTextConfig;
use super::rope::RopeTables;
use crate::error::Result;
use crate::model::nn::{Linear, RmsNorm};
use crate::weights::{TensorLoader, WeightSource};

/// SwiGLU MLP: `down_proj(silu(gate_proj(x)) · up_proj(x))`, no biases.
///
/// Checkpoint keys under `….mlp.`: `gate_proj`, `up_proj` (`[I, D]`), `down_proj` (`[D, I]`).
#[derive(Module, Debug)]
pub struct Qwen2Mlp {
    /// `[D → I]`.
    pub gate_proj: Linear,
    /// `[D → I]`.
    pub up_proj: Linear,
    /// `[I → D]`.
    pub down_proj: Linear,
}

impl Qwen2Mlp {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            gate_proj: l
                .linear(&p("gate_proj"), hidden, intermediate, false)
                .await?,
            up_proj: l.linear(&p("up_proj"), hidden, intermediate, false).await?,
            down_proj: l
                .linear(&p("down_proj"), intermediate, hidden, false)
                .await?,
        })
    }

    /// - x: `[B, S, D]` → `[B, S, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

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
    pub mlp: Qwen2Mlp,
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
            mlp: Qwen2Mlp::load(l, &format!("{prefix}.mlp"), d, c.intermediate_size).await?,
        })
    }

    /// - x: `[B, S, D]`, rope: tables for the `S` tokens, cache: this layer's past
    /// - returns `[B, S, D]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}
