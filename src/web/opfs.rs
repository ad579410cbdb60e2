//! Model files in the Origin Private File System (OPFS), written from the worker.
//!
//! Layout under the origin's OPFS root: `models/{owner}/{name}/{commit}/{path}` holds the
//! bytes (written in place through a `FileSystemSyncAccessHandle`, worker only), with two
//! small JSON siblings:
//! - `{path}.part.json`: the durable resume offset of a download in progress (size and hash
//!   included, so a different file never resumes from it);
//! - `{path}.ok.json`: the **commit record**, written only after the whole file's hash
//!   matched. A file without it is never served ([`OpfsSource`]) nor listed as complete.
//!
//! Also: the quota check before a download ([`check_quota`]), the cache manager for the UI
//! ([`list_cached`], [`delete_cached`]) and [`OpfsSource`], a `WeightSource` over committed
//! files that reads byte ranges through `File.slice()` without loading whole files.

use std::cell::Cell;
use std::rc::Rc;

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetDirectoryOptions,
    FileSystemGetFileOptions, FileSystemHandle, FileSystemHandleKind, FileSystemReadWriteOptions,
    FileSystemRemoveOptions, FileSystemSyncAccessHandle, StorageManager,
};

use crate::download::verify::Check;
use crate::download::{DResult, DownloadError, DownloadPlan, FilePlan, PartFile, Store};
use crate::error::{Error, Result};
use crate::web::js_error_text;
use crate::weights::WeightSource;

/// The OPFS folder models live in.
pub const MODELS_DIR: &str = "models";

fn storage_err(file: &str, e: &JsValue) -> DownloadError {
    DownloadError::Storage {
        file: file.to_owned(),
        reason: js_error_text(e),
    }
}

/// The `DOMException` name of a JS error (`QuotaExceededError`, `NotFoundError`, …).
fn dom_name(e: &JsValue) -> String {
    Reflect::get(e, &"name".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_default()
}

/// Said with every "storage full" in the browser: Chromium's private windows keep their storage
/// in memory and run out after a few GB while `estimate()` reports a 10 GiB quota (measured:
/// Chromium 156, a 5 GB download failed at about 2 GB), so the up-front quota check passes
/// and freeing space does not help there.
const PRIVATE_WINDOW: &str =
    "a private window holds far less than the browser reports: use a normal one";

/// Why a sync access handle's `write` of `len` bytes returned `n`, when `n` is not `len`.
/// Chromium does not throw `QuotaExceededError` there: out of room, it writes what fits and
/// returns either that shorter count or its file error code as an unsigned 32-bit number
/// (4294967288 is -8, `FILE_ERROR_NO_SPACE`). Both mean the storage is full; another
/// negative code is another failure. `Ok(reason)`: out of room; `Err(reason)`: the other.
fn short_write(n: f64, len: usize) -> std::result::Result<String, String> {
    let code = n as u64 as u32 as i32;
    if n >= 0.0 && (n as usize) < len {
        Ok(format!(
            "the browser took {n} of {len} bytes, no space left for this site; {PRIVATE_WINDOW}"
        ))
    } else if code == -8 {
        Ok(format!(
            "the browser refused a write of {len} bytes with file error -8, no space left for \
             this site; {PRIVATE_WINDOW}"
        ))
    } else {
        Err(format!(
            "the browser's write of {len} bytes returned {n} (file error {code})"
        ))
    }
}

/// `navigator.storage`, from a page or a worker.
pub fn storage_manager() -> std::result::Result<StorageManager, JsValue> {
    let global = js_sys::global();
    let navigator = Reflect::get(&global, &"navigator".into())?;
    Reflect::get(&navigator, &"storage".into())?.dyn_into::<StorageManager>()
}

async fn opfs_root() -> std::result::Result<FileSystemDirectoryHandle, JsValue> {
    JsFuture::from(storage_manager()?.get_directory())
        .await?
        .dyn_into()
}

async fn subdir(
    dir: &FileSystemDirectoryHandle,
    name: &str,
    create: bool,
) -> std::result::Result<FileSystemDirectoryHandle, JsValue> {
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(create);
    JsFuture::from(dir.get_directory_handle_with_options(name, &opts))
        .await?
        .dyn_into()
}

async fn file_handle(
    dir: &FileSystemDirectoryHandle,
    name: &str,
    create: bool,
) -> std::result::Result<FileSystemFileHandle, JsValue> {
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(create);
    JsFuture::from(dir.get_file_handle_with_options(name, &opts))
        .await?
        .dyn_into()
}

/// Removes `name` from `dir`; a missing entry is fine.
async fn remove(
    dir: &FileSystemDirectoryHandle,
    name: &str,
    recursive: bool,
) -> std::result::Result<(), JsValue> {
    let opts = FileSystemRemoveOptions::new();
    opts.set_recursive(recursive);
    match JsFuture::from(dir.remove_entry_with_options(name, &opts)).await {
        Ok(_) => Ok(()),
        Err(e) if dom_name(&e) == "NotFoundError" => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a small file whole (`None` when it does not exist).
async fn read_small(
    dir: &FileSystemDirectoryHandle,
    name: &str,
) -> std::result::Result<Option<Vec<u8>>, JsValue> {
    let handle = match file_handle(dir, name, false).await {
        Ok(h) => h,
        Err(e) if matches!(dom_name(&e).as_str(), "NotFoundError" | "TypeMismatchError") => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let file: web_sys::File = JsFuture::from(handle.get_file()).await?.dyn_into()?;
    let buf = JsFuture::from(file.array_buffer()).await?;
    Ok(Some(Uint8Array::new(&buf).to_vec()))
}

/// Replaces a small file's contents (through a sync access handle: worker only).
async fn write_small(
    dir: &FileSystemDirectoryHandle,
    name: &str,
    bytes: &[u8],
) -> std::result::Result<(), JsValue> {
    let handle = file_handle(dir, name, true).await?;
    let access: FileSystemSyncAccessHandle = JsFuture::from(handle.create_sync_access_handle())
        .await?
        .dyn_into()?;
    let result = (|| {
        access.truncate_with_f64(0.0)?;
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(0.0);
        let n = access.write_with_u8_array_and_options(bytes, &opts)?;
        if n as usize != bytes.len() {
            let reason = short_write(n, bytes.len()).unwrap_or_else(|other| other);
            return Err(js_sys::Error::new(&format!("{reason}; free space and retry")).into());
        }
        access.flush()
    })();
    access.close();
    result
}

/// The size of a file in a folder (`None` when missing).
async fn file_size(
    dir: &FileSystemDirectoryHandle,
    name: &str,
) -> std::result::Result<Option<u64>, JsValue> {
    match file_handle(dir, name, false).await {
        Ok(h) => {
            let file: web_sys::File = JsFuture::from(h.get_file()).await?.dyn_into()?;
            Ok(Some(file.size() as u64))
        }
        Err(e) if matches!(dom_name(&e).as_str(), "NotFoundError" | "TypeMismatchError") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The entries of a folder: `(name, handle)`.
async fn entries(
    dir: &FileSystemDirectoryHandle,
) -> std::result::Result<Vec<(String, FileSystemHandle)>, JsValue> {
    let iter = dir.entries();
    let mut out = Vec::new();
    loop {
        let next = JsFuture::from(iter.next()?).await?;
        if Reflect::get(&next, &"done".into())?
            .as_bool()
            .unwrap_or(true)
        {
            break;
        }
        let pair: js_sys::Array = Reflect::get(&next, &"value".into())?.dyn_into()?;
        let name = pair.get(0).as_string().unwrap_or_default();
        out.push((name, pair.get(1).dyn_into()?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What the record and the sidecar hold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct FileState {
    size: u64,
    check: Check,
    offset: u64,
}

const PART_SUFFIX: &str = ".part.json";
const RECORD_SUFFIX: &str = ".ok.json";

/// Downloaded models in OPFS: the [`Store`] the browser downloader writes to.
#[derive(Clone)]
pub struct OpfsStore {
    root: FileSystemDirectoryHandle,
    root_name: String,
    /// Test-only fault injection: a byte budget after which writes fail as
    /// `QuotaExceededError` would. `None` in the app.
    budget: Option<Rc<Cell<u64>>>,
}

impl OpfsStore {
    /// The app's store: `models/` in the origin's OPFS.
    pub async fn open() -> DResult<Self> {
        Self::open_at(MODELS_DIR).await
    }

    /// A store in another top-level OPFS folder (tests use one folder per case).
    pub async fn open_at(folder: &str) -> DResult<Self> {
        let root = opfs_root().await.map_err(|e| storage_err("OPFS", &e))?;
        let root = subdir(&root, folder, true)
            .await
            .map_err(|e| storage_err(folder, &e))?;
        Ok(Self {
            root,
            root_name: folder.to_owned(),
            budget: None,
        })
    }

    /// The top-level OPFS folder of this store.
    pub fn folder(&self) -> &str {
        &self.root_name
    }

    /// **Test-only fault injection**: the browser's storage cannot be filled on demand, so tests
    /// give the store a byte budget; a write past it fails exactly as a real
    /// `QuotaExceededError` is handled (the message says it is simulated).
    pub fn with_simulated_quota(mut self, bytes: u64) -> Self {
        self.budget = Some(Rc::new(Cell::new(bytes)));
        self
    }

    /// The folder of `path` (created on request) and the file's own name.
    async fn locate(
        &self,
        plan: &DownloadPlan,
        path: &str,
        create: bool,
    ) -> std::result::Result<(FileSystemDirectoryHandle, String), JsValue> {
        let mut dir = self.root.clone();
        let mut segments: Vec<&str> = plan.repo.split('/').collect();
        segments.push(&plan.revision);
        let (folders, name) = path.rsplit_once('/').unwrap_or(("", path));
        segments.extend(folders.split('/').filter(|s| !s.is_empty()));
        for seg in segments {
            dir = subdir(&dir, seg, create).await?;
        }
        Ok((dir, name.to_owned()))
    }

    /// The committed file `path` of `plan`'s revision as its commit record describes it (size
    /// and hash; no URL), when the record exists and the stored bytes have its size: for files
    /// made in the browser rather than listed by the hub (the stored quantized transformer).
    pub async fn committed_file(
        &self,
        plan: &DownloadPlan,
        path: &str,
    ) -> DResult<Option<FilePlan>> {
        let Ok((dir, name)) = self.locate(plan, path, false).await else {
            return Ok(None);
        };
        let err = |e: JsValue| storage_err(path, &e);
        let bytes = read_small(&dir, &format!("{name}{RECORD_SUFFIX}"))
            .await
            .map_err(err)?;
        let Some(state) = bytes.and_then(|b| serde_json::from_slice::<FileState>(&b).ok()) else {
            return Ok(None);
        };
        let on_disk = file_size(&dir, &name).await.map_err(err)?;
        Ok((on_disk == Some(state.size)).then(|| FilePlan {
            path: path.to_owned(),
            size: state.size,
            check: state.check,
            url: String::new(),
        }))
    }

    async fn record(
        &self,
        plan: &DownloadPlan,
        file: &FilePlan,
    ) -> DResult<Option<(FileSystemDirectoryHandle, String)>> {
        let Ok((dir, name)) = self.locate(plan, &file.path, false).await else {
            return Ok(None);
        };
        let bytes = read_small(&dir, &format!("{name}{RECORD_SUFFIX}"))
            .await
            .map_err(|e| storage_err(&file.path, &e))?;
        let Some(state) = bytes.and_then(|b| serde_json::from_slice::<FileState>(&b).ok()) else {
            return Ok(None);
        };
        let on_disk = file_size(&dir, &name)
            .await
            .map_err(|e| storage_err(&file.path, &e))?;
        let valid =
            state.size == file.size && state.check == file.check && on_disk == Some(file.size);
        Ok(valid.then_some((dir, name)))
    }
}

/// A partial file in OPFS with its open sync access handle (closed on drop).
pub struct OpfsPart {
    access: FileSystemSyncAccessHandle,
    dir: FileSystemDirectoryHandle,
    name: String,
    path: String,
    size: u64,
    check: Check,
    budget: Option<Rc<Cell<u64>>>,
}

impl Drop for OpfsPart {
    fn drop(&mut self) {
        self.access.close();
    }
}

impl PartFile for OpfsPart {
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> DResult<()> {
        if let Some(budget) = &self.budget {
            if (bytes.len() as u64) > budget.get() {
                return Err(DownloadError::QuotaExceeded {
                    file: self.path.clone(),
                    offset,
                    reason: "QuotaExceededError (simulated by the test-only byte budget)".into(),
                    removed: false,
                });
            }
            budget.set(budget.get() - bytes.len() as u64);
        }
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(offset as f64);
        match self.access.write_with_u8_array_and_options(bytes, &opts) {
            Ok(n) if n as usize == bytes.len() => Ok(()),
            Ok(n) => Err(match short_write(n, bytes.len()) {
                Ok(reason) => DownloadError::QuotaExceeded {
                    file: self.path.clone(),
                    offset,
                    reason,
                    removed: false,
                },
                Err(reason) => DownloadError::Storage {
                    file: self.path.clone(),
                    reason: format!("at byte {offset}: {reason}"),
                },
            }),
            Err(e) if dom_name(&e) == "QuotaExceededError" => Err(DownloadError::QuotaExceeded {
                file: self.path.clone(),
                offset,
                reason: format!("{}; {PRIVATE_WINDOW}", js_error_text(&e)),
                removed: false,
            }),
            Err(e) => Err(storage_err(&self.path, &e)),
        }
    }

    async fn read_at(&mut self, offset: u64, len: u64) -> DResult<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(offset as f64);
        let n = self
            .access
            .read_with_u8_array_and_options(&mut buf, &opts)
            .map_err(|e| storage_err(&self.path, &e))?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    async fn checkpoint(&mut self, offset: u64) -> DResult<()> {
        self.access
            .flush()
            .map_err(|e| storage_err(&self.path, &e))?;
        let state = FileState {
            size: self.size,
            check: self.check.clone(),
            offset,
        };
        let json = serde_json::to_vec(&state).expect("plain struct serializes");
        write_small(&self.dir, &format!("{}{PART_SUFFIX}", self.name), &json)
            .await
            .map_err(|e| storage_err(&self.path, &e))
    }
}

impl Store for OpfsStore {
    type Part = OpfsPart;

    async fn is_committed(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<bool> {
        Ok(self.record(plan, file).await?.is_some())
    }

    async fn open_part(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<(OpfsPart, u64)> {
        let err = |e: JsValue| storage_err(&file.path, &e);
        let (dir, name) = self.locate(plan, &file.path, true).await.map_err(err)?;
        // A stale commit record must not outlive a rewrite.
        remove(&dir, &format!("{name}{RECORD_SUFFIX}"), false)
            .await
            .map_err(err)?;
        let handle = file_handle(&dir, &name, true).await.map_err(err)?;
        let access: FileSystemSyncAccessHandle = JsFuture::from(handle.create_sync_access_handle())
            .await
            .and_then(|h| h.dyn_into())
            .map_err(|e| DownloadError::Storage {
                file: file.path.clone(),
                reason: format!(
                    "{} (another tab may be downloading the same file)",
                    js_error_text(&e)
                ),
            })?;
        let len = access.get_size().map_err(err)? as u64;
        let state = read_small(&dir, &format!("{name}{PART_SUFFIX}"))
            .await
            .map_err(err)?;
        let offset = match state.and_then(|b| serde_json::from_slice::<FileState>(&b).ok()) {
            Some(s) if s.size == file.size && s.check == file.check => s.offset.min(len),
            _ => {
                access.truncate_with_f64(0.0).map_err(err)?;
                0
            }
        };
        let part = OpfsPart {
            access,
            dir,
            name,
            path: file.path.clone(),
            size: file.size,
            check: file.check.clone(),
            budget: self.budget.clone(),
        };
        Ok((part, offset))
    }

    async fn commit(&self, _plan: &DownloadPlan, file: &FilePlan, part: OpfsPart) -> DResult<()> {
        let err = |e: JsValue| storage_err(&file.path, &e);
        part.access
            .truncate_with_f64(file.size as f64)
            .map_err(err)?;
        part.access.flush().map_err(err)?;
        let (dir, name) = (part.dir.clone(), part.name.clone());
        drop(part);
        let record = FileState {
            size: file.size,
            check: file.check.clone(),
            offset: file.size,
        };
        let json = serde_json::to_vec(&record).expect("plain struct serializes");
        write_small(&dir, &format!("{name}{RECORD_SUFFIX}"), &json)
            .await
            .map_err(err)?;
        remove(&dir, &format!("{name}{PART_SUFFIX}"), false)
            .await
            .map_err(err)
    }

    async fn discard(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<()> {
        let err = |e: JsValue| storage_err(&file.path, &e);
        let Ok((dir, name)) = self.locate(plan, &file.path, false).await else {
            return Ok(());
        };
        // The record goes first: from then on the file is not served, whatever happens next.
        for n in [
            format!("{name}{RECORD_SUFFIX}"),
            format!("{name}{PART_SUFFIX}"),
            name.clone(),
        ] {
            remove(&dir, &n, false).await.map_err(err)?;
        }
        Ok(())
    }

    async fn present_bytes(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<u64> {
        if self.is_committed(plan, file).await? {
            return Ok(file.size);
        }
        let Ok((dir, name)) = self.locate(plan, &file.path, false).await else {
            return Ok(0);
        };
        let state = read_small(&dir, &format!("{name}{PART_SUFFIX}"))
            .await
            .map_err(|e| storage_err(&file.path, &e))?;
        let len = file_size(&dir, &name)
            .await
            .map_err(|e| storage_err(&file.path, &e))?
            .unwrap_or(0);
        Ok(
            match state.and_then(|b| serde_json::from_slice::<FileState>(&b).ok()) {
                Some(s) if s.size == file.size && s.check == file.check => s.offset.min(len),
                _ => 0,
            },
        )
    }
}

/// The origin's storage as the browser reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StorageStatus {
    /// Whether the origin's storage is persistent (not evicted under pressure).
    pub persisted: bool,
    /// Bytes used by the origin.
    pub usage: u64,
    /// Bytes the origin may use.
    pub quota: u64,
}

/// Asks for persistent storage where the context allows it (`persist()` exists on pages,
/// not in workers, where `persisted()` is read instead), then reads `estimate()`.
pub async fn storage_status() -> DResult<StorageStatus> {
    let err = |e: JsValue| storage_err("navigator.storage", &e);
    let manager = storage_manager().map_err(err)?;
    let has_persist = Reflect::has(&manager, &"persist".into()).unwrap_or(false);
    let promise = if has_persist {
        manager.persist()
    } else {
        manager.persisted()
    }
    .map_err(err)?;
    let persisted = JsFuture::from(promise)
        .await
        .map(|v| v.as_bool() == Some(true))
        .unwrap_or(false);
    let estimate: web_sys::StorageEstimate = JsFuture::from(manager.estimate().map_err(err)?)
        .await
        .map_err(err)?
        .unchecked_into();
    Ok(StorageStatus {
        persisted,
        usage: estimate.get_usage().unwrap_or(0.0) as u64,
        quota: estimate.get_quota().unwrap_or(0.0) as u64,
    })
}

/// Refuses a download of `needed` more bytes up front when `status` cannot hold it (with a
/// 5 % margin for the browser's own bookkeeping).
pub fn check_quota(needed: u64, status: &StorageStatus) -> DResult<()> {
    let available = status.quota.saturating_sub(status.usage);
    if needed.saturating_add(needed / 20) <= available {
        return Ok(());
    }
    let hint = if status.persisted {
        "; free disk space or delete cached models".to_owned()
    } else {
        "; allow persistent storage for this site (Firefox asks; Chrome grants it to installed or bookmarked sites), free disk space, or delete cached models".to_owned()
    };
    Err(DownloadError::QuotaTooSmall {
        needed,
        needed_gb: needed as f64 / 1e9,
        available,
        available_gb: available as f64 / 1e9,
        quota: status.quota,
        usage: status.usage,
        hint,
    })
}

/// One file of a cached model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedFile {
    /// Path in the repository.
    pub path: String,
    /// Bytes stored.
    pub bytes: u64,
    /// Verified and committed (else a partial download).
    pub complete: bool,
}

/// One cached model revision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedModel {
    /// `owner/name`.
    pub repo: String,
    /// The commit.
    pub revision: String,
    /// Its files.
    pub files: Vec<CachedFile>,
    /// Bytes of committed files.
    pub complete_bytes: u64,
    /// Bytes of partial downloads.
    pub partial_bytes: u64,
}

fn walk<'a>(
    dir: FileSystemDirectoryHandle,
    prefix: String,
    out: &'a mut Vec<CachedFile>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), JsValue>> + 'a>> {
    Box::pin(async move {
        let list = entries(&dir).await?;
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        for (name, handle) in &list {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            match handle.kind() {
                FileSystemHandleKind::Directory => {
                    walk(handle.clone().unchecked_into(), path, out).await?
                }
                _ if name.ends_with(PART_SUFFIX) || name.ends_with(RECORD_SUFFIX) => {}
                _ => {
                    let bytes = file_size(&dir, name).await?.unwrap_or(0);
                    let complete = names.contains(&format!("{name}{RECORD_SUFFIX}").as_str());
                    out.push(CachedFile {
                        path,
                        bytes,
                        complete,
                    });
                }
            }
        }
        Ok(())
    })
}

/// Every model revision in `folder` (the app uses [`MODELS_DIR`]) with its files.
pub async fn list_cached(folder: &str) -> DResult<Vec<CachedModel>> {
    let err = |e: JsValue| storage_err(folder, &e);
    let root = opfs_root().await.map_err(err)?;
    let models = subdir(&root, folder, true).await.map_err(err)?;
    let mut out = Vec::new();
    for (owner, h1) in entries(&models).await.map_err(err)? {
        let Some(owner_dir) = h1.dyn_ref::<FileSystemDirectoryHandle>() else {
            continue;
        };
        for (name, h2) in entries(owner_dir).await.map_err(err)? {
            let Some(name_dir) = h2.dyn_ref::<FileSystemDirectoryHandle>() else {
                continue;
            };
            for (revision, h3) in entries(name_dir).await.map_err(err)? {
                let Some(rev_dir) = h3.dyn_ref::<FileSystemDirectoryHandle>() else {
                    continue;
                };
                let mut files = Vec::new();
                walk(rev_dir.clone(), String::new(), &mut files)
                    .await
                    .map_err(err)?;
                let complete_bytes = files.iter().filter(|f| f.complete).map(|f| f.bytes).sum();
                let partial_bytes = files.iter().filter(|f| !f.complete).map(|f| f.bytes).sum();
                out.push(CachedModel {
                    repo: format!("{owner}/{name}"),
                    revision,
                    files,
                    complete_bytes,
                    partial_bytes,
                });
            }
        }
    }
    Ok(out)
}

/// Deletes one cached model revision (`revision` `None`: every revision of `repo`).
pub async fn delete_cached(folder: &str, repo: &str, revision: Option<&str>) -> DResult<()> {
    let err = |e: JsValue| storage_err(repo, &e);
    let root = opfs_root().await.map_err(err)?;
    let Some((owner, name)) = repo.split_once('/') else {
        return Err(DownloadError::Storage {
            file: repo.into(),
            reason: "not owner/name".into(),
        });
    };
    let Ok(dir) = subdir(&root, folder, false).await else {
        return Ok(());
    };
    let Ok(owner_dir) = subdir(&dir, owner, false).await else {
        return Ok(());
    };
    match revision {
        None => remove(&owner_dir, name, true).await.map_err(err),
        Some(rev) => match subdir(&owner_dir, name, false).await {
            Ok(name_dir) => remove(&name_dir, rev, true).await.map_err(err),
            Err(_) => Ok(()),
        },
    }
}

/// Deletes a whole top-level OPFS folder (every cached model when given [`MODELS_DIR`]).
pub async fn delete_folder(folder: &str) -> DResult<()> {
    let root = opfs_root().await.map_err(|e| storage_err(folder, &e))?;
    remove(&root, folder, true)
        .await
        .map_err(|e| storage_err(folder, &e))
}

/// A `WeightSource` over one committed model revision in OPFS: only files with a commit
/// record are visible; reads are byte ranges (`File.slice`), never whole files.
pub struct OpfsSource {
    store: OpfsStore,
    plan: DownloadPlan,
    /// Files whose commit record was checked, as `File` snapshots: later reads slice them
    /// without walking folders and re-reading records (a snapshot of a file changed since
    /// fails to read rather than giving other bytes).
    verified: std::cell::RefCell<std::collections::HashMap<String, web_sys::File>>,
}

impl OpfsSource {
    /// The source for `repo@revision` in `folder` (the app uses [`MODELS_DIR`]). `plan` gives
    /// the expected size and hash of each file (the download's plan).
    pub async fn open(folder: &str, plan: DownloadPlan) -> Result<Self> {
        let store = OpfsStore::open_at(folder).await?;
        Ok(Self {
            store,
            plan,
            verified: Default::default(),
        })
    }

    /// The source for the committed files of `repo@revision` in `folder`, from their commit
    /// records alone (offline, after a reload: no listing needed). Partial files are left out.
    pub async fn open_cached(folder: &str, repo: &str, revision: &str) -> Result<Self> {
        let store = OpfsStore::open_at(folder).await?;
        let mut plan = DownloadPlan {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            files: Vec::new(),
        };
        let js = |e: JsValue| Error::Source {
            file: format!("{repo}@{revision}"),
            reason: js_error_text(&e),
        };
        let mut dir = store.root.clone();
        for seg in repo.split('/').chain([revision]) {
            dir = subdir(&dir, seg, false).await.map_err(|e| Error::Source {
                file: format!("{repo}@{revision}"),
                reason: format!("not in the browser's model cache ({})", js_error_text(&e)),
            })?;
        }
        let mut found = Vec::new();
        walk(dir.clone(), String::new(), &mut found)
            .await
            .map_err(js)?;
        for f in found.into_iter().filter(|f| f.complete) {
            let (folder_path, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
            let mut d = dir.clone();
            for seg in folder_path.split('/').filter(|s| !s.is_empty()) {
                d = subdir(&d, seg, false).await.map_err(js)?;
            }
            let record = read_small(&d, &format!("{name}{RECORD_SUFFIX}"))
                .await
                .map_err(js)?;
            if let Some(state) = record.and_then(|b| serde_json::from_slice::<FileState>(&b).ok()) {
                plan.files.push(FilePlan {
                    path: f.path.clone(),
                    size: state.size,
                    check: state.check,
                    url: String::new(),
                });
            }
        }
        Ok(Self {
            store,
            plan,
            verified: Default::default(),
        })
    }

    /// The committed files this source serves (all of the plan's, once downloaded).
    pub fn files(&self) -> &[FilePlan] {
        &self.plan.files
    }

    /// The revision's plan (repository, commit, files).
    pub fn plan(&self) -> &DownloadPlan {
        &self.plan
    }

    /// Serves `file` too: a committed file of this revision that the hub does not list (one
    /// made in the browser, from [`OpfsStore::committed_file`] or
    /// [`store_quantized`](crate::download::derived::store_quantized)).
    pub fn add_file(&mut self, file: FilePlan) {
        self.plan.files.retain(|f| f.path != file.path);
        self.plan.files.push(file);
    }

    fn entry(&self, file: &str) -> Result<&FilePlan> {
        self.plan
            .files
            .iter()
            .find(|f| f.path == file)
            .ok_or_else(|| Error::Source {
                file: file.to_owned(),
                reason: format!("not part of {}@{}", self.plan.repo, self.plan.revision),
            })
    }
}

impl WeightSource for OpfsSource {
    async fn exists(&self, file: &str) -> Result<bool> {
        match self.entry(file) {
            Ok(_) if self.verified.borrow().contains_key(file) => Ok(true),
            Ok(f) => Ok(self.store.is_committed(&self.plan, f).await?),
            Err(_) => Ok(false),
        }
    }

    async fn size(&self, file: &str) -> Result<u64> {
        let f = self.entry(file)?;
        if self.verified.borrow().contains_key(file) {
            return Ok(f.size);
        }
        if !self.store.is_committed(&self.plan, f).await? {
            return Err(Error::Source {
                file: file.into(),
                reason: "not downloaded and verified yet".into(),
            });
        }
        Ok(f.size)
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = self.entry(file)?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= f.size)
            .ok_or_else(|| Error::Source {
                file: file.into(),
                reason: format!(
                    "range {offset}+{len} is outside the file ({} bytes)",
                    f.size
                ),
            })?;
        let js = |e: JsValue| Error::Source {
            file: file.into(),
            reason: js_error_text(&e),
        };
        let cached = self.verified.borrow().get(file).cloned();
        let blob = match cached {
            Some(blob) => blob,
            None => {
                let Some((dir, name)) = self.store.record(&self.plan, f).await? else {
                    return Err(Error::Source {
                        file: file.into(),
                        reason: "not downloaded and verified yet".into(),
                    });
                };
                let handle = file_handle(&dir, &name, false).await.map_err(js)?;
                let blob: web_sys::File = JsFuture::from(handle.get_file())
                    .await
                    .map_err(js)?
                    .dyn_into()
                    .map_err(js)?;
                self.verified
                    .borrow_mut()
                    .insert(file.to_owned(), blob.clone());
                blob
            }
        };
        let slice = blob
            .slice_with_f64_and_f64(offset as f64, end as f64)
            .map_err(js)?;
        let buf = JsFuture::from(slice.array_buffer()).await.map_err(js)?;
        let bytes = Uint8Array::new(&buf).to_vec();
        if bytes.len() as u64 != len {
            return Err(Error::Source {
                file: file.into(),
                reason: format!("read {} of {len} bytes at {offset}", bytes.len()),
            });
        }
        Ok(bytes)
    }
}

/// Writes a small file `name` in the top-level OPFS folder `folder` (worker only).
pub async fn write_record(folder: &str, name: &str, bytes: &[u8]) -> DResult<()> {
    let err = |e: JsValue| storage_err(&format!("{folder}/{name}"), &e);
    let root = opfs_root().await.map_err(err)?;
    let dir = subdir(&root, folder, true).await.map_err(err)?;
    write_small(&dir, name, bytes).await.map_err(err)
}

/// Reads the small file `name` of the top-level OPFS folder `folder` (`None` when missing).
pub async fn read_record(folder: &str, name: &str) -> DResult<Option<Vec<u8>>> {
    let err = |e: JsValue| storage_err(&format!("{folder}/{name}"), &e);
    let root = opfs_root().await.map_err(err)?;
    let Ok(dir) = subdir(&root, folder, false).await else {
        return Ok(None);
    };
    read_small(&dir, name).await.map_err(err)
}

/// Removes the small file `name` of the top-level OPFS folder `folder` (missing is fine).
pub async fn remove_record(folder: &str, name: &str) -> DResult<()> {
    let err = |e: JsValue| storage_err(&format!("{folder}/{name}"), &e);
    let root = opfs_root().await.map_err(err)?;
    let Ok(dir) = subdir(&root, folder, false).await else {
        return Ok(());
    };
    remove(&dir, name, false).await.map_err(err)
}
