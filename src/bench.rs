//! Full-size synthetic workloads of the real transformer, shared by the benchmark binary
//! (`src/bin/bench.rs`) and the full-size precision test (`tests/native/fullsize_block.rs`).
//!
//! Blocks have the real Qwen-Image-Layered width (24 heads × 128 = 3072, MLP 12288) and seeded
//! random weights from a [`SyntheticSource`] (PyTorch's default init), built by the real
//! loading code ([`TensorLoader`], [`QwenImageTransformerBlock::load`]) in any [`Precision`].
//! Sequences can be the real one (640², 4 layers: 9600 image tokens) or shorter.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::gpu::read_f32;
use crate::model::transformer::{ImgShape, QwenEmbedRope, QwenImageTransformerBlock, RopeDevice};
use crate::pipeline::{Dimensions, seeded_normal};
use crate::weights::synthetic::transformer_block_tensors;
use crate::weights::{
    MemorySource, Precision, SafetensorsFolder, SyntheticSource, TensorLoader, WeightSource,
};

/// Attention heads of the real transformer.
pub const HEADS: usize = 24;
/// Head size.
pub const HEAD_DIM: usize = 128;
/// Model width `HEADS · HEAD_DIM`.
pub const DIM: usize = HEADS * HEAD_DIM;
/// MLP width (`4 · DIM`).
pub const FF: usize = 4 * DIM;
/// Blocks of the real transformer.
pub const LAYERS: usize = 60;
/// Width of the text encoder's `prompt_embeds` (`joint_attention_dim`).
pub const TEXT_DIM: usize = 3584;
/// Latent channels of a packed token (`in_channels`, and `patch² · out_channels` out).
pub const TOKEN_CHANNELS: usize = 64;
/// The model folder of synthetic sources.
pub const FOLDER: &str = "transformer";
/// The weight file of synthetic sources.
pub const FILE: &str = "transformer/diffusion_pytorch_model.safetensors";

/// The token layout a block runs on: image entries (for RoPE) and the text length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockShape {
    /// `img_shapes` of one sample: `(frame, rows, cols)` per entry, the condition last.
    pub img_shapes: Vec<ImgShape>,
    /// Text tokens.
    pub s_txt: usize,
}

impl BlockShape {
    /// The pipeline's layout for a `resolution`² input with `layers` layers (each layer, the
    /// composite and the condition image are one frame of `(R/16)²` tokens).
    pub fn pipeline(resolution: u32, layers: usize, s_txt: usize) -> Result<Self> {
        let dims = Dimensions::new(resolution, resolution).map_err(|e| Error::Input {
            model: "bench",
            reason: e.to_string(),
        })?;
        Ok(Self {
            img_shapes: dims.img_shapes(layers),
            s_txt,
        })
    }

    /// A short layout: `frames` frames of `rows × cols` tokens.
    pub fn frames(frames: usize, rows: usize, cols: usize, s_txt: usize) -> Self {
        Self {
            img_shapes: vec![(1, rows, cols); frames],
            s_txt,
        }
    }

    /// Image tokens.
    pub fn s_img(&self) -> usize {
        self.img_shapes.iter().map(|(f, h, w)| f * h * w).sum()
    }
}

/// Multiply-adds × 2 of one block on `shape` (batch 1): the linear layers of both streams, the
/// two modulation linears (one row each) and the two attention products `Q·Kᵀ`, `P·V` over the
/// joint sequence. Element-wise work (norms, RoPE, softmax, GELU) is not counted.
pub fn block_flops(s_img: usize, s_txt: usize) -> f64 {
    let (d, ff) = (DIM as f64, FF as f64);
    let tokens = (s_img + s_txt) as f64;
    let linears = 2.0 * tokens * (4.0 * d * d + 2.0 * d * ff); // q, k, v, out; MLP in + out
    let modulation = 2.0 * 2.0 * d * 6.0 * d;
    let s = tokens;
    let attention = 2.0 * 2.0 * s * s * d;
    linears + modulation + attention
}

/// FLOPs of one transformer forward (batch 1): [`LAYERS`] blocks plus the input and output
/// projections (`img_in` 64 → 3072, `txt_in` 3584 → 3072, `proj_out` 3072 → 64, `norm_out`).
pub fn forward_flops(s_img: usize, s_txt: usize) -> f64 {
    let d = DIM as f64;
    let (si, st) = (s_img as f64, s_txt as f64);
    let io = 2.0 * si * TOKEN_CHANNELS as f64 * d * 2.0 + 2.0 * st * TEXT_DIM as f64 * d;
    LAYERS as f64 * block_flops(s_img, s_txt) + io + 2.0 * d * 2.0 * d
}

/// A synthetic transformer checkpoint holding `blocks` blocks (`transformer_blocks.{0..blocks}.*`)
/// of `heads` heads × [`HEAD_DIM`] ([`HEADS`] for the real width) drawn from `seed`, in BF16
/// like the real one.
pub fn blocks_source(blocks: usize, heads: usize, seed: u64) -> Result<SyntheticSource> {
    let tensors = (0..blocks)
        .flat_map(|i| {
            transformer_block_tensors(&format!("transformer_blocks.{i}"), heads, HEAD_DIM)
        })
        .collect();
    SyntheticSource::new(FILE, tensors, seed)
}

/// The source's file read once into memory (so that several loads do not regenerate it).
pub async fn in_memory(source: &SyntheticSource) -> Result<MemorySource> {
    let mut mem = MemorySource::new();
    mem.insert(FILE, source.read_all(FILE).await?);
    Ok(mem)
}

/// Loads every block of a synthetic checkpoint of `heads` heads (see [`blocks_source`]) onto
/// `device` with linear weights in `precision`, through [`TensorLoader`] (an error if any
/// tensor is left).
pub async fn load_blocks<S: WeightSource>(
    source: &S,
    heads: usize,
    device: &Device,
    precision: Precision,
) -> Result<Vec<QwenImageTransformerBlock>> {
    let folder = SafetensorsFolder::open(source, FOLDER).await?;
    let blocks = folder
        .keys()
        .filter(|k| k.ends_with(".img_mod.1.weight"))
        .count();
    let mut loader = TensorLoader::new(source, &folder, device).with_precision(precision);
    let mut out = Vec::with_capacity(blocks);
    for i in 0..blocks {
        let prefix = format!("transformer_blocks.{i}");
        out.push(QwenImageTransformerBlock::load(&mut loader, &prefix, heads, HEAD_DIM).await?);
    }
    loader.finish()?;
    Ok(out)
}

/// Seeded inputs of one block.
#[derive(Debug, Clone)]
pub struct BlockInputs {
    /// Image stream `[1, S_img, D]` (`D = heads · HEAD_DIM`), standard normal.
    pub img: Tensor<3>,
    /// Text stream `[1, S_txt, D]`, standard normal.
    pub txt: Tensor<3>,
    /// Timestep embedding `[1, D]`, standard normal.
    pub temb: Tensor<2>,
    /// Layer3D RoPE tables of the layout (as the real model: axes 16/56/56, θ 10000).
    pub rope: RopeDevice,
}

impl BlockInputs {
    /// Inputs for `shape` and width `heads · HEAD_DIM` from `seed` on `device`.
    pub fn seeded(shape: &BlockShape, heads: usize, seed: u64, device: &Device) -> Result<Self> {
        let (s_img, s_txt, dim) = (shape.s_img(), shape.s_txt, heads * HEAD_DIM);
        let normal = |k: u64, dims: [usize; 3]| {
            let n = dims.iter().product();
            Tensor::<3>::from_data(TensorData::new(seeded_normal(seed ^ k, n), dims), device)
        };
        let rope = QwenEmbedRope {
            axes_dim: [16, 56, 56],
            theta: 10000.0,
            layer3d: true,
        }
        .tables(&shape.img_shapes, s_txt)?
        .to_device(device);
        Ok(Self {
            img: normal(1, [1, s_img, dim]),
            txt: normal(2, [1, s_txt, dim]),
            temb: normal(3, [1, 1, dim]).reshape([1, dim]),
            rope,
        })
    }

    /// Runs `block` on these inputs (no text mask): `(txt_out, img_out)` like diffusers.
    ///
    /// → (`[1, S_txt, DIM]`, `[1, S_img, DIM]`)
    pub fn run(&self, block: &QwenImageTransformerBlock) -> (Tensor<3>, Tensor<3>) {
        block.forward(
            self.img.clone(),
            self.txt.clone(),
            None,
            &self.temb,
            &self.rope,
        )
    }
}

/// Cosine similarity of two equally long vectors, in f64 (`NaN` if either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// A block's outputs on the host, and what the block added to its inputs.
#[derive(Debug, Clone)]
pub struct BlockOutputs {
    /// Image output `[1, S_img, DIM]`, row-major.
    pub img: Vec<f32>,
    /// Text output `[1, S_txt, DIM]`.
    pub txt: Vec<f32>,
    /// `img − img_in`: the block's update of the image stream.
    pub img_delta: Vec<f32>,
    /// `txt − txt_in`.
    pub txt_delta: Vec<f32>,
}

impl BlockOutputs {
    /// Runs `block` on `inputs` and reads the results back.
    pub async fn of(block: &QwenImageTransformerBlock, inputs: &BlockInputs) -> Result<Self> {
        let (txt, img) = inputs.run(block);
        let device = img.device();
        let img_delta = img.clone() - inputs.img.clone();
        let txt_delta = txt.clone() - inputs.txt.clone();
        Ok(Self {
            img: read_f32(img, "block image output", &device).await?,
            txt: read_f32(txt, "block text output", &device).await?,
            img_delta: read_f32(img_delta, "block image update", &device).await?,
            txt_delta: read_f32(txt_delta, "block text update", &device).await?,
        })
    }
}

/// Cosine similarities of a quantized block's outputs against the f32 block's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The quantized precision.
    pub precision: Precision,
    /// Image output.
    pub img: f64,
    /// Text output.
    pub txt: f64,
    /// Image update (output − input): the stricter figure, the residual is not in it.
    pub img_delta: f64,
    /// Text update.
    pub txt_delta: f64,
}

impl Agreement {
    /// Compares `quantized` with `reference` (the f32 block on the same inputs).
    pub fn between(
        precision: Precision,
        reference: &BlockOutputs,
        quantized: &BlockOutputs,
    ) -> Self {
        Self {
            precision,
            img: cosine(&reference.img, &quantized.img),
            txt: cosine(&reference.txt, &quantized.txt),
            img_delta: cosine(&reference.img_delta, &quantized.img_delta),
            txt_delta: cosine(&reference.txt_delta, &quantized.txt_delta),
        }
    }

    /// The lowest of the four.
    pub fn min(&self) -> f64 {
        self.img
            .min(self.txt)
            .min(self.img_delta)
            .min(self.txt_delta)
    }
}

/// One block of `heads` heads ([`HEADS`]: the real width) with seeded weights (from
/// `weight_seed`) loaded in f32 and in each of `precisions`, run on the same seeded inputs of
/// `shape`; each precision's [`Agreement`] with f32. Blocks are loaded one at a time (the
/// previous one is dropped first).
pub async fn block_agreement(
    shape: &BlockShape,
    heads: usize,
    weight_seed: u64,
    input_seed: u64,
    precisions: &[Precision],
    device: &Device,
) -> Result<Vec<Agreement>> {
    let source = in_memory(&blocks_source(1, heads, weight_seed)?).await?;
    let inputs = BlockInputs::seeded(shape, heads, input_seed, device)?;
    let reference = {
        let blocks = load_blocks(&source, heads, device, Precision::F32).await?;
        BlockOutputs::of(&blocks[0], &inputs).await?
    };
    let mut out = Vec::with_capacity(precisions.len());
    for &precision in precisions {
        let blocks = load_blocks(&source, heads, device, precision).await?;
        let outputs = BlockOutputs::of(&blocks[0], &inputs).await?;
        out.push(Agreement::between(precision, &reference, &outputs));
    }
    Ok(out)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_real_layout_has_9600_image_tokens() {
        let shape = BlockShape::pipeline(640, 4, 300).unwrap();
        assert_eq!(shape.s_img(), 9600);
        assert_eq!(shape.img_shapes.len(), 6);
        assert_eq!(BlockShape::frames(3, 4, 5, 7).s_img(), 60);
    }

    #[test]
    fn flops_count_the_linears_and_attention() {
        // One image token, no text: 2·(4·D² + 2·D·4D) + modulation 2·2·6·D² + attention 4·D.
        let d = DIM as f64;
        let want = 2.0 * 12.0 * d * d + 24.0 * d * d + 4.0 * d;
        assert_eq!(block_flops(1, 0), want);
        assert!(forward_flops(9600, 300) > 60.0 * block_flops(9600, 300));
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
    }
}
