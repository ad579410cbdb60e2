//! One layer of the document: an RGBA image with straight (non-premultiplied) alpha, placed on
//! the canvas by a [`Transform`].

use std::fmt;
use std::sync::Arc;

use image::RgbaImage;
use serde::{Deserialize, Serialize};

use super::transform::{Rect, Transform};

/// Stable, unique identity of a layer. Ids are never reused within one [`Editor`], not even
/// after undo, so a UI may key widgets by them.
///
/// [`Editor`]: super::Editor
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerId(pub u64);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a layer combines with what is below it. Only Porter-Duff "over" exists today; the enum
/// keeps the exporters honest about what they write (`norm` in PSD, `svg:src-over` in ORA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlendMode {
    /// Porter-Duff source-over.
    #[default]
    Normal,
}

impl BlendMode {
    /// The four-byte PSD blend mode key.
    pub fn psd_key(self) -> &'static [u8; 4] {
        match self {
            BlendMode::Normal => b"norm",
        }
    }

    /// The OpenRaster `composite-op` attribute value.
    pub fn ora_op(self) -> &'static str {
        match self {
            BlendMode::Normal => "svg:src-over",
        }
    }
}

/// A layer of the document.
///
/// The pixels sit behind an [`Arc`] so that history snapshots, duplicates and undo share one
/// buffer instead of copying it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Stable, unique id.
    pub id: LayerId,
    /// User-visible name (any UTF-8; exporters escape or transcode it).
    pub name: String,
    /// Pixels, straight alpha.
    pub image: Arc<RgbaImage>,
    /// Placement on the canvas.
    pub transform: Transform,
    /// Layer opacity in `0..=1`, multiplied into the pixel alpha when compositing.
    pub opacity: f32,
    /// Hidden layers are skipped by compositing and hit-testing.
    pub visible: bool,
    /// Blend mode.
    pub blend: BlendMode,
}

impl Layer {
    /// The rectangle the layer covers on the canvas (offset, and image size times scale).
    pub fn bounds(&self) -> Rect {
        self.transform
            .bounds(self.image.width(), self.image.height())
    }
}

/// A layer to be added: pixels, a name and an offset. The editor assigns the id, and the layer
/// starts visible, at opacity 1 and scale 1.
#[derive(Clone, Debug, PartialEq)]
pub struct NewLayer {
    /// Name shown in the layers panel.
    pub name: String,
    /// Pixels, straight alpha.
    pub image: RgbaImage,
    /// Offset of the image's top-left pixel. For [`ReplaceWithSublayers`] it is relative to
    /// the replaced layer's image, in that image's pixels.
    ///
    /// [`ReplaceWithSublayers`]: super::EditorMessage::ReplaceWithSublayers
    pub x: i32,
    /// See `x`.
    pub y: i32,
}

impl NewLayer {
    /// A layer at offset (0, 0).
    pub fn new(name: impl Into<String>, image: RgbaImage) -> Self {
        NewLayer {
            name: name.into(),
            image,
            x: 0,
            y: 0,
        }
    }

    /// Wraps a decomposition result (images bottom to top, as the pipeline returns them),
    /// naming them `"{prefix} 1"` (bottom) .. `"{prefix} N"` (top).
    pub fn from_decomposition(prefix: &str, images: Vec<RgbaImage>) -> Vec<NewLayer> {
        images
            .into_iter()
            .enumerate()
            .map(|(i, image)| NewLayer::new(format!("{prefix} {}", i + 1), image))
            .collect()
    }
}
