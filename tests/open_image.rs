//! Opening awkward user files for the editor (`image_io::open_image`): each gives a clear
//! error or a sensible image plus a notice. Fixtures: `tests/fixtures/bad_input/` (made by
//! `gen_bad_input.py` there).

use std::io::Cursor;

use image::{ImageFormat, Rgba, RgbaImage};
use qwen_layered_web::image_io::{MAX_EDIT_SIDE, fit_within, open_image};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/bad_input/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn close(got: Rgba<u8>, want: [u8; 4], tol: u8) -> bool {
    got.0.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= tol)
}

#[test]
fn cmyk_jpeg_opens_as_rgb() {
    let o = open_image("cmyk.jpg", &fixture("cmyk.jpg")).unwrap();
    assert_eq!(o.image.dimensions(), (8, 6));
    assert!(o.notices.is_empty(), "{:?}", o.notices);
    // Cyan ink (left) and magenta ink (right), within JPEG error.
    let left = *o.image.get_pixel(1, 3);
    let right = *o.image.get_pixel(6, 3);
    assert!(close(left, [0, 255, 255, 255], 24), "{left:?}");
    assert!(close(right, [255, 0, 255, 255], 24), "{right:?}");
}

#[test]
fn animated_gif_and_webp_open_their_first_frame_with_a_notice() {
    for name in ["animated.gif", "animated.webp"] {
        let o = open_image(name, &fixture(name)).unwrap();
        assert_eq!(o.image.dimensions(), (6, 4), "{name}");
        assert!(
            o.image.pixels().all(|p| *p == Rgba([255, 0, 0, 255])),
            "{name}: first frame is red"
        );
        assert_eq!(o.notices.len(), 1, "{name}: {:?}", o.notices);
        assert!(o.notices[0].contains("first frame"), "{:?}", o.notices);
    }
}

#[test]
fn sixteen_bit_pngs_become_8_bit() {
    let o = open_image("grey16.png", &fixture("grey16.png")).unwrap();
    let row: Vec<u8> = (0..4).map(|x| o.image.get_pixel(x, 1)[0]).collect();
    assert_eq!(row, [0, 0x55, 0xAA, 0xFF]);
    let o = open_image("rgba16.png", &fixture("rgba16.png")).unwrap();
    assert_eq!(o.image.get_pixel(0, 0).0, [255, 0, 0, 255]);
    assert_eq!(o.image.get_pixel(1, 0).0, [0, 255, 0, 128]);
    assert_eq!(o.image.get_pixel(2, 0)[3], 0);
    assert!(o.notices.is_empty());
}

#[test]
fn one_pixel_and_fully_transparent_images() {
    let o = open_image("one.png", &fixture("one.png")).unwrap();
    assert_eq!(o.image.dimensions(), (1, 1));
    assert_eq!(o.image.get_pixel(0, 0).0, [10, 20, 30, 255]);
    assert!(o.notices.is_empty());
    let o = open_image("transparent.png", &fixture("transparent.png")).unwrap();
    assert_eq!(o.image.dimensions(), (5, 5));
    assert!(
        o.notices.iter().any(|n| n.contains("fully transparent")),
        "{:?}",
        o.notices
    );
}

#[test]
fn large_images_are_scaled_down_with_a_notice() {
    let img = RgbaImage::from_pixel(MAX_EDIT_SIDE + 904, 100, Rgba([40, 80, 120, 255]));
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    let o = open_image("wide.png", &png).unwrap();
    assert_eq!(o.original_size, (5000, 100));
    assert_eq!(o.image.dimensions(), (MAX_EDIT_SIDE, 82));
    assert!(o.notices[0].contains("5000×100") && o.notices[0].contains("4096×82"));
    assert!(o.image.pixels().all(|p| *p == Rgba([40, 80, 120, 255])));
    assert_eq!(fit_within(10, 20, 4), (2, 4));
    assert_eq!(fit_within(3, 2, 4), (3, 2));
}

#[test]
fn empty_text_and_bomb_files_are_refused_with_the_reason() {
    let err = open_image("empty.png", &[]).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let err = open_image("notes.txt", b"just text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an image"), "{err}");
    // Sides within MAX_SIDE but 549 MiB decoded (over the 512 MiB limit), and sides far over
    // it: both refused from the header, before any pixel is inflated.
    for side in [12_000u32, 30_000] {
        let bomb = png_claiming(side, side);
        let err = open_image("bomb.png", &bomb).unwrap_err().to_string();
        assert!(err.contains(&format!("{side}×{side}")), "{err}");
    }
}

/// A valid 1x1 PNG whose header claims `w x h` (a decompression bomb's signature).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    RgbaImage::new(1, 1)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}
