//! `AutoencoderKLQwenImage` for single-frame images (RGBA for the Layered model).
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L673-L880>

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::coders::{Decoder, Encoder};
use super::config::AutoencoderKLQwenImageConfig;
use super::layers::Conv2d;
use crate::error::{Error, Result};
use crate::weights::{TensorLoader, WeightSource, open_component};

/// The Wan-2.1-style causal VAE of Qwen-Image, run on single frames.
///
/// diffusers works on `[B, C, T, H, W]`; here `T = 1` is dropped: images are `[B, C, H, W]`
/// and latents `[B, z_dim, H/8, W/8]`.
///
/// Checkpoint keys map one-to-one to fields, except (one table for the whole model):
///
/// | diffusers key | Rust | why |
/// |---|---|---|
/// | `*.conv*.weight` `[out, in, k, k, k]` (causal 3D convs) | `Conv2d::weight` `[out, in, k, k]` | one frame: only the last temporal tap is used |
/// | `*.norm*.gamma` `[C, 1, 1, 1]` / `[C, 1, 1]` | `RmsNorm2d::gamma` `[C]` | broadcast dims dropped |
/// | `….resample.1.*` | `….resample.*` | index 1 of `nn.Sequential(Upsample/ZeroPad2d, Conv2d)` |
/// | `encoder.down_blocks.{i}.*` | `encoder.down_blocks[i]` (enum variant by kind) | mixed `nn.ModuleList` |
///
/// `….time_conv.*` are loaded in full but unused for images.
#[derive(Module, Debug)]
pub struct AutoencoderKLQwenImage {
    /// `encoder.*`.
    pub encoder: Encoder,
    /// 1×1 conv `2·z_dim → 2·z_dim` after the encoder.
    pub quant_conv: Conv2d,
    /// 1×1 conv `z_dim → z_dim` before the decoder.
    pub post_quant_conv: Conv2d,
    /// `decoder.*`.
    pub decoder: Decoder,
    /// The config the model was built from.
    #[module(skip)]
    pub config: AutoencoderKLQwenImageConfig,
}

impl AutoencoderKLQwenImage {
    /// Loads `{folder}/config.json` and the weights of `folder` (e.g. `"vae"`), rejecting
    /// missing, unexpected or wrongly shaped tensors.
    pub async fn load<S: WeightSource>(source: &S, folder: &str, device: &Device) -> Result<Self> {
        let (config, config_file, weights) =
            open_component::<AutoencoderKLQwenImageConfig>(source, folder).await?;
        config.validate(&config_file)?;
        let mut loader = TensorLoader::new(source, &weights, device);
        let model = Self::load_with(&config, &mut loader).await?;
        loader.finish()?;
        Ok(model)
    }

    /// Builds the model from `config`, taking its tensors from `l` (keys at the root).
    pub async fn load_with<S: WeightSource>(
        config: &AutoencoderKLQwenImageConfig,
        l: &mut TensorLoader<'_, S>,
    ) -> Result<Self> {
        config.validate("vae config")?;
        let z = config.z_dim;
        Ok(Self {
            encoder: Encoder::load(l, "encoder", config).await?,
            quant_conv: Conv2d::load_causal3d(l, "quant_conv", [2 * z, 2 * z, 1]).await?,
            post_quant_conv: Conv2d::load_causal3d(l, "post_quant_conv", [z, z, 1]).await?,
            decoder: Decoder::load(l, "decoder", config).await?,
            config: config.clone(),
        })
    }

    pub(super) fn check(&self, what: &str, x: &Tensor<4>, channels: usize) -> Result<()> {
        let dims = x.dims();
        if dims[1] != channels {
            return Err(Error::Input {
                model: "AutoencoderKLQwenImage",
                reason: format!(
                    "{what} {dims:?} must have {channels} channels ([B, {channels}, H, W])"
                ),
            });
        }
        Ok(())
    }

    /// The posterior moments `quant_conv(encoder(x))`: mean ‖ logvar.
    ///
    /// - x: `[B, input_channels, H, W]` in [-1, 1] → `[B, 2·z_dim, H/8, W/8]`
    pub fn encode_moments(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        self.encode_moments_traced(x, &mut |_, _| {})
    }

    /// [`encode_moments`](Self::encode_moments), calling `trace` with the encoder's
    /// intermediate outputs (see [`Encoder::forward_traced`]).
    pub fn encode_moments_traced(
        &self,
        x: Tensor<4>,
        trace: &mut dyn FnMut(&str, &Tensor<4>),
    ) -> Result<Tensor<4>> {
        self.check("image", &x, self.config.input_channels)?;
        Ok(self
            .quant_conv
            .forward(self.encoder.forward_traced(x, trace)))
    }

    /// The posterior mean (`latent_dist.mode()`, what the pipeline uses), not normalised.
    ///
    /// - x: `[B, input_channels, H, W]` in [-1, 1] → `[B, z_dim, H/8, W/8]`
    pub fn encode(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        Ok(self.encode_moments(x)?.narrow(1, 0, self.config.z_dim))
    }

    /// Decodes latents (not normalised) and clamps to [-1, 1].
    ///
    /// - z: `[B, z_dim, h, w]` → `[B, input_channels, 8h, 8w]`
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        self.decode_traced(z, &mut |_, _| {})
    }

    /// [`decode`](Self::decode), calling `trace` with `post_quant_conv`'s output and the
    /// decoder's intermediate outputs (see [`Decoder::forward_traced`]).
    pub fn decode_traced(
        &self,
        z: Tensor<4>,
        trace: &mut dyn FnMut(&str, &Tensor<4>),
    ) -> Result<Tensor<4>> {
        self.check("latents", &z, self.config.z_dim)?;
        let z = self.post_quant_conv.forward(z);
        trace("post_quant_conv", &z);
        Ok(self.decoder.forward_traced(z, trace).clamp(-1.0, 1.0))
    }

    /// Per-channel `[1, z_dim, 1, 1]` tensor of `values`.
    fn per_channel(&self, values: Vec<f32>, device: &Device) -> Tensor<4> {
        let z = self.config.z_dim;
        Tensor::from_data(TensorData::new(values, [1, z, 1, 1]), device)
    }

    /// The pipeline's condition normalisation `(z − latents_mean) / latents_std`
    /// (`pipeline_qwenimage_layered.py#L440-L450`).
    ///
    /// - z: `[B, z_dim, h, w]` → same
    pub fn normalize_latents(&self, z: Tensor<4>) -> Tensor<4> {
        let device = z.device();
        let mean = self.per_channel(self.config.latents_mean.clone(), &device);
        let std = self.per_channel(self.config.latents_std.clone(), &device);
        (z - mean) / std
    }

    /// The pipeline's de-normalisation before decoding, `z / (1 / latents_std) + latents_mean`
    /// (`pipeline_qwenimage_layered.py#L882-L890`; dividing by the f32 reciprocal is bitwise
    /// different from multiplying by std, so it is kept).
    ///
    /// - z: `[B, z_dim, h, w]` → same
    pub fn denormalize_latents(&self, z: Tensor<4>) -> Tensor<4> {
        let device = z.device();
        let mean = self.per_channel(self.config.latents_mean.clone(), &device);
        let inv_std = self.per_channel(
            self.config.latents_std.iter().map(|s| 1.0f32 / s).collect(),
            &device,
        );
        z / inv_std + mean
    }
}
