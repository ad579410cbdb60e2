"""GIMP opens the Rust PSD export: a second independent reader, beside psd-tools.

    cargo test --test export export_check_files           # writes target/export-check/
    python3 tests/gimp_check.py target/export-check        # needs gimp-console and
                                                           # tests/requirements-export.txt

GIMP 2.10 (`gimp-console`, no display) loads doc.psd with its own PSD plug-in in batch mode
(Script-Fu); the script writes what GIMP made of each layer (name, offsets, size, opacity,
visibility, mode) to layers.tsv and each layer's pixels to a PNG. This compares them, bottom to
top, with expected.json and expected/*.png, which the Rust test wrote next to the PSD: the
names (a non-ASCII one included), the order, the offsets (the layer's opaque bounds), the
opacity, the visibility, the blend mode and every pixel of every layer.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_check import FAILURES, check, max_diff, rgba  # noqa: E402

import export_check  # noqa: E402

# GIMP 2.10's "Normal" layer mode, and the legacy one a PSD plug-in may choose instead.
NORMAL_MODES = {0, 28}

SCRIPT = """
(let* ((image (car (gimp-file-load RUN-NONINTERACTIVE "{psd}" "{psd}")))
       (layers (reverse (vector->list (cadr (gimp-image-get-layers image)))))
       (out (open-output-file "{out}/layers.tsv"))
       (field (lambda (value) (display value out) (display "\\t" out)))
       (index 0))
  (field (car (gimp-image-width image)))
  (field (car (gimp-image-height image)))
  (newline out)
  (for-each
    (lambda (layer)
      (let ((offsets (gimp-drawable-offsets layer))
            (png (string-append "{out}/layer-" (number->string index) ".png")))
        (field (car offsets))
        (field (cadr offsets))
        (field (car (gimp-drawable-width layer)))
        (field (car (gimp-drawable-height layer)))
        (field (car (gimp-layer-get-opacity layer)))
        (field (car (gimp-item-get-visible layer)))
        (field (car (gimp-layer-get-mode layer)))
        (display (car (gimp-item-get-name layer)) out)
        (newline out)
        (file-png-save2 RUN-NONINTERACTIVE image layer png png 0 9 0 0 0 0 0 0 1)
        (set! index (+ index 1))))
    layers)
  (close-output-port out)
  (gimp-image-delete image))
"""


def gimp_binary() -> str:
    for name in ("gimp-console-2.10", "gimp-console"):
        path = shutil.which(name)
        if path:
            return path
    print("gimp-check: gimp-console is not installed (apt-get install gimp)")
    sys.exit(1)


def read_with_gimp(psd: str, out: str) -> list[list[str]]:
    # A fresh profile for each run: nothing from the user's GIMP settings, no first-run dialogs.
    env = dict(os.environ, HOME=out, XDG_CONFIG_HOME=os.path.join(out, "config"))
    script = SCRIPT.format(psd=psd, out=out)
    cmd = [gimp_binary(), "-i", "-d", "-f", "-b", script, "-b", "(gimp-quit 0)"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    table = os.path.join(out, "layers.tsv")
    if run.returncode != 0 or not os.path.exists(table):
        print(run.stdout, run.stderr, sep="\n")
        print(f"gimp-check: GIMP did not read {psd} (exit {run.returncode})")
        sys.exit(1)
    with open(table, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def main() -> int:
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/export-check")
    with open(os.path.join(root, "expected.json"), encoding="utf-8") as f:
        exp = json.load(f)
    with tempfile.TemporaryDirectory(prefix="gimp-check-") as out:
        rows = read_with_gimp(os.path.join(root, "doc.psd"), out)
        size, layers = rows[0], rows[1:]
        check(
            (int(size[0]), int(size[1])) == (exp["width"], exp["height"]),
            f"GIMP image size {size[:2]}",
        )
        check(len(layers) == len(exp["layers"]), f"GIMP has {len(layers)} layers")
        check(any(not l["name"].isascii() for l in exp["layers"]), "fixture has a non-ASCII name")
        for i, (row, want) in enumerate(zip(layers, exp["layers"])):
            x, y, w, h, opacity, visible, mode, name = row
            tag = f"GIMP layer {i} {want['name']!r}"
            check(name == want["name"], f"{tag}: name {name!r}")
            check(round(float(opacity) * 255 / 100) == want["opacity_u8"], f"{tag}: opacity {opacity}")
            check((int(visible) == 1) == want["visible"], f"{tag}: visible {visible}")
            check(int(mode) in NORMAL_MODES, f"{tag}: mode {mode}")
            cx, cy, cw, ch = want["crop"]
            if cw == 0 or ch == 0:
                # A layer with no opaque pixel is stored without pixels; GIMP gives it some size
                # of its own, and it must stay fully transparent.
                got = rgba(Image.open(os.path.join(out, f"layer-{i}.png")))
                check(int(got[..., 3].max()) == 0, f"{tag}: empty layer has opaque pixels")
                continue
            left, top, right, bottom = want["psd_bbox"]
            check((int(x), int(y)) == (left, top), f"{tag}: offsets {(x, y)} != {(left, top)}")
            check((int(w), int(h)) == (right - left, bottom - top), f"{tag}: size {(w, h)}")
            expected = rgba(Image.open(os.path.join(root, want["pixels"])))[cy : cy + ch, cx : cx + cw]
            got = rgba(Image.open(os.path.join(out, f"layer-{i}.png")))
            same_shape = got.shape == expected.shape
            d = max_diff(got, expected) if same_shape else float("inf")
            check(d == 0, f"{tag}: pixels differ (max {d}, shapes {got.shape} {expected.shape})")
    print(f"gimp-check: {export_check.PASSES} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
