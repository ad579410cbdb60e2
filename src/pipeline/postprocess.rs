//! Decoded VAE output → RGBA layers, as the reference's `VaeImageProcessor.postprocess`.
//!
//! `pipeline_qwenimage_layered.py:895-899`: `vae.decode(...)` (already clamped to `[-1, 1]` by
//! the decoder), `squeeze(2)`, `image_processor.postprocess(image, output_type)`.
//! `postprocess` (`image_processor.py:738-786`) does, in torch `float32`,
//! `(x * 0.5 + 0.5).clamp(0, 1)` (two roundings, `denormalize` `:222-235`), permutes to
//! channel-last (`pt_to_numpy`), and for `"pil"` `(x * 255).round().astype(uint8)` in numpy
//! `float32` (`numpy_to_pil` `:128-149`): round half to even. A 4-channel array becomes a PIL
//! `"RGBA"` image with straight (not premultiplied) alpha.

use image::RgbaImage;

use super::error::{Result, check_len};

/// `(x * 0.5 + 0.5).clamp(0, 1)` in `f32` (torch `denormalize`). NaN stays NaN, as in torch.
pub fn denormalize(x: f32) -> f32 {
    let v = x * 0.5f32 + 0.5f32;
    if v.is_nan() { v } else { v.clamp(0.0, 1.0) }
}

/// A denormalised value in `[0, 1]` to 8 bits: `(v * 255).round()` (half to even) in `f32`,
/// then `astype(uint8)`. NaN (undefined in numpy) maps to 0.
pub fn unit_to_u8(v: f32) -> u8 {
    let s = (v * 255.0f32).round_ties_even();
    if s.is_nan() { 0 } else { s as u8 }
}

/// `output_type="np"` for one decoded image: `(4, H, W)` channel-first decoder output →
/// `(H, W, 4)` channel-last values in `[0, 1]`.
pub fn decoded_to_unit_hwc(decoded: &[f32], height: usize, width: usize) -> Result<Vec<f32>> {
    let n = height * width;
    check_len("decoded image (4, H, W)", 4 * n, decoded.len())?;
    let mut out = vec![0.0f32; 4 * n];
    for c in 0..4 {
        for i in 0..n {
            out[i * 4 + c] = denormalize(decoded[c * n + i]);
        }
    }
    Ok(out)
}

/// `output_type="pil"` for one decoded image: `(4, H, W)` channel-first decoder output → an
/// RGBA image (straight alpha).
pub fn decoded_to_rgba(decoded: &[f32], height: usize, width: usize) -> Result<RgbaImage> {
    let n = height * width;
    check_len("decoded image (4, H, W)", 4 * n, decoded.len())?;
    let mut px = vec![0u8; 4 * n];
    for c in 0..4 {
        for i in 0..n {
            px[i * 4 + c] = unit_to_u8(denormalize(decoded[c * n + i]));
        }
    }
    Ok(RgbaImage::from_raw(width as u32, height as u32, px)
        .expect("4·H·W bytes for an H×W RGBA image"))
}

/// The decoder output for all layers, `(N, 4, H, W)` (frame 0 already dropped), → `N` RGBA
/// images, bottom layer first (`images[0]` of the pipeline output).
pub fn decoded_layers_to_rgba(
    decoded: &[f32],
    layers: usize,
    height: usize,
    width: usize,
) -> Result<Vec<RgbaImage>> {
    let per = 4 * height * width;
    check_len("decoded layers (N, 4, H, W)", layers * per, decoded.len())?;
    decoded
        .chunks_exact(per.max(1))
        .take(layers)
        .map(|d| decoded_to_rgba(d, height, width))
        .collect()
}
