//! Exporter structure tests: every file is parsed back here (PSD by a small reader below, ZIP
//! and ORA with the `zip` crate). `export_check_files` also writes `target/export-check/` for
//! the independent psd-tools checker: `python3 tests/export_check.py target/export-check`.

mod editor_dsl;

use std::collections::HashMap;
use std::io::{Cursor, Read};

use editor_dsl::TestEditor;
use image::{Rgba, RgbaImage};
use qwen_layered_web::editor::export::{ora, png, psd, zip as zip_export};
use qwen_layered_web::editor::transform::bake;
use qwen_layered_web::editor::{Document, ExportFormat, LayerId, export};

const UNICODE_NAME: &str = "Ébène 🌙 レイヤー";
const XML_NAME: &str = "<a & \"b\"> 'q'";

/// A document exercising every exporter feature: an opaque background, a non-ASCII name with a
/// transparent border (cropped in PSD) partly off-canvas, a hidden half-opacity layer whose name
/// needs XML escaping, a scaled layer, and a fully transparent layer.
fn sample_document() -> Document {
    let mut ed = TestEditor::new(24, 16);
    let bg = RgbaImage::from_fn(24, 16, |x, y| {
        Rgba([(x * 10) as u8, (y * 15) as u8, 200, 255])
    });
    ed.add("Background", bg, 0, 0);
    let mut framed = RgbaImage::new(8, 6);
    for y in 1..5 {
        for x in 2..7 {
            framed.put_pixel(
                x,
                y,
                Rgba([250, (x * 30) as u8, (y * 40) as u8, (60 * y) as u8]),
            );
        }
    }
    ed.add(UNICODE_NAME, framed, -3, 5);
    let hidden = ed.add_solid(XML_NAME, 5, 4, [10, 220, 30, 255], 10, 2);
    ed.set_visible(hidden, false);
    ed.set_opacity(hidden, 0.5);
    let scaled = RgbaImage::from_fn(3, 2, |x, y| {
        Rgba([(x * 80) as u8, 90, (y * 200) as u8, 255])
    });
    let s = ed.add("scaled ×2", scaled, 14, 8);
    ed.scale(s, 2.0);
    ed.set_opacity(s, 0.75);
    ed.add("empty", RgbaImage::new(4, 4), 1, 1);
    ed.doc().clone()
}

fn decode_png(bytes: &[u8]) -> RgbaImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("valid PNG")
        .to_rgba8()
}

fn unzip(bytes: &[u8]) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid ZIP");
    let mut names = Vec::new();
    let mut files = HashMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).expect("entry");
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("entry reads");
        let name = f.name().expect("UTF-8 entry name").into_owned();
        names.push(name.clone());
        files.insert(name, data);
    }
    (names, files)
}

#[test]
fn png_exports_decode_to_the_layer_and_the_composite() {
    let doc = sample_document();
    let id = doc.layers[1].id;
    let layer = decode_png(&export(&doc, ExportFormat::LayerPng(id)).expect("layer png"));
    assert_eq!(&layer, &*doc.layers[1].image);
    let comp = decode_png(&png::composite_png(&doc).expect("composite png"));
    assert_eq!(comp, doc.composite());
    let err = export(&doc, ExportFormat::LayerPng(LayerId(999))).expect_err("unknown id");
    assert!(err.to_string().contains("no layer with id 999"), "{err}");
    assert_eq!(ExportFormat::Ora.mime_type(), "image/openraster");
}

#[test]
fn zip_has_a_png_per_layer_and_a_manifest() {
    let doc = sample_document();
    let (names, files) = unzip(&zip_export::export_zip(&doc).expect("zip"));
    assert_eq!(names[0], "manifest.json");
    let manifest: zip_export::Manifest =
        serde_json::from_slice(&files["manifest.json"]).expect("manifest parses");
    assert_eq!(manifest, zip_export::manifest(&doc));
    assert_eq!((manifest.width, manifest.height), (24, 16));
    assert_eq!(manifest.order, "bottom-to-top");
    assert_eq!(manifest.layers.len(), doc.layers.len());
    for (entry, layer) in manifest.layers.iter().zip(&doc.layers) {
        assert_eq!(entry.id, layer.id);
        assert_eq!(entry.name, layer.name);
        assert_eq!(
            (entry.x, entry.y, entry.scale),
            (layer.transform.x, layer.transform.y, layer.transform.scale)
        );
        assert_eq!(
            (entry.opacity, entry.visible),
            (layer.opacity, layer.visible)
        );
        assert_eq!(
            decode_png(&files[&entry.file]),
            *layer.image,
            "{}",
            entry.file
        );
    }
    assert_eq!(manifest.layers[1].name, UNICODE_NAME);
    assert!(!manifest.layers[2].visible);
    assert_eq!(decode_png(&files[&manifest.composite]), doc.composite());
    // Raw JSON spells the fields the web UI and other tools read.
    let raw: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).expect("json");
    assert_eq!(raw["layers"][3]["scale"], 2.0);
    assert_eq!(raw["layers"][0]["blend"], "normal");
}

/// `(name, attributes)` of each `<layer .../>` line in stack.xml, unescaped.
fn ora_layers(xml: &str) -> Vec<HashMap<String, String>> {
    let unescape = |s: &str| {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    };
    xml.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("<layer ")?
                .strip_suffix("/>")
                .map(str::to_owned)
        })
        .map(|attrs| {
            let mut map = HashMap::new();
            let mut rest = attrs.as_str();
            while let Some(eq) = rest.find("=\"") {
                let key = rest[..eq].trim().to_owned();
                let after = &rest[eq + 2..];
                let end = after.find('"').expect("closing quote");
                map.insert(key, unescape(&after[..end]));
                rest = &after[end + 1..];
            }
            map
        })
        .collect()
}

#[test]
fn ora_has_mimetype_first_stored_and_a_top_to_bottom_stack() {
    let doc = sample_document();
    let bytes = ora::export_ora(&doc).expect("ora");
    // What `file`-style sniffers read: the first local header is "mimetype", stored, no extra.
    assert_eq!(&bytes[0..4], b"PK\x03\x04");
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        0,
        "mimetype is stored"
    );
    assert_eq!(u16::from_le_bytes([bytes[26], bytes[27]]), 8);
    assert_eq!(
        u16::from_le_bytes([bytes[28], bytes[29]]),
        0,
        "no extra field"
    );
    assert_eq!(&bytes[30..38], b"mimetype");
    assert_eq!(&bytes[38..54], b"image/openraster");

    let (names, files) = unzip(&bytes);
    assert_eq!(names[0], "mimetype");
    for required in ["stack.xml", "mergedimage.png", "Thumbnails/thumbnail.png"] {
        assert!(
            files.contains_key(required),
            "{required} missing: {names:?}"
        );
    }
    let xml = String::from_utf8(files["stack.xml"].clone()).expect("utf-8");
    assert!(
        xml.contains("<image version=\"0.0.6\" w=\"24\" h=\"16\""),
        "{xml}"
    );
    assert!(
        xml.contains("&lt;a &amp; &quot;b&quot;&gt; &apos;q&apos;"),
        "{xml}"
    );
    let stack = ora_layers(&xml);
    assert_eq!(stack.len(), doc.layers.len());
    for (attrs, layer) in stack.iter().zip(doc.layers.iter().rev()) {
        assert_eq!(attrs["name"], layer.name);
        assert_eq!(attrs["x"], layer.transform.x.to_string());
        assert_eq!(attrs["y"], layer.transform.y.to_string());
        assert_eq!(
            attrs["opacity"].parse::<f32>().expect("number"),
            layer.opacity
        );
        assert_eq!(
            attrs["visibility"],
            if layer.visible { "visible" } else { "hidden" }
        );
        assert_eq!(attrs["composite-op"], "svg:src-over");
        let png = decode_png(&files[&attrs["src"]]);
        assert_eq!(
            png,
            *bake(&layer.image, layer.transform.scale),
            "{}",
            attrs["src"]
        );
    }
    assert_eq!(
        stack[0]["name"], "empty",
        "the first <layer> is the top one"
    );
    assert_eq!(decode_png(&files["mergedimage.png"]), doc.composite());
    let thumb = decode_png(&files["Thumbnails/thumbnail.png"]);
    assert!(thumb.width() <= 256 && thumb.height() <= 256);
}

// ---- A minimal PSD reader: just enough to check what the writer promises. ----

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes(2).try_into().expect("2 bytes"))
    }
    fn i16(&mut self) -> i16 {
        self.u16() as i16
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes(4).try_into().expect("4 bytes"))
    }
    fn i32(&mut self) -> i32 {
        self.u32() as i32
    }
}

struct PsdLayer {
    rect: [i32; 4], // top, left, bottom, right
    channels: Vec<(i16, u32)>,
    blend: [u8; 4],
    opacity: u8,
    flags: u8,
    pascal: String,
    luni: Option<String>,
    planes: HashMap<i16, Vec<u8>>,
}

struct Psd {
    channels: u16,
    height: u32,
    width: u32,
    layer_count: i16,
    layers: Vec<PsdLayer>,
    merged: Vec<Vec<u8>>,
}

/// Reads RLE (or raw) rows of `h` lines of `w` bytes.
fn read_rle_rows(r: &mut Reader, rows: usize, w: usize) -> Vec<u8> {
    let counts: Vec<usize> = (0..rows).map(|_| r.u16() as usize).collect();
    let mut out = Vec::new();
    for n in counts {
        let row = psd::unpackbits(r.bytes(n)).expect("valid PackBits");
        assert_eq!(row.len(), w, "unpacked row width");
        out.extend(row);
    }
    out
}

fn parse_psd(data: &[u8]) -> Psd {
    let mut r = Reader { data, pos: 0 };
    assert_eq!(r.bytes(4), b"8BPS");
    assert_eq!(r.u16(), 1, "version");
    assert_eq!(r.bytes(6), [0; 6]);
    let channels = r.u16();
    let height = r.u32();
    let width = r.u32();
    assert_eq!(r.u16(), 8, "depth");
    assert_eq!(r.u16(), 3, "RGB");
    assert_eq!(r.u32(), 0, "colour mode data");
    let res = r.u32() as usize;
    r.bytes(res);

    let section_len = r.u32() as usize;
    let section_end = r.pos + section_len;
    let info_len = r.u32() as usize;
    assert_eq!(info_len % 4, 0, "layer info is padded to 4");
    let info_end = r.pos + info_len;
    let layer_count = if info_len == 0 { 0 } else { r.i16() };
    let mut layers = Vec::new();
    for _ in 0..layer_count.unsigned_abs() {
        let rect = [r.i32(), r.i32(), r.i32(), r.i32()];
        let n = r.u16();
        let channels = (0..n).map(|_| (r.i16(), r.u32())).collect();
        assert_eq!(r.bytes(4), b"8BIM");
        let blend = r.bytes(4).try_into().expect("4");
        let opacity = r.u8();
        assert_eq!(r.u8(), 0, "clipping");
        let flags = r.u8();
        assert_eq!(r.u8(), 0, "filler");
        let extra_len = r.u32() as usize;
        let extra_end = r.pos + extra_len;
        assert_eq!(r.u32(), 0, "mask data");
        let ranges = r.u32() as usize;
        r.bytes(ranges);
        let start = r.pos;
        let len = r.u8() as usize;
        let pascal = String::from_utf8(r.bytes(len).to_vec()).expect("ASCII name");
        while !(r.pos - start).is_multiple_of(4) {
            assert_eq!(r.u8(), 0, "name padding");
        }
        let mut luni = None;
        while r.pos < extra_end {
            assert_eq!(r.bytes(4), b"8BIM");
            let key = r.bytes(4);
            let len = r.u32() as usize;
            let block = r.bytes(len);
            if key == b"luni" {
                let mut b = Reader {
                    data: block,
                    pos: 0,
                };
                let n = b.u32() as usize;
                let units: Vec<u16> = (0..n).map(|_| b.u16()).collect();
                luni = Some(String::from_utf16(&units).expect("valid UTF-16"));
                assert_eq!(len % 4, 0, "luni padded to 4");
            }
        }
        assert_eq!(r.pos, extra_end, "extra data length");
        layers.push(PsdLayer {
            rect,
            channels,
            blend,
            opacity,
            flags,
            pascal,
            luni,
            planes: HashMap::new(),
        });
    }
    for layer in &mut layers {
        let (h, w) = (
            (layer.rect[2] - layer.rect[0]) as usize,
            (layer.rect[3] - layer.rect[1]) as usize,
        );
        for &(id, len) in &layer.channels.clone() {
            let start = r.pos;
            let plane = match r.u16() {
                0 => r.bytes(w * h).to_vec(),
                1 => read_rle_rows(&mut r, h, w),
                other => panic!("compression {other}"),
            };
            assert_eq!(r.pos - start, len as usize, "channel {id} length");
            layer.planes.insert(id, plane);
        }
    }
    assert!(r.pos <= info_end);
    r.pos = info_end;
    assert_eq!(r.u32(), 0, "global layer mask info");
    assert_eq!(r.pos, section_end, "layer and mask section length");

    assert_eq!(r.u16(), 1, "merged image is RLE");
    let (w, h) = (width as usize, height as usize);
    let all = read_rle_rows(&mut r, h * channels as usize, w);
    assert_eq!(r.pos, data.len(), "nothing after the merged image");
    let merged = all.chunks(w * h).map(<[u8]>::to_vec).collect();
    Psd {
        channels,
        height,
        width,
        layer_count,
        layers,
        merged,
    }
}

#[test]
fn psd_layer_records_channels_and_merged_image_read_back() {
    let doc = sample_document();
    let psd = parse_psd(&export(&doc, ExportFormat::Psd).expect("psd"));
    assert_eq!((psd.width, psd.height, psd.channels), (24, 16, 4));
    assert_eq!(
        psd.layer_count,
        -(doc.layers.len() as i16),
        "negative: merged alpha present"
    );

    for (rec, layer) in psd.layers.iter().zip(&doc.layers) {
        // First record = bottom layer.
        assert_eq!(rec.luni.as_deref(), Some(layer.name.as_str()));
        assert_eq!(&rec.blend, b"norm");
        assert_eq!(rec.opacity, (layer.opacity * 255.0).round() as u8);
        assert_eq!(rec.flags & 0x02 != 0, !layer.visible, "bit 1 = hidden");
        assert_eq!(
            rec.channels.iter().map(|c| c.0).collect::<Vec<_>>(),
            [-1, 0, 1, 2]
        );

        let baked = bake(&layer.image, layer.transform.scale);
        let crop = psd::opaque_bounds(&baked);
        let want_rect = [
            layer.transform.y + crop.y,
            layer.transform.x + crop.x,
            layer.transform.y + crop.y + crop.height as i32,
            layer.transform.x + crop.x + crop.width as i32,
        ];
        assert_eq!(rec.rect, want_rect, "{}", layer.name);
        for (id, c) in [(-1i16, 3usize), (0, 0), (1, 1), (2, 2)] {
            let want: Vec<u8> = (0..crop.height)
                .flat_map(|y| (0..crop.width).map(move |x| (x, y)))
                .map(|(x, y)| baked.get_pixel(crop.x as u32 + x, crop.y as u32 + y)[c])
                .collect();
            assert_eq!(rec.planes[&id], want, "{} channel {id}", layer.name);
        }
    }
    assert_eq!(psd.layers[1].pascal, "?b?ne ? ????");
    assert_eq!(
        psd.layers[1].rect,
        [6, -1, 10, 4],
        "cropped to the non-transparent pixels"
    );
    assert_eq!(
        psd.layers[4].rect,
        [1, 1, 1, 1],
        "a fully transparent layer is empty, at its offset"
    );
    assert_eq!(
        psd.layers[3].rect,
        [8, 14, 12, 20],
        "the scaled layer is baked"
    );

    // Merged image: colour over white, alpha as composited.
    let comp = doc.composite();
    for (i, p) in comp.pixels().enumerate() {
        let a = p[3] as u32;
        assert_eq!(psd.merged[3][i], p[3]);
        for c in 0..3 {
            let want = (p[c] as u32 * a + 255 * (255 - a) + 127) / 255;
            assert_eq!(psd.merged[c][i] as u32, want);
        }
    }
}

#[test]
fn psd_of_an_empty_document_is_still_valid() {
    let doc = TestEditor::new(3, 2).doc().clone();
    let psd = parse_psd(&psd::export_psd(&doc).expect("psd"));
    assert_eq!((psd.layer_count, psd.layers.len()), (0, 0));
    assert!(psd.merged[3].iter().all(|&a| a == 0));
    assert!(psd.merged[0].iter().all(|&c| c == 255));
}

/// Writes `target/export-check/{doc.psd, doc.ora, expected.json, expected/*.png}` for
/// `python3 tests/export_check.py target/export-check` (psd-tools + Pillow).
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn export_check_files() {
    use std::fs;
    use std::path::Path;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/export-check");
    fs::create_dir_all(dir.join("expected")).expect("create target/export-check");
    let doc = sample_document();
    fs::write(
        dir.join("doc.psd"),
        export(&doc, ExportFormat::Psd).expect("psd"),
    )
    .expect("write");
    fs::write(
        dir.join("doc.ora"),
        export(&doc, ExportFormat::Ora).expect("ora"),
    )
    .expect("write");
    let comp = doc.composite();
    fs::write(
        dir.join("expected/composite.png"),
        png::encode_png(&comp, "c").expect("png"),
    )
    .expect("write");
    let mut layers = Vec::new();
    for (i, layer) in doc.layers.iter().enumerate() {
        let baked = bake(&layer.image, layer.transform.scale);
        let file = format!("expected/layer-{i}.png");
        fs::write(dir.join(&file), png::encode_png(&baked, "l").expect("png")).expect("write");
        let crop = psd::opaque_bounds(&baked);
        let (x, y) = (layer.transform.x, layer.transform.y);
        layers.push(serde_json::json!({
            "id": layer.id,
            "name": layer.name,
            "visible": layer.visible,
            "opacity": layer.opacity,
            "opacity_u8": (layer.opacity * 255.0).round() as u8,
            "pixels": file,
            "x": x,
            "y": y,
            "width": baked.width(),
            "height": baked.height(),
            "psd_bbox": [x + crop.x, y + crop.y, x + crop.x + crop.width as i32, y + crop.y + crop.height as i32],
            "crop": [crop.x, crop.y, crop.width, crop.height],
        }));
    }
    let expected = serde_json::json!({
        "width": doc.width,
        "height": doc.height,
        "order": "bottom-to-top",
        "composite": "expected/composite.png",
        "layers": layers,
    });
    fs::write(
        dir.join("expected.json"),
        serde_json::to_vec_pretty(&expected).expect("json"),
    )
    .expect("write");
    assert_eq!(doc.layers[1].name, UNICODE_NAME);
}
