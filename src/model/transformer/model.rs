//! `QwenImageTransformer2DModel`: the full denoiser.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py#L791-L1031>

use crate::model::nn::Linear;
use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::block::{BlockLimits, QwenImageTransformerBlock};
use super::config::QwenImageTransformerConfig;
use super::embeddings::{ImgShape, QwenEmbedRope, QwenTimestepProjEmbeddings, RopeDevice};
use super::streaming::BlockProvider;
use crate::error::{Error, Result};
use crate::model::nn::{RmsNorm, layer_norm, silu_linear};
use crate::weights::{
    GgufFile, LinearLoad, MetaValue, Precision, QuantizedLayout, SafetensorsFolder, TensorLoader,
    WeightSource, open_component,
};

/// diffusers `AdaLayerNormContinuous(D, D, elementwise_affine=False, eps=1e-6)`:
/// `LN(x) · (1 + scale) + shift` with `[scale, shift] = linear(silu(temb))` (scale first).
///
/// <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/normalization.py#L307-L351>
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous {
    /// `norm_out.linear`: `[D → 2·D]`.
    pub linear: Linear,
}

impl AdaLayerNormContinuous {
    /// - x: `[B, S, D]`, temb: `[B, D]` → `[B, S, D]`
    pub fn forward(&self, x: Tensor<3>, temb: Tensor<2>) -> Tensor<3> {
        let emb = silu_linear(&self.linear, temb); // [B, 2D]
        let mut parts = emb.chunk(2, 1).into_iter();
        let scale = parts
            .next()
            .expect("chunk(2) yields 2 parts")
            .unsqueeze_dim::<3>(1);
        let shift = parts
            .next()
            .expect("chunk(2) yields 2 parts")
            .unsqueeze_dim::<3>(1);
        layer_norm(x, 1e-6) * (scale + 1.0) + shift
    }
}

/// The arguments of `QwenImageTransformer2DModel.forward`, with diffusers' semantics.
#[derive(Debug, Clone)]
pub struct TransformerInput<'a> {
    /// `hidden_states`: packed image tokens `[B, S_img, in_channels]`, in `img_shapes` order
    /// (for the Layered pipeline: composite, layers 1..N, then the condition image).
    pub hidden_states: Tensor<3>,
    /// `encoder_hidden_states`: text embeddings `[B, S_txt, joint_attention_dim]`.
    pub encoder_hidden_states: Tensor<3>,
    /// `encoder_hidden_states_mask`: `[B, S_txt]`, true = real token, false = padding.
    /// `None` means no padding (the pipeline passes `None` for batch 1). The RoPE text length
    /// is always `S_txt` (diffusers 0.42 has no `txt_seq_lens` argument any more).
    pub encoder_hidden_states_mask: Option<Tensor<2, Bool>>,
    /// `timestep`: `[B]`, σ in [0, 1] (the pipeline passes `t / 1000`).
    pub timestep: Tensor<1>,
    /// `img_shapes`: per sample, the `(frames, h, w)` of each image entry in packed tokens.
    /// Like diffusers, RoPE uses the first sample's entries; here differing samples are an
    /// error instead of diffusers' warning.
    pub img_shapes: &'a [Vec<ImgShape>],
    /// `additional_t_cond`: `[B]` rows of `addition_t_embedding` (the pipeline's `is_rgb`, always
    /// 0); required iff `use_additional_t_cond`.
    pub additional_t_cond: Option<Tensor<1, Int>>,
}

/// Intermediate tensors of one forward, for parity tests and debugging.
#[derive(Debug, Clone, Default)]
pub struct ForwardTrace {
    /// `time_text_embed` output `[B, D]`.
    pub temb: Option<Tensor<2>>,
    /// `img_in` output `[B, S_img, D]`.
    pub img_in: Option<Tensor<3>>,
    /// `txt_norm` output `[B, S_txt, joint_attention_dim]`.
    pub txt_norm: Option<Tensor<3>>,
    /// `txt_in` output `[B, S_txt, D]`.
    pub txt_in: Option<Tensor<3>>,
    /// Per block `(text, image)` outputs: `[B, S_txt, D]`, `[B, S_img, D]`.
    pub blocks: Vec<(Tensor<3>, Tensor<3>)>,
    /// `norm_out` output `[B, S_img, D]`.
    pub norm_out: Option<Tensor<3>>,
}

/// The Qwen-Image MMDiT (with the Layered variant's Layer3D RoPE and additional timestep
/// embedding when the config asks for them).
///
/// Checkpoint keys map one-to-one to fields, except these (one table for the whole model):
///
/// | diffusers key segment | Rust field | why |
/// |---|---|---|
/// | `transformer_blocks.{i}.img_mod.1` / `txt_mod.1` | `img_mod` / `txt_mod` | `nn.Sequential(SiLU, Linear)`: SiLU is in `forward` |
/// | `….attn.to_out.0` | `attn.to_out` | `nn.ModuleList([Linear, Dropout])` |
/// | `….img_mlp.net.0.proj` / `txt_mlp.net.0.proj` | `img_mlp.proj_in` / `txt_mlp.proj_in` | `FeedForward`'s GELU wrapper |
/// | `….img_mlp.net.2` / `txt_mlp.net.2` | `img_mlp.proj_out` / `txt_mlp.proj_out` | `nn.ModuleList` index |
/// | `*.weight` of a Linear `[out, in]` | `Linear::weight`: `LinearWeight::F32` `[in, out]` (a transposed view), or `LinearWeight::Blocks` (CPU) / `LinearWeight::Quantized` (wgpu) `[out, in]` | by the loader's `Precision` |
///
/// LayerNorms have no parameters; `pos_embed` has no checkpoint tensors (computed tables).
#[derive(Module, Debug)]
pub struct QwenImageTransformer2DModel {
    /// `[in_channels → D]`.
    pub img_in: Linear,
    /// RMSNorm over `joint_attention_dim` (eps 1e-6).
    pub txt_norm: RmsNorm,
    /// `[joint_attention_dim → D]`.
    pub txt_in: Linear,
    /// Timestep (+ additional) embedding.
    pub time_text_embed: QwenTimestepProjEmbeddings,
    /// The `num_layers` blocks.
    pub transformer_blocks: Vec<QwenImageTransformerBlock>,
    /// Final adaptive LayerNorm.
    pub norm_out: AdaLayerNormContinuous,
    /// `[D → patch² · out_channels]`.
    pub proj_out: Linear,
    /// The rotary table builder (no weights).
    #[module(skip)]
    pub pos_embed: QwenEmbedRope,
    /// The config the model was built from.
    #[module(skip)]
    pub config: QwenImageTransformerConfig,
    /// The most tokens each block's MLPs take at a time, when a device's largest buffer limits
    /// the `[B, S, 4·D]` hidden activation (the memory plan's `ChunkSequence`; see
    /// `MemoryPlan::apply`): a longer sequence runs in chunks. `None`: all at once.
    #[module(skip)]
    pub mlp_max_tokens: Option<usize>,
    /// The most bytes of attention scores a block holds at once, on wgpu, in runs of query
    /// rows (the memory plan's `attention_scores_bytes`; see `MemoryPlan::apply`). `None`: the
    /// flash-attention kernel, which stores no scores (slower; BENCHMARKS.md).
    #[module(skip)]
    pub attention_scores_bytes: Option<usize>,
    /// The most tokens (image and text) one forward may carry, when a device's largest buffer
    /// limits the `[B, S, D]` token stream (the memory plan's `max_tokens`); a longer input is
    /// an error naming both numbers. `None`: no limit.
    #[module(skip)]
    pub max_tokens: Option<usize>,
}

impl QwenImageTransformer2DModel {
    /// Loads `{folder}/config.json` and the weights of `folder` (e.g. `"transformer"`), and
    /// rejects missing, unexpected or wrongly shaped tensors.
    pub async fn load<S: WeightSource>(source: &S, folder: &str, device: &Device) -> Result<Self> {
        Self::load_precision(source, folder, device, Precision::F32).await
    }

    /// [`load`](Self::load) with the linear weights kept as `linear` says: a [`Precision`], or a
    /// [`LinearLoad`] that also splits weights over a device's buffer limit by rows.
    pub async fn load_precision<S: WeightSource>(
        source: &S,
        folder: &str,
        device: &Device,
        linear: impl Into<LinearLoad>,
    ) -> Result<Self> {
        let (config, config_file, weights) =
            open_component::<QwenImageTransformerConfig>(source, folder).await?;
        config.validate(&config_file)?;
        let mut loader = TensorLoader::new(source, &weights, device).with_linear_load(linear);
        let model = Self::load_with(&config, &mut loader).await?;
        loader.finish()?;
        Ok(model)
    }

    /// Loads the weights from a GGUF file with diffusers key names (ComfyUI-GGUF's
    /// `qwen_image` files), keeping the linear weights in `precision`. GGUF files of diffusion
    /// models carry no architecture config, so it is given (from a diffusers `config.json`).
    pub async fn load_gguf<S: WeightSource>(
        source: &S,
        gguf_file: &str,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: impl Into<LinearLoad>,
    ) -> Result<Self> {
        let gguf = GgufFile::open(source, gguf_file).await?;
        let mut loader = TensorLoader::gguf(source, &gguf, device).with_linear_load(linear);
        let model = Self::load_with(config, &mut loader).await?;
        loader.finish()?;
        Ok(model)
    }

    /// Whether the checkpoint tensor `key` of `shape` is the weight of a `torch.nn.Linear`
    /// (loaded with [`TensorLoader::linear`], so kept in the loader's precision): every 2-D
    /// `*.weight` of this model but the `addition_t_embedding` table (an `nn.Embedding`).
    pub fn is_linear_weight(key: &str, shape: &[usize]) -> bool {
        shape.len() == 2
            && key.ends_with(".weight")
            && !key.ends_with("addition_t_embedding.weight")
    }

    /// The GGUF file that stores `folder`'s checkpoint (bf16/f16/f32 safetensors) with its
    /// linear weights already in `precision` (`Q8`/`Q4`): the layout to write with
    /// [`write_quantized`](crate::weights::write_quantized). Loading that file with
    /// [`load_gguf`](Self::load_gguf) in the same precision gives exactly the model
    /// [`load_precision`](Self::load_precision) quantizes from the checkpoint.
    /// `origin` (e.g. `repo@commit`) is recorded as `qwen_layered.origin`.
    pub fn stored_quantized_layout(
        folder: &SafetensorsFolder,
        precision: Precision,
        origin: &str,
    ) -> Result<QuantizedLayout> {
        QuantizedLayout::new(
            folder,
            precision,
            "qwen_image",
            Self::is_linear_weight,
            &[("qwen_layered.origin", MetaValue::String(origin.to_owned()))],
        )
    }

    /// Builds the model from `config`, taking its tensors from `l` (keys at the root).
    pub async fn load_with<S: WeightSource>(
        config: &QwenImageTransformerConfig,
        l: &mut TensorLoader<'_, S>,
    ) -> Result<Self> {
        Self::load_parts(config, l, true).await
    }

    /// Builds the model without its blocks (`transformer_blocks` empty), taking every other
    /// tensor from `l`: the resident part of a streaming transformer (see
    /// [`BlockStream`](super::BlockStream)); it runs only with
    /// [`forward_with`](Self::forward_with).
    pub async fn load_without_blocks<S: WeightSource>(
        config: &QwenImageTransformerConfig,
        l: &mut TensorLoader<'_, S>,
    ) -> Result<Self> {
        Self::load_parts(config, l, false).await
    }

    async fn load_parts<S: WeightSource>(
        config: &QwenImageTransformerConfig,
        l: &mut TensorLoader<'_, S>,
        with_blocks: bool,
    ) -> Result<Self> {
        config.validate("transformer config")?;
        let dim = config.inner_dim();
        let (heads, head_dim) = (config.num_attention_heads, config.attention_head_dim);
        let img_in = l.linear("img_in", config.in_channels, dim, true).await?;
        let txt_norm = RmsNorm::load(l, "txt_norm", config.joint_attention_dim, 1e-6).await?;
        let txt_in = l
            .linear("txt_in", config.joint_attention_dim, dim, true)
            .await?;
        let time_text_embed = QwenTimestepProjEmbeddings::load(
            l,
            "time_text_embed",
            dim,
            config.use_additional_t_cond,
        )
        .await?;
        let resident = if with_blocks { config.num_layers } else { 0 };
        let mut transformer_blocks = Vec::with_capacity(resident);
        for i in 0..resident {
            transformer_blocks.push(
                QwenImageTransformerBlock::load(
                    l,
                    &format!("transformer_blocks.{i}"),
                    heads,
                    head_dim,
                )
                .await?,
            );
        }
        let norm_out = AdaLayerNormContinuous {
            linear: l.linear("norm_out.linear", dim, 2 * dim, true).await?,
        };
        let out = config.patch_size * config.patch_size * config.out_channels();
        let proj_out = l.linear("proj_out", dim, out, true).await?;
        let a = &config.axes_dims_rope;
        Ok(Self {
            img_in,
            txt_norm,
            txt_in,
            time_text_embed,
            transformer_blocks,
            norm_out,
            proj_out,
            pos_embed: QwenEmbedRope {
                axes_dim: [a[0], a[1], a[2]],
                theta: 10000.0,
                layer3d: config.use_layer3d_rope,
            },
            config: config.clone(),
            mlp_max_tokens: None,
            attention_scores_bytes: None,
            max_tokens: None,
        })
    }

    /// Checks the argument shapes against each other and the config; returns the shared
    /// per-sample `img_shapes`.
    fn check<'a>(&self, input: &TransformerInput<'a>) -> Result<&'a [ImgShape]> {
        let bad = |reason: String| {
            Err(Error::Input {
                model: "QwenImageTransformer2DModel",
                reason,
            })
        };
        let [b, s_img, c] = input.hidden_states.dims();
        let [bt, s_txt, ct] = input.encoder_hidden_states.dims();
        if c != self.config.in_channels {
            return bad(format!(
                "hidden_states {:?}: last axis must be in_channels {}",
                [b, s_img, c],
                self.config.in_channels
            ));
        }
        if ct != self.config.joint_attention_dim || bt != b {
            return bad(format!(
                "encoder_hidden_states {:?} must be [{b}, S_txt, {}]",
                [bt, s_txt, ct],
                self.config.joint_attention_dim
            ));
        }
        if input.timestep.dims() != [b] {
            return bad(format!(
                "timestep {:?} must be [{b}]",
                input.timestep.dims()
            ));
        }
        if let Some(m) = &input.encoder_hidden_states_mask
            && m.dims() != [b, s_txt]
        {
            return bad(format!(
                "encoder_hidden_states_mask {:?} must be [{b}, {s_txt}]",
                m.dims()
            ));
        }
        if let Some(a) = &input.additional_t_cond
            && a.dims() != [b]
        {
            return bad(format!("additional_t_cond {:?} must be [{b}]", a.dims()));
        }
        let Some(first) = input.img_shapes.first() else {
            return bad("img_shapes is empty".into());
        };
        if input.img_shapes.iter().any(|s| s != first) {
            return bad(format!(
                "img_shapes differ between samples ({:?}); RoPE would use the first only",
                input.img_shapes
            ));
        }
        let tokens: usize = first.iter().map(|(f, h, w)| f * h * w).sum();
        if tokens != s_img {
            return bad(format!(
                "img_shapes {first:?} describe {tokens} image tokens, hidden_states has {s_img}"
            ));
        }
        Ok(first)
    }

    /// The forward pass with the resident blocks (`transformer_blocks`).
    ///
    /// - returns `[B, S_img, patch² · out_channels]` for all image tokens (the pipeline keeps
    ///   only the noisy ones, i.e. drops the condition image's tokens at the end).
    pub fn forward(&self, input: TransformerInput<'_>) -> Result<Tensor<3>> {
        self.forward_traced(input, None)
    }

    /// [`forward`](Self::forward), also recording intermediate tensors into `trace`.
    pub fn forward_traced(
        &self,
        input: TransformerInput<'_>,
        mut trace: Option<&mut ForwardTrace>,
    ) -> Result<Tensor<3>> {
        self.check_block_count(self.transformer_blocks.len())?;
        let mut state = self.prepare(input, trace.as_deref_mut())?;
        for block in &self.transformer_blocks {
            state = state.apply(block, self.block_limits(), trace.as_deref_mut());
        }
        Ok(self.finish(state, trace))
    }

    /// The forward pass taking block `i` from `blocks` when its turn comes: the same
    /// computation as [`forward`](Self::forward), for resident blocks
    /// ([`ResidentBlocks`](super::ResidentBlocks)) or blocks streamed from the weight source
    /// ([`BlockStream`](super::BlockStream)), whose `transformer_blocks` may then be empty.
    ///
    /// - returns `[B, S_img, patch² · out_channels]`
    pub async fn forward_with<P: BlockProvider>(
        &self,
        input: TransformerInput<'_>,
        blocks: &mut P,
    ) -> Result<Tensor<3>> {
        self.check_block_count(blocks.num_blocks())?;
        let mut state = self.prepare(input, None)?;
        for i in 0..self.config.num_layers {
            state = state.apply(blocks.block(i).await?, self.block_limits(), None);
        }
        Ok(self.finish(state, None))
    }

    /// Two forwards sharing each block as it comes, `a` then `b` through block 0, then block
    /// 1, …: what [`forward_with`](Self::forward_with) gives for each, but a streamed block is
    /// read once for both (the pipeline's prompt and negative-prompt passes under true CFG),
    /// at the cost of holding the second input's token streams alongside.
    ///
    /// - returns `([B, S_img, patch² · out_channels], the same for b)`
    pub async fn forward_pair_with<P: BlockProvider>(
        &self,
        a: TransformerInput<'_>,
        b: TransformerInput<'_>,
        blocks: &mut P,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        self.check_block_count(blocks.num_blocks())?;
        let (mut a, mut b) = (self.prepare(a, None)?, self.prepare(b, None)?);
        for i in 0..self.config.num_layers {
            let block = blocks.block(i).await?;
            a = a.apply(block, self.block_limits(), None);
            b = b.apply(block, self.block_limits(), None);
        }
        Ok((self.finish(a, None), self.finish(b, None)))
    }

    /// The bounds every block runs within (this model's run-time settings).
    pub fn block_limits(&self) -> BlockLimits {
        BlockLimits {
            mlp_max_tokens: self.mlp_max_tokens,
            attention_scores_bytes: self.attention_scores_bytes,
        }
    }

    fn check_block_count(&self, have: usize) -> Result<()> {
        if have != self.config.num_layers {
            return Err(Error::Input {
                model: "QwenImageTransformer2DModel",
                reason: format!(
                    "{have} transformer blocks available, the config has num_layers = {} (a \
                     transformer loaded for streaming runs with forward_with and a BlockStream)",
                    self.config.num_layers
                ),
            });
        }
        Ok(())
    }

    /// Everything before the blocks: input projections, timestep embedding, RoPE tables.
    fn prepare(
        &self,
        input: TransformerInput<'_>,
        trace: Option<&mut ForwardTrace>,
    ) -> Result<BlockState> {
        let img_shapes = self.check(&input)?;
        let device = input.hidden_states.device();
        let s_txt = input.encoder_hidden_states.dims()[1];
        let s_img = input.hidden_states.dims()[1];
        if let Some(max) = self.max_tokens.filter(|&max| s_img + s_txt > max) {
            return Err(Error::Input {
                model: "QwenImageTransformer2DModel",
                reason: format!(
                    "{} tokens ({s_img} image, {s_txt} text) of {} values do not fit this \
                     device's largest buffer, which holds {max}: use a shorter prompt, a \
                     smaller resolution or fewer layers",
                    s_img + s_txt,
                    self.config.inner_dim()
                ),
            });
        }

        let hidden_states = self.img_in.forward(input.hidden_states); // [B, S_img, D]
        let txt_normed = self.txt_norm.forward(input.encoder_hidden_states); // [B, S_txt, J]
        let encoder_hidden_states = self.txt_in.forward(txt_normed.clone()); // [B, S_txt, D]
        let temb = self
            .time_text_embed
            .forward(input.timestep, input.additional_t_cond)?; // [B, D]
        let rope: RopeDevice = self.pos_embed.tables(img_shapes, s_txt)?.to_device(&device);
        if let Some(t) = trace {
            t.temb = Some(temb.clone());
            t.img_in = Some(hidden_states.clone());
            t.txt_norm = Some(txt_normed);
            t.txt_in = Some(encoder_hidden_states.clone());
        }
        Ok(BlockState {
            hidden_states,
            encoder_hidden_states,
            mask: input.encoder_hidden_states_mask,
            temb,
            rope,
        })
    }

    /// Everything after the blocks: `norm_out` and `proj_out`.
    fn finish(&self, state: BlockState, trace: Option<&mut ForwardTrace>) -> Tensor<3> {
        let hidden_states = self.norm_out.forward(state.hidden_states, state.temb); // [B, S_img, D]
        if let Some(t) = trace {
            t.norm_out = Some(hidden_states.clone());
        }
        self.proj_out.forward(hidden_states)
    }
}

/// The tensors carried from block to block during one forward.
struct BlockState {
    /// Image stream `[B, S_img, D]`.
    hidden_states: Tensor<3>,
    /// Text stream `[B, S_txt, D]`.
    encoder_hidden_states: Tensor<3>,
    /// `[B, S_txt]` text mask, if any.
    mask: Option<Tensor<2, Bool>>,
    /// `[B, D]`.
    temb: Tensor<2>,
    /// RoPE tables for this sequence.
    rope: RopeDevice,
}

impl BlockState {
    /// Runs one block on both streams (by value, so the inputs can be freed or reused) within
    /// `limits` (the model's settings).
    fn apply(
        self,
        block: &QwenImageTransformerBlock,
        limits: BlockLimits,
        trace: Option<&mut ForwardTrace>,
    ) -> Self {
        let (txt, img) = block.forward_chunked(
            self.hidden_states,
            self.encoder_hidden_states,
            self.mask.clone(),
            &self.temb,
            &self.rope,
            limits,
        );
        if let Some(t) = trace {
            t.blocks.push((txt.clone(), img.clone()));
        }
        Self {
            hidden_states: img,
            encoder_hidden_states: txt,
            ..self
        }
    }
}
