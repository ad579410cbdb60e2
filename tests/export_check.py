"""Independent check of the Rust PSD and OpenRaster exporters with psd-tools, Pillow and zipfile.

    cargo test --test export export_check_files      # writes target/export-check/
    python3 tests/export_check.py target/export-check  # needs tests/requirements-export.txt

Reads doc.psd and doc.ora and compares, layer by layer (bottom to top), names (a non-ASCII one
included), order, offsets/bounds, opacity, visibility and pixels against expected.json and the
expected/*.png that the Rust test wrote next to them. Also checks both merged images against the
Rust composite, and psd-tools' own re-rendering of the PSD layers against it.
"""

import io
import json
import os
import sys
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.constants import BlendMode

FAILURES: list[str] = []
PASSES = 0


def check(ok: bool, what: str) -> None:
    global PASSES
    if ok:
        PASSES += 1
    else:
        FAILURES.append(what)
        print(f"FAIL: {what}")


def rgba(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGBA"), dtype=np.int32)


def premultiplied(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float64)
    out[..., :3] *= out[..., 3:4] / 255.0
    return out


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


def check_psd(root: str, exp: dict) -> None:
    psd = PSDImage.open(os.path.join(root, "doc.psd"))
    check(psd.size == (exp["width"], exp["height"]), f"PSD size {psd.size}")
    layers = list(psd)  # psd-tools iterates bottom to top
    check(len(layers) == len(exp["layers"]), f"PSD has {len(layers)} layers")
    for i, (got, want) in enumerate(zip(layers, exp["layers"])):
        tag = f"PSD layer {i} {want['name']!r}"
        check(got.name == want["name"], f"{tag}: name {got.name!r}")
        check(tuple(got.bbox) == tuple(want["psd_bbox"]), f"{tag}: bbox {got.bbox} != {want['psd_bbox']}")
        check(got.opacity == want["opacity_u8"], f"{tag}: opacity {got.opacity}")
        check(got.visible == want["visible"], f"{tag}: visible {got.visible}")
        check(got.blend_mode == BlendMode.NORMAL, f"{tag}: blend {got.blend_mode}")
        cx, cy, cw, ch = want["crop"]
        expected = rgba(Image.open(os.path.join(root, want["pixels"])))[cy : cy + ch, cx : cx + cw]
        im = got.topil()
        if cw == 0 or ch == 0:
            check(im is None or im.size == (0, 0), f"{tag}: empty layer gave pixels")
            continue
        check(im is not None, f"{tag}: no pixels")
        if im is not None:
            d = max_diff(rgba(im), expected) if rgba(im).shape == expected.shape else float("inf")
            check(d == 0, f"{tag}: pixels differ (max {d})")

    want = rgba(Image.open(os.path.join(root, exp["composite"])))
    merged = rgba(psd.topil())  # the stored merged image, white matte removed by psd-tools
    check(max_diff(merged[..., 3], want[..., 3]) == 0, "PSD merged alpha")
    d = max_diff(premultiplied(merged), premultiplied(want))
    check(d <= 1.0, f"PSD merged colour (premultiplied max diff {d:.2f})")
    # psd-tools re-renders the layers itself, in float, and truncates on the way out (it gives
    # alpha 254 where the exact value is 255), so allow a few levels.
    rendered = rgba(psd.composite(force=True))
    d = max_diff(premultiplied(rendered), premultiplied(want))
    check(d <= 3.0, f"psd-tools rendering of the layers vs Rust composite (max diff {d:.2f})")


def check_ora(root: str, exp: dict) -> None:
    with zipfile.ZipFile(os.path.join(root, "doc.ora")) as z:
        infos = z.infolist()
        check(infos[0].filename == "mimetype", f"ORA first entry {infos[0].filename}")
        check(infos[0].compress_type == zipfile.ZIP_STORED, "ORA mimetype stored")
        check(z.read("mimetype") == b"image/openraster", "ORA mimetype content")
        check(z.testzip() is None, "ORA CRCs")
        image = ET.fromstring(z.read("stack.xml"))
        check(image.tag == "image", "stack.xml root")
        check((int(image.get("w")), int(image.get("h"))) == (exp["width"], exp["height"]), "ORA size")
        stack = image.find("stack")
        # stack.xml lists layers top to bottom.
        elems = list(reversed(stack.findall("layer")))
        check(len(elems) == len(exp["layers"]), f"ORA has {len(elems)} layers")
        for i, (el, want) in enumerate(zip(elems, exp["layers"])):
            tag = f"ORA layer {i} {want['name']!r}"
            check(el.get("name") == want["name"], f"{tag}: name {el.get('name')!r}")
            check((int(el.get("x")), int(el.get("y"))) == (want["x"], want["y"]), f"{tag}: offset")
            check(abs(float(el.get("opacity")) - want["opacity"]) < 1e-6, f"{tag}: opacity")
            vis = el.get("visibility")
            check(vis == ("visible" if want["visible"] else "hidden"), f"{tag}: visibility {vis}")
            got = rgba(Image.open(io.BytesIO(z.read(el.get("src")))))
            expected = rgba(Image.open(os.path.join(root, want["pixels"])))
            ok = got.shape == expected.shape and max_diff(got, expected) == 0
            check(ok, f"{tag}: pixels differ")
        merged = rgba(Image.open(io.BytesIO(z.read("mergedimage.png"))))
        want = rgba(Image.open(os.path.join(root, exp["composite"])))
        check(max_diff(merged, want) == 0, "ORA mergedimage.png")
        thumb = Image.open(io.BytesIO(z.read("Thumbnails/thumbnail.png")))
        check(max(thumb.size) <= 256, f"ORA thumbnail {thumb.size}")


def main() -> int:
    root = sys.argv[1] if len(sys.argv) > 1 else "target/export-check"
    with open(os.path.join(root, "expected.json"), encoding="utf-8") as f:
        exp = json.load(f)
    check(any(not l["name"].isascii() for l in exp["layers"]), "fixture has a non-ASCII name")
    check_psd(root, exp)
    check_ora(root, exp)
    print(f"export-check: {PASSES} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
