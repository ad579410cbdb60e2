//! One-tensor-at-a-time loading of a [`SafetensorsFolder`] onto a Burn device.

use std::collections::BTreeSet;

use crate::model::nn::Linear;
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::{SafetensorsFolder, TensorEntry, WeightSource, to_f32};
use crate::error::{Error, Result};

/// Takes tensors out of a checkpoint folder by diffusers key, checking shapes.
///
/// Each call reads exactly one tensor's bytes, converts them to f32 and uploads them; nothing
/// is kept on the host afterwards. The loader remembers which keys were taken so that
/// [`finish`](Self::finish) can reject checkpoint tensors the model has no place for.
pub struct TensorLoader<'a, S: WeightSource> {
    source: &'a S,
    folder: &'a SafetensorsFolder,
    device: Device,
    taken: BTreeSet<String>,
}

impl<'a, S: WeightSource> TensorLoader<'a, S> {
    /// A loader reading `folder`'s tensors from `source` onto `device`.
    pub fn new(source: &'a S, folder: &'a SafetensorsFolder, device: &Device) -> Self {
        Self {
            source,
            folder,
            device: device.clone(),
            taken: BTreeSet::new(),
        }
    }

    /// The device tensors are uploaded to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Reads `key` as f32 values on the host, after checking that its stored shape is `shape`.
    pub async fn host(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.checked_entry(key, shape)?;
        if !self.taken.insert(key.to_owned()) {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.clone(),
                reason: "taken twice by the model (a loader bug)".into(),
            });
        }
        let bytes = self
            .source
            .read(&entry.file, entry.offset, entry.len)
            .await?;
        let values = to_f32(&bytes, entry.dtype, key, &entry.file)?;
        let want: usize = shape.iter().product();
        if values.len() != want {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.clone(),
                reason: format!(
                    "{} values stored for shape {shape:?} ({want} values)",
                    values.len()
                ),
            });
        }
        Ok(values)
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
    /// `[d_out]`), as a Burn [`Linear`] (whose weight is `[d_in, d_out]`: a transposed view of
    /// the stored matrix, no copy).
    pub async fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self
            .tensor(&format!("{prefix}.weight"), [d_out, d_in])
            .await?;
        let bias = match bias {
            true => Some(self.param(&format!("{prefix}.bias"), [d_out]).await?),
            false => None,
        };
        Ok(Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias,
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
    fn checked_entry(&self, key: &str, shape: &[usize]) -> Result<&'a TensorEntry> {
        let entry = self.folder.get(key).ok_or_else(|| Error::Weights {
            key: key.to_owned(),
            file: self.folder.files().join(", "),
            reason: format!("missing; the model expects shape {shape:?}"),
        })?;
        if entry.shape != shape {
            return Err(Error::Weights {
                key: key.to_owned(),
                file: entry.file.clone(),
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
        let mut left = self.folder.keys().filter(|k| !self.taken.contains(*k));
        if let Some(first) = left.next() {
            let rest: Vec<&str> = left.collect();
            let file = self
                .folder
                .get(first)
                .map(|e| e.file.clone())
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
