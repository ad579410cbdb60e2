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

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::tokenizer::QwenTokenizer;
use crate::error::{Error, Result};
use crate::model::text_encoder::{LoadOptions, QwenLanguageModel};
use crate::weights::WeightSource;

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

/// Tokenizer + text encoder: prompt → `prompt_embeds`.
#[derive(Debug)]
pub struct PromptEncoder {
    /// The Qwen2 tokenizer (`tokenizer/`).
    pub tokenizer: QwenTokenizer,
    /// The language model (`text_encoder/`, without `lm_head`).
    pub text_encoder: QwenLanguageModel,
    /// Embeddings of [`DEFAULT_NEGATIVE_PROMPT`] at the largest length, once computed.
    negative: Option<Tensor<3>>,
}

impl PromptEncoder {
    /// Loads `tokenizer/` and `text_encoder/` (language model only) of a pipeline folder.
    pub async fn load<S: WeightSource>(source: &S, device: &Device) -> Result<Self> {
        let tokenizer = QwenTokenizer::load(source, TOKENIZER_FOLDER).await?;
        let text_encoder = QwenLanguageModel::load(source, device, LoadOptions::default()).await?;
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
            negative: None,
        })
    }

    /// The ids of the templated prompt (all of them: `S_ids`).
    pub fn input_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(&format_prompt(prompt))
    }

    /// `prompt_embeds` of `prompt`: `[1, min(S_ids − 34, max_sequence_length), D]` on the
    /// encoder's device.
    ///
    /// `max_sequence_length` must be in `1..=1024`. The empty prompt and `" "` are encoded as
    /// given (the pipeline would caption the image instead when they are the *prompt*; as the
    /// negative prompt `" "` is ordinary text). The embeddings of `" "` are computed once and
    /// kept.
    pub fn encode(&mut self, prompt: &str, max_sequence_length: usize) -> Result<Tensor<3>> {
        if !(1..=MAX_SEQUENCE_LENGTH_LIMIT).contains(&max_sequence_length) {
            return Err(Error::Input {
                model: "PromptEncoder",
                reason: format!(
                    "max_sequence_length {max_sequence_length} must be in 1..={MAX_SEQUENCE_LENGTH_LIMIT}"
                ),
            });
        }
        if prompt == DEFAULT_NEGATIVE_PROMPT {
            let full = match &self.negative {
                Some(t) => t.clone(),
                None => {
                    let t = self.encode_uncached(prompt, MAX_SEQUENCE_LENGTH_LIMIT)?;
                    self.negative = Some(t.clone());
                    t
                }
            };
            let len = full.dims()[1].min(max_sequence_length);
            return Ok(full.narrow(1, 0, len));
        }
        self.encode_uncached(prompt, max_sequence_length)
    }

    fn encode_uncached(&self, prompt: &str, max_sequence_length: usize) -> Result<Tensor<3>> {
        let ids = self.input_ids(prompt)?;
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
        // Causal model: later tokens never change earlier positions.
        let run = ids.len().min(drop + max_sequence_length);
        let ids: Vec<i64> = ids[..run].iter().map(|&i| i as i64).collect();
        let device = self.device();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, run]), &device);
        let hidden = self.text_encoder.forward(ids, None)?; // [1, run, D]
        Ok(hidden.narrow(1, drop, run - drop))
    }

    /// The device the text encoder lives on.
    pub fn device(&self) -> Device {
        self.text_encoder.model.embed_tokens.weight.device()
    }
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
