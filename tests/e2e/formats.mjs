// Independent readers for what the app downloads (ZIP/ORA, PNG, PSD), written from the format
// specifications so the E2E tests check the files without the app's own code.
import { inflateRawSync, inflateSync } from "node:zlib";

/** ZIP (and so ORA): entry name -> Buffer, read through the central directory. */
export function readZip(buf) {
  let eocd = buf.length - 22;
  while (eocd >= 0 && buf.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error("not a ZIP: no end-of-central-directory record");
  const count = buf.readUInt16LE(eocd + 10);
  let at = buf.readUInt32LE(eocd + 16);
  const entries = new Map();
  const order = [];
  for (let i = 0; i < count; i++) {
    if (buf.readUInt32LE(at) !== 0x02014b50) throw new Error(`bad central directory entry ${i}`);
    const method = buf.readUInt16LE(at + 10);
    const size = buf.readUInt32LE(at + 20);
    const nameLen = buf.readUInt16LE(at + 28), extraLen = buf.readUInt16LE(at + 30), commentLen = buf.readUInt16LE(at + 32);
    const local = buf.readUInt32LE(at + 42);
    const name = buf.toString("utf8", at + 46, at + 46 + nameLen);
    const dataAt = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const raw = buf.subarray(dataAt, dataAt + buf.readUInt32LE(at + 20));
    const data = method === 0 ? raw : method === 8 ? inflateRawSync(raw) : null;
    if (!data) throw new Error(`${name}: compression method ${method}`);
    entries.set(name, data);
    order.push({ name, method, size });
    at += 46 + nameLen + extraLen + commentLen;
  }
  return { entries, order };
}

/** PNG (8-bit RGBA or RGB, non-interlaced) -> { width, height, rgba: Uint8Array }. */
export function decodePng(buf) {
  let at = 8, width = 0, height = 0, colour = 0, depth = 0;
  const idat = [];
  while (at < buf.length) {
    const len = buf.readUInt32BE(at), type = buf.toString("ascii", at + 4, at + 8);
    const data = buf.subarray(at + 8, at + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4); depth = data[8]; colour = data[9];
      if (data[12] !== 0) throw new Error("interlaced PNG");
    } else if (type === "IDAT") idat.push(data);
    at += 12 + len;
  }
  const channels = { 6: 4, 2: 3 }[colour];
  if (depth !== 8 || !channels) throw new Error(`PNG colour type ${colour} depth ${depth}`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels, out = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter];
      out[y * stride + x] = (line[x] + pred) & 255;
    }
  }
  if (channels === 4) return { width, height, rgba: out };
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) rgba.set([out[3 * i], out[3 * i + 1], out[3 * i + 2], 255], 4 * i);
  return { width, height, rgba };
}

function unpackBits(src, length) {
  const out = new Uint8Array(length);
  let i = 0, o = 0;
  while (o < length && i < src.length) {
    const n = src[i] > 127 ? src[i] - 256 : src[i];
    i++;
    if (n >= 0) { out.set(src.subarray(i, i + n + 1), o); i += n + 1; o += n + 1; }
    else if (n !== -128) { out.fill(src[i], o, o + 1 - n); i++; o += 1 - n; }
  }
  return out;
}

/** PSD (version 1, 8-bit RGB) -> { width, height, layers (bottom to top) }, each layer with
 * name (from `luni`), bounds, opacity 0..255, hidden, and its RGBA pixels in its bounds. */
export function readPsd(buf) {
  if (buf.toString("ascii", 0, 4) !== "8BPS") throw new Error("not a PSD");
  const height = buf.readUInt32BE(14), width = buf.readUInt32BE(18);
  let at = 26;
  at += 4 + buf.readUInt32BE(at); // colour mode data
  at += 4 + buf.readUInt32BE(at); // image resources
  at += 4; // layer and mask section length
  const infoLen = buf.readUInt32BE(at); at += 4;
  const layers = [];
  if (infoLen === 0) return { width, height, layers };
  const count = Math.abs(buf.readInt16BE(at)); at += 2;
  for (let i = 0; i < count; i++) {
    const [top, left, bottom, right] = [0, 4, 8, 12].map((o) => buf.readInt32BE(at + o));
    at += 16;
    const nch = buf.readUInt16BE(at); at += 2;
    const channels = [];
    for (let c = 0; c < nch; c++) { channels.push({ id: buf.readInt16BE(at), len: buf.readUInt32BE(at + 2) }); at += 6; }
    const blend = buf.toString("ascii", at + 4, at + 8);
    const opacity = buf[at + 8], flags = buf[at + 10];
    at += 12;
    const extraLen = buf.readUInt32BE(at); at += 4;
    const extraEnd = at + extraLen;
    let e = at;
    e += 4 + buf.readUInt32BE(e); // mask
    e += 4 + buf.readUInt32BE(e); // blending ranges
    const plen = buf[e];
    let name = buf.toString("latin1", e + 1, e + 1 + plen);
    e += Math.ceil((plen + 1) / 4) * 4;
    while (e + 12 <= extraEnd) {
      const key = buf.toString("ascii", e + 4, e + 8), len = buf.readUInt32BE(e + 8);
      if (key === "luni") {
        const n = buf.readUInt32BE(e + 12);
        name = String.fromCharCode(...Array.from({ length: n }, (_, k) => buf.readUInt16BE(e + 16 + 2 * k)));
      }
      e += 12 + len;
    }
    at = extraEnd;
    layers.push({ name, top, left, bottom, right, blend, opacity, hidden: (flags & 2) !== 0, channels });
  }
  for (const layer of layers) {
    const w = layer.right - layer.left, h = layer.bottom - layer.top;
    layer.rgba = new Uint8Array(w * h * 4);
    for (const ch of layer.channels) {
      const data = buf.subarray(at, at + ch.len);
      at += ch.len;
      const compression = data.readUInt16BE(0);
      let plane;
      if (compression === 0) plane = data.subarray(2, 2 + w * h);
      else if (compression === 1) {
        plane = new Uint8Array(w * h);
        let p = 2 + 2 * h;
        for (let y = 0; y < h; y++) {
          const n = data.readUInt16BE(2 + 2 * y);
          plane.set(unpackBits(data.subarray(p, p + n), w), y * w);
          p += n;
        }
      } else throw new Error(`PSD channel compression ${compression}`);
      const slot = ch.id === -1 ? 3 : ch.id;
      for (let k = 0; k < w * h; k++) layer.rgba[4 * k + slot] = plane[k];
    }
    delete layer.channels;
  }
  return { width, height, layers };
}
