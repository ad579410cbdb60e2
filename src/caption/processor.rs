//! `Qwen2VLImageProcessor` (transformers 5.24, torchvision backend): RGBA/RGB image →
//! `pixel_values` `[grid_t·grid_h·grid_w, C·T·P·P]` + `image_grid_thw`, bit-exact on the
//! integer steps and f32-exact on the float steps.
//!
//! What the reference does with one PIL image (`image_processing_backends.py`
//! `TorchvisionBackend.process_image` → `Qwen2VLImageProcessor._preprocess`):
//!
//! 1. `do_convert_rgb`: an image with alpha is composited onto opaque white with
//!    `PIL.Image.alpha_composite` and converted to RGB (`image_transforms.convert_to_rgb`);
//!    the alpha channel is gone after this. [`composite_on_white`] is Pillow's fixed-point
//!    `ImagingAlphaComposite` for an opaque white destination.
//! 2. `smart_resize` to multiples of `patch_size · merge_size` inside `[min_pixels, max_pixels]`.
//! 3. `tvF.resize(uint8 [1,3,H,W], BICUBIC, antialias=True)`: on the CPU this is torch's
//!    Pillow-SIMD-derived uint8 kernel (`UpSampleKernelAVXAntialias.h`; `resample: 3`): int16
//!    fixed-point weights with a per-axis precision, horizontal pass then vertical pass, an
//!    8-bit intermediate. [`resize_bicubic_aa`] reproduces it.
//! 4. Rescale and normalise fused in f32: `(x − mean·255) / (std·255)` with `mean·255` and
//!    `std·255` rounded to f32 (`_fuse_mean_std_and_rescale_factor`, `tvF.normalize`).
//! 5. `patchify`: patches in merge-block order (block row, block column, row in block, column
//!    in block); features in `(channel, temporal, row, column)` order, the one still frame
//!    repeated `temporal_patch_size` times.

use image::RgbaImage;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::weights::{WeightSource, read_json};

/// The image-processor settings the caption path uses (`processor/processor_config.json` key
/// `image_processor`, or a legacy `processor/preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Spatial patch side (14).
    pub patch_size: usize,
    /// Frames per patch (2).
    pub temporal_patch_size: usize,
    /// Patches merged per side by the vision tower's merger (2).
    pub merge_size: usize,
    /// `size.shortest_edge` (= `min_pixels`, 3136 = 56²).
    pub min_pixels: usize,
    /// `size.longest_edge` (= `max_pixels`).
    pub max_pixels: usize,
    /// Per-channel mean (CLIP: 0.48145466, 0.4578275, 0.40821073).
    pub image_mean: [f32; 3],
    /// Per-channel std (CLIP: 0.26862954, 0.26130258, 0.27577711).
    pub image_std: [f32; 3],
    /// `rescale_factor` (1/255).
    pub rescale_factor: f64,
}

impl Default for ImageProcessorConfig {
    /// The class defaults of `Qwen2VLImageProcessor` (`image_processing_qwen2_vl.py`).
    // The CLIP constants as transformers writes them (rounded to f32 like torch does).
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        Self {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

#[derive(Deserialize)]
struct RawSize {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

#[derive(Deserialize)]
struct RawImageProcessor {
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    merge_size: Option<usize>,
    size: Option<RawSize>,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    rescale_factor: Option<f64>,
    resample: Option<u32>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
    do_convert_rgb: Option<bool>,
}

impl ImageProcessorConfig {
    /// Reads `{folder}/processor_config.json` (its `image_processor` entry), or else
    /// `{folder}/preprocessor_config.json`. Settings this port does not implement (another
    /// resample filter, `do_resize`/`do_rescale`/`do_normalize`/`do_convert_rgb` false) are
    /// refused with the file and value.
    pub async fn load(source: &impl WeightSource, folder: &str) -> Result<Self> {
        let combined = format!("{folder}/processor_config.json");
        let (file, raw): (String, serde_json::Value) = if source.exists(&combined).await? {
            let v: serde_json::Value = read_json(source, &combined).await?;
            let ip = v
                .get("image_processor")
                .cloned()
                .ok_or_else(|| Error::Config {
                    file: combined.clone(),
                    reason: "no \"image_processor\" entry".into(),
                })?;
            (combined, ip)
        } else {
            let legacy = format!("{folder}/preprocessor_config.json");
            let v = read_json(source, &legacy).await?;
            (legacy, v)
        };
        Self::from_json(raw, &file)
    }

    /// Parses the image-processor JSON object; `file` names it in errors.
    pub fn from_json(value: serde_json::Value, file: &str) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            file: file.to_owned(),
            reason,
        };
        let raw: RawImageProcessor = serde_json::from_value(value)
            .map_err(|e| bad(format!("image processor settings: {e}")))?;
        if let Some(r) = raw.resample
            && r != 3
        {
            return Err(bad(format!(
                "resample {r} is not supported (only 3 = bicubic, the Qwen2-VL default)"
            )));
        }
        for (name, v) in [
            ("do_resize", raw.do_resize),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
            ("do_convert_rgb", raw.do_convert_rgb),
        ] {
            if v == Some(false) {
                return Err(bad(format!("{name}: false is not supported")));
            }
        }
        let d = Self::default();
        let size = raw.size.unwrap_or(RawSize {
            shortest_edge: None,
            longest_edge: None,
        });
        let cfg = Self {
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            min_pixels: raw
                .min_pixels
                .or(size.shortest_edge)
                .unwrap_or(d.min_pixels),
            max_pixels: raw.max_pixels.or(size.longest_edge).unwrap_or(d.max_pixels),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
        };
        if cfg.patch_size == 0 || cfg.merge_size == 0 || cfg.temporal_patch_size == 0 {
            return Err(bad(format!(
                "patch_size {}, merge_size {}, temporal_patch_size {} must be positive",
                cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
            )));
        }
        if cfg.min_pixels > cfg.max_pixels {
            return Err(bad(format!(
                "min_pixels {} > max_pixels {}",
                cfg.min_pixels, cfg.max_pixels
            )));
        }
        Ok(cfg)
    }

    /// `patch_size · merge_size`: the side every resized dimension is a multiple of.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Length of one `pixel_values` row: `3 · T · P · P` (1176 for Qwen2.5-VL).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// `smart_resize(height, width, factor, min_pixels, max_pixels)` → `(h, w)`, multiples of
/// `factor`, the area inside `[min_pixels, max_pixels]`, the aspect ratio kept as closely as
/// possible. Python's `round` is round-half-to-even; `math.floor`/`math.ceil` on f64.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let bad = |reason: String| Error::Input {
        model: "Qwen2VLImageProcessor",
        reason,
    };
    if height == 0 || width == 0 {
        return Err(bad(format!("empty image {width}×{height}")));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(bad(format!(
            "absolute aspect ratio must be smaller than 200, got {} ({width}×{height})",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// `convert_to_rgb` of an image with alpha: `PIL.Image.alpha_composite(white, rgba)` then
/// `.convert("RGB")`. Pillow's integer `ImagingAlphaComposite` (7 extra precision bits) with
/// an opaque white destination; exhaustively equal to Pillow 13 for every (value, alpha).
///
/// - rgba: `[H·W·4]` straight-alpha bytes → `[H·W·3]` RGB bytes
pub fn composite_on_white(rgba: &[u8]) -> Vec<u8> {
    const PRECISION_BITS: u32 = 7;
    let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for p in rgba.chunks_exact(4) {
        let a = p[3] as u32;
        if a == 0 {
            out.extend_from_slice(&[255, 255, 255]);
            continue;
        }
        let blend = 255 * (255 - a); // dst alpha 255
        let outa255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for &c in &p[..3] {
            let tmp = c as u32 * coef1 + 255 * coef2;
            out.push((shift_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8);
        }
    }
    out
}

/// Keys' cubic convolution kernel with `a = −0.5` in torch's form (`HelperInterpCubic::aa_filter`).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Per output index: `(first input index, count)` and `ksize` int16 weights, plus the shared
/// fixed-point precision (torch `_compute_indices_int16_weights_aa`, antialias, no
/// align_corners, no explicit scale).
struct AxisWeights {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
    precision: u32,
}

fn axis_weights(in_size: usize, out_size: usize) -> AxisWeights {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let ksize = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut bounds = Vec::with_capacity(out_size);
    let mut w = vec![0.0f64; out_size * ksize];
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, xsize) = (xmin as usize, xsize.max(0) as usize);
        let row = &mut w[i * ksize..i * ksize + xsize];
        let mut total = 0.0;
        for (j, wj) in row.iter_mut().enumerate() {
            *wj = cubic((j as f64 + xmin as f64 - center + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in row.iter_mut() {
                *wj /= total;
            }
        }
        bounds.push((xmin, xsize));
    }
    let w_max = w.iter().copied().fold(w[0], f64::max);
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + w_max * (1u32 << (precision + 1)) as f64) as i32;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let one = (1u32 << precision) as f64;
    let weights = w
        .iter()
        .map(|&v| {
            if v < 0.0 {
                (-0.5 + v * one) as i32
            } else {
                (0.5 + v * one) as i32
            }
        })
        .collect();
    AxisWeights {
        bounds,
        weights,
        ksize,
        precision,
    }
}

/// One separable pass over interleaved `channels`-band bytes `[h, w, c]` along `axis`
/// (1 = width, 0 = height).
fn resample_axis(
    src: &[u8],
    (h, w, c): (usize, usize, usize),
    axis: usize,
    out_size: usize,
) -> Vec<u8> {
    let in_size = if axis == 1 { w } else { h };
    let aw = axis_weights(in_size, out_size);
    let (oh, ow) = if axis == 1 {
        (h, out_size)
    } else {
        (out_size, w)
    };
    let mut out = vec![0u8; oh * ow * c];
    let initial = 1i32 << (aw.precision - 1);
    for y in 0..oh {
        for x in 0..ow {
            let o = if axis == 1 { x } else { y };
            let (start, n) = aw.bounds[o];
            let k = &aw.weights[o * aw.ksize..o * aw.ksize + n];
            for ch in 0..c {
                let mut acc = initial;
                for (j, &kj) in k.iter().enumerate() {
                    let (sy, sx) = if axis == 1 {
                        (y, start + j)
                    } else {
                        (start + j, x)
                    };
                    acc += src[(sy * w + sx) * c + ch] as i32 * kj;
                }
                out[(y * ow + x) * c + ch] = (acc >> aw.precision).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// `torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True, align_corners=False)`
/// on the CPU, as torchvision's `resize` runs it for `Qwen2VLImageProcessor`: the width pass
/// first (when the width changes), then the height pass, with an 8-bit intermediate.
///
/// - src: `[h, w, c]` interleaved bytes → `[out_h, out_w, c]`
pub fn resize_bicubic_aa(
    src: &[u8],
    (h, w, c): (usize, usize, usize),
    out_h: usize,
    out_w: usize,
) -> Vec<u8> {
    let mut cur = src.to_vec();
    let mut cur_w = w;
    if out_w != w {
        cur = resample_axis(&cur, (h, w, c), 1, out_w);
        cur_w = out_w;
    }
    if out_h != h {
        cur = resample_axis(&cur, (h, cur_w, c), 0, out_h);
    }
    cur
}

/// What the vision tower takes for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionInput {
    /// `pixel_values` row-major `[grid_t·grid_h·grid_w, patch_dim]`.
    pub pixel_values: Vec<f32>,
    /// `image_grid_thw`: `[grid_t, grid_h, grid_w]` in patches (`grid_t` = 1 for an image).
    pub grid_thw: [usize; 3],
    /// Length of one row of `pixel_values`.
    pub patch_dim: usize,
    /// The resized RGB image `[h, w, 3]` (what was patchified, before normalisation).
    pub resized: Vec<u8>,
}

impl VisionInput {
    /// Number of patches (rows of `pixel_values`).
    pub fn patches(&self) -> usize {
        self.grid_thw.iter().product()
    }
}

/// The whole processor for one straight-alpha RGBA image (an opaque image gives the same
/// result as its RGB version).
pub fn preprocess(image: &RgbaImage, cfg: &ImageProcessorConfig) -> Result<VisionInput> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let rgb = composite_on_white(image.as_raw());
    let (rh, rw) = smart_resize(h, w, cfg.factor(), cfg.min_pixels, cfg.max_pixels)?;
    let resized = resize_bicubic_aa(&rgb, (h, w, 3), rh, rw);
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (rh / p, rw / p);
    // Fused rescale + normalise in f32, as torch computes it.
    let scale = (1.0 / cfg.rescale_factor) as f32;
    let mean: [f32; 3] = std::array::from_fn(|c| cfg.image_mean[c] * scale);
    let std: [f32; 3] = std::array::from_fn(|c| cfg.image_std[c] * scale);
    let patch_dim = cfg.patch_dim();
    let mut pixel_values = Vec::with_capacity(gh * gw * patch_dim);
    for by in 0..gh / m {
        for bx in 0..gw / m {
            for iy in 0..m {
                for ix in 0..m {
                    let (py0, px0) = ((by * m + iy) * p, (bx * m + ix) * p);
                    for c in 0..3 {
                        for _ in 0..t {
                            for y in 0..p {
                                for x in 0..p {
                                    let v = resized[((py0 + y) * rw + px0 + x) * 3 + c] as f32;
                                    pixel_values.push((v - mean[c]) / std[c]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(VisionInput {
        pixel_values,
        grid_thw: [1, gh, gw],
        patch_dim,
        resized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_python() {
        // (h, w) -> values computed with transformers' smart_resize(factor=28, 3136, 1003520).
        let f = |h, w| smart_resize(h, w, 28, 3136, 1_003_520).unwrap();
        assert_eq!(f(40, 48), (56, 84)); // below min_pixels: ceil branch
        assert_eq!(f(96, 160), (84, 168));
        assert_eq!(f(640, 640), (644, 644));
        assert_eq!(f(1024, 1024), (980, 980)); // 1036² > max_pixels: floor branch
        assert_eq!(f(42, 42), (56, 56)); // 1.5 rounds to 2 (half to even)
        assert_eq!(f(70, 70), (56, 56)); // 2.5 rounds to 2 (half to even), then 56² = min
        assert_eq!(f(2000, 3000), (812, 1204));
        assert!(smart_resize(1, 300, 28, 3136, 1_003_520).is_err());
    }

    #[test]
    fn composite_keeps_opaque_and_whitens_transparent() {
        let out = composite_on_white(&[10, 20, 30, 255, 10, 20, 30, 0, 0, 0, 0, 128]);
        assert_eq!(&out[..6], &[10, 20, 30, 255, 255, 255]);
        // 50 % black over white: Pillow gives 127.
        assert_eq!(&out[6..], &[127, 127, 127]);
    }

    #[test]
    fn resize_identity_and_constant() {
        let src: Vec<u8> = (0..5 * 7 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_aa(&src, (5, 7, 3), 5, 7), src);
        // A constant image stays constant under any resize (weights sum to one).
        let flat = vec![77u8; 9 * 13 * 3];
        let out = resize_bicubic_aa(&flat, (9, 13, 3), 28, 6);
        assert!(out.iter().all(|&v| v == 77), "{out:?}");
    }
}
