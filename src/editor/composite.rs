//! CPU compositing: bottom-to-top Porter-Duff "over" in premultiplied `f32`, honouring
//! visibility, opacity, offset and scale (see [`super::transform`] for the resampler).
//!
//! The result is straight-alpha RGBA8, rounded once at the end. For layers with identity
//! transforms and opacity 1 it matches PIL's `Image.alpha_composite` folded bottom to top (as
//! the reference's `combine_layers.py` does) within 1/255 per channel; PIL rounds to 8 bits after
//! every layer, we round once. `tests/editor.rs` checks this against a committed PIL fixture
//! (`tests/fixtures/editor/`, made by `gen_composite.py` there, Pillow version pinned in it).

use image::RgbaImage;

use super::document::Document;
use super::layer::Layer;
use super::transform::{Premul, Rect, premultiply, sample_scaled, unpremultiply};

/// Composites the visible layers of `doc` into an image of the document size.
pub fn composite(doc: &Document) -> RgbaImage {
    let canvas = Rect {
        x: 0,
        y: 0,
        width: doc.width,
        height: doc.height,
    };
    composite_region(doc.layers.iter().filter(|l| l.visible), canvas)
}

/// Composites `layers` (bottom to top; visibility is the caller's business, opacity is applied)
/// into the canvas rectangle `region`. Used for the document composite and for merge down.
pub fn composite_region<'a>(
    layers: impl IntoIterator<Item = &'a Layer>,
    region: Rect,
) -> RgbaImage {
    let (w, h) = (region.width as usize, region.height as usize);
    let mut acc: Vec<Premul> = vec![[0.0; 4]; w * h];
    for layer in layers {
        blend_layer_over(&mut acc, region, layer);
    }
    let mut out = RgbaImage::new(region.width, region.height);
    for (dst, src) in out.pixels_mut().zip(&acc) {
        *dst = unpremultiply(*src);
    }
    out
}

/// `acc = layer over acc` on the overlap of the layer's bounds and `region`.
fn blend_layer_over(acc: &mut [Premul], region: Rect, layer: &Layer) {
    let bounds = layer.bounds();
    let x0 = (bounds.x as i64).max(region.x as i64);
    let y0 = (bounds.y as i64).max(region.y as i64);
    let x1 = bounds.right().min(region.right());
    let y1 = bounds.bottom().min(region.bottom());
    if x0 >= x1 || y0 >= y1 || layer.opacity <= 0.0 {
        return;
    }
    let stride = region.width as usize;
    for cy in y0..y1 {
        let row = (cy - region.y as i64) as usize * stride;
        let by = (cy - bounds.y as i64) as u32;
        for cx in x0..x1 {
            let bx = (cx - bounds.x as i64) as u32;
            let mut s = sample_scaled(&layer.image, layer.transform.scale, bx, by);
            if !layer.transform.is_unscaled() {
                // Quantise resampled pixels to 8 bits, exactly as `bake` does, so the composite
                // equals the composite of the baked layers that PSD/ORA export.
                s = premultiply(unpremultiply(s));
            }
            if s[3] <= 0.0 {
                continue;
            }
            let o = layer.opacity;
            let d = &mut acc[row + (cx - region.x as i64) as usize];
            let k = 1.0 - s[3] * o;
            for c in 0..4 {
                d[c] = s[c] * o + d[c] * k;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use image::Rgba;

    use super::*;
    use crate::editor::{BlendMode, LayerId, Transform};

    fn layer(id: u64, image: RgbaImage, x: i32, y: i32) -> Layer {
        Layer {
            id: LayerId(id),
            name: format!("l{id}"),
            image: Arc::new(image),
            transform: Transform { x, y, scale: 1.0 },
            opacity: 1.0,
            visible: true,
            blend: BlendMode::Normal,
        }
    }

    #[test]
    fn half_transparent_red_over_opaque_blue() {
        let mut doc = Document::new(1, 1);
        doc.layers.push(layer(
            1,
            RgbaImage::from_pixel(1, 1, Rgba([0, 0, 255, 255])),
            0,
            0,
        ));
        doc.layers.push(layer(
            2,
            RgbaImage::from_pixel(1, 1, Rgba([255, 0, 0, 128])),
            0,
            0,
        ));
        // PIL: r = 255*128/255 = 128, b = 255*(1-128/255) = 127.
        assert_eq!(*composite(&doc).get_pixel(0, 0), Rgba([128, 0, 127, 255]));
    }

    #[test]
    fn offsets_clip_and_hidden_or_zero_opacity_layers_vanish() {
        let mut doc = Document::new(3, 1);
        doc.layers.push(layer(
            1,
            RgbaImage::from_pixel(2, 1, Rgba([9, 9, 9, 255])),
            2,
            0,
        ));
        doc.layers.push(layer(
            2,
            RgbaImage::from_pixel(5, 5, Rgba([1, 1, 1, 255])),
            -10,
            0,
        ));
        let mut hidden = layer(3, RgbaImage::from_pixel(3, 1, Rgba([7, 7, 7, 255])), 0, 0);
        hidden.visible = false;
        doc.layers.push(hidden);
        let mut clear = layer(4, RgbaImage::from_pixel(3, 1, Rgba([7, 7, 7, 255])), 0, 0);
        clear.opacity = 0.0;
        doc.layers.push(clear);
        let out = composite(&doc);
        assert_eq!(out.get_pixel(0, 0), &Rgba([0, 0, 0, 0]));
        assert_eq!(out.get_pixel(2, 0), &Rgba([9, 9, 9, 255]));
    }

    #[test]
    fn opacity_scales_alpha() {
        let mut doc = Document::new(1, 1);
        let mut l = layer(
            1,
            RgbaImage::from_pixel(1, 1, Rgba([10, 20, 30, 200])),
            0,
            0,
        );
        l.opacity = 0.5;
        doc.layers.push(l);
        assert_eq!(*composite(&doc).get_pixel(0, 0), Rgba([10, 20, 30, 100]));
    }
}
