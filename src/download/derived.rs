//! Files the app makes from a downloaded revision and keeps beside it in the same [`Store`]:
//! the transformer stored with its linear weights already quantized (issue #5: the official
//! bf16 checkpoint is quantized once, on first load, and stored quantized).
//!
//! A derived file goes through the same partial-file / commit protocol as a download: it is
//! written as a partial file, its SHA-256 is computed while writing, and it is committed (the
//! commit record of the browser's store, the rename of the native one) only once every byte is
//! written, so a half-written copy is never served as complete. A copy cut short by a cancel
//! or a closed tab keeps its durable bytes (a checkpoint every [`CHECKPOINT_BYTES`]) and the
//! next writer of the same layout goes on from the last tensor they hold whole; any other
//! failure discards it.

use sha2::{Digest, Sha256};

use super::{
    Check, DResult, DownloadError, DownloadPlan, FilePlan, HttpClient, PartFile, Session, Store,
    download_file,
};
use crate::error::{Error, Result};
use crate::weights::{QuantizedLayout, Resume, WeightSource, write_quantized_through};

/// How often a copy being written records how far it got: every 64 MiB.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Bytes read back at a time to hash the part of a copy written before a resume.
const REHASH_CHUNK: u64 = 8 << 20;

/// A stored copy, committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Its path, size and SHA-256 (no URL: it was made, not fetched).
    pub file: FilePlan,
    /// The byte this write went on from (0: written whole now).
    pub resumed_from: u64,
}

/// Writes `layout` (made from checkpoint tensors read from `source`) as the file `path` of
/// `plan`'s revision in `store`, committed with its size and SHA-256. `progress(bytes_written,
/// size)` after each tensor. A partial copy of the same layout left by an earlier write is
/// resumed from the last tensor it holds whole (its bytes are read back for the hash). On
/// [`Error::Cancelled`] the partial copy is kept, with its progress recorded, for the next
/// write; on any other error it is discarded and the error returned (a full disk is
/// [`DownloadError::QuotaExceeded`]).
pub async fn store_quantized<St: Store, S: WeightSource>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
    source: &S,
    layout: &QuantizedLayout,
    progress: impl FnMut(u64, u64),
) -> Result<StoredFile> {
    let mut file = partial_file(path, layout);
    let (mut part, durable) = store.open_part(plan, &file).await?;
    let from = layout.resume_point(durable);
    let written = write_part(&mut part, path, from, source, layout, progress).await;
    let hash = match written {
        Ok(hash) => hash,
        Err((err @ Error::Cancelled { .. }, reached)) => {
            // Kept for the next load, which goes on from its last whole tensor. Should this
            // record fail, the one before still holds (it never claims more than was written).
            let _ = part.checkpoint(reached).await;
            return Err(err);
        }
        Err((mut err, _)) => {
            drop(part);
            store.discard(plan, &file).await?;
            if let Error::Download(DownloadError::QuotaExceeded { removed, .. }) = &mut err {
                *removed = true;
            }
            return Err(err);
        }
    };
    file.check = Check::Sha256(hex(&hash));
    if let Err(err) = store.commit(plan, &file, part).await {
        store.discard(plan, &file).await?;
        return Err(err.into());
    }
    Ok(StoredFile {
        file,
        resumed_from: from,
    })
}

/// Bytes of `path`'s partial copy of `layout` that a write would go on from (0: none, or one
/// of another layout): what it does not need room for.
pub async fn partial_bytes<St: Store>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
    layout: &QuantizedLayout,
) -> DResult<u64> {
    let durable = store
        .present_bytes(plan, &partial_file(path, layout))
        .await?;
    Ok(layout.resume_point(durable))
}

/// Hashes the `from` bytes the part already holds, then writes the rest of `layout` into it,
/// recording its progress every [`CHECKPOINT_BYTES`]. On error, also how far the durable
/// writing got.
async fn write_part<P: PartFile, S: WeightSource>(
    part: &mut P,
    path: &str,
    from: u64,
    source: &S,
    layout: &QuantizedLayout,
    mut progress: impl FnMut(u64, u64),
) -> std::result::Result<[u8; 32], (Error, u64)> {
    let size = layout.size();
    let start = rehash(part, path, from, |at| progress(at, size))
        .await
        .map_err(|e| (e, 0))?;
    let end = write_through(part, source, layout, start, size, progress).await?;
    Ok(end.hash.finalize().into())
}

/// The hash state of the `from` bytes `part` holds, read back; `progress(bytes)` after each
/// chunk (a large copy takes a while to read back).
async fn rehash<P: PartFile>(
    part: &mut P,
    path: &str,
    from: u64,
    mut progress: impl FnMut(u64),
) -> Result<Resume> {
    let mut hash = Sha256::new();
    let mut at = 0;
    while at < from {
        let n = (from - at).min(REHASH_CHUNK);
        let bytes = part.read_at(at, n).await?;
        if bytes.len() as u64 != n {
            let reason = format!("{} bytes read back at {at}, {n} expected", bytes.len());
            let file = path.to_owned();
            return Err(DownloadError::Storage { file, reason }.into());
        }
        hash.update(&bytes);
        at += n;
        progress(at);
    }
    Ok(Resume { offset: from, hash })
}

/// Writes the tensors of `layout` after `start` that end at or before `until` into `part`,
/// recording its progress every [`CHECKPOINT_BYTES`]. On error, also how far the durable
/// writing got.
async fn write_through<P: PartFile, S: WeightSource>(
    part: &mut P,
    source: &S,
    layout: &QuantizedLayout,
    start: Resume,
    until: u64,
    progress: impl FnMut(u64, u64),
) -> std::result::Result<Resume, (Error, u64)> {
    let (mut offset, mut recorded) = (start.offset, start.offset);
    let result = write_quantized_through(
        source,
        layout,
        None,
        start,
        until,
        async |bytes: &[u8]| {
            part.write_at(offset, bytes).await?;
            offset += bytes.len() as u64;
            if offset - recorded >= CHECKPOINT_BYTES {
                part.checkpoint(offset).await?;
                recorded = offset;
            }
            Ok(())
        },
        progress,
    )
    .await;
    result.map_err(|e| (e, offset))
}

/// [`store_quantized`] for a copy made while its checkpoint downloads, so that the storage
/// never holds the whole checkpoint beside the copy: for each checkpoint file in the order
/// the copy reads them ([`QuantizedLayout::source_files`]), `fetch(file)` brings it (verified
/// and committed in `store`, where `source` reads it), the copy is written through its last
/// tensor and checkpointed, then `consumed(file, end)` is told that the copy holds every
/// tensor of it durably (through byte `end`), so the caller can record that and remove the
/// file. A file the partial copy already holds is not fetched (`consumed` is told again, so a
/// removal cut short is done now). The copy is committed after the last file.
///
/// Nothing written is discarded on an error (a failed fetch, a cancel, a full disk): the
/// partial copy is all that is left of the files it consumed, so it keeps what it holds
/// durably and the next call goes on from there.
#[allow(clippy::too_many_arguments)]
pub async fn store_quantized_as_they_arrive<St: Store, S: WeightSource>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
    source: &S,
    layout: &QuantizedLayout,
    mut fetch: impl AsyncFnMut(&str) -> Result<()>,
    mut consumed: impl AsyncFnMut(&str, u64) -> Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<StoredFile> {
    let mut file = partial_file(path, layout);
    let (mut part, durable) = store.open_part(plan, &file).await?;
    let from = layout.resume_point(durable);
    let size = layout.size();
    let mut at = rehash(&mut part, path, from, |done| progress(done, size)).await?;
    for (checkpoint, end) in layout.source_files() {
        if end > at.offset {
            if let Err(err) = fetch(&checkpoint).await {
                let _ = part.checkpoint(at.offset).await;
                return Err(err);
            }
            at = match write_through(&mut part, source, layout, at, end, &mut progress).await {
                Ok(next) => next,
                Err((err, reached)) => {
                    // Should this record fail, the one before still holds.
                    let _ = part.checkpoint(reached).await;
                    return Err(err);
                }
            };
            part.checkpoint(at.offset).await?;
        }
        consumed(&checkpoint, end).await?;
    }
    file.check = Check::Sha256(hex(&at.hash.finalize()));
    store.commit(plan, &file, part).await?;
    Ok(StoredFile {
        file,
        resumed_from: from,
    })
}

/// Whether `file` is a shard of `component`'s safetensors checkpoint
/// (`{component}/*.safetensors`).
pub fn is_checkpoint_of(component: &str, file: &FilePlan) -> bool {
    file.path
        .strip_prefix(component)
        .is_some_and(|rest| rest.starts_with('/') && rest.ends_with(".safetensors"))
}

/// The shards of `component`'s checkpoint in the order `layout` reads them, each with the byte
/// of the copy its tensors end at ([`QuantizedLayout::source_files`]), once checked against
/// `plan`'s file list: every shard listed is one the copy reads, and the other way round.
/// `Err`: the two lists, when they differ.
pub fn matching_shards(
    plan: &DownloadPlan,
    component: &str,
    layout: &QuantizedLayout,
) -> std::result::Result<Vec<(String, u64)>, String> {
    let mut listed: Vec<&str> = plan
        .files
        .iter()
        .filter(|f| is_checkpoint_of(component, f))
        .map(|f| f.path.as_str())
        .collect();
    let shards = layout.source_files();
    let mut read: Vec<&str> = shards.iter().map(|(f, _)| f.as_str()).collect();
    listed.sort_unstable();
    read.sort_unstable();
    if listed != read {
        return Err(format!(
            "the checkpoint lists {listed:?}, its headers name {read:?}"
        ));
    }
    Ok(shards)
}

/// A stored copy made while its checkpoint downloads ([`store_quantized_as_they_arrive`]):
/// each shard is fetched when the copy reaches it and removed once the copy holds it, so the
/// storage holds one shard at a time beside the copy instead of the whole checkpoint (for the
/// real model the peak drops from about 63 GB, the download and then the copies, to about
/// 22 GB, the copies and one shard). The browser's download and `qwen-layered fetch
/// --precision q4` both make their copies this way.
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// The index of the plan (repository) that lists the checkpoint, among the caller's.
    pub plan: usize,
    /// `transformer` or `text_encoder`.
    pub component: &'static str,
    /// The copy's path ([`crate::weights::stored_copy_path`]).
    pub path: String,
    /// Planned from the checkpoint's headers (read from the hub by range requests).
    pub layout: QuantizedLayout,
    /// The checkpoint shards, in the order the copy reads them, each with the byte of the copy
    /// its tensors end at ([`matching_shards`]).
    pub shards: Vec<(String, u64)>,
    /// Bytes the partial copy of an earlier download holds (where it goes on from): the shards
    /// whose tensors end before are consumed, gone from the store.
    pub partial: u64,
}

impl CopyJob {
    /// The copy of `component` at `path`, listed by `plans[plan]`, as `layout` plans it;
    /// what a partial copy in `store` already holds is read from its progress record.
    /// `Ok(Err(why))`: the copy cannot be made as the checkpoint arrives (see
    /// [`matching_shards`]).
    pub async fn new<St: Store>(
        store: &St,
        plans: &[DownloadPlan],
        plan: usize,
        component: &'static str,
        path: String,
        layout: QuantizedLayout,
    ) -> DResult<std::result::Result<Self, String>> {
        let shards = match matching_shards(&plans[plan], component, &layout) {
            Ok(shards) => shards,
            Err(why) => return Ok(Err(why)),
        };
        let partial = partial_bytes(store, &plans[plan], &path, &layout).await?;
        Ok(Ok(Self {
            plan,
            component,
            path,
            layout,
            shards,
            partial,
        }))
    }

    /// Whether the file `path` is one of its shards the copy already holds.
    pub fn consumed(&self, path: &str) -> bool {
        self.shards
            .iter()
            .any(|(f, end)| f == path && *end <= self.partial)
    }

    /// Whether `file` is one of its checkpoint's shards.
    pub fn is_shard(&self, file: &FilePlan) -> bool {
        is_checkpoint_of(self.component, file)
    }

    /// Makes the copy: each shard that `plan` (this job's, less the shards consumed before)
    /// lists is downloaded through `client` into `store` within `session` when the copy
    /// reaches it, written into the copy (read back through `source`, which reads `store`'s
    /// files), then removed. `on_copy(bytes_written, size)` as the copy grows. Returns the
    /// committed copy and the bytes fetched. Nothing is discarded on an error: the partial
    /// copy keeps what it holds and the next run goes on from there.
    pub async fn run<C: HttpClient, St: Store, S: WeightSource>(
        &self,
        client: &C,
        store: &St,
        plan: &DownloadPlan,
        source: &S,
        session: &Session<'_>,
        on_copy: impl FnMut(u64, u64),
    ) -> Result<(StoredFile, u64)> {
        let mut fetched = 0;
        let stored = store_quantized_as_they_arrive(
            store,
            plan,
            &self.path,
            source,
            &self.layout,
            async |shard: &str| {
                let Some(file) = plan.files.iter().find(|f| f.path == shard) else {
                    return Ok(()); // consumed before: never fetched again
                };
                let outcome = download_file(client, store, plan, file, session).await?;
                fetched += outcome.bytes_fetched;
                Ok(())
            },
            // Held by the copy: the shard goes (again, should an earlier removal have been
            // cut short).
            async |shard: &str, _end: u64| Ok(discard_derived(store, plan, shard).await?),
            on_copy,
        )
        .await?;
        Ok((stored, fetched))
    }
}

/// The most storage a download making `jobs` as it goes needs at once, beyond what the cache
/// holds now: each copy's shards in turn (fetched, written into the copy, removed), then the
/// other files of `plans` still missing. Without jobs: every file still missing.
pub async fn copying_peak<St: Store>(
    store: &St,
    plans: &[DownloadPlan],
    jobs: &[CopyJob],
) -> DResult<u64> {
    let (mut now, mut peak) = (0i128, 0i128);
    for job in jobs {
        let plan = &plans[job.plan];
        let mut written = job.partial;
        for (file, end) in job.shards.iter().cloned() {
            if end <= job.partial {
                continue;
            }
            let Some(f) = plan.files.iter().find(|f| f.path == file) else {
                continue;
            };
            let present = store.present_bytes(plan, f).await?.min(f.size);
            now += i128::from(f.size - present) + i128::from(end - written);
            written = end;
            peak = peak.max(now);
            now -= i128::from(f.size);
        }
    }
    for (i, plan) in plans.iter().enumerate() {
        let copied = |f: &FilePlan| jobs.iter().any(|j| j.plan == i && j.is_shard(f));
        for f in plan.files.iter().filter(|f| !copied(f)) {
            now += i128::from(f.size - store.present_bytes(plan, f).await?.min(f.size));
        }
    }
    Ok(peak.max(now).max(0) as u64)
}

/// The plan of the partial copy at `path`: its SHA-256 is not known until it is written, so
/// the layout's [identity](QuantizedLayout::identity) stands for it; a partial file is
/// resumed only by a writer of the same layout.
pub fn partial_file(path: &str, layout: &QuantizedLayout) -> FilePlan {
    FilePlan {
        path: path.to_owned(),
        size: layout.size(),
        check: Check::Sha256(hex(&layout.identity())),
        url: String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes every trace of the derived file `path` of `plan`'s revision from `store`: the file
/// if committed, or what a copy cut short left (its partial bytes). Missing is fine.
pub async fn discard_derived<St: Store>(
    store: &St,
    plan: &DownloadPlan,
    path: &str,
) -> DResult<()> {
    let any = FilePlan {
        path: path.to_owned(),
        size: 0,
        check: Check::Sha256("0".repeat(64)),
        url: String::new(),
    };
    store.discard(plan, &any).await
}
