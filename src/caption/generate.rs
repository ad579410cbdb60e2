//! Next-token choice as transformers 5.24 `generate` makes it from a
//! `text_encoder/generation_config.json`.
//!
//! The logits of each step go through, in transformers' order: the repetition penalty
//! (`RepetitionPenaltyLogitsProcessor`: every token id seen so far, prompt included, has its
//! logit divided by the penalty when positive and multiplied when negative); then, only with
//! `do_sample`, temperature, top-k and top-p (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
//! `TopPLogitsWarper`) and a draw from the softmax. Without `do_sample` the choice is the
//! argmax (greedy; the first index on ties, like `torch.argmax`).
//!
//! The real Qwen2.5-VL config samples with `top_k = 1` (and `top_p = 0.001`, `temperature
//! 0.1`, `repetition_penalty 1.05`): exactly one token survives top-k, so the draw is certain
//! and the result is the argmax of the penalised logits. That is what the reference pipeline
//! gets, and what this module computes without any randomness. A config that leaves several
//! candidates is sampled with a seeded generator of this crate: reproducible, but not torch's
//! random stream.

use serde::Deserialize;

use crate::error::{Error, Result};

/// The settings of `generation_config.json` that decide the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Sample instead of taking the argmax.
    pub do_sample: bool,
    /// Softmax temperature (sampling only).
    pub temperature: f32,
    /// Keep the `top_k` largest logits (sampling only; 0 = off; transformers' default 50).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (sampling only).
    pub top_p: f32,
    /// `repetition_penalty` (1 = off).
    pub repetition_penalty: f32,
    /// Ids that end generation.
    pub eos_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    /// transformers' `GenerationConfig()` defaults, no eos.
    fn default() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            eos_token_ids: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct Raw {
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    eos_token_id: Option<OneOrMany>,
    num_beams: Option<usize>,
    no_repeat_ngram_size: Option<usize>,
}

impl GenerationConfig {
    /// Parses a `generation_config.json`; `default_eos` is used when it names no eos (the
    /// model config's `eos_token_id`). Settings this port does not implement (beam search,
    /// n-gram blocking) are refused with the file and value.
    pub fn from_json(value: serde_json::Value, file: &str, default_eos: &[u32]) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            file: file.to_owned(),
            reason,
        };
        let raw: Raw = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if let Some(n) = raw.num_beams.filter(|&n| n > 1) {
            return Err(bad(format!("num_beams {n}: beam search is not supported")));
        }
        if let Some(n) = raw.no_repeat_ngram_size.filter(|&n| n > 0) {
            return Err(bad(format!("no_repeat_ngram_size {n} is not supported")));
        }
        let d = Self::default();
        let cfg = Self {
            do_sample: raw.do_sample.unwrap_or(d.do_sample),
            temperature: raw.temperature.unwrap_or(d.temperature),
            top_k: raw.top_k.unwrap_or(d.top_k),
            top_p: raw.top_p.unwrap_or(d.top_p),
            repetition_penalty: raw.repetition_penalty.unwrap_or(d.repetition_penalty),
            eos_token_ids: match raw.eos_token_id {
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
                None => default_eos.to_vec(),
            },
        };
        if cfg.repetition_penalty <= 0.0 || (cfg.do_sample && cfg.temperature <= 0.0) {
            return Err(bad(format!(
                "repetition_penalty {} and temperature {} must be positive",
                cfg.repetition_penalty, cfg.temperature
            )));
        }
        Ok(cfg)
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Applies the repetition penalty to `logits` in place for every id in `seen`.
    pub fn penalise(&self, logits: &mut [f32], seen: &[u32]) {
        if self.repetition_penalty == 1.0 {
            return;
        }
        let p = self.repetition_penalty;
        // torch gathers all seen ids first, then scatters: a repeated id is penalised once.
        let mut done = vec![false; logits.len()];
        for &id in seen {
            let i = id as usize;
            if i < logits.len() && !done[i] {
                done[i] = true;
                let v = logits[i];
                logits[i] = if v < 0.0 { v * p } else { v / p };
            }
        }
    }

    /// The next token for one step's `logits` (`[vocab]`), given every id so far (`seen`:
    /// prompt and generated). `rng` is used only when sampling leaves more than one candidate.
    pub fn choose(&self, logits: &mut [f32], seen: &[u32], rng: &mut SplitMix64) -> u32 {
        self.penalise(logits, seen);
        if !self.do_sample {
            return argmax(logits);
        }
        for v in logits.iter_mut() {
            *v /= self.temperature;
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Descending by score; stable, so equal scores keep index order.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let mut keep = order.len();
        if self.top_k > 0 && self.top_k < keep {
            // Ties with the k-th score are kept, like `scores < topk(...)[-1]` masking.
            let kth = logits[order[self.top_k - 1]];
            keep = order.iter().take_while(|&&i| logits[i] >= kth).count();
        }
        let max = logits[order[0]];
        let probs: Vec<f64> = order[..keep]
            .iter()
            .map(|&i| ((logits[i] - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        if self.top_p < 1.0 {
            // Keep the most probable tokens until their mass exceeds top_p (at least one).
            let mut mass = 0.0;
            let mut n = 0;
            for p in &probs {
                n += 1;
                mass += p / total;
                if mass > self.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        if keep == 1 {
            return order[0] as u32;
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = rng.next_f64() * total;
        for (k, p) in probs[..keep].iter().enumerate() {
            if r < *p {
                return order[k] as u32;
            }
            r -= p;
        }
        order[keep - 1] as u32
    }
}

/// First index of the largest value (`torch.argmax`); NaN never wins.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A small deterministic generator (SplitMix64) for the sampling case.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next value in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_config_is_deterministic_and_penalised() {
        let cfg = GenerationConfig::from_json(
            serde_json::json!({"do_sample": true, "top_k": 1, "top_p": 0.001, "temperature": 0.1,
                               "repetition_penalty": 1.05, "eos_token_id": [151645, 151643]}),
            "generation_config.json",
            &[],
        )
        .unwrap();
        assert!(cfg.is_eos(151643) && cfg.is_eos(151645));
        let mut rng = SplitMix64::new(0);
        // Token 0 leads by less than the penalty takes away once it has been seen.
        let mut logits = vec![2.0, 1.95, -1.0];
        assert_eq!(cfg.choose(&mut logits.clone(), &[], &mut rng), 0);
        assert_eq!(cfg.choose(&mut logits, &[0, 0], &mut rng), 1);
        // Negative logits are multiplied.
        let mut l = vec![-1.0f32, -1.02];
        cfg.penalise(&mut l, &[0]);
        assert_eq!(l, vec![-1.05, -1.02]);
    }

    #[test]
    fn greedy_defaults_and_refusals() {
        let cfg = GenerationConfig::from_json(serde_json::json!({"eos_token_id": 258}), "g", &[])
            .unwrap();
        assert!(!cfg.do_sample);
        assert_eq!(cfg.eos_token_ids, vec![258]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -2.0]), 1);
        let cfg = GenerationConfig::from_json(serde_json::json!({}), "g", &[7]).unwrap();
        assert_eq!(cfg.eos_token_ids, vec![7]);
        assert!(
            GenerationConfig::from_json(serde_json::json!({"num_beams": 4}), "g", &[]).is_err()
        );
    }

    #[test]
    fn sampling_stays_inside_top_k() {
        let cfg = GenerationConfig {
            do_sample: true,
            top_k: 2,
            ..GenerationConfig::default()
        };
        let mut rng = SplitMix64::new(42);
        for _ in 0..50 {
            let t = cfg.choose(&mut [0.0, 5.0, 4.9, -3.0], &[], &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
    }
}
