//! The components one after another, each freed before the next loads (issue #6: text
//! encoder → free → transformer → free → VAE), with the transformer resident or streamed and
//! the VAE tiled as a [`MemoryPlan`] says.
//!
//! A worker calls [`encode_prompts_then_free`] first (the text encoder is loaded, used and
//! dropped inside it, so it is never on the device together with the transformer), then
//! [`PlannedPipeline::load`] and [`PlannedPipeline::run`]; a streaming transformer drops its
//! ring of blocks before the VAE decode.

use std::ops::ControlFlow;

use burn::tensor::{Device, Tensor};
use image::RgbaImage;

use super::layered::{DecomposeParams, LayeredOutput, LayeredPipeline, Noise, Progress};
use super::memory::MemoryPlan;
use crate::error::Result;
use crate::model::transformer::{
    BlockStream, QwenImageTransformer2DModel, QwenImageTransformerConfig,
};
use crate::text::{PromptEncoder, TextEncoderLoad};
use crate::weights::{Precision, WeightSource};

/// The text embeddings a run needs.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// `[1, L, joint_attention_dim]`.
    pub prompt: Tensor<3>,
    /// `[1, L', joint_attention_dim]`, if a negative prompt was given.
    pub negative: Option<Tensor<3>>,
}

/// Loads `tokenizer/` and `text_encoder/` as `text_encoder` says (precision of the linear
/// layers; token embedding uploaded, or gathered from `source` row by row: the browser's
/// setting, [`TextEncoderLoad::gathered`]), encodes `prompt` (and `negative`), and frees the
/// text encoder before returning (its device memory is handed back with
/// `Device::memory_cleanup`). Call it before loading the transformer.
///
/// - returns `prompt` `[1, L, D]` and `negative` `[1, L', D]` (`L, L' ≤ max_sequence_length`)
pub async fn encode_prompts_then_free<S: WeightSource>(
    source: &S,
    device: &Device,
    prompt: &str,
    negative: Option<&str>,
    max_sequence_length: usize,
    text_encoder: TextEncoderLoad,
) -> Result<PromptEmbeds> {
    let encoder = PromptEncoder::load_with(source, device, text_encoder).await?;
    let (prompt, negative) = encoder
        .encode_pair_from(source, prompt, negative, max_sequence_length)
        .await?;
    drop(encoder);
    device.memory_cleanup();
    Ok(PromptEmbeds { prompt, negative })
}

/// A pipeline loaded as a [`MemoryPlan`] says: resident transformer, or a transformer without
/// blocks plus a [`BlockStream`] over `source`; linear weights over the plan's largest buffer
/// split by rows, the MLPs' sequence chunks and the VAE's tiling and slicing from the plan.
pub struct PlannedPipeline<S: WeightSource> {
    /// The pipeline (its transformer has no blocks when streaming).
    pub pipeline: LayeredPipeline,
    /// The block stream, when the plan streams.
    pub stream: Option<BlockStream<S>>,
}

impl<S: WeightSource> std::fmt::Debug for PlannedPipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedPipeline")
            .field("stream", &self.stream)
            .field("vae_tiling", &self.pipeline.vae_tiling)
            .field("vae_slicing", &self.pipeline.vae_slicing)
            .finish()
    }
}

impl<S: WeightSource> PlannedPipeline<S> {
    /// Loads `transformer/` (all of it, or its non-block part and a ring of the plan's size),
    /// `vae/` and the scheduler config from `source` (owned by the stream: pass `&source` or
    /// an `Rc`).
    pub async fn load(
        source: S,
        device: &Device,
        plan: &MemoryPlan,
        precision: Precision,
    ) -> Result<Self> {
        Self::load_from(source, device, plan, precision, None).await
    }

    /// [`load`](Self::load) with the transformer's weights from the GGUF file `gguf_file` of
    /// `source` (diffusers key names; `config` from a diffusers `config.json`).
    pub async fn load_gguf(
        source: S,
        device: &Device,
        plan: &MemoryPlan,
        precision: Precision,
        gguf_file: &str,
        config: &QwenImageTransformerConfig,
    ) -> Result<Self> {
        Self::load_from(source, device, plan, precision, Some((gguf_file, config))).await
    }

    async fn load_from(
        source: S,
        device: &Device,
        plan: &MemoryPlan,
        precision: Precision,
        gguf: Option<(&str, &QwenImageTransformerConfig)>,
    ) -> Result<Self> {
        let linear = plan.linear_load(precision);
        type Model = QwenImageTransformer2DModel;
        let (mut pipeline, stream) = match plan.ring() {
            None => {
                let transformer = match gguf {
                    None => Model::load_precision(&source, "transformer", device, linear).await?,
                    Some((file, config)) => {
                        Model::load_gguf(&source, file, config, device, linear).await?
                    }
                };
                let pipeline =
                    LayeredPipeline::load_with_transformer(&source, transformer, device).await?;
                (pipeline, None)
            }
            Some(ring) => {
                let (skeleton, stream) = match gguf {
                    None => {
                        Model::load_streaming(source, "transformer", device, linear, ring).await?
                    }
                    Some((file, config)) => {
                        Model::load_streaming_gguf(source, file, config, device, linear, ring)
                            .await?
                    }
                };
                let pipeline =
                    LayeredPipeline::load_with_transformer(stream.source(), skeleton, device)
                        .await?;
                (pipeline, Some(stream))
            }
        };
        plan.apply(&mut pipeline);
        Ok(Self { pipeline, stream })
    }

    /// [`LayeredPipeline::run`] with this plan's blocks.
    pub async fn run(
        &mut self,
        input: &RgbaImage,
        params: &DecomposeParams,
        embeds: PromptEmbeds,
        noise: Noise,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<LayeredOutput> {
        let PromptEmbeds { prompt, negative } = embeds;
        match &mut self.stream {
            Some(stream) => {
                self.pipeline
                    .run_with_blocks(input, params, prompt, negative, noise, progress, stream)
                    .await
            }
            None => {
                self.pipeline
                    .run(input, params, prompt, negative, noise, progress)
                    .await
            }
        }
    }
}
