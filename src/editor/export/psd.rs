//! Photoshop document writer (PSD version 1, 8 bits per channel, RGB), written to Adobe's
//! "Photoshop File Formats Specification" rather than through a crate: the `psd` crate on
//! crates.io only reads, and no maintained pure-Rust PSD *writer* exists. What is written:
//!
//! 1. File header: `8BPS`, version 1, 4 channels (RGB + merged transparency), size, depth 8,
//!    colour mode 3 (RGB).
//! 2. Colour mode data and image resources: empty (length 0).
//! 3. Layer and mask information:
//!    - layer info (length padded to a multiple of 4): a **negative** layer count, which tells
//!      readers that the merged image's first alpha channel is its transparency; then one
//!      record per layer, **first record = bottom layer**: bounds (top, left, bottom, right) =
//!      the layer cropped to its non-transparent pixels (a fully transparent layer gets an empty
//!      rectangle), channels -1 (alpha), 0, 1, 2, blend `8BIM` `norm`, opacity 0..255, flags
//!      (bit 1 set = hidden, bit 3 = "bit 4 is meaningful"), extra data: empty mask and blending
//!      ranges, the name as a Pascal string (ASCII, `?` for anything else, padded to 4) and the
//!      full Unicode name as a `luni` block. Then every layer's channel data, PackBits (RLE).
//!    - global layer mask info: empty.
//! 4. Merged image data: the composite, RLE, channels R, G, B, A. As Photoshop does, colour is
//!    stored composited over white (readers such as psd-tools undo exactly that).
//!
//! Scaled layers are baked ([`bake`]) first: PSD has no per-layer scale.

use crate::editor::document::Document;
use crate::editor::error::{Error, Result};
use crate::editor::layer::Layer;
use crate::editor::transform::{Rect, bake};
use image::RgbaImage;

/// Largest side PSD version 1 allows.
pub const PSD_MAX_SIDE: u32 = 30_000;

/// Writes the PSD.
pub fn export_psd(doc: &Document) -> Result<Vec<u8>> {
    if doc.width > PSD_MAX_SIDE || doc.height > PSD_MAX_SIDE {
        return Err(psd_error(format!(
            "the document is {}x{}, PSD allows at most {PSD_MAX_SIDE} per side",
            doc.width, doc.height
        )));
    }
    let count = i16::try_from(doc.layers.len())
        .map_err(|_| psd_error(format!("{} layers, PSD allows 32767", doc.layers.len())))?;

    let mut out = Vec::new();
    // 1. File header.
    out.extend_from_slice(b"8BPS");
    put_u16(&mut out, 1); // version
    out.extend_from_slice(&[0; 6]); // reserved
    put_u16(&mut out, 4); // channels: R, G, B + transparency
    put_u32(&mut out, doc.height);
    put_u32(&mut out, doc.width);
    put_u16(&mut out, 8); // depth
    put_u16(&mut out, 3); // colour mode: RGB

    // 2. Colour mode data, image resources.
    put_u32(&mut out, 0);
    put_u32(&mut out, 0);

    // 3. Layer and mask information.
    let mut layer_info = Vec::new();
    if count > 0 {
        put_i16(&mut layer_info, -count);
        let mut channel_data = Vec::new();
        for layer in &doc.layers {
            write_layer(layer, &mut layer_info, &mut channel_data)?;
        }
        layer_info.extend_from_slice(&channel_data);
        pad_to(&mut layer_info, 4);
    }
    let section_len = 4 + layer_info.len() + 4;
    put_u32(&mut out, len_u32(section_len)?);
    put_u32(&mut out, len_u32(layer_info.len())?);
    out.extend_from_slice(&layer_info);
    put_u32(&mut out, 0); // global layer mask info

    // 4. Merged image data.
    let merged = doc.composite();
    let planes = merged_planes(&merged);
    put_u16(&mut out, 1); // RLE
    let (w, h) = (merged.width() as usize, merged.height() as usize);
    let packed: Vec<Vec<u8>> = planes
        .iter()
        .flat_map(|p| p.chunks(w.max(1)).take(h))
        .map(|row| {
            let mut packed = Vec::new();
            packbits(row, &mut packed);
            packed
        })
        .collect();
    for row in &packed {
        put_u16(&mut out, row_len(row.len())?);
    }
    for row in &packed {
        out.extend_from_slice(row);
    }
    Ok(out)
}

fn psd_error(reason: String) -> Error {
    Error::Export {
        format: "PSD",
        reason,
    }
}

fn len_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| psd_error(format!("a section of {n} bytes exceeds 4 GiB")))
}

fn row_len(n: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| psd_error(format!("a packed row of {n} bytes exceeds 65535")))
}

/// One layer record into `records`, its channel image data into `channels`.
fn write_layer(layer: &Layer, records: &mut Vec<u8>, channels: &mut Vec<u8>) -> Result<()> {
    let baked = bake(&layer.image, layer.transform.scale);
    if baked.width() > PSD_MAX_SIDE || baked.height() > PSD_MAX_SIDE {
        return Err(psd_error(format!(
            "layer {} {:?} is {}x{} after scaling; PSD allows at most {PSD_MAX_SIDE} per side",
            layer.id,
            layer.name,
            baked.width(),
            baked.height()
        )));
    }
    let crop = opaque_bounds(&baked);
    let bounds = Rect {
        x: layer.transform.x + crop.x,
        y: layer.transform.y + crop.y,
        ..crop
    };
    put_i32(records, bounds.y); // top
    put_i32(records, bounds.x); // left
    put_i32(records, clamp_i32(bounds.bottom())); // bottom
    put_i32(records, clamp_i32(bounds.right())); // right

    // Channel data: alpha first (id -1), then R, G, B, as Photoshop orders them.
    put_u16(records, 4);
    for (id, plane) in [(-1i16, 3usize), (0, 0), (1, 1), (2, 2)] {
        let start = channels.len();
        put_u16(channels, 1); // RLE
        let rows: Vec<Vec<u8>> = (0..crop.height)
            .map(|y| {
                let row: Vec<u8> = (0..crop.width)
                    .map(|x| baked.get_pixel(crop.x as u32 + x, crop.y as u32 + y)[plane])
                    .collect();
                let mut packed = Vec::new();
                packbits(&row, &mut packed);
                packed
            })
            .collect();
        for row in &rows {
            put_u16(channels, row_len(row.len())?);
        }
        for row in &rows {
            channels.extend_from_slice(row);
        }
        put_i16(records, id);
        put_u32(records, len_u32(channels.len() - start)?);
    }

    records.extend_from_slice(b"8BIM");
    records.extend_from_slice(layer.blend.psd_key());
    records.push((layer.opacity.clamp(0.0, 1.0) * 255.0).round() as u8);
    records.push(0); // clipping: base
    records.push(if layer.visible { 0x08 } else { 0x08 | 0x02 });
    records.push(0); // filler

    let mut extra = Vec::new();
    put_u32(&mut extra, 0); // layer mask data
    put_u32(&mut extra, 0); // blending ranges
    pascal_name(&layer.name, &mut extra);
    // `luni`: the name as UTF-16BE with a u32 code-unit count, padded to 4.
    let utf16: Vec<u16> = layer.name.encode_utf16().collect();
    let mut luni = Vec::new();
    put_u32(&mut luni, len_u32(utf16.len())?);
    for unit in utf16 {
        put_u16(&mut luni, unit);
    }
    pad_to(&mut luni, 4);
    extra.extend_from_slice(b"8BIMluni");
    put_u32(&mut extra, len_u32(luni.len())?);
    extra.extend_from_slice(&luni);

    put_u32(records, len_u32(extra.len())?);
    records.extend_from_slice(&extra);
    Ok(())
}

/// The legacy layer name: a Pascal string of at most 255 ASCII bytes (anything else becomes
/// `?`; the exact name is in `luni`), padded so length byte + text is a multiple of 4.
fn pascal_name(name: &str, out: &mut Vec<u8>) {
    let text: Vec<u8> = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c as u8
            } else {
                b'?'
            }
        })
        .take(255)
        .collect();
    let start = out.len();
    out.push(text.len() as u8);
    out.extend_from_slice(&text);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// The smallest rectangle (in image pixels) holding every pixel with alpha > 0; an empty
/// rectangle at (0, 0) if there is none.
pub fn opaque_bounds(image: &RgbaImage) -> Rect {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in image.enumerate_pixels() {
        if p[3] > 0 {
            (x0, y0) = (x0.min(x), y0.min(y));
            (x1, y1) = (x1.max(x + 1), y1.max(y + 1));
        }
    }
    if x0 == u32::MAX {
        return Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        };
    }
    Rect {
        x: x0 as i32,
        y: y0 as i32,
        width: x1 - x0,
        height: y1 - y0,
    }
}

/// The composite as four planes R, G, B, A, colour composited over white (Photoshop's merged
/// preview convention); fully transparent pixels are white.
fn merged_planes(image: &RgbaImage) -> [Vec<u8>; 4] {
    let mut planes: [Vec<u8>; 4] = Default::default();
    for p in image.pixels() {
        let a = p[3] as u32;
        for c in 0..3 {
            // c*a/255 + 255*(1 - a/255), rounded.
            let v = (p[c] as u32 * a + 255 * (255 - a) + 127) / 255;
            planes[c].push(v as u8);
        }
        planes[3].push(p[3]);
    }
    planes
}

/// PackBits-encodes one row: runs of 2..=128 equal bytes as `(1 - n, byte)`, everything else
/// as literals of 1..=128 bytes `(n - 1, bytes...)`.
pub fn packbits(row: &[u8], out: &mut Vec<u8>) {
    let n = row.len();
    let mut i = 0;
    while i < n {
        let mut run = 1;
        while i + run < n && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((1 - run as i32) as i8 as u8);
            out.push(row[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < n && i - start < 128 {
            if i + 2 < n && row[i] == row[i + 1] && row[i] == row[i + 2] {
                break;
            }
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&row[start..i]);
    }
}

/// Decodes PackBits (the inverse of [`packbits`]); `None` on truncated input. For tests and
/// readers.
pub fn unpackbits(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&h, rest)) = data.split_first() {
        let h = h as i8;
        if h >= 0 {
            let n = h as usize + 1;
            out.extend_from_slice(rest.get(..n)?);
            data = &rest[n..];
        } else if h != -128 {
            let n = 1 - h as isize;
            out.extend(std::iter::repeat_n(*rest.first()?, n as usize));
            data = &rest[1..];
        } else {
            data = rest;
        }
    }
    Some(out)
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

fn pad_to(out: &mut Vec<u8>, multiple: usize) {
    while !out.len().is_multiple_of(multiple) {
        out.push(0);
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_round_trips_runs_literals_and_long_rows() {
        let mut rows: Vec<Vec<u8>> = vec![
            vec![],
            vec![7],
            vec![1, 2],
            vec![5, 5],
            vec![1, 1, 1, 2, 3, 3, 4, 4, 4, 4],
            vec![9; 300],
            (0..=255).chain(0..=255).collect(),
        ];
        let mut seed = 12345u32;
        rows.push(
            (0..1000)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ((seed >> 16) % 3) as u8
                })
                .collect(),
        );
        for row in rows {
            let mut packed = Vec::new();
            packbits(&row, &mut packed);
            assert_eq!(unpackbits(&packed).as_deref(), Some(&row[..]));
            assert!(
                packed.len() <= row.len() + row.len().div_ceil(128),
                "{}",
                row.len()
            );
        }
        let mut packed = Vec::new();
        packbits(&[4; 10], &mut packed);
        assert_eq!(packed, [(1i8 - 10) as u8, 4]);
    }

    #[test]
    fn pascal_names_are_ascii_and_padded_to_four() {
        let mut out = Vec::new();
        pascal_name("ab", &mut out);
        assert_eq!(out, [2, b'a', b'b', 0]);
        out.clear();
        pascal_name("Ébène", &mut out);
        assert_eq!(out, [5, b'?', b'b', b'?', b'n', b'e', 0, 0]);
    }

    #[test]
    fn merged_colour_is_matted_on_white() {
        let img = RgbaImage::from_vec(2, 1, vec![0, 0, 0, 0, 100, 200, 0, 128]).expect("2x1");
        let p = merged_planes(&img);
        assert_eq!(p[0], [255, 177]); // 100*128/255 + 127 = 50.2 + 127 = 177.2
        assert_eq!(p[3], [0, 128]);
    }
}
