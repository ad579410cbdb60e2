//! ZIP of per-layer PNGs, the composite and a `manifest.json` describing the stack.
//!
//! Layout:
//! - `manifest.json` ([`Manifest`]),
//! - `layers/NNN-id<ID>.png`: each layer's own pixels (NNN = stack index from the bottom),
//! - `composite.png`.

use std::io::{Cursor, Write};

use serde::{Deserialize, Serialize};
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

use super::png::encode_png;
use crate::editor::document::Document;
use crate::editor::error::{Error, Result};
use crate::editor::layer::{BlendMode, LayerId};

/// `manifest.json`: the document size and the layers, bottom to top.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"qwen-layered-web"`.
    pub generator: String,
    /// Manifest schema version (1).
    pub version: u32,
    /// Always `"bottom-to-top"`: `layers[0]` is the bottom layer.
    pub order: String,
    /// Canvas width.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// Path of the composite PNG in the archive.
    pub composite: String,
    /// Layers, bottom to top.
    pub layers: Vec<ManifestLayer>,
}

/// One layer in [`Manifest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestLayer {
    /// Stable layer id.
    pub id: LayerId,
    /// Layer name.
    pub name: String,
    /// Path of the layer's PNG in the archive (own pixels, unscaled).
    pub file: String,
    /// Canvas x of the top-left corner.
    pub x: i32,
    /// Canvas y of the top-left corner.
    pub y: i32,
    /// Pixel width of the PNG.
    pub width: u32,
    /// Pixel height of the PNG.
    pub height: u32,
    /// Uniform scale about the top-left corner.
    pub scale: f32,
    /// Opacity in `0..=1`.
    pub opacity: f32,
    /// Visibility.
    pub visible: bool,
    /// Blend mode.
    pub blend: BlendMode,
}

/// Builds the manifest for `doc` (the file names it lists are the ones [`export_zip`] writes).
pub fn manifest(doc: &Document) -> Manifest {
    Manifest {
        generator: "qwen-layered-web".into(),
        version: 1,
        order: "bottom-to-top".into(),
        width: doc.width,
        height: doc.height,
        composite: "composite.png".into(),
        layers: doc
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| ManifestLayer {
                id: l.id,
                name: l.name.clone(),
                file: format!("layers/{i:03}-id{}.png", l.id),
                x: l.transform.x,
                y: l.transform.y,
                width: l.image.width(),
                height: l.image.height(),
                scale: l.transform.scale,
                opacity: l.opacity,
                visible: l.visible,
                blend: l.blend,
            })
            .collect(),
    }
}

/// Writes the ZIP.
pub fn export_zip(doc: &Document) -> Result<Vec<u8>> {
    let manifest = manifest(doc);
    let mut zip = Archive::new("ZIP");
    zip.add(
        "manifest.json",
        &serde_json::to_vec_pretty(&manifest)?,
        true,
    )?;
    for (layer, entry) in doc.layers.iter().zip(&manifest.layers) {
        let png = encode_png(&layer.image, &format!("layer {}", layer.id))?;
        zip.add(&entry.file, &png, false)?;
    }
    zip.add(
        &manifest.composite,
        &encode_png(&doc.composite(), "the composite")?,
        false,
    )?;
    zip.finish()
}

/// A ZIP being written into memory, with errors that name the entry. Shared with ORA.
pub(crate) struct Archive {
    format: &'static str,
    writer: ZipWriter<Cursor<Vec<u8>>>,
}

impl Archive {
    pub(crate) fn new(format: &'static str) -> Self {
        Archive {
            format,
            writer: ZipWriter::new(Cursor::new(Vec::new())),
        }
    }

    /// Adds an entry, deflated or stored (PNGs are already compressed: store them).
    pub(crate) fn add(&mut self, name: &str, bytes: &[u8], deflate: bool) -> Result<()> {
        let method = if deflate {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        let options = SimpleFileOptions::default().compression_method(method);
        let err = |source| Error::Zip {
            format: self.format,
            entry: name.to_owned(),
            source,
        };
        self.writer.start_file(name, options).map_err(err)?;
        self.writer
            .write_all(bytes)
            .map_err(|e| err(zip::result::ZipError::Io(e)))?;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>> {
        let format = self.format;
        let cursor = self.writer.finish().map_err(|source| Error::Zip {
            format,
            entry: "the central directory".into(),
            source,
        })?;
        Ok(cursor.into_inner())
    }
}
