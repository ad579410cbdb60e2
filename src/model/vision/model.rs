//! `Qwen2_5_VisionTransformerPretrainedModel` (transformers 5.24) in Burn: patch embedding,
//! windowed / full attention blocks with 2-D rotary, and the patch merger.
//!
//! Checkpoint keys (under `visual.`): `patch_embed.proj.weight` `[D, C, T, P, P]` (a Conv3d
//! with kernel = stride = patch, i.e. a matmul over `pixel_values` rows);
//! `blocks.{i}.{norm1,norm2}.weight`, `blocks.{i}.attn.{qkv,proj}.{weight,bias}`,
//! `blocks.{i}.mlp.{gate_proj,up_proj,down_proj}.{weight,bias}`;
//! `merger.ln_q.weight`, `merger.mlp.{0,2}.{weight,bias}`.

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::config::VisionConfig;
use super::layout::{SegmentBatch, VisionLayout};
use crate::error::{Error, Result};
use crate::model::nn::{Linear, RmsNorm, SwiGluMlp};
use crate::weights::{TensorLoader, WeightSource};

/// `patch_embed.proj`: the Conv3d as a `[C·T·P·P, D]` matrix (bias-free).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// `proj.weight` `[D, C, T, P, P]` stored, held transposed-flat as `[C·T·P·P, D]`.
    pub proj: Param<Tensor<2>>,
}

impl PatchEmbed {
    /// - pixel_values: `[N, C·T·P·P]` → `[N, D]`
    pub fn forward(&self, pixel_values: Tensor<2>) -> Tensor<2> {
        pixel_values.matmul(self.proj.val())
    }
}

/// `Qwen2_5_VLVisionAttention`: fused qkv, rotate-half 2-D rotary on q and k, attention
/// inside each segment only (windows or whole frames), output projection.
#[derive(Module, Debug)]
pub struct VisionAttention {
    /// `[D → 3D]`, output order q ‖ k ‖ v, each heads × head_dim.
    pub qkv: Linear,
    /// `[D → D]`.
    pub proj: Linear,
    /// Heads.
    pub heads: usize,
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]` (halves of the last axis).
///
/// - x: `[N, H, Dh]`, cos/sin: `[N, 1, Dh]` → `[N, H, Dh]`
fn rotate(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let dh = x.dims()[2];
    let x1 = x.clone().narrow(2, 0, dh / 2);
    let x2 = x.clone().narrow(2, dh / 2, dh / 2);
    let rot = Tensor::cat(vec![x2.neg(), x1], 2);
    x * cos.clone() + rot * sin.clone()
}

/// A [`SegmentBatch`] on the device.
pub struct SegmentsDevice {
    groups: usize,
    len: usize,
    gather: Tensor<1, Int>,
    scatter: Tensor<1, Int>,
    /// `[G, 1, 1, L]`, true = padded key; `None` when every segment has the same length.
    key_mask: Option<Tensor<4, Bool>>,
}

impl SegmentsDevice {
    /// Uploads `b`.
    pub fn new(b: &SegmentBatch, device: &Device) -> Self {
        let n = b.scatter.len();
        let key_mask = (!b.is_dense()).then(|| {
            Tensor::<1, Bool>::from_data(
                TensorData::new(b.padding.clone(), [b.groups * b.len]),
                device,
            )
            .reshape([b.groups, 1, 1, b.len])
        });
        Self {
            groups: b.groups,
            len: b.len,
            gather: Tensor::from_data(
                TensorData::new(b.gather.clone(), [b.groups * b.len]),
                device,
            ),
            scatter: Tensor::from_data(TensorData::new(b.scatter.clone(), [n]), device),
            key_mask,
        }
    }
}

impl VisionAttention {
    /// - x: `[N, D]` (permuted order), cos/sin: `[N, 1, Dh]`, segs: the attention segments
    /// - returns `[N, D]`
    pub fn forward(
        &self,
        x: Tensor<2>,
        cos: &Tensor<3>,
        sin: &Tensor<3>,
        segs: &SegmentsDevice,
    ) -> Tensor<2> {
        let [n, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let qkv = self.qkv.forward(x).reshape([n, 3, h, dh]);
        let part = |i: usize| qkv.clone().narrow(1, i, 1).reshape([n, h, dh]);
        let q = rotate(part(0), cos, sin);
        let k = rotate(part(1), cos, sin);
        let v = part(2);
        let (g, l) = (segs.groups, segs.len);
        // [N, H, Dh] → [G, H, L, Dh] (padding slots hold row 0; they are masked as keys and
        // their query rows are dropped below)
        let batch = |t: Tensor<3>| {
            t.select(0, segs.gather.clone())
                .reshape([g, l, h, dh])
                .swap_dims(1, 2)
        };
        let mask = segs.key_mask.clone().map(|m| m.expand([g, h, l, l]));
        let out = attention(
            batch(q),
            batch(k),
            batch(v),
            mask,
            None,
            AttentionModuleOptions::default(),
        ); // [G, H, L, Dh]
        let out = out
            .swap_dims(1, 2)
            .reshape([g * l, d])
            .select(0, segs.scatter.clone()); // [N, D]
        self.proj.forward(out)
    }
}

/// `Qwen2_5_VLVisionBlock`: pre-norm attention and MLP with residuals (RMSNorm eps 1e-6).
#[derive(Module, Debug)]
pub struct VisionBlock {
    /// Before attention.
    pub norm1: RmsNorm,
    /// Before the MLP.
    pub norm2: RmsNorm,
    /// Attention.
    pub attn: VisionAttention,
    /// MLP.
    pub mlp: SwiGluMlp,
}

impl VisionBlock {
    /// - x: `[N, D]` → `[N, D]`
    pub fn forward(
        &self,
        x: Tensor<2>,
        cos: &Tensor<3>,
        sin: &Tensor<3>,
        segs: &SegmentsDevice,
    ) -> Tensor<2> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), cos, sin, segs);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// `Qwen2_5_VLPatchMerger`: RMSNorm, then each `merge²` consecutive patches concatenated and
/// mapped by `Linear → GELU(erf) → Linear` to the language model's width.
#[derive(Module, Debug)]
pub struct PatchMerger {
    /// `ln_q` `[D]`, eps 1e-6.
    pub ln_q: RmsNorm,
    /// `mlp.0`: `[D·merge² → D·merge²]`.
    pub mlp_0: Linear,
    /// `mlp.2`: `[D·merge² → out]`.
    pub mlp_2: Linear,
}

impl PatchMerger {
    /// - x: `[N, D]` → `[N / merge², out]`
    pub fn forward(&self, x: Tensor<2>, unit: usize) -> Tensor<2> {
        let [n, d] = x.dims();
        let x = self.ln_q.forward(x).reshape([n / unit, d * unit]);
        self.mlp_2.forward(gelu(self.mlp_0.forward(x)))
    }
}

/// Intermediate tensors of one forward (parity tests, debugging); all in window-permuted order.
#[derive(Debug, Clone, Default)]
pub struct VisionTrace {
    /// `patch_embed` output `[N, D]` (before the permutation, `pixel_values` order).
    pub patch_embed: Option<Tensor<2>>,
    /// Each block's output `[N, D]` (permuted order).
    pub blocks: Vec<Tensor<2>>,
}

/// The vision tower. `forward` returns the merged image embeddings in `pixel_values` order of
/// the merged tokens: what replaces the `<|image_pad|>` tokens.
#[derive(Module, Debug)]
pub struct Qwen2_5VisionTransformer {
    /// `visual.patch_embed`.
    pub patch_embed: PatchEmbed,
    /// `visual.blocks.{i}`.
    pub blocks: Vec<VisionBlock>,
    /// `visual.merger`.
    pub merger: PatchMerger,
}

/// The loaded tower and its config.
#[derive(Debug)]
pub struct VisionTower {
    /// Weights.
    pub model: Qwen2_5VisionTransformer,
    /// Settings.
    pub config: VisionConfig,
}

impl VisionTower {
    /// Loads `{prefix}patch_embed…`, `{prefix}blocks.{i}…`, `{prefix}merger…` (prefix
    /// `"visual."` in the Qwen2.5-VL checkpoint).
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        config: VisionConfig,
    ) -> Result<Self> {
        let c = &config;
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let p = |s: &str| format!("{prefix}{s}");
        let conv = l
            .tensor(
                &p("patch_embed.proj.weight"),
                [
                    d,
                    c.in_channels,
                    c.temporal_patch_size,
                    c.patch_size,
                    c.patch_size,
                ],
            )
            .await?;
        let patch_embed = PatchEmbed {
            proj: Param::from_tensor(conv.reshape([d, c.patch_dim()]).transpose()),
        };
        let mut blocks = Vec::with_capacity(c.depth);
        for b in 0..c.depth {
            let q = |s: &str| p(&format!("blocks.{b}.{s}"));
            blocks.push(VisionBlock {
                norm1: RmsNorm::load(l, &q("norm1"), d, 1e-6).await?,
                norm2: RmsNorm::load(l, &q("norm2"), d, 1e-6).await?,
                attn: VisionAttention {
                    qkv: l.linear(&q("attn.qkv"), d, 3 * d, true).await?,
                    proj: l.linear(&q("attn.proj"), d, d, true).await?,
                    heads: c.num_heads,
                },
                mlp: SwiGluMlp::load(l, &q("mlp"), d, i, true).await?,
            });
        }
        let md = d * c.merge_unit();
        let merger = PatchMerger {
            ln_q: RmsNorm::load(l, &p("merger.ln_q"), d, 1e-6).await?,
            mlp_0: l.linear(&p("merger.mlp.0"), md, md, true).await?,
            mlp_2: l
                .linear(&p("merger.mlp.2"), md, c.out_hidden_size, true)
                .await?,
        };
        Ok(Self {
            model: Qwen2_5VisionTransformer {
                patch_embed,
                blocks,
                merger,
            },
            config,
        })
    }

    /// Merged tokens for a `[t, h, w]` grid.
    pub fn tokens(&self, grid_thw: [usize; 3]) -> usize {
        grid_thw.iter().product::<usize>() / self.config.merge_unit()
    }

    /// - pixel_values: `[t·h·w, C·T·P·P]` (the processor's rows), grid_thw: `[t, h, w]`
    /// - returns `[t·h·w / merge², out_hidden_size]` (`pooler_output`)
    pub fn forward(&self, pixel_values: Tensor<2>, grid_thw: [usize; 3]) -> Result<Tensor<2>> {
        self.forward_traced(pixel_values, grid_thw, None)
    }

    /// [`forward`](Self::forward), filling `trace` when given.
    pub fn forward_traced(
        &self,
        pixel_values: Tensor<2>,
        grid_thw: [usize; 3],
        mut trace: Option<&mut VisionTrace>,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let [n, pd] = pixel_values.dims();
        let [t, h, w] = grid_thw;
        let m = c.spatial_merge_size;
        if t * h * w != n || pd != c.patch_dim() || h % m != 0 || w % m != 0 || n == 0 {
            return Err(Error::Input {
                model: "Qwen2.5-VL vision tower",
                reason: format!(
                    "pixel_values [{n}, {pd}] does not fit grid_thw {grid_thw:?} \
                     (needs [t·h·w, {}] with h, w multiples of {m})",
                    c.patch_dim()
                ),
            });
        }
        let device = pixel_values.device();
        let unit = c.merge_unit();
        let layout = VisionLayout::new(c, grid_thw);
        let dh = c.head_dim();

        let x = self.model.patch_embed.forward(pixel_values); // [N, D]
        if let Some(tr) = trace.as_deref_mut() {
            tr.patch_embed = Some(x.clone());
        }
        let to_ints = |v: Vec<usize>| {
            let len = v.len();
            Tensor::<1, Int>::from_data(
                TensorData::new(v.into_iter().map(|i| i as i64).collect::<Vec<_>>(), [len]),
                &device,
            )
        };
        let mut x = x.select(0, to_ints(layout.patch_order(unit))); // permuted
        let (cos, sin) = layout.rotary(c);
        let cos =
            Tensor::<2>::from_data(TensorData::new(cos, [n, dh]), &device).reshape([n, 1, dh]);
        let sin =
            Tensor::<2>::from_data(TensorData::new(sin, [n, dh]), &device).reshape([n, 1, dh]);
        let windows = SegmentsDevice::new(&SegmentBatch::new(&layout.window_segments, n), &device);
        let full = SegmentsDevice::new(&SegmentBatch::new(&layout.full_segments, n), &device);
        for (i, blk) in self.model.blocks.iter().enumerate() {
            let segs = if c.fullatt_block_indexes.contains(&i) {
                &full
            } else {
                &windows
            };
            x = blk.forward(x, &cos, &sin, segs);
            if let Some(tr) = trace.as_deref_mut() {
                tr.blocks.push(x.clone());
            }
        }
        let merged = self.model.merger.forward(x, unit); // [N/unit, out], permuted
        Ok(merged.select(0, to_ints(layout.reverse())))
    }
}
