//! The document: a canvas size and a stack of layers, bottom to top.

use image::RgbaImage;

use super::error::{Error, Result};
use super::layer::{Layer, LayerId};
use super::transform::{sample_scaled, unpremultiply};

/// The edited document. Read it through [`Editor::document`]; change it only with
/// [`Editor::update`].
///
/// [`Editor::document`]: super::Editor::document
/// [`Editor::update`]: super::Editor::update
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    /// Layers, bottom (index 0) to top, as the pipeline returns them.
    pub layers: Vec<Layer>,
    /// The selected layer, if any.
    pub selected: Option<LayerId>,
}

impl Document {
    /// An empty document.
    pub fn new(width: u32, height: u32) -> Self {
        Document {
            width,
            height,
            layers: Vec::new(),
            selected: None,
        }
    }

    /// Stack index of the layer with this id.
    pub fn index_of(&self, id: LayerId) -> Option<usize> {
        self.layers.iter().position(|l| l.id == id)
    }

    /// The layer with this id.
    pub fn layer(&self, id: LayerId) -> Option<&Layer> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// Stack index of `id`, or an [`Error::UnknownLayer`] naming `action`.
    pub(crate) fn require(&self, action: &'static str, id: LayerId) -> Result<usize> {
        self.index_of(id).ok_or_else(|| Error::UnknownLayer {
            action,
            id,
            present: self
                .layers
                .iter()
                .map(|l| l.id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The composite of the visible layers (see [`mod@super::composite`]).
    pub fn composite(&self) -> RgbaImage {
        super::composite::composite(self)
    }

    /// The topmost visible layer whose placed pixel under the canvas point `(x, y)` is not
    /// fully transparent (pixel alpha times layer opacity > 0). Fractional points fall in the
    /// pixel that contains them; points outside every layer give `None`.
    pub fn topmost_layer_at(&self, x: f64, y: f64) -> Option<LayerId> {
        if !x.is_finite() || !y.is_finite() {
            return None;
        }
        let (px, py) = (x.floor() as i64, y.floor() as i64);
        self.layers.iter().rev().find_map(|layer| {
            let b = layer.bounds();
            if !layer.visible || layer.opacity <= 0.0 || !b.contains(px, py) {
                return None;
            }
            let (bx, by) = ((px - b.x as i64) as u32, (py - b.y as i64) as u32);
            // Through 8 bits, as the pixel is baked for export, so hits match exported pixels.
            let alpha =
                unpremultiply(sample_scaled(&layer.image, layer.transform.scale, bx, by))[3];
            (alpha > 0).then_some(layer.id)
        })
    }
}
