//! `QwenImageTransformerBlock`: one double-stream MMDiT block.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py#L632-L788>

use crate::model::nn::Linear;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use super::attention::QwenDoubleStreamAttention;
use super::embeddings::RopeDevice;
use crate::error::Result;
use crate::model::nn::{FeedForward, layer_norm, modulate, silu_linear};
use crate::model::profile::mark;
use crate::weights::{TensorLoader, WeightSource};

/// LayerNorm eps of the four block norms (`img_norm1/2`, `txt_norm1/2`, no affine).
const NORM_EPS: f64 = 1e-6;

/// One block: adaLN-modulated joint attention and MLP for the image and text streams.
///
/// Checkpoint keys under `transformer_blocks.{i}.`: `img_mod.1` / `txt_mod.1` are the fields
/// `img_mod` / `txt_mod` (`[6·D, D]`; the SiLU of the `nn.Sequential` is in `forward`);
/// `attn.*`; `img_mlp.net.0.proj` / `.net.2` are `img_mlp.proj_in` / `.proj_out` (same for txt).
#[derive(Module, Debug)]
pub struct QwenImageTransformerBlock {
    /// `img_mod.1`: temb → 6 image modulation vectors (shift, scale, gate) × 2.
    pub img_mod: Linear,
    /// `txt_mod.1`: the same for the text stream.
    pub txt_mod: Linear,
    /// Joint attention.
    pub attn: QwenDoubleStreamAttention,
    /// Image MLP.
    pub img_mlp: FeedForward,
    /// Text MLP.
    pub txt_mlp: FeedForward,
}

/// Bounds a block keeps its largest temporaries within (the memory plan's run-time settings,
/// [`QwenImageTransformer2DModel`](super::QwenImageTransformer2DModel)'s fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// Both MLPs run on runs of at most this many tokens ([`FeedForward::forward_chunked`], the
    /// plan's `ChunkSequence`); `None`: the whole sequence at once.
    pub mlp_max_tokens: Option<usize>,
    /// The unmasked attention holds at most this many bytes of scores at once, in runs of
    /// query rows ([`crate::kernels::attention::attention_within`]); `None`: the flash kernel
    /// on wgpu, which holds none.
    pub attention_scores_bytes: Option<usize>,
}

/// The 6 modulation vectors `[shift1, scale1, gate1, shift2, scale2, gate2]`, each `[B, D]`.
fn chunk6(m: Tensor<2>) -> [Tensor<2>; 6] {
    let c = m.chunk(6, 1);
    let mut it = c.into_iter();
    std::array::from_fn(|_| {
        it.next()
            .expect("chunk(6) of a [B, 6·D] tensor yields 6 parts")
    })
}

impl QwenImageTransformerBlock {
    /// Loads `{prefix}.*`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let dim = heads * head_dim;
        Ok(Self {
            img_mod: l
                .linear(&format!("{prefix}.img_mod.1"), dim, 6 * dim, true)
                .await?,
            attn: QwenDoubleStreamAttention::load(l, &format!("{prefix}.attn"), heads, head_dim)
                .await?,
            img_mlp: FeedForward::load(l, &format!("{prefix}.img_mlp"), dim).await?,
            txt_mod: l
                .linear(&format!("{prefix}.txt_mod.1"), dim, 6 * dim, true)
                .await?,
            txt_mlp: FeedForward::load(l, &format!("{prefix}.txt_mlp"), dim).await?,
        })
    }

    /// - hidden_states (image): `[B, S_img, D]`, encoder_hidden_states (text): `[B, S_txt, D]`
    /// - txt_mask: `[B, S_txt]` (true = real token) or `None`
    /// - temb: `[B, D]`
    /// - returns `(encoder_hidden_states, hidden_states)` like diffusers: (text, image)
    pub fn forward(
        &self,
        hidden_states: Tensor<3>,
        encoder_hidden_states: Tensor<3>,
        txt_mask: Option<Tensor<2, Bool>>,
        temb: &Tensor<2>,
        rope: &RopeDevice,
    ) -> (Tensor<3>, Tensor<3>) {
        self.forward_chunked(
            hidden_states,
            encoder_hidden_states,
            txt_mask,
            temb,
            rope,
            BlockLimits::default(),
        )
    }

    /// [`forward`](Self::forward) within `limits`: both MLPs on runs of at most
    /// `mlp_max_tokens` tokens of their sequence ([`FeedForward::forward_chunked`], the memory
    /// plan's `ChunkSequence`), the attention's scores within `attention_scores_bytes`.
    pub fn forward_chunked(
        &self,
        hidden_states: Tensor<3>,
        encoder_hidden_states: Tensor<3>,
        txt_mask: Option<Tensor<2, Bool>>,
        temb: &Tensor<2>,
        rope: &RopeDevice,
        limits: BlockLimits,
    ) -> (Tensor<3>, Tensor<3>) {
        let mlp_max_tokens = limits.mlp_max_tokens;
        let [i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2] =
            chunk6(silu_linear(&self.img_mod, temb.clone()));
        let [t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2] =
            chunk6(silu_linear(&self.txt_mod, temb.clone()));
        mark("modulation vectors");
        let gate = |g: Tensor<2>| g.unsqueeze_dim::<3>(1); // [B, 1, D]

        let img_mod1 = modulate(
            layer_norm(hidden_states.clone(), NORM_EPS),
            i_shift1,
            i_scale1,
        );
        let txt_mod1 = modulate(
            layer_norm(encoder_hidden_states.clone(), NORM_EPS),
            t_shift1,
            t_scale1,
        );
        mark("norm1 + modulate");
        let (img_attn, txt_attn) = self.attn.forward(
            img_mod1,
            txt_mod1,
            txt_mask,
            rope,
            limits.attention_scores_bytes,
        );
        let hidden_states = hidden_states + gate(i_gate1) * img_attn;
        let encoder_hidden_states = encoder_hidden_states + gate(t_gate1) * txt_attn;
        mark("attention residual");

        let img_mod2 = modulate(
            layer_norm(hidden_states.clone(), NORM_EPS),
            i_shift2,
            i_scale2,
        );
        mark("norm2 + modulate (image)");
        let hidden_states =
            hidden_states + gate(i_gate2) * self.img_mlp.forward_chunked(img_mod2, mlp_max_tokens);
        mark("mlp proj_out + residual (image)");
        let txt_mod2 = modulate(
            layer_norm(encoder_hidden_states.clone(), NORM_EPS),
            t_shift2,
            t_scale2,
        );
        mark("norm2 + modulate (text)");
        let encoder_hidden_states = encoder_hidden_states
            + gate(t_gate2) * self.txt_mlp.forward_chunked(txt_mod2, mlp_max_tokens);
        mark("mlp proj_out + residual (text)");
        (encoder_hidden_states, hidden_states)
    }
}
