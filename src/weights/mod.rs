//! Reading diffusers-layout model folders: `config.json` plus `*.safetensors` weights, single
//! file or sharded (`*.safetensors.index.json`), by the diffusers key names.
//!
//! The only I/O seam is [`WeightSource`]: "give me bytes `offset..offset+len` of file `name`".
//! The filesystem ([`DirSource`], native only) and in-memory buffers ([`MemorySource`], what the
//! browser hands over) implement it; an HTTP/OPFS source can implement it the same way.
//! On top of it:
//!
//! - [`SafetensorsFolder`] reads only the headers (and the index) and knows, for each key, its
//!   file, dtype, shape and byte range;
//! - [`TensorLoader`] reads one tensor at a time, checks its shape against what the model
//!   expects, converts bf16/f16/f32 to f32, uploads it to the device and drops the bytes;
//!   at the end [`TensorLoader::finish`] reports every checkpoint tensor the model did not
//!   take (an unexpected key is an error, like a missing or wrongly shaped one);
//! - [`GgufFile`] reads a GGUF header (metadata, tensor infos) through byte ranges, and
//!   [`TensorLoader::gguf`] loads a model from it by the same key names, dequantizing ggml
//!   blocks;
//! - [`SyntheticSource`] generates a seeded random safetensors file on the fly (full-size
//!   weights for benchmarks and precision checks without a download);
//! - [`TableRows`] reads single rows of a table on demand (the text encoder's token embedding
//!   gathered from storage instead of uploaded whole) and keeps the rows it has read;
//! - [`QuantizedLayout`] and [`write_quantized`] write a checkpoint as a GGUF file with its
//!   linear weights quantized (the stored form of a model quantized on first load), and
//!   [`Checkpoint`] opens a component from that copy when there is one, else from its
//!   safetensors;
//! - [`Cancellable`] stops any of these at its next read once the caller says so (Cancel);
//! - [`Precision`] chooses how linear weights are kept: f32, or 8-/4-bit blocks
//!   ([`QuantizedMatrix`]) quantized at load time or repacked from GGUF `Q8_0`/`Q4_0`.

mod checkpoint;
pub mod gguf;
mod gguf_write;
pub mod http;
mod loader;
mod par;
mod quant;
mod rows;
mod safetensors;
pub mod synthetic;

pub use checkpoint::Checkpoint;
pub use gguf::{GgmlType, GgufFile, GgufTensor, MetaArray, MetaValue};
pub use gguf_write::{
    QuantizedLayout, Resume, stored_copy_path, stored_copy_paths_ever, stored_format,
    write_quantized, write_quantized_from, write_quantized_through,
};
pub use loader::{
    DEFAULT_READ_CHUNK, LinearLoad, Precision, TensorLoader, split_rows, weight_row_bytes,
};
pub use quant::{BLOCK, QuantizedMatrix};
pub use rows::{RowReads, TableRows};
pub use safetensors::{SafetensorsFolder, TensorEntry, to_f32};
pub use synthetic::{SyntheticSource, SyntheticTensor};

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A read-only store of named files (paths relative to the model repository root, with `/`,
/// e.g. `transformer/config.json`).
///
/// Methods are `async` so that browser sources (fetch, OPFS) can implement it; the model maths
/// never awaits anything but these reads. Futures are not required to be `Send` (wasm is
/// single-threaded), hence the allowed lint.
#[allow(async_fn_in_trait)]
pub trait WeightSource {
    /// Whether `file` exists in the store.
    async fn exists(&self, file: &str) -> Result<bool>;
    /// The total size of `file` in bytes.
    async fn size(&self, file: &str) -> Result<u64>;
    /// Bytes `offset .. offset + len` of `file`; an error if the range is not inside the file.
    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Bytes `offset .. offset + buf.len()` of `file` into `buf` (a caller that reads many
    /// ranges reuses one buffer instead of a new allocation per read). The default goes
    /// through [`read`](Self::read); sources that can write into `buf` directly override it.
    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.read(file, offset, buf.len() as u64).await?;
        if bytes.len() != buf.len() {
            return Err(Error::Source {
                file: file.to_owned(),
                reason: format!(
                    "{} bytes came back for the range {offset}+{}",
                    bytes.len(),
                    buf.len()
                ),
            });
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    /// The whole of `file`.
    async fn read_all(&self, file: &str) -> Result<Vec<u8>> {
        let size = self.size(file).await?;
        self.read(file, 0, size).await
    }
}

/// A shared reference reads like the source itself (so that owners of a source, such as
/// [`BlockStream`](crate::model::transformer::BlockStream), can also hold `&S`).
impl<S: WeightSource + ?Sized> WeightSource for &S {
    async fn exists(&self, file: &str) -> Result<bool> {
        (**self).exists(file).await
    }

    async fn size(&self, file: &str) -> Result<u64> {
        (**self).size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).read(file, offset, len).await
    }

    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_into(file, offset, buf).await
    }
}

/// A reference-counted source reads like the source itself (for a worker that keeps one source
/// for the model's lifetime and hands it to a [`BlockStream`](crate::model::transformer::BlockStream)).
impl<S: WeightSource + ?Sized> WeightSource for std::rc::Rc<S> {
    async fn exists(&self, file: &str) -> Result<bool> {
        (**self).exists(file).await
    }

    async fn size(&self, file: &str) -> Result<u64> {
        (**self).size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).read(file, offset, len).await
    }

    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_into(file, offset, buf).await
    }
}

/// A source whose reads fail with [`Error::Cancelled`] once `stop()` says so: a long load, or
/// the writing of a stored copy, stops at its next read instead of at its end. The error says
/// which file was about to be read. `exists` and `size` are not stopped (they read headers at
/// most, and a caller that asks them is about to read anyway).
pub struct Cancellable<'a, S: ?Sized> {
    inner: &'a S,
    stop: &'a dyn Fn() -> bool,
}

impl<'a, S: WeightSource + ?Sized> Cancellable<'a, S> {
    /// `inner`, stopped once `stop()` returns true.
    pub fn new(inner: &'a S, stop: &'a dyn Fn() -> bool) -> Self {
        Self { inner, stop }
    }

    fn check(&self, file: &str) -> Result<()> {
        match (self.stop)() {
            true => Err(Error::Cancelled {
                at: format!("before reading {file}"),
            }),
            false => Ok(()),
        }
    }
}

impl<S: WeightSource + ?Sized> WeightSource for Cancellable<'_, S> {
    async fn exists(&self, file: &str) -> Result<bool> {
        self.inner.exists(file).await
    }

    async fn size(&self, file: &str) -> Result<u64> {
        self.inner.size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check(file)?;
        self.inner.read(file, offset, len).await
    }

    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(file)?;
        self.inner.read_into(file, offset, buf).await
    }
}

/// Reads and parses a JSON file (a `config.json`, an index) from a source.
pub async fn read_json<T: DeserializeOwned>(source: &impl WeightSource, file: &str) -> Result<T> {
    let bytes = source.read_all(file).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config {
        file: file.to_owned(),
        reason: format!("not the expected JSON: {e}"),
    })
}

/// A model component's folder (`"transformer"`, `"vae"`; `""` for the root): its parsed
/// `config.json`, that file's path (for error messages), and its safetensors headers.
pub async fn open_component<C: DeserializeOwned>(
    source: &impl WeightSource,
    folder: &str,
) -> Result<(C, String, SafetensorsFolder)> {
    let config_file = if folder.is_empty() {
        "config.json".to_owned()
    } else {
        format!("{folder}/config.json")
    };
    let config = read_json(source, &config_file).await?;
    let weights = SafetensorsFolder::open(source, folder).await?;
    Ok((config, config_file, weights))
}

/// The most GPU memory the browser app lets f32 weights take: 4 GiB. Browsers expose no free-
/// GPU-memory figure; 4 GiB is what a WebGPU page can count on in practice (Chrome caps
/// `maxBufferSize` at 2–4 GiB), the tiny test model needs 12 MB, and the real model 115 GB in
/// f32 (it needs quantized weights and the streaming plan instead).
pub const BROWSER_F32_WEIGHT_BUDGET: u64 = 4 << 30;

/// Checks, before anything is loaded, that `values` weights (over all components) fit
/// `budget` bytes once widened to f32 on the device; the error gives both sizes.
pub fn check_f32_footprint(what: &str, values: u64, budget: u64) -> Result<()> {
    let bytes = values.saturating_mul(4);
    if bytes <= budget {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Input {
        model: "model loader",
        reason: format!(
            "{what} has {values} weights: {:.1} GiB as f32 on the GPU, over the {:.1} GiB this \
             page loads in f32. Models this size need every component in 8-/4-bit and the \
             streaming memory plan, which the page does not do yet; nothing was loaded.",
            gib(bytes),
            gib(budget)
        ),
    })
}

/// Files held in memory, e.g. handed over by the browser after a download.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    files: HashMap<String, Arc<[u8]>>,
}

impl MemorySource {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `file` with `bytes`.
    pub fn insert(&mut self, file: impl Into<String>, bytes: impl Into<Arc<[u8]>>) {
        self.files.insert(file.into(), bytes.into());
    }

    /// Removes `file`, returning whether it was there (to free memory once loaded).
    pub fn remove(&mut self, file: &str) -> bool {
        self.files.remove(file).is_some()
    }

    fn get(&self, file: &str) -> Result<&Arc<[u8]>> {
        self.files.get(file).ok_or_else(|| Error::Source {
            file: file.to_owned(),
            reason: format!(
                "not in the in-memory store ({} files held)",
                self.files.len()
            ),
        })
    }
}

impl WeightSource for MemorySource {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(self.files.contains_key(file))
    }

    async fn size(&self, file: &str) -> Result<u64> {
        Ok(self.get(file)?.len() as u64)
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let bytes = self.get(file)?;
        let range = checked_range(file, offset, len, bytes.len() as u64)?;
        Ok(bytes[range].to_vec())
    }

    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.get(file)?;
        let range = checked_range(file, offset, buf.len() as u64, bytes.len() as u64)?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }
}

/// `offset..offset+len` as a `usize` range, or an error naming the file if it is outside.
fn checked_range(file: &str, offset: u64, len: u64, size: u64) -> Result<std::ops::Range<usize>> {
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= size)
        .ok_or_else(|| Error::Source {
            file: file.to_owned(),
            reason: format!("range {offset}+{len} is outside the file ({size} bytes)"),
        })?;
    let to_usize = |v: u64| {
        usize::try_from(v).map_err(|_| Error::Source {
            file: file.to_owned(),
            reason: format!("offset {v} does not fit in memory on this platform"),
        })
    };
    Ok(to_usize(offset)?..to_usize(end)?)
}

/// A model repository folder on the local filesystem (native only).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct DirSource {
    root: std::path::PathBuf,
    /// The file [`read_into`](WeightSource::read_into) read last, kept open: a loader reads
    /// one file in many consecutive steps, and one open file keeps the kernel's sequential
    /// read-ahead going from step to step (and saves an open and a stat per step).
    last: std::sync::Arc<std::sync::Mutex<Option<(String, std::fs::File, u64)>>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirSource {
    /// The folder that holds `transformer/`, `vae/`, ... (or any folder of files). File names
    /// are relative to it; an absolute file name is read as that path (`Path::join`), so one
    /// source can also serve a file kept elsewhere (the CLI's `--transformer-gguf`).
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self {
            root: root.into(),
            last: Default::default(),
        }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.root.join(file)
    }

    fn io_error(&self, file: &str, e: std::io::Error) -> Error {
        Error::Source {
            file: self.path(file).display().to_string(),
            reason: e.to_string(),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl WeightSource for DirSource {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(self.path(file).is_file())
    }

    async fn size(&self, file: &str) -> Result<u64> {
        std::fs::metadata(self.path(file))
            .map(|m| m.len())
            .map_err(|e| self.io_error(file, e))
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let size = self.size(file).await?;
        let range = checked_range(file, offset, len, size)?;
        let mut f = std::fs::File::open(self.path(file)).map_err(|e| self.io_error(file, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.io_error(file, e))?;
        let mut buf = vec![0u8; range.len()];
        f.read_exact(&mut buf).map_err(|e| self.io_error(file, e))?;
        Ok(buf)
    }

    async fn read_into(&self, file: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        // A poisoned lock only means another read panicked; the cached handle is still valid.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_none_or(|(name, _, _)| name != file) {
            let f = std::fs::File::open(self.path(file)).map_err(|e| self.io_error(file, e))?;
            let size = f.metadata().map_err(|e| self.io_error(file, e))?.len();
            *last = Some((file.to_owned(), f, size));
        }
        let Some((_, f, size)) = last.as_mut() else {
            unreachable!("set above");
        };
        checked_range(file, offset, buf.len() as u64, *size)?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.io_error(file, e))?;
        f.read_exact(buf).map_err(|e| self.io_error(file, e))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn dir_reads_into_a_buffer_equal_plain_reads_across_files() {
        let dir = std::env::temp_dir().join(format!("qlw-dirsource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let a: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<u8> = (0..300u32).map(|i| (i * 13 % 241) as u8).collect();
        std::fs::write(dir.join("a.bin"), &a).expect("write a");
        std::fs::write(dir.join("b.bin"), &b).expect("write b");
        let src = DirSource::new(&dir);
        for (file, bytes, offset, len) in [
            ("a.bin", &a, 0, 10),
            ("a.bin", &a, 10, 333),
            ("b.bin", &b, 299, 1),
            ("a.bin", &a, 3, 997),
            ("b.bin", &b, 0, 300),
        ] {
            let mut buf = vec![0u8; len];
            pollster::block_on(src.read_into(file, offset as u64, &mut buf)).expect("read_into");
            assert_eq!(buf, bytes[offset..offset + len], "{file} {offset}+{len}");
            let plain =
                pollster::block_on(src.read(file, offset as u64, len as u64)).expect("read");
            assert_eq!(plain, buf);
        }
        let mut buf = vec![0u8; 2];
        let err =
            pollster::block_on(src.read_into("b.bin", 299, &mut buf)).expect_err("past the end");
        assert!(err.to_string().contains("outside the file"), "{err}");
        assert!(
            pollster::block_on(src.read_into("c.bin", 0, &mut buf)).is_err(),
            "missing"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_f32_footprint_check_refuses_with_both_sizes() {
        check_f32_footprint("tiny", 3_000_000, BROWSER_F32_WEIGHT_BUDGET).expect("12 MB fits");
        check_f32_footprint("edge", 1 << 28, BROWSER_F32_WEIGHT_BUDGET).expect("exactly 4 GiB");
        // The real pipeline: 20.43B (transformer) + 8.29B (text encoder) + 0.13B (VAE) values.
        let err = check_f32_footprint("Qwen/Qwen-Image-Layered", 28_850_000_000, 4 << 30)
            .expect_err("115 GB cannot fit")
            .to_string();
        assert!(
            err.contains("Qwen/Qwen-Image-Layered")
                && err.contains("107.5 GiB")
                && err.contains("4.0 GiB")
                && err.contains("nothing was loaded"),
            "{err}"
        );
    }
}
