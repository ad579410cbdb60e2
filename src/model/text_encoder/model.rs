//! `Qwen2_5_VLTextModel` (the decoder stack) and the language model with its `lm_head`.
//!
//! <https://github.com/huggingface/transformers/blob/v5.2.0/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py>

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::attention::KvCache;
use super::config::{QwenTextConfig, TEXT_ENCODER_FOLDER};
use super::decoder::Qwen2DecoderLayer;
use super::rope::{RopePositions, TextRope};
use crate::error::{Error, Result};
use crate::model::nn::{Linear, RmsNorm};
use crate::weights::{
    Checkpoint, LinearLoad, MetaValue, Precision, QuantizedLayout, SafetensorsFolder, TableRows,
    TensorLoader, WeightSource, read_json,
};

/// Where the token embedding `[vocab, D]` is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmbeddingMode {
    /// Uploaded whole to the device as f32 (the CPU backend, the CLI, tests). The real
    /// `152064 × 3584` table is 2.18 GB in f32: more than one WebGPU buffer may be.
    #[default]
    Resident,
    /// Left in storage (the memory plan's `HostGather`): the rows of the ids a prompt uses are
    /// read from the weight source when it is encoded ([`TableRows`]), widened to f32 and
    /// uploaded as the input embeddings. Encode with
    /// [`PromptEncoder::encode_from`](crate::text::PromptEncoder::encode_from) or
    /// [`QwenLanguageModel::embed_from`], passing the source the model was loaded from.
    Gathered,
}

/// `nn.Embedding(vocab, D)`: a row lookup, with the table on the device or left in storage
/// ([`EmbeddingMode`]).
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[vocab, D]`, checkpoint key `{prefix}.weight`; `None` when the table is gathered.
    pub weight: Option<Param<Tensor<2>>>,
    /// The table in storage, when gathered (no device memory).
    #[module(skip)]
    pub rows: Option<TableRows>,
}

impl Embedding {
    /// Loads `{prefix}.weight` `[vocab, D]` in `mode`: uploaded, or only located.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        [vocab, d]: [usize; 2],
        mode: EmbeddingMode,
    ) -> Result<Self> {
        let key = format!("{prefix}.weight");
        Ok(match mode {
            EmbeddingMode::Resident => Self {
                weight: Some(l.param(&key, [vocab, d]).await?),
                rows: None,
            },
            EmbeddingMode::Gathered => Self {
                weight: None,
                rows: Some(l.table_rows(&key, [vocab, d])?),
            },
        })
    }

    /// The mode it was loaded in.
    pub fn mode(&self) -> EmbeddingMode {
        match self.weight {
            Some(_) => EmbeddingMode::Resident,
            None => EmbeddingMode::Gathered,
        }
    }

    /// Device lookup (a resident table only; a gathered one is an error that says to use
    /// [`gather`](Self::gather)).
    ///
    /// - ids: `[B, S]` → `[B, S, D]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        let Some(weight) = &self.weight else {
            return Err(Error::Input {
                model: "Qwen2_5_VLTextModel",
                reason: "the token embedding is gathered from storage (EmbeddingMode::Gathered):                          embed with the weight source (embed_from / encode_from)"
                    .into(),
            });
        };
        let [b, s] = ids.dims();
        let d = weight.dims()[1];
        Ok(weight
            .val()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, d]))
    }

    /// The embeddings of `ids` on `device`: a device lookup when resident, or the rows read
    /// from `source` (the source the model was loaded from; kept once read) when gathered.
    /// Both give the same values: the stored rows widened to f32.
    ///
    /// - ids: `L` token ids → `[1, L, D]`
    pub async fn gather<S: WeightSource>(
        &self,
        source: &S,
        ids: &[u32],
        device: &Device,
    ) -> Result<Tensor<3>> {
        match &self.rows {
            None => {
                let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
                let n = ids.len();
                let device = match &self.weight {
                    Some(w) => w.device(),
                    None => device.clone(),
                };
                self.forward(Tensor::from_data(TensorData::new(ids, [1, n]), &device))
            }
            Some(rows) => {
                let d = rows.shape()[1];
                let values = rows.gather(source, ids).await?;
                Ok(Tensor::from_data(
                    TensorData::new(values, [1, ids.len(), d]),
                    device,
                ))
            }
        }
    }
}

/// The decoder stack: token embedding, `num_hidden_layers` layers, final RMSNorm.
///
/// Checkpoint keys (under `model.`, or `model.language_model.` in checkpoints saved with
/// transformers' new names): `embed_tokens.weight` `[vocab, D]`, `layers.{i}.*`, `norm.weight`.
#[derive(Module, Debug)]
pub struct QwenTextModel {
    /// Token embedding.
    pub embed_tokens: Embedding,
    /// The decoder layers.
    pub layers: Vec<Qwen2DecoderLayer>,
    /// Final RMSNorm (its output is `last_hidden_state` = `hidden_states[-1]`).
    pub norm: RmsNorm,
    /// The rotary table builder (no weights).
    #[module(skip)]
    pub rotary_emb: TextRope,
    /// The config the model was built from.
    #[module(skip)]
    pub config: QwenTextConfig,
}

impl QwenTextModel {
    /// Builds the stack from `config`, taking `{prefix}.*` from `l` (linear layers in `l`'s
    /// precision) with the token embedding in `embedding` mode.
    pub async fn load_with<S: WeightSource>(
        config: &QwenTextConfig,
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        embedding: EmbeddingMode,
    ) -> Result<Self> {
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed_tokens =
            Embedding::load(l, &format!("{prefix}.embed_tokens"), [v, d], embedding).await?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(Qwen2DecoderLayer::load(l, &format!("{prefix}.layers.{i}"), config).await?);
        }
        let norm = RmsNorm::load(l, &format!("{prefix}.norm"), d, config.rms_norm_eps).await?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            rotary_emb: TextRope::new(config.rope_theta, config.head_dim, config.mrope_section),
            config: config.clone(),
        })
    }

    /// Runs the layers over input embeddings.
    ///
    /// - embeds: `[B, S, D]` (token embeddings, or with image features spliced in)
    /// - positions: `S` position triples (shared by the batch)
    /// - cache: the keys/values of earlier calls (`[B, KVH, capacity, Dh]` per layer; this
    ///   call's are written after them and the length advances by `S`); `None` for a one-shot
    ///   causal forward. A step past the cache's capacity, or with another `B` than the
    ///   earlier ones, is an error.
    /// - returns the post-final-norm hidden states `[B, S, D]`
    pub fn forward_embeds(
        &self,
        embeds: Tensor<3>,
        positions: &RopePositions,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        let [b, s, d] = embeds.dims();
        let bad = |reason: String| {
            Err(Error::Input {
                model: "Qwen2_5_VLTextModel",
                reason,
            })
        };
        if d != self.config.hidden_size || s == 0 {
            return bad(format!(
                "embeds {:?} must be [B, S > 0, {}]",
                embeds.dims(),
                self.config.hidden_size
            ));
        }
        if positions.len() != s {
            return bad(format!(
                "{} positions given for {s} tokens",
                positions.len()
            ));
        }
        if let Some(c) = cache.as_deref()
            && c.layers.len() != self.layers.len()
        {
            return bad(format!(
                "the cache has {} layers, the model {}",
                c.layers.len(),
                self.layers.len()
            ));
        }
        if let Some(c) = cache.as_deref()
            && let Err(reason) = c.check_fits(b, s)
        {
            return bad(reason);
        }
        let device = embeds.device();
        let rope = self.rotary_emb.tables(positions, &device);
        let step = cache.as_deref().map(|c| c.step(s, &device));
        let mut h = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = match (cache.as_deref_mut(), &step) {
                (Some(c), Some(step)) => Some((&mut c.layers[i], step)),
                _ => None,
            };
            h = layer.forward(h, &rope, layer_cache);
        }
        if let Some(c) = cache {
            c.advance(b, s);
        }
        Ok(self.norm.forward(h))
    }

    /// Text-only forward: embeds `input_ids` and runs them at positions `past .. past + S`,
    /// `past` being the cache's length (0 without a cache).
    ///
    /// - input_ids: `[B, S]` → post-norm hidden states `[B, S, D]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        self.check_ids(&input_ids)?;
        let s = input_ids.dims()[1];
        let past = cache.as_deref().map_or(0, KvCache::len);
        let positions = RopePositions::text(past as i64, s);
        self.forward_embeds(self.embed_tokens.forward(input_ids)?, &positions, cache)
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.norm.weight.device()
    }

    /// An empty cache for this model that holds `capacity` tokens (the prompt and every token
    /// fed after it); its keys and values, `[B, KVH, capacity, Dh]` per layer, are allocated
    /// by the first forward.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.layers.len(), capacity)
    }

    fn check_ids(&self, ids: &Tensor<2, Int>) -> Result<()> {
        let [b, s] = ids.dims();
        if b == 0 || s == 0 {
            return Err(Error::Input {
                model: "Qwen2_5_VLTextModel",
                reason: format!("input_ids {:?} is empty", ids.dims()),
            });
        }
        Ok(())
    }
}

/// How [`QwenLanguageModel::load`] loads the language model. The default (f32, resident
/// embedding, no `lm_head`) is what the CPU tests and the CLI use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load `lm_head` (for generation: captioning). Prompt encoding does not need it, and the
    /// real one is `152064 × 3584` (545M parameters), so it is skipped by default.
    pub lm_head: bool,
    /// The precision of the linear layers (the attention and MLP projections and `lm_head`);
    /// a layer whose `d_in` is not a multiple of 32 stays f32, and the norms and the token
    /// embedding are f32 whatever this says. Default f32.
    pub precision: Precision,
    /// Whether the token embedding is uploaded or gathered from storage. Default resident.
    pub embedding: EmbeddingMode,
    /// The most bytes one device buffer of a linear weight may hold; a larger weight is split
    /// by rows ([`crate::weights::LinearLoad`]). Default: no limit.
    pub max_part_bytes: Option<u64>,
}

/// The language model of `Qwen2_5_VLForConditionalGeneration`: the decoder stack and,
/// optionally, `lm_head` (`[vocab, D]`, no bias).
///
/// Checkpoint keys: `model.*` (see [`QwenTextModel`]), `lm_head.weight`; `visual.*` (the
/// vision tower) is skipped.
#[derive(Module, Debug)]
pub struct QwenLanguageModel {
    /// The decoder stack.
    pub model: QwenTextModel,
    /// `[D → vocab]`; `None` unless asked for.
    pub lm_head: Option<Linear>,
}

impl QwenLanguageModel {
    /// Loads `text_encoder/config.json` and the language-model tensors of `text_encoder/`
    /// (its stored quantized copy for `options.precision` when there is one, else its
    /// safetensors: [`Checkpoint::open`]); the vision tower (and `lm_head` unless
    /// `options.lm_head`) is checked for presence and skipped. Missing, wrongly shaped or
    /// unexpected tensors are errors.
    pub async fn load<S: WeightSource>(
        source: &S,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        Self::load_from(source, TEXT_ENCODER_FOLDER, device, options).await
    }

    /// [`load`](Self::load) from another folder of `source`.
    pub async fn load_from<S: WeightSource>(
        source: &S,
        folder: &str,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let config_file = format!("{folder}/config.json");
        let json: serde_json::Value = read_json(source, &config_file).await?;
        let config = QwenTextConfig::from_json(&json, &config_file)?;
        let weights = Checkpoint::open(source, folder, options.precision).await?;
        let mut l = weights.loader(source, device).with_linear_load(LinearLoad {
            precision: options.precision,
            max_part_bytes: options.max_part_bytes,
        });
        let me = Self::load_with(&config, &weights, &mut l, options).await?;
        for key in weights.keys().into_iter().filter(|k| is_vision_key(k)) {
            l.skip(key, weights.shape(key).unwrap_or_default())?;
        }
        l.finish()?;
        Ok(me)
    }

    /// Takes the language model's tensors (the decoder stack under `model.` or
    /// `model.language_model.`, and `lm_head` as `options` say: taken, or checked and skipped)
    /// from `l`, which reads `weights`, with its linear layers in `options.precision` (the
    /// loader's own precision is restored afterwards); the vision tower's tensors are left in
    /// the loader, so that a caller can load them from the same loader before
    /// [`TensorLoader::finish`].
    pub async fn load_with<S: WeightSource>(
        config: &QwenTextConfig,
        weights: &Checkpoint,
        l: &mut TensorLoader<'_, S>,
        options: LoadOptions,
    ) -> Result<Self> {
        let before = l.precision();
        l.set_precision(options.precision);
        let me = Self::take(config, weights, l, options).await;
        l.set_precision(before);
        me
    }

    async fn take<S: WeightSource>(
        config: &QwenTextConfig,
        weights: &Checkpoint,
        l: &mut TensorLoader<'_, S>,
        options: LoadOptions,
    ) -> Result<Self> {
        let prefix = text_prefix(weights)?;
        let model = QwenTextModel::load_with(config, l, prefix, options.embedding).await?;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let lm_head = match (options.lm_head, weights.contains("lm_head.weight")) {
            (true, true) => Some(l.linear("lm_head", d, v, false).await?),
            (true, false) if config.tie_word_embeddings => match &model.embed_tokens.weight {
                Some(table) => Some(Linear::from_f32(table.val(), None)),
                None => {
                    return Err(Error::Input {
                        model: "Qwen2_5_VLForConditionalGeneration",
                        reason: "lm_head is tied to the token embedding, which is gathered \
                                 from storage: load it resident to generate"
                            .into(),
                    });
                }
            },
            (false, true) => {
                l.skip("lm_head.weight", &[v, d])?;
                None
            }
            (_, false) => {
                if options.lm_head {
                    // Names the missing key and the files searched.
                    l.skip("lm_head.weight", &[v, d])?;
                }
                None
            }
        };
        Ok(Self { model, lm_head })
    }

    /// The config.
    pub fn config(&self) -> &QwenTextConfig {
        &self.model.config
    }

    /// See [`QwenTextModel::forward`]: `[B, S]` ids → post-norm hidden states `[B, S, D]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        self.model.forward(input_ids, cache)
    }

    /// See [`QwenTextModel::forward_embeds`].
    pub fn forward_embeds(
        &self,
        embeds: Tensor<3>,
        positions: &RopePositions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        self.model.forward_embeds(embeds, positions, cache)
    }

    /// Token embeddings from the resident table: `[B, S]` → `[B, S, D]` (an error when the
    /// table is gathered; see [`embed_from`](Self::embed_from)).
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.model.embed_tokens.forward(input_ids)
    }

    /// Token embeddings of `ids` in either [`EmbeddingMode`]: `L` ids → `[1, L, D]` on the
    /// model's device. `source` is the source the model was loaded from; it is read only when
    /// the table is gathered (rows not read before).
    pub async fn embed_from<S: WeightSource>(&self, source: &S, ids: &[u32]) -> Result<Tensor<3>> {
        self.model
            .embed_tokens
            .gather(source, ids, &self.device())
            .await
    }

    /// Where the token embedding is kept.
    pub fn embedding_mode(&self) -> EmbeddingMode {
        self.model.embed_tokens.mode()
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// See [`QwenTextModel::new_cache`]: an empty cache of `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        self.model.new_cache(capacity)
    }

    /// `lm_head(hidden)`: `[B, S, D]` → logits `[B, S, vocab]`; an error if `lm_head` was not
    /// loaded.
    pub fn logits(&self, hidden: Tensor<3>) -> Result<Tensor<3>> {
        match &self.lm_head {
            Some(head) => Ok(head.forward(hidden)),
            None => Err(Error::Input {
                model: "Qwen2_5_VLForConditionalGeneration",
                reason: "lm_head was not loaded (load with LoadOptions { lm_head: true })".into(),
            }),
        }
    }
}

/// Whether `key` is a tensor of the vision tower (`visual.*`, or `model.visual.*` in
/// transformers' in-memory names) in a `text_encoder/` checkpoint.
pub fn is_vision_key(key: &str) -> bool {
    key.starts_with("visual.") || key.starts_with("model.visual.")
}

/// Whether the `text_encoder/` checkpoint tensor `key` of `shape` is the weight of a
/// `torch.nn.Linear` (kept in the loader's precision): every 2-D `*.weight` but the token
/// embedding table (the vision tower's patch convolution is 5-D).
pub fn is_linear_weight(key: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && key.ends_with(".weight") && !key.ends_with(".embed_tokens.weight")
}

/// The stored quantized copy of a `text_encoder/` checkpoint (`weights`): every tensor, with
/// the linear layers (language model, `lm_head`, vision tower) in `precision` (`Q8`/`Q4`) and
/// the rest as stored (the bf16 token embedding too, which a gathered embedding reads rows of).
/// It stands alone ([`Checkpoint::open`] prefers it), so the checkpoint can be removed once it
/// is written. Loading with it gives exactly the layers quantized at load. `origin` (e.g.
/// `repo@commit`) is recorded as `qwen_layered.origin`.
pub fn stored_quantized_layout(
    weights: &SafetensorsFolder,
    precision: Precision,
    origin: &str,
) -> Result<QuantizedLayout> {
    QuantizedLayout::new(
        weights,
        precision,
        "qwen2_5_vl",
        is_linear_weight,
        &[("qwen_layered.origin", MetaValue::String(origin.to_owned()))],
    )
}

/// Bytes the tensors of `weights` (a `text_encoder/` checkpoint) take on the device when they
/// are loaded with `options`, from the headers alone (for a size check before loading):
///
/// - the token embedding: `4 · vocab · D` when resident, nothing when gathered;
/// - `lm_head.weight` only with `options.lm_head`, the vision tower (`visual.*`) only with
///   `vision`;
/// - every other 2-D `*.weight` is a linear layer: in `options.precision` when its `d_in` is a
///   multiple of 32 (`bits / 8` bytes per value plus an f32 scale per 32 values, as
///   [`crate::model::nn::BlockWeight`] holds them), else f32;
/// - everything else (biases, norms, the vision tower's patch convolution) f32.
pub fn device_bytes(weights: &Checkpoint, options: LoadOptions, vision: bool) -> u64 {
    let mut total = 0u64;
    for key in weights.keys() {
        let Some(shape) = weights.shape(key) else {
            continue;
        };
        if !loads(key, options, vision) {
            continue;
        }
        let values: u64 = shape.iter().map(|&d| d as u64).product();
        if is_token_embedding(key) {
            total += 4 * values; // resident (a gathered one is not loaded)
            continue;
        }
        let linear = is_linear_weight(key, shape);
        total += match options.precision.bits() {
            Some(bits) if linear && shape[1].is_multiple_of(crate::weights::BLOCK) => {
                values * u64::from(bits) / 8 + 4 * (values / crate::weights::BLOCK as u64)
            }
            _ => 4 * values,
        };
    }
    total
}

/// Bytes of `weights`' files that loading it with `options` reads (the vision tower with
/// `vision`): the stored sizes of the tensors [`device_bytes`] counts, so a gathered token
/// embedding, a skipped `lm_head` and a vision tower left out are not among them (the page's
/// load progress counts to this, not to the files' whole size).
pub fn read_bytes(weights: &Checkpoint, options: LoadOptions, vision: bool) -> u64 {
    weights
        .keys()
        .into_iter()
        .filter(|key| loads(key, options, vision))
        .filter_map(|key| weights.stored_bytes(key))
        .sum()
}

/// Whether loading a `text_encoder/` checkpoint with `options` (the vision tower with
/// `vision`) reads `key`: not the vision tower without `vision`, not `lm_head` without
/// `options.lm_head`, not the token embedding unless it is resident.
fn loads(key: &str, options: LoadOptions, vision: bool) -> bool {
    if is_vision_key(key) {
        return vision;
    }
    if key == "lm_head.weight" {
        return options.lm_head;
    }
    !is_token_embedding(key) || options.embedding == EmbeddingMode::Resident
}

/// The language model's token embedding (`model.embed_tokens.weight`, or under
/// `model.language_model.`).
fn is_token_embedding(key: &str) -> bool {
    key.ends_with(".embed_tokens.weight") && !is_vision_key(key)
}

/// The key prefix of the decoder stack: `model` (legacy names, what transformers writes) or
/// `model.language_model` (transformers' in-memory names).
fn text_prefix(weights: &Checkpoint) -> Result<&'static str> {
    for prefix in ["model", "model.language_model"] {
        if weights.contains(&format!("{prefix}.embed_tokens.weight")) {
            return Ok(prefix);
        }
    }
    Err(Error::Weights {
        key: "model.embed_tokens.weight".into(),
        file: weights.files(),
        reason: "missing (nor model.language_model.embed_tokens.weight): not a Qwen2.5-VL \
                 text encoder checkpoint"
            .into(),
    })
}
