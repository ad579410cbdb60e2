//! A component's safetensors checkpoint written out as one GGUF v3 file with its linear
//! weights already quantized: the form in which a model quantized on first load is **stored**
//! (issue #5: the official bf16 transformer is quantized once, in the browser or by
//! `qwen-layered quantize`, and later loads and every streamed block read take the 4-bit
//! bytes instead of reading bf16 and quantizing again).
//!
//! - Linear weights (as the model says: a predicate over key and shape) whose inner dimension
//!   is a multiple of [`BLOCK`] become GGUF `Q8_0` or `Q4_0`, quantized exactly as
//!   [`TensorLoader`](super::TensorLoader) quantizes at load time, so loading the file with the
//!   same precision repacks the very same blocks (`QuantizedMatrix::from_q8_0`/`from_q4_0`):
//!   the model on the device is bit-for-bit the one quantized at load.
//! - Every other tensor keeps its stored type (BF16, F16 or F32), bytes copied unchanged.
//!
//! The layout (header, tensor infos, offsets) is computed from the safetensors headers alone
//! ([`QuantizedLayout::new`]), so the file's size is known before a byte is converted, and
//! [`write_quantized`] then streams: it reads about `read_chunk` stored bytes of whole rows,
//! quantizes them, hands the encoded bytes to the sink and reuses its buffers, so the host holds
//! a few chunks, never a tensor (a 3072 × 12288 bf16 weight is 75 MB stored). The sink sees the
//! file's bytes in order from offset 0; the SHA-256 of all of them is returned.
//!
//! GGUF layout as in [`super::gguf`]: magic, version 3, tensor and metadata counts, metadata,
//! tensor infos (dims innermost first, offsets relative to the data section), padding to the
//! alignment (32, the default, not written), data, each tensor's start aligned.

use half::f16;
use safetensors::Dtype;
use sha2::{Digest, Sha256};

use super::gguf::{DEFAULT_ALIGNMENT, GgmlType, MAX_DIMS, MetaArray, MetaValue, SHAPE_KEY};
use super::par::worker_count;
use super::quant::{BLOCK, Values, quantize_into};
use super::{DEFAULT_READ_CHUNK, Precision, SafetensorsFolder, WeightSource};
use crate::error::{Error, Result};

/// Version of the stored form of `folder`'s copy written by [`write_quantized`] (key
/// `qwen_layered.format`, and in its file name: [`stored_copy_path`]). Raise a component's
/// whenever the bytes written for the same checkpoint would change, so copies made by an older
/// build are not taken for current ones; [`stored_copy_paths_ever`] lists the older names so
/// that they can be removed.
///
/// - `text_encoder`: 2, the whole checkpoint with its linear weights quantized, so that it
///   stands alone and the 16.6 GB checkpoint can go (format 1 held the linear weights only and
///   was read beside the checkpoint);
/// - every other folder (the transformer): 1, the whole checkpoint.
pub fn stored_format(folder: &str) -> u32 {
    match folder {
        "text_encoder" => 2,
        _ => 1,
    }
}

/// One tensor of the file to write.
#[derive(Debug, Clone)]
struct Planned {
    key: String,
    shape: Vec<usize>,
    /// The GGUF type written.
    out: GgmlType,
    /// Where the stored tensor is.
    file: String,
    dtype: Dtype,
    src_offset: u64,
    src_len: u64,
    /// Absolute offset of the written data, and its length.
    offset: u64,
    len: u64,
}

/// The whole file to write, planned from a checkpoint's headers.
#[derive(Debug, Clone)]
pub struct QuantizedLayout {
    /// Everything before the first tensor's data (padded to the alignment).
    header: Vec<u8>,
    tensors: Vec<Planned>,
    size: u64,
    quantized: usize,
    source_bytes: u64,
    /// 8 or 4.
    bits: u32,
}

/// The GGUF code of the types this writer emits.
fn type_code(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 8,
        GgmlType::BF16 => 30,
        other => unreachable!("the writer never emits {other:?}"),
    }
}

/// llama.cpp's `general.file_type` for a file of mostly `Q8_0` (7) or `Q4_0` (2) weights.
fn file_type(bits: u32) -> u32 {
    if bits == 8 { 7 } else { 2 }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// One metadata value: its type code and little-endian bytes (of arrays, `u64` ones only).
fn put_value(out: &mut Vec<u8>, key: &str, value: &MetaValue) -> Result<()> {
    let (code, bytes): (u32, Vec<u8>) = match value {
        MetaValue::U8(v) => (0, vec![*v]),
        MetaValue::I8(v) => (1, v.to_le_bytes().to_vec()),
        MetaValue::U16(v) => (2, v.to_le_bytes().to_vec()),
        MetaValue::I16(v) => (3, v.to_le_bytes().to_vec()),
        MetaValue::U32(v) => (4, v.to_le_bytes().to_vec()),
        MetaValue::I32(v) => (5, v.to_le_bytes().to_vec()),
        MetaValue::F32(v) => (6, v.to_le_bytes().to_vec()),
        MetaValue::Bool(v) => (7, vec![u8::from(*v)]),
        MetaValue::String(s) => {
            let mut b = Vec::new();
            put_str(&mut b, s);
            (8, b)
        }
        MetaValue::U64(v) => (10, v.to_le_bytes().to_vec()),
        MetaValue::I64(v) => (11, v.to_le_bytes().to_vec()),
        MetaValue::F64(v) => (12, v.to_le_bytes().to_vec()),
        MetaValue::Array(MetaArray::U64(v)) => {
            let mut b = 10u32.to_le_bytes().to_vec();
            b.extend((v.len() as u64).to_le_bytes());
            v.iter().for_each(|x| b.extend(x.to_le_bytes()));
            (9, b)
        }
        MetaValue::Array(_) => {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: "(GGUF writer)".into(),
                reason: "array metadata values other than u64 are not written".into(),
            });
        }
    };
    put_str(out, key);
    out.extend(code.to_le_bytes());
    out.extend(bytes);
    Ok(())
}

/// The dimensions `shape` (PyTorch order) is written with: itself, or with its outer
/// dimensions merged into the first when it has more than GGUF's [`MAX_DIMS`] (the bytes, row
/// major, are the same).
fn gguf_dims(shape: &[usize]) -> Vec<usize> {
    match shape.len().checked_sub(MAX_DIMS) {
        Some(extra) if extra > 0 => {
            let outer: usize = shape[..=extra].iter().product();
            std::iter::once(outer)
                .chain(shape[extra + 1..].iter().copied())
                .collect()
        }
        _ => shape.to_vec(),
    }
}

fn align(n: u64) -> u64 {
    n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

/// Where the stored quantized copy of the checkpoint in `folder` lives, beside it, for
/// `precision` (`None` for f32, which is not stored): `{folder}/qwen-layered-v{format}-
/// q4_0.gguf` (or `q8_0`), `format` being [`stored_format`]. The format version in the name
/// keeps a copy written by a build with another format from being taken for a current one.
pub fn stored_copy_path(folder: &str, precision: Precision) -> Option<String> {
    copy_path(folder, stored_format(folder), precision)
}

fn copy_path(folder: &str, format: u32, precision: Precision) -> Option<String> {
    let ty = match precision {
        Precision::F32 => return None,
        Precision::Q8 => "q8_0",
        Precision::Q4 => "q4_0",
    };
    Some(format!("{folder}/qwen-layered-v{format}-{ty}.gguf"))
}

/// Every name a stored copy of `folder` has had, in both precisions, up to the current
/// [`stored_format`]: what removing every copy must remove, and, but for the current names,
/// what a current build leaves behind as stale.
pub fn stored_copy_paths_ever(folder: &str) -> Vec<String> {
    (1..=stored_format(folder))
        .flat_map(|format| [Precision::Q8, Precision::Q4].map(|p| copy_path(folder, format, p)))
        .flatten()
        .collect()
}

impl QuantizedLayout {
    /// Where a write cut short after `durable` bytes can go on from
    /// ([`write_quantized_from`]): the end of the last tensor wholly inside them, or of the
    /// header; 0 when not even the header is.
    pub fn resume_point(&self, durable: u64) -> u64 {
        let header = self.header.len() as u64;
        let tensors = self.tensors.iter().map(|t| t.offset + t.len);
        std::iter::once(header)
            .chain(tensors)
            .filter(|&end| end <= durable)
            .max()
            .unwrap_or(0)
    }

    /// The checkpoint files the copy is made from, in the order it reads them, each with the
    /// byte of the copy its last tensor ends at: once a file is at hand (and every one before
    /// it), the copy can be written through that byte ([`write_quantized_through`]), and the
    /// file is no longer needed. The last one ends at [`size`](Self::size).
    pub fn source_files(&self) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = Vec::new();
        for t in &self.tensors {
            match files.last_mut() {
                Some((file, end)) if *file == t.file => *end = t.offset + t.len,
                _ => files.push((t.file.clone(), t.offset + t.len)),
            }
        }
        files
    }

    /// What tells this layout from any other: the SHA-256 of its header, which holds every
    /// tensor's name, type, shape and offset and the revision it was made from. A copy cut
    /// short is resumed only by a writer of the same layout.
    pub fn identity(&self) -> [u8; 32] {
        Sha256::digest(&self.header).into()
    }

    /// Plans all of `folder`'s tensors (in stored order: the file stands alone) with the
    /// linear weights (`is_linear(key, shape)`, 2-D `[d_out, d_in]`
    /// with `d_in` a multiple of 32) in `precision` (`Q8` or `Q4`), and `metadata` after the
    /// standard keys (`general.architecture` = `architecture`,
    /// `general.quantization_version` = 2, `general.file_type`, `qwen_layered.format` =
    /// [`stored_format`]).
    pub fn new(
        folder: &SafetensorsFolder,
        precision: Precision,
        architecture: &str,
        is_linear: impl Fn(&str, &[usize]) -> bool,
        metadata: &[(&str, MetaValue)],
    ) -> Result<Self> {
        let bits = precision.bits().ok_or_else(|| Error::Weights {
            key: String::new(),
            file: folder.folder().to_owned(),
            reason: "a stored quantized copy needs precision q8 or q4, not f32".into(),
        })?;
        let quant = if bits == 8 {
            GgmlType::Q8_0
        } else {
            GgmlType::Q4_0
        };
        let mut entries: Vec<_> = folder
            .keys()
            .filter_map(|k| Some((k, folder.get(k)?)))
            .collect();
        entries.sort_by(|(_, a), (_, b)| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
        let mut tensors = Vec::with_capacity(entries.len());
        let (mut data, mut quantized, mut source_bytes) = (0u64, 0, 0);
        for (key, e) in entries {
            let bad = |reason: String| Error::Weights {
                key: key.to_owned(),
                file: e.file.clone(),
                reason,
            };
            let linear = e.shape.len() == 2
                && e.shape[1] % BLOCK == 0
                && e.shape[0] > 0
                && is_linear(key, &e.shape);
            let stored = match e.dtype {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => return Err(bad(format!("dtype {other:?} has no GGUF twin here"))),
            };
            let n: usize = e.shape.iter().product();
            if e.len != (n * (e.dtype.bitsize() / 8)) as u64 {
                return Err(bad(format!("{} bytes for shape {:?}", e.len, e.shape)));
            }
            let out = if linear { quant } else { stored };
            quantized += usize::from(linear);
            let len = out.bytes_for(n as u64).expect("whole blocks");
            tensors.push(Planned {
                key: key.to_owned(),
                shape: e.shape.clone(),
                out,
                file: e.file.clone(),
                dtype: e.dtype,
                src_offset: e.offset,
                src_len: e.len,
                offset: data,
                len,
            });
            data = align(data + len);
            source_bytes += e.len;
        }
        let mut meta: Vec<(&str, MetaValue)> = vec![
            (
                "general.architecture",
                MetaValue::String(architecture.into()),
            ),
            ("general.quantization_version", MetaValue::U32(2)),
            ("general.file_type", MetaValue::U32(file_type(bits))),
            (
                "qwen_layered.format",
                MetaValue::U32(stored_format(folder.folder())),
            ),
        ];
        meta.extend(metadata.iter().cloned());
        // GGUF holds 4 dimensions; a tensor with more (Qwen2.5-VL's Conv3d patch embedding,
        // `[1280, 3, 2, 14, 14]`) is written with its outer ones merged, its shape recorded
        // for the reader (`gguf::SHAPE_KEY`).
        let shapes: Vec<(String, MetaValue)> = tensors
            .iter()
            .filter(|t| t.shape.len() > MAX_DIMS)
            .map(|t| {
                let dims = t.shape.iter().map(|&d| d as u64).collect();
                (
                    format!("{SHAPE_KEY}{}", t.key),
                    MetaValue::Array(MetaArray::U64(dims)),
                )
            })
            .collect();
        meta.extend(shapes.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut header = b"GGUF".to_vec();
        header.extend(3u32.to_le_bytes());
        header.extend((tensors.len() as u64).to_le_bytes());
        header.extend((meta.len() as u64).to_le_bytes());
        for (key, value) in &meta {
            put_value(&mut header, key, value)?;
        }
        for t in &tensors {
            put_str(&mut header, &t.key);
            let dims = gguf_dims(&t.shape);
            header.extend((dims.len() as u32).to_le_bytes());
            for &d in dims.iter().rev() {
                header.extend((d as u64).to_le_bytes());
            }
            header.extend(type_code(t.out).to_le_bytes());
            header.extend(t.offset.to_le_bytes());
        }
        header.resize(align(header.len() as u64) as usize, 0);
        let start = header.len() as u64;
        for t in &mut tensors {
            t.offset += start;
        }
        let size = tensors.last().map_or(start, |t| t.offset + t.len);
        Ok(Self {
            header,
            tensors,
            size,
            quantized,
            source_bytes,
            bits,
        })
    }

    /// The size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of tensors, and how many of them are quantized.
    pub fn counts(&self) -> (usize, usize) {
        (self.tensors.len(), self.quantized)
    }

    /// Stored bytes read to write the file (every tensor once).
    pub fn source_bytes(&self) -> u64 {
        self.source_bytes
    }
}

/// GGUF `Q8_0` blocks (`f16 d`, then the 32 `i8` codes) of quantized `words`/`scales`
/// (8-bit codes `q + 128`, four per little-endian word), appended to `out`.
fn encode_q8_0(words: &[u32], scales: &[f16], out: &mut Vec<u8>) {
    for (block, d) in words.chunks_exact(8).zip(scales) {
        out.extend(d.to_le_bytes());
        for w in block {
            out.extend(w.to_le_bytes().map(|u| u ^ 0x80));
        }
    }
}

/// GGUF `Q4_0` blocks (`f16 d`, then 16 bytes: value `j` in the low nibble of byte `j`,
/// value `j + 16` in its high nibble) of quantized 4-bit `words`/`scales` (eight codes per
/// word, value `k` in bits `4k..`), appended to `out`.
fn encode_q4_0(words: &[u32], scales: &[f16], out: &mut Vec<u8>) {
    for (block, d) in words.chunks_exact(4).zip(scales) {
        out.extend(d.to_le_bytes());
        let code = |j: usize| (block[j / 8] >> (4 * (j % 8))) as u8 & 0xF;
        out.extend((0..16).map(|j| code(j) | code(j + 16) << 4));
    }
}

/// Writes `layout` (made from `folder` of `source`) to `sink`, which receives the file's bytes
/// in order from offset 0; `progress(bytes_written, size)` is called after each tensor.
/// Returns the SHA-256 of the file. Reads about `read_chunk` stored bytes at a time
/// ([`DEFAULT_READ_CHUNK`] when `None`); a sink error stops the writing and is returned.
pub async fn write_quantized<S: WeightSource>(
    source: &S,
    layout: &QuantizedLayout,
    read_chunk: Option<u64>,
    sink: impl AsyncFnMut(&[u8]) -> Result<()>,
    progress: impl FnMut(u64, u64),
) -> Result<[u8; 32]> {
    let start = Resume {
        offset: 0,
        hash: Sha256::new(),
    };
    write_quantized_from(source, layout, read_chunk, start, sink, progress).await
}

/// Where a write of a [`QuantizedLayout`] goes on from: `offset`, a point
/// [`QuantizedLayout::resume_point`] gave (0, the end of the header, or the end of a tensor),
/// and `hash`, the SHA-256 state of the file's bytes before it.
#[derive(Clone)]
pub struct Resume {
    /// Bytes of the file already written (and hashed into `hash`).
    pub offset: u64,
    /// The SHA-256 of those bytes, not finalized.
    pub hash: Sha256,
}

/// [`write_quantized`] for the bytes from `from.offset` on: the sink receives them in order
/// from there, tensors wholly before it are not read, and the SHA-256 returned is the whole
/// file's (`from.hash` holds the part before). An offset that is not a resume point is an
/// error.
pub async fn write_quantized_from<S: WeightSource>(
    source: &S,
    layout: &QuantizedLayout,
    read_chunk: Option<u64>,
    from: Resume,
    sink: impl AsyncFnMut(&[u8]) -> Result<()>,
    progress: impl FnMut(u64, u64),
) -> Result<[u8; 32]> {
    let end = layout.size;
    let done = write_quantized_through(source, layout, read_chunk, from, end, sink, progress);
    Ok(done.await?.hash.finalize().into())
}

/// [`write_quantized_from`] for the tensors that end at or before `until` only (a point
/// [`QuantizedLayout::source_files`] gives, or the file's size): those of the checkpoint files
/// already at hand, when the copy is made as they arrive. Returns where the next write goes
/// on from (`until` when it is a resume point), with the hash state of every byte before it.
pub async fn write_quantized_through<S: WeightSource>(
    source: &S,
    layout: &QuantizedLayout,
    read_chunk: Option<u64>,
    from: Resume,
    until: u64,
    mut sink: impl AsyncFnMut(&[u8]) -> Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Resume> {
    let bits = layout.bits;
    let chunk = read_chunk.unwrap_or(DEFAULT_READ_CHUNK).max(1);
    if layout.resume_point(from.offset) != from.offset {
        return Err(Error::Input {
            model: "quantized copy writer",
            reason: format!(
                "byte {} is not where a write can go on from (the end of the header or of a \
                 tensor)",
                from.offset
            ),
        });
    }
    let mut hash = from.hash;
    let mut written = from.offset;
    if written == 0 {
        hash.update(&layout.header);
        sink(&layout.header).await?;
        written = layout.header.len() as u64;
    } else {
        progress(written, layout.size);
    }
    let (mut buf, mut out) = (Vec::<u8>::new(), Vec::<u8>::new());
    let (mut words, mut scales) = (Vec::<u32>::new(), Vec::<f16>::new());
    for t in &layout.tensors {
        if t.offset + t.len <= from.offset {
            continue; // written before
        }
        if t.offset + t.len > until {
            break; // its checkpoint file is not at hand yet
        }
        if t.offset > written {
            let pad = vec![0; (t.offset - written) as usize];
            hash.update(&pad);
            sink(&pad).await?;
            written = t.offset;
        }
        let quantize = matches!(t.out, GgmlType::Q8_0 | GgmlType::Q4_0);
        // Whole rows per read when quantizing (blocks run along rows), any bytes otherwise.
        let unit = if quantize {
            t.src_len / t.shape[0] as u64
        } else {
            1
        };
        let step = (chunk / unit).max(1) * unit;
        let mut at = 0;
        while at < t.src_len {
            let n = step.min(t.src_len - at) as usize;
            buf.resize(n, 0);
            source
                .read_into(&t.file, t.src_offset + at, &mut buf)
                .await?;
            if quantize {
                let values = n / (t.dtype.bitsize() / 8);
                let blocks = values / BLOCK;
                words.resize(blocks * bits as usize, 0);
                scales.resize(blocks, f16::ZERO);
                let stored = Values::stored(&buf, t.dtype).map_err(|reason| Error::Weights {
                    key: t.key.clone(),
                    file: t.file.clone(),
                    reason,
                })?;
                quantize_into(stored, bits, &mut words, &mut scales, worker_count(values));
                out.clear();
                match bits {
                    8 => encode_q8_0(&words, &scales, &mut out),
                    _ => encode_q4_0(&words, &scales, &mut out),
                }
                hash.update(&out);
                sink(&out).await?;
                written += out.len() as u64;
            } else {
                hash.update(&buf);
                sink(&buf).await?;
                written += n as u64;
            }
            at += n as u64;
        }
        if written != t.offset + t.len {
            return Err(Error::Weights {
                key: t.key.clone(),
                file: t.file.clone(),
                reason: format!(
                    "wrote {} bytes where the layout has {} (a writer bug)",
                    written - t.offset,
                    t.len
                ),
            });
        }
        progress(written, layout.size);
    }
    Ok(Resume {
        offset: written,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::QuantizedMatrix;

    #[test]
    fn block_encodings_are_the_inverse_of_the_repacking() {
        let values: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for bits in [8, 4] {
            let m = QuantizedMatrix::quantize(&values, 4, 64, bits).expect("quantize");
            let mut bytes = Vec::new();
            if bits == 8 {
                encode_q8_0(&m.words, &m.scales, &mut bytes);
                assert_eq!(QuantizedMatrix::from_q8_0(&bytes, 4, 64).expect("q8"), m);
            } else {
                encode_q4_0(&m.words, &m.scales, &mut bytes);
                assert_eq!(QuantizedMatrix::from_q4_0(&bytes, 4, 64).expect("q4"), m);
            }
        }
    }
}
