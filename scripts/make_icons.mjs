// Draws the app icons (three stacked, offset translucent squares: "layers") into www/icons/.
// No third-party assets: plain pixel maths, encoded by tests/e2e/png.mjs.
//   node scripts/make_icons.mjs
import { writeFileSync } from "node:fs";
import { encodePng } from "../tests/e2e/png.mjs";

const BG = [0x16, 0x18, 0x1d];
const LAYERS = [ // [r, g, b, alpha], bottom to top
  [0x4c, 0xc3, 0x8a, 0.95], [0xff, 0xb4, 0x47, 0.9], [0x5b, 0x8c, 0xff, 0.9],
];

function icon(size, safe) {
  // `safe`: fraction of the side the drawing may use (maskable icons need a wide margin).
  const rgba = new Uint8Array(size * size * 4);
  const unit = (size * safe) / 10, origin = (size - size * safe) / 2;
  const radius = unit * 0.9;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let c = [...BG];
      LAYERS.forEach(([r, g, b, a], i) => {
        const left = origin + unit * (1 + 2 * i), top = origin + unit * (5 - 2 * i);
        const side = unit * 4;
        const dx = Math.max(left + radius - (x + 0.5), 0, x + 0.5 - (left + side - radius));
        const dy = Math.max(top + radius - (y + 0.5), 0, y + 0.5 - (top + side - radius));
        const cover = Math.min(1, Math.max(0, radius - Math.hypot(dx, dy) + 0.5));
        const k = a * cover;
        c = [c[0] * (1 - k) + r * k, c[1] * (1 - k) + g * k, c[2] * (1 - k) + b * k];
      });
      rgba.set([Math.round(c[0]), Math.round(c[1]), Math.round(c[2]), 255], (y * size + x) * 4);
    }
  }
  return encodePng(size, size, rgba);
}

const out = new URL("../www/icons/", import.meta.url);
writeFileSync(new URL("icon-192.png", out), icon(192, 1));
writeFileSync(new URL("icon-512.png", out), icon(512, 1));
writeFileSync(new URL("icon-maskable-512.png", out), icon(512, 0.7));
console.log("wrote www/icons/icon-{192,512,maskable-512}.png");
