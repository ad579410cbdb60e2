//! Where the transformer's blocks come from during a forward: all resident
//! ([`ResidentBlocks`]), or streamed from the weight source through a ring of `R` resident
//! blocks ([`BlockStream`]).
//!
//! Streaming is for devices that cannot hold all `num_layers` blocks (60 × ≈340 M weights for
//! the real model): only the non-block tensors and `R` blocks are on the device; block `i` is
//! read (byte ranges of the checkpoint, via [`TensorLoader`]) and uploaded when the forward
//! reaches it, evicting the oldest resident block first. With `R < num_layers` every forward
//! reads every block once (a sequential sweep always misses a FIFO ring smaller than the
//! sweep); with `R ≥ num_layers` blocks are read once and stay.

use std::collections::VecDeque;

use burn::tensor::Device;

use super::block::QwenImageTransformerBlock;
use super::config::QwenImageTransformerConfig;
use super::model::QwenImageTransformer2DModel;
use crate::error::{Error, Result};
use crate::weights::{
    Checkpoint, GgufFile, LinearLoad, SafetensorsFolder, WeightSource, open_component,
};

/// Hands the transformer its blocks, in order, during one forward
/// ([`QwenImageTransformer2DModel::forward_with`]).
#[allow(async_fn_in_trait)] // used generically, never as a trait object; wasm futures are !Send
pub trait BlockProvider {
    /// How many blocks there are (must equal the config's `num_layers`).
    fn num_blocks(&self) -> usize;

    /// Block `index` (`transformer_blocks.{index}`), on the model's device.
    async fn block(&mut self, index: usize) -> Result<&QwenImageTransformerBlock>;

    /// Called when no more forwards follow for a while (before the VAE decode): a streaming
    /// provider drops its resident blocks. Resident blocks stay.
    fn release(&mut self) {}
}

/// All blocks resident: the model's own `transformer_blocks`.
#[derive(Debug, Clone, Copy)]
pub struct ResidentBlocks<'m>(pub &'m [QwenImageTransformerBlock]);

impl BlockProvider for ResidentBlocks<'_> {
    fn num_blocks(&self) -> usize {
        self.0.len()
    }

    async fn block(&mut self, index: usize) -> Result<&QwenImageTransformerBlock> {
        self.0.get(index).ok_or_else(|| Error::Input {
            model: "QwenImageTransformer2DModel",
            reason: format!("block {index} of {} asked for", self.0.len()),
        })
    }
}

/// Counters of a [`BlockStream`], for tests and the progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Blocks read from the source and uploaded so far.
    pub loads: usize,
    /// Blocks evicted (dropped from the device) so far.
    pub evictions: usize,
    /// The most blocks ever resident at once (never more than the ring size).
    pub peak_resident: usize,
}

/// Streams transformer blocks from a weight source through a ring of `ring` resident blocks.
///
/// Build it with [`QwenImageTransformer2DModel::load_streaming`] (which also loads the
/// non-block part) or [`BlockStream::new`].
pub struct BlockStream<S: WeightSource> {
    source: S,
    index: Checkpoint,
    device: Device,
    linear: LinearLoad,
    config: QwenImageTransformerConfig,
    ring_size: usize,
    keys_per_block: usize,
    ring: VecDeque<(usize, QwenImageTransformerBlock)>,
    stats: StreamStats,
}

impl<S: WeightSource> std::fmt::Debug for BlockStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStream")
            .field("ring_size", &self.ring_size)
            .field(
                "resident",
                &self.ring.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S: WeightSource> BlockStream<S> {
    fn with_index(
        source: S,
        index: Checkpoint,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: LinearLoad,
        ring_size: usize,
    ) -> Result<Self> {
        if ring_size == 0 {
            return Err(Error::Input {
                model: "BlockStream",
                reason: "the ring must hold at least one block".into(),
            });
        }
        let keys = index.keys();
        let n = config.num_layers;
        // Every block must have as many tensors as block 0 (the exact keys and shapes are
        // checked when a block is loaded); block 0 is loaded by `preload` below.
        let count = |i: usize| {
            let prefix = format!("transformer_blocks.{i}.");
            keys.iter().filter(|k| k.starts_with(&prefix)).count()
        };
        let keys_per_block = count(0);
        for i in 1..n {
            if count(i) != keys_per_block {
                return Err(Error::Weights {
                    key: format!("transformer_blocks.{i}.*"),
                    file: "transformer".into(),
                    reason: format!("{} tensors stored, block 0 has {keys_per_block}", count(i)),
                });
            }
        }
        Ok(Self {
            source,
            index,
            device: device.clone(),
            linear,
            config: config.clone(),
            ring_size,
            keys_per_block,
            ring: VecDeque::with_capacity(ring_size),
            stats: StreamStats::default(),
        })
    }

    /// A stream over the blocks of the safetensors `folder` (already opened) of `source`.
    pub fn new(
        source: S,
        folder: SafetensorsFolder,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: impl Into<LinearLoad>,
        ring_size: usize,
    ) -> Result<Self> {
        let index = Checkpoint::Safetensors(folder);
        Self::with_index(source, index, config, device, linear.into(), ring_size)
    }

    /// A stream over the blocks of a GGUF file (diffusers key names).
    pub fn gguf(
        source: S,
        file: GgufFile,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: impl Into<LinearLoad>,
        ring_size: usize,
    ) -> Result<Self> {
        let index = Checkpoint::Gguf(file);
        Self::with_index(source, index, config, device, linear.into(), ring_size)
    }

    /// The source blocks are read from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The ring size `R`.
    pub fn ring_size(&self) -> usize {
        self.ring_size
    }

    /// Indices of the blocks resident now, oldest first.
    pub fn resident(&self) -> Vec<usize> {
        self.ring.iter().map(|(i, _)| *i).collect()
    }

    /// The counters so far.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Drops every resident block (e.g. before the VAE decode).
    pub fn clear(&mut self) {
        self.stats.evictions += self.ring.len();
        self.ring.clear();
    }

    /// Reads block `index` from the source, checking that it takes exactly the block's tensors.
    async fn load(&self, index: usize) -> Result<QwenImageTransformerBlock> {
        let mut l = self
            .index
            .loader(&self.source, &self.device)
            .with_linear_load(self.linear);
        let prefix = format!("transformer_blocks.{index}");
        let c = &self.config;
        let block = QwenImageTransformerBlock::load(
            &mut l,
            &prefix,
            c.num_attention_heads,
            c.attention_head_dim,
        )
        .await?;
        if l.taken() != self.keys_per_block {
            return Err(Error::Weights {
                key: format!("{prefix}.*"),
                file: "transformer".into(),
                reason: format!(
                    "{} tensors stored, the block takes {}",
                    self.keys_per_block,
                    l.taken()
                ),
            });
        }
        Ok(block)
    }
}

impl<S: WeightSource> BlockProvider for BlockStream<S> {
    fn num_blocks(&self) -> usize {
        self.config.num_layers
    }

    fn release(&mut self) {
        self.clear();
    }

    async fn block(&mut self, index: usize) -> Result<&QwenImageTransformerBlock> {
        if index >= self.config.num_layers {
            return Err(Error::Input {
                model: "BlockStream",
                reason: format!(
                    "block {index} asked for, the model has {}",
                    self.config.num_layers
                ),
            });
        }
        if let Some(pos) = self.ring.iter().position(|(i, _)| *i == index) {
            return Ok(&self.ring[pos].1);
        }
        // Evict before loading, so that at most `ring_size` blocks are ever resident.
        while self.ring.len() >= self.ring_size {
            self.ring.pop_front();
            self.stats.evictions += 1;
        }
        let block = self.load(index).await?;
        self.ring.push_back((index, block));
        self.stats.loads += 1;
        self.stats.peak_resident = self.stats.peak_resident.max(self.ring.len());
        Ok(&self.ring.back().expect("just pushed").1)
    }
}

impl QwenImageTransformer2DModel {
    /// Loads `{folder}/config.json` and the non-block tensors of `folder` onto `device`, and a
    /// [`BlockStream`] with a ring of `ring_size` blocks for the rest. Every checkpoint tensor
    /// is accounted for: the non-block ones are taken here (an unexpected one is an error, as
    /// in [`load`](Self::load)), block 0 is loaded once to check the block layout.
    ///
    /// The stream owns `source`: pass `&source` to borrow it, or an `Rc` of it to share it.
    /// Run the model with [`forward_with`](Self::forward_with)`(input, &mut stream)`.
    pub async fn load_streaming<S: WeightSource>(
        source: S,
        folder: &str,
        device: &Device,
        linear: impl Into<LinearLoad>,
        ring_size: usize,
    ) -> Result<(Self, BlockStream<S>)> {
        let (config, config_file, weights) =
            open_component::<QwenImageTransformerConfig>(&source, folder).await?;
        config.validate(&config_file)?;
        let index = Checkpoint::Safetensors(weights);
        Self::stream_from(source, index, &config, device, linear.into(), ring_size).await
    }

    /// [`load_streaming`](Self::load_streaming) from a GGUF file with diffusers key names
    /// (ComfyUI-GGUF's `qwen_image` files, as [`load_gguf`](Self::load_gguf) reads them);
    /// `config` comes from a diffusers `config.json`, since the file carries none.
    pub async fn load_streaming_gguf<S: WeightSource>(
        source: S,
        gguf_file: &str,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: impl Into<LinearLoad>,
        ring_size: usize,
    ) -> Result<(Self, BlockStream<S>)> {
        let index = Checkpoint::Gguf(GgufFile::open(&source, gguf_file).await?);
        Self::stream_from(source, index, config, device, linear.into(), ring_size).await
    }

    /// The non-block part from `index`, checked to take every non-block tensor, and the stream
    /// over the blocks, with block 0 loaded.
    async fn stream_from<S: WeightSource>(
        source: S,
        index: Checkpoint,
        config: &QwenImageTransformerConfig,
        device: &Device,
        linear: LinearLoad,
        ring_size: usize,
    ) -> Result<(Self, BlockStream<S>)> {
        let mut l = index.loader(&source, device).with_linear_load(linear);
        let model = Self::load_without_blocks(config, &mut l).await?;
        let taken = l.taken();
        drop(l);
        let is_block = |k: &str| k.starts_with("transformer_blocks.");
        let keys = index.keys();
        if taken != keys.iter().filter(|k| !is_block(k)).count() {
            // Reload with the full checker to name the unexpected tensor.
            let mut l = index.loader(&source, device).with_linear_load(linear);
            Self::load_without_blocks(config, &mut l).await?;
            for key in keys.iter().filter(|k| is_block(k)) {
                l.skip(key, index.shape(key).unwrap_or_default())?;
            }
            l.finish()?;
        }
        let mut stream = BlockStream::with_index(source, index, config, device, linear, ring_size)?;
        stream.block(0).await?;
        Ok((model, stream))
    }
}
