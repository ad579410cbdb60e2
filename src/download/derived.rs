//! Files the app makes from a downloaded revision and keeps beside it in the same [`Store`]:
//! the transformer stored with its linear weights already quantized (issue #5: the official
//! bf16 checkpoint is quantized once, on first load, and stored quantized).
//!
//! A derived file goes through the same partial-file / commit protocol as a download: it is
//! written as a partial file, its SHA-256 is computed while writing, and it is committed (the
//! commit record of the browser's store, the rename of the native one) only once every byte is
//! written; any failure discards it, so a half-written copy is never served as complete.

use super::{Check, DResult, DownloadPlan, FilePlan, PartFile, Store};
use crate::error::Result;
use crate::weights::{QuantizedLayout, WeightSource, write_quantized};

/// Writes `layout` (made from checkpoint tensors read from `source`) as the file `path` of
/// `plan`'s revision in `store`, committed with its size and SHA-256, and returns its
/// [`FilePlan`] (no URL: it was made, not fetched). `progress(bytes_written, size)` after each
/// tensor. On any error the partial file is discarded and the error returned (a full disk is
/// [`DownloadError::QuotaExceeded`](super::DownloadError::QuotaExceeded)).
pub async fn store_quantized<St: Store, S: WeightSource>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
    source: &S,
    layout: &QuantizedLayout,
    progress: impl FnMut(u64, u64),
) -> Result<FilePlan> {
    let mut file = unhashed(path, layout.size());
    let (mut part, _) = store.open_part(plan, &file).await?;
    let mut offset = 0u64;
    let written = write_quantized(
        source,
        layout,
        None,
        async |bytes: &[u8]| {
            part.write_at(offset, bytes).await?;
            offset += bytes.len() as u64;
            Ok(())
        },
        progress,
    )
    .await;
    let hash = match written {
        Ok(hash) => hash,
        Err(err) => {
            drop(part);
            store.discard(plan, &file).await?;
            return Err(err);
        }
    };
    file.check = Check::Sha256(hash.iter().map(|b| format!("{b:02x}")).collect());
    if let Err(err) = store.commit(plan, &file, part).await {
        store.discard(plan, &file).await?;
        return Err(err.into());
    }
    Ok(file)
}

/// A plan for the derived file `path` before its hash is known. A partial copy is never
/// resumed (no checkpoint is written), so its placeholder hash never matches a resume point.
fn unhashed(path: &str, size: u64) -> FilePlan {
    FilePlan {
        path: path.to_owned(),
        size,
        check: Check::Sha256("0".repeat(64)),
        url: String::new(),
    }
}

/// Removes every trace of the derived file `path` of `plan`'s revision from `store`: the file
/// if committed, or what a copy cut short left (its partial bytes). Missing is fine.
pub async fn discard_derived<St: Store>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
) -> DResult<()> {
    store.discard(plan, &unhashed(path, 0)).await
}
