//! One-tensor-at-a-time loading of a checkpoint (a [`SafetensorsFolder`] or a [`GgufFile`])
//! onto a Burn device.

use std::collections::BTreeSet;

use crate::model::nn::Linear;
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::Dtype;

use super::gguf::{GgmlType, GgufFile, dequantize};
use super::quant::{BLOCK, QuantizedMatrix};
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

/// The checkpoint a loader reads.
#[derive(Clone, Copy)]
enum Index<'a> {
    Safetensors(&'a SafetensorsFolder),
    Gguf(&'a GgufFile),
}

/// How a stored tensor is encoded.
#[derive(Clone, Copy, Debug)]
enum Encoding {
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
/// for linear weights under [`Precision::Q8`]/[`Precision::Q4`]) and uploads them; nothing is
/// kept on the host afterwards. The loader remembers which keys were taken so that
/// [`finish`](Self::finish) can reject checkpoint tensors the model has no place for.
pub struct TensorLoader<'a, S: WeightSource> {
    source: &'a S,
    index: Index<'a>,
    device: Device,
    precision: Precision,
    taken: BTreeSet<String>,
}

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
            taken: BTreeSet::new(),
        }
    }

    /// The same loader keeping linear weights in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision linear weights are loaded in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device tensors are uploaded to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks `key`'s shape, marks it taken and reads its bytes.
    async fn take(&mut self, key: &str, shape: &[usize]) -> Result<(Stored<'a>, Vec<u8>)> {
        let entry = self.checked_entry(key, shape)?;
        if !self.taken.insert(key.to_owned()) {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.to_owned(),
                reason: "taken twice by the model (a loader bug)".into(),
            });
        }
        let bytes = self
            .source
            .read(entry.file, entry.offset, entry.len)
            .await?;
        Ok((entry, bytes))
    }

    /// Decodes a stored tensor's bytes to f32.
    fn decode(key: &str, entry: &Stored, bytes: &[u8]) -> Result<Vec<f32>> {
        let want: usize = entry.shape.iter().product();
        let values = match entry.encoding {
            Encoding::Safetensors(dtype) => to_f32(bytes, dtype, key, entry.file)?,
            Encoding::Gguf(ty) => dequantize(ty, bytes, want).map_err(|reason| Error::Weights {
                key: key.to_owned(),
                file: entry.file.to_owned(),
                reason,
            })?,
        };
        if values.len() != want {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.to_owned(),
                reason: format!(
                    "{} values stored for shape {:?} ({want} values)",
                    values.len(),
                    entry.shape
                ),
            });
        }
        Ok(values)
    }

    /// Reads `key` as f32 values on the host, after checking that its stored shape is `shape`.
    pub async fn host(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (entry, bytes) = self.take(key, shape).await?;
        Self::decode(key, &entry, &bytes)
    }

    /// Reads `key` onto the device; its stored shape must be `shape`.
    pub async fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>> {
        let values = self.host(key, &shape).await?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
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
        let (entry, bytes) = self.take(&key, &[d_out, d_in]).await?;
        let bits = self.precision.bits().filter(|_| d_in.is_multiple_of(BLOCK));
        let blocks = match (bits, entry.encoding) {
            (None, _) => None,
            (Some(8), Encoding::Gguf(GgmlType::Q8_0)) => {
                Some(QuantizedMatrix::from_q8_0(&bytes, d_out, d_in))
            }
            (Some(4), Encoding::Gguf(GgmlType::Q4_0)) => {
                Some(QuantizedMatrix::from_q4_0(&bytes, d_out, d_in))
            }
            (Some(bits), _) => {
                let values = Self::decode(&key, &entry, &bytes)?;
                Some(QuantizedMatrix::quantize(&values, d_out, d_in, bits))
            }
        };
        let weight = match blocks.transpose().map_err(|reason| Error::Weights {
            key: key.clone(),
            file: entry.file.to_owned(),
            reason,
        })? {
            Some(m) => Loaded::Blocks(m),
            None => Loaded::F32(Self::decode(&key, &entry, &bytes)?),
        };
        drop(bytes);
        let bias = match bias {
            true => Some(self.param(&format!("{prefix}.bias"), [d_out]).await?),
            false => None,
        };
        Ok(match weight {
            Loaded::Blocks(m) => Linear::from_blocks(&m, bias, &self.device),
            Loaded::F32(values) => Linear::from_f32(
                Tensor::from_data(TensorData::new(values, [d_out, d_in]), &self.device),
                bias,
            ),
        })
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
