//! Input image → VAE input, bit-exact to the reference.
//!
//! The pipeline (`pipeline_qwenimage_layered.py:693-699`) does
//! `image_processor.resize(pil, H, W)` → `image_processor.preprocess(resized, H, W)` →
//! `unsqueeze(2)`. `VaeImageProcessor.resize` (`image_processor.py:462-500`) is PIL
//! `Image.resize((W, H), LANCZOS, reducing_gap=None)`; `preprocess` resizes again to the same
//! size (a copy in PIL), then `np.array(img).astype(float32) / 255.0`, channel-first, and
//! `2.0 * x - 1.0` in torch `float32` (`image_processor.py:152-222, 607-736`). Alpha is kept
//! (`do_convert_rgb=False`).
//!
//! PIL's resize of an RGBA image (`PIL/Image.py` `resize`, Pillow 13.0.0) converts to
//! premultiplied `RGBa` (`libImaging/Convert.c` `rgbA2rgba`), resamples the four 8-bit bands
//! with the fixed-point separable filter of `libImaging/Resample.c`, and converts back
//! (`rgba2rgbA`). All three steps are reproduced here exactly; the only floating point is the
//! filter-coefficient computation, done in `f64` in the same order as Pillow.

use image::RgbaImage;

use super::dimensions::Dimensions;
use super::error::{PipelineError, Result};

/// `PRECISION_BITS` of `Resample.c`: 32 − 8 − 2.
const PRECISION_BITS: u32 = 22;
/// Lanczos-3 support.
const LANCZOS_SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Pillow's `lanczos_filter`: `sinc(x) * sinc(x/3)` on `[-3, 3)`.
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per output pixel: the first input index and the fixed-point coefficients.
struct Coeffs {
    /// `(xmin, count)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` coefficients per output pixel (only the first `count` are used).
    kk: Vec<i32>,
    ksize: usize,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box `[0, in_size)`.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // box is float[4] in C; in1 - in0 is exact for integer sizes.
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = LANCZOS_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        // (int)(…) truncates toward zero, like `as i64`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, n) = (xmin as usize, xmax.max(0) as usize);
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = lanczos(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in k.iter_mut().take(n) {
                *kx /= ww;
            }
        }
        let row = &mut kk[xx * ksize..xx * ksize + ksize];
        for (dst, &w) in row.iter_mut().zip(k.iter()).take(n) {
            let v = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 {
                (-0.5 + v) as i32
            } else {
                (0.5 + v) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, kk, ksize }
}

/// `clip8`: `ss >> PRECISION_BITS` clamped to `0..=255`.
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A 4-band 8-bit image buffer (row-major, interleaved).
struct Bands4 {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// `_ImagingResampleHorizontal_8bpc`, 4 bands, all rows.
fn resample_horizontal(src: &Bands4, out_w: usize) -> Bands4 {
    let c = precompute_coeffs(src.w, out_w);
    let mut px = vec![0u8; out_w * src.h * 4];
    for y in 0..src.h {
        let line = &src.px[y * src.w * 4..(y + 1) * src.w * 4];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 4];
            for (x, &kx) in k.iter().enumerate() {
                let p = &line[(x + xmin) * 4..(x + xmin) * 4 + 4];
                for b in 0..4 {
                    ss[b] += p[b] as i32 * kx;
                }
            }
            let o = (y * out_w + xx) * 4;
            for b in 0..4 {
                px[o + b] = clip8(ss[b]);
            }
        }
    }
    Bands4 {
        w: out_w,
        h: src.h,
        px,
    }
}

/// `_ImagingResampleVertical_8bpc`, 4 bands.
fn resample_vertical(src: &Bands4, out_h: usize) -> Bands4 {
    let c = precompute_coeffs(src.h, out_h);
    let w = src.w;
    let mut px = vec![0u8; w * out_h * 4];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
        for xx in 0..w {
            let mut ss = [1i32 << (PRECISION_BITS - 1); 4];
            for (y, &ky) in k.iter().enumerate() {
                let p = &src.px[((y + ymin) * w + xx) * 4..((y + ymin) * w + xx) * 4 + 4];
                for b in 0..4 {
                    ss[b] += p[b] as i32 * ky;
                }
            }
            let o = (yy * w + xx) * 4;
            for b in 0..4 {
                px[o + b] = clip8(ss[b]);
            }
        }
    }
    Bands4 { w, h: out_h, px }
}

/// `ImagingResample` with LANCZOS and the full box (`ImagingResampleInner`, Pillow 13.0.0).
///
/// Horizontal pass first, then vertical, each only if that side changes; but when the height
/// shrinks by more than twice what the width shrinks (`h0 − h1 > 0 && h0 − h1 > 2·(w0 − w1)`),
/// Pillow 13 runs the vertical pass first. The 8-bit intermediate makes the order visible.
/// (Pillow ≤ 12 always went horizontal first; Pillow only computes the rows the vertical pass
/// needs, which changes nothing.)
fn resample(src: Bands4, out_w: usize, out_h: usize) -> Bands4 {
    let (dh, dw) = (src.h as i64 - out_h as i64, src.w as i64 - out_w as i64);
    // NOTE: Pillow 13's pass-order rule; the 8-bit intermediate makes it visible in the output.
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let h_pass = |b: Bands4| {
        if out_w != b.w {
            resample_horizontal(&b, out_w)
        } else {
            b
        }
    };
    let v_pass = |b: Bands4| {
        if out_h != b.h {
            resample_vertical(&b, out_h)
        } else {
            b
        }
    };
    if horizontal_first {
        v_pass(h_pass(src))
    } else {
        h_pass(v_pass(src))
    }
}

/// `MULDIV255(a, b)`: `(a·b + 128 + ((a·b + 128) >> 8)) >> 8`.
fn muldiv255(a: u32, b: u32) -> u8 {
    let t = a * b + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// `rgbA2rgba`: premultiply RGB by alpha (RGBA → RGBa).
pub fn premultiply_alpha(px: &mut [u8]) {
    for p in px.chunks_exact_mut(4) {
        let a = p[3] as u32;
        for v in &mut p[..3] {
            *v = muldiv255(*v as u32, a);
        }
    }
}

/// `rgba2rgbA`: un-premultiply (RGBa → RGBA). Alpha 0 and 255 leave RGB as is; otherwise
/// `min(255, 255·c / a)` with integer division.
pub fn unpremultiply_alpha(px: &mut [u8]) {
    for p in px.chunks_exact_mut(4) {
        let a = p[3] as u32;
        if a != 0 && a != 255 {
            for v in &mut p[..3] {
                *v = (255 * *v as u32 / a).min(255) as u8;
            }
        }
    }
}

/// PIL `Image.resize((width, height), Image.LANCZOS)` on an RGBA image, bit-exact
/// (Pillow 13.0.0, which is what the reference runs).
///
/// Same size → a copy. Otherwise premultiply, resample (see `resample` for the pass order),
/// un-premultiply.
pub fn resize_rgba_lanczos(img: &RgbaImage, width: u32, height: u32) -> Result<RgbaImage> {
    let (w0, h0) = img.dimensions();
    if w0 == 0 || h0 == 0 {
        return Err(PipelineError::EmptyImage {
            width: w0,
            height: h0,
        });
    }
    if width == 0 || height == 0 {
        return Err(PipelineError::EmptyImage { width, height });
    }
    if (w0, h0) == (width, height) {
        return Ok(img.clone());
    }
    let mut px = img.as_raw().clone();
    premultiply_alpha(&mut px);
    let src = Bands4 {
        w: w0 as usize,
        h: h0 as usize,
        px,
    };
    let out = resample(src, width as usize, height as usize);
    let mut px = out.px;
    unpremultiply_alpha(&mut px);
    Ok(RgbaImage::from_raw(width, height, px).expect("buffer size matches"))
}

/// One 8-bit value as the VAE sees it: `2.0 * (v as f32 / 255.0) - 1.0`, each operation
/// rounded in `f32` like numpy (`/ 255.0`) and torch (`2.0 * x - 1.0`).
pub fn u8_to_unit_signed(v: u8) -> f32 {
    let x = v as f32 / 255.0f32;
    2.0f32 * x - 1.0f32
}

/// `VaeImageProcessor.preprocess` of an RGBA image already at its working size, without the
/// leading batch axis: channel-first `(4, H, W)` values in `[-1, 1]`.
/// The pipeline's tensor is `(1, 4, 1, H, W)`, which is the same buffer.
pub fn image_to_vae_input(img: &RgbaImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let lut: Vec<f32> = (0..=255u8).map(u8_to_unit_signed).collect();
    let mut out = vec![0.0f32; 4 * n];
    for (i, p) in img.as_raw().chunks_exact(4).enumerate() {
        for c in 0..4 {
            out[c * n + i] = lut[p[c] as usize];
        }
    }
    out
}

/// The whole input step of the pipeline for one RGBA image.
#[derive(Debug, Clone)]
pub struct PreprocessedImage {
    /// The resized RGBA image (the pipeline's `prompt_image`, also used for captioning).
    pub resized: RgbaImage,
    /// `(1, 4, 1, H, W)` VAE input in `[-1, 1]`, channel-first.
    pub vae_input: Vec<f32>,
    /// The shape of `vae_input`.
    pub shape: [usize; 5],
}

/// Resizes `img` to `dims` with PIL-exact Lanczos and converts it to the VAE input.
/// (`preprocess` resizes a second time to the same size, which PIL turns into a copy.)
/// An RGB input should be converted to RGBA with alpha 255 first (the official app does
/// `convert("RGB").convert("RGBA")`); the result equals PIL's resize of the RGB image.
pub fn preprocess_image(img: &RgbaImage, dims: Dimensions) -> Result<PreprocessedImage> {
    let resized = resize_rgba_lanczos(img, dims.width, dims.height)?;
    let vae_input = image_to_vae_input(&resized);
    let shape = [1, 4, 1, dims.height as usize, dims.width as usize];
    Ok(PreprocessedImage {
        resized,
        vae_input,
        shape,
    })
}
