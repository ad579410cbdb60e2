//! The language-model part of `text_encoder/config.json` (`Qwen2_5_VLConfig`).
//!
//! transformers ≥ 5 writes the language model's settings under `text_config` with the RoPE
//! settings in `text_config.rope_parameters`; the older flat layout (transformers 4.x, the
//! official Qwen2.5-VL and Qwen-Image repositories) has them at the top level with
//! `rope_theta` and `rope_scaling`. Both are read.

use serde_json::Value;

use crate::error::{Error, Result};

/// The text encoder's folder inside a diffusers pipeline folder.
pub const TEXT_ENCODER_FOLDER: &str = "text_encoder";

/// What the language model needs from the config. Real Qwen2.5-VL-7B values in brackets.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenTextConfig {
    /// Rows of `embed_tokens` and `lm_head` [152064].
    pub vocab_size: usize,
    /// Model width `D` [3584].
    pub hidden_size: usize,
    /// SwiGLU width [18944].
    pub intermediate_size: usize,
    /// Decoder layers [28].
    pub num_hidden_layers: usize,
    /// Query heads [28].
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention) [4].
    pub num_key_value_heads: usize,
    /// Head size: `head_dim` if given, else `hidden_size / num_attention_heads` [128].
    pub head_dim: usize,
    /// RMSNorm eps [1e-6].
    pub rms_norm_eps: f64,
    /// RoPE base [1e6].
    pub rope_theta: f64,
    /// M-RoPE split of the `head_dim / 2` frequencies over the (time, height, width) position
    /// axes [16, 24, 24]; irrelevant for text-only input (all three axes equal).
    pub mrope_section: [usize; 3],
    /// Whether `lm_head` shares `embed_tokens`' weight [false].
    pub tie_word_embeddings: bool,
}

impl QwenTextConfig {
    /// Parses `text_encoder/config.json` (`file` names it in errors).
    pub fn from_json(value: &Value, file: &str) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            file: file.to_owned(),
            reason,
        };
        // transformers 5: everything under text_config; 4.x: flat.
        let text = value.get("text_config").unwrap_or(value);
        let get = |key: &str| text.get(key).or_else(|| value.get(key));
        let usize_of = |key: &str| -> Result<usize> {
            get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("missing or non-integer \"{key}\"")))
        };
        let num_attention_heads = usize_of("num_attention_heads")?;
        let hidden_size = usize_of("hidden_size")?;
        let head_dim = match get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => return Err(bad("num_attention_heads is 0".into())),
        };
        // RoPE: rope_parameters (v5) or rope_theta + rope_scaling (v4).
        let rope = get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| get("rope_scaling").filter(|v| v.is_object()));
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| get("rope_theta"))
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no rope_theta (in rope_parameters or at the top)".into()))?;
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if !matches!(rope_type, "default" | "mrope") {
            return Err(bad(format!(
                "rope_type {rope_type:?} is not supported (only default / mrope)"
            )));
        }
        let mrope_section = match rope.and_then(|r| r.get("mrope_section")) {
            None => [16, 24, 24],
            Some(v) => {
                let s: Vec<usize> = serde_json::from_value(v.clone())
                    .map_err(|e| bad(format!("mrope_section {v}: {e}")))?;
                <[usize; 3]>::try_from(s.as_slice())
                    .map_err(|_| bad(format!("mrope_section {v} must have 3 entries")))?
            }
        };
        let act = get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(bad(format!(
                "hidden_act {act:?} is not supported (silu only)"
            )));
        }
        if get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(bad("use_sliding_window = true is not supported".into()));
        }
        let config = Self {
            vocab_size: usize_of("vocab_size")?,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_hidden_layers: usize_of("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: get("num_key_value_heads")
                .and_then(Value::as_u64)
                .map_or(num_attention_heads, |v| v as usize),
            head_dim,
            rms_norm_eps: get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            // The composite config carries it at the top; default false as Qwen2.5-VL's.
            tie_word_embeddings: value
                .get("tie_word_embeddings")
                .or_else(|| text.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        config.validate(file)?;
        Ok(config)
    }

    /// Checks the sizes against each other; `file` names the config in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                file: file.to_owned(),
                reason,
            })
        };
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        if self.mrope_section.iter().sum::<usize>() != self.head_dim / 2 {
            return bad(format!(
                "mrope_section {:?} must sum to head_dim / 2 = {}",
                self.mrope_section,
                self.head_dim / 2
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 {
            return bad("vocab_size, hidden_size and intermediate_size must be positive".into());
        }
        Ok(())
    }

    /// `num_attention_heads / num_key_value_heads`: query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_v5_nested_and_the_v4_flat_layout() {
        let v5 = serde_json::json!({
            "text_config": {
                "vocab_size": 288, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6, "hidden_act": "silu", "use_sliding_window": false,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
            },
            "tie_word_embeddings": false
        });
        let c = QwenTextConfig::from_json(&v5, "v5").expect("v5 layout");
        assert_eq!(
            (c.head_dim, c.kv_groups(), c.mrope_section),
            (16, 2, [2, 3, 3])
        );
        assert_eq!(c.rope_theta, 1e6);

        // The official Qwen2.5-VL-7B config.json (transformers 4.x, flat).
        let v4 = serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": false,
            "use_sliding_window": false, "vocab_size": 152064,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": 32, "hidden_size": 1280}
        });
        let c = QwenTextConfig::from_json(&v4, "v4").expect("v4 layout");
        assert_eq!((c.hidden_size, c.head_dim, c.kv_groups()), (3584, 128, 7));
        assert_eq!((c.rope_theta, c.mrope_section), (1e6, [16, 24, 24]));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let mut v = serde_json::json!({
            "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "rope_theta": 1e4,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 1]}
        });
        let err = QwenTextConfig::from_json(&v, "c.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mrope_section [1, 1, 1] must sum to head_dim / 2 = 2"),
            "{err}"
        );
        v["rope_scaling"] = serde_json::json!({"type": "yarn"});
        let err = QwenTextConfig::from_json(&v, "c.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"yarn\" is not supported"), "{err}");
    }
}
