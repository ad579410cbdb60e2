// Writes a random bf16 safetensors checkpoint with the real model's largest tensor shapes, as
// a model repo the mock hub serves (`--root ROOT`), for the heap measurement of
// tests/web_heap.rs: ROOT/test/heap-weights/transformer/diffusion_pytorch_model.safetensors.
//
//   node tests/heap/make-repo.mjs ROOT MEGABYTES
//
// Tensors cycle through the shapes below until the file reaches MEGABYTES (at least the first
// two, 155 MB): the text encoder's MLP (3584→18944 and back, 136 MB each in bf16) and the
// transformer's MLP and attention matrices. Values are small finite bf16 numbers from a fixed
// xorshift generator (the same file for the same arguments).
import { mkdirSync, openSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';

const [root, megabytes] = process.argv.slice(2);
if (!root || !(Number(megabytes) > 0)) {
  console.error('usage: node tests/heap/make-repo.mjs ROOT MEGABYTES');
  process.exit(2);
}
const target = Number(megabytes) * 1e6;
const SHAPES = [
  [3072, 3072], // transformer attn.to_q
  [18944, 3584], // text encoder mlp.up_proj / gate_proj
  [3584, 18944], // text encoder mlp.down_proj
  [12288, 3072], // transformer img_mlp.net.0.proj
  [3072, 12288], // transformer img_mlp.net.2
];
const tensors = [];
let offset = 0;
for (let i = 0; offset < target || i < 2; i++) {
  const shape = SHAPES[i % SHAPES.length];
  const bytes = shape[0] * shape[1] * 2;
  tensors.push({ name: `layers.${i}.weight`, shape, begin: offset, end: offset + bytes });
  offset += bytes;
}
const header = {};
for (const t of tensors) header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [t.begin, t.end] };
let json = JSON.stringify(header);
json += ' '.repeat((8 - (json.length % 8)) % 8);

// 4 MiB of bf16 values in [-0.05, 0.05], written over and over (shifted per tensor).
const pattern = Buffer.alloc(4 << 20);
let s = 0x9e3779b9;
for (let i = 0; i < pattern.length; i += 2) {
  s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
  const f = new Float32Array([((s / 0xffffffff) - 0.5) * 0.1]);
  pattern.writeUInt16LE(new Uint32Array(f.buffer)[0] >>> 16, i);
}

const dir = path.join(root, 'test', 'heap-weights', 'transformer');
mkdirSync(dir, { recursive: true });
const file = path.join(dir, 'diffusion_pytorch_model.safetensors');
const fd = openSync(file, 'w');
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(json.length));
writeSync(fd, len);
writeSync(fd, Buffer.from(json));
tensors.forEach((t, k) => {
  let left = t.end - t.begin;
  let shift = (k * 4096) % pattern.length;
  while (left > 0) {
    const n = Math.min(left, pattern.length - shift);
    writeSync(fd, pattern, shift, n);
    left -= n;
    shift = 0;
  }
});
closeSync(fd);
console.log(`${file}: ${tensors.length} tensors, ${(offset / 1e6).toFixed(0)} MB of data`);
