//! Exporters. Each returns the file's bytes (no filesystem here, so it all runs in wasm32).
//!
//! | format | layers are written as | transform |
//! |---|---|---|
//! | [`png`] | one layer's own pixels, or the composite | not applied (layer) / applied (composite) |
//! | [`zip`] | one PNG per layer (own pixels) + `manifest.json` + `composite.png` | recorded in the manifest |
//! | [`psd`] | Photoshop 3.0 layers, cropped to their non-transparent bounds | baked (scaled pixels) |
//! | [`ora`] | OpenRaster `stack.xml` + `data/*.png` | baked (scaled pixels) |
//!
//! PSD and OpenRaster have no per-layer scale, so scaled layers are resampled exactly as the
//! compositor draws them ([`crate::editor::transform::bake`]).

pub mod ora;
pub mod png;
pub mod psd;
pub mod zip;

use super::document::Document;
use super::error::Result;
use super::layer::LayerId;

/// A file the editor can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The composite of the visible layers, PNG.
    CompositePng,
    /// One layer's pixels (unscaled), PNG.
    LayerPng(LayerId),
    /// All layers as PNGs plus `manifest.json`.
    Zip,
    /// Photoshop document with layers.
    Psd,
    /// OpenRaster.
    Ora,
}

impl ExportFormat {
    /// File name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::CompositePng | ExportFormat::LayerPng(_) => "png",
            ExportFormat::Zip => "zip",
            ExportFormat::Psd => "psd",
            ExportFormat::Ora => "ora",
        }
    }

    /// MIME type for a download.
    pub fn mime_type(self) -> &'static str {
        match self {
            ExportFormat::CompositePng | ExportFormat::LayerPng(_) => "image/png",
            ExportFormat::Zip => "application/zip",
            ExportFormat::Psd => "image/vnd.adobe.photoshop",
            ExportFormat::Ora => "image/openraster",
        }
    }
}

/// Writes `doc` in `format`.
pub fn export(doc: &Document, format: ExportFormat) -> Result<Vec<u8>> {
    match format {
        ExportFormat::CompositePng => png::composite_png(doc),
        ExportFormat::LayerPng(id) => png::layer_png(doc, id),
        ExportFormat::Zip => zip::export_zip(doc),
        ExportFormat::Psd => psd::export_psd(doc),
        ExportFormat::Ora => ora::export_ora(doc),
    }
}
