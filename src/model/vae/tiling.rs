//! Tiled VAE decode and encode, as `AutoencoderKLQwenImage.enable_tiling()` does.
//!
//! <https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py#L744-L1005>
//! (`enable_tiling` `#L744`, `_encode`/`_decode` dispatch `#L790`/`#L841`, `blend_v`/`blend_h`
//! `#L891`, `tiled_encode` `#L907`, `tiled_decode` `#L958`).
//!
//! The input is cut into overlapping tiles (every `stride` along each axis, `min` wide, ragged at
//! the far edges), each tile runs through the network on its own, and each tile's top and left
//! borders are cross-faded with the (already blended) tile above and to the left before the
//! tile's first `stride` rows/columns are kept. The peak activation memory is that of one tile.
//!
//! As in diffusers, the tiled decode does **not** clamp its output to [-1, 1] (the untiled decode
//! does); the pipeline's post-processing clamps afterwards anyway.

use burn::tensor::{Tensor, TensorData};

use super::model::AutoencoderKLQwenImage;
use crate::error::{Error, Result};

/// Tile sizes in **sample** (pixel) units, as `enable_tiling(...)` takes them.
///
/// The latent tile size is `min / 8` and the latent stride `stride / 8`; the decoder blends over
/// `min − stride` pixels, the encoder over `min/8 − stride/8` latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaeTiling {
    /// `tile_sample_min_height`: tile height in pixels (default 256).
    pub min_height: usize,
    /// `tile_sample_min_width`: tile width in pixels (default 256).
    pub min_width: usize,
    /// `tile_sample_stride_height`: vertical distance between tiles in pixels (default 192).
    pub stride_height: usize,
    /// `tile_sample_stride_width`: horizontal distance between tiles in pixels (default 192).
    pub stride_width: usize,
}

impl Default for VaeTiling {
    /// diffusers' defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            min_height: 256,
            min_width: 256,
            stride_height: 192,
            stride_width: 192,
        }
    }
}

impl VaeTiling {
    /// Checks that the sizes give a tiling at compression `ratio`: positive latent tile and
    /// stride, and a stride no larger than the tile (else there are gaps).
    pub fn validate(&self, ratio: usize) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Input {
                model: "AutoencoderKLQwenImage tiling",
                reason,
            })
        };
        for (what, min, stride) in [
            ("height", self.min_height, self.stride_height),
            ("width", self.min_width, self.stride_width),
        ] {
            if stride / ratio == 0 || min / ratio == 0 {
                return bad(format!(
                    "tile {what} {min} and stride {stride} must be at least the compression \
                     ratio {ratio}"
                ));
            }
            if stride > min {
                return bad(format!(
                    "tile {what} stride {stride} is larger than the tile {min}: tiles would leave gaps"
                ));
            }
        }
        Ok(())
    }

    /// Number of tiles `(rows, columns)` a latent of `latent_hw` is cut into at ratio `ratio`.
    pub fn latent_grid(&self, latent_hw: (usize, usize), ratio: usize) -> (usize, usize) {
        (
            latent_hw.0.div_ceil(self.stride_height / ratio),
            latent_hw.1.div_ceil(self.stride_width / ratio),
        )
    }
}

/// Which spatial axis a blend runs along.
#[derive(Clone, Copy)]
enum Axis {
    /// Rows (dim 2): `blend_v`.
    Vertical,
    /// Columns (dim 3): `blend_h`.
    Horizontal,
}

impl Axis {
    fn dim(self) -> usize {
        match self {
            Self::Vertical => 2,
            Self::Horizontal => 3,
        }
    }
}

/// `blend_v` / `blend_h`: the first `e = min(len(a), len(b), extent)` rows (columns) of `b`
/// become `a[-e + y] · (1 − y/e) + b[y] · (y/e)`.
///
/// - a, b: `[B, C, H, W]` (sizes along the other axis equal) → `b`'s shape
fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, axis: Axis) -> Tensor<4> {
    let d = axis.dim();
    let (len_a, len_b) = (a.dims()[d], b.dims()[d]);
    let e = extent.min(len_a).min(len_b);
    if e == 0 {
        return b;
    }
    // diffusers computes `y / e` and `1 - y / e` as Python floats, then scales an f32 tensor.
    let ramp = |f: &dyn Fn(f64) -> f64| -> Tensor<4> {
        let values: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        let shape = match axis {
            Axis::Vertical => [1, 1, e, 1],
            Axis::Horizontal => [1, 1, 1, e],
        };
        Tensor::from_data(TensorData::new(values, shape), &b.device())
    };
    let (w_b, w_a) = (ramp(&|t| t), ramp(&|t| 1.0 - t));
    let head = a.clone().narrow(d, len_a - e, e) * w_a + b.clone().narrow(d, 0, e) * w_b;
    if e == len_b {
        return head;
    }
    Tensor::cat(vec![head, b.narrow(d, e, len_b - e)], d)
}

/// Blends a grid of overlapping tiles (row-major, each already through the network) and
/// stitches the first `keep` rows/columns of each, cropped to `out_hw`.
///
/// Mirrors the second half of `tiled_encode`/`tiled_decode`: tiles are blended in place, so the
/// tile above and the tile to the left are the already blended ones.
fn stitch(
    mut rows: Vec<Vec<Tensor<4>>>,
    (blend_h, blend_w): (usize, usize),
    (keep_h, keep_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Tensor<4> {
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut kept = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], tile, blend_h, Axis::Vertical);
            }
            if j > 0 {
                tile = blend(&rows[i][j - 1], tile, blend_w, Axis::Horizontal);
            }
            let [_, _, h, w] = tile.dims();
            kept.push(
                tile.clone()
                    .narrow(2, 0, keep_h.min(h))
                    .narrow(3, 0, keep_w.min(w)),
            );
            rows[i][j] = tile;
        }
        result_rows.push(Tensor::cat(kept, 3));
    }
    let out = Tensor::cat(result_rows, 2);
    let [_, _, h, w] = out.dims();
    out.narrow(2, 0, out_h.min(h)).narrow(3, 0, out_w.min(w))
}

/// Cuts `x` into tiles of `min` every `stride` (both `(h, w)`), ragged at the far edges, and maps
/// each through `f`, row-major.
fn tiles(
    x: &Tensor<4>,
    (min_h, min_w): (usize, usize),
    (stride_h, stride_w): (usize, usize),
    f: &mut dyn FnMut(Tensor<4>) -> Tensor<4>,
) -> Vec<Vec<Tensor<4>>> {
    let [_, _, h, w] = x.dims();
    (0..h)
        .step_by(stride_h)
        .map(|i| {
            (0..w)
                .step_by(stride_w)
                .map(|j| {
                    let tile =
                        x.clone()
                            .narrow(2, i, min_h.min(h - i))
                            .narrow(3, j, min_w.min(w - j));
                    f(tile)
                })
                .collect()
        })
        .collect()
}

impl AutoencoderKLQwenImage {
    /// Whether diffusers' `_decode` with tiling on would tile a latent of `latent_hw`: when it is
    /// wider or taller than one latent tile.
    pub fn decode_needs_tiles(&self, latent_hw: (usize, usize), tiling: &VaeTiling) -> bool {
        let r = self.config.spatial_compression_ratio();
        latent_hw.1 > tiling.min_width / r || latent_hw.0 > tiling.min_height / r
    }

    /// `decode` with tiling enabled: [`tiled_decode`](Self::tiled_decode) when the latent is
    /// larger than a tile, else the plain (clamped) [`decode`](Self::decode), as diffusers'
    /// `_decode` dispatches.
    ///
    /// - z: `[B, z_dim, h, w]` → `[B, input_channels, 8h, 8w]`
    pub fn decode_with_tiling(&self, z: Tensor<4>, tiling: &VaeTiling) -> Result<Tensor<4>> {
        let [_, _, h, w] = z.dims();
        match self.decode_needs_tiles((h, w), tiling) {
            true => self.tiled_decode(z, tiling),
            false => self.decode(z),
        }
    }

    /// `tiled_decode`: decodes overlapping latent tiles one at a time and cross-fades them
    /// (not clamped, as in diffusers).
    ///
    /// - z: `[B, z_dim, h, w]` → `[B, input_channels, 8h, 8w]`
    pub fn tiled_decode(&self, z: Tensor<4>, tiling: &VaeTiling) -> Result<Tensor<4>> {
        self.tiled_decode_counted(z, tiling, &mut |_| {})
    }

    /// [`tiled_decode`](Self::tiled_decode), calling `on_tile` with each tile's latent size
    /// `(h, w)` before decoding it (for progress and for tests that count tiles).
    pub fn tiled_decode_counted(
        &self,
        z: Tensor<4>,
        tiling: &VaeTiling,
        on_tile: &mut dyn FnMut((usize, usize)),
    ) -> Result<Tensor<4>> {
        let r = self.config.spatial_compression_ratio();
        tiling.validate(r)?;
        self.check("latents", &z, self.config.z_dim)?;
        let [_, _, h, w] = z.dims();
        let rows = tiles(
            &z,
            (tiling.min_height / r, tiling.min_width / r),
            (tiling.stride_height / r, tiling.stride_width / r),
            &mut |tile| {
                let [_, _, th, tw] = tile.dims();
                on_tile((th, tw));
                self.decoder.forward(self.post_quant_conv.forward(tile))
            },
        );
        Ok(stitch(
            rows,
            (
                tiling.min_height - tiling.stride_height,
                tiling.min_width - tiling.stride_width,
            ),
            (tiling.stride_height, tiling.stride_width),
            (h * r, w * r),
        ))
    }

    /// `_encode` with tiling enabled: [`tiled_encode_moments`](Self::tiled_encode_moments) when
    /// the image is larger than a tile, else [`encode_moments`](Self::encode_moments).
    ///
    /// - x: `[B, input_channels, H, W]` → `[B, 2·z_dim, H/8, W/8]`
    pub fn encode_moments_with_tiling(
        &self,
        x: Tensor<4>,
        tiling: &VaeTiling,
    ) -> Result<Tensor<4>> {
        let [_, _, h, w] = x.dims();
        match w > tiling.min_width || h > tiling.min_height {
            true => self.tiled_encode_moments(x, tiling),
            false => self.encode_moments(x),
        }
    }

    /// `tiled_encode`: the posterior moments (mean ‖ logvar) of overlapping image tiles,
    /// cross-faded in latent space.
    ///
    /// - x: `[B, input_channels, H, W]` → `[B, 2·z_dim, H/8, W/8]`
    pub fn tiled_encode_moments(&self, x: Tensor<4>, tiling: &VaeTiling) -> Result<Tensor<4>> {
        let r = self.config.spatial_compression_ratio();
        tiling.validate(r)?;
        self.check("image", &x, self.config.input_channels)?;
        let [_, _, h, w] = x.dims();
        let (min_h, min_w) = (tiling.min_height / r, tiling.min_width / r);
        let (stride_h, stride_w) = (tiling.stride_height / r, tiling.stride_width / r);
        let rows = tiles(
            &x,
            (tiling.min_height, tiling.min_width),
            (tiling.stride_height, tiling.stride_width),
            &mut |tile| self.quant_conv.forward(self.encoder.forward(tile)),
        );
        Ok(stitch(
            rows,
            (min_h - stride_h, min_w - stride_w),
            (stride_h, stride_w),
            (h / r, w / r),
        ))
    }
}
