//! Rows of a stored `[rows, cols]` table, read from the source one row (or one run of
//! consecutive rows) at a time when they are asked for, and kept once read.
//!
//! This is the memory plan's `TensorAction::HostGather`
//! ([`crate::pipeline::TensorAction`]): Qwen2.5-VL's token embedding is `152064 × 3584`, 1.09 GB
//! in bf16 and 2.18 GB in f32, larger than one WebGPU buffer binding may be
//! (`maxStorageBufferBindingSize`, 128 MiB by default), while a prompt uses a few hundred of
//! its rows (7 KB each in bf16). The table is never uploaded and never read whole: a prompt's
//! rows are read by byte range, widened to f32 on the host and uploaded as the `[1, L, D]`
//! input embeddings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::WeightSource;
use super::loader::{Encoding, decode_values};
use crate::error::{Error, Result};

/// The most rows one read covers (a run of consecutive ids is read in pieces of at most
/// this many rows: 256 bf16 rows of 3584 values are 1.8 MB).
const MAX_RUN: usize = 256;

/// The default bound on the rows held ([`TableRows::with_max_rows_held`]): 4096 f32 rows of
/// 3584 values are 59 MB.
pub const DEFAULT_MAX_ROWS_HELD: usize = 4096;

/// What a [`TableRows`] has read so far (all clones together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowReads {
    /// Calls to [`WeightSource::read`].
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Distinct rows held (f32 on the host).
    pub rows_held: usize,
}

#[derive(Default)]
struct Cache {
    rows: HashMap<u32, Arc<[f32]>>,
    reads: u64,
    bytes: u64,
}

/// A `[rows, cols]` table left in storage: where its rows are, how they are encoded (bf16,
/// f16, f32, or whole GGUF blocks per row), and the rows read so far.
///
/// Clones share the rows read (an `Arc`), so a model and its clones read each row once. The
/// source passed to [`gather`](Self::gather) must be the one the table was found in.
#[derive(Clone)]
pub struct TableRows {
    key: String,
    file: String,
    encoding: Encoding,
    offset: u64,
    shape: [usize; 2],
    row_bytes: u64,
    max_rows_held: usize,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for TableRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRows")
            .field("key", &self.key)
            .field("file", &self.file)
            .field("encoding", &self.encoding)
            .field("offset", &self.offset)
            .field("shape", &self.shape)
            .field("row_bytes", &self.row_bytes)
            .field("reads", &self.reads())
            .finish()
    }
}

impl TableRows {
    /// Built by [`TensorLoader::table_rows`](super::TensorLoader::table_rows), which has
    /// checked the shape and that `row_bytes · rows` is the stored length.
    pub(super) fn new(
        key: &str,
        file: &str,
        encoding: Encoding,
        offset: u64,
        shape: [usize; 2],
        row_bytes: u64,
    ) -> Self {
        Self {
            key: key.to_owned(),
            file: file.to_owned(),
            encoding,
            offset,
            shape,
            row_bytes,
            max_rows_held: DEFAULT_MAX_ROWS_HELD,
            cache: Arc::default(),
        }
    }

    /// The same table keeping at most `rows` rows between calls (default
    /// [`DEFAULT_MAX_ROWS_HELD`]): when a call needs more, the rows it does not use are
    /// dropped first, so a long session of varied prompts does not grow the host memory
    /// without bound (a call holds at least its own distinct rows).
    pub fn with_max_rows_held(mut self, rows: usize) -> Self {
        self.max_rows_held = rows;
        self
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The checkpoint key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The file that holds the table.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Stored bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.row_bytes
    }

    /// The reads made and the rows held so far.
    pub fn reads(&self) -> RowReads {
        let c = self.lock();
        RowReads {
            reads: c.reads,
            bytes: c.bytes,
            rows_held: c.rows.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while the lock was held cannot leave a half-inserted row: use the data.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, reason: String) -> Error {
        Error::Weights {
            key: self.key.clone(),
            file: self.file.clone(),
            reason,
        }
    }

    /// The f32 values of rows `ids`, in order: `ids.len() × cols` values (row `ids[i]` at
    /// `i · cols`).
    ///
    /// Rows not read before are read from `source` (sorted, each distinct id once, a run of
    /// consecutive ids in one read of at most 256 rows) and kept; the host holds only distinct
    /// rows asked for, at most [`with_max_rows_held`](Self::with_max_rows_held) of them
    /// between calls. An id outside the table, a read that fails (a truncated
    /// file) or bytes that do not decode are errors naming the file, the key, the token id and
    /// the byte offset.
    pub async fn gather<S: WeightSource>(&self, source: &S, ids: &[u32]) -> Result<Vec<f32>> {
        let [rows, cols] = self.shape;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(self.error(format!(
                "token id {bad} is outside the table's {rows} rows (shape {:?})",
                self.shape
            )));
        }
        let mut missing: Vec<u32> = {
            let c = self.lock();
            ids.iter()
                .copied()
                .filter(|id| !c.rows.contains_key(id))
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        {
            let mut c = self.lock();
            if c.rows.len() + missing.len() > self.max_rows_held {
                let used: std::collections::HashSet<u32> = ids.iter().copied().collect();
                c.rows.retain(|id, _| used.contains(id));
            }
        }
        let mut i = 0;
        while i < missing.len() {
            let first = missing[i];
            let mut n = 1;
            while i + n < missing.len() && n < MAX_RUN && missing[i + n] == first + n as u32 {
                n += 1;
            }
            self.read_run(source, first, n).await?;
            i += n;
        }
        let c = self.lock();
        let mut out = Vec::with_capacity(ids.len() * cols);
        for id in ids {
            let row = c.rows.get(id).ok_or_else(|| {
                self.error(format!("token id {id}: the row was read but is not held"))
            })?;
            out.extend_from_slice(row);
        }
        Ok(out)
    }

    /// Reads rows `first .. first + n` in one range and keeps them.
    async fn read_run<S: WeightSource>(&self, source: &S, first: u32, n: usize) -> Result<()> {
        let cols = self.shape[1];
        let offset = self.offset + first as u64 * self.row_bytes;
        let len = n as u64 * self.row_bytes;
        let ids = match n {
            1 => format!("token id {first}"),
            _ => format!("token ids {first}..={}", first as usize + n - 1),
        };
        let bytes = source.read(&self.file, offset, len).await.map_err(|e| {
            self.error(format!(
                "reading the row(s) of {ids} at byte offset {offset} (+{len} bytes): {e}"
            ))
        })?;
        if bytes.len() as u64 != len {
            return Err(self.error(format!(
                "reading the row(s) of {ids} at byte offset {offset}: {} bytes came back for {len}",
                bytes.len()
            )));
        }
        let values = decode_values(
            self.encoding,
            &bytes,
            n * cols,
            &self.key,
            &self.file,
            &self.shape,
        )
        .map_err(|e| {
            self.error(format!(
                "decoding the row(s) of {ids} at byte offset {offset}: {e}"
            ))
        })?;
        let mut c = self.lock();
        c.reads += 1;
        c.bytes += len;
        for (k, row) in values.chunks_exact(cols).enumerate() {
            c.rows.insert(first + k as u32, row.into());
        }
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::weights::{MemorySource, SafetensorsFolder, TensorLoader};
    use burn::tensor::Device;

    /// A `[10, 4]` f32 table whose row `r` is `r, r + 0.25, r + 0.5, r + 0.75`.
    fn table() -> MemorySource {
        let values: Vec<u8> = (0..40)
            .flat_map(|i| (i as f32 / 4.0).to_le_bytes())
            .collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 4], &values)
                .expect("view");
        let mut src = MemorySource::new();
        src.insert(
            "m/model.safetensors",
            safetensors::serialize([("t.weight", view)], None).expect("serialize"),
        );
        src
    }

    #[test]
    fn rows_come_back_in_order_and_the_held_rows_are_bounded() {
        let src = table();
        let folder = pollster::block_on(SafetensorsFolder::open(&src, "m")).expect("open");
        let mut l = TensorLoader::new(&src, &folder, &Device::flex());
        let rows = l
            .table_rows("t.weight", [10, 4])
            .expect("table")
            .with_max_rows_held(3);
        l.finish().expect("taken without being read");
        let got = pollster::block_on(rows.gather(&src, &[7, 2, 7])).expect("gather");
        assert_eq!(&got[..4], &[7.0, 7.25, 7.5, 7.75]);
        assert_eq!(&got[4..8], &[2.0, 2.25, 2.5, 2.75]);
        assert_eq!(&got[8..], &got[..4]);
        assert_eq!(
            rows.reads(),
            RowReads {
                reads: 2,
                bytes: 32,
                rows_held: 2
            }
        );
        // 3, 4, 5 are one run (one read); two more rows than the bound: 7 and 2 are dropped.
        pollster::block_on(rows.gather(&src, &[3, 4, 5])).expect("gather");
        assert_eq!(
            rows.reads(),
            RowReads {
                reads: 3,
                bytes: 80,
                rows_held: 3
            }
        );
        // A clone shares what was read: nothing is read again.
        let again = rows.clone();
        pollster::block_on(again.gather(&src, &[5, 3])).expect("gather");
        assert_eq!(rows.reads().reads, 3);
        let err = pollster::block_on(rows.gather(&src, &[10]))
            .expect_err("10 of 10 rows")
            .to_string();
        assert!(
            err.contains("t.weight") && err.contains("token id 10"),
            "{err}"
        );
    }
}
