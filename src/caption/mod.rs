//! Auto-captioning (the reference pipeline's `get_image_caption`, diffusers 0.42.1
//! `pipeline_qwenimage_layered.py:336-354`): when the user's prompt is empty (`None`, `""` or
//! `" "`), the resized RGBA image is described by Qwen2.5-VL and the caption becomes the
//! prompt.
//!
//! `processor(text=template, images=image)` → `text_encoder.generate(**inputs,
//! max_new_tokens=512)` → `batch_decode(new_ids, skip_special_tokens=True)[0].strip()`:
//!
//! - [`processor`]: `Qwen2VLImageProcessor` (image → `pixel_values`, `image_grid_thw`);
//! - [`template`]: the English and Chinese chat prompts;
//! - [`inputs`]: the prompt ids with the image tokens expanded, and the M-RoPE positions;
//! - [`generate`]: the next-token rule of `generation_config.json`;
//! - [`Captioner`]: the vision tower ([`crate::model::vision`]) and the language model
//!   ([`crate::model::text_encoder`], with `lm_head`) run with a key/value cache, one token
//!   per step, each streamed to a callback that may cancel.

pub mod generate;
pub mod inputs;
pub mod processor;
pub mod template;

use std::ops::ControlFlow;

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbaImage;

pub use generate::GenerationConfig;
pub use inputs::{MultimodalPrompt, VisionTokenIds};
pub use processor::{ImageProcessorConfig, VisionInput, preprocess};
pub use template::CaptionLanguage;

use crate::error::{Error, Result};
use crate::model::text_encoder::{
    self, QwenLanguageModel, QwenTextConfig, RopePositions, TEXT_ENCODER_FOLDER,
};
use crate::model::vision::{VisionConfig, VisionTower};
use crate::text::{PromptEncoder, QwenTokenizer, TOKENIZER_FOLDER, TextEncoderLoad};
use crate::weights::{Checkpoint, Precision, WeightSource, read_json};

/// The pipeline's `max_new_tokens` for captions.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// Python's `str.strip()` (whitespace as `str.isspace`: Unicode White_Space plus the
/// separators U+001C..U+001F).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// How to caption.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionOptions {
    /// Template (`use_en_prompt`).
    pub language: CaptionLanguage,
    /// Most tokens to generate (512 in the pipeline).
    pub max_new_tokens: usize,
    /// Seed for the sampling case of [`GenerationConfig::choose`] (unused by greedy configs
    /// and by the real Qwen2.5-VL config).
    pub seed: u64,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            language: CaptionLanguage::English,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            seed: 0,
        }
    }
}

/// One generated token, as streamed to the callback.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionStep<'a> {
    /// 0-based index of this token.
    pub index: usize,
    /// `max_new_tokens`.
    pub max_new_tokens: usize,
    /// The token id.
    pub token: u32,
    /// Whether it is an end-of-sequence token (the last step).
    pub eos: bool,
    /// The caption so far: the new tokens decoded without special tokens (a multi-byte
    /// character cut in the middle shows as U+FFFD until its last byte arrives).
    pub text: &'a str,
}

/// The finished caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// The decoded, stripped caption (the prompt the pipeline goes on with).
    pub text: String,
    /// The generated ids (the eos token included when generation stopped on one).
    pub ids: Vec<u32>,
    /// The prompt that was fed (ids and positions).
    pub prompt: MultimodalPrompt,
}

/// The captioning models and settings of a Qwen-Image-Layered folder.
pub struct Captioner {
    /// `processor/` image settings.
    pub processor: ImageProcessorConfig,
    /// The `processor/` tokenizer (byte-level BPE with the chat special tokens; the same as
    /// `tokenizer/`).
    pub tokenizer: QwenTokenizer,
    /// `text_encoder/` `visual.*`.
    pub vision: VisionTower,
    /// `text_encoder/` language model with `lm_head`.
    pub lm: QwenLanguageModel,
    /// `text_encoder/generation_config.json`.
    pub generation: GenerationConfig,
    /// `image_token_id` of `text_encoder/config.json`.
    pub token_ids: VisionTokenIds,
}

impl Captioner {
    /// Loads `processor/` (image settings and tokenizer; the tokenizer from `tokenizer/` when
    /// `processor/` has none) and `text_encoder/` (config, generation config, vision tower, language model with
    /// `lm_head`) from a Qwen-Image-Layered folder onto `device`.
    ///
    /// Everything in f32 with a resident token embedding; see [`load_with`](Self::load_with).
    pub async fn load<S: WeightSource>(source: &S, device: &Device) -> Result<Self> {
        Self::load_with(source, device, TextEncoderLoad::default()).await
    }

    /// [`load`](Self::load) with the linear layers of `text_encoder/` (the vision tower's,
    /// the language model's and `lm_head`) in `options.precision` and the token embedding
    /// resident or gathered from storage (then caption with
    /// [`caption_from`](Self::caption_from)).
    pub async fn load_with<S: WeightSource>(
        source: &S,
        device: &Device,
        options: TextEncoderLoad,
    ) -> Result<Self> {
        let processor = ImageProcessorConfig::load(source, "processor").await?;
        let tokenizer = if source.exists("processor/tokenizer.json").await?
            || source.exists("processor/vocab.json").await?
        {
            QwenTokenizer::load(source, "processor").await?
        } else {
            QwenTokenizer::load(source, TOKENIZER_FOLDER).await?
        };
        let cfg_file = "text_encoder/config.json";
        let cfg: serde_json::Value = read_json(source, cfg_file).await?;
        let image = cfg
            .get("image_token_id")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::Config {
                file: cfg_file.into(),
                reason: "no integer image_token_id".into(),
            })? as u32;
        let vision_cfg = VisionConfig::from_model_config(&cfg, cfg_file)?;
        if vision_cfg.patch_size != processor.patch_size
            || vision_cfg.spatial_merge_size != processor.merge_size
            || vision_cfg.temporal_patch_size != processor.temporal_patch_size
        {
            return Err(Error::Config {
                file: cfg_file.into(),
                reason: format!(
                    "vision patch/merge/temporal sizes {}/{}/{} differ from the processor's {}/{}/{}",
                    vision_cfg.patch_size,
                    vision_cfg.spatial_merge_size,
                    vision_cfg.temporal_patch_size,
                    processor.patch_size,
                    processor.merge_size,
                    processor.temporal_patch_size
                ),
            });
        }
        // One loader for the whole checkpoint: the vision tower and the language model (with
        // lm_head) take their tensors, and `finish` refuses anything left over.
        // (Its stored quantized copy for the precision when there is one.)
        let weights = Checkpoint::open(source, TEXT_ENCODER_FOLDER, options.precision).await?;
        let text_cfg = QwenTextConfig::from_json(&cfg, cfg_file)?;
        let mut l = weights
            .loader(source, device)
            .with_precision(options.precision);
        let vision = VisionTower::load(&mut l, "visual.", vision_cfg).await?;
        let lm = QwenLanguageModel::load_with(&text_cfg, &weights, &mut l, options.options(true))
            .await?;
        l.finish()?;
        let text_eos: Vec<u32> = match cfg.get("text_config").and_then(|t| t.get("eos_token_id")) {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        let gen_file = "text_encoder/generation_config.json";
        let generation = if source.exists(gen_file).await? {
            GenerationConfig::from_json(read_json(source, gen_file).await?, gen_file, &text_eos)?
        } else {
            GenerationConfig {
                do_sample: false,
                eos_token_ids: text_eos,
                ..GenerationConfig::default()
            }
        };
        Ok(Self {
            processor,
            tokenizer,
            vision,
            lm,
            generation,
            token_ids: VisionTokenIds { image },
        })
    }

    /// Whether `source` (a Qwen-Image-Layered folder) holds what [`Captioner::load`] needs:
    /// the processor settings (`processor/processor_config.json` or
    /// `processor/preprocessor_config.json`) and the vision tower's weights (`visual.*` in
    /// `text_encoder/`, in its stored copy for `precision` when there is one). Reads only
    /// small files and the weight headers.
    pub async fn available<S: WeightSource>(source: &S, precision: Precision) -> Result<bool> {
        let processor = source.exists("processor/processor_config.json").await?
            || source.exists("processor/preprocessor_config.json").await?;
        if !processor {
            return Ok(false);
        }
        let weights = Checkpoint::open(source, TEXT_ENCODER_FOLDER, precision).await?;
        Ok(weights.keys().into_iter().any(text_encoder::is_vision_key))
    }

    /// A prompt encoder that shares this captioner's language model (its weights are not
    /// copied: Burn tensors are reference-counted), with `tokenizer` (the pipeline's
    /// `tokenizer/`).
    pub fn prompt_encoder(&self, tokenizer: QwenTokenizer) -> Result<PromptEncoder> {
        PromptEncoder::new(tokenizer, self.lm.clone())
    }

    /// The template's token ids (special tokens matched, nothing added), one image token.
    pub fn template_ids(&self, language: CaptionLanguage) -> Result<Vec<u32>> {
        self.tokenizer.encode(language.template())
    }

    /// The new tokens as text (`skip_special_tokens=True`, no clean-up), not stripped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true)
    }

    /// The processor's output and the expanded prompt for `image`.
    pub fn prepare(
        &self,
        image: &RgbaImage,
        language: CaptionLanguage,
    ) -> Result<(VisionInput, MultimodalPrompt)> {
        let vi = preprocess(image, &self.processor)?;
        let prompt = MultimodalPrompt::new(
            &self.template_ids(language)?,
            self.token_ids,
            vi.grid_thw,
            self.processor.merge_size,
        )?;
        Ok((vi, prompt))
    }

    /// The prompt embeddings: token embeddings with the vision tower's output in place of the
    /// image tokens (a resident token embedding; see
    /// [`prompt_embeds_from`](Self::prompt_embeds_from)).
    ///
    /// - returns `[1, S, D]`
    pub fn prompt_embeds(&self, vi: &VisionInput, prompt: &MultimodalPrompt) -> Result<Tensor<3>> {
        let image = self.image_features(vi, prompt)?;
        let s = prompt.input_ids.len();
        let ids: Vec<i64> = prompt.input_ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, s]), &self.lm.device());
        let text = self.lm.embed(ids)?; // [1, S, D]
        Ok(splice(text, image, prompt))
    }

    /// [`prompt_embeds`](Self::prompt_embeds) with the token embedding resident or gathered
    /// from `source` (the source the captioner was loaded from).
    ///
    /// - returns `[1, S, D]`
    pub async fn prompt_embeds_from<S: WeightSource>(
        &self,
        source: &S,
        vi: &VisionInput,
        prompt: &MultimodalPrompt,
    ) -> Result<Tensor<3>> {
        let image = self.image_features(vi, prompt)?;
        let text = self.lm.embed_from(source, &prompt.input_ids).await?; // [1, S, D]
        Ok(splice(text, image, prompt))
    }

    /// The vision tower's output for the image tokens: `[n_img, D]`, checked against the
    /// prompt's image token count and the language model's width.
    fn image_features(&self, vi: &VisionInput, prompt: &MultimodalPrompt) -> Result<Tensor<2>> {
        let pv = Tensor::<2>::from_data(
            TensorData::new(vi.pixel_values.clone(), [vi.patches(), vi.patch_dim]),
            &self.lm.device(),
        );
        let image = self.vision.forward(pv, vi.grid_thw)?; // [n_img, D]
        let [n_img, d] = image.dims();
        if n_img != prompt.image_tokens || d != self.lm.config().hidden_size {
            return Err(Error::Input {
                model: "Qwen2_5_VLModel",
                reason: format!(
                    "Image features and image tokens do not match: tokens {}, features [{n_img}, {d}] \
                     (language model width {})",
                    prompt.image_tokens,
                    self.lm.config().hidden_size
                ),
            });
        }
        Ok(image)
    }

    /// Captions `image` (the pipeline's resized RGBA `prompt_image`): greedy (or what
    /// `generation_config.json` asks for) decoding with a key/value cache, up to
    /// `max_new_tokens` or an eos token. `on_token` sees every token; `Break` cancels with
    /// [`Error::Cancelled`]. Needs a resident token embedding; see
    /// [`caption_from`](Self::caption_from).
    pub async fn caption(
        &self,
        image: &RgbaImage,
        options: &CaptionOptions,
        on_token: impl FnMut(&CaptionStep<'_>) -> ControlFlow<()>,
    ) -> Result<Caption> {
        self.generate(
            None::<&crate::weights::MemorySource>,
            image,
            options,
            on_token,
        )
        .await
    }

    /// [`caption`](Self::caption) with the token embedding resident or gathered from `source`
    /// (the source the captioner was loaded from): the prompt's rows and then each generated
    /// token's row are read when not read before.
    pub async fn caption_from<S: WeightSource>(
        &self,
        source: &S,
        image: &RgbaImage,
        options: &CaptionOptions,
        on_token: impl FnMut(&CaptionStep<'_>) -> ControlFlow<()>,
    ) -> Result<Caption> {
        self.generate(Some(source), image, options, on_token).await
    }

    /// The token embeddings of `ids`: from `source` when given, else from the resident table.
    ///
    /// - ids: `L` → `[1, L, D]`
    async fn embed<S: WeightSource>(&self, source: Option<&S>, ids: &[u32]) -> Result<Tensor<3>> {
        match source {
            Some(source) => self.lm.embed_from(source, ids).await,
            None => {
                let n = ids.len();
                let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
                self.lm.embed(Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [1, n]),
                    &self.lm.device(),
                ))
            }
        }
    }

    async fn generate<S: WeightSource>(
        &self,
        source: Option<&S>,
        image: &RgbaImage,
        options: &CaptionOptions,
        mut on_token: impl FnMut(&CaptionStep<'_>) -> ControlFlow<()>,
    ) -> Result<Caption> {
        let (vi, prompt) = self.prepare(image, options.language)?;
        let device = self.lm.device();
        let text = self.embed(source, &prompt.input_ids).await?; // [1, S, D]
        let embeds = splice(text, self.image_features(&vi, &prompt)?, &prompt);
        // The prompt and every generated token but the last (which is never fed back).
        let capacity = prompt.input_ids.len() + options.max_new_tokens.saturating_sub(1);
        let mut cache = self.lm.new_cache(capacity);
        let mut hidden = self
            .lm
            .forward_embeds(embeds, &prompt.positions, Some(&mut cache))?;
        let mut seen = prompt.input_ids.clone();
        let mut ids: Vec<u32> = Vec::new();
        let mut rng = generate::SplitMix64::new(options.seed);
        for index in 0..options.max_new_tokens {
            let s = hidden.dims()[1];
            let logits = self.lm.logits(hidden.narrow(1, s - 1, 1))?; // [1, 1, V]
            let mut row = crate::gpu::read_f32(logits, "caption logits", &device).await?;
            let token = self.generation.choose(&mut row, &seen, &mut rng);
            ids.push(token);
            seen.push(token);
            let eos = self.generation.is_eos(token);
            let text = self.decode(&ids)?;
            let step = CaptionStep {
                index,
                max_new_tokens: options.max_new_tokens,
                token,
                eos,
                text: &text,
            };
            if on_token(&step).is_break() {
                return Err(Error::Cancelled {
                    at: format!(
                        "after caption token {} of at most {}",
                        index + 1,
                        options.max_new_tokens
                    ),
                });
            }
            if eos || index + 1 == options.max_new_tokens {
                break;
            }
            let next = self.embed(source, &[token]).await?; // [1, 1, D]
            let pos = RopePositions::text(prompt.generated_position(index), 1);
            hidden = self.lm.forward_embeds(next, &pos, Some(&mut cache))?;
        }
        let text = py_strip(&self.decode(&ids)?).to_owned();
        Ok(Caption { text, ids, prompt })
    }
}

/// The token embeddings `text` `[1, S, D]` with `image` `[n_img, D]` in place of the prompt's
/// image tokens → `[1, S, D]`.
fn splice(text: Tensor<3>, image: Tensor<2>, prompt: &MultimodalPrompt) -> Tensor<3> {
    let s = prompt.input_ids.len();
    let (a, n) = (prompt.image_start, prompt.image_tokens);
    let mut parts = Vec::with_capacity(3);
    if a > 0 {
        parts.push(text.clone().narrow(1, 0, a));
    }
    parts.push(image.unsqueeze_dim::<3>(0));
    if a + n < s {
        parts.push(text.narrow(1, a + n, s - a - n));
    }
    Tensor::cat(parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strip() {
        assert_eq!(py_strip("\u{1f} a\u{a0}b \n\u{3000}"), "a\u{a0}b");
    }
}
