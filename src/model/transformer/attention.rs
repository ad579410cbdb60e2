//! Joint (double-stream) attention: diffusers `Attention(added_kv_proj_dim=dim, qk_norm="rms_norm")`
//! run by `QwenDoubleStreamAttnProcessor2_0`.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py#L515-L629>

use crate::model::nn::Linear;
use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use super::embeddings::{RopeDevice, apply_rotary_emb};
use crate::error::Result;
use crate::kernels;
use crate::model::nn::RmsNorm;
use crate::model::profile::mark;
use crate::weights::{TensorLoader, WeightSource};

/// QK-normalised joint attention over `[text, image]` tokens.
///
/// Checkpoint keys under `transformer_blocks.{i}.attn.`: `to_q`, `to_k`, `to_v`, `add_q_proj`,
/// `add_k_proj`, `add_v_proj`, `to_add_out` as named; `to_out.0` is the field `to_out`;
/// `norm_q`, `norm_k`, `norm_added_q`, `norm_added_k` (`.weight`, `[head_dim]`).
#[derive(Module, Debug)]
pub struct QwenDoubleStreamAttention {
    /// Image query `[D → D]`.
    pub to_q: Linear,
    /// Image key.
    pub to_k: Linear,
    /// Image value.
    pub to_v: Linear,
    /// Text query.
    pub add_q_proj: Linear,
    /// Text key.
    pub add_k_proj: Linear,
    /// Text value.
    pub add_v_proj: Linear,
    /// RMSNorm of image queries per head (`[head_dim]`, eps 1e-6).
    pub norm_q: RmsNorm,
    /// RMSNorm of image keys.
    pub norm_k: RmsNorm,
    /// RMSNorm of text queries.
    pub norm_added_q: RmsNorm,
    /// RMSNorm of text keys.
    pub norm_added_k: RmsNorm,
    /// `to_out.0`: image output projection.
    pub to_out: Linear,
    /// Text output projection.
    pub to_add_out: Linear,
    /// Number of heads.
    pub heads: usize,
    /// Head size.
    pub head_dim: usize,
}

impl QwenDoubleStreamAttention {
    /// Loads `{prefix}.*` for `heads × head_dim = dim`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let dim = heads * head_dim;
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            to_q: l.linear(&p("to_q"), dim, dim, true).await?,
            to_k: l.linear(&p("to_k"), dim, dim, true).await?,
            to_v: l.linear(&p("to_v"), dim, dim, true).await?,
            add_q_proj: l.linear(&p("add_q_proj"), dim, dim, true).await?,
            add_k_proj: l.linear(&p("add_k_proj"), dim, dim, true).await?,
            add_v_proj: l.linear(&p("add_v_proj"), dim, dim, true).await?,
            norm_q: RmsNorm::load(l, &p("norm_q"), head_dim, 1e-6).await?,
            norm_k: RmsNorm::load(l, &p("norm_k"), head_dim, 1e-6).await?,
            norm_added_q: RmsNorm::load(l, &p("norm_added_q"), head_dim, 1e-6).await?,
            norm_added_k: RmsNorm::load(l, &p("norm_added_k"), head_dim, 1e-6).await?,
            to_out: l.linear(&p("to_out.0"), dim, dim, true).await?,
            to_add_out: l.linear(&p("to_add_out"), dim, dim, true).await?,
            heads,
            head_dim,
        })
    }

    /// Projects one stream to per-head `[B, S, H, Dh]`.
    fn heads(&self, linear: &Linear, x: Tensor<3>) -> Tensor<4> {
        let [b, s, _] = x.dims();
        linear.forward(x).reshape([b, s, self.heads, self.head_dim])
    }

    /// - img: `[B, S_img, D]` (modulated image stream), txt: `[B, S_txt, D]`
    /// - txt_mask: `[B, S_txt]`, true = a real token (diffusers `encoder_hidden_states_mask`);
    ///   `None` = no padding (no mask at all, as diffusers does)
    /// - rope: tables for `S_img` and `S_txt` tokens
    /// - max_scores_bytes: the unmasked attention's bound on scores held at once
    ///   ([`kernels::attention::attention_within`]; `None`: the flash kernel on wgpu)
    /// - returns (img_out `[B, S_img, D]`, txt_out `[B, S_txt, D]`)
    pub fn forward(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        txt_mask: Option<Tensor<2, Bool>>,
        rope: &RopeDevice,
        max_scores_bytes: Option<usize>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, s_img, d] = img.dims();
        let s_txt = txt.dims()[1];

        let img_q = self.norm_q.forward(self.heads(&self.to_q, img.clone())); // [B, S_img, H, Dh]
        let img_k = self.norm_k.forward(self.heads(&self.to_k, img.clone()));
        let img_v = self.heads(&self.to_v, img);
        let txt_q = self
            .norm_added_q
            .forward(self.heads(&self.add_q_proj, txt.clone())); // [B, S_txt, H, Dh]
        let txt_k = self
            .norm_added_k
            .forward(self.heads(&self.add_k_proj, txt.clone()));
        let txt_v = self.heads(&self.add_v_proj, txt);
        mark("q, k, v projections + rms norms");

        let img_q = apply_rotary_emb(img_q, &rope.img.0, &rope.img.1);
        let img_k = apply_rotary_emb(img_k, &rope.img.0, &rope.img.1);
        let txt_q = apply_rotary_emb(txt_q, &rope.txt.0, &rope.txt.1);
        let txt_k = apply_rotary_emb(txt_k, &rope.txt.0, &rope.txt.1);
        mark("rope");

        // Order: [text, image]; to [B, H, S, Dh] for attention.
        let joint = |t: Tensor<4>, i: Tensor<4>| Tensor::cat(vec![t, i], 1).swap_dims(1, 2);
        let (q, k, v) = (
            joint(txt_q, img_q),
            joint(txt_k, img_k),
            joint(txt_v, img_v),
        );
        mark("joint [text, image] layout");

        let s = s_txt + s_img;
        // Unmasked (the pipeline's case): on wgpu query runs within `max_scores_bytes` or the
        // flash-attention WGSL kernel, Burn's attention elsewhere. Padded text keeps Burn's
        // masked attention.
        let out = match txt_mask {
            None => kernels::attention::attention_within(q, k, v, max_scores_bytes),
            Some(valid) => self.masked_attention(q, k, v, valid, s_img),
        }; // [B, H, S, Dh]
        mark("attention");
        let out = out.swap_dims(1, 2).reshape([b, s, d]); // [B, S, D]

        let txt_out = self.to_add_out.forward(out.clone().narrow(1, 0, s_txt));
        let img_out = self.to_out.forward(out.narrow(1, s_txt, s_img));
        mark("output projections");
        (img_out, txt_out)
    }

    /// Burn's attention with text padding masked out of the keys.
    ///
    /// - q, k, v: `[B, H, S, Dh]`, valid: `[B, S_txt]` (true = real token) -> `[B, H, S, Dh]`
    fn masked_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        valid: Tensor<2, Bool>,
        s_img: usize,
    ) -> Tensor<4> {
        let [b, _, s, _] = q.dims();
        // Burn masks `true` = masked out; image keys are never masked.
        let img_valid = Tensor::<2, Bool>::full([b, s_img], true, &valid.device());
        let mask = Tensor::cat(vec![valid, img_valid], 1) // [B, S]
            .bool_not()
            .reshape([b, 1, 1, s])
            .expand([b, self.heads, s, s]);
        attention(q, k, v, Some(mask), None, AttentionModuleOptions::default()) // [B, H, S, Dh]
    }
}
