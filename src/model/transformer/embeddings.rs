//! Timestep embedding (`QwenTimestepProjEmbeddings`, with the Layered `addition_t_embedding`)
//! and the rotary position tables (`QwenEmbedRope` / `QwenEmbedLayer3DRope`).
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/transformers/transformer_qwenimage.py#L43-L95>
//! (sinusoid), `#L207-L229` (timestep embedding), `#L232-L512` (RoPE), `#L97-L142` (rotation).

use crate::model::nn::Linear;
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::weights::{TensorLoader, WeightSource};

/// Channels of the sinusoidal timestep projection (`Timesteps(num_channels=256)`).
pub const TIMESTEP_PROJ_DIM: usize = 256;

/// `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)`:
/// `[cos(1000·t·f_k), sin(1000·t·f_k)]` with `f_k = exp(−ln(10000)·k/128)`, k = 0..128.
///
/// The f32 operation order of diffusers' `get_timestep_embedding` is kept (`(t·f)·1000`).
/// `f_k` is the correctly rounded f32 exponential; torch's vectorised `expf` is 1 ulp off at
/// k = 12 and k = 106, which moves `cos/sin(1000·f_k)` by up to 2.3e-5 at t = 1 (measured
/// against the fixtures; 7e-7 after `timestep_embedder`).
///
/// - timestep: `[B]` (σ in [0, 1]) → `[B, 256]`
pub fn timestep_proj(timestep: Tensor<1>) -> Tensor<2> {
    let half = TIMESTEP_PROJ_DIM / 2;
    let neg_log = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|k| {
            let exponent = neg_log * k as f32 / half as f32;
            (exponent as f64).exp() as f32
        })
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &timestep.device());
    let arg = timestep.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0) * 1000.0; // [B, 128]
    Tensor::cat(vec![arg.clone().cos(), arg.sin()], 1) // [B, 256]
}

/// diffusers `TimestepEmbedding(256, dim)`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// `[256 → dim]`.
    pub linear_1: Linear,
    /// `[dim → dim]`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// - x: `[B, 256]` → `[B, dim]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// `QwenTimestepProjEmbeddings`: timestep embedding plus, for the Layered model, the row
/// `additional_t_cond` of `addition_t_embedding` (the pipeline always passes 0).
#[derive(Module, Debug)]
pub struct QwenTimestepProjEmbeddings {
    /// `time_text_embed.timestep_embedder`.
    pub timestep_embedder: TimestepEmbedding,
    /// `time_text_embed.addition_t_embedding.weight`: `[2, dim]` (present iff `use_additional_t_cond`).
    pub addition_t_embedding: Option<Param<Tensor<2>>>,
}

impl QwenTimestepProjEmbeddings {
    /// Loads `{prefix}.timestep_embedder.linear_{1,2}` and, if `additional`,
    /// `{prefix}.addition_t_embedding.weight`.
    pub async fn load<S: WeightSource>(
        l: &mut TensorLoader<'_, S>,
        prefix: &str,
        dim: usize,
        additional: bool,
    ) -> Result<Self> {
        let timestep_embedder = TimestepEmbedding {
            linear_1: l
                .linear(
                    &format!("{prefix}.timestep_embedder.linear_1"),
                    TIMESTEP_PROJ_DIM,
                    dim,
                    true,
                )
                .await?,
            linear_2: l
                .linear(
                    &format!("{prefix}.timestep_embedder.linear_2"),
                    dim,
                    dim,
                    true,
                )
                .await?,
        };
        let addition_t_embedding = match additional {
            true => Some(
                l.param(&format!("{prefix}.addition_t_embedding.weight"), [2, dim])
                    .await?,
            ),
            false => None,
        };
        Ok(Self {
            timestep_embedder,
            addition_t_embedding,
        })
    }

    /// - timestep: `[B]`, additional_t_cond: `[B]` of 0/1 (required iff the model has
    ///   `addition_t_embedding`) → temb `[B, dim]`
    pub fn forward(
        &self,
        timestep: Tensor<1>,
        additional_t_cond: Option<Tensor<1, Int>>,
    ) -> Result<Tensor<2>> {
        let emb = self.timestep_embedder.forward(timestep_proj(timestep));
        match (&self.addition_t_embedding, additional_t_cond) {
            (Some(table), Some(idx)) => Ok(emb + table.val().select(0, idx)),
            (Some(_), None) => Err(Error::Input {
                model: "QwenImageTransformer2DModel",
                reason: "use_additional_t_cond is set, so additional_t_cond must be given".into(),
            }),
            (None, _) => Ok(emb),
        }
    }
}

/// One image entry of `img_shapes`: `(frame, height, width)` in packed tokens (height = H/16).
pub type ImgShape = (usize, usize, usize);

/// Rotary tables in f32, as cos/sin of the angles (diffusers keeps `polar(1, angle)`).
///
/// Each row is one token; each row holds `head_dim / 2` frequencies: the frame axis first
/// (`axes_dims[0] / 2`), then row, then column, like diffusers' concatenation.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTables {
    /// `[S_img, head_dim/2]` row-major.
    pub img_cos: Vec<f32>,
    /// `[S_img, head_dim/2]`.
    pub img_sin: Vec<f32>,
    /// `[S_txt, head_dim/2]`.
    pub txt_cos: Vec<f32>,
    /// `[S_txt, head_dim/2]`.
    pub txt_sin: Vec<f32>,
    /// Image tokens.
    pub s_img: usize,
    /// Text tokens.
    pub s_txt: usize,
    /// `head_dim / 2`.
    pub half: usize,
}

/// The device half of [`RopeTables`].
#[derive(Debug, Clone)]
pub struct RopeDevice {
    /// cos, sin: `[S_img, head_dim/2]` each.
    pub img: (Tensor<2>, Tensor<2>),
    /// cos, sin: `[S_txt, head_dim/2]` each.
    pub txt: (Tensor<2>, Tensor<2>),
}

impl RopeTables {
    /// Uploads the tables.
    pub fn to_device(&self, device: &Device) -> RopeDevice {
        let t = |v: &Vec<f32>, s: usize| {
            Tensor::<2>::from_data(TensorData::new(v.clone(), [s, self.half]), device)
        };
        RopeDevice {
            img: (t(&self.img_cos, self.s_img), t(&self.img_sin, self.s_img)),
            txt: (t(&self.txt_cos, self.s_txt), t(&self.txt_sin, self.s_txt)),
        }
    }
}

/// Positions are taken from diffusers' precomputed tables of 4096 positive and 4096 negative
/// positions; anything outside is an error there (a shape mismatch) and here.
const ROPE_TABLE_LEN: i64 = 4096;

/// `QwenEmbedRope` (`layer3d = false`) or `QwenEmbedLayer3DRope` (`layer3d = true`), both with
/// `theta = 10000` and `scale_rope = True` (centred row/column positions).
#[derive(Debug, Clone, PartialEq)]
pub struct QwenEmbedRope {
    /// Per-axis dims (frame/layer, row, column); sum = head_dim.
    pub axes_dim: [usize; 3],
    /// Frequency base (10000).
    pub theta: f32,
    /// Layer3D variant: the frame position of entry `i` is `i`, the last entry (the
    /// condition image) gets −1, and the text offset includes `len(img_shapes) − 1`.
    pub layer3d: bool,
}

/// One `(frame, row, col)` RoPE position per token.
pub type Positions = Vec<[i64; 3]>;

impl QwenEmbedRope {
    /// The inverse frequencies of one axis, in f32 like `1.0 / torch.pow(theta, arange(0, d, 2) / d)`.
    fn inv_freqs(&self, dim: usize) -> Vec<f32> {
        (0..dim / 2)
            .map(|k| {
                let e = (2 * k) as f32 / dim as f32;
                1.0f32 / ((self.theta as f64).powf(e as f64) as f32)
            })
            .collect()
    }

    /// Appends the cos/sin of one token at positions `(frame, row, col)`.
    fn push_token(
        &self,
        inv: &[Vec<f32>; 3],
        pos: [i64; 3],
        cos: &mut Vec<f32>,
        sin: &mut Vec<f32>,
    ) {
        for (axis, p) in pos.iter().enumerate() {
            for f in &inv[axis] {
                // torch.outer(int64 index, f32 freqs) -> f32 product, then polar() in f32.
                let angle = (*p as f32) * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
            }
        }
    }

    /// The `(frame, row, col)` RoPE positions of every image token and every text token.
    ///
    /// Image tokens are ordered entry by entry, each row-major over `frame × height × width`;
    /// rows are centred `-(h - h//2) .. h//2 - 1` (`scale_rope=True`), columns likewise. Entry
    /// `i` has frame position `i` (plus the frame within it), except, for Layer3D, the last
    /// entry (the condition image), which has −1. Text token `j` is at `max_vid_index + j` on
    /// all three axes, `max_vid_index = max(h//2, w//2 over entries)` (and `len(img_shapes) − 1`
    /// for Layer3D).
    pub fn positions(
        &self,
        img_shapes: &[ImgShape],
        txt_len: usize,
    ) -> Result<(Positions, Positions)> {
        let input = |reason: String| Error::Input {
            model: "QwenEmbedRope",
            reason,
        };
        if img_shapes.is_empty() {
            return Err(input("img_shapes is empty".into()));
        }
        let check = |p: i64| {
            if (-ROPE_TABLE_LEN..ROPE_TABLE_LEN).contains(&p) {
                Ok(p)
            } else {
                Err(input(format!(
                    "RoPE position {p} is outside diffusers' tables (±{ROPE_TABLE_LEN})"
                )))
            }
        };
        let mut img = Vec::new();
        let layer_num = img_shapes.len() - 1;
        let mut max_vid_index = 0usize;
        for (idx, &(frame, height, width)) in img_shapes.iter().enumerate() {
            let condition = self.layer3d && idx == layer_num;
            if condition && frame != 1 {
                return Err(input(format!(
                    "the condition entry must have 1 frame, got {frame}"
                )));
            }
            for f in 0..frame {
                let frame_pos = if condition {
                    -1
                } else {
                    check((idx + f) as i64)?
                };
                for r in 0..height {
                    let row = check(r as i64 - (height - height / 2) as i64)?;
                    for c in 0..width {
                        let col = check(c as i64 - (width - width / 2) as i64)?;
                        img.push([frame_pos, row, col]);
                    }
                }
            }
            max_vid_index = max_vid_index.max(height / 2).max(width / 2);
        }
        if self.layer3d {
            max_vid_index = max_vid_index.max(layer_num);
        }
        let txt = (0..txt_len)
            .map(|j| check((max_vid_index + j) as i64).map(|p| [p, p, p]))
            .collect::<Result<Vec<_>>>()?;
        Ok((img, txt))
    }

    /// The image and text tables for one sample's `img_shapes` and `txt_len` text tokens, at
    /// the [`positions`](Self::positions).
    pub fn tables(&self, img_shapes: &[ImgShape], txt_len: usize) -> Result<RopeTables> {
        let (img, txt) = self.positions(img_shapes, txt_len)?;
        let inv = [
            self.inv_freqs(self.axes_dim[0]),
            self.inv_freqs(self.axes_dim[1]),
            self.inv_freqs(self.axes_dim[2]),
        ];
        let half = self.axes_dim.iter().sum::<usize>() / 2;
        let (mut img_cos, mut img_sin) = (
            Vec::with_capacity(img.len() * half),
            Vec::with_capacity(img.len() * half),
        );
        for pos in &img {
            self.push_token(&inv, *pos, &mut img_cos, &mut img_sin);
        }
        let (mut txt_cos, mut txt_sin) = (
            Vec::with_capacity(txt.len() * half),
            Vec::with_capacity(txt.len() * half),
        );
        for pos in &txt {
            self.push_token(&inv, *pos, &mut txt_cos, &mut txt_sin);
        }
        Ok(RopeTables {
            s_img: img.len(),
            s_txt: txt.len(),
            img_cos,
            img_sin,
            txt_cos,
            txt_sin,
            half,
        })
    }
}

/// Rotates interleaved pairs `(x[2k], x[2k+1])` by the table's angles (diffusers
/// `apply_rotary_emb_qwen(use_real=False)`: a complex product in f32).
///
/// - x: `[B, S, H, Dh]`, cos/sin: `[S, Dh/2]` → `[B, S, H, Dh]`
pub fn apply_rotary_emb(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, s, h, d] = x.dims();
    let pairs = x.reshape([b, s, h, d / 2, 2]); // [B, S, H, Dh/2, 2]
    let re = pairs.clone().narrow(4, 0, 1).squeeze_dim::<4>(4); // [B, S, H, Dh/2]
    let im = pairs.narrow(4, 1, 1).squeeze_dim::<4>(4);
    let cos = cos.clone().unsqueeze_dims::<4>(&[0, 2]); // [1, S, 1, Dh/2]
    let sin = sin.clone().unsqueeze_dims::<4>(&[0, 2]);
    let out_re = re.clone() * cos.clone() - im.clone() * sin.clone();
    let out_im = re * sin + im * cos;
    Tensor::stack::<5>(vec![out_re, out_im], 4).reshape([b, s, h, d])
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn layered() -> QwenEmbedRope {
        QwenEmbedRope {
            axes_dim: [8, 4, 4],
            theta: 10000.0,
            layer3d: true,
        }
    }

    #[test]
    fn layer3d_positions_follow_the_spec_dump() {
        // model-spec.md §6: h=4, w=6, N=2 -> frames 0, 1, 2 and -1; rows -2..1, cols -3..2;
        // text from max(2, 3, N+1=3) = 3.
        let shapes = vec![(1, 4, 6); 4];
        let (img, txt) = layered().positions(&shapes, 5).expect("positions");
        assert_eq!(img.len(), 96);
        assert_eq!(img[0], [0, -2, -3]);
        assert_eq!(img[23], [0, 1, 2]);
        assert_eq!(img[24], [1, -2, -3]);
        assert_eq!(img[48], [2, -2, -3]);
        assert_eq!(img[72], [-1, -2, -3]);
        assert_eq!(img[95], [-1, 1, 2]);
        assert_eq!(txt, vec![[3; 3], [4; 3], [5; 3], [6; 3], [7; 3]]);
        // 640x640 with N=4: text starts at max(20, 20, 5) = 20.
        let (_, txt) = layered()
            .positions(&[(1, 40, 40); 6], 1)
            .expect("positions");
        assert_eq!(txt, vec![[20; 3]]);
    }

    #[test]
    fn plain_rope_uses_the_entry_index_and_odd_sizes_centre_down() {
        let rope = QwenEmbedRope {
            layer3d: false,
            ..layered()
        };
        let (img, txt) = rope
            .positions(&[(1, 3, 1), (1, 1, 1)], 1)
            .expect("positions");
        assert_eq!(img, vec![[0, -2, -1], [0, -1, -1], [0, 0, -1], [1, -1, -1]]);
        assert_eq!(txt, vec![[1; 3]]);
    }

    #[test]
    fn tables_are_cos_sin_of_position_times_frequency() {
        let t = layered()
            .tables(&[(1, 2, 2), (1, 2, 2)], 2)
            .expect("tables");
        assert_eq!((t.s_img, t.s_txt, t.half), (8, 2, 8));
        // Token 4 is the condition entry at frame -1: frame frequencies 1, 10000^-1/4, ...
        let inv0 = 1.0f32;
        assert!((t.img_cos[4 * 8] - (-inv0).cos()).abs() < 1e-7);
        assert!((t.img_sin[4 * 8] - (-inv0).sin()).abs() < 1e-7);
        assert!(
            layered().positions(&[(1, 2, 2), (2, 2, 2)], 0).is_err(),
            "a 2-frame condition entry is refused"
        );
    }
}
