//! PNG of one layer or of the composite.

use std::io::Cursor;

use image::{ImageFormat, RgbaImage};

use crate::editor::document::Document;
use crate::editor::error::{Error, Result};
use crate::editor::layer::LayerId;

/// Encodes an RGBA image as PNG; `what` names it in the error.
pub fn encode_png(image: &RgbaImage, what: &str) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|source| Error::Png {
            what: what.to_owned(),
            source,
        })?;
    Ok(out.into_inner())
}

/// The layer's own pixels (not scaled, not offset), PNG.
pub fn layer_png(doc: &Document, id: LayerId) -> Result<Vec<u8>> {
    let i = doc.require("export layer PNG", id)?;
    encode_png(&doc.layers[i].image, &format!("layer {id}"))
}

/// The composite of the visible layers at document size, PNG.
pub fn composite_png(doc: &Document) -> Result<Vec<u8>> {
    encode_png(&doc.composite(), "the composite")
}
