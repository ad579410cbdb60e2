//! `Qwen2_5_VLAttention`: causal grouped-query self-attention with q/k/v bias, no o_proj
//! bias, M-RoPE on queries and keys, and an optional fixed-capacity key/value cache for
//! generation.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>
//! (`Qwen2_5_VLAttention`; same code in 5.24.0).

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::rope::{RopeTables, apply_rotary_pos_emb};
use crate::error::Result;
use crate::model::nn::Linear;
use crate::weights::{TensorLoader, WeightSource};

/// The keys and values of one layer (after RoPE, before the heads are repeated for
/// grouped-query attention), in slots of a fixed capacity.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// `[B, KVH, capacity, Dh]`: the cached tokens' keys in slots `0 .. len`, zeros after
    /// them; `None` before the first forward (allocated by it, with its `B`).
    pub key: Option<Tensor<4>>,
    /// `[B, KVH, capacity, Dh]`, like `key`.
    pub value: Option<Tensor<4>>,
}

/// A key/value cache of fixed capacity for all layers, for generation.
///
/// Every forward given the cache writes its `S` tokens' keys and values into slots
/// `len .. len + S` and attends over all `capacity` slots with a mask that hides the slots
/// after each token (the later tokens and the unwritten slots). The tensors the attention
/// sees therefore have the same shapes at every decode step, whatever the length so far: a
/// GPU backend compiles its kernels once instead of once per generated token.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// One entry per decoder layer.
    pub layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    batch: Option<usize>,
}

impl KvCache {
    /// An empty cache of `capacity` tokens (the prompt and every token that will be fed after
    /// it) for a model with `num_layers` decoder layers. Nothing is allocated until the first
    /// forward.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
            capacity,
            batch: None,
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

    /// The most tokens the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Checks that `b` sequences of `s` more tokens fit (the capacity, and the batch size of
    /// the earlier forwards); the error says which limit was exceeded.
    pub(super) fn check_fits(&self, b: usize, s: usize) -> std::result::Result<(), String> {
        if self.len + s > self.capacity {
            return Err(format!(
                "the key/value cache holds {} tokens: {} cached + {s} new exceed it (create \
                 it with the prompt length plus the most tokens to generate)",
                self.capacity, self.len
            ));
        }
        match self.batch {
            Some(cached) if cached != b => Err(format!(
                "the key/value cache holds {cached} sequences, the input {b}"
            )),
            _ => Ok(()),
        }
    }

    /// The step of the next forward of `s` tokens: the slots they are written to and their
    /// mask, `[S, capacity]`, true where query `i` must not see slot `j` (`j > len + i`),
    /// uploaded from the host (no kernel; its shape depends only on `S`).
    pub(super) fn step(&self, s: usize, device: &Device) -> CacheStep {
        let (past, cap) = (self.len, self.capacity);
        let hidden: Vec<bool> = (0..s)
            .flat_map(|i| (0..cap).map(move |j| j > past + i))
            .collect();
        CacheStep {
            past,
            mask: Tensor::from_data(TensorData::new(hidden, [s, cap]), device),
        }
    }

    /// Records that `b` sequences of `tokens` more tokens were written to every layer.
    pub(super) fn advance(&mut self, b: usize, tokens: usize) {
        self.len += tokens;
        self.batch = Some(b);
    }
}

/// One forward's place in a [`KvCache`], shared by the layers.
#[derive(Debug, Clone)]
pub struct CacheStep {
    /// Tokens cached before this forward: its `S` tokens go to slots `past .. past + S`.
    pub past: usize,
    /// `[S, capacity]`, true = hidden: slot `j` is after query `i` (`j > past + i`).
    pub mask: Tensor<2, Bool>,
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
    /// - cache: this layer's keys/values (`[B, KVH, capacity, Dh]`, written at the step's
    ///   slots, allocated as zeros on first use) and the step; `None` = no past
    /// - returns `[B, S, D]`
    ///
    /// Token `i` attends to every past token and to new tokens `0..=i` (causal). With a cache
    /// it attends over all `capacity` slots, the step's mask hiding the later ones, so the
    /// shapes are those of `S` alone. The caller ([`super::QwenTextModel::forward_embeds`])
    /// has checked that the step fits the capacity.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(&mut LayerCache, &CacheStep)>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let q = self.split_heads(self.q_proj.forward(x.clone()), self.num_heads); // [B, H, S, Dh]
        let k = self.split_heads(self.k_proj.forward(x.clone()), self.num_key_value_heads); // [B, KVH, S, Dh]
        let v = self.split_heads(self.v_proj.forward(x), self.num_key_value_heads);
        let q = apply_rotary_pos_emb(q, rope);
        let k = apply_rotary_pos_emb(k, rope);

        let mut options = AttentionModuleOptions::default(); // scale 1/√Dh
        let (k, v, mask) = match cache {
            None => {
                options.is_causal = true;
                (k, v, None)
            }
            Some((c, step)) => {
                let cap = step.mask.dims()[1];
                let (kvh, dh) = (self.num_key_value_heads, self.head_dim);
                let slots = [0..b, 0..kvh, step.past..step.past + s, 0..dh];
                // Taken out of the cache first, so that the write can happen in place.
                let write = |slot: &mut Option<Tensor<4>>, new: Tensor<4>| {
                    let all = slot
                        .take()
                        .unwrap_or_else(|| Tensor::zeros([b, kvh, cap, dh], &new.device()));
                    let all = all.slice_assign(slots.clone(), new);
                    *slot = Some(all.clone());
                    all
                };
                let k = write(&mut c.key, k); // [B, KVH, capacity, Dh]
                let v = write(&mut c.value, v);
                let mask = step
                    .mask
                    .clone()
                    .unsqueeze::<4>()
                    .expand([b, self.num_heads, s, cap]);
                (k, v, Some(mask))
            }
        };
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v)); // [B, H, S_keys, Dh]
        let out = attention(q, k, v, mask, None, options); // [B, H, S, Dh]
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}
