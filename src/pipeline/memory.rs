//! The memory plan: from the device's limits and a memory budget, the model configs, the
//! precision, the working size and the layer count, decide **before loading anything**
//!
//! - whether the transformer's blocks are all resident or streamed through a ring of `R`
//!   ([`TransformerResidency`], run by [`BlockStream`](crate::model::transformer::BlockStream));
//! - whether the VAE decodes in tiles ([`VaeTiling`]) and/or one layer at a time (slicing);
//! - which tensors are larger than one GPU buffer may be (`maxStorageBufferBindingSize`, and
//!   `maxBufferSize`) and what to do with them ([`OversizedTensor`]): the text encoder's
//!   `152064 × 3584` token embedding is gathered on the host, wide linear weights are split by
//!   output rows, over-long activations are chunked along the sequence.
//!
//! The components run one after another (issue #6: text encoder → free → transformer → free →
//! VAE), so the text encoder is not counted against the transformer phase. WebGPU has no
//! free-memory query (gpuweb #5505): the caller supplies the budget (`device_bytes`), e.g. from
//! a user setting, a measurement, or `maxBufferSize` as a proxy.
//!
//! Everything here is arithmetic on configs ([`plan_memory`] is pure); the estimates are for
//! f32 activations and the device layout of [`Precision`] (f32 = 4 bytes per weight; 8-bit
//! and 4-bit blocks = `bits/8` bytes per weight plus one f32 scale per 32 weights).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::KeyLimits;
use crate::model::nn::DEQUANTIZE_MAX_BYTES;
use crate::model::text_encoder::{EmbeddingMode, QwenTextConfig};
use crate::model::transformer::QwenImageTransformerConfig;
use crate::model::vae::{AutoencoderKLQwenImageConfig, VaeTiling};
use crate::text::{DEFAULT_MAX_SEQUENCE_LENGTH, TextEncoderLoad};
use crate::weights::{
    BLOCK, LinearLoad, Precision, WeightSource, read_json, split_rows, weight_row_bytes,
};

/// The configs a plan is made from, read from a model source's JSON files only (no weights).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfigs {
    /// `transformer/config.json`.
    pub transformer: QwenImageTransformerConfig,
    /// `vae/config.json`.
    pub vae: AutoencoderKLQwenImageConfig,
    /// `text_encoder/config.json`, when the source has a text encoder.
    pub text: Option<QwenTextConfig>,
}

impl ModelConfigs {
    /// Reads the three configs from `source`.
    pub async fn read(source: &impl WeightSource) -> Result<Self> {
        let transformer = read_json(source, "transformer/config.json").await?;
        let vae = read_json(source, "vae/config.json").await?;
        let file = "text_encoder/config.json";
        let text = if source.exists(file).await? {
            let value: serde_json::Value = read_json(source, file).await?;
            Some(QwenTextConfig::from_json(&value, file)?)
        } else {
            None
        };
        Ok(Self {
            transformer,
            vae,
            text,
        })
    }

    /// The plan the app makes for a `width × height` run with `layers` layers: the text
    /// activations counted at their upper bound ([`DEFAULT_MAX_SEQUENCE_LENGTH`] tokens).
    pub fn plan(
        &self,
        budget: &MemoryBudget,
        precision: Precision,
        text_precision: Precision,
        size: (usize, usize),
        layers: usize,
    ) -> Result<MemoryPlan> {
        self.plan_keeping(budget, precision, text_precision, size, layers, None)
    }

    /// [`plan`](Self::plan), with the exact bytes the text side would keep on the device if
    /// the whole model stayed loaded between runs ([`PlanRequest::text_kept_bytes`]).
    pub fn plan_keeping(
        &self,
        budget: &MemoryBudget,
        precision: Precision,
        text_precision: Precision,
        (width, height): (usize, usize),
        layers: usize,
        text_kept_bytes: Option<u64>,
    ) -> Result<MemoryPlan> {
        plan_memory(
            budget,
            &PlanRequest {
                transformer: &self.transformer,
                vae: &self.vae,
                text: self.text.as_ref(),
                precision,
                text_precision,
                width,
                height,
                layers,
                text_tokens: DEFAULT_MAX_SEQUENCE_LENGTH,
                text_kept_bytes,
            },
        )
    }
}

/// What the plan may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The device's limits (tests force them low to exercise streaming and splitting).
    pub limits: KeyLimits,
    /// Bytes of device memory the weights and activations of one phase may take.
    pub device_bytes: u64,
}

/// What is to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest<'a> {
    /// The transformer's config.
    pub transformer: &'a QwenImageTransformerConfig,
    /// The VAE's config.
    pub vae: &'a AutoencoderKLQwenImageConfig,
    /// The text encoder's config, if a text encoder runs on the device.
    pub text: Option<&'a QwenTextConfig>,
    /// The precision of the transformer's linear weights.
    pub precision: Precision,
    /// The precision of the text encoder's linear weights (its token embedding is f32).
    pub text_precision: Precision,
    /// Working width in pixels (a multiple of 16).
    pub width: usize,
    /// Working height in pixels (a multiple of 16).
    pub height: usize,
    /// Output layers `N`.
    pub layers: usize,
    /// Prompt tokens (an upper bound; the activations grow with it).
    pub text_tokens: usize,
    /// Bytes the text side keeps on the device when the whole model stays loaded between runs
    /// (the text encoder, and the captioner's `lm_head` and vision tower when the model can
    /// caption; exact, from the checkpoint headers). `None`: the plan's estimate of the text
    /// encoder ([`MemoryEstimate::text_encoder_bytes`]).
    pub text_kept_bytes: Option<u64>,
}

/// How the transformer's blocks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransformerResidency {
    /// All `num_layers` blocks on the device.
    Resident,
    /// A ring of `ring` blocks; the others are read from storage when their turn comes.
    Streaming {
        /// Blocks resident at once (`1 ≤ ring < num_layers`).
        ring: usize,
    },
}

/// What to do with a tensor that does not fit in one GPU buffer binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TensorAction {
    /// Keep the table on the host and upload only the rows (tokens) a prompt uses.
    HostGather,
    /// Store the weight as `parts` buffers of consecutive output rows (`d_out / parts` each);
    /// the matmul runs per part and the outputs are concatenated.
    SplitRows {
        /// Number of pieces.
        parts: usize,
    },
    /// Run the operation on `parts` consecutive chunks of the sequence (rows are independent in
    /// linear layers and MLPs).
    ChunkSequence {
        /// Number of chunks.
        parts: usize,
    },
}

/// A tensor over the per-buffer limit, and its handling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OversizedTensor {
    /// Checkpoint key (`*` for "every block"), or a description for an activation.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its size on the device, bytes.
    pub bytes: u64,
    /// What to do.
    pub action: TensorAction,
}

/// The byte counts the plan was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEstimate {
    /// One transformer block's weights on the device.
    pub block_bytes: u64,
    /// The transformer's non-block weights.
    pub transformer_other_bytes: u64,
    /// The transformer forward's activations (f32, flash attention: no `S × S` scores), plus
    /// the f32 copy of the largest quantized weight the current `Linear` dequantizes into.
    pub transformer_activation_bytes: u64,
    /// The VAE's weights (f32).
    pub vae_bytes: u64,
    /// The largest single VAE decoder tensor with the chosen tiling/slicing.
    pub vae_peak_tensor_bytes: u64,
    /// The text encoder's weights (linear layers in `text_precision`, norms and a resident
    /// embedding in f32) minus a host-gathered embedding, if a text encoder was given: what
    /// loading it with [`MemoryPlan::text_encoder_load`] puts on the device (no `lm_head`, no
    /// vision tower; see `crate::model::text_encoder::device_bytes` for a checkpoint's exact
    /// count).
    pub text_encoder_bytes: u64,
    /// The largest one buffer may be: `min(maxStorageBufferBindingSize, maxBufferSize)`.
    pub max_tensor_bytes: u64,
    /// The most tokens (image and text) one transformer forward may carry: its `[S, D]` f32
    /// token stream must fit one buffer.
    pub max_tokens: u64,
    /// The most tokens one MLP run may take: its `[S, 4·D]` f32 hidden activation must fit one
    /// buffer.
    pub mlp_max_tokens: u64,
    /// The most bytes of attention scores one block holds at once (runs of query rows,
    /// `kernels::attention::chunked_attention`): what the budget leaves after the weights and
    /// activations, over [`ATTENTION_TEMPORARIES`], within one buffer and
    /// [`ATTENTION_SCORES_MAX`]. 0: too little room for [`ATTENTION_MIN_ROWS`] rows, so the
    /// flash-attention kernel runs (no scores stored).
    #[serde(default)]
    pub attention_scores_bytes: u64,
    /// The f32 copy a 4-bit text encoder weight is multiplied through, held beside the text
    /// encoder during its phase (0 at 8 bits and f32, and without a text encoder).
    #[serde(default)]
    pub text_dequant_bytes: u64,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryPlan {
    /// Resident or streaming transformer.
    pub transformer: TransformerResidency,
    /// VAE tiling (`None`: one piece, like the reference pipeline).
    pub vae_tiling: Option<VaeTiling>,
    /// Decode the layers one at a time.
    pub vae_slicing: bool,
    /// Tensors over the per-buffer limit and their handling.
    pub oversized: Vec<OversizedTensor>,
    /// The numbers behind it.
    pub estimate: MemoryEstimate,
    /// The whole model fits the budget at once (the transformer resident, and beside it what
    /// the text side keeps), so it may stay loaded between runs; otherwise each run loads the
    /// text encoder, frees it, then loads the transformer and the VAE.
    #[serde(default)]
    pub keep_loaded: bool,
}

/// Activations in a VAE working set per peak tensor (input, output and a residual in flight).
const VAE_WORKING_FACTOR: u64 = 3;

/// Score-sized tensors the chunked attention holds at once: the scores, their exponentials and
/// the normalised probabilities.
pub const ATTENTION_TEMPORARIES: u64 = 3;
/// The largest run of attention scores planned: 1 GiB, the size measured 3.7× faster than the
/// flash kernel on an H200 (256 MiB: 1.9×).
pub const ATTENTION_SCORES_MAX: u64 = 1 << 30;
/// Fewest query rows per run worth chunking the attention for; below, the flash kernel runs.
pub const ATTENTION_MIN_ROWS: u64 = 256;
/// Smallest VAE tile side tried, in pixels (4 latent pixels).
const MIN_TILE: usize = 32;
/// The largest working area the VAE decodes in one piece without being asked to tile: the
/// 640 bucket. The 1024 bucket always tiles (issue #6: "the VAE decodes in tiles at 1024²"):
/// its mid-block attention alone is a `(128·128)²` f32 score matrix (1 GiB) per layer.
pub const UNTILED_MAX_AREA: usize = 640 * 640;

/// Bytes of a `[d_out, d_in]` linear weight (plus bias) on the device in `precision`; a `d_in`
/// that is not a multiple of 32 stays f32 (as [`crate::weights::TensorLoader::linear`] does).
pub fn linear_bytes(d_in: usize, d_out: usize, precision: Precision) -> u64 {
    let (d_in, d_out) = (d_in as u64, d_out as u64);
    let weight = match precision.bits() {
        Some(bits) if d_in.is_multiple_of(BLOCK as u64) => {
            d_out * d_in * bits as u64 / 8 + d_out * (d_in / BLOCK as u64) * 4
        }
        _ => 4 * d_out * d_in,
    };
    weight + 4 * d_out
}

/// The linear layers of one block as `(name, d_in, d_out)` (`transformer_blocks.{i}.` left off).
fn block_linears(d: usize) -> Vec<(&'static str, usize, usize)> {
    let mlp = 4 * d;
    vec![
        ("img_mod.1", d, 6 * d),
        ("txt_mod.1", d, 6 * d),
        ("attn.to_q", d, d),
        ("attn.to_k", d, d),
        ("attn.to_v", d, d),
        ("attn.add_q_proj", d, d),
        ("attn.add_k_proj", d, d),
        ("attn.add_v_proj", d, d),
        ("attn.to_out.0", d, d),
        ("attn.to_add_out", d, d),
        ("img_mlp.net.0.proj", d, mlp),
        ("img_mlp.net.2", mlp, d),
        ("txt_mlp.net.0.proj", d, mlp),
        ("txt_mlp.net.2", mlp, d),
    ]
}

/// Block weights on the device: the linears plus the four q/k RMSNorm weights.
fn block_bytes(c: &QwenImageTransformerConfig, precision: Precision) -> u64 {
    let d = c.inner_dim();
    let linears: u64 = block_linears(d)
        .iter()
        .map(|&(_, i, o)| linear_bytes(i, o, precision))
        .sum();
    linears + 4 * 4 * c.attention_head_dim as u64
}

/// The transformer's weights outside the blocks.
fn transformer_other_bytes(c: &QwenImageTransformerConfig, precision: Precision) -> u64 {
    let d = c.inner_dim();
    let out = c.patch_size * c.patch_size * c.out_channels();
    let t = crate::model::transformer::TIMESTEP_PROJ_DIM;
    let mut bytes = linear_bytes(c.in_channels, d, precision)
        + linear_bytes(c.joint_attention_dim, d, precision)
        + 4 * c.joint_attention_dim as u64
        + linear_bytes(t, d, precision)
        + linear_bytes(d, d, precision)
        + linear_bytes(d, 2 * d, precision)
        + linear_bytes(d, out, precision);
    if c.use_additional_t_cond {
        bytes += 4 * 2 * d as u64;
    }
    bytes
}

/// The `SplitRows` entry of a `[d_out, d_in]` linear weight in `precision` whose largest
/// buffer is over `limit` bytes, with the parts [`TensorLoader`](crate::weights::TensorLoader)
/// will make ([`split_rows`]); `None` when it fits; an error when one row does not.
fn split_weight(
    name: String,
    d_in: usize,
    d_out: usize,
    precision: Precision,
    limit: u64,
) -> Result<Option<OversizedTensor>> {
    let bits = precision.bits().filter(|_| d_in.is_multiple_of(BLOCK));
    let row = weight_row_bytes(d_in, bits);
    let parts = split_rows(d_out, row, limit).map_err(|reason| Error::Input {
        model: "memory plan",
        reason: format!("{name} [{d_out}, {d_in}]: {reason}"),
    })?;
    Ok((parts.len() > 1).then(|| OversizedTensor {
        name,
        shape: vec![d_out, d_in],
        bytes: row * d_out as u64,
        action: TensorAction::SplitRows { parts: parts.len() },
    }))
}

/// The decoder's channel count at each resolution step `2^k` above the latent, as the widest
/// tensor there (`k = 0`: mid block; `k ≥ 1`: the upsampled input of the conv that halves it).
fn decoder_channels(c: &AutoencoderKLQwenImageConfig) -> Vec<usize> {
    let m = &c.dim_mult;
    let mut dims = vec![c.base_dim * m[m.len() - 1]];
    dims.extend(m.iter().rev().map(|u| c.base_dim * u));
    dims[..m.len()].to_vec()
}

/// The largest single tensor of a VAE decode of `batch` latents of `latent_hw`: the widest
/// conv activation or the mid block's single-head `(h·w)²` attention scores.
pub fn vae_decode_peak_tensor(
    c: &AutoencoderKLQwenImageConfig,
    batch: usize,
    (h, w): (usize, usize),
) -> u64 {
    let b = batch as u64;
    let conv = decoder_channels(c)
        .iter()
        .enumerate()
        .map(|(k, &ch)| b * ch as u64 * ((h << k) * (w << k)) as u64 * 4)
        .max()
        .unwrap_or(0);
    let hw = (h * w) as u64;
    conv.max(b * hw * hw * 4)
}

/// The VAE's weights in f32 on the device, estimated from the config (each causal conv keeps
/// one 3×3 plane of its 3×3×3 kernel; stages counted at their output width, an upper bound).
fn vae_bytes(c: &AutoencoderKLQwenImageConfig) -> u64 {
    let ch = |k: usize| (c.base_dim * c.dim_mult[k]) as u64;
    let res = |a: u64, b: u64| 9 * a * b + 9 * b * b + a * b + 2 * (a + b) + 2 * b;
    let n = c.dim_mult.len();
    // Per coder: each stage's residual blocks and resample, the mid block (two residual
    // blocks and an attention block), and the conv to or from the latent channels.
    let stages: u64 = (0..n)
        .map(|k| (c.num_res_blocks as u64 + 1) * res(ch(k), ch(k)) + 9 * ch(k) * ch(k))
        .sum();
    let top = ch(n - 1);
    let coder = stages + 2 * res(top, top) + 4 * top * top + 9 * top * (2 * c.z_dim as u64);
    4 * 2 * coder
}

/// Turns a request and a budget into a plan, or an error saying what does not fit and by how
/// much.
pub fn plan_memory(budget: &MemoryBudget, req: &PlanRequest<'_>) -> Result<MemoryPlan> {
    let bad = |reason: String| {
        Err(Error::Input {
            model: "memory plan",
            reason,
        })
    };
    let c = req.transformer;
    if req.layers == 0 || req.width == 0 || req.height == 0 || c.num_layers == 0 {
        return bad(format!(
            "nothing to plan: {} layers at {}×{}, {} blocks",
            req.layers, req.width, req.height, c.num_layers
        ));
    }
    let max_tensor = budget.limits.largest_buffer();
    let mut oversized = Vec::new();
    let d = c.inner_dim();

    // Weights of the transformer: per-buffer check of every block linear (all blocks alike).
    for (name, d_in, d_out) in block_linears(d) {
        let name = format!("transformer_blocks.*.{name}.weight");
        oversized.extend(split_weight(name, d_in, d_out, req.precision, max_tensor)?);
    }

    // Activations of one forward: S tokens; per block about 8 [S, D] and 2 [S, 4D] f32 tensors
    // live at once; quantized weights are dequantized to an f32 copy by the current Linear.
    let latent_tokens = (req.height / 16) * (req.width / 16);
    let s = ((req.layers + 2) * latent_tokens + req.text_tokens) as u64;
    let mlp_hidden = 4 * s * 4 * d as u64;
    let dequant_copy = match req.precision {
        Precision::F32 => 0,
        _ => 4 * 6 * (d as u64) * d as u64,
    };
    // Under true CFG the negative pass's token streams wait beside the positive pass's
    // (`forward_pair_with`): one more `[S, D]`.
    let activations = 4 * s * d as u64 * (8 + 1) + 2 * mlp_hidden + dequant_copy;
    // `FeedForward::forward_chunked` runs at most this many tokens at a time: the prompt's
    // real length decides at run time whether (and into how many runs) a sequence is cut.
    let per_chunk = max_tensor / (4 * 4 * d as u64);
    if mlp_hidden > max_tensor {
        oversized.push(OversizedTensor {
            name: "transformer MLP hidden activation".into(),
            shape: vec![s as usize, 4 * d],
            bytes: mlp_hidden,
            action: TensorAction::ChunkSequence {
                parts: s.div_ceil(per_chunk.max(1)) as usize,
            },
        });
    }

    // Text encoder (its own phase, freed before the transformer loads).
    let (mut text_bytes, mut text_dequant) = (0, 0);
    if let Some(t) = req.text {
        let (v, h, i) = (t.vocab_size, t.hidden_size, t.intermediate_size);
        let kv = t.num_key_value_heads * t.head_dim;
        let q = t.num_attention_heads * t.head_dim;
        let tp = req.text_precision;
        let layer = linear_bytes(h, q, tp)
            + 2 * linear_bytes(h, kv, tp)
            + linear_bytes(q, h, tp)
            - 4 * h as u64 // o_proj has no bias
            + 2 * linear_bytes(h, i, tp)
            + linear_bytes(i, h, tp)
            - 4 * (2 * i + h) as u64 // nor have the MLP projections
            + 4 * 2 * h as u64; // the two RMSNorm weights
        text_bytes = layer * t.num_hidden_layers as u64 + 4 * h as u64;
        let embedding = 4 * (v * h) as u64;
        if embedding > max_tensor {
            oversized.push(OversizedTensor {
                name: "model.embed_tokens.weight".into(),
                shape: vec![v, h],
                bytes: embedding,
                action: TensorAction::HostGather,
            });
        } else {
            text_bytes += embedding;
        }
        for (name, rows, cols) in [
            ("model.layers.*.mlp.gate_proj.weight", i, h),
            ("model.layers.*.mlp.up_proj.weight", i, h),
            ("model.layers.*.mlp.down_proj.weight", h, i),
            ("model.layers.*.self_attn.q_proj.weight", q, h),
        ] {
            oversized.extend(split_weight(name.into(), cols, rows, tp, max_tensor)?);
        }
        // A 4-bit weight is multiplied through an f32 copy of it, or of one row part of it
        // (`QuantizedMatmul::Dequantize`, the default on wgpu), one weight at a time.
        let dequant = match tp {
            Precision::Q4 => (4 * (i * h) as u64).min(DEQUANTIZE_MAX_BYTES as u64),
            _ => 0,
        };
        text_dequant = dequant;
        if text_bytes + dequant > budget.device_bytes {
            return bad(format!(
                "the text encoder needs {} of device memory ({} of weights and {} for the f32 \
                 copy a 4-bit weight is multiplied through), the budget is {}",
                show_bytes(text_bytes + dequant),
                show_bytes(text_bytes),
                show_bytes(dequant),
                show_bytes(budget.device_bytes)
            ));
        }
    }

    // Transformer phase: non-block weights, the VAE (encodes before, decodes after), the
    // activations, and as many blocks as fit.
    let vae = vae_bytes(req.vae);
    let block = block_bytes(c, req.precision);
    let other = transformer_other_bytes(c, req.precision);
    let fixed = other + vae + activations;
    let room = budget.device_bytes.saturating_sub(fixed);
    let fit = (room / block.max(1)) as usize;
    let transformer = if fit >= c.num_layers {
        TransformerResidency::Resident
    } else if fit >= 1 {
        TransformerResidency::Streaming { ring: fit }
    } else {
        return bad(format!(
            "the transformer needs at least {} of device memory ({} for one block, {} for the \
             rest of the model, the VAE and the activations at {}×{} with {} layers); the \
             budget is {}",
            show_bytes(fixed + block),
            show_bytes(block),
            show_bytes(fixed),
            req.width,
            req.height,
            req.layers,
            show_bytes(budget.device_bytes)
        ));
    };

    // Attention scores: the room the blocks leave, for runs of query rows (the flash kernel
    // where that is under ATTENTION_MIN_ROWS rows).
    let resident_blocks = match transformer {
        TransformerResidency::Resident => c.num_layers,
        TransformerResidency::Streaming { ring } => ring,
    };
    let left = room.saturating_sub(block * resident_blocks as u64);
    // The whole model stays loaded between runs only when the text side fits beside the
    // resident transformer; it then holds its share during the denoising and the decode too.
    let text_kept = req.text_kept_bytes.unwrap_or(text_bytes);
    let keep_loaded = transformer == TransformerResidency::Resident && text_kept <= left;
    let text_held = if keep_loaded { text_kept } else { 0 };
    let left = left - text_held;
    let scores_row = 4 * c.num_attention_heads as u64 * s;
    let scores = (left / ATTENTION_TEMPORARIES)
        .min(max_tensor)
        .min(ATTENTION_SCORES_MAX);
    let attention_scores_bytes = match scores >= ATTENTION_MIN_ROWS * scores_row {
        true => scores,
        false => 0,
    };

    // VAE decode phase: a streaming transformer's blocks are dropped first; resident ones stay.
    let held = match transformer {
        TransformerResidency::Resident => other + block * c.num_layers as u64,
        TransformerResidency::Streaming { .. } => other,
    };
    let vae_room = budget.device_bytes.saturating_sub(held + text_held + vae);
    let r = req.vae.spatial_compression_ratio();
    let latent = (req.height / r, req.width / r);
    let fits = |peak: u64| peak <= max_tensor && VAE_WORKING_FACTOR * peak <= vae_room;
    let whole = vae_decode_peak_tensor(req.vae, req.layers, latent);
    let (vae_tiling, vae_slicing, peak) =
        if req.width * req.height <= UNTILED_MAX_AREA && fits(whole) {
            (None, false, whole)
        } else {
            let sliced = vae_decode_peak_tensor(req.vae, 1, latent);
            if req.width * req.height <= UNTILED_MAX_AREA && fits(sliced) {
                (None, true, sliced)
            } else {
                choose_tiles(req, latent, &fits).ok_or_else(|| Error::Input {
                    model: "memory plan",
                    reason: format!(
                        "the VAE decode does not fit even in {MIN_TILE}-pixel tiles one layer \
                         at a time: {} per tensor allowed, {} of device memory left",
                        show_bytes(max_tensor),
                        show_bytes(vae_room)
                    ),
                })?
            }
        };
    // The token stream `[S, D]` itself (and the attention's q, k, v) is not split: the image
    // tokens and at least one text token must fit one buffer. The prompt's length is checked
    // by the transformer when it is known (`max_tokens`).
    let max_tokens = max_tensor / (4 * d as u64);
    let image_tokens = ((req.layers + 2) * latent_tokens) as u64;
    if image_tokens >= max_tokens {
        return bad(format!(
            "one forward at {}×{} with {} layers carries {image_tokens} image tokens × {d} \
             values ({}) in a single buffer, over this device's largest buffer ({}): choose \
             a smaller resolution or fewer layers",
            req.width,
            req.height,
            req.layers,
            show_bytes(4 * image_tokens * d as u64),
            show_bytes(max_tensor)
        ));
    }
    Ok(MemoryPlan {
        transformer,
        vae_tiling,
        vae_slicing,
        oversized,
        estimate: MemoryEstimate {
            block_bytes: block,
            transformer_other_bytes: other,
            transformer_activation_bytes: activations,
            vae_bytes: vae,
            vae_peak_tensor_bytes: peak,
            text_encoder_bytes: text_bytes,
            max_tensor_bytes: max_tensor,
            max_tokens,
            mlp_max_tokens: per_chunk,
            attention_scores_bytes,
            text_dequant_bytes: text_dequant,
        },
        keep_loaded,
    })
}

/// diffusers' default tiles (256 px every 192), halved until a tile's peak tensor fits
/// (batch `N`, then one layer at a time), down to [`MIN_TILE`]; stride stays ¾ of the tile.
fn choose_tiles(
    req: &PlanRequest<'_>,
    latent: (usize, usize),
    fits: &dyn Fn(u64) -> bool,
) -> Option<(Option<VaeTiling>, bool, u64)> {
    let r = req.vae.spatial_compression_ratio();
    let mut tile = VaeTiling::default();
    loop {
        let tile_latent = (
            latent.0.min(tile.min_height / r),
            latent.1.min(tile.min_width / r),
        );
        for (slicing, batch) in [(false, req.layers), (true, 1)] {
            let peak = vae_decode_peak_tensor(req.vae, batch, tile_latent);
            if fits(peak) {
                return Some((Some(tile), slicing && req.layers > 1, peak));
            }
        }
        if tile.min_height / 2 < MIN_TILE {
            return None;
        }
        tile = VaeTiling {
            min_height: tile.min_height / 2,
            min_width: tile.min_width / 2,
            stride_height: tile.stride_height / 2,
            stride_width: tile.stride_width / 2,
        };
    }
}

/// Bytes as KiB/MiB/GiB for messages (`512 KiB`, `3.50 MiB`, `4.00 GiB`).
pub fn show_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib < 1.0 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.2} MiB")
    }
}

/// The budget the app assumes when the user has set none: 4 GiB, or `maxBufferSize` when the
/// device allows a single buffer larger than that (a device that can hold one such buffer has
/// at least that much memory; on Apple silicon Metal reports about half the RAM).
///
/// WebGPU cannot say how much memory is free (gpuweb #5505). 4 GiB is what a browser's GPU
/// process can usually get on the machines that can run the model at all (discrete GPUs with
/// 6–8 GB, unified memory of 16 GB) while the compositor and other tabs keep theirs; with it the
/// real model's 4-bit transformer streams a ring of blocks at 640² and the tiny test model stays
/// resident. The model panel lets the user raise or lower it.
pub fn default_budget_bytes(limits: &KeyLimits) -> u64 {
    DEFAULT_BUDGET_BYTES.max(limits.max_buffer_size)
}

/// See [`default_budget_bytes`].
pub const DEFAULT_BUDGET_BYTES: u64 = 4 << 30;

impl MemoryPlan {
    /// The ring size for [`BlockStream`](crate::model::transformer::BlockStream), or `None`
    /// when every block is resident.
    pub fn ring(&self) -> Option<usize> {
        match self.transformer {
            TransformerResidency::Resident => None,
            TransformerResidency::Streaming { ring } => Some(ring),
        }
    }

    /// Sets the pipeline's VAE tiling and slicing to this plan's.
    pub fn apply_vae(&self, pipeline: &mut super::LayeredPipeline) {
        pipeline.vae_tiling = self.vae_tiling;
        pipeline.vae_slicing = self.vae_slicing;
    }

    /// Sets everything this plan decides at run time on a loaded pipeline: the VAE's tiling and
    /// slicing ([`apply_vae`](Self::apply_vae)), the transformer MLPs' sequence chunks
    /// (runs of at most [`MemoryEstimate::mlp_max_tokens`]; [`mlp_chunks`](Self::mlp_chunks) of
    /// them at the planned length), the attention's scores per run
    /// ([`MemoryEstimate::attention_scores_bytes`]) and the most tokens a forward may carry.
    pub fn apply(&self, pipeline: &mut super::LayeredPipeline) {
        self.apply_vae(pipeline);
        pipeline.transformer.mlp_max_tokens = Some(self.estimate.mlp_max_tokens as usize);
        pipeline.transformer.attention_scores_bytes = (self.estimate.attention_scores_bytes > 0)
            .then_some(self.estimate.attention_scores_bytes as usize);
        pipeline.transformer.max_tokens = Some(self.estimate.max_tokens as usize);
    }

    /// Runs each transformer MLP takes at the planned (longest) sequence: the `ChunkSequence`
    /// parts, or 1. A shorter prompt may need fewer.
    pub fn mlp_chunks(&self) -> usize {
        self.oversized
            .iter()
            .find_map(|t| match t.action {
                TensorAction::ChunkSequence { parts } => Some(parts),
                _ => None,
            })
            .unwrap_or(1)
    }

    /// How to load linear weights under this plan: in `precision`, split by rows where one is
    /// over the largest buffer the plan was made for (the `SplitRows` entries, and any other
    /// weight over it).
    pub fn linear_load(&self, precision: Precision) -> LinearLoad {
        LinearLoad {
            precision,
            max_part_bytes: Some(self.estimate.max_tensor_bytes),
        }
    }

    /// Whether every component stays on the device between runs (the transformer resident).
    pub fn is_resident(&self) -> bool {
        self.transformer == TransformerResidency::Resident
    }

    /// The plan in words for the page, e.g. `transformer: streamed, a ring of 1 of 2 blocks
    /// (…) · attention: runs of up to 1.00 GiB of scores · VAE: tiled, 32-pixel tiles every 24 pixels, one layer at a time · split: …`.
    /// `blocks` is the transformer's `num_layers`.
    pub fn describe(&self, blocks: usize) -> String {
        let e = &self.estimate;
        let transformer = match self.transformer {
            TransformerResidency::Resident => format!(
                "transformer: resident, all {blocks} blocks ({} each) stay loaded",
                show_bytes(e.block_bytes)
            ),
            TransformerResidency::Streaming { ring } => format!(
                "transformer: streamed, a ring of {ring} of {blocks} blocks ({} each) read from \
                 the cache in turn",
                show_bytes(e.block_bytes)
            ),
        };
        let mut vae = match self.vae_tiling {
            None => "VAE: whole".to_owned(),
            Some(t) => format!(
                "VAE: tiled, {}×{}-pixel tiles every {}×{} pixels",
                t.min_width, t.min_height, t.stride_width, t.stride_height
            ),
        };
        if self.vae_slicing {
            vae.push_str(", one layer at a time");
        }
        let attention = match e.attention_scores_bytes {
            0 => "attention: the flash kernel (no room for runs of scores)".to_owned(),
            bytes => format!("attention: runs of up to {} of scores", show_bytes(bytes)),
        };
        let mut parts = vec![transformer, attention, vae];
        if !self.oversized.is_empty() {
            let split = self
                .oversized
                .iter()
                .map(|o| match o.action {
                    TensorAction::HostGather => format!("{} kept on the host", o.name),
                    TensorAction::SplitRows { parts } => {
                        format!("{} in {parts} row pieces", o.name)
                    }
                    TensorAction::ChunkSequence { parts } => {
                        format!("{} in {parts} sequence chunks", o.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!(
                "over the {} buffer limit: {split}",
                show_bytes(e.max_tensor_bytes)
            ));
        }
        parts.join(" · ")
    }

    /// For a run loaded in phases: when one that captions (an empty prompt) would go over
    /// `budget` in its text phase, a sentence saying so for the plan's summary; `None` when it
    /// stays within, or when the model cannot caption (`captioning`: what the text side takes
    /// on the device with the captioner's `lm_head` and vision tower,
    /// [`PlanRequest::text_kept_bytes`]). Such a run loads the captioner in place of the text
    /// encoder; the plan's own check counts the text encoder alone, which every run loads. (A
    /// model kept loaded holds the captioner within its budget already.)
    pub fn captioning_note(&self, captioning: Option<u64>, budget: u64) -> Option<String> {
        let e = &self.estimate;
        let with_captioner = captioning? + e.text_dequant_bytes;
        (with_captioner > budget).then(|| {
            format!(
                "captioning (an empty prompt) loads the vision tower and lm_head with the text \
                 encoder: {} of device memory, over the budget (a typed prompt needs {})",
                show_bytes(with_captioner),
                show_bytes(e.text_encoder_bytes + e.text_dequant_bytes)
            )
        })
    }

    /// Whether the text encoder's token embedding is to be gathered on the host.
    pub fn gathers_embedding_on_host(&self) -> bool {
        self.oversized
            .iter()
            .any(|t| t.action == TensorAction::HostGather)
    }

    /// How to load the text encoder under this plan: its linear layers in `precision` (the
    /// request's `text_precision`), its token embedding gathered from storage
    /// ([`EmbeddingMode::Gathered`]) when the plan says `HostGather`, else resident. This is
    /// what [`MemoryEstimate::text_encoder_bytes`] counts.
    pub fn text_encoder_load(&self, precision: Precision) -> TextEncoderLoad {
        TextEncoderLoad {
            precision,
            embedding: if self.gathers_embedding_on_host() {
                EmbeddingMode::Gathered
            } else {
                EmbeddingMode::Resident
            },
            max_part_bytes: Some(self.estimate.max_tensor_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn limits(binding: u64, buffer: u64) -> KeyLimits {
        KeyLimits {
            max_buffer_size: buffer,
            max_storage_buffer_binding_size: binding,
            max_compute_workgroup_storage_size: 16384,
            max_compute_invocations_per_workgroup: 256,
        }
    }

    /// Qwen-Image-Layered's transformer (`model-spec.md`: 60 blocks, 24 × 128 heads).
    fn transformer() -> QwenImageTransformerConfig {
        QwenImageTransformerConfig {
            use_additional_t_cond: true,
            use_layer3d_rope: true,
            ..Default::default()
        }
    }

    fn vae() -> AutoencoderKLQwenImageConfig {
        AutoencoderKLQwenImageConfig {
            input_channels: 4,
            ..Default::default()
        }
    }

    /// Qwen2.5-VL-7B's language model.
    fn text() -> QwenTextConfig {
        QwenTextConfig {
            vocab_size: 152064,
            hidden_size: 3584,
            intermediate_size: 18944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            mrope_section: [16, 24, 24],
            tie_word_embeddings: false,
        }
    }

    fn request<'a>(
        t: &'a QwenImageTransformerConfig,
        v: &'a AutoencoderKLQwenImageConfig,
        text: Option<&'a QwenTextConfig>,
        precision: Precision,
        side: usize,
    ) -> PlanRequest<'a> {
        PlanRequest {
            transformer: t,
            vae: v,
            text,
            precision,
            text_precision: precision,
            width: side,
            height: side,
            layers: 4,
            text_tokens: 300,
            text_kept_bytes: None,
        }
    }

    #[test]
    fn block_sizes_match_the_parameter_count() {
        // 60 blocks of 36·D² weights are the 20.4 B parameters of the real transformer.
        let t = transformer();
        let weights = 36 * 3072u64 * 3072 * 60;
        assert!((20.3e9..20.5e9).contains(&(weights as f64)), "{weights}");
        let f32 = block_bytes(&t, Precision::F32);
        let q4 = block_bytes(&t, Precision::Q4);
        assert_eq!(
            f32 - 4 * 4 * 128,
            4 * 36 * 3072 * 3072 + 4 * (6 + 6 + 8 + 4 + 4) * 3072 + 4 * 2 * 3072
        );
        // 4-bit: half a byte per weight plus an f32 scale per 32 weights (0.625 B/weight).
        let ratio = q4 as f64 / f32 as f64;
        assert!((0.155..0.157).contains(&ratio), "{ratio}");
        assert_eq!(
            linear_bytes(3072, 18432, Precision::Q8),
            18432 * 3072 * 9 / 8 + 4 * 18432
        );
        // A d_in that is not a multiple of 32 stays f32.
        assert_eq!(linear_bytes(33, 2, Precision::Q4), 4 * 66 + 8);
    }

    #[test]
    fn browser_default_limits_stream_split_gather_and_tile() {
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: 6 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        let e = plan.estimate;
        // 60 × 203 MiB of 4-bit blocks do not fit in 6 GiB: a ring of what is left.
        let fixed = e.transformer_other_bytes + e.vae_bytes + e.transformer_activation_bytes;
        let ring = ((6 * GIB - fixed) / e.block_bytes) as usize;
        assert!((1..60).contains(&ring), "{ring}");
        assert_eq!(plan.transformer, TransformerResidency::Streaming { ring });
        assert_eq!(plan.ring(), Some(ring));
        // The 152064 × 3584 embedding (2 GiB in f32) is gathered on the host.
        assert!(plan.gathers_embedding_on_host());
        assert_eq!(
            plan.text_encoder_load(Precision::Q4),
            TextEncoderLoad {
                max_part_bytes: Some(128 * MIB),
                ..TextEncoderLoad::gathered(Precision::Q4)
            }
        );
        let embed = plan
            .oversized
            .iter()
            .find(|o| o.name == "model.embed_tokens.weight")
            .unwrap();
        assert_eq!(embed.shape, vec![152064, 3584]);
        assert_eq!(embed.bytes, 4 * 152064 * 3584);
        // In 4 bits the text encoder's 6.5 B weights besides the embedding (3.8 GiB) fit, each
        // in one binding.
        assert!(
            !plan
                .oversized
                .iter()
                .any(|o| o.name.starts_with("model.layers"))
        );
        assert!(
            (7 * GIB / 2..4 * GIB).contains(&e.text_encoder_bytes),
            "{}",
            e.text_encoder_bytes
        );
        // The 4-bit transformer weights all fit in one binding; the MLP activation does not.
        assert!(
            !plan
                .oversized
                .iter()
                .any(|o| o.name.starts_with("transformer_blocks"))
        );
        let mlp = plan
            .oversized
            .iter()
            .find(|o| o.name.starts_with("transformer MLP"))
            .unwrap();
        assert_eq!(mlp.shape, vec![6 * 40 * 40 + 300, 4 * 3072]);
        assert!(matches!(
            mlp.action,
            TensorAction::ChunkSequence { parts: 4 }
        ));
        // VAE: a 4 × 192 × 640² activation (1.2 GiB) cannot be one buffer; 256-pixel tiles
        // one layer at a time (50 MB) can.
        assert_eq!(plan.vae_tiling, Some(VaeTiling::default()));
        assert!(plan.vae_slicing);
        assert_eq!(e.vae_peak_tensor_bytes, 192 * 256 * 256 * 4);
        assert!(e.vae_peak_tensor_bytes <= e.max_tensor_bytes);
    }

    /// The plan's text encoder estimate is the exact device size of a checkpoint with the
    /// real Qwen2.5-VL-7B shapes (headers only: the synthetic file is never read), loaded with
    /// the plan's [`MemoryPlan::text_encoder_load`].
    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn the_text_encoder_estimate_is_what_loading_the_real_shapes_takes() {
        use crate::model::text_encoder::{LoadOptions, device_bytes, read_bytes};
        use crate::weights::{Checkpoint, SafetensorsFolder, SyntheticSource, SyntheticTensor};
        let (t, v, x) = (transformer(), vae(), text());
        let (h, i) = (x.hidden_size, x.intermediate_size);
        let (q, kv) = (
            x.num_attention_heads * x.head_dim,
            x.num_key_value_heads * 128,
        );
        let mut tensors = Vec::new();
        let norm = |name: String| SyntheticTensor {
            name,
            shape: vec![h],
            init: crate::weights::synthetic::Init::Constant(1.0),
        };
        for l in 0..x.num_hidden_layers {
            let p = format!("model.layers.{l}");
            for (name, d_in, d_out, bias) in [
                ("self_attn.q_proj", h, q, true),
                ("self_attn.k_proj", h, kv, true),
                ("self_attn.v_proj", h, kv, true),
                ("self_attn.o_proj", q, h, false),
                ("mlp.gate_proj", h, i, false),
                ("mlp.up_proj", h, i, false),
                ("mlp.down_proj", i, h, false),
            ] {
                let prefix = format!("{p}.{name}");
                tensors.push(SyntheticTensor::linear_weight(&prefix, d_in, d_out));
                if bias {
                    tensors.push(SyntheticTensor::linear_bias(&prefix, d_in, d_out));
                }
            }
            tensors.push(norm(format!("{p}.input_layernorm.weight")));
            tensors.push(norm(format!("{p}.post_attention_layernorm.weight")));
        }
        tensors.push(norm("model.norm.weight".into()));
        tensors.push(SyntheticTensor::linear_weight(
            "model.embed_tokens",
            h,
            x.vocab_size,
        ));
        tensors.push(SyntheticTensor::linear_weight("lm_head", h, x.vocab_size));
        let src = SyntheticSource::new("te/model.safetensors", tensors, 1).unwrap();
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "te")).unwrap();
        let folder = Checkpoint::Safetensors(folder);
        // What a load reads of it (the page's load progress): not the gathered embedding, and
        // `lm_head` only to caption.
        let stored = |key: &str| folder.stored_bytes(key).expect(key);
        let all: u64 = folder.keys().into_iter().map(stored).sum();
        let (embedding, head) = (
            stored("model.embed_tokens.weight"),
            stored("lm_head.weight"),
        );
        let gathered = crate::text::TextEncoderLoad::gathered(Precision::Q4);
        assert_eq!(
            read_bytes(&folder, gathered.options(false), false),
            all - embedding - head
        );
        assert_eq!(
            read_bytes(&folder, gathered.options(true), true),
            all - embedding
        );
        let resident = LoadOptions::default();
        assert_eq!(read_bytes(&folder, resident, false), all - head);
        for (precision, binding) in [
            (Precision::Q4, 128 * MIB),
            (Precision::Q8, 128 * MIB),
            (Precision::F32, 128 * MIB),
            (Precision::Q8, 4 * GIB),
        ] {
            let budget = MemoryBudget {
                limits: limits(binding, 16 * GIB),
                device_bytes: 96 * GIB,
            };
            let mut req = request(&t, &v, Some(&x), Precision::Q4, 640);
            req.text_precision = precision;
            let plan = plan_memory(&budget, &req).unwrap();
            let load = plan.text_encoder_load(precision);
            assert_eq!(
                plan.estimate.text_encoder_bytes,
                device_bytes(&folder, load.options(false), false),
                "{precision:?}, {binding} bytes per binding"
            );
        }
    }

    #[test]
    fn f32_weights_over_the_binding_are_split_by_rows() {
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: 96 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::F32, 640)).unwrap();
        // The text MLP weights (18944 × 3584 f32, 259 MiB) are split in 3 pieces of ≤ 128 MiB.
        let gate = plan
            .oversized
            .iter()
            .find(|o| o.name == "model.layers.*.mlp.gate_proj.weight")
            .unwrap();
        assert_eq!(gate.action, TensorAction::SplitRows { parts: 3 });
        // The 7.07 B f32 weights of the language model without the embedding: about 26 GiB.
        let text = plan.estimate.text_encoder_bytes as f64 / GIB as f64;
        assert!((24.0..27.0).contains(&text), "{text}");
        let find = |name: &str| {
            plan.oversized
                .iter()
                .find(|o| o.name == format!("transformer_blocks.*.{name}.weight"))
                .map(|o| o.action)
        };
        // [18432, 3072] f32 = 216 MiB; [12288, 3072] = 144 MiB; [3072, 3072] = 36 MiB.
        assert_eq!(
            find("img_mod.1"),
            Some(TensorAction::SplitRows { parts: 2 })
        );
        assert_eq!(
            find("img_mlp.net.0.proj"),
            Some(TensorAction::SplitRows { parts: 2 })
        );
        assert_eq!(
            find("img_mlp.net.2"),
            Some(TensorAction::SplitRows { parts: 2 })
        );
        assert_eq!(find("attn.to_q"), None);
        // 60 × 1.27 GiB of f32 blocks fit in 96 GiB.
        assert_eq!(plan.transformer, TransformerResidency::Resident);
        assert!(plan.gathers_embedding_on_host());
    }

    #[test]
    fn ample_native_limits_keep_everything_whole_but_1024_tiles() {
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(4 * GIB, 16 * GIB),
            device_bytes: 72 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        assert_eq!(plan.transformer, TransformerResidency::Resident);
        assert_eq!((plan.vae_tiling, plan.vae_slicing), (None, false));
        assert!(plan.oversized.is_empty(), "{:?}", plan.oversized);
        // A 4 GiB binding holds the 2.03 GiB f32 embedding: resident, and counted.
        let load = plan.text_encoder_load(Precision::Q4);
        assert_eq!(load.embedding, EmbeddingMode::Resident);
        let gathered = plan_memory(
            &MemoryBudget {
                limits: limits(128 * MIB, 256 * MIB),
                device_bytes: 72 * GIB,
            },
            &request(&t, &v, Some(&x), Precision::Q4, 640),
        )
        .unwrap();
        assert_eq!(
            plan.estimate.text_encoder_bytes - gathered.estimate.text_encoder_bytes,
            4 * 152064 * 3584
        );
        // 1024²: tiled with diffusers' defaults even though the limits are ample.
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 1024)).unwrap();
        assert_eq!(plan.vae_tiling, Some(VaeTiling::default()));
        assert_eq!(plan.transformer, TransformerResidency::Resident);
    }

    /// The attention's runs of scores take the room the resident blocks leave (a third of it:
    /// scores, exponentials, probabilities), at most one buffer and 1 GiB; under 256 query
    /// rows' worth the flash kernel runs.
    #[test]
    fn the_attention_scores_take_the_room_left_after_the_blocks() {
        let (t, v, x) = (transformer(), vae(), text());
        let req = request(&t, &v, Some(&x), Precision::Q4, 640);
        let plan_with = |binding: u64, device_bytes: u64| {
            let budget = MemoryBudget {
                limits: limits(binding, 16 * GIB),
                device_bytes,
            };
            plan_memory(&budget, &req).unwrap()
        };
        let ample = plan_with(4 * GIB, 72 * GIB);
        assert_eq!(ample.estimate.attention_scores_bytes, ATTENTION_SCORES_MAX);
        assert!(
            ample
                .describe(60)
                .contains(" · attention: runs of up to 1.00 GiB of scores · "),
            "{}",
            ample.describe(60)
        );
        // Within one buffer.
        let small_buffers = plan_with(512 * MIB, 72 * GIB);
        assert_eq!(small_buffers.estimate.attention_scores_bytes, 512 * MIB);
        // Just enough for the resident blocks and the activations, plus what is said here.
        let e = &ample.estimate;
        let resident = e.transformer_other_bytes
            + e.vae_bytes
            + e.transformer_activation_bytes
            + 60 * e.block_bytes;
        let room_for = |extra: u64| plan_with(4 * GIB, resident + extra);
        assert_eq!(
            room_for(3 * 600 * MIB).estimate.attention_scores_bytes,
            600 * MIB
        );
        // 256 rows of 24 heads × 9900 keys are 232 MiB of scores; a third of 600 MiB is less.
        let tight = room_for(600 * MIB);
        assert!(tight.is_resident());
        assert_eq!(tight.estimate.attention_scores_bytes, 0);
        assert!(
            tight
                .describe(60)
                .contains(" · attention: the flash kernel (no room")
        );
        // A streamed transformer's ring takes the room: the flash kernel.
        let streamed = plan_with(128 * MIB, 6 * GIB);
        assert!(!streamed.is_resident());
        assert_eq!(streamed.estimate.attention_scores_bytes, 0);
    }

    /// The text encoder's phase counts the f32 copy a 4-bit weight is multiplied through.
    #[test]
    fn the_text_encoder_needs_room_for_one_dequantized_weight() {
        let (t, v, x) = (transformer(), vae(), text());
        let req = request(&t, &v, Some(&x), Precision::Q4, 640);
        let plan_with = |device_bytes: u64| {
            let budget = MemoryBudget {
                limits: limits(128 * MIB, 256 * MIB),
                device_bytes,
            };
            plan_memory(&budget, &req)
        };
        let text = plan_with(72 * GIB).unwrap().estimate.text_encoder_bytes;
        // The MLP's 18944 × 3584 weight is 259 MiB in f32: a 128 MiB row part at a time.
        let err = plan_with(text + 100 * MIB).unwrap_err().to_string();
        assert!(
            err.contains("for the f32 copy a 4-bit weight is multiplied through")
                && err.contains("128.00 MiB"),
            "{err}"
        );
        // With that room the text encoder's check passes.
        if let Err(err) = plan_with(text + 128 * MIB) {
            assert!(!err.to_string().contains("the text encoder needs"), "{err}");
        }
    }

    /// The page keeps a model loaded between runs only when all of it fits the budget at once:
    /// the resident transformer's phase and, beside it, what the text side keeps.
    #[test]
    fn the_model_stays_loaded_only_when_the_text_side_fits_beside_the_transformer() {
        let (t, v, x) = (transformer(), vae(), text());
        let mut req = request(&t, &v, Some(&x), Precision::Q4, 640);
        let plan_with = |req: &PlanRequest, device_bytes: u64| {
            let budget = MemoryBudget {
                limits: limits(4 * GIB, 16 * GIB),
                device_bytes,
            };
            plan_memory(&budget, req).unwrap()
        };
        let e = plan_with(&req, 72 * GIB).estimate;
        let resident = e.transformer_other_bytes
            + e.vae_bytes
            + e.transformer_activation_bytes
            + 60 * e.block_bytes;
        // 3 GiB beside the resident transformer: the text encoder (5.8 GiB: 4-bit layers and,
        // with buffers this large, its f32 embedding) does not fit there, so each run loads it
        // and frees it; the attention has the 3 GiB.
        let three = plan_with(&req, resident + 3 * GIB);
        assert!(three.is_resident());
        assert!(!three.keep_loaded);
        assert_eq!(three.estimate.attention_scores_bytes, GIB);
        // 8 GiB: it fits and stays; the attention gets what it leaves.
        let eight = plan_with(&req, resident + 8 * GIB);
        assert!(eight.keep_loaded);
        assert_eq!(
            eight.estimate.attention_scores_bytes,
            (8 * GIB - e.text_encoder_bytes) / ATTENTION_TEMPORARIES
        );
        // The worker's exact figure (the embedding gathered, the captioner's lm_head and vision
        // tower) decides.
        req.text_kept_bytes = Some(8 * GIB + 1);
        assert!(!plan_with(&req, resident + 8 * GIB).keep_loaded);
        req.text_kept_bytes = Some(GIB);
        let small = plan_with(&req, resident + 3 * GIB);
        assert!(small.keep_loaded);
        assert_eq!(small.estimate.attention_scores_bytes, 2 * GIB / 3);
        // A streamed transformer never keeps the model loaded.
        let streamed = plan_with(&req, 6 * GIB);
        assert!(!streamed.is_resident() && !streamed.keep_loaded);
    }

    #[test]
    fn the_default_budget_is_4_gib_or_one_largest_buffer() {
        assert_eq!(default_budget_bytes(&limits(128 * MIB, 256 * MIB)), 4 * GIB);
        assert_eq!(default_budget_bytes(&limits(2 * GIB, 4 * GIB)), 4 * GIB);
        // Metal on a 32 GB Mac: maxBufferLength is about half the RAM.
        assert_eq!(default_budget_bytes(&limits(4 * GIB, 16 * GIB)), 16 * GIB);
        // With the browser's usual limits the default streams the real model's 4-bit
        // transformer at 640² (a ring of its blocks) rather than refusing it.
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: default_budget_bytes(&limits(128 * MIB, 256 * MIB)),
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        let ring = plan.ring().expect("streams");
        assert!((1..60).contains(&ring), "{ring}");
    }

    /// The real model in 4 bits at the default 4 GiB, loaded in phases: the text encoder's
    /// phase fits, but a run that captions loads `lm_head` and the vision tower too and goes
    /// over; the plan says so.
    #[test]
    fn a_phased_run_that_captions_over_the_budget_is_said() {
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: 4 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        assert!(!plan.keep_loaded);
        let e = plan.estimate;
        let one_mlp_weight = 4 * 18944 * 3584u64;
        assert_eq!(
            e.text_dequant_bytes,
            one_mlp_weight.min(DEQUANTIZE_MAX_BYTES as u64)
        );
        let text_phase = e.text_encoder_bytes + e.text_dequant_bytes;
        assert!(text_phase <= 4 * GIB, "{text_phase}");
        // `lm_head` in 4 bits (152064 × 3584, 0.32 GiB) and the vision tower (about 0.4 GiB).
        let lm_head = linear_bytes(x.hidden_size, x.vocab_size, Precision::Q4);
        let captioning = e.text_encoder_bytes + lm_head + 400 * MIB;
        let note = plan
            .captioning_note(Some(captioning), budget.device_bytes)
            .expect("over the budget");
        assert_eq!(
            note,
            format!(
                "captioning (an empty prompt) loads the vision tower and lm_head with the text \
                 encoder: {} of device memory, over the budget (a typed prompt needs {})",
                show_bytes(captioning + e.text_dequant_bytes),
                show_bytes(text_phase)
            )
        );
        // Within the budget, or a model that cannot caption: nothing to say.
        let within = budget.device_bytes - e.text_dequant_bytes;
        assert_eq!(
            plan.captioning_note(Some(within), budget.device_bytes),
            None
        );
        assert!(
            plan.captioning_note(Some(within + 1), budget.device_bytes)
                .is_some()
        );
        assert_eq!(plan.captioning_note(None, budget.device_bytes), None);
    }

    #[test]
    fn plans_read_as_words() {
        let (t, v, x) = (transformer(), vae(), text());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: 6 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        let ring = plan.ring().unwrap();
        let words = plan.describe(60);
        assert!(
            words.starts_with(&format!(
                "transformer: streamed, a ring of {ring} of 60 blocks ("
            )),
            "{words}"
        );
        assert!(
            words.contains(
                " · VAE: tiled, 256×256-pixel tiles every 192×192 pixels, one layer at a time"
            ),
            "{words}"
        );
        assert!(
            words.contains("over the 128.00 MiB buffer limit: transformer MLP hidden activation in 4 sequence chunks, model.embed_tokens.weight kept on the host"),
            "{words}"
        );
        assert!(!plan.is_resident());
        let budget = MemoryBudget {
            limits: limits(4 * GIB, 16 * GIB),
            device_bytes: 72 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, Some(&x), Precision::Q4, 640)).unwrap();
        assert!(plan.is_resident());
        let words = plan.describe(60);
        assert!(
            words.starts_with("transformer: resident, all 60 blocks (")
                && words.ends_with(" · VAE: whole"),
            "{words}"
        );
        assert_eq!(show_bytes(64 << 10), "64 KiB");
    }

    #[test]
    fn a_budget_below_one_block_is_a_clear_error() {
        let (t, v) = (transformer(), vae());
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 256 * MIB),
            device_bytes: 2 * GIB,
        };
        let err = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 640))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the transformer needs at least"), "{err}");
        assert!(err.contains("the budget is 2.00 GiB"), "{err}");
        let mut req = request(&t, &v, None, Precision::Q4, 640);
        req.layers = 0;
        assert!(plan_memory(&budget, &req).is_err());
    }

    #[test]
    fn tiles_shrink_until_a_tile_fits_the_binding() {
        // A 128-wide transformer: the real one's [S, 3072] token stream (116 MiB at 640²) does
        // not fit the small buffers tried here (a test of its own below).
        let (mut t, v) = (transformer(), vae());
        t.num_attention_heads = 1;
        // 16 MiB per buffer: 256-px tiles (48 MiB per layer) are too big, 128-px (12 MiB) fit.
        let budget = MemoryBudget {
            limits: limits(16 * MIB, 16 * MIB),
            device_bytes: 64 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 640)).unwrap();
        assert_eq!(
            plan.vae_tiling,
            Some(VaeTiling {
                min_height: 128,
                min_width: 128,
                stride_height: 96,
                stride_width: 96
            })
        );
        assert!(plan.vae_slicing);
        // Below 32-pixel tiles nothing fits: an error, not a silent overflow.
        let budget = MemoryBudget {
            limits: limits(MIB / 4, MIB / 4),
            device_bytes: 64 * GIB,
        };
        let err = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 640))
            .unwrap_err()
            .to_string();
        assert!(err.contains("32-pixel tiles"), "{err}");
    }

    #[test]
    fn the_mlp_runs_in_chunks_and_a_token_stream_over_one_buffer_is_refused() {
        let (t, v) = (transformer(), vae());
        // 640², 4 layers, 300 text tokens: S = 6 · 1600 + 300 = 9900. The [S, 3072] stream is
        // 116 MiB; the [S, 12288] MLP hidden activation 464 MiB, in runs of
        // ⌊128 MiB / 48 KiB⌋ = 2730 tokens: 4 chunks.
        let budget = MemoryBudget {
            limits: limits(128 * MIB, 128 * MIB),
            device_bytes: 64 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 640)).unwrap();
        assert_eq!(plan.mlp_chunks(), 4);
        // 128 MiB hold 10922 tokens of 3072 f32 values: 9600 image tokens and up to 1322 text.
        assert_eq!(plan.estimate.max_tokens, 10922);
        // At 1024² the image tokens alone are 24576 × 3072 × 4 bytes = 288 MiB: refused.
        let err = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 1024))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("24576 image tokens × 3072 values") && err.contains("128.00 MiB"),
            "{err}"
        );
        // With a 2 GiB binding nothing is chunked.
        let budget = MemoryBudget {
            limits: limits(2 * GIB, 2 * GIB),
            device_bytes: 64 * GIB,
        };
        let plan = plan_memory(&budget, &request(&t, &v, None, Precision::Q4, 1024)).unwrap();
        assert_eq!(plan.mlp_chunks(), 1);
    }
}
