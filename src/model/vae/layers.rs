//! VAE primitives for single-frame images: the causal 3D conv reduced to 2D, the plain conv2d,
//! the unused `time_conv`, and `QwenImageRMS_norm`.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L40-L115>

use burn::module::{Module, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use crate::error::Result;
use crate::weights::{TensorLoader, WeightSource};

/// A 2D convolution `[out, in, k, k]` with bias, stride and per-side padding
/// `(top/left, bottom/right)`.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding before each spatial axis.
    pub pad_begin: usize,
    /// Zero padding after each spatial axis.
    pub pad_end: usize,
}

impl Conv2d {
    /// Loads `nn.Conv2d` weights `{prefix}.weight` `[out, in, k, k]` and `{prefix}.bias`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        [c_in, c_out, k]: [usize; 3],
        stride: usize,
        (pad_begin, pad_end): (usize, usize),
    ) -> Result<Self> {
        Ok(Self {
            weight: l
                .param(&format!("{prefix}.weight"), [c_out, c_in, k, k])
                .await?,
            bias: l.param(&format!("{prefix}.bias"), [c_out]).await?,
            stride,
            pad_begin,
            pad_end,
        })
    }

    /// `QwenImageCausalConv3d(c_in, c_out, k, padding=k//2)` applied to a single frame with an
    /// empty cache.
    ///
    /// Causal padding puts `2·(k//2)` zero frames before the one real frame, so only the last
    /// temporal tap `weight[:, :, k-1]` ever meets data: the conv is exactly a 2D conv with that
    /// slice (checked bitwise by the fixture author). The full `[out, in, k, k, k]` tensor is
    /// read and shape-checked, and only that slice is kept.
    pub async fn load_causal3d<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        [c_in, c_out, k]: [usize; 3],
    ) -> Result<Self> {
        let full = l
            .host(&format!("{prefix}.weight"), &[c_out, c_in, k, k, k])
            .await?;
        let plane = k * k;
        let mut last = Vec::with_capacity(c_out * c_in * plane);
        for oi in 0..c_out * c_in {
            let start = (oi * k + (k - 1)) * plane; // [o, i, t = k-1, :, :]
            last.extend_from_slice(&full[start..start + plane]);
        }
        drop(full);
        let weight = Tensor::from_data(TensorData::new(last, [c_out, c_in, k, k]), l.device());
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias: l.param(&format!("{prefix}.bias"), [c_out]).await?,
            stride: 1,
            pad_begin: k / 2,
            pad_end: k / 2,
        })
    }

    /// - x: `[B, in, H, W]` → `[B, out, H', W']`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let pad = (self.pad_begin, self.pad_end);
        let options = ConvOptions::new_with_padding([self.stride; 2], [pad; 2], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// The `time_conv` of a `*3d` resample: `QwenImageCausalConv3d` with kernel `(3, 1, 1)`.
///
/// It only acts from the second temporal chunk on, so images never use it; it is loaded (and
/// kept, full shape) so that checkpoints load without exceptions and a video path could use it.
#[derive(Module, Debug)]
pub struct TimeConv {
    /// `[out, in, 3, 1, 1]`.
    pub weight: Param<Tensor<5>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl TimeConv {
    /// Loads `{prefix}.weight` `[c_out, c_in, 3, 1, 1]` and `{prefix}.bias`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: l
                .param(&format!("{prefix}.weight"), [c_out, c_in, 3, 1, 1])
                .await?,
            bias: l.param(&format!("{prefix}.bias"), [c_out]).await?,
        })
    }
}

/// `QwenImageRMS_norm` (channel-first, no bias): `F.normalize(x, dim=1) · sqrt(C) · gamma`,
/// where `F.normalize` divides by `max(‖x‖₂, 1e-12)` over the channels.
#[derive(Module, Debug)]
pub struct RmsNorm2d {
    /// `gamma` as `[C]` (stored `[C, 1, 1, 1]` in residual blocks, `[C, 1, 1]` in attention).
    pub gamma: Param<Tensor<1>>,
}

impl RmsNorm2d {
    /// Loads `{prefix}.gamma` of shape `[dim]` followed by `trailing_ones` ones.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
        trailing_ones: usize,
    ) -> Result<Self> {
        let mut shape = vec![dim];
        shape.extend(std::iter::repeat_n(1, trailing_ones));
        let values = l.host(&format!("{prefix}.gamma"), &shape).await?;
        let gamma = Tensor::from_data(TensorData::new(values, [dim]), l.device());
        Ok(Self {
            gamma: Param::from_tensor(gamma),
        })
    }

    /// - x: `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12); // [B, 1, H, W]
        let gamma = self.gamma.val().reshape([1, c, 1, 1]);
        x / norm * (c as f64).sqrt() * gamma
    }
}
