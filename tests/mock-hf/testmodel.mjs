// Deterministic test model repos, so no test needs committed binaries.
import { createHash } from 'node:crypto';

/** `size` pseudo-random bytes, a pure function of (seed, label). xorshift32, fast enough for MBs. */
export function pseudoRandomBytes(size, seed = 1, label = '') {
  const buf = Buffer.alloc(size);
  let x = createHash('sha256').update(`${seed}\0${label}`).digest().readUInt32LE(0) || 0x9e3779b9;
  const words = size >>> 2;
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, words);
  for (let i = 0; i < words; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    u32[i] = x;
  }
  for (let i = words * 4; i < size; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}

/**
 * A valid safetensors file of exactly `size` bytes: 8-byte little-endian header length, a JSON
 * header (space-padded to a multiple of 8) describing one U8 tensor that fills the rest with
 * pseudo-random data. Falls back to plain random bytes when `size` is too small for a header.
 */
export function makeSafetensors(size, seed = 1, label = '', tensorName = 'weight') {
  const header = (n) => JSON.stringify({
    __metadata__: { format: 'pt' },
    [tensorName]: { dtype: 'U8', shape: [n], data_offsets: [0, n] },
  });
  let n = Math.max(0, size - 8 - header(size).length);
  for (let i = 0; i < 4; i++) {
    const h = header(n).length;
    const padded = Math.ceil(h / 8) * 8;
    n = size - 8 - padded;
    if (n < 0) return pseudoRandomBytes(size, seed, label);
  }
  const h = Buffer.from(header(n));
  const padded = size - 8 - n;
  if (padded < h.length) return pseudoRandomBytes(size, seed, label);
  const out = Buffer.alloc(size, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  h.copy(out, 8);
  pseudoRandomBytes(n, seed, label).copy(out, 8 + padded);
  return out;
}

const json = (o) => Buffer.from(JSON.stringify(o, null, 2) + '\n');

/**
 * A small Qwen-Image-Layered-shaped repo spec for `startMockHf({ repos })`.
 * Options: seed (1), transformerSize (3 MiB), transformerShards (1: one
 * `transformer/diffusion_pytorch_model.safetensors`; n > 1: `-0000i-of-0000n` shards plus
 * `diffusion_pytorch_model.safetensors.index.json`), vaeSize (256 KiB), textEncoderSize
 * (512 KiB), revision (else derived from the contents), extraFiles ({ path: size | Buffer | string }).
 */
export function makeTestModelRepo({
  seed = 1, transformerSize = 3 * 1024 * 1024, transformerShards = 1, vaeSize = 256 * 1024,
  textEncoderSize = 512 * 1024, revision, extraFiles = {},
} = {}) {
  const files = {
    'model_index.json': json({
      _class_name: 'QwenImageLayeredPipeline', _diffusers_version: '0.36.0',
      processor: ['transformers', 'Qwen2VLProcessor'], scheduler: ['diffusers', 'FlowMatchEulerDiscreteScheduler'],
      text_encoder: ['transformers', 'Qwen2_5_VLForConditionalGeneration'], tokenizer: ['transformers', 'Qwen2Tokenizer'],
      transformer: ['diffusers', 'QwenImageTransformer2DModel'], vae: ['diffusers', 'AutoencoderKLQwenImage'],
    }),
    'scheduler/scheduler_config.json': json({ _class_name: 'FlowMatchEulerDiscreteScheduler', num_train_timesteps: 1000, test_seed: seed }),
    'transformer/config.json': json({ _class_name: 'QwenImageTransformer2DModel', num_layers: 2, test_seed: seed }),
    'vae/config.json': json({ _class_name: 'AutoencoderKLQwenImage', z_dim: 16, test_seed: seed }),
    'vae/diffusion_pytorch_model.safetensors': makeSafetensors(vaeSize, seed, 'vae'),
    'text_encoder/config.json': json({ architectures: ['Qwen2_5_VLForConditionalGeneration'], test_seed: seed }),
    'text_encoder/model.safetensors': makeSafetensors(textEncoderSize, seed, 'text_encoder'),
    'tokenizer/tokenizer_config.json': json({ tokenizer_class: 'Qwen2Tokenizer', model_max_length: 32768 }),
  };
  if (transformerShards <= 1) {
    files['transformer/diffusion_pytorch_model.safetensors'] = makeSafetensors(transformerSize, seed, 'transformer');
  } else {
    const pad = (i) => String(i).padStart(5, '0');
    const weightMap = {};
    let left = transformerSize;
    for (let i = 1; i <= transformerShards; i++) {
      const size = i === transformerShards ? left : Math.floor(transformerSize / transformerShards);
      left -= size;
      const name = `diffusion_pytorch_model-${pad(i)}-of-${pad(transformerShards)}.safetensors`;
      const tensor = `transformer_blocks.${i - 1}.weight`;
      files[`transformer/${name}`] = makeSafetensors(size, seed, `transformer-${i}`, tensor);
      weightMap[tensor] = name;
    }
    files['transformer/diffusion_pytorch_model.safetensors.index.json'] = json({
      metadata: { total_size: transformerSize }, weight_map: weightMap,
    });
  }
  for (const [p, v] of Object.entries(extraFiles)) {
    files[p] = typeof v === 'number' ? pseudoRandomBytes(v, seed, p) : Buffer.isBuffer(v) ? v : Buffer.from(String(v));
  }
  const spec = { files };
  if (revision) spec.revision = revision;
  return spec;
}

/** sha256 hex of a Buffer (handy for test assertions). */
export const sha256Hex = (buf) => createHash('sha256').update(buf).digest('hex');
