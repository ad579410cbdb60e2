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

/// The layers (at the working size) brought back to the source picture's `width × height`,
/// so that they lie exactly over the picture they came from.
///
/// The filter is the one the pipeline used on the way in: PIL's Lanczos on premultiplied
/// alpha ([`super::resize_rgba_lanczos`]), so transparent pixels lend no colour to the edges
/// of what they border, and a layer the model made at the working size is not shifted or
/// stretched differently from the picture (the working size rounds the aspect ratio to
/// multiples of 16; resizing each side back undoes exactly that). Layers already at the size
/// are returned as they are.
///
/// - layers: `N` images `[h, w, 4]` → `N` images `[height, width, 4]`
pub fn layers_at_size(layers: Vec<RgbaImage>, width: u32, height: u32) -> Result<Vec<RgbaImage>> {
    layers
        .into_iter()
        .map(|layer| {
            if layer.dimensions() == (width, height) {
                Ok(layer)
            } else {
                super::resize_rgba_lanczos(&layer, width, height)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    #[test]
    fn layers_come_back_at_the_source_size() {
        // Working size 48×32 for a 100×67 picture: both sides change, by different ratios.
        let mut half = RgbaImage::from_pixel(48, 32, Rgba([0, 0, 0, 0]));
        for y in 0..32 {
            for x in 24..48 {
                half.put_pixel(x, y, Rgba([200, 40, 10, 255]));
            }
        }
        let flat = RgbaImage::from_pixel(48, 32, Rgba([12, 34, 56, 255]));
        let clear = RgbaImage::from_pixel(48, 32, Rgba([0, 0, 0, 0]));
        let out = layers_at_size(vec![flat, clear, half.clone()], 100, 67).unwrap();
        assert!(out.iter().all(|l| l.dimensions() == (100, 67)));
        // A flat opaque layer stays that colour; a clear one stays clear.
        assert!(out[0].pixels().all(|p| *p == Rgba([12, 34, 56, 255])));
        assert!(out[1].pixels().all(|p| p[3] == 0));
        // Half transparent, half red: the left part stays clear, the right part keeps the
        // red unmixed with the transparent pixels' black (premultiplied filtering), and the
        // edge sits where it was (x = 50 of 100).
        for y in 0..67 {
            for x in 0..45 {
                assert_eq!(out[2].get_pixel(x, y)[3], 0, "({x}, {y})");
            }
            for x in 55..100 {
                assert_eq!(
                    *out[2].get_pixel(x, y),
                    Rgba([200, 40, 10, 255]),
                    "({x}, {y})"
                );
            }
            for x in 45..55 {
                let p = out[2].get_pixel(x, y);
                if p[3] > 8 {
                    // Lanczos rings a little; the colour of a visible edge pixel stays red.
                    assert!(p[0] >= 190 && p[1] <= 50 && p[2] <= 20, "({x}, {y}): {p:?}");
                }
            }
        }
        // Already at the size: untouched.
        let same = layers_at_size(vec![half.clone()], 48, 32).unwrap();
        assert_eq!(same[0], half);
        assert!(layers_at_size(vec![half], 0, 5).is_err());
    }
}
