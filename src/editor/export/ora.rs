//! OpenRaster (`.ora`): a ZIP with
//! - `mimetype` first, stored, containing `image/openraster`,
//! - `stack.xml`: one `<stack>` whose `<layer>` children run **top to bottom** (the spec's
//!   order), each with `name`, `src`, `x`, `y`, `opacity`, `visibility` and `composite-op`,
//! - `data/NNN-id<ID>.png`: each layer baked at its scale (ORA has no per-layer scale),
//! - `mergedimage.png`: the composite at document size,
//! - `Thumbnails/thumbnail.png`: the composite fitted into 256x256.

use std::fmt::Write as _;

use image::imageops;

use super::png::encode_png;
use super::zip::Archive;
use crate::editor::document::Document;
use crate::editor::error::Result;
use crate::editor::transform::bake;

/// Longest thumbnail side.
pub const THUMBNAIL_MAX: u32 = 256;

/// Writes the OpenRaster file.
pub fn export_ora(doc: &Document) -> Result<Vec<u8>> {
    let mut zip = Archive::new("OpenRaster");
    // The spec requires this exact first entry, uncompressed, so `file` can sniff it.
    zip.add("mimetype", b"image/openraster", false)?;

    let files: Vec<String> = (doc.layers.iter().enumerate())
        .map(|(i, l)| format!("data/{i:03}-id{}.png", l.id))
        .collect();
    zip.add("stack.xml", stack_xml(doc, &files).as_bytes(), true)?;

    for (layer, file) in doc.layers.iter().zip(&files) {
        let baked = bake(&layer.image, layer.transform.scale);
        zip.add(
            file,
            &encode_png(&baked, &format!("layer {}", layer.id))?,
            false,
        )?;
    }

    let merged = doc.composite();
    zip.add(
        "mergedimage.png",
        &encode_png(&merged, "the composite")?,
        false,
    )?;
    let (tw, th) = thumbnail_size(doc.width, doc.height);
    let thumb = imageops::thumbnail(&merged, tw, th);
    zip.add(
        "Thumbnails/thumbnail.png",
        &encode_png(&thumb, "the thumbnail")?,
        false,
    )?;
    zip.finish()
}

/// The document size fitted into [`THUMBNAIL_MAX`] (never upscaled, at least 1 pixel).
pub fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= THUMBNAIL_MAX {
        return (width, height);
    }
    let fit = |n: u32| {
        ((n as u64 * THUMBNAIL_MAX as u64 + longest as u64 / 2) / longest as u64).max(1) as u32
    };
    (fit(width), fit(height))
}

/// `stack.xml` for `doc`; `files[i]` is the PNG of `doc.layers[i]`.
fn stack_xml(doc: &Document, files: &[String]) -> String {
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<image version=\"0.0.6\" w=\"{}\" h=\"{}\" xres=\"72\" yres=\"72\">",
        doc.width, doc.height
    );
    xml.push_str("  <stack>\n");
    for (layer, file) in doc.layers.iter().zip(files).rev() {
        let _ = writeln!(
            xml,
            "    <layer name=\"{}\" src=\"{}\" x=\"{}\" y=\"{}\" opacity=\"{}\" visibility=\"{}\" composite-op=\"{}\"/>",
            escape_xml_attr(&layer.name),
            escape_xml_attr(file),
            layer.transform.x,
            layer.transform.y,
            layer.opacity,
            if layer.visible { "visible" } else { "hidden" },
            layer.blend.ora_op(),
        );
    }
    xml.push_str("  </stack>\n</image>\n");
    xml
}

/// Escapes a user string for a double-quoted XML 1.0 attribute. Characters XML 1.0 cannot carry
/// at all (C0 controls other than tab/LF/CR, U+FFFE/U+FFFF) become U+FFFD; tab, LF and CR are
/// written as character references so attribute-value normalisation keeps them.
pub fn escape_xml_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            escape_xml_attr("a<b>&\"c'\n\u{1}é"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{fffd}é"
        );
    }

    #[test]
    fn thumbnail_fits_256() {
        assert_eq!(thumbnail_size(100, 50), (100, 50));
        assert_eq!(thumbnail_size(1024, 512), (256, 128));
        assert_eq!(thumbnail_size(10000, 1), (256, 1));
    }
}
