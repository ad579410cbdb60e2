//! VAE blocks for single frames: residual block, attention block, resample, mid block, up block.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L133-L483>
//! (`QwenImageResample` `#L133`, `QwenImageResidualBlock` `#L220`, `QwenImageAttentionBlock`
//! `#L294`, `QwenImageMidBlock` `#L339`, `QwenImageUpBlock` `#L485`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{Conv2d, RmsNorm2d, TimeConv};
use crate::error::Result;
use crate::weights::{TensorLoader, WeightSource};

/// `QwenImageResidualBlock`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// RMS norm over `in_dim`.
    pub norm1: RmsNorm2d,
    /// Causal 3×3×3 conv `in → out` (last temporal tap).
    pub conv1: Conv2d,
    /// RMS norm over `out_dim`.
    pub norm2: RmsNorm2d,
    /// Causal 3×3×3 conv `out → out`.
    pub conv2: Conv2d,
    /// 1×1×1 conv when `in ≠ out`, else identity.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResidualBlock {
    /// Loads `{prefix}.{norm1,conv1,norm2,conv2[,conv_shortcut]}`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        c_in: usize,
        c_out: usize,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            norm1: RmsNorm2d::load(l, &p("norm1"), c_in, 3).await?,
            conv1: Conv2d::load_causal3d(l, &p("conv1"), [c_in, c_out, 3]).await?,
            norm2: RmsNorm2d::load(l, &p("norm2"), c_out, 3).await?,
            conv2: Conv2d::load_causal3d(l, &p("conv2"), [c_out, c_out, 3]).await?,
            conv_shortcut: match c_in != c_out {
                true => {
                    Some(Conv2d::load_causal3d(l, &p("conv_shortcut"), [c_in, c_out, 1]).await?)
                }
                false => None,
            },
        })
    }

    /// - x: `[B, in, H, W]` → `[B, out, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = match &self.conv_shortcut {
            Some(conv) => conv.forward(x.clone()),
            None => x.clone(),
        };
        let x = self.conv1.forward(silu(self.norm1.forward(x)));
        let x = self.conv2.forward(silu(self.norm2.forward(x)));
        x + h
    }
}

/// `QwenImageAttentionBlock`: single-head self-attention over the `H·W` pixels of each frame.
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// RMS norm (`gamma` stored `[C, 1, 1]`).
    pub norm: RmsNorm2d,
    /// 1×1 conv `C → 3C` (q ‖ k ‖ v).
    pub to_qkv: Conv2d,
    /// 1×1 conv `C → C`.
    pub proj: Conv2d,
}

impl AttentionBlock {
    /// Loads `{prefix}.{norm,to_qkv,proj}`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm2d::load(l, &format!("{prefix}.norm"), dim, 2).await?,
            to_qkv: Conv2d::load(l, &format!("{prefix}.to_qkv"), [dim, 3 * dim, 1], 1, (0, 0))
                .await?,
            proj: Conv2d::load(l, &format!("{prefix}.proj"), [dim, dim, 1], 1, (0, 0)).await?,
        })
    }

    /// - x: `[B, C, H, W]` → `[B, C, H, W]`
    ///
    /// The 1×1 `to_qkv` conv is computed as three matmuls so that q, k and v are fresh
    /// contiguous `[B, 1, HW, C]` tensors: Burn 0.22.1's wgpu flash-attention kernel gives wrong
    /// results for inputs whose last axis is a strided view (chunks of a transposed
    /// tensor, as a literal port would pass), measured at 3e-1 on lavapipe for HW ≥ 64.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2); // [B, HW, C]
        let weight = self.to_qkv.weight.val().reshape([3 * c, c]); // [3C, C]
        let bias = self.to_qkv.bias.val(); // [3C]
        let project = |i: usize| {
            let w_i = weight.clone().narrow(0, i * c, c).transpose(); // [C_in, C_out]
            let b_i = bias.clone().narrow(0, i * c, c).reshape([1, 1, c]);
            (tokens.clone().matmul(w_i.unsqueeze::<3>()) + b_i).unsqueeze_dim::<4>(1) // [B, 1, HW, C]
        };
        let (q, k, v) = (project(0), project(1), project(2));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default()); // [B, 1, HW, C]
        let out = out
            .reshape([b, h * w, c])
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        self.proj.forward(out) + x
    }
}

/// The kind of a [`Resample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// Nearest ×2 then conv `dim → dim/2` (no time upsampling).
    Upsample2d,
    /// As `Upsample2d` for a first (or only) frame; `time_conv` acts on later chunks only.
    Upsample3d,
    /// Zero-pad right/bottom by 1, conv k3 stride 2 `dim → dim`.
    Downsample2d,
    /// As `Downsample2d` for a first (or only) frame; `time_conv` acts on later chunks only.
    Downsample3d,
}

/// `QwenImageResample` for a single frame.
///
/// Checkpoint keys: `{prefix}.resample.1` (index 1 of `nn.Sequential(Upsample|ZeroPad2d, Conv2d)`)
/// is the field `resample`; `{prefix}.time_conv` for the `*3d` modes.
#[derive(Module, Debug)]
pub struct Resample {
    /// The spatial conv (`resample.1`).
    pub resample: Conv2d,
    /// `time_conv`: present for `upsample3d` (`dim → 2·dim`) and `downsample3d` (`dim → dim`);
    /// unused for images (see [`TimeConv`]).
    pub time_conv: Option<TimeConv>,
    /// Which resampling.
    #[module(skip)]
    pub mode: ResampleMode,
}

impl Resample {
    /// Loads `{prefix}.resample.1` (and `{prefix}.time_conv`).
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
        mode: ResampleMode,
    ) -> Result<Self> {
        let conv = format!("{prefix}.resample.1");
        let time = format!("{prefix}.time_conv");
        let (resample, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let resample = Conv2d::load(l, &conv, [dim, dim / 2, 3], 1, (1, 1)).await?;
                let time_conv = match mode == ResampleMode::Upsample3d {
                    true => Some(TimeConv::load(l, &time, dim, 2 * dim).await?),
                    false => None,
                };
                (resample, time_conv)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let resample = Conv2d::load(l, &conv, [dim, dim, 3], 2, (0, 1)).await?;
                let time_conv = match mode == ResampleMode::Downsample3d {
                    true => Some(TimeConv::load(l, &time, dim, dim).await?),
                    false => None,
                };
                (resample, time_conv)
            }
        };
        Ok(Self {
            resample,
            time_conv,
            mode,
        })
    }

    /// - x: `[B, C, H, W]` → up: `[B, C/2, 2H, 2W]`; down: `[B, C, H/2, W/2]` (H, W even)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                self.resample.forward(upsample_nearest2x(x))
            }
            // ZeroPad2d((0, 1, 0, 1)) is the conv's (0, 1) padding per axis.
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => self.resample.forward(x),
        }
    }
}

/// Nearest-neighbour ×2 on both spatial axes (equal to `nearest-exact` at an exact factor 2).
///
/// - x: `[B, C, H, W]` → `[B, C, 2H, 2W]`
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// `QwenImageMidBlock(dim, num_layers=1)`: `resnets.0`, `attentions.0`, `resnets.1`.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// The residual blocks (one more than attentions).
    pub resnets: Vec<ResidualBlock>,
    /// The attention blocks.
    pub attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    /// Loads `{prefix}.resnets.{0,1}` and `{prefix}.attentions.0`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            resnets: vec![
                ResidualBlock::load(l, &format!("{prefix}.resnets.0"), dim, dim).await?,
                ResidualBlock::load(l, &format!("{prefix}.resnets.1"), dim, dim).await?,
            ],
            attentions: vec![
                AttentionBlock::load(l, &format!("{prefix}.attentions.0"), dim).await?,
            ],
        })
    }

    /// - x: `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x));
        }
        x
    }
}

/// `QwenImageUpBlock`: `num_res_blocks + 1` residual blocks, then an optional upsampler
/// (`upsamplers.0`).
#[derive(Module, Debug)]
pub struct UpBlock {
    /// The residual blocks.
    pub resnets: Vec<ResidualBlock>,
    /// `upsamplers.0`, if this stage upsamples.
    pub upsamplers: Option<Resample>,
}

impl UpBlock {
    /// Loads `{prefix}.resnets.*` and `{prefix}.upsamplers.0`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        (c_in, c_out): (usize, usize),
        num_res_blocks: usize,
        upsample: Option<ResampleMode>,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_res_blocks + 1);
        let mut current = c_in;
        for i in 0..=num_res_blocks {
            resnets.push(
                ResidualBlock::load(l, &format!("{prefix}.resnets.{i}"), current, c_out).await?,
            );
            current = c_out;
        }
        let upsamplers = match upsample {
            Some(mode) => {
                Some(Resample::load(l, &format!("{prefix}.upsamplers.0"), c_out, mode).await?)
            }
            None => None,
        };
        Ok(Self {
            resnets,
            upsamplers,
        })
    }

    /// - x: `[B, in, H, W]` → `[B, out/2, 2H, 2W]` with an upsampler, else `[B, out, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x));
        match &self.upsamplers {
            Some(up) => up.forward(x),
            None => x,
        }
    }
}
