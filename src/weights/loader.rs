//! One-tensor-at-a-time loading of a checkpoint (a [`SafetensorsFolder`] or a [`GgufFile`])
//! onto a Burn device.

use std::collections::BTreeSet;

use crate::model::nn::{Linear, LinearWeight};
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::Dtype;

use super::gguf::{GgmlType, GgufFile, dequantize};
use super::par::worker_count;
use super::quant::{BLOCK, QuantizedMatrix, Values, check_sizes, quantize_into};
use super::rows::TableRows;
use super::safetensors::widen_into_parallel;
use super::{SafetensorsFolder, WeightSource, to_f32};
use crate::error::{Error, Result};

/// The precision linear-layer weights are kept in on the device (every other tensor is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 (bf16/f16 checkpoints are widened exactly; GGUF blocks are dequantized).
    #[default]
    F32,
    /// 8-bit blocks of 32 with f16 scales (GGUF `Q8_0` is taken as is, anything else is
    /// quantized at load time).
    Q8,
    /// 4-bit blocks of 32 with f16 scales (GGUF `Q4_0` is taken as is, anything else is
    /// quantized at load time).
    Q4,
}

impl Precision {
    /// The block code width, `None` for f32.
    pub fn bits(self) -> Option<u32> {
        match self {
            Precision::F32 => None,
            Precision::Q8 => Some(8),
            Precision::Q4 => Some(4),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// `f32`, `q8` or `q4` (any case).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "q8" => Ok(Precision::Q8),
            "q4" => Ok(Precision::Q4),
            _ => Err(format!("precision {s:?}: expected f32, q8 or q4")),
        }
    }
}

/// How a loader keeps linear weights: their precision, and the largest buffer one part of a
/// weight may take on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinearLoad {
    /// The precision of linear weights.
    pub precision: Precision,
    /// The most bytes one device buffer of a weight may hold (the memory plan's
    /// `min(maxStorageBufferBindingSize, maxBufferSize)`). A weight over it is stored in parts
    /// of consecutive output rows ([`LinearWeight::Rows`], the plan's `SplitRows`); `None`: no
    /// limit.
    pub max_part_bytes: Option<u64>,
}

impl From<Precision> for LinearLoad {
    fn from(precision: Precision) -> Self {
        Self {
            precision,
            max_part_bytes: None,
        }
    }
}

/// Row counts of the parts a `rows`-row weight whose largest buffer holds `row_bytes` per row
/// is split into so that no part exceeds `limit` bytes, as even as possible (one part when it
/// fits); an error when a single row is over the limit.
pub fn split_rows(
    rows: usize,
    row_bytes: u64,
    limit: u64,
) -> std::result::Result<Vec<usize>, String> {
    if rows as u64 * row_bytes <= limit {
        return Ok(vec![rows]);
    }
    let per_part = limit / row_bytes.max(1);
    if per_part == 0 {
        return Err(format!(
            "one row is {row_bytes} bytes, over the {limit}-byte limit of one device buffer"
        ));
    }
    let parts = rows.div_ceil(per_part as usize);
    let (base, extra) = (rows / parts, rows % parts);
    Ok((0..parts).map(|p| base + usize::from(p < extra)).collect())
}

/// Bytes per row of the largest device buffer of a `[rows, cols]` linear weight in `bits`
/// (`None`: f32): the f32 values, or the 32-bit code words (the scales take less).
pub fn weight_row_bytes(cols: usize, bits: Option<u32>) -> u64 {
    match bits {
        None => 4 * cols as u64,
        Some(bits) => 4 * (cols as u64 * bits as u64 / 32),
    }
}

/// Decodes `want` values (a whole tensor, or a run of whole rows of it) stored as `encoding`
/// to f32; `key`, `file` and `shape` only name the tensor in errors.
pub(super) fn decode_values(
    encoding: Encoding,
    bytes: &[u8],
    want: usize,
    key: &str,
    file: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let values = match encoding {
        Encoding::Safetensors(dtype) => to_f32(bytes, dtype, key, file)?,
        Encoding::Gguf(ty) => dequantize(ty, bytes, want).map_err(|reason| Error::Weights {
            key: key.to_owned(),
            file: file.to_owned(),
            reason,
        })?,
    };
    if values.len() != want {
        return Err(Error::Weights {
            key: key.to_owned(),
            file: file.to_owned(),
            reason: format!(
                "{} values decoded where {want} were expected (shape {shape:?})",
                values.len()
            ),
        });
    }
    Ok(values)
}

/// The checkpoint a loader reads.
#[derive(Clone, Copy)]
enum Index<'a> {
    Safetensors(&'a SafetensorsFolder),
    Gguf(&'a GgufFile),
}

/// How a stored tensor is encoded.
#[derive(Clone, Copy, Debug)]
pub(super) enum Encoding {
    Safetensors(Dtype),
    Gguf(GgmlType),
}

/// A linear weight as read: f32 values `[d_out, d_in]` or blocks.
enum Loaded {
    F32(Vec<f32>),
    Blocks(QuantizedMatrix),
}

/// Where one stored tensor is and what it is.
struct Stored<'a> {
    file: &'a str,
    shape: &'a [usize],
    offset: u64,
    len: u64,
    encoding: Encoding,
}

impl<'a> Index<'a> {
    fn get(&self, key: &str) -> Option<Stored<'a>> {
        match *self {
            Index::Safetensors(f) => f.get(key).map(|e| Stored {
                file: &e.file,
                shape: &e.shape,
                offset: e.offset,
                len: e.len,
                encoding: Encoding::Safetensors(e.dtype),
            }),
            Index::Gguf(g) => g.get(key).map(|t| Stored {
                file: g.file(),
                shape: &t.shape,
                offset: t.offset,
                len: t.len,
                encoding: Encoding::Gguf(t.ggml_type),
            }),
        }
    }

    fn files(&self) -> String {
        match self {
            Index::Safetensors(f) => f.files().join(", "),
            Index::Gguf(g) => g.file().to_owned(),
        }
    }

    fn keys(&self) -> Vec<&'a str> {
        match *self {
            Index::Safetensors(f) => f.keys().collect(),
            Index::Gguf(g) => g.tensors().iter().map(|t| t.name.as_str()).collect(),
        }
    }
}

/// Takes tensors out of a checkpoint by diffusers key, checking shapes.
///
/// Each call reads exactly one tensor's bytes, converts them (to f32, or to 8-/4-bit blocks
/// for linear weights under [`Precision::Q8`]/[`Precision::Q4`], read and quantized a few rows
/// at a time) and uploads them; nothing is kept on the host afterwards. The loader remembers
/// which keys were taken so that [`finish`](Self::finish) can reject checkpoint tensors the
/// model has no place for.
pub struct TensorLoader<'a, S: WeightSource> {
    source: &'a S,
    index: Index<'a>,
    device: Device,
    precision: Precision,
    max_part_bytes: Option<u64>,
    read_chunk: u64,
    taken: BTreeSet<String>,
    /// One read step's stored bytes, reused from tensor to tensor.
    scratch: Vec<u8>,
}

/// Stored bytes read per step when a linear weight is quantized at load time (see
/// [`TensorLoader::with_read_chunk`]).
pub const DEFAULT_READ_CHUNK: u64 = 8 << 20;

impl<'a, S: WeightSource> TensorLoader<'a, S> {
    /// A loader reading `folder`'s tensors from `source` onto `device` (f32 precision).
    pub fn new(source: &'a S, folder: &'a SafetensorsFolder, device: &Device) -> Self {
        Self::with_index(source, Index::Safetensors(folder), device)
    }

    /// A loader reading the tensors of a GGUF file (by their names, which for ComfyUI-GGUF
    /// diffusion models are the diffusers keys) from `source` onto `device` (f32 precision).
    pub fn gguf(source: &'a S, file: &'a GgufFile, device: &Device) -> Self {
        Self::with_index(source, Index::Gguf(file), device)
    }

    fn with_index(source: &'a S, index: Index<'a>, device: &Device) -> Self {
        Self {
            source,
            index,
            device: device.clone(),
            precision: Precision::F32,
            max_part_bytes: None,
            read_chunk: DEFAULT_READ_CHUNK,
            taken: BTreeSet::new(),
            scratch: Vec::new(),
        }
    }

    /// The same loader keeping linear weights in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The same loader keeping linear weights as `load` says: its precision, and split by rows
    /// into parts of at most `max_part_bytes` each.
    pub fn with_linear_load(mut self, load: impl Into<LinearLoad>) -> Self {
        let load = load.into();
        self.precision = load.precision;
        self.max_part_bytes = load.max_part_bytes;
        self
    }

    /// The same loader reading a linear weight that it quantizes in steps of about `bytes`
    /// stored bytes (whole rows, at least one): the host then holds one step's bytes and f32
    /// values plus the growing blocks, never the whole matrix in f32 (a 3584×18944 bf16 weight
    /// is 136 MB stored and 272 MB as f32). The result does not depend on it, since blocks run
    /// along rows. Default [`DEFAULT_READ_CHUNK`].
    pub fn with_read_chunk(mut self, bytes: u64) -> Self {
        self.read_chunk = bytes.max(1);
        self
    }

    /// Keeps the linear weights taken from now on in `precision` (a model that shares a
    /// checkpoint with another, such as the vision tower and the language model of
    /// `text_encoder/`, can load its part in its own precision).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The precision linear weights are loaded in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device tensors are uploaded to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks `key`'s shape and marks it taken (its bytes are not read).
    fn mark_taken(&mut self, key: &str, shape: &[usize]) -> Result<Stored<'a>> {
        let entry = self.checked_entry(key, shape)?;
        self.take_entry(key, entry)
    }

    /// Marks `key` taken with the entry found for it.
    fn take_entry(&mut self, key: &str, entry: Stored<'a>) -> Result<Stored<'a>> {
        if !self.taken.insert(key.to_owned()) {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.to_owned(),
                reason: "taken twice by the model (a loader bug)".into(),
            });
        }
        Ok(entry)
    }

    /// Decodes a stored tensor's bytes to f32.
    fn decode(key: &str, entry: &Stored, bytes: &[u8]) -> Result<Vec<f32>> {
        Self::decode_values(key, entry, bytes, entry.shape.iter().product())
    }

    /// Decodes `want` values of `entry` (all of it, or a run of whole rows) to f32.
    fn decode_values(key: &str, entry: &Stored, bytes: &[u8], want: usize) -> Result<Vec<f32>> {
        decode_values(entry.encoding, bytes, want, key, entry.file, entry.shape)
    }

    /// Reads `key` as f32 values on the host, after checking that its stored shape is `shape`.
    pub async fn host(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.mark_taken(key, shape)?;
        self.read_values(key, &entry).await
    }

    /// Reads `key` onto the device; its stored shape must be `shape`.
    pub async fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>> {
        let entry = self.mark_taken(key, &shape)?;
        let values = self.read_values(key, &entry).await?;
        let tensor = Tensor::from_data(TensorData::new(values, shape), &self.device);
        self.flush(key, &entry)?;
        Ok(tensor)
    }

    /// [`tensor`](Self::tensor) as a module parameter.
    pub async fn param<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>> {
        Ok(Param::from_tensor(self.tensor(key, shape).await?))
    }

    /// A `torch.nn.Linear` stored as `{prefix}.weight` `[d_out, d_in]` (and `{prefix}.bias`
    /// `[d_out]`), as a [`Linear`] in the loader's [`Precision`]. A weight whose `d_in` is not a
    /// multiple of 32 stays f32. GGUF `Q8_0` (for `Q8`) and `Q4_0` (for `Q4`) blocks are
    /// repacked without loss; other encodings are decoded to f32 and quantized.
    pub async fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let key = format!("{prefix}.weight");
        let bits = self.precision.bits().filter(|_| d_in.is_multiple_of(BLOCK));
        let entry = self.mark_taken(&key, &[d_out, d_in])?;
        let weight = match (bits, entry.encoding) {
            (None, _) => Loaded::F32(self.read_values(&key, &entry).await?),
            (Some(8), Encoding::Gguf(GgmlType::Q8_0)) => {
                let bytes = self.read(&entry).await?;
                Loaded::Blocks(
                    QuantizedMatrix::from_q8_0(&bytes, d_out, d_in)
                        .map_err(|reason| Self::error(&key, &entry, reason))?,
                )
            }
            (Some(4), Encoding::Gguf(GgmlType::Q4_0)) => {
                let bytes = self.read(&entry).await?;
                Loaded::Blocks(
                    QuantizedMatrix::from_q4_0(&bytes, d_out, d_in)
                        .map_err(|reason| Self::error(&key, &entry, reason))?,
                )
            }
            (Some(bits), _) => Loaded::Blocks(self.quantize_rows(&key, &entry, bits).await?),
        };
        let bias = match bias {
            true => Some(self.param(&format!("{prefix}.bias"), [d_out]).await?),
            false => None,
        };
        let parts = match self.max_part_bytes {
            None => vec![d_out],
            Some(limit) => split_rows(d_out, weight_row_bytes(d_in, bits), limit)
                .map_err(|reason| Self::error(&key, &entry, reason))?,
        };
        let linear = if parts.len() == 1 {
            match weight {
                Loaded::Blocks(m) => Linear::from_blocks(m, bias, &self.device),
                Loaded::F32(values) => Linear::from_f32(self.f32_matrix(values, d_out, d_in), bias),
            }
        } else {
            self.split(weight, &parts, d_in, bias)
        };
        self.flush(&key, &entry)?;
        Ok(linear)
    }

    /// Row-major `[rows, cols]` values as a device tensor.
    fn f32_matrix(&self, values: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, [rows, cols]), &self.device)
    }

    /// A linear layer whose weight is uploaded as parts of `parts[p]` consecutive rows each
    /// ([`LinearWeight::Rows`]).
    fn split(
        &self,
        weight: Loaded,
        parts: &[usize],
        d_in: usize,
        bias: Option<Param<Tensor<1>>>,
    ) -> Linear {
        let pieces = match weight {
            Loaded::F32(values) => {
                let mut start = 0;
                parts
                    .iter()
                    .map(|&rows| {
                        let end = start + rows;
                        let part = values[start * d_in..end * d_in].to_vec();
                        start = end;
                        Linear::from_f32(self.f32_matrix(part, rows, d_in), None).weight
                    })
                    .collect()
            }
            Loaded::Blocks(m) => m
                .into_row_parts(parts)
                .into_iter()
                .map(|part| Linear::from_blocks(part, None, &self.device).weight)
                .collect(),
        };
        Linear {
            weight: LinearWeight::Rows(pieces),
            bias,
        }
    }

    /// Hands the uploads queued so far to the device. The GPU runtime keeps the host copy of
    /// every upload until its queue is submitted; without this, loading a 2 GB checkpoint onto
    /// WebGPU grew the WASM heap by 939 MiB (tests/web_heap.rs), with it by about one layer.
    fn flush(&self, key: &str, entry: &Stored) -> Result<()> {
        self.device.flush().map_err(|e| {
            Self::error(
                key,
                entry,
                format!("uploading to {:?} failed: {e:?}", self.device),
            )
        })
    }

    /// All of `entry`'s stored bytes.
    async fn read(&self, entry: &Stored<'a>) -> Result<Vec<u8>> {
        self.source.read(entry.file, entry.offset, entry.len).await
    }

    /// `entry`'s safetensors float type (bf16, f16, f32) when its bytes are exactly its
    /// `values` values of it, i.e. when it can be converted straight from the stored bytes.
    fn stored_float(entry: &Stored, values: usize) -> Option<Dtype> {
        match entry.encoding {
            Encoding::Safetensors(dtype @ (Dtype::BF16 | Dtype::F16 | Dtype::F32))
                if entry.len == (values * (dtype.bitsize() / 8)) as u64 =>
            {
                Some(dtype)
            }
            _ => None,
        }
    }

    /// The loader's reused read buffer, at least `len` bytes long.
    fn scratch(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        &mut scratch[..len]
    }

    /// All of `entry` decoded to f32. Stored bf16/f16/f32 values are read in steps of about
    /// `read_chunk` bytes into the loader's reused buffer and widened straight into the
    /// result (on the CPU's threads natively); anything else (GGUF blocks, a size mismatch,
    /// which then fails with the decoder's error) is read whole and decoded.
    async fn read_values(&mut self, key: &str, entry: &Stored<'a>) -> Result<Vec<f32>> {
        let want: usize = entry.shape.iter().product();
        let Some(dtype) = Self::stored_float(entry, want) else {
            let bytes = self.read(entry).await?;
            return Self::decode(key, entry, &bytes);
        };
        let width = dtype.bitsize() / 8;
        let step = (self.read_chunk as usize / width).max(1);
        let source = self.source;
        let mut out = vec![0f32; want];
        for (i, part) in out.chunks_mut(step).enumerate() {
            let buf = Self::scratch(&mut self.scratch, part.len() * width);
            source
                .read_into(entry.file, entry.offset + (i * step * width) as u64, buf)
                .await?;
            widen_into_parallel(buf, dtype, part);
        }
        Ok(out)
    }

    fn error(key: &str, entry: &Stored, reason: String) -> Error {
        Error::Weights {
            key: key.to_owned(),
            file: entry.file.to_owned(),
            reason,
        }
    }

    /// Quantizes the `[rows, cols]` matrix `entry` to `bits`, reading and converting a run of
    /// whole rows of about `read_chunk` stored bytes at a time (safetensors and GGUF rows are
    /// contiguous, and a GGUF row is whole blocks).
    async fn quantize_rows(
        &mut self,
        key: &str,
        entry: &Stored<'a>,
        bits: u32,
    ) -> Result<QuantizedMatrix> {
        let (rows, cols) = (entry.shape[0], entry.shape[1]);
        if rows == 0 || !entry.len.is_multiple_of(rows as u64) {
            return Err(Self::error(
                key,
                entry,
                format!(
                    "{} stored bytes are not a whole number of {rows} rows",
                    entry.len
                ),
            ));
        }
        check_sizes(rows * cols, rows, cols, bits).map_err(|r| Self::error(key, entry, r))?;
        let stored = Self::stored_float(entry, rows * cols);
        let row_bytes = entry.len / rows as u64;
        let step = (self.read_chunk / row_bytes.max(1)).max(1) as usize;
        let row_words = cols * bits as usize / 32;
        let row_blocks = cols / BLOCK;
        let mut out = QuantizedMatrix {
            bits,
            rows,
            cols,
            words: vec![0; rows * row_words],
            scales: vec![half::f16::ZERO; rows * row_blocks],
        };
        let source = self.source;
        for ((i, words), scales) in out
            .words
            .chunks_mut(step * row_words)
            .enumerate()
            .zip(out.scales.chunks_mut(step * row_blocks))
        {
            let n = scales.len() / row_blocks;
            let buf = Self::scratch(&mut self.scratch, n * row_bytes as usize);
            source
                .read_into(
                    entry.file,
                    entry.offset + (i * step) as u64 * row_bytes,
                    buf,
                )
                .await?;
            let workers = worker_count(n * cols);
            match stored {
                Some(dtype) => {
                    quantize_into(Values::Stored(buf, dtype), bits, words, scales, workers)
                }
                None => {
                    let values = Self::decode_values(key, entry, buf, n * cols)?;
                    quantize_into(Values::F32(&values), bits, words, scales, workers);
                }
            }
        }
        Ok(out)
    }

    /// Checks that `key` is stored as a `[rows, cols]` table and marks it taken **without
    /// reading its data**: the returned [`TableRows`] reads single rows from the source when
    /// they are asked for (the memory plan's `HostGather` of the text encoder's token
    /// embedding, which is too large for one GPU buffer).
    pub fn table_rows(&mut self, key: &str, shape: [usize; 2]) -> Result<TableRows> {
        let entry = self.mark_taken(key, &shape)?;
        let [rows, cols] = shape;
        if rows == 0 || cols == 0 || !entry.len.is_multiple_of(rows as u64) {
            return Err(Self::error(
                key,
                &entry,
                format!(
                    "{} stored bytes are not a whole number of {rows} rows",
                    entry.len
                ),
            ));
        }
        Ok(TableRows::new(
            key,
            entry.file,
            entry.encoding,
            entry.offset,
            shape,
            entry.len / rows as u64,
        ))
    }

    /// Marks `key` as deliberately unused after checking that it exists with `shape` (its data
    /// is not read).
    pub fn skip(&mut self, key: &str, shape: &[usize]) -> Result<()> {
        self.checked_entry(key, shape)?;
        self.taken.insert(key.to_owned());
        Ok(())
    }

    /// The checkpoint entry of `key`, or an error naming the key, the file(s) and both shapes
    /// when it is missing or stored with another shape.
    fn checked_entry(&self, key: &str, shape: &[usize]) -> Result<Stored<'a>> {
        let entry = self.index.get(key).ok_or_else(|| Error::Weights {
            key: key.to_owned(),
            file: self.index.files(),
            reason: format!("missing; the model expects shape {shape:?}"),
        })?;
        if entry.shape != shape {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.to_owned(),
                reason: format!(
                    "stored shape {:?}, but the model expects {shape:?}",
                    entry.shape
                ),
            });
        }
        Ok(entry)
    }

    /// Number of tensors taken so far.
    pub fn taken(&self) -> usize {
        self.taken.len()
    }

    /// Ends loading: an error naming the first checkpoint tensor the model did not take (and
    /// how many there are), if any.
    pub fn finish(self) -> Result<()> {
        let keys = self.index.keys();
        let mut left = keys.into_iter().filter(|k| !self.taken.contains(*k));
        if let Some(first) = left.next() {
            let rest: Vec<&str> = left.collect();
            let file = self
                .index
                .get(first)
                .map(|e| e.file.to_owned())
                .unwrap_or_default();
            return Err(Error::Weights {
                key: first.to_owned(),
                file,
                reason: format!(
                    "unexpected: the model has no parameter for it ({} more unexpected{}{})",
                    rest.len(),
                    if rest.is_empty() { "" } else { ": " },
                    rest.iter().take(8).copied().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::model::nn::LinearWeight;
    use crate::weights::MemorySource;

    /// A source that remembers its longest read.
    struct Counting {
        inner: MemorySource,
        longest: Cell<u64>,
    }

    impl WeightSource for Counting {
        async fn exists(&self, file: &str) -> Result<bool> {
            self.inner.exists(file).await
        }
        async fn size(&self, file: &str) -> Result<u64> {
            self.inner.size(file).await
        }
        async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
            self.longest.set(self.longest.get().max(len));
            self.inner.read(file, offset, len).await
        }
    }

    /// Reads back a quantized layer's codes and scales from the CPU device.
    fn blocks_of(linear: &Linear) -> (Vec<i32>, Vec<f32>) {
        let LinearWeight::Blocks(b) = &linear.weight else {
            panic!("expected a quantized weight");
        };
        (
            b.words.val().into_data().try_to_vec().expect("words"),
            b.scales.val().into_data().try_to_vec().expect("scales"),
        )
    }

    #[test]
    fn split_rows_makes_even_parts_under_the_limit() {
        assert_eq!(split_rows(10, 4, 40), Ok(vec![10]));
        assert_eq!(split_rows(10, 4, 39), Ok(vec![5, 5]));
        assert_eq!(split_rows(10, 4, 16), Ok(vec![4, 3, 3]));
        assert_eq!(split_rows(7, 4, 4), Ok(vec![1; 7]));
        let err = split_rows(7, 5, 4).unwrap_err();
        assert!(
            err.contains("one row is 5 bytes") && err.contains("4-byte"),
            "{err}"
        );
        for (rows, row, limit) in [(384, 256, 65536), (12288, 12288, 128 << 20), (97, 3, 50)] {
            let parts = split_rows(rows, row, limit).unwrap();
            assert_eq!(parts.iter().sum::<usize>(), rows);
            assert!(parts.iter().all(|&p| p as u64 * row <= limit), "{parts:?}");
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_weight_over_the_buffer_limit_is_split_by_rows_and_computes_the_same() {
        let (rows, cols) = (40, 64);
        let values: Vec<f32> = crate::gpu::seeded_values(5, rows * cols);
        let bias: Vec<f32> = crate::gpu::seeded_values(6, rows);
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (w, b) = (bytes(&values), bytes(&bias));
        let mut src = MemorySource::new();
        src.insert(
            "m/model.safetensors",
            safetensors::serialize(
                [
                    (
                        "l.weight",
                        safetensors::tensor::TensorView::new(Dtype::F32, vec![rows, cols], &w)
                            .unwrap(),
                    ),
                    (
                        "l.bias",
                        safetensors::tensor::TensorView::new(Dtype::F32, vec![rows], &b).unwrap(),
                    ),
                ],
                None,
            )
            .unwrap(),
        );
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).expect("open");
        let device = Device::flex();
        let x: Tensor<3> = Tensor::from_data(
            TensorData::new(crate::gpu::seeded_values(7, 2 * 3 * cols), [2, 3, cols]),
            &device,
        );
        let load = |load: LinearLoad| {
            let mut l = TensorLoader::new(&src, &folder, &device).with_linear_load(load);
            pollster::block_on(l.linear("l", cols, rows, true))
        };
        for precision in [Precision::F32, Precision::Q8, Precision::Q4] {
            let whole = load(precision.into()).expect("load whole");
            let row = weight_row_bytes(cols, precision.bits());
            // 40 rows under a limit of 15 rows: parts of 14, 13 and 13 rows.
            let split = load(LinearLoad {
                precision,
                max_part_bytes: Some(15 * row),
            })
            .expect("load split");
            assert_eq!(split.weight.parts(), 3, "{precision:?}");
            assert_eq!(split.dims(), (cols, rows));
            let LinearWeight::Rows(parts) = &split.weight else {
                panic!("split");
            };
            let part_rows: Vec<usize> = parts.iter().map(|p| p.dims().1).collect();
            assert_eq!(part_rows, vec![14, 13, 13]);
            let (a, b) = (whole.forward(x.clone()), split.forward(x.clone()));
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.into_data().try_to_vec().unwrap(),
                b.into_data().try_to_vec().unwrap(),
            );
            let diff = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-6, "{precision:?}: split differs by {diff}");
            // A limit below one row cannot be met: a clear error naming the tensor.
            let err = load(LinearLoad {
                precision,
                max_part_bytes: Some(row - 1),
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("l.weight") && err.contains("one row is"),
                "{err}"
            );
        }
    }

    #[test]
    fn quantizing_in_row_chunks_equals_quantizing_the_whole_matrix() {
        let (rows, cols) = (37, 96);
        let values: Vec<f32> = crate::gpu::seeded_values(3, rows * cols);
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::BF16, vec![rows, cols], &bf16)
            .expect("view");
        let mut inner = MemorySource::new();
        inner.insert(
            "m/model.safetensors",
            safetensors::serialize([("l.weight", view)], None).expect("serialize"),
        );
        let src = Counting {
            inner,
            longest: Cell::new(0),
        };
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).expect("open");
        let widened: Vec<f32> = bf16
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let device = Device::flex();
        for (precision, bits) in [(Precision::Q8, 8), (Precision::Q4, 4)] {
            let whole = QuantizedMatrix::quantize(&widened, rows, cols, bits).expect("quantize");
            // 5 rows of 192 bytes per read (the last read is 2 rows).
            src.longest.set(0);
            let mut loader = TensorLoader::new(&src, &folder, &device)
                .with_precision(precision)
                .with_read_chunk(5 * 192 + 100);
            let linear = pollster::block_on(loader.linear("l", cols, rows, false)).expect("load");
            assert_eq!(src.longest.get(), 5 * 192, "{bits}-bit: read size");
            let (words, scales) = blocks_of(&linear);
            let want_words: Vec<i32> = whole.words.iter().map(|&w| w as i32).collect();
            let want_scales: Vec<f32> = whole.scales.iter().map(|s| s.to_f32()).collect();
            assert_eq!(words, want_words, "{bits}-bit codes");
            assert_eq!(scales, want_scales, "{bits}-bit scales");
            loader.finish().expect("every tensor taken");
        }
    }

    #[test]
    fn tensors_read_in_small_steps_equal_the_whole_decode() {
        // Odd sizes: 91 bf16, 5 f16 and 9 f32 values, read 10 bytes at a time (5, 5 and 2
        // values per step), and one linear weight kept in f32.
        let bf16: Vec<u8> = crate::gpu::seeded_values(5, 91)
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f16: Vec<u8> = [0.25f32, -1.0, 3.5, 1e-6, 65504.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let f32s: Vec<u8> = crate::gpu::seeded_values(6, 9)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensors = [
            ("a", Dtype::BF16, vec![7, 13], &bf16),
            ("b", Dtype::F16, vec![5], &f16),
            ("l.weight", Dtype::F32, vec![3, 3], &f32s),
        ];
        let views = tensors.iter().map(|(k, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes);
            (*k, view.expect("view"))
        });
        let mut inner = MemorySource::new();
        inner.insert(
            "m/model.safetensors",
            safetensors::serialize(views, None).expect("serialize"),
        );
        let src = Counting {
            inner,
            longest: Cell::new(0),
        };
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).expect("open");
        let device = Device::flex();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let whole = |(_, dtype, _, bytes): &(&str, Dtype, Vec<usize>, &Vec<u8>)| {
            to_f32(bytes, *dtype, "k", "f").expect("decode")
        };
        for chunk in [10, DEFAULT_READ_CHUNK] {
            src.longest.set(0);
            let mut loader = TensorLoader::new(&src, &folder, &device).with_read_chunk(chunk);
            let a = pollster::block_on(loader.host("a", &[7, 13])).expect("a");
            assert_eq!(
                bits(&a),
                bits(&whole(&tensors[0])),
                "bf16 in {chunk}-byte steps"
            );
            let b = pollster::block_on(loader.tensor("b", [5])).expect("b");
            let b: Vec<f32> = b.into_data().try_to_vec().expect("b values");
            assert_eq!(
                bits(&b),
                bits(&whole(&tensors[1])),
                "f16 in {chunk}-byte steps"
            );
            let l = pollster::block_on(loader.linear("l", 3, 3, false)).expect("linear");
            let LinearWeight::F32(w) = &l.weight else {
                panic!("expected an f32 weight");
            };
            let w: Vec<f32> = w.val().transpose().into_data().try_to_vec().expect("w");
            assert_eq!(
                bits(&w),
                bits(&whole(&tensors[2])),
                "f32 in {chunk}-byte steps"
            );
            assert!(
                src.longest.get() <= chunk.min(182),
                "read {}",
                src.longest.get()
            );
            loader.finish().expect("every tensor taken");
        }
    }
}
