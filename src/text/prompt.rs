//! Prompt encoding as `QwenImageLayeredPipeline.encode_prompt` does it (diffusers 0.42.1,
//! `pipeline_qwenimage_layered.py:222-223, 250-334`):
//!
//! 1. the prompt goes into [`PROMPT_TEMPLATE`] (a system message, then the prompt as the user
//!    turn, then the assistant header);
//! 2. the whole text is tokenized (no truncation) and run through the text encoder; its
//!    post-final-norm last hidden state is taken (`hidden_states[-1]`);
//! 3. the first [`PROMPT_TEMPLATE_ENCODE_START_IDX`] = 34 positions (the template's system
//!    part under the real tokenizer) are dropped;
//! 4. the result is truncated to `max_sequence_length` tokens (the pipeline's default 512,
//!    at most 1024).
//!
//! The text encoder is causal, so position `i`'s hidden state depends only on tokens `0..=i`:
//! running only the first `34 + max_sequence_length` tokens gives exactly the kept positions,
//! and that is what [`PromptEncoder::encode`] does.
//!
//! For batch 1 the mask is all ones, which the pipeline turns into `None`: the embeddings are
//! used unpadded and unmasked.
//!
//! [`TextEncoderLoad`] chooses the text encoder's precision and whether its token embedding is
//! uploaded ([`PromptEncoder::encode`] then works without the source) or gathered from storage
//! at encode time ([`PromptEncoder::encode_from`], which takes the source).

use std::cell::RefCell;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::tokenizer::QwenTokenizer;
use crate::error::{Error, Result};
use crate::model::text_encoder::{EmbeddingMode, LoadOptions, QwenLanguageModel, RopePositions};
use crate::weights::{Precision, WeightSource};

/// `prompt_template_encode`: `{}` is replaced by the prompt.
pub const PROMPT_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";

/// `prompt_template_encode_start_idx`: leading template tokens dropped from the embeddings.
pub const PROMPT_TEMPLATE_ENCODE_START_IDX: usize = 34;

/// `__call__`'s default `max_sequence_length`.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// The largest `max_sequence_length` the pipeline accepts (`check_inputs`).
pub const MAX_SEQUENCE_LENGTH_LIMIT: usize = 1024;

/// The negative prompt of the official app and model card (a single space).
pub const DEFAULT_NEGATIVE_PROMPT: &str = " ";

/// The tokenizer folder of a diffusers pipeline folder.
pub const TOKENIZER_FOLDER: &str = "tokenizer";

/// `PROMPT_TEMPLATE.format(prompt)`.
pub fn format_prompt(prompt: &str) -> String {
    PROMPT_TEMPLATE.replacen("{}", prompt, 1)
}

/// Whether the pipeline would caption the image instead of using `prompt`
/// (`prompt is None or prompt == "" or prompt == " "`, `:701`).
pub fn needs_caption(prompt: &str) -> bool {
    prompt.is_empty() || prompt == " "
}

/// How the text encoder is loaded for prompt encoding (and captioning): the precision of its
/// linear layers and where its token embedding is kept.
///
/// The default (f32, resident embedding) is the reference-exact setting of the CPU tests and
/// the CLI; the browser uses [`TextEncoderLoad::gathered`] with the registry's precision,
/// because the real `152064 × 3584` embedding (2.18 GB in f32) does not fit one WebGPU
/// buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextEncoderLoad {
    /// The precision of the linear layers (attention and MLP projections; `lm_head` and the
    /// vision tower's when captioning). A layer whose `d_in` is not a multiple of 32 stays
    /// f32; norms and the token embedding are always f32.
    pub precision: Precision,
    /// Where the token embedding is kept.
    pub embedding: EmbeddingMode,
    /// The most bytes one device buffer of a linear weight may hold (larger ones are split by
    /// rows; the memory plan's limit). `None`: no limit.
    pub max_part_bytes: Option<u64>,
}

impl TextEncoderLoad {
    /// `precision` with the token embedding gathered from storage (what the browser does).
    pub fn gathered(precision: Precision) -> Self {
        Self {
            precision,
            embedding: EmbeddingMode::Gathered,
            max_part_bytes: None,
        }
    }

    /// The language model's [`LoadOptions`] with `lm_head` as given.
    pub fn options(self, lm_head: bool) -> LoadOptions {
        LoadOptions {
            lm_head,
            precision: self.precision,
            embedding: self.embedding,
            max_part_bytes: self.max_part_bytes,
        }
    }
}

/// Tokenizer + text encoder: prompt → `prompt_embeds`.
#[derive(Debug)]
pub struct PromptEncoder {
    /// The Qwen2 tokenizer (`tokenizer/`).
    pub tokenizer: QwenTokenizer,
    /// The language model (`text_encoder/`, without `lm_head`).
    pub text_encoder: QwenLanguageModel,
    /// Embeddings of [`DEFAULT_NEGATIVE_PROMPT`] at the largest length, once computed (a
    /// cell: encoding takes `&self`, so an async caller holds no mutable borrow across awaits).
    negative: RefCell<Option<Tensor<3>>>,
}

impl PromptEncoder {
    /// Loads `tokenizer/` and `text_encoder/` (language model only, f32, resident embedding)
    /// of a pipeline folder.
    pub async fn load<S: WeightSource>(source: &S, device: &Device) -> Result<Self> {
        Self::load_with(source, device, TextEncoderLoad::default()).await
    }

    /// [`load`](Self::load) with the text encoder in `options`' precision and embedding mode
    /// (a gathered embedding is encoded with [`encode_from`](Self::encode_from)).
    pub async fn load_with<S: WeightSource>(
        source: &S,
        device: &Device,
        options: TextEncoderLoad,
    ) -> Result<Self> {
        let tokenizer = QwenTokenizer::load(source, TOKENIZER_FOLDER).await?;
        let text_encoder = QwenLanguageModel::load(source, device, options.options(false)).await?;
        Self::new(tokenizer, text_encoder)
    }

    /// Assembles an encoder, checking that the tokenizer knows the template's chat markers as
    /// added tokens and that its ids fit the model's vocabulary.
    pub fn new(tokenizer: QwenTokenizer, text_encoder: QwenLanguageModel) -> Result<Self> {
        let vocab = text_encoder.config().vocab_size;
        for marker in ["<|im_start|>", "<|im_end|>"] {
            match tokenizer.token_to_id(marker) {
                Some(id) if tokenizer.is_added_token(marker) && (id as usize) < vocab => {}
                other => {
                    return Err(Error::Input {
                        model: "PromptEncoder",
                        reason: format!(
                            "the tokenizer must have {marker} as an added token inside the text \
                             encoder's vocabulary ({vocab}); it has {other:?}"
                        ),
                    });
                }
            }
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            negative: RefCell::new(None),
        })
    }

    /// The ids of the templated prompt (all of them: `S_ids`).
    pub fn input_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(&format_prompt(prompt))
    }

    /// `prompt_embeds` of `prompt`: `[1, min(S_ids − 34, max_sequence_length), D]` on the
    /// encoder's device, with a resident token embedding (a gathered one is an error: use
    /// [`encode_from`](Self::encode_from)).
    ///
    /// `max_sequence_length` must be in `1..=1024`. The empty prompt and `" "` are encoded as
    /// given (the pipeline would caption the image instead when they are the *prompt*; as the
    /// negative prompt `" "` is ordinary text). The embeddings of `" "` are computed once and
    /// kept.
    pub fn encode(&self, prompt: &str, max_sequence_length: usize) -> Result<Tensor<3>> {
        check_max_len(max_sequence_length)?;
        if let Some(t) = self.cached_negative(prompt, max_sequence_length) {
            return Ok(t);
        }
        let run_len = self.run_len(prompt, max_sequence_length);
        let ids = self.run_ids(prompt, run_len)?;
        let n = ids.len();
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &self.device());
        let embeds = self.text_encoder.embed(ids)?; // [1, run, D]
        self.finish(prompt, max_sequence_length, embeds)
    }

    /// [`encode`](Self::encode) with the token embedding resident or gathered: the rows of the
    /// prompt's ids are read from `source` (the source the encoder was loaded from) when the
    /// embedding is gathered and they were not read before; a resident embedding does not read
    /// `source`. Both give bit-identical embeddings.
    pub async fn encode_from<S: WeightSource>(
        &self,
        source: &S,
        prompt: &str,
        max_sequence_length: usize,
    ) -> Result<Tensor<3>> {
        check_max_len(max_sequence_length)?;
        if let Some(t) = self.cached_negative(prompt, max_sequence_length) {
            return Ok(t);
        }
        let run_len = self.run_len(prompt, max_sequence_length);
        let ids = self.run_ids(prompt, run_len)?;
        let embeds = self.text_encoder.embed_from(source, &ids).await?; // [1, run, D]
        self.finish(prompt, max_sequence_length, embeds)
    }

    /// A run's prompt and, for true CFG, its negative prompt, each with
    /// [`encode_from`](Self::encode_from).
    ///
    /// - returns `[1, L, D]` and `[1, L', D]` (`L, L' ≤ max_sequence_length`)
    pub async fn encode_pair_from<S: WeightSource>(
        &self,
        source: &S,
        prompt: &str,
        negative: Option<&str>,
        max_sequence_length: usize,
    ) -> Result<(Tensor<3>, Option<Tensor<3>>)> {
        let embeds = self
            .encode_from(source, prompt, max_sequence_length)
            .await?;
        let negative = match negative {
            Some(text) => Some(self.encode_from(source, text, max_sequence_length).await?),
            None => None,
        };
        Ok((embeds, negative))
    }

    /// The `max_sequence_length` a prompt is run at: the largest for the negative prompt,
    /// whose embeddings are kept and cut.
    fn run_len(&self, prompt: &str, max_sequence_length: usize) -> usize {
        if prompt == DEFAULT_NEGATIVE_PROMPT {
            MAX_SEQUENCE_LENGTH_LIMIT
        } else {
            max_sequence_length
        }
    }

    /// The kept negative prompt's embeddings cut to `max_sequence_length`, if `prompt` is it
    /// and it was computed.
    fn cached_negative(&self, prompt: &str, max_sequence_length: usize) -> Option<Tensor<3>> {
        if prompt != DEFAULT_NEGATIVE_PROMPT {
            return None;
        }
        let full = self.negative.borrow().clone()?;
        let len = full.dims()[1].min(max_sequence_length);
        Some(full.narrow(1, 0, len))
    }

    /// The ids that are run: the templated prompt's first `34 + max_sequence_length` (the
    /// model is causal: later tokens never change earlier positions), checked against the
    /// template's drop and the vocabulary.
    fn run_ids(&self, prompt: &str, max_sequence_length: usize) -> Result<Vec<u32>> {
        let mut ids = self.input_ids(prompt)?;
        let drop = PROMPT_TEMPLATE_ENCODE_START_IDX;
        if ids.len() <= drop {
            return Err(Error::Input {
                model: "PromptEncoder",
                reason: format!(
                    "the templated prompt has {} tokens, not more than the {drop} dropped",
                    ids.len()
                ),
            });
        }
        let vocab = self.text_encoder.config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input {
                model: "PromptEncoder",
                reason: format!(
                    "token id {bad} is outside the text encoder's vocabulary ({vocab})"
                ),
            });
        }
        ids.truncate(drop + max_sequence_length);
        Ok(ids)
    }

    /// Runs the model over the input embeddings `[1, run, D]`, drops the template's 34
    /// positions, and keeps the negative prompt's result.
    fn finish(
        &self,
        prompt: &str,
        max_sequence_length: usize,
        embeds: Tensor<3>,
    ) -> Result<Tensor<3>> {
        let run = embeds.dims()[1];
        let drop = PROMPT_TEMPLATE_ENCODE_START_IDX;
        let positions = RopePositions::text(0, run);
        let hidden = self.text_encoder.forward_embeds(embeds, &positions, None)?; // [1, run, D]
        let out = hidden.narrow(1, drop, run - drop);
        if prompt == DEFAULT_NEGATIVE_PROMPT {
            *self.negative.borrow_mut() = Some(out.clone());
            let len = (run - drop).min(max_sequence_length);
            return Ok(out.narrow(1, 0, len));
        }
        Ok(out)
    }

    /// The device the text encoder lives on.
    pub fn device(&self) -> Device {
        self.text_encoder.device()
    }
}

fn check_max_len(max_sequence_length: usize) -> Result<()> {
    if (1..=MAX_SEQUENCE_LENGTH_LIMIT).contains(&max_sequence_length) {
        return Ok(());
    }
    Err(Error::Input {
        model: "PromptEncoder",
        reason: format!(
            "max_sequence_length {max_sequence_length} must be in 1..={MAX_SEQUENCE_LENGTH_LIMIT}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_caption_rule() {
        let t = format_prompt("a {cat}");
        assert!(t.starts_with("<|im_start|>system\nDescribe the image"));
        assert!(t.ends_with("<|im_start|>user\na {cat}<|im_end|>\n<|im_start|>assistant\n"));
        assert!(needs_caption("") && needs_caption(" "));
        assert!(!needs_caption("  ") && !needs_caption("a"));
    }
}
