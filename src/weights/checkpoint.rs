//! A component's checkpoint, whichever file format holds it: a safetensors folder (what the
//! Hugging Face repositories ship) or one GGUF file (a community GGUF transformer, or the
//! stored quantized copy the app writes on first load, which then stands for the checkpoint).

use burn::tensor::Device;

use super::{GgufFile, Precision, SafetensorsFolder, TensorLoader, WeightSource, stored_copy_path};
use crate::error::Result;

/// The tensor index of one component's checkpoint: names, shapes, files.
#[derive(Debug)]
pub enum Checkpoint {
    /// `*.safetensors`, single or sharded.
    Safetensors(SafetensorsFolder),
    /// One GGUF file whose tensor names are the checkpoint keys.
    Gguf(GgufFile),
}

impl Checkpoint {
    /// The checkpoint of `folder` in `source` to load with linear weights in `precision`: its
    /// stored quantized copy for that precision ([`stored_copy_path`]) when `source` has one
    /// (a whole copy stands alone, and the checkpoint it was made from may be gone), else the
    /// safetensors checkpoint.
    pub async fn open<S: WeightSource>(
        source: &S,
        folder: &str,
        precision: Precision,
    ) -> Result<Self> {
        if let Some(copy) = stored_copy_path(folder, precision)
            && source.exists(&copy).await?
        {
            return Ok(Checkpoint::Gguf(GgufFile::open(source, &copy).await?));
        }
        Ok(Checkpoint::Safetensors(
            SafetensorsFolder::open(source, folder).await?,
        ))
    }

    /// A loader reading this checkpoint's tensors from `source` onto `device` (f32
    /// precision until told otherwise).
    pub fn loader<'a, S: WeightSource>(
        &'a self,
        source: &'a S,
        device: &Device,
    ) -> TensorLoader<'a, S> {
        match self {
            Checkpoint::Safetensors(f) => TensorLoader::new(source, f, device),
            Checkpoint::Gguf(g) => TensorLoader::gguf(source, g, device),
        }
    }

    /// Every tensor name, in the index's order.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Checkpoint::Safetensors(f) => f.keys().collect(),
            Checkpoint::Gguf(g) => g.tensors().iter().map(|t| t.name.as_str()).collect(),
        }
    }

    /// The stored shape of `key` (PyTorch order), when the checkpoint holds it.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        match self {
            Checkpoint::Safetensors(f) => f.get(key).map(|e| &e.shape[..]),
            Checkpoint::Gguf(g) => g.get(key).map(|t| &t.shape[..]),
        }
    }

    /// The bytes `key`'s data takes in its file (what loading it reads), when the checkpoint
    /// holds it.
    pub fn stored_bytes(&self, key: &str) -> Option<u64> {
        match self {
            Checkpoint::Safetensors(f) => f.get(key).map(|e| e.len),
            Checkpoint::Gguf(g) => g.get(key).map(|t| t.len),
        }
    }

    /// Whether the checkpoint holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.shape(key).is_some()
    }

    /// The files it reads, for messages.
    pub fn files(&self) -> String {
        match self {
            Checkpoint::Safetensors(f) => f.files().join(", "),
            Checkpoint::Gguf(g) => g.file().to_owned(),
        }
    }
}
