//! The worker's model cache service: what the browser's cache holds of a model source
//! (`models.json` entry), downloading it (resumable, verified, quota-checked) and deleting it,
//! and the [`WeightSource`] a model loads from — the verified OPFS cache, nothing else.
//!
//! A source's files are those of its repositories' tree listings that its component patterns
//! select ([`crate::registry::Part::select`]). When a download starts, the resolved plans
//! (commits, files, sizes, hashes) are kept as a record in OPFS (`model-sources/{id}.json`),
//! so after a reload without network the page still knows which commit folder holds the
//! model and can load it. Files are served only once their own commit record says they were
//! verified ([`OpfsSource`]).

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::download::FetchClient;
use super::http::HttpSource;
use super::human_bytes;
use super::opfs::{
    CachedModel as CachedRevision, MODELS_DIR, OpfsSource, OpfsStore, check_quota, delete_cached,
    list_cached, read_record, remove_record, storage_status, write_record,
};
use crate::download::derived::{
    CopyJob, copying_peak, discard_derived, is_checkpoint_of, partial_bytes, partial_file,
    store_quantized,
};
use crate::download::{
    DResult, DownloadError, DownloadOptions, DownloadPlan, FilePlan, Progress, Session, Store,
    discover, download_plan, remaining_bytes,
};
use crate::error::{Error, Result};
use crate::model::stored_copy_layout;
use crate::protocol::{CacheState, ModelSource, StorageReport, StoredRevision};
use crate::registry::revision_use;
use crate::weights::{
    Cancellable, Precision, QuantizedLayout, SafetensorsFolder, WeightSource, stored_copy_path,
    stored_copy_paths_ever,
};

/// The OPFS folder of the per-source records.
pub const SOURCES_DIR: &str = "model-sources";

/// The resolved file lists of a source, kept beside the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceRecord {
    /// The registry entry the plans were made for.
    source: ModelSource,
    /// One plan per part ([`ModelSource::parts`]), already filtered.
    plans: Vec<DownloadPlan>,
}

fn record_name(id: &str) -> String {
    format!("{id}.json")
}

async fn load_record(source: &ModelSource) -> Option<SourceRecord> {
    let bytes = read_record(SOURCES_DIR, &record_name(&source.id))
        .await
        .ok()??;
    let record: SourceRecord = serde_json::from_slice(&bytes).ok()?;
    // The same repositories, revisions and patterns (a relabelled entry keeps its cache).
    (record.source.parts() == source.parts() && record.plans.len() == source.parts().len())
        .then_some(record)
}

/// Lists the source's repositories on the hub and picks its files.
async fn plans_from_hub(
    source: &ModelSource,
    options: &DownloadOptions,
) -> DResult<Vec<DownloadPlan>> {
    let mut plans = Vec::new();
    for part in source.parts() {
        let listing = discover(&FetchClient, &part.spec, options).await?;
        plans.push(
            part.select(listing)
                .map_err(|reason| DownloadError::Plan { reason })?,
        );
    }
    Ok(plans)
}

/// The source's plans: the record of an earlier download when there is one (the commits it
/// resolved to stay fixed until the source is deleted, and no network is needed), else the
/// hub's listing now.
async fn plans(source: &ModelSource, quick: bool) -> DResult<(Vec<DownloadPlan>, bool)> {
    if let Some(r) = load_record(source).await {
        return Ok((r.plans, true));
    }
    let mut options = DownloadOptions::default();
    if quick {
        // A state query should not hang on an unreachable hub.
        options.max_retries = 1;
    }
    Ok((plans_from_hub(source, &options).await?, false))
}

/// The checkpoint files a committed stored copy serves instead, with the index of the plan
/// that lists them: a component's `*.safetensors` once its whole 8-/4-bit copy, in the
/// precision `source` keeps it in, is committed in that plan's revision (the transformer's
/// 41 GB and the text encoder's 16.6 GB of the real model). The component then loads from the
/// copy alone, so a load removes them ([`stored_copy`]), the cache state counts them as
/// present, and a download does not fetch them again.
async fn replaced_by_copy(
    source: &ModelSource,
    plans: &[DownloadPlan],
    store: &OpfsStore,
) -> DResult<Vec<(usize, FilePlan)>> {
    let mut replaced = Vec::new();
    for (component, copy) in source.stored_copies() {
        let of = |f: &&FilePlan| is_checkpoint_of(component, f);
        let Some(i) = plans.iter().position(|p| p.files.iter().any(|f| of(&f))) else {
            continue;
        };
        if store.committed_file(&plans[i], &copy).await?.is_none() {
            continue;
        }
        replaced.extend(plans[i].files.iter().filter(of).map(|f| (i, f.clone())));
    }
    Ok(replaced)
}

/// What the cache holds of `source`, whose files `plans` list.
async fn measure(
    source: &ModelSource,
    plans: &[DownloadPlan],
    from_record: bool,
) -> DResult<CacheState> {
    let store = OpfsStore::open().await?;
    let replaced = replaced_by_copy(source, plans, &store).await?;
    let copying = load_copying_record(source).await;
    let mut state = CacheState {
        revisions: plans
            .iter()
            .map(|p| format!("{}@{}", p.repo, p.revision))
            .collect(),
        total_bytes: 0,
        verified_bytes: 0,
        partial_bytes: 0,
        files_total: 0,
        files_verified: 0,
        from_record,
        replaced_bytes: 0,
        copy_bytes: 0,
    };
    for (i, plan) in plans.iter().enumerate() {
        // Shards a copy being made holds count as there: the copy stands for them.
        let consumed = consumed_shards(&copying, plan, &store).await?;
        for file in &plan.files {
            state.total_bytes += file.size;
            state.files_total += 1;
            if replaced.iter().any(|(j, r)| *j == i && r.path == file.path)
                || consumed.contains(&file.path)
            {
                state.verified_bytes += file.size;
                state.files_verified += 1;
                state.replaced_bytes += file.size;
            } else if store.is_committed(plan, file).await? {
                state.verified_bytes += file.size;
                state.files_verified += 1;
            } else {
                state.partial_bytes += store.present_bytes(plan, file).await?.min(file.size);
            }
        }
        // The copies this source reads (not another precision's, nor a GGUF source's).
        for (_, path) in source.stored_copies() {
            if let Some(copy) = store.committed_file(plan, &path).await? {
                state.copy_bytes += copy.size;
            }
        }
    }
    Ok(state)
}

/// The cache state of a source (`Err`: why it is unknown).
pub async fn query(source: &ModelSource) -> std::result::Result<CacheState, String> {
    let (plans, from_record) = plans(source, true).await.map_err(|e| {
        format!(
            "Size unknown: the file list of {} could not be read ({e}).",
            source.repo
        )
    })?;
    measure(source, &plans, from_record)
        .await
        .map_err(|e| format!("Reading the browser's model cache: {e}"))
}

/// Chunk size for a download of `total` bytes: about 1/64 of it, between 64 KiB and 32 MiB,
/// so a closed tab loses little and progress moves smoothly for small models too.
fn chunk_bytes(total: u64) -> u64 {
    (total / 64).clamp(64 << 10, 32 << 20)
}

/// The record of the copies being made as their checkpoints download
/// (`model-sources/{id}.copying.json`): for each, the partial copy's file and the byte each
/// shard's tensors end at. A shard is consumed (held by the copy, removed from the cache) once
/// the partial copy's durable bytes reach that byte: the cache state counts it as there
/// without the hub ([`measure`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CopyingRecord {
    copies: Vec<CopyingEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopyingEntry {
    repo: String,
    revision: String,
    /// The partial copy as the store knows it (its size and layout identity).
    copy: FilePlan,
    /// Each shard's path and the byte of the copy its tensors end at.
    shards: Vec<(String, u64)>,
}

fn copying_record_name(id: &str) -> String {
    format!("{id}.copying.json")
}

async fn load_copying_record(source: &ModelSource) -> CopyingRecord {
    let bytes = read_record(SOURCES_DIR, &copying_record_name(&source.id)).await;
    bytes
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The shards the partial copies of `record` hold in `plan`'s revision (removed from the cache
/// or about to be).
async fn consumed_shards(
    record: &CopyingRecord,
    plan: &DownloadPlan,
    store: &OpfsStore,
) -> DResult<Vec<String>> {
    let mut consumed = Vec::new();
    for entry in &record.copies {
        if entry.repo != plan.repo || entry.revision != plan.revision {
            continue;
        }
        let durable = store.present_bytes(plan, &entry.copy).await?;
        let held = entry.shards.iter().filter(|(_, end)| *end <= durable);
        consumed.extend(held.map(|(f, _)| f.clone()));
    }
    Ok(consumed)
}

/// The copies this download makes as their checkpoints arrive: one per component of
/// [`ModelSource::stored_copies`] whose copy is not committed yet, planned from the checkpoint
/// headers on the hub. Any failure to plan one (a hub that ignores Range requests, say) is
/// logged and leaves that copy to the first load, as before.
async fn copy_jobs(
    source: &ModelSource,
    plans: &[DownloadPlan],
    store: &OpfsStore,
) -> DResult<Vec<CopyJob>> {
    let mut jobs = Vec::new();
    for (component, path) in source.stored_copies() {
        let of = |f: &&FilePlan| is_checkpoint_of(component, f);
        let Some(i) = plans.iter().position(|p| p.files.iter().any(|f| of(&f))) else {
            continue; // committed: the plan no longer lists its checkpoint
        };
        let plan = &plans[i];
        let precision = source.precision(component);
        let hub = HttpSource::hugging_face(&source.host, &plan.repo, &plan.revision);
        let layout = match copy_layout(&hub, component, precision, plan).await {
            Ok(layout) => layout,
            Err(err) => {
                warn(&format!(
                    "{component}: its {}-bit copy is left to the first load (its checkpoint's \
                     headers could not be read from the hub: {err})",
                    precision.bits().unwrap_or(32)
                ));
                continue;
            }
        };
        match CopyJob::new(store, plans, i, component, path, layout).await? {
            Ok(job) => jobs.push(job),
            Err(why) => warn(&format!(
                "{component}: its copy is left to the first load ({why})"
            )),
        }
    }
    Ok(jobs)
}

/// A copy's failure as the download's: its own download errors as they are, a cancel as a
/// cancel, anything else as a storage failure of the copy.
fn copy_error(err: Error, path: &str) -> DownloadError {
    match err {
        Error::Download(e) => e,
        Error::Cancelled { .. } => DownloadError::Cancelled,
        other => DownloadError::Storage {
            file: path.to_owned(),
            reason: format!("making the quantized copy: {other}"),
        },
    }
}

/// Downloads every missing file of the source, verified, resuming partial files. The
/// components the source keeps 8-/4-bit are quantized as their checkpoints arrive, shard by
/// shard, into their stored copies ([`CopyJob`]; `on_copy(component, written, size)`), when
/// the storage holds that (`storage_free`, the test parameter `?storage-free=`, caps the free
/// storage counted on for it); else the whole checkpoints are downloaded and the first load
/// makes the copies. Refuses up front when the storage quota cannot hold what is missing.
/// Returns the bytes fetched.
pub async fn download(
    source: &ModelSource,
    storage_free: Option<u64>,
    on_progress: &dyn Fn(&Progress),
    on_copy: &dyn Fn(&str, u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> DResult<u64> {
    let (plans, _) = plans(source, false).await?;
    let record = SourceRecord {
        source: source.clone(),
        plans: plans.clone(),
    };
    let json = serde_json::to_vec(&record).expect("plain structs serialize");
    write_record(SOURCES_DIR, &record_name(&source.id), &json).await?;

    let store = OpfsStore::open().await?;
    // Checkpoint files a stored copy replaced are not fetched again.
    let replaced = replaced_by_copy(source, &plans, &store).await?;
    let plans: Vec<DownloadPlan> = plans
        .into_iter()
        .enumerate()
        .map(|(i, mut plan)| {
            plan.files
                .retain(|f| !replaced.iter().any(|(j, r)| *j == i && r.path == f.path));
            plan
        })
        .collect();
    let status = storage_status().await?;
    // What the whole checkpoints need (the plain download, or the fallback).
    let mut whole = 0;
    for plan in &plans {
        whole += remaining_bytes(&store, plan).await?;
    }
    let mut jobs = copy_jobs(source, &plans, &store).await?;
    if !jobs.is_empty() {
        let mut room = status.clone();
        if let Some(free) = storage_free {
            room.quota = room.quota.min(room.usage.saturating_add(free));
        }
        let peak = copying_peak(&store, &plans, &jobs).await?;
        if let Err(err) = check_quota(peak, &room) {
            // The checkpoints whole, and the copies left to the first load, if that fits.
            if check_quota(whole, &status).is_err() {
                return Err(err);
            }
            warn(&format!("the copies are left to the first load: {err}"));
            jobs.clear();
        }
    }
    if jobs.is_empty() {
        if whole > 0 {
            check_quota(whole, &status)?;
        }
    } else {
        // Recorded before a shard goes, so the cache state knows what the copies hold.
        let copies = jobs
            .iter()
            .map(|job| CopyingEntry {
                repo: plans[job.plan].repo.clone(),
                revision: plans[job.plan].revision.clone(),
                copy: partial_file(&job.path, &job.layout),
                shards: job.shards.clone(),
            })
            .collect();
        let json = serde_json::to_vec(&CopyingRecord { copies }).expect("plain structs");
        write_record(SOURCES_DIR, &copying_record_name(&source.id), &json).await?;
    }
    // Shards the partial copies hold are gone: not fetched, not counted.
    let plans: Vec<DownloadPlan> = plans
        .into_iter()
        .enumerate()
        .map(|(i, mut plan)| {
            plan.files
                .retain(|f| !jobs.iter().any(|j| j.plan == i && j.consumed(&f.path)));
            plan
        })
        .collect();
    let total: u64 = plans.iter().map(DownloadPlan::total_bytes).sum();
    let files_total: usize = plans.iter().map(|p| p.files.len()).sum();
    let options = DownloadOptions {
        chunk_bytes: chunk_bytes(total),
        ..DownloadOptions::default()
    };
    let (before_bytes, before_files) = (Cell::new(0u64), Cell::new(0usize));
    let fetched = Cell::new(0u64);
    for (i, plan) in plans.iter().enumerate() {
        // One progress over all repositories: earlier plans count as done.
        let whole = |p: &Progress| {
            let done = before_bytes.get() + p.done_bytes;
            let eta_s = (p.rate_bytes_per_s > 0.0)
                .then(|| total.saturating_sub(done) as f64 / p.rate_bytes_per_s);
            on_progress(&Progress {
                done_bytes: done,
                total_bytes: total,
                files_done: before_files.get() + p.files_done,
                files_total,
                current_file: p.current_file.clone(),
                rate_bytes_per_s: p.rate_bytes_per_s,
                eta_s,
            });
        };
        let session = Session::new(plan, options.clone(), &whole, cancelled);
        let cached = OpfsSource::open(MODELS_DIR, plan.clone())
            .await
            .map_err(|e| copy_error(e, &plan.repo))?;
        let cached = Cancellable::new(&cached, cancelled);
        for job in jobs.iter().filter(|j| j.plan == i) {
            let on_job = |written, size| on_copy(job.component, written, size);
            let (_, bytes) = job
                .run(&FetchClient, &store, plan, &cached, &session, on_job)
                .await
                .map_err(|err| copy_error(err, &job.path))?;
            fetched.set(fetched.get() + bytes);
        }
        let copied = |f: &FilePlan| jobs.iter().any(|j| j.plan == i && j.is_shard(f));
        let others = DownloadPlan {
            files: plan.files.iter().filter(|f| !copied(f)).cloned().collect(),
            ..plan.clone()
        };
        let report = download_plan(&FetchClient, &store, &others, &session).await?;
        fetched.set(fetched.get() + report.files.iter().map(|f| f.bytes_fetched).sum::<u64>());
        before_bytes.set(before_bytes.get() + plan.total_bytes());
        before_files.set(before_files.get() + plan.files.len());
    }
    // Every copy is committed: what a record of copies being made said (this download's or
    // one cut short before) is in `replaced_by_copy` now.
    remove_record(SOURCES_DIR, &copying_record_name(&source.id)).await?;
    Ok(fetched.get())
}

/// Removes the source's files (and partial downloads) from the cache, the stored quantized
/// copies made from them, and its record.
pub async fn delete(source: &ModelSource) -> DResult<()> {
    let (plans, _) = plans(source, true).await?;
    let store = OpfsStore::open().await?;
    for plan in &plans {
        for file in &plan.files {
            store.discard(plan, file).await?;
        }
        let copies = STORED_COMPONENTS
            .iter()
            .flat_map(|(component, _)| stored_copy_paths_ever(component));
        for path in copies {
            // Committed or cut short (a closed tab), every trace of it goes.
            discard_derived(&store, plan, &path).await?;
        }
    }
    remove_record(SOURCES_DIR, &copying_record_name(&source.id)).await?;
    remove_record(SOURCES_DIR, &record_name(&source.id)).await
}

/// The storage manager's view of the model cache: every revision folder against `sources`
/// (the page's model list; what their downloads recorded, no hub request), after removing
/// from the folder `clean` (`repo`, `revision`) what none of them reads: the whole folder when
/// none of them uses it, else the files none of them keeps ([`revision_use`]: a stored copy of
/// another precision or an older format, a file of a listing since changed).
pub async fn storage(
    sources: &[ModelSource],
    clean: Option<(&str, &str)>,
) -> DResult<StorageReport> {
    let mut records = Vec::new();
    for source in sources {
        let plans = load_record(source).await.map(|r| r.plans);
        records.push((source.clone(), plans.unwrap_or_default()));
    }
    let paths = |m: &CachedRevision| m.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
    if let Some((repo, revision)) = clean {
        let cached = list_cached(MODELS_DIR).await?;
        if let Some(m) = cached
            .iter()
            .find(|m| m.repo == repo && m.revision == revision)
        {
            let found = revision_use(&records, repo, revision, &paths(m));
            if found.used_by.is_empty() {
                delete_cached(MODELS_DIR, repo, Some(revision)).await?;
            } else {
                let store = OpfsStore::open().await?;
                let plan = DownloadPlan {
                    repo: repo.to_owned(),
                    revision: revision.to_owned(),
                    files: Vec::new(),
                };
                for path in &found.unused {
                    // Committed or partial, every trace of it (sidecar records too).
                    discard_derived(&store, &plan, path).await?;
                }
            }
        }
    }
    let label = |id: &String| {
        sources
            .iter()
            .find(|s| &s.id == id)
            .map_or_else(|| id.clone(), |s| s.label.clone())
    };
    let revisions = list_cached(MODELS_DIR)
        .await?
        .into_iter()
        .filter(|m| !m.files.is_empty())
        .map(|m| {
            let found = revision_use(&records, &m.repo, &m.revision, &paths(&m));
            let bytes_of =
                |p: &String| m.files.iter().find(|f| &f.path == p).map_or(0, |f| f.bytes);
            StoredRevision {
                bytes: m.complete_bytes + m.partial_bytes,
                used_by: found.used_by.iter().map(label).collect(),
                unused: found
                    .unused
                    .iter()
                    .map(|p| (p.clone(), bytes_of(p)))
                    .collect(),
                repo: m.repo,
                revision: m.revision,
            }
        })
        .collect();
    let status = storage_status().await?;
    Ok(StorageReport {
        revisions,
        usage: status.usage,
        quota: status.quota,
        persisted: status.persisted,
    })
}

/// What [`use_stored_copies`] did for one component of a load.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredCopy {
    /// Not applicable: the component loads in f32, or comes from a GGUF file.
    NotUsed,
    /// The copy stored by an earlier load is read.
    Reused {
        /// Its size.
        bytes: u64,
        /// Bytes of the checkpoint it replaces that were removed now (0: none were left).
        freed: u64,
    },
    /// The copy was written by this load (and is read).
    Made {
        /// Its size.
        bytes: u64,
        /// How long writing it took.
        millis: f64,
        /// Bytes of the checkpoint it replaces that were removed.
        freed: u64,
        /// Bytes an earlier load had written before it was cut short (0: written whole now).
        resumed_from: u64,
    },
    /// It could not be stored (the reason); the component is quantized at load instead.
    NotStored(String),
}

impl StoredCopy {
    /// A sentence for the page's model status about `what` ("The transformer"), if there is
    /// something to say.
    pub fn note(&self, what: &str, precision: Precision) -> Option<String> {
        let bits = precision.bits().unwrap_or(32);
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let freed = |freed: u64| match freed {
            0 => String::new(),
            n => format!(
                " Its checkpoint ({}) was removed from this browser: the copy replaces it.",
                mb(n)
            ),
        };
        match self {
            StoredCopy::NotUsed => None,
            StoredCopy::Reused { bytes, freed: f } => Some(format!(
                "{what} was read from its {bits}-bit copy stored in this browser ({}).{}",
                mb(*bytes),
                freed(*f)
            )),
            StoredCopy::Made {
                bytes,
                millis,
                freed: f,
                resumed_from,
            } => Some(format!(
                "{what} was quantized to {bits} bits and stored in this browser ({}, {:.1} s{}): \
                 later loads read that copy.{}",
                mb(*bytes),
                millis / 1000.0,
                match resumed_from {
                    0 => String::new(),
                    &b if b < 1_000_000 => format!(
                        ", going on from the {:.1} KB an earlier load wrote",
                        b as f64 / 1e3
                    ),
                    &b => format!(", going on from the {} an earlier load wrote", mb(b)),
                },
                freed(*f)
            )),
            StoredCopy::NotStored(reason) => Some(format!(
                "{what} could not be stored {bits}-bit in this browser ({reason}); it was \
                 quantized while loading and will be again next time."
            )),
        }
    }
}

/// The components stored quantized, with their sentence subject, in the order a first load
/// copies them. Each copy is written whole before its checkpoint goes, so the storage peaks
/// at the download plus one copy: the text encoder's first (5.4 GB for the real model at 4
/// bits, which then frees 16.6 GB), so the transformer's (11.4 GB) is written in that room
/// too. The other order would peak 6 GB higher (the whole download plus 11.4 GB).
const STORED_COMPONENTS: [(&str, &str); 2] = [
    ("text_encoder", "The text encoder"),
    ("transformer", "The transformer"),
];

/// For each component whose safetensors checkpoint is kept 8-/4-bit (the transformer, the text
/// encoder): makes `cached` read its stored quantized copy ([`stored_copy_path`], beside the
/// checkpoint), writing that copy first when this revision has none (quota checked first;
/// `progress(component, bytes_written, size)` while writing; committed only once complete).
/// A copy is the whole component, so it stands alone: the transformer then loads from it as a
/// GGUF file (`cached.gguf`), the text encoder's loaders find it first
/// ([`Checkpoint::open`](crate::weights::Checkpoint::open)), and the checkpoint it replaces
/// is removed. Loading with a copy gives exactly the layers quantizing at load gives, from
/// about a quarter (4-bit) of the bytes and with no quantization work: at every later load,
/// every run of a phased model, and every block a streamed transformer re-reads. When a copy
/// cannot be stored (no room, a storage error), nothing is left of it and that component is
/// quantized at load as before. `storage_free` (the test parameter `?storage-free=`) caps the
/// free storage counted on. Once `stop()` says so (the page's Cancel), the copy being written
/// stops at its next read and the error is [`Error::Cancelled`]; the copy keeps what it
/// wrote, and the next load goes on from its last whole tensor (as after a closed tab).
/// Returns the page's sentences about what happened.
pub async fn use_stored_copies(
    cached: &mut CachedModel,
    source: &ModelSource,
    storage_free: Option<u64>,
    progress: &dyn Fn(&str, u64, u64),
    stop: &dyn Fn() -> bool,
) -> Result<Option<String>> {
    let mut notes = Vec::new();
    for (component, what) in STORED_COMPONENTS {
        let precision = source.precision(component);
        let report = |d, t| progress(component, d, t);
        let stale = remove_stale_copies(cached, component).await?;
        let done = stored_copy(cached, component, precision, storage_free, &report, stop).await?;
        notes.extend(done.note(what, precision));
        if stale > 0 {
            notes.push(format!(
                "An older copy of the {} ({:.1} MB), of a format this version no longer reads, \
                 was removed.",
                what.strip_prefix("The ").unwrap_or(what).to_lowercase(),
                stale as f64 / 1e6
            ));
        }
    }
    Ok((!notes.is_empty()).then(|| notes.join(" ")))
}

/// [`use_stored_copies`] for one component. Once its copy is committed (made now or before),
/// its bf16 checkpoint is removed: the copy is the whole component, and nothing reads the
/// checkpoint any more ([`replaced_by_copy`]); so are its copies of an older format.
async fn stored_copy(
    cached: &mut CachedModel,
    component: &'static str,
    precision: Precision,
    storage_free: Option<u64>,
    progress: &dyn Fn(u64, u64),
    stop: &dyn Fn() -> bool,
) -> Result<StoredCopy> {
    let transformer = component == "transformer";
    let Some(path) = stored_copy_path(component, precision) else {
        return Ok(StoredCopy::NotUsed);
    };
    let Some(i) = cached.checkpoint_part(component) else {
        return Ok(StoredCopy::NotUsed);
    };
    if transformer && cached.gguf.as_ref().is_some_and(|g| *g != path) {
        return Ok(StoredCopy::NotUsed); // the transformer comes from a GGUF file
    }
    let store = OpfsStore::open().await?;
    let plan = cached.parts[i].plan().clone();
    let made = match store.committed_file(&plan, &path).await? {
        Some(file) => Ok((file, None)),
        None => {
            let layout = copy_layout(cached, component, precision, &plan).await?;
            let start = js_sys::Date::now();
            let mut status = storage_status().await?;
            if let Some(free) = storage_free {
                // The test parameter: no more room than this.
                status.quota = status.quota.min(status.usage.saturating_add(free));
            }
            // What a copy cut short holds already needs no more room.
            let partial = partial_bytes(&store, &plan, &path, &layout).await?;
            let needed = layout.size() - partial;
            if check_quota(needed, &status).is_err() {
                // Not stored: what a copy cut short holds would only take room.
                discard_derived(&store, &plan, &path).await?;
                let free = status.quota.saturating_sub(status.usage);
                return Ok(StoredCopy::NotStored(format!(
                    "not enough browser storage: the copy needs {:.1} MB more, {:.1} MB are free",
                    needed as f64 / 1e6,
                    free as f64 / 1e6
                )));
            }
            let source = Cancellable::new(&*cached, stop);
            store_quantized(&store, &plan, &path, &source, &layout, |d, t| {
                progress(d, t)
            })
            .await
            .map(|s| (s.file, Some((js_sys::Date::now() - start, s.resumed_from))))
        }
    };
    let (file, made_now) = match made {
        Ok(done) => done,
        // Cancelled: the partial copy keeps what it wrote for the next load; this one stops.
        Err(err @ Error::Cancelled { .. }) => return Err(err),
        Err(err) => return Ok(StoredCopy::NotStored(err.to_string())),
    };
    let bytes = file.size;
    cached.attach(i, component, file);
    // The copy is committed: the checkpoint it replaces goes, and any copy of an older
    // format. Not a reason to fail the load if they cannot go now: the next load, finding
    // the copy committed, tries again.
    let checkpoint = plan.files.iter().filter(|f| is_checkpoint_of(component, f));
    let freed = remove_committed(&store, &plan, checkpoint.cloned()).await;
    Ok(match made_now {
        Some((millis, resumed_from)) => StoredCopy::Made {
            bytes,
            millis,
            freed,
            resumed_from,
        },
        None => StoredCopy::Reused { bytes, freed },
    })
}

/// The stored copy of `component` in `precision` that a load writes, planned from the headers
/// of its checkpoint in `plan`'s revision (read from the cache).
async fn copy_layout(
    cached: &impl WeightSource,
    component: &str,
    precision: Precision,
    plan: &DownloadPlan,
) -> Result<QuantizedLayout> {
    let folder = SafetensorsFolder::open(cached, component).await?;
    let origin = format!("{}@{}", plan.repo, plan.revision);
    stored_copy_layout(component, &folder, precision, &origin)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

/// What the first load's stored copies will do to the browser's storage, said when a
/// download ends, while there is still time to free room: each copy (text encoder first) is
/// written whole before its checkpoint goes, so the load needs the largest running total of
/// copies written less checkpoints removed free at once ([`STORED_COMPONENTS`]). When every
/// copy is committed already (made as the checkpoints arrived, [`download`]), what the model
/// takes now. `None` when the source keeps nothing 8-/4-bit.
/// `storage_free` (the test parameter `?storage-free=`) caps the free storage counted on, as
/// in [`use_stored_copies`], which checks again for each copy.
pub async fn copies_outlook(
    source: &ModelSource,
    storage_free: Option<u64>,
) -> Result<Option<String>> {
    let cached = CachedModel::open(source).await?;
    let store = OpfsStore::open().await?;
    // Per copy to make, in the load's order: its name, the bytes it still needs, and the
    // checkpoint bytes it frees once committed.
    let mut copies = Vec::new();
    let mut kept = Vec::new();
    let mut change = 0i128;
    for (component, path) in source.stored_copies() {
        let Some(i) = cached.checkpoint_part(component) else {
            continue;
        };
        let plan = cached.parts[i].plan();
        let precision = source.precision(component);
        let name = || {
            let what = STORED_COMPONENTS
                .iter()
                .find(|(c, _)| *c == component)
                .map_or(component, |(_, what)| what)
                .to_lowercase();
            format!("{what} {}-bit", precision.bits().unwrap_or(32))
        };
        if store.committed_file(plan, &path).await?.is_some() {
            kept.push(name());
            continue;
        }
        let layout = copy_layout(&cached, component, precision, plan).await?;
        let needed = layout.size() - partial_bytes(&store, plan, &path, &layout).await?;
        let checkpoint: u64 = plan
            .files
            .iter()
            .filter(|f| is_checkpoint_of(component, f))
            .map(|f| f.size)
            .sum();
        change += i128::from(layout.size()) - i128::from(checkpoint);
        let what = STORED_COMPONENTS
            .iter()
            .find(|(c, _)| *c == component)
            .map_or(component, |(_, what)| what)
            .to_lowercase();
        let bits = precision.bits().unwrap_or(32);
        copies.push((format!("{what} {bits}-bit"), what, needed, checkpoint));
    }
    if copies.is_empty() {
        if kept.is_empty() {
            return Ok(None);
        }
        // Made as the checkpoints arrived: the download says what the model takes now (of
        // the files the source lists: the copies are attached to `cached`'s).
        let (plans, _) = plans(source, true).await?;
        let state = measure(source, &plans, true).await?;
        let (its, are) = match kept.len() {
            1 => ("its checkpoint", "is"),
            _ => ("their checkpoints", "are"),
        };
        let now = state.total_bytes - state.replaced_bytes + state.copy_bytes;
        return Ok(Some(format!(
            "{} {are} stored in place of {its}, quantized as they arrived: the model takes {} \
             here instead of {}.",
            capitalized(&kept.join(" and ")),
            human_bytes(now),
            human_bytes(state.total_bytes)
        )));
    }
    let mut status = storage_status().await?;
    if let Some(free) = storage_free {
        status.quota = status.quota.min(status.usage.saturating_add(free));
    }
    let free = status.quota.saturating_sub(status.usage);
    // What the load will do: each copy is kept when the room free then holds it (with the
    // 5 % margin of `check_quota`), and frees its checkpoint; the peak is the room keeping
    // every one of them needs.
    let (mut room, mut running, mut peak) = (i128::from(free), 0i128, 0i128);
    let mut not_kept = Vec::new();
    for (_, what, needed, checkpoint) in &copies {
        let with_margin = i128::from(needed + needed / 20);
        peak = peak.max(running + with_margin);
        running += i128::from(*needed) - i128::from(*checkpoint);
        if with_margin <= room {
            room += i128::from(*checkpoint) - i128::from(*needed);
        } else {
            not_kept.push(what.clone());
        }
    }
    let peak = peak.max(0) as u64;
    let (names, its) = match copies.len() {
        1 => (copies[0].0.clone(), "its checkpoint"),
        _ => (
            copies
                .iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            "their checkpoints",
        ),
    };
    Ok(Some(if not_kept.is_empty() {
        // Of the files the source lists (a committed copy is attached to `cached`'s).
        let (plans, _) = plans(source, true).await?;
        let state = measure(source, &plans, true).await?;
        let now = state.verified_bytes - state.replaced_bytes + state.copy_bytes;
        let after = (i128::from(now) + change).max(0) as u64;
        format!(
            "The first Load keeps {names} in place of {its}: it needs {} free on the way, \
             and the model then takes {} here instead of {}.",
            human_bytes(peak),
            human_bytes(after),
            human_bytes(now)
        )
    } else {
        format!(
            "The first Load would keep {names} in place of {its}, which needs {} free on \
             the way, but {} are: free {} more before loading, or every load quantizes {} \
             again (slower).",
            human_bytes(peak),
            human_bytes(free),
            human_bytes(peak.saturating_sub(free)),
            not_kept.join(" and ")
        )
    }))
}

/// Removes what copies of `component` of an older format (not read by this version: the text
/// encoder's `qwen-layered-v1-*`, which held its linear weights only) left in any revision of
/// `cached`, committed or cut short; the committed bytes removed. Done before a copy is made,
/// so their room counts for it. A file that cannot be removed now is logged and left for the
/// next load.
async fn remove_stale_copies(cached: &CachedModel, component: &str) -> Result<u64> {
    let store = OpfsStore::open().await?;
    let current = [Precision::Q8, Precision::Q4].map(|p| stored_copy_path(component, p));
    let stale: Vec<String> = stored_copy_paths_ever(component)
        .into_iter()
        .filter(|old| !current.contains(&Some(old.clone())))
        .collect();
    let mut removed = 0;
    for part in &cached.parts {
        for old in &stale {
            let size = match store.committed_file(part.plan(), old).await {
                Ok(Some(f)) => f.size,
                _ => 0,
            };
            match discard_derived(&store, part.plan(), old).await {
                Ok(()) => removed += size,
                Err(err) => warn(&format!(
                    "{old}: not removed now ({err}); the next load tries again"
                )),
            }
        }
    }
    Ok(removed)
}

/// Removes `files` of `plan`'s revision from `store`; the bytes of those that were there. A
/// file that cannot be removed now is logged and left for the next load.
async fn remove_committed(
    store: &OpfsStore,
    plan: &DownloadPlan,
    files: impl Iterator<Item = FilePlan>,
) -> u64 {
    let mut freed = 0;
    for f in files {
        let present = store.is_committed(plan, &f).await.unwrap_or(false);
        match store.discard(plan, &f).await {
            Ok(()) if present => freed += f.size,
            Ok(()) => {}
            Err(err) => warn(&format!(
                "{}: not removed now ({err}); the next load tries again",
                f.path
            )),
        }
    }
    freed
}

fn warn(message: &str) {
    web_sys::console::warn_1(&message.into());
}

/// A source's verified files in OPFS, across its repositories (each path is served by the
/// repository whose plan lists it).
pub struct CachedModel {
    parts: Vec<OpfsSource>,
    /// The transformer's GGUF file, when it comes from one.
    pub gguf: Option<String>,
    /// The components a stored quantized copy serves: their safetensors are not read.
    copied: Vec<&'static str>,
}

impl CachedModel {
    /// Opens the cached source; an error says what is missing when it is not complete.
    pub async fn open(source: &ModelSource) -> Result<Self> {
        let not_cached = |reason: String| Error::Source {
            file: source.repo.clone(),
            reason,
        };
        let (plans, _) = plans(source, true)
            .await
            .map_err(|e| not_cached(format!("not downloaded ({e})")))?;
        let state = measure(source, &plans, true).await?;
        if !state.complete() {
            return Err(not_cached(format!(
                "not fully downloaded: {} of {} files verified ({} of {} bytes); press Download first",
                state.files_verified, state.files_total, state.verified_bytes, state.total_bytes
            )));
        }
        let gguf = source.parts().iter().zip(&plans).find_map(|(part, plan)| {
            part.gguf.as_ref()?;
            plan.files
                .iter()
                .find(|f| f.path.ends_with(".gguf"))
                .map(|f| f.path.clone())
        });
        let mut parts = Vec::new();
        for plan in plans {
            parts.push(OpfsSource::open(MODELS_DIR, plan).await?);
        }
        let mut me = Self {
            parts,
            gguf,
            copied: Vec::new(),
        };
        // The copies earlier loads committed serve their components from now on (their
        // checkpoints may be gone).
        let store = OpfsStore::open().await?;
        for (component, path) in source.stored_copies() {
            let Some(i) = me.checkpoint_part(component) else {
                continue;
            };
            if let Some(file) = store.committed_file(me.parts[i].plan(), &path).await? {
                me.attach(i, component, file);
            }
        }
        Ok(me)
    }

    /// The part whose revision holds `component`'s safetensors checkpoint (its files are
    /// listed even once a copy replaced them).
    fn checkpoint_part(&self, component: &str) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| p.files().iter().any(|f| is_checkpoint_of(component, f)))
    }

    /// Serves `component` from its committed stored copy `file` (in part `i`): the
    /// transformer's as its GGUF file, the text encoder's where its loaders look first.
    fn attach(&mut self, i: usize, component: &'static str, file: FilePlan) {
        if component == "transformer" {
            self.gguf = Some(file.path.clone());
        }
        self.parts[i].add_file(file);
        if !self.copied.contains(&component) {
            self.copied.push(component);
        }
    }

    fn part(&self, file: &str) -> Result<&OpfsSource> {
        self.parts
            .iter()
            .find(|p| p.files().iter().any(|f| f.path == file))
            .ok_or_else(|| Error::Source {
                file: file.to_owned(),
                reason: "not a file of this model source".into(),
            })
    }

    /// Bytes of the weight files (`.safetensors`, `.gguf`) under the folder prefixes
    /// `prefixes` (all of them: `&[""]`) that a load reads, for load progress: not the
    /// checkpoint of a component read from a stored quantized copy, nor the transformer's
    /// safetensors when it loads from a GGUF file.
    pub fn load_bytes(&self, prefixes: &[&str]) -> u64 {
        let wanted = |path: &str| prefixes.iter().any(|p| path.starts_with(p));
        let skipped = |f: &FilePlan| {
            self.copied.iter().any(|c| is_checkpoint_of(c, f))
                || (self.gguf.is_some() && is_checkpoint_of("transformer", f))
        };
        self.parts
            .iter()
            .flat_map(|p| p.files())
            .filter(|f| f.path.ends_with(".safetensors") || f.path.ends_with(".gguf"))
            .filter(|f| wanted(&f.path) && !skipped(f))
            .map(|f| f.size)
            .sum()
    }
}

impl WeightSource for CachedModel {
    async fn exists(&self, file: &str) -> Result<bool> {
        match self.part(file) {
            Ok(p) => p.exists(file).await,
            Err(_) => Ok(false),
        }
    }

    async fn size(&self, file: &str) -> Result<u64> {
        self.part(file)?.size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.part(file)?.read(file, offset, len).await
    }
}
