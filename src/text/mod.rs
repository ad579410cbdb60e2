//! The text side of Qwen-Image-Layered: the Qwen2 tokenizer and prompt encoding
//! (`prompt` → `prompt_embeds`) with the language model of [`crate::model::text_encoder`].
//! Everything here compiles for wasm32 and is tested natively.

pub mod prompt;
pub mod tokenizer;

pub use crate::model::text_encoder::EmbeddingMode;
pub use prompt::{
    DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_NEGATIVE_PROMPT, MAX_SEQUENCE_LENGTH_LIMIT,
    PROMPT_TEMPLATE, PROMPT_TEMPLATE_ENCODE_START_IDX, PromptEncoder, TOKENIZER_FOLDER,
    TextEncoderLoad, format_prompt, needs_caption,
};
pub use tokenizer::{QWEN2_PRETOKENIZE_REGEX, QwenTokenizer};
