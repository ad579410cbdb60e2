//! `QwenImageLayeredPipeline.__call__` (diffusers 0.42.1) end to end on a Burn device: one RGBA
//! image → N RGBA layers, bottom → top.
//!
//! Reference: `src/diffusers/pipelines/qwenimage/pipeline_qwenimage_layered.py` at
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/qwenimage/pipeline_qwenimage_layered.py#L539-L913>;
//! the numbered comments in [`LayeredPipeline::run_traced`] follow its steps
//! (`docs/model-spec.md` §2). Everything runs in `f32`, like the reference fixtures.
//!
//! Not here: the text encoder (the caller passes `prompt_embeds`, i.e. the encoder's last
//! hidden state with the 34 template tokens dropped, made by [`crate::text::PromptEncoder`])
//! and auto-captioning.
//!
//! The run is generic over the Burn [`Device`] (Flex on the CPU in tests, wgpu natively, WebGPU
//! in the browser) and reads back only with async reads. After every denoising step it awaits a
//! one-element readback: on a GPU this waits for the step to finish (so progress is real) and
//! in the browser it yields to the event loop, so that a cancel message can arrive before the
//! progress callback is asked whether to go on.

use std::ops::ControlFlow;

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbaImage;

use super::dimensions::Dimensions;
use super::latents::{pack_latents_tensor, seeded_noise, unpack_latents_tensor};
use super::postprocess::decoded_layers_to_rgba;
use super::preprocess::preprocess_image;
use super::scheduler::{
    FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, layered_sigmas,
    transformer_timestep_f32,
};
use crate::error::{Error, Result};
use crate::gpu::read_f32;
use crate::model::transformer::{
    BlockProvider, QwenImageTransformer2DModel, ResidentBlocks, TransformerInput,
};
use crate::model::vae::{AutoencoderKLQwenImage, VaeTiling};
use crate::weights::{Precision, WeightSource};

/// The scheduler config file inside a diffusers pipeline folder.
pub const SCHEDULER_CONFIG_FILE: &str = "scheduler/scheduler_config.json";

/// The `__call__` arguments this port takes, with the reference's defaults
/// (`pipeline_qwenimage_layered.py:541-565`; the official app recommends `cfg_normalize = true`
/// and a negative prompt `" "`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecomposeParams {
    /// `layers`: number of output layers `N` (default 4).
    pub layers: usize,
    /// `num_inference_steps` (default 50).
    pub steps: usize,
    /// `resolution`: the bucket side; the working area is `resolution²` (default 640). The
    /// reference accepts only 640 and 1024; any positive multiple of 16 is accepted here, for
    /// tiny test models (what the fixtures' patched bucket does).
    pub resolution: u32,
    /// `true_cfg_scale` (default 4.0). CFG runs iff it is > 1 **and** negative embeddings are
    /// given (`do_true_cfg`, `:712`).
    pub true_cfg_scale: f32,
    /// `cfg_normalize` (default false): rescale the guided prediction per token to the norm of
    /// the conditional one (over the packed channels).
    pub cfg_normalize: bool,
}

impl Default for DecomposeParams {
    fn default() -> Self {
        Self {
            layers: 4,
            steps: 50,
            resolution: 640,
            true_cfg_scale: 4.0,
            cfg_normalize: false,
        }
    }
}

impl DecomposeParams {
    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Input {
                model: "QwenImageLayeredPipeline",
                reason,
            })
        };
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !self.true_cfg_scale.is_finite() {
            return bad(format!(
                "true_cfg_scale {} is not finite",
                self.true_cfg_scale
            ));
        }
        Ok(())
    }
}

/// Where the initial noise comes from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one value per run; boxing the tensor buys nothing
pub enum Noise {
    /// Packed noise `[1, (N+1)·h·w, 64]` (frame 0 = composite), e.g. the reference's
    /// `noise.packed`; this is how a run reproduces a diffusers run.
    Packed(Tensor<3>),
    /// Noise drawn from this seed by [`super::latents::seeded_noise`]: deterministic, but not
    /// torch's generator, so never equal to a reference run with the same seed.
    Seed(u64),
}

/// What a run reports, in order: `Prepared`, `Encoded`, one `Step` per denoising step,
/// `Decoding`, `Done`. After each report the callback's `ControlFlow::Break` stops the run with
/// [`Error::Cancelled`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Inputs checked and the image preprocessed (phase 1–2).
    Prepared {
        /// Working (and output) width in pixels.
        width: u32,
        /// Working height.
        height: u32,
        /// `N`.
        layers: usize,
        /// Denoising steps.
        steps: usize,
        /// Whether true CFG runs (two transformer calls per step).
        cfg: bool,
    },
    /// Condition latents encoded and noise prepared (phase 4).
    Encoded,
    /// Denoising step `step` (0-based) of `steps` has finished on the device.
    Step {
        /// The step just done.
        step: usize,
        /// All steps.
        steps: usize,
        /// Its timestep `t` (`1000·σ`).
        timestep: f32,
    },
    /// The VAE decode starts (phase 7).
    Decoding,
    /// The layers are ready.
    Done,
}

impl Progress {
    fn label(&self) -> String {
        match self {
            Progress::Prepared { .. } => "after preprocessing".into(),
            Progress::Encoded => "after encoding the image".into(),
            Progress::Step { step, steps, .. } => {
                format!("after denoising step {} of {steps}", step + 1)
            }
            Progress::Decoding => "before decoding".into(),
            Progress::Done => "at the end".into(),
        }
    }
}

/// An intermediate tensor handed to a trace callback ([`LayeredPipeline::run_traced`]).
#[derive(Debug, Clone, Copy)]
pub enum Traced<'a> {
    /// A packed sequence `[1, S, 64]`.
    Packed(&'a Tensor<3>),
    /// An image-like tensor `[B, C, H, W]`.
    Image(&'a Tensor<4>),
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct LayeredOutput {
    /// The `N` layers, bottom → top, straight-alpha RGBA at the working size (`images[0]`).
    pub layers: Vec<RgbaImage>,
    /// The final packed latents `[1, (N+1)·h·w, 64]` (frame 0 = composite), on the device.
    pub latents: Tensor<3>,
    /// The working size.
    pub dimensions: Dimensions,
    /// The scheduler's timesteps (`K` values).
    pub timesteps: Vec<f32>,
}

/// The Qwen-Image-Layered pipeline minus the text encoder: transformer, VAE and scheduler config.
#[derive(Debug)]
pub struct LayeredPipeline {
    /// The denoiser.
    pub transformer: QwenImageTransformer2DModel,
    /// The RGBA VAE.
    pub vae: AutoencoderKLQwenImage,
    /// The scheduler config; a fresh scheduler is built from it for every run.
    pub scheduler_config: FlowMatchEulerDiscreteConfig,
    /// VAE tiling (diffusers' `vae.enable_tiling(...)`): `None` (the default, as the reference
    /// pipeline) encodes and decodes in one piece; see
    /// [`MemoryPlan`](super::memory::MemoryPlan) for when to tile.
    pub vae_tiling: Option<VaeTiling>,
    /// VAE slicing (diffusers' `vae.enable_slicing()`): decode the `N` layers one at a time
    /// instead of as one batch (same result, `1/N` of the decoder's activation memory).
    pub vae_slicing: bool,
    device: Device,
}

impl LayeredPipeline {
    /// Assembles a pipeline from loaded models (on `device`), checking that they fit together.
    pub fn new(
        transformer: QwenImageTransformer2DModel,
        vae: AutoencoderKLQwenImage,
        scheduler_config: FlowMatchEulerDiscreteConfig,
        device: Device,
    ) -> Result<Self> {
        FlowMatchEulerDiscreteScheduler::new(scheduler_config.clone())?;
        let (c, z) = (transformer.config.in_channels, vae.config.z_dim);
        if c != 4 * z || transformer.config.out_channels() != z {
            return Err(Error::Input {
                model: "QwenImageLayeredPipeline",
                reason: format!(
                    "transformer in_channels {c} / out_channels {} do not fit the VAE's z_dim \
                     {z} (need 4·z_dim and z_dim)",
                    transformer.config.out_channels()
                ),
            });
        }
        if vae.config.input_channels != 4 {
            return Err(Error::Input {
                model: "QwenImageLayeredPipeline",
                reason: format!(
                    "the VAE takes {} input channels; the layered model needs RGBA (4)",
                    vae.config.input_channels
                ),
            });
        }
        Ok(Self {
            transformer,
            vae,
            scheduler_config,
            vae_tiling: None,
            vae_slicing: false,
            device,
        })
    }

    /// Loads `transformer/`, `vae/` and `scheduler/scheduler_config.json` of a diffusers
    /// pipeline folder onto `device`.
    pub async fn load<S: WeightSource>(source: &S, device: &Device) -> Result<Self> {
        Self::load_precision(source, device, Precision::F32).await
    }

    /// [`load`](Self::load) with the transformer's linear weights kept in `precision`.
    pub async fn load_precision<S: WeightSource>(
        source: &S,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let transformer =
            QwenImageTransformer2DModel::load_precision(source, "transformer", device, precision)
                .await?;
        Self::load_with_transformer(source, transformer, device).await
    }

    /// Loads `vae/` and `scheduler/scheduler_config.json` of a diffusers pipeline folder and
    /// assembles them with an already loaded transformer (e.g. from a GGUF file).
    pub async fn load_with_transformer<S: WeightSource>(
        source: &S,
        transformer: QwenImageTransformer2DModel,
        device: &Device,
    ) -> Result<Self> {
        let vae = AutoencoderKLQwenImage::load(source, "vae", device).await?;
        let bytes = source.read_all(SCHEDULER_CONFIG_FILE).await?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Config {
            file: SCHEDULER_CONFIG_FILE.into(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let scheduler_config =
            FlowMatchEulerDiscreteConfig::from_json_str(&text).map_err(|e| Error::Config {
                file: SCHEDULER_CONFIG_FILE.into(),
                reason: e.to_string(),
            })?;
        Self::new(transformer, vae, scheduler_config, device.clone())
    }

    /// The device the models live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decomposes `input` into `params.layers` layers.
    ///
    /// - input: any-size RGBA image (convert RGB to RGBA with alpha 255 first)
    /// - prompt_embeds: `[1, L, joint_attention_dim]` on this pipeline's device
    /// - negative_prompt_embeds: `[1, L', joint_attention_dim]`; CFG runs iff it is given and
    ///   `true_cfg_scale > 1`
    /// - noise: [`Noise::Packed`] `[1, (N+1)·h·w, 64]` or a seed
    /// - progress: called after each phase and each step; `Break` cancels
    pub async fn run(
        &self,
        input: &RgbaImage,
        params: &DecomposeParams,
        prompt_embeds: Tensor<3>,
        negative_prompt_embeds: Option<Tensor<3>>,
        noise: Noise,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<LayeredOutput> {
        let mut blocks = ResidentBlocks(&self.transformer.transformer_blocks);
        self.run_with_blocks(
            input,
            params,
            prompt_embeds,
            negative_prompt_embeds,
            noise,
            progress,
            &mut blocks,
        )
        .await
    }

    /// [`run`](Self::run) with the transformer's blocks taken from `blocks`, e.g. a
    /// [`BlockStream`](crate::model::transformer::BlockStream) for a transformer loaded with
    /// [`QwenImageTransformer2DModel::load_streaming`] (whose own block list is empty). The
    /// result is the same as with all blocks resident.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_with_blocks<P: BlockProvider>(
        &self,
        input: &RgbaImage,
        params: &DecomposeParams,
        prompt_embeds: Tensor<3>,
        negative_prompt_embeds: Option<Tensor<3>>,
        noise: Noise,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
        blocks: &mut P,
    ) -> Result<LayeredOutput> {
        let inputs = RunInputs {
            input,
            params,
            prompt_embeds,
            negative_prompt_embeds,
            noise,
        };
        self.run_inner(inputs, progress, &mut |_, _| {}, blocks)
            .await
    }

    /// [`run`](Self::run), also handing intermediate tensors to `trace` under the fixture names:
    /// `image_latents.packed`, `noise.packed`, `step{i}.noise_pred`, `step{i}.latents`
    /// ([`Traced::Packed`]); `vae.decode.input` `[N, 16, 2h, 2w]`, `vae.decode.output`
    /// `[N, 4, H, W]` ([`Traced::Image`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn run_traced(
        &self,
        input: &RgbaImage,
        params: &DecomposeParams,
        prompt_embeds: Tensor<3>,
        negative_prompt_embeds: Option<Tensor<3>>,
        noise: Noise,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
        trace: &mut dyn FnMut(&str, Traced<'_>),
    ) -> Result<LayeredOutput> {
        let inputs = RunInputs {
            input,
            params,
            prompt_embeds,
            negative_prompt_embeds,
            noise,
        };
        let mut blocks = ResidentBlocks(&self.transformer.transformer_blocks);
        self.run_inner(inputs, progress, trace, &mut blocks).await
    }

    fn check_embeds(&self, what: &str, t: &Tensor<3>) -> Result<()> {
        let [b, l, d] = t.dims();
        let want = self.transformer.config.joint_attention_dim;
        if b != 1 || l == 0 || d != want {
            return Err(Error::Input {
                model: "QwenImageLayeredPipeline",
                reason: format!("{what} {:?} must be [1, L, {want}] with L > 0", [b, l, d]),
            });
        }
        Ok(())
    }

    async fn run_inner<P: BlockProvider>(
        &self,
        inputs: RunInputs<'_>,
        mut progress: impl FnMut(Progress) -> ControlFlow<()>,
        trace: &mut dyn FnMut(&str, Traced<'_>),
        blocks: &mut P,
    ) -> Result<LayeredOutput> {
        let RunInputs {
            input,
            params,
            prompt_embeds,
            negative_prompt_embeds,
            noise,
        } = inputs;
        let mut report = |p: Progress| match progress(p) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Error::Cancelled { at: p.label() }),
        };
        let device = &self.device;
        let layers = params.layers;

        // Resolution bucket (`:662-670`): area resolution², rounded to multiples of 32.
        params.validate()?;
        let dims =
            Dimensions::for_image_any_bucket(params.resolution, input.width(), input.height())?;
        let (height, width) = (dims.height as usize, dims.width as usize);

        // 1. Check inputs.
        self.check_embeds("prompt_embeds", &prompt_embeds)?;
        if let Some(neg) = &negative_prompt_embeds {
            self.check_embeds("negative_prompt_embeds", neg)?;
        }

        // 2. Preprocess image: PIL Lanczos resize to the working size, then [-1, 1].
        let pre = preprocess_image(input, dims)?;
        let image = Tensor::<4>::from_data(
            TensorData::new(pre.vae_input, [1, 4, height, width]),
            device,
        );

        // 3. Define call parameters: CFG iff scale > 1 and a negative prompt (`:712`).
        let do_true_cfg = params.true_cfg_scale > 1.0 && negative_prompt_embeds.is_some();
        report(Progress::Prepared {
            width: dims.width,
            height: dims.height,
            layers,
            steps: params.steps,
            cfg: do_true_cfg,
        })?;

        // 4. Prepare latent variables (`prepare_latents`, `:454-515`): the condition is the
        // posterior mean, normalised, packed as one frame; the noise is packed (N+1) frames.
        let z_dim = self.vae.config.z_dim;
        let moments = match &self.vae_tiling {
            Some(tiling) => self.vae.encode_moments_with_tiling(image, tiling)?,
            None => self.vae.encode_moments(image)?,
        }; // [1, 32, 2h, 2w]: mean ‖ logvar
        let image_latents = self.vae.normalize_latents(moments.narrow(1, 0, z_dim)); // [1, 16, 2h, 2w]
        let image_latents = pack_latents_tensor(image_latents)?; // [1, h·w, 64]
        trace("image_latents.packed", Traced::Packed(&image_latents));
        let s_noise = dims.noise_seq_len(layers);
        let mut latents = match noise {
            Noise::Packed(t) => {
                let want = [1, s_noise, 4 * z_dim];
                if t.dims() != want {
                    return Err(Error::Input {
                        model: "QwenImageLayeredPipeline",
                        reason: format!(
                            "noise {:?} must be {want:?} for {layers} layers at {}×{} \
                             ((N+1)·h·w tokens)",
                            t.dims(),
                            dims.width,
                            dims.height
                        ),
                    });
                }
                t
            }
            Noise::Seed(seed) => seeded_noise(seed, dims, layers, z_dim, device)?,
        };
        trace("noise.packed", Traced::Packed(&latents));
        let img_shapes = vec![dims.img_shapes(layers)];
        report(Progress::Encoded)?;

        // 5. Prepare timesteps: σ = linspace(1, 0, K+1)[:-1], μ = sqrt(h·w / 256) (`:766-779`).
        let mut scheduler = FlowMatchEulerDiscreteScheduler::new(self.scheduler_config.clone())?;
        scheduler.set_timesteps(None, Some(&layered_sigmas(params.steps)), Some(dims.mu()))?;
        let timesteps = scheduler.timesteps().to_vec();
        let is_rgb = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), device);

        // 6. Denoising loop (`:801-875`).
        for (i, &t) in timesteps.iter().enumerate() {
            // Condition tokens go last: [1, (N+2)·h·w, 64].
            let latent_model_input = Tensor::cat(vec![latents.clone(), image_latents.clone()], 1);
            let timestep = Tensor::<1>::from_data(
                TensorData::new(vec![transformer_timestep_f32(t)], [1]),
                device,
            );
            let input = |text: Tensor<3>| TransformerInput {
                hidden_states: latent_model_input.clone(),
                encoder_hidden_states: text,
                encoder_hidden_states_mask: None,
                timestep: timestep.clone(),
                img_shapes: &img_shapes,
                additional_t_cond: Some(is_rgb.clone()),
            };
            // noise_pred[:, : latents.size(1)]; under true CFG the negative pass shares each
            // block with the positive one (a streamed block is read once per step).
            let (noise_pred, neg_noise_pred) = match (do_true_cfg, &negative_prompt_embeds) {
                (true, Some(neg)) => {
                    let (pos, neg) = self
                        .transformer
                        .forward_pair_with(input(prompt_embeds.clone()), input(neg.clone()), blocks)
                        .await?;
                    (pos, Some(neg.narrow(1, 0, s_noise)))
                }
                _ => (
                    self.transformer
                        .forward_with(input(prompt_embeds.clone()), blocks)
                        .await?,
                    None,
                ),
            };
            let mut noise_pred = noise_pred.narrow(1, 0, s_noise);
            if let Some(neg_noise_pred) = neg_noise_pred {
                let comb_pred = neg_noise_pred.clone()
                    + (noise_pred.clone() - neg_noise_pred).mul_scalar(params.true_cfg_scale);
                noise_pred = if params.cfg_normalize {
                    // Per token, over the 64 packed channels (`:844-847`).
                    let norm = |x: Tensor<3>| (x.clone() * x).sum_dim(2).sqrt(); // [1, S, 1]
                    let ratio = norm(noise_pred) / norm(comb_pred.clone());
                    comb_pred * ratio
                } else {
                    comb_pred
                };
            }
            trace(&format!("step{i}.noise_pred"), Traced::Packed(&noise_pred));
            // scheduler.step: x ← x + (σ[i+1] − σ[i])·v, in f32.
            let dt = scheduler.dt(i)?;
            latents = latents + noise_pred.mul_scalar(dt);
            trace(&format!("step{i}.latents"), Traced::Packed(&latents));
            // Wait for the step (and yield to the event loop in the browser).
            let probe = latents.clone().narrow(1, 0, 1).narrow(2, 0, 1);
            read_f32(probe, "denoising step probe", device).await?;
            report(Progress::Step {
                step: i,
                steps: timesteps.len(),
                timestep: t,
            })?;
        }

        // 7. Decode (`:877-905`): unpack, `z / (1/std) + mean`, drop frame 0 (the composite),
        // decode the N layers as a batch, clamp to [-1, 1].
        blocks.release(); // a streaming transformer's ring is not needed for the decode
        report(Progress::Decoding)?;
        let unpacked = unpack_latents_tensor(
            latents.clone(),
            layers + 1,
            dims.latent_height(),
            dims.latent_width(),
        )?;
        let z = self.vae.denormalize_latents(unpacked.narrow(0, 1, layers)); // [N, 16, 2h, 2w]
        trace("vae.decode.input", Traced::Image(&z));
        let decoded = self.decode_layers(z)?; // [N, 4, H, W]
        trace("vae.decode.output", Traced::Image(&decoded));

        // Postprocess: (x/2 + 0.5).clamp(0, 1) · 255, round half to even, RGBA (straight alpha).
        let decoded = read_f32(decoded, "decoded layers", device).await?;
        let layer_images = decoded_layers_to_rgba(&decoded, layers, height, width)?;

        // 8. Output: images[0] = [layer_1, …, layer_N], bottom → top.
        report(Progress::Done)?;
        Ok(LayeredOutput {
            layers: layer_images,
            latents,
            dimensions: dims,
            timesteps,
        })
    }
}

impl LayeredPipeline {
    /// The VAE decode of the `N` layer latents, tiled and/or sliced as configured.
    ///
    /// - z: `[N, z_dim, 2h, 2w]` (de-normalised) → `[N, 4, H, W]`
    fn decode_layers(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        let decode = |z: Tensor<4>| match &self.vae_tiling {
            Some(tiling) => self.vae.decode_with_tiling(z, tiling),
            None => self.vae.decode(z),
        };
        let n = z.dims()[0];
        if !self.vae_slicing || n == 1 {
            return decode(z);
        }
        let parts = (0..n)
            .map(|i| decode(z.clone().narrow(0, i, 1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(parts, 0))
    }
}

/// The per-run arguments, bundled.
struct RunInputs<'a> {
    input: &'a RgbaImage,
    params: &'a DecomposeParams,
    prompt_embeds: Tensor<3>,
    negative_prompt_embeds: Option<Tensor<3>>,
    noise: Noise,
}
