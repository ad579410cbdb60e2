//! Working sizes, latent shapes, sequence lengths and the 2×2 latent packing.
//!
//! Reference: `pipeline_qwenimage_layered.py` (diffusers `58eb52c` = 0.42.1 maths):
//! `calculate_dimensions` `:164-171`, the bucket in `__call__` `:662-673`, `_pack_latents`
//! `:405-411`, `_unpack_latents` `:413-428`, `prepare_latents` `:454-515`, `img_shapes`
//! `:756-764`, `mu` `:768-770`.
//!
//! # Shapes for a working size `W×H` (multiples of 32) and `N` layers
//!
//! | what | shape |
//! |---|---|
//! | preprocessed image (VAE input) | `(1, 4, 1, H, W)` |
//! | VAE latent of one frame | `(1, 16, 1, H/8, W/8)` |
//! | noise latents before packing | `(B, N+1, 16, H/8, W/8)`; frame 0 is the composite |
//! | packed noise | `(B, (N+1)·(H/16)·(W/16), 64)` |
//! | packed condition latent | `(B, (H/16)·(W/16), 64)` |
//! | transformer image sequence | `(B, (N+2)·(H/16)·(W/16), 64)`: noise first, condition last |
//! | `img_shapes` | `[(1, H/16, W/16)] × (N+1)` then `(1, H/16, W/16)` |
//!
//! # Packing
//!
//! `_pack_latents` views `(B, F, C, h, w)` as `(B, F, C, h/2, 2, w/2, 2)`, permutes to
//! `(B, F, h/2, w/2, C, 2, 2)` and flattens to `(B, F·(h/2)·(w/2), 4C)`. So the element
//! `x[b, f, c, y, x]` goes to token `f·(h/2)(w/2) + (y/2)·(w/2) + x/2`, channel
//! `c·4 + (y%2)·2 + x%2`. `_unpack_latents` is the inverse but returns channel-first
//! `(B, C, F, h, w)`.

use super::error::{PipelineError, Result, check_len};

/// The VAE's spatial downsampling (`2 ** len(temperal_downsample)`, `pipeline…:214`).
pub const VAE_SCALE_FACTOR: u32 = 8;
/// The transformer's patch size (2×2 latents per token).
pub const PATCH_SIZE: u32 = 2;
/// Pixels per token side: `vae_scale_factor * 2` (`pipeline…:218, 668`).
pub const PIXELS_PER_TOKEN: u32 = VAE_SCALE_FACTOR * PATCH_SIZE;
/// The buckets the reference accepts (`assert resolution in [640, 1024]`, `pipeline…:663`).
pub const SUPPORTED_RESOLUTIONS: [u32; 2] = [640, 1024];

/// Python's `round(x)` on a `float`: round half to even. Returns the rounded value as `f64`.
pub fn python_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `calculate_dimensions(target_area, ratio)` (`pipeline…:164-171`), all in `f64` as Python:
/// `width = sqrt(area·ratio)`, `height = width / ratio`, each rounded half-to-even to a
/// multiple of 32. Returns `(width, height)`; a side can be 0 for extreme ratios.
pub fn calculate_dimensions(target_area: u64, ratio: f64) -> (u32, u32) {
    let width = (target_area as f64 * ratio).sqrt();
    let height = width / ratio;
    let w = python_round(width / 32.0) * 32.0;
    let h = python_round(height / 32.0) * 32.0;
    (w as u32, h as u32)
}

/// The aspect ratio the pipeline uses: `image.size[0] / image.size[1]` (width / height, `f64`).
pub fn aspect_ratio(image_width: u32, image_height: u32) -> f64 {
    image_width as f64 / image_height as f64
}

/// The working size of one run: the resized input, the output layers and every latent shape
/// derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Pixel width (multiple of 32 for the real buckets, of 16 in general).
    pub width: u32,
    /// Pixel height.
    pub height: u32,
}

impl Dimensions {
    /// A working size given directly; both sides must be positive multiples of 16.
    pub fn new(width: u32, height: u32) -> Result<Self> {
        for (what, v) in [("width", width), ("height", height)] {
            if v == 0 || !v.is_multiple_of(PIXELS_PER_TOKEN) {
                return Err(PipelineError::NotMultiple {
                    what,
                    value: v as usize,
                    multiple: PIXELS_PER_TOKEN as usize,
                });
            }
        }
        Ok(Self { width, height })
    }

    /// The reference bucket logic for an input image: `resolution` must be 640 or 1024.
    pub fn for_image(resolution: u32, image_width: u32, image_height: u32) -> Result<Self> {
        if !SUPPORTED_RESOLUTIONS.contains(&resolution) {
            return Err(PipelineError::UnsupportedResolution { resolution });
        }
        Self::for_image_any_bucket(resolution, image_width, image_height)
    }

    /// The same rounding with any bucket side `resolution` (a positive multiple of 16): what
    /// the fixture generators get by wrapping `calculate_dimensions` with
    /// `lambda area, ratio: orig(R*R, ratio)` (`reference-fixtures.md` §5) for tiny models.
    pub fn for_image_any_bucket(
        resolution: u32,
        image_width: u32,
        image_height: u32,
    ) -> Result<Self> {
        if resolution == 0 || !resolution.is_multiple_of(PIXELS_PER_TOKEN) {
            return Err(PipelineError::InvalidTestResolution { resolution });
        }
        if image_width == 0 || image_height == 0 {
            return Err(PipelineError::EmptyImage {
                width: image_width,
                height: image_height,
            });
        }
        let area = resolution as u64 * resolution as u64;
        let (cw, ch) = calculate_dimensions(area, aspect_ratio(image_width, image_height));
        // `width // multiple_of * multiple_of` (`pipeline…:668-670`): a no-op on multiples of 32,
        // and the resize / condition use the unfloored `calculated_*`, which are equal then.
        let (w, h) = (
            cw / PIXELS_PER_TOKEN * PIXELS_PER_TOKEN,
            ch / PIXELS_PER_TOKEN * PIXELS_PER_TOKEN,
        );
        if w == 0 || h == 0 {
            return Err(PipelineError::DegenerateDimensions {
                resolution,
                image_width,
                image_height,
                width: cw,
                height: ch,
            });
        }
        Ok(Self {
            width: w,
            height: h,
        })
    }

    /// Latent height `H/8` (what `prepare_latents` computes as `2 * (H // 16)`).
    pub fn latent_height(&self) -> usize {
        (2 * (self.height / PIXELS_PER_TOKEN)) as usize
    }

    /// Latent width `W/8`.
    pub fn latent_width(&self) -> usize {
        (2 * (self.width / PIXELS_PER_TOKEN)) as usize
    }

    /// Packed token rows `H/16`.
    pub fn packed_height(&self) -> usize {
        (self.height / PIXELS_PER_TOKEN) as usize
    }

    /// Packed token columns `W/16`.
    pub fn packed_width(&self) -> usize {
        (self.width / PIXELS_PER_TOKEN) as usize
    }

    /// Tokens of one frame (one layer, the composite, or the condition image): `(H/16)·(W/16)`.
    pub fn tokens_per_frame(&self) -> usize {
        self.packed_height() * self.packed_width()
    }

    /// Packed noise sequence for `layers` layers plus the composite frame: `(N+1)·h·w`.
    pub fn noise_seq_len(&self, layers: usize) -> usize {
        (layers + 1) * self.tokens_per_frame()
    }

    /// Packed condition-image sequence: `h·w`.
    pub fn condition_seq_len(&self) -> usize {
        self.tokens_per_frame()
    }

    /// The transformer's image sequence: noise then condition, `(N+2)·h·w`.
    pub fn transformer_seq_len(&self, layers: usize) -> usize {
        (layers + 2) * self.tokens_per_frame()
    }

    /// `img_shapes[0]`: `(1, h, w)` for the composite, each layer and the condition (last).
    pub fn img_shapes(&self, layers: usize) -> Vec<(usize, usize, usize)> {
        vec![(1, self.packed_height(), self.packed_width()); layers + 2]
    }

    /// Shape of the unpacked noise `(B, N+1, 16, H/8, W/8)` for `latent_channels` channels.
    pub fn noise_shape(&self, batch: usize, layers: usize, latent_channels: usize) -> [usize; 5] {
        [
            batch,
            layers + 1,
            latent_channels,
            self.latent_height(),
            self.latent_width(),
        ]
    }

    /// The scheduler shift of this size: `sqrt(h·w / 256)` ([`super::scheduler::layered_mu`]).
    pub fn mu(&self) -> f64 {
        super::scheduler::layered_mu(self.condition_seq_len())
    }
}

/// The shape bookkeeping shared by pack and unpack.
fn check_pack_shape(
    len: usize,
    batch: usize,
    frames: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<()> {
    if !height.is_multiple_of(2) {
        return Err(PipelineError::NotMultiple {
            what: "latent height",
            value: height,
            multiple: 2,
        });
    }
    if !width.is_multiple_of(2) {
        return Err(PipelineError::NotMultiple {
            what: "latent width",
            value: width,
            multiple: 2,
        });
    }
    check_len("latents", batch * frames * channels * height * width, len)
}

/// `_pack_latents`: `(B, F, C, H, W)` → `(B, F·(H/2)·(W/2), 4C)` (row-major buffers).
///
/// `height`/`width` are latent sizes (`H/8`, `W/8` of the image) and must be even.
/// The condition latent, which the VAE gives as `(B, C, 1, H, W)`, is the same buffer as
/// `(B, 1, C, H, W)` (the pipeline's permute of a size-1 axis), so it packs with `frames = 1`.
pub fn pack_latents(
    x: &[f32],
    batch: usize,
    frames: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>> {
    check_pack_shape(x.len(), batch, frames, channels, height, width)?;
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0f32; x.len()];
    let mut o = 0;
    // Output order: b, f, y2, x2, c, dy, dx.
    for b in 0..batch {
        for f in 0..frames {
            let frame = (b * frames + f) * channels;
            for y2 in 0..h2 {
                for x2 in 0..w2 {
                    for c in 0..channels {
                        let plane = (frame + c) * height;
                        for dy in 0..2 {
                            let row = (plane + y2 * 2 + dy) * width + x2 * 2;
                            out[o] = x[row];
                            out[o + 1] = x[row + 1];
                            o += 2;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `_unpack_latents`: `(B, F·(H/2)·(W/2), 4C)` → `(B, C, F, H, W)` (channel-first, as diffusers
/// returns it before de-normalising and dropping frame 0). `frames` is `layers + 1`.
pub fn unpack_latents(
    packed: &[f32],
    batch: usize,
    frames: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>> {
    check_pack_shape(packed.len(), batch, frames, channels, height, width)?;
    let (h2, w2) = (height / 2, width / 2);
    let mut out = vec![0.0f32; packed.len()];
    let mut i = 0;
    for b in 0..batch {
        for f in 0..frames {
            for y2 in 0..h2 {
                for x2 in 0..w2 {
                    for c in 0..channels {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                let y = y2 * 2 + dy;
                                let xx = x2 * 2 + dx;
                                out[(((b * channels + c) * frames + f) * height + y) * width
                                    + xx] = packed[i];
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Where `x[b, f, c, y, x]` of a `(B, F, C, H, W)` buffer lands after [`pack_latents`]:
/// `(token, channel)` inside batch item `b`.
pub fn packed_position(
    f: usize,
    c: usize,
    y: usize,
    x: usize,
    height: usize,
    width: usize,
) -> (usize, usize) {
    let (h2, w2) = (height / 2, width / 2);
    (
        f * h2 * w2 + (y / 2) * w2 + x / 2,
        c * 4 + (y % 2) * 2 + x % 2,
    )
}

/// Normalises the VAE posterior mean of the condition image in place:
/// `(z − mean[c]) / std[c]` in `f32` (`_encode_vae_image`, `pipeline…:440-450`), on a buffer of
/// `shape = [B, C, F, H, W]` (`F = 1` for the condition image). `latents_mean`/`latents_std` are
/// the VAE config's lists rounded to `f32`, as `torch.tensor(list)` does.
pub fn normalize_latents(
    z: &mut [f32],
    shape: [usize; 5],
    latents_mean: &[f32],
    latents_std: &[f32],
) -> Result<()> {
    let [b, c, f, h, w] = shape;
    check_len("latents_mean", c, latents_mean.len())?;
    check_len("latents_std", c, latents_std.len())?;
    check_len("latents (B, C, F, H, W)", b * c * f * h * w, z.len())?;
    let plane = f * h * w;
    for (i, v) in z.iter_mut().enumerate() {
        let ch = (i / plane.max(1)) % c;
        *v = (*v - latents_mean[ch]) / latents_std[ch];
    }
    Ok(())
}

/// The decoder input from the unpacked final latents (`pipeline…:880-893`), `shape =
/// [B, C, F, H, W]` as [`unpack_latents`] returns it: `z / (1 / std[c]) + mean[c]` in `f32`,
/// then frame 0 (the composite) is dropped and the rest reordered to `(B·(F−1), C, H, W)`,
/// layer 1 of batch item 0 first.
///
/// NOTE: diffusers divides by the `f32` reciprocal of `std` instead of multiplying by `std`;
/// the two can differ by an ulp, so the tensor version must do the same.
pub fn latents_for_decode(
    unpacked: &[f32],
    shape: [usize; 5],
    latents_mean: &[f32],
    latents_std: &[f32],
) -> Result<Vec<f32>> {
    let [batch, channels, frames, height, width] = shape;
    check_len("latents_mean", channels, latents_mean.len())?;
    check_len("latents_std", channels, latents_std.len())?;
    let hw = height * width;
    check_len(
        "unpacked latents (B, C, F, H, W)",
        batch * channels * frames * hw,
        unpacked.len(),
    )?;
    let inv_std: Vec<f32> = latents_std.iter().map(|&s| 1.0 / s).collect();
    let mut out = Vec::with_capacity(batch * channels * frames.saturating_sub(1) * hw);
    for b in 0..batch {
        for f in 1..frames {
            for c in 0..channels {
                let src = ((b * channels + c) * frames + f) * hw;
                out.extend(
                    unpacked[src..src + hw]
                        .iter()
                        .map(|&v| v / inv_std[c] + latents_mean[c]),
                );
            }
        }
    }
    Ok(out)
}
