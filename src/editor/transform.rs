//! Layer placement: an integer offset plus a uniform scale about the layer's top-left corner,
//! and the one resampler every consumer (compositing, hit-testing, merge down, PSD/ORA export)
//! shares, so that what is drawn, hit and exported agree pixel for pixel.
//!
//! Resampling: a scaled layer covers `round(w * scale) x round(h * scale)` canvas pixels.
//! Each covered pixel centre is mapped back into the source image and sampled **bilinearly in
//! premultiplied alpha** (so transparent neighbours do not bleed their colour into edges), with
//! clamp-to-edge. There is no area filtering: downscaling below 1/2 aliases. At scale 1 pixels
//! are copied exactly.

use std::sync::Arc;

use image::{Rgba, RgbaImage};
use serde::{Deserialize, Serialize};

/// Smallest accepted scale.
pub const MIN_SCALE: f32 = 1.0 / 64.0;
/// Largest accepted scale.
pub const MAX_SCALE: f32 = 64.0;

/// Where a layer sits on the canvas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Canvas x of the layer's top-left corner.
    pub x: i32,
    /// Canvas y of the layer's top-left corner.
    pub y: i32,
    /// Uniform scale about the top-left corner, in `MIN_SCALE..=MAX_SCALE`.
    pub scale: f32,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            x: 0,
            y: 0,
            scale: 1.0,
        }
    }
}

/// An axis-aligned rectangle in canvas pixels (`x..x+width`, `y..y+height`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Rect {
    /// Right edge (exclusive), widened to avoid overflow.
    pub fn right(&self) -> i64 {
        self.x as i64 + self.width as i64
    }

    /// Bottom edge (exclusive), widened to avoid overflow.
    pub fn bottom(&self) -> i64 {
        self.y as i64 + self.height as i64
    }

    /// Whether the canvas pixel `(px, py)` lies inside.
    pub fn contains(&self, px: i64, py: i64) -> bool {
        px >= self.x as i64 && py >= self.y as i64 && px < self.right() && py < self.bottom()
    }
}

impl Transform {
    /// Whether pixels are copied 1:1 (scale exactly 1).
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0
    }

    /// The canvas rectangle an image of `width x height` covers under this transform.
    pub fn bounds(&self, width: u32, height: u32) -> Rect {
        let (w, h) = scaled_size(width, height, self.scale);
        Rect {
            x: self.x,
            y: self.y,
            width: w,
            height: h,
        }
    }
}

/// Size of an image after scaling: each side rounded, at least 1 pixel.
pub fn scaled_size(width: u32, height: u32, scale: f32) -> (u32, u32) {
    let side = |n: u32| ((n as f64 * scale as f64).round() as u32).max(1);
    if scale == 1.0 {
        (width, height)
    } else {
        (side(width), side(height))
    }
}

/// Premultiplied RGBA in `0..=1`.
pub(crate) type Premul = [f32; 4];

/// Converts a straight-alpha pixel to premultiplied floats.
pub(crate) fn premultiply(p: Rgba<u8>) -> Premul {
    let a = p[3] as f32 / 255.0;
    [
        p[0] as f32 / 255.0 * a,
        p[1] as f32 / 255.0 * a,
        p[2] as f32 / 255.0 * a,
        a,
    ]
}

/// Converts premultiplied floats back to a straight-alpha pixel, rounding to nearest.
/// Fully transparent pixels become `(0, 0, 0, 0)`, as PIL's `alpha_composite` writes them.
pub(crate) fn unpremultiply(p: Premul) -> Rgba<u8> {
    let a8 = (p[3] * 255.0).round().clamp(0.0, 255.0) as u8;
    if a8 == 0 {
        return Rgba([0, 0, 0, 0]);
    }
    let c = |v: f32| (v / p[3] * 255.0).round().clamp(0.0, 255.0) as u8;
    Rgba([c(p[0]), c(p[1]), c(p[2]), a8])
}

/// The pixel at `(bx, by)` of the layer image *as placed* (after scaling), premultiplied.
/// `bx < scaled width`, `by < scaled height`.
pub(crate) fn sample_scaled(image: &RgbaImage, scale: f32, bx: u32, by: u32) -> Premul {
    if scale == 1.0 {
        return premultiply(*image.get_pixel(bx, by));
    }
    let (w, h) = (image.width(), image.height());
    let (sw, sh) = scaled_size(w, h, scale);
    // Pixel centre in the scaled grid, mapped back to continuous source coordinates, then to
    // the source pixel-centre lattice.
    let u = (bx as f64 + 0.5) * (w as f64 / sw as f64) - 0.5;
    let v = (by as f64 + 0.5) * (h as f64 / sh as f64) - 0.5;
    let clamp = |t: f64, n: u32| t.clamp(0.0, (n - 1) as f64);
    let (u, v) = (clamp(u, w), clamp(v, h));
    let (x0, y0) = (u.floor() as u32, v.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = ((u - x0 as f64) as f32, (v - y0 as f64) as f32);
    let p00 = premultiply(*image.get_pixel(x0, y0));
    let p10 = premultiply(*image.get_pixel(x1, y0));
    let p01 = premultiply(*image.get_pixel(x0, y1));
    let p11 = premultiply(*image.get_pixel(x1, y1));
    let mut out = [0.0; 4];
    for c in 0..4 {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bottom = p01[c] + (p11[c] - p01[c]) * fx;
        out[c] = top + (bottom - top) * fy;
    }
    out
}

/// The layer image resampled to its placed size (straight alpha). At scale 1 this is the same
/// buffer, shared.
pub fn bake(image: &Arc<RgbaImage>, scale: f32) -> Arc<RgbaImage> {
    if scale == 1.0 {
        return Arc::clone(image);
    }
    let (sw, sh) = scaled_size(image.width(), image.height(), scale);
    Arc::new(RgbaImage::from_fn(sw, sh, |bx, by| {
        unpremultiply(sample_scaled(image, scale, bx, by))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_size_rounds_and_never_vanishes() {
        assert_eq!(scaled_size(10, 3, 1.0), (10, 3));
        assert_eq!(scaled_size(10, 3, 0.5), (5, 2));
        assert_eq!(scaled_size(10, 3, 1.0 / 64.0), (1, 1));
        assert_eq!(scaled_size(3, 3, 2.0), (6, 6));
    }

    #[test]
    fn bake_at_scale_one_shares_the_buffer() {
        let img = Arc::new(RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 4])));
        assert!(Arc::ptr_eq(&img, &bake(&img, 1.0)));
    }

    #[test]
    fn upscaling_a_flat_image_keeps_it_flat_and_premultiplied_edges_do_not_bleed() {
        let img = Arc::new(RgbaImage::from_pixel(3, 2, Rgba([200, 100, 50, 255])));
        let big = bake(&img, 2.0);
        assert_eq!(big.dimensions(), (6, 4));
        assert!(big.pixels().all(|p| *p == Rgba([200, 100, 50, 255])));

        // Opaque red next to transparent green: the blend must stay pure red in colour.
        let mut edge = RgbaImage::new(2, 1);
        edge.put_pixel(0, 0, Rgba([255, 0, 0, 255]));
        edge.put_pixel(1, 0, Rgba([0, 255, 0, 0]));
        let big = bake(&Arc::new(edge), 4.0);
        for p in big.pixels().filter(|p| p[3] > 0) {
            assert_eq!((p[0], p[1], p[2]), (255, 0, 0), "{p:?}");
        }
    }

    #[test]
    fn premultiply_round_trips_every_opaque_value() {
        for v in 0..=255u8 {
            let p = Rgba([v, 255 - v, v / 2, 255]);
            assert_eq!(unpremultiply(premultiply(p)), p);
        }
        assert_eq!(
            unpremultiply(premultiply(Rgba([9, 9, 9, 0]))),
            Rgba([0, 0, 0, 0])
        );
    }
}
