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

    /// The download's file name: `{stem}.{ext}` for the document formats and the composite,
    /// `{stem}-{layer name}.png` for one layer, every part through [`sanitize_file_name`].
    /// `stem` is usually the opened file's name without its extension.
    pub fn file_name(self, doc: &Document, stem: &str) -> String {
        let stem = sanitize_file_name(stem, "layers");
        match self {
            ExportFormat::LayerPng(id) => {
                let layer = doc
                    .layer(id)
                    .map(|l| sanitize_file_name(&l.name, &format!("layer-{id}")))
                    .unwrap_or_else(|| format!("layer-{id}"));
                format!("{stem}-{layer}.png")
            }
            ExportFormat::CompositePng => format!("{stem}-composite.png"),
            other => format!("{stem}.{}", other.extension()),
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

/// Longest file name stem [`sanitize_file_name`] returns, in characters.
pub const MAX_FILE_STEM: usize = 80;

/// Makes a user string (a file or layer name) safe as a download's file name stem: path
/// separators, characters Windows forbids (`<>:"/\\|?*`), control characters and Unicode
/// format/bidi controls become `_`; runs of `_` and whitespace collapse; leading and trailing
/// dots, spaces and underscores go; names Windows reserves (`CON`, `NUL`, `COM1`, ...) get a
/// `_` suffix; the result is at most [`MAX_FILE_STEM`] characters. An empty result becomes
/// `fallback`.
pub fn sanitize_file_name(name: &str, fallback: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let bad = matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*')
            || c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        let c = if bad {
            '_'
        } else if c.is_whitespace() {
            ' '
        } else {
            c
        };
        let last = out.chars().last();
        if (c == '_' || c == ' ') && last == Some(c) {
            continue;
        }
        out.push(c);
    }
    let trimmed: String = out
        .trim_matches(|c: char| c == '.' || c == ' ' || c == '_')
        .chars()
        .take(MAX_FILE_STEM)
        .collect();
    let trimmed = trimmed.trim_end_matches(['.', ' ']).to_owned();
    if trimmed.is_empty() {
        return fallback.to_owned();
    }
    let stem = trimmed.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        format!("{trimmed}_")
    } else {
        trimmed
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
