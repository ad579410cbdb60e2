//! Opening user images: any format the `image` crate reads, converted to 8-bit straight-alpha
//! RGBA, with limits so that a hostile or broken file gives a clear message instead of a crash
//! or an out-of-memory tab.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, RgbaImage};

use crate::error::{Error, Result};

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted decoded size in bytes (an RGBA8 image of 8192×8192 is 256 MiB).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// The formats this build decodes, for messages.
pub const SUPPORTED: &str = "PNG, JPEG, WebP, GIF, BMP, TIFF, ICO, QOI";

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
            let dims = ImageReader::with_format(Cursor::new(bytes), format)
                .into_dimensions()
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
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image("bomb.png", &bytes).unwrap_err().to_string();
        assert!(err.contains("30000×30000"), "{err}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
