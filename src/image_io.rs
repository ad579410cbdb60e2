//! Opening user images: any format the `image` crate reads, converted to 8-bit straight-alpha
//! RGBA, with limits so that a hostile or broken file gives a clear message instead of a crash
//! or an out-of-memory tab.

use std::io::Cursor;

use image::codecs::gif::GifDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::imageops::{self, FilterType};
use image::{AnimationDecoder, ImageFormat, ImageReader, Limits, RgbaImage};

use crate::error::{Error, Result};

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted decoded size in bytes (an RGBA8 image of 8192×8192 is 256 MiB).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// The formats this build decodes, for messages.
pub const SUPPORTED: &str = "PNG, JPEG, WebP, GIF, BMP, TIFF, ICO, QOI";

/// Longest side the editor works at. Larger images are scaled down when opened (the model
/// works at 640 or 1024 pixels, and a 16k canvas would make every edit slow).
pub const MAX_EDIT_SIDE: u32 = 4096;

/// An image opened for editing, and what the user should be told about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// Straight-alpha RGBA8, at most [`MAX_EDIT_SIDE`] per side.
    pub image: RgbaImage,
    /// The file's own size, before any downscaling.
    pub original_size: (u32, u32),
    /// Notices for the user (first frame of an animation, downscaled, fully transparent).
    pub notices: Vec<String>,
}

/// Opens a user's file for the editor: [`decode_image`], then the first frame of an
/// animation with a notice, images over [`MAX_EDIT_SIDE`] scaled down (aspect kept) with a
/// notice, and a notice when every pixel is fully transparent.
pub fn open_image(name: &str, bytes: &[u8]) -> Result<Opened> {
    let mut image = decode_image(name, bytes)?;
    let original_size = image.dimensions();
    let mut notices = Vec::new();
    if let Some(kind) = animation_kind(bytes) {
        notices.push(format!(
            "\"{name}\" is an animated {kind}: only its first frame was opened."
        ));
    }
    let (w, h) = original_size;
    if w.max(h) > MAX_EDIT_SIDE {
        let (nw, nh) = fit_within(w, h, MAX_EDIT_SIDE);
        image = imageops::resize(&image, nw, nh, FilterType::Triangle);
        notices.push(format!(
            "\"{name}\" is {w}×{h} pixels; it was scaled down to {nw}×{nh} for editing \
             (the largest side the editor works at is {MAX_EDIT_SIDE})."
        ));
    }
    if image.pixels().all(|p| p[3] == 0) {
        notices.push(format!(
            "\"{name}\" is fully transparent: there is nothing visible to show or decompose."
        ));
    }
    Ok(Opened {
        image,
        original_size,
        notices,
    })
}

/// `width x height` scaled so that the longer side is `max` (never enlarged, at least 1).
pub fn fit_within(width: u32, height: u32, max: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max {
        return (width, height);
    }
    let fit =
        |n: u32| ((n as u64 * max as u64 + longest as u64 / 2) / longest as u64).max(1) as u32;
    (fit(width), fit(height))
}

/// `Some("GIF")` etc. when the file holds more than one frame.
fn animation_kind(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        ImageFormat::Gif => {
            let frames = GifDecoder::new(Cursor::new(bytes)).ok()?.into_frames();
            (frames.take(2).filter(|f| f.is_ok()).count() > 1).then_some("GIF")
        }
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(bytes))
            .ok()?
            .has_animation()
            .then_some("WebP"),
        ImageFormat::Png => PngDecoder::new(Cursor::new(bytes))
            .ok()?
            .is_apng()
            .ok()?
            .then_some("PNG (APNG)"),
        _ => None,
    }
}

/// Decodes `bytes` (a file called `name`) into straight-alpha RGBA8.
///
/// Errors name the file and say what is wrong: empty, not an image, unsupported format,
/// dimensions over [`MAX_SIDE`], or a corrupt stream.
pub fn decode_image(name: &str, bytes: &[u8]) -> Result<RgbaImage> {
    let fail = |reason: String| Error::Image {
        name: name.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty (0 bytes)".into()));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        fail(format!(
            "this is not an image file this app can read (supported: {SUPPORTED})"
        ))
    })?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|err| match err {
        image::ImageError::Limits(_) => {
            // Only the header is read here; without limits, so the size itself can be named.
            let mut header = ImageReader::with_format(Cursor::new(bytes), format);
            header.no_limits();
            let dims = header
                .into_dimensions()
                .ok()
                .or_else(|| png_header_size(bytes))
                .ok_or(())
                .map(|(w, h)| format!("{w}×{h} pixels"))
                .unwrap_or_else(|_| "too large".into());
            fail(format!(
                "the image is {dims}; the largest accepted is {MAX_SIDE}×{MAX_SIDE} and \
                 {} MiB decoded",
                MAX_DECODED_BYTES >> 20
            ))
        }
        image::ImageError::Unsupported(e) => fail(format!(
            "{} images of this kind are not supported: {e}",
            name_of(format)
        )),
        other => fail(format!(
            "the {} data is damaged or truncated: {other}",
            name_of(format)
        )),
    })?;
    Ok(image.to_rgba8())
}

/// Width and height from a PNG's IHDR. The decoder cannot report them on wasm32 when the
/// decoded size overflows a 32-bit `usize` (a decompression bomb's size), so read them here.
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

fn name_of(format: ImageFormat) -> &'static str {
    format.extensions_str().first().copied().unwrap_or("image")
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgba};

    fn png_bytes<P: image::PixelWithColorType>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<u8>
    where
        [P::Subpixel]: image::EncodableLayout,
    {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decodes_rgba_png_exactly() {
        let img = RgbaImage::from_fn(5, 3, |x, y| {
            Rgba([x as u8 * 40, y as u8 * 80, 7, 255 - x as u8])
        });
        let got = decode_image("a.png", &png_bytes(&img)).unwrap();
        assert_eq!(got, img);
    }

    #[test]
    fn sixteen_bit_grey_becomes_rgba8() {
        let img = ImageBuffer::<Luma<u16>, _>::from_fn(2, 2, |x, _| {
            Luma([if x == 0 { 0 } else { 65535 }])
        });
        let got = decode_image("g16.png", &png_bytes(&img)).unwrap();
        assert_eq!(got.get_pixel(0, 0).0, [0, 0, 0, 255]);
        assert_eq!(got.get_pixel(1, 1).0, [255, 255, 255, 255]);
    }

    #[test]
    fn empty_file_is_named_and_explained() {
        let err = decode_image("empty.png", &[]).unwrap_err().to_string();
        assert!(err.contains("empty.png") && err.contains("empty"), "{err}");
    }

    #[test]
    fn text_file_is_not_an_image() {
        let err = decode_image("notes.txt", b"hello, this is text")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.txt") && err.contains("not an image"),
            "{err}"
        );
    }

    #[test]
    fn truncated_png_is_reported_as_damaged() {
        let img = RgbaImage::from_pixel(64, 64, Rgba([1, 2, 3, 4]));
        let bytes = png_bytes(&img);
        let err = decode_image("cut.png", &bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut.png") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn oversized_dimensions_are_refused_before_decoding() {
        // A valid PNG header claiming 30000×30000 (a decompression bomb's signature).
        let mut bytes = png_bytes(&RgbaImage::from_pixel(1, 1, Rgba([0, 0, 0, 0])));
        bytes[16..20].copy_from_slice(&30000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&30000u32.to_be_bytes());
        // Fix the IHDR CRC so the decoder gets past the header.
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image("bomb.png", &bytes).unwrap_err().to_string();
        assert!(err.contains("30000×30000"), "{err}");
    }
}
