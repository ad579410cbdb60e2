//! `Qwen2_5_VLAttention`: causal grouped-query self-attention with q/k/v bias, no o_proj
//! bias, M-RoPE on queries and keys, and an optional key/value cache for generation.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>
//! (`Qwen2_5_VLAttention`; same code in 5.24.0).

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor};

use super::rope::{RopeTables, apply_rotary_pos_emb};
use crate::error::Result;
use crate::model::nn::Linear;
use crate::weights::{TensorLoader, WeightSource};

/// The keys and values one layer has seen so far (after RoPE, before the heads are repeated
/// for grouped-query attention).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// `[B, KVH, S_past, Dh]`, or `None` before the first call.
    pub key: Option<Tensor<4>>,
    /// `[B, KVH, S_past, Dh]`.
    pub value: Option<Tensor<4>>,
}

/// A key/value cache for all layers, for generation: every forward that is given the cache
/// appends its tokens' keys and values and attends over everything cached before them.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// One entry per decoder layer.
    pub layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
        }
    }

    /// Number of tokens cached (the sequence length seen so far).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that `tokens` more tokens were appended to every layer.
    pub(super) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

/// Self-attention of one decoder layer.
///
/// Checkpoint keys under `….self_attn.`: `q_proj` (`[H·Dh, D]` + bias), `k_proj` and `v_proj`
/// (`[KVH·Dh, D]` + bias), `o_proj` (`[D, H·Dh]`, no bias).
#[derive(Module, Debug)]
pub struct Qwen2Attention {
    /// Queries `[D → H·Dh]`.
    pub q_proj: Linear,
    /// Keys `[D → KVH·Dh]`.
    pub k_proj: Linear,
    /// Values `[D → KVH·Dh]`.
    pub v_proj: Linear,
    /// Output `[H·Dh → D]`.
    pub o_proj: Linear,
    /// Query heads `H`.
    pub num_heads: usize,
    /// Key/value heads `KVH` (`H` is a multiple).
    pub num_key_value_heads: usize,
    /// Head size `Dh`.
    pub head_dim: usize,
}

impl Qwen2Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            q_proj: l
                .linear(&p("q_proj"), hidden, heads * head_dim, true)
                .await?,
            k_proj: l
                .linear(&p("k_proj"), hidden, kv_heads * head_dim, true)
                .await?,
            v_proj: l
                .linear(&p("v_proj"), hidden, kv_heads * head_dim, true)
                .await?,
            o_proj: l
                .linear(&p("o_proj"), heads * head_dim, hidden, false)
                .await?,
            num_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
        })
    }

    /// `[B, S, n·Dh]` → `[B, n, S, Dh]`.
    fn split_heads(&self, x: Tensor<3>, n: usize) -> Tensor<4> {
        let [b, s, _] = x.dims();
        x.reshape([b, s, n, self.head_dim]).swap_dims(1, 2)
    }

    /// transformers' `repeat_kv`: `[B, KVH, S, Dh]` → `[B, H, S, Dh]`, each key/value head
    /// serving `H / KVH` consecutive query heads.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let groups = self.num_heads / self.num_key_value_heads;
        if groups == 1 {
            return x;
        }
        let [b, kvh, s, dh] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([b, kvh, groups, s, dh])
            .reshape([b, kvh * groups, s, dh])
    }

    /// - x: `[B, S, D]` (the normed hidden states of `S` new tokens)
    /// - rope: tables for those `S` tokens
    /// - cache: keys/values of the tokens before them (appended to); `None` = no past
    /// - returns `[B, S, D]`
    ///
    /// Token `i` attends to every past token and to new tokens `0..=i` (causal).
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let q = self.split_heads(self.q_proj.forward(x.clone()), self.num_heads); // [B, H, S, Dh]
        let k = self.split_heads(self.k_proj.forward(x.clone()), self.num_key_value_heads); // [B, KVH, S, Dh]
        let v = self.split_heads(self.v_proj.forward(x), self.num_key_value_heads);
        let q = apply_rotary_pos_emb(q, rope);
        let k = apply_rotary_pos_emb(k, rope);

        let (k, v) = match cache {
            None => (k, v),
            Some(c) => {
                let k = match c.key.take() {
                    Some(past) => Tensor::cat(vec![past, k], 2),
                    None => k,
                };
                let v = match c.value.take() {
                    Some(past) => Tensor::cat(vec![past, v], 2),
                    None => v,
                };
                c.key = Some(k.clone());
                c.value = Some(v.clone());
                (k, v)
            }
        };
        let total = k.dims()[2];
        let past = total - s;
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v)); // [B, H, S_total, Dh]

        let mut options = AttentionModuleOptions::default(); // scale 1/√Dh
        let mask = if s == 1 {
            None // one new token sees everything cached
        } else if past == 0 {
            options.is_causal = true;
            None
        } else {
            // true = masked: key j is in the future of query i when j > past + i.
            let device = q.device();
            let rows = Tensor::<1, Int>::arange(0..s as i64, &device)
                .reshape([s, 1])
                .add_scalar(past as i64);
            let cols = Tensor::<1, Int>::arange(0..total as i64, &device).reshape([1, total]);
            let future: Tensor<2, Bool> = cols.greater(rows); // [S, S_total]
            Some(
                future
                    .unsqueeze::<4>()
                    .expand([b, self.num_heads, s, total]),
            )
        };
        let out = attention(q, k, v, mask, None, options); // [B, H, S, Dh]
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}
