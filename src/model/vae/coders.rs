//! `QwenImageEncoder3d` and `QwenImageDecoder3d` for single frames.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L378-L483>
//! (encoder), `#L555-L670` (decoder).
//!
//! With one frame and an empty feature cache (what `_encode`/`_decode` do for an image), every
//! causal conv sees two zero frames before the real one and every `*3d` resample skips its
//! `time_conv`, so both networks are exactly 2D networks; see [`Conv2d::load_causal3d`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::blocks::{AttentionBlock, MidBlock, Resample, ResampleMode, ResidualBlock, UpBlock};
use super::config::AutoencoderKLQwenImageConfig;
use super::layers::{Conv2d, RmsNorm2d};
use crate::error::Result;
use crate::weights::{TensorLoader, WeightSource};

/// One entry of the encoder's flat `down_blocks` list.
// Built once per model and never moved in a hot loop, so the variant size difference is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum DownBlock {
    /// `QwenImageResidualBlock`.
    Residual(ResidualBlock),
    /// `QwenImageAttentionBlock` (only when `attn_scales` asks for it).
    Attention(AttentionBlock),
    /// `QwenImageResample` (down).
    Resample(Resample),
}

impl DownBlock {
    /// - x: `[B, C, H, W]` → the block's output
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Residual(b) => b.forward(x),
            Self::Attention(b) => b.forward(x),
            Self::Resample(b) => b.forward(x),
        }
    }
}

/// `QwenImageEncoder3d` (`encoder.*`).
#[derive(Module, Debug)]
pub struct Encoder {
    /// Causal conv `input_channels → dims[0]`.
    pub conv_in: Conv2d,
    /// Residual / attention / downsample blocks, in checkpoint order (`down_blocks.{i}`).
    pub down_blocks: Vec<DownBlock>,
    /// Mid block at the last width.
    pub mid_block: MidBlock,
    /// RMS norm before the output conv.
    pub norm_out: RmsNorm2d,
    /// Causal conv `dims[-1] → 2·z_dim` (mean ‖ logvar).
    pub conv_out: Conv2d,
}

impl Encoder {
    /// Loads `{prefix}.*` for `config` (the encoder's output has `2·z_dim` channels).
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        c: &AutoencoderKLQwenImageConfig,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let dims: Vec<usize> = std::iter::once(1)
            .chain(c.dim_mult.iter().copied())
            .map(|u| c.base_dim * u)
            .collect();
        let conv_in =
            Conv2d::load_causal3d(l, &p("conv_in"), [c.input_channels, dims[0], 3]).await?;
        let mut down_blocks = Vec::new();
        let mut scale = 1.0f64;
        for i in 0..c.dim_mult.len() {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            for _ in 0..c.num_res_blocks {
                let at = format!("{prefix}.down_blocks.{}", down_blocks.len());
                down_blocks.push(DownBlock::Residual(
                    ResidualBlock::load(l, &at, c_in, c_out).await?,
                ));
                if c.attn_scales.contains(&scale) {
                    let at = format!("{prefix}.down_blocks.{}", down_blocks.len());
                    down_blocks.push(DownBlock::Attention(
                        AttentionBlock::load(l, &at, c_out).await?,
                    ));
                }
                c_in = c_out;
            }
            if i != c.dim_mult.len() - 1 {
                let mode = if c.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let at = format!("{prefix}.down_blocks.{}", down_blocks.len());
                down_blocks.push(DownBlock::Resample(
                    Resample::load(l, &at, c_out, mode).await?,
                ));
                scale /= 2.0;
            }
        }
        let last = dims[dims.len() - 1];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::load(l, &p("mid_block"), last).await?,
            norm_out: RmsNorm2d::load(l, &p("norm_out"), last, 3).await?,
            conv_out: Conv2d::load_causal3d(l, &p("conv_out"), [last, 2 * c.z_dim, 3]).await?,
        })
    }

    /// Runs the encoder, calling `trace` after each down block (`encoder.down_blocks.{i}`),
    /// the mid block (`encoder.mid_block`) and at the end (`encoder.out`).
    ///
    /// - x: `[B, input_channels, H, W]` → `[B, 2·z_dim, H/8, W/8]`
    pub fn forward_traced(
        &self,
        x: Tensor<4>,
        trace: &mut dyn FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        for (i, block) in self.down_blocks.iter().enumerate() {
            x = block.forward(x);
            trace(&format!("encoder.down_blocks.{i}"), &x);
        }
        let x = self.mid_block.forward(x);
        trace("encoder.mid_block", &x);
        let x = self.conv_out.forward(silu(self.norm_out.forward(x)));
        trace("encoder.out", &x);
        x
    }

    /// [`forward_traced`](Self::forward_traced) without tracing.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_traced(x, &mut |_, _| {})
    }
}

/// `QwenImageDecoder3d` (`decoder.*`).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Causal conv `z_dim → dims[0]`.
    pub conv_in: Conv2d,
    /// Mid block at the first width.
    pub mid_block: MidBlock,
    /// The up blocks (`up_blocks.{i}`).
    pub up_blocks: Vec<UpBlock>,
    /// RMS norm before the output conv.
    pub norm_out: RmsNorm2d,
    /// Causal conv `dims[-1] → input_channels`.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// Loads `{prefix}.*` for `config`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        c: &AutoencoderKLQwenImageConfig,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let last_mult = *c.dim_mult.last().expect("validated: dim_mult is not empty");
        let dims: Vec<usize> = std::iter::once(last_mult)
            .chain(c.dim_mult.iter().rev().copied())
            .map(|u| c.base_dim * u)
            .collect();
        let temperal_upsample: Vec<bool> = c.temperal_downsample.iter().rev().copied().collect();
        let conv_in = Conv2d::load_causal3d(l, &p("conv_in"), [c.z_dim, dims[0], 3]).await?;
        let mid_block = MidBlock::load(l, &p("mid_block"), dims[0]).await?;
        let mut up_blocks = Vec::new();
        for i in 0..c.dim_mult.len() {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            if i > 0 {
                c_in /= 2; // the previous stage's upsampler halved the channels
            }
            let mode = (i != c.dim_mult.len() - 1).then(|| match temperal_upsample[i] {
                true => ResampleMode::Upsample3d,
                false => ResampleMode::Upsample2d,
            });
            up_blocks.push(
                UpBlock::load(
                    l,
                    &format!("{prefix}.up_blocks.{i}"),
                    (c_in, c_out),
                    c.num_res_blocks,
                    mode,
                )
                .await?,
            );
        }
        let last = dims[dims.len() - 1];
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            norm_out: RmsNorm2d::load(l, &p("norm_out"), last, 3).await?,
            conv_out: Conv2d::load_causal3d(l, &p("conv_out"), [last, c.input_channels, 3]).await?,
        })
    }

    /// Runs the decoder, calling `trace` after `conv_in`, `mid_block` and each up block
    /// (names as in the fixtures: `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`).
    ///
    /// - z: `[B, z_dim, h, w]` (after `post_quant_conv`) → `[B, input_channels, 8h, 8w]`, unclamped
    pub fn forward_traced(
        &self,
        z: Tensor<4>,
        trace: &mut dyn FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        let x = self.conv_in.forward(z);
        trace("decoder.conv_in", &x);
        let mut x = self.mid_block.forward(x);
        trace("decoder.mid_block", &x);
        for (i, block) in self.up_blocks.iter().enumerate() {
            x = block.forward(x);
            trace(&format!("decoder.up_blocks.{i}"), &x);
        }
        self.conv_out.forward(silu(self.norm_out.forward(x)))
    }

    /// [`forward_traced`](Self::forward_traced) without tracing.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        self.forward_traced(z, &mut |_, _| {})
    }
}
