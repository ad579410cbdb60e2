//! The download engine, the same on every platform: plan discovery through the hub API, then
//! per file: resume from the durable offset (re-hashing the bytes already stored), Range
//! requests of `chunk_bytes`, retries with backoff, checks of every answer (status,
//! `Content-Range`, length, `ETag`), incremental hashing, and a commit only after the hash
//! matches. The HTTP client and the storage are traits: `ureq` + a folder natively
//! ([`super::native`]), `fetch` + OPFS in the browser worker (`crate::web::download`).

use std::cell::{Cell, RefCell};
use std::time::Duration;

use futures_util::StreamExt;

use super::error::{DResult, DownloadError};
use super::plan::{DownloadPlan, FilePlan, SourceSpec, commit_from_model_info, is_commit};
use super::progress::{Progress, ProgressTracker};
use super::retry::{
    DownloadOptions, StatusClass, classify, parse_content_range, parse_retry_after,
};
use super::verify::{Check, etag_sha256};

/// The parts of an HTTP answer the engine reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseHead {
    /// The status after redirects were followed.
    pub status: u16,
    /// The URL that answered (after redirects).
    pub url: String,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range`.
    pub content_range: Option<String>,
    /// `ETag` of the final answer.
    pub etag: Option<String>,
    /// `X-Linked-Etag` (the hub's redirect carries the LFS sha256 there).
    pub linked_etag: Option<String>,
    /// `Retry-After`.
    pub retry_after: Option<String>,
    /// `X-Error-Message` (the hub's reason for a 4xx).
    pub error_message: Option<String>,
}

/// A failure below HTTP.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// Connection refused, reset, cut mid-body, or an unreadable answer.
    Network(String),
    /// Redirects did not end.
    RedirectLoop {
        /// Hops followed (0 where unknown).
        hops: u32,
        /// Extra words for the message.
        detail: String,
    },
}

/// An HTTP client: GET with an optional byte range (inclusive), following redirects.
#[allow(async_fn_in_trait)]
pub trait HttpClient {
    /// The body of an answer, read piece by piece.
    type Body: ResponseBody;
    /// `GET url` with `Range: bytes=a-b` when `range` is given.
    async fn get(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(ResponseHead, Self::Body), TransportError>;
    /// Waits (backoff).
    async fn sleep(&self, duration: Duration);
    /// A monotonic clock in milliseconds (for the rate).
    fn now_ms(&self) -> f64;
}

/// A response body stream.
#[allow(async_fn_in_trait)]
pub trait ResponseBody {
    /// The next piece of the body, `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError>;
}

/// Storage for downloaded files: a partial file with a durable resume offset, and a commit
/// that makes a verified file visible. A file is *present* only once committed.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// An open partial file.
    type Part: PartFile;
    /// Whether `file` is committed (verified earlier) with the plan's size and hash.
    async fn is_committed(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<bool>;
    /// Opens or creates the partial file; returns it and the offset up to which its bytes are
    /// durable for this exact file (same size and hash; 0 otherwise).
    async fn open_part(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<(Self::Part, u64)>;
    /// Makes the verified partial file the committed one.
    async fn commit(&self, plan: &DownloadPlan, file: &FilePlan, part: Self::Part) -> DResult<()>;
    /// Removes every trace of `file` (partial data, resume state, commit).
    async fn discard(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<()>;
    /// Bytes of `file` already present: its size if committed, else its durable partial offset.
    async fn present_bytes(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<u64>;
}

/// A partial file being written.
#[allow(async_fn_in_trait)]
pub trait PartFile {
    /// Writes `bytes` at `offset`. Running out of space is [`DownloadError::QuotaExceeded`].
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> DResult<()>;
    /// Reads `len` bytes at `offset` (to re-hash the stored prefix when resuming).
    async fn read_at(&mut self, offset: u64, len: u64) -> DResult<Vec<u8>>;
    /// Flushes and records `offset` as the durable resume point.
    async fn checkpoint(&mut self, offset: u64) -> DResult<()>;
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileOutcome {
    /// Path in the repository.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// It was committed before this run; nothing was fetched.
    pub already_present: bool,
    /// Where this run started in the file (its durable partial offset).
    pub resumed_from: u64,
    /// Bytes written from the network in this run.
    pub bytes_fetched: u64,
    /// HTTP requests made for the file's bytes.
    pub requests: u32,
    /// Requests that failed or came back short and were retried.
    pub retries: u32,
    /// Whole downloads thrown away because the hash did not match.
    pub integrity_failures: u32,
}

/// The result of [`download_plan`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DownloadReport {
    /// One entry per file, in plan order.
    pub files: Vec<FileOutcome>,
    /// The final progress.
    pub progress: Progress,
}

/// Shared state of a running download: options, progress and the caller's hooks.
pub struct Session<'a> {
    /// Chunking and retry settings.
    pub options: DownloadOptions,
    tracker: RefCell<ProgressTracker>,
    on_progress: &'a dyn Fn(&Progress),
    cancelled: &'a dyn Fn() -> bool,
    /// Set when one file of [`download_plan`] has failed: the others stop at their next check.
    failed: Cell<bool>,
}

impl<'a> Session<'a> {
    /// A session for `plan`; `on_progress` gets every update, `cancelled` is polled between pieces.
    pub fn new(
        plan: &DownloadPlan,
        options: DownloadOptions,
        on_progress: &'a dyn Fn(&Progress),
        cancelled: &'a dyn Fn() -> bool,
    ) -> Self {
        Self {
            options,
            tracker: RefCell::new(ProgressTracker::new(plan.total_bytes(), plan.files.len())),
            on_progress,
            cancelled,
            failed: Cell::new(false),
        }
    }

    fn emit(&self) {
        let snapshot = self.tracker.borrow().snapshot();
        (self.on_progress)(&snapshot);
    }

    /// Whether the caller cancelled or another file of the plan failed.
    fn stopping(&self) -> bool {
        self.failed.get() || (self.cancelled)()
    }

    fn check_cancel(&self) -> DResult<()> {
        if self.stopping() {
            Err(DownloadError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// GETs a small JSON document (API), retrying transient failures.
async fn get_small<C: HttpClient>(
    client: &C,
    url: &str,
    opts: &DownloadOptions,
) -> DResult<Vec<u8>> {
    Ok(get_retrying(client, url, None, opts).await?.1)
}

/// GETs `url` (bytes `range`, inclusive, when given), retrying transient failures (network
/// errors, a body cut short, 429/5xx with backoff honouring `Retry-After`): the answer's head
/// and its body. A `206` must bring every byte asked for (else it is retried); a server that
/// ignores the Range header answers `200` with the whole file, of which no more is read than
/// the asked range needs (the caller slices it).
pub(crate) async fn get_retrying<C: HttpClient>(
    client: &C,
    url: &str,
    range: Option<(u64, u64)>,
    opts: &DownloadOptions,
) -> DResult<(ResponseHead, Vec<u8>)> {
    let mut failures = 0;
    loop {
        let retry_after;
        let reason;
        match client.get(url, range).await {
            Err(TransportError::RedirectLoop { hops, detail }) => {
                return Err(DownloadError::RedirectLoop {
                    url: url.into(),
                    hops,
                    detail,
                });
            }
            Err(TransportError::Network(e)) => {
                retry_after = None;
                reason = Err(e);
            }
            Ok((head, mut body)) => match classify(head.status) {
                StatusClass::Ok => {
                    // Enough of the body: the asked range of a 206, or of a whole file.
                    let enough = range.map(|(a, b)| match head.status {
                        206 => b - a + 1,
                        _ => b + 1,
                    });
                    let mut out = Vec::new();
                    let mut failed = None;
                    while enough.is_none_or(|n| (out.len() as u64) < n) {
                        match body.next_chunk().await {
                            Ok(Some(b)) => out.extend_from_slice(&b),
                            Ok(None) => break,
                            Err(TransportError::Network(e))
                            | Err(TransportError::RedirectLoop { detail: e, .. }) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let short = enough.filter(|&n| head.status == 206 && (out.len() as u64) < n);
                    if let Some(n) = short {
                        failed.get_or_insert(format!(
                            "the body ended after {} of the {n} bytes asked for",
                            out.len()
                        ));
                    }
                    match failed {
                        None => return Ok((head, out)),
                        Some(e) => {
                            retry_after = None;
                            reason = Err(e);
                        }
                    }
                }
                StatusClass::Retry => {
                    retry_after = head.retry_after.as_deref().and_then(parse_retry_after);
                    reason = Ok(head.status);
                }
                class => return Err(status_error(url, &head, class)),
            },
        }
        failures += 1;
        if failures > opts.max_retries {
            return Err(match reason {
                Ok(status) => DownloadError::Unavailable {
                    url: url.into(),
                    status,
                    attempts: failures,
                },
                Err(e) => DownloadError::Network {
                    url: url.into(),
                    reason: e,
                    attempts: failures,
                },
            });
        }
        client.sleep(opts.backoff(failures, retry_after)).await;
    }
}

fn detail(head: &ResponseHead) -> String {
    head.error_message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

/// The final error for a status that is not retried.
fn status_error(url: &str, head: &ResponseHead, class: StatusClass) -> DownloadError {
    let (url, status, detail) = (url.to_owned(), head.status, detail(head));
    match class {
        StatusClass::NotFound => DownloadError::NotFound {
            url,
            status,
            detail,
        },
        StatusClass::Forbidden => DownloadError::Forbidden {
            url,
            status,
            detail,
        },
        _ => DownloadError::Status { url, status },
    }
}

/// Resolves the revision to a commit (when it is a branch) and lists the files through the
/// tree API.
pub async fn discover<C: HttpClient>(
    client: &C,
    spec: &SourceSpec,
    opts: &DownloadOptions,
) -> DResult<DownloadPlan> {
    spec.validate()?;
    let commit = if is_commit(&spec.revision) {
        spec.revision.to_ascii_lowercase()
    } else {
        let info = get_small(client, &spec.revision_url(), opts).await?;
        commit_from_model_info(spec, &info)?
    };
    let tree = get_small(client, &spec.tree_url(&commit), opts).await?;
    DownloadPlan::from_tree(spec, &commit, &tree)
}

/// Downloads every file of `plan` not yet committed, `options.parallel_files` at a time; stops
/// at the first final error (other files keep their durable partial state).
pub async fn download_plan<C: HttpClient, S: Store>(
    client: &C,
    store: &S,
    plan: &DownloadPlan,
    session: &Session<'_>,
) -> DResult<DownloadReport> {
    let parallel = session.options.parallel_files.max(1);
    // Every file future runs to its end: the first failure makes the others stop at their next
    // check instead of being dropped mid-await, which in a browser could leave an OPFS access
    // handle being created with nobody to close it (the file then stays locked).
    let results: Vec<DResult<FileOutcome>> = futures_util::stream::iter(plan.files.iter())
        .map(|file| async move {
            session.check_cancel()?;
            let result = download_file(client, store, plan, file, session).await;
            if result.is_err() {
                session.failed.set(true);
            }
            result
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut files = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Ok(outcome) => files.push(outcome),
            // The failure that stopped the others, not the `Cancelled` it made them return.
            Err(e) if first_error.is_none() || first_error == Some(DownloadError::Cancelled) => {
                first_error = Some(e)
            }
            Err(_) => {}
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let order = |p: &str| plan.files.iter().position(|f| f.path == p);
    files.sort_by_key(|f| order(&f.path));
    session.emit();
    Ok(DownloadReport {
        files,
        progress: session.tracker.borrow().snapshot(),
    })
}

/// Bytes of `plan` that still have to be fetched (for the quota check before starting).
pub async fn remaining_bytes<S: Store>(store: &S, plan: &DownloadPlan) -> DResult<u64> {
    let mut left = 0;
    for f in &plan.files {
        left += f.size - store.present_bytes(plan, f).await?.min(f.size);
    }
    Ok(left)
}

/// How one Range request went, for the retry logic.
enum Attempt {
    /// The requested bytes arrived (the file may still need more chunks).
    Complete,
    /// Something failed; retry after a wait.
    Retry {
        reason: Result<u16, String>,
        retry_after: Option<Duration>,
        progressed: bool,
    },
    /// The stored prefix is not usable (416): start the file again.
    Restart,
}

/// Downloads one file: resume, chunks, retries, verification, commit. On a final error the
/// file keeps its durable partial bytes for a later resume (never served: not committed); an
/// entry with no durable bytes is removed, so failures leave no empty files behind.
pub async fn download_file<C: HttpClient, S: Store>(
    client: &C,
    store: &S,
    plan: &DownloadPlan,
    file: &FilePlan,
    session: &Session<'_>,
) -> DResult<FileOutcome> {
    let result = download_file_inner(client, store, plan, file, session).await;
    if let Err(e) = &result
        && *e != DownloadError::Cancelled
        && store.present_bytes(plan, file).await? == 0
    {
        store.discard(plan, file).await?;
    }
    result
}

async fn download_file_inner<C: HttpClient, S: Store>(
    client: &C,
    store: &S,
    plan: &DownloadPlan,
    file: &FilePlan,
    session: &Session<'_>,
) -> DResult<FileOutcome> {
    let opts = &session.options;
    let mut outcome = FileOutcome {
        path: file.path.clone(),
        size: file.size,
        already_present: false,
        resumed_from: 0,
        bytes_fetched: 0,
        requests: 0,
        retries: 0,
        integrity_failures: 0,
    };
    if store.is_committed(plan, file).await? {
        outcome.already_present = true;
        let mut t = session.tracker.borrow_mut();
        t.add_present(file.size);
        t.file_done();
        drop(t);
        session.emit();
        return Ok(outcome);
    }
    // The CDN URL the hub redirected to, reused for the following chunks.
    let mut cdn_url: Option<String> = None;
    let mut first_pass = true;
    let mut restarts = 0u32;
    loop {
        session.check_cancel()?;
        let (mut part, durable) = store.open_part(plan, file).await?;
        let mut offset = durable.min(file.size);
        // Re-hash what is already stored: the hash state is not persisted, the bytes are.
        let mut hasher = file.check.hasher(file.size);
        let mut pos = 0;
        while pos < offset {
            let n = (offset - pos).min(8 << 20);
            let bytes = part.read_at(pos, n).await?;
            if bytes.len() as u64 != n {
                offset = pos; // the stored file is shorter than its state says
                break;
            }
            hasher.update(&bytes);
            pos += n;
        }
        if first_pass {
            outcome.resumed_from = offset;
            first_pass = false;
        }
        session.tracker.borrow_mut().add_present(offset);
        let mut failures = 0u32;
        let mut renewed = false;
        let mut restart = false;
        while offset < file.size {
            session.check_cancel()?;
            let end = (offset + opts.chunk_bytes.max(1)).min(file.size) - 1;
            let url = cdn_url.clone().unwrap_or_else(|| file.url.clone());
            outcome.requests += 1;
            let response = client.get(&url, Some((offset, end))).await;
            let redirect_failed =
                matches!(response, Err(TransportError::RedirectLoop { hops: 0, .. }));
            let attempt = match response {
                // The browser cannot tell a loop from a CDN that fails after the redirect
                // (hops 0): retried like a network error, reported as a redirect failure.
                Err(TransportError::RedirectLoop { hops: 0, detail }) => Attempt::Retry {
                    reason: Err(detail),
                    retry_after: None,
                    progressed: false,
                },
                Err(TransportError::RedirectLoop { hops, detail }) => {
                    return Err(DownloadError::RedirectLoop {
                        url: file.url.clone(),
                        hops,
                        detail,
                    });
                }
                Err(TransportError::Network(e)) => Attempt::Retry {
                    reason: Err(e),
                    retry_after: None,
                    progressed: false,
                },
                Ok((head, body)) => match classify(head.status) {
                    StatusClass::Ok => {
                        check_etag(file, &head)?;
                        if head.url != file.url && !head.url.is_empty() {
                            cdn_url = Some(head.url.clone());
                        }
                        let before = offset;
                        let result = receive(
                            file,
                            &head,
                            body,
                            &mut part,
                            &mut hasher,
                            &mut offset,
                            end,
                            session,
                            client,
                        )
                        .await;
                        outcome.bytes_fetched += offset - before;
                        let retry_reason = match result {
                            Ok(r) => r,
                            Err(mut err) => {
                                if err == DownloadError::Cancelled {
                                    // Keep what arrived for the next run.
                                    part.checkpoint(offset).await?;
                                }
                                if let DownloadError::QuotaExceeded { removed, .. } = &mut err {
                                    // No half-written entry stays behind.
                                    drop(part);
                                    session.tracker.borrow_mut().remove(offset);
                                    store.discard(plan, file).await?;
                                    *removed = true;
                                }
                                return Err(err);
                            }
                        };
                        part.checkpoint(offset).await?;
                        match retry_reason {
                            Ok(()) => Attempt::Complete,
                            Err(reason) => Attempt::Retry {
                                reason: Err(reason),
                                retry_after: None,
                                progressed: offset > before,
                            },
                        }
                    }
                    StatusClass::Forbidden if cdn_url.is_some() && !renewed => {
                        // A signed CDN URL expired: ask the hub for a fresh one, once.
                        cdn_url = None;
                        renewed = true;
                        Attempt::Retry {
                            reason: Ok(head.status),
                            retry_after: Some(Duration::ZERO),
                            progressed: true,
                        }
                    }
                    StatusClass::Retry => Attempt::Retry {
                        reason: Ok(head.status),
                        retry_after: head.retry_after.as_deref().and_then(parse_retry_after),
                        progressed: false,
                    },
                    StatusClass::RangeNotSatisfiable if restarts < opts.max_retries => {
                        Attempt::Restart
                    }
                    class => return Err(status_error(&file.url, &head, class)),
                },
            };
            match attempt {
                Attempt::Complete => failures = 0,
                Attempt::Restart => {
                    restarts += 1;
                    restart = true;
                    break;
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                    progressed,
                } => {
                    outcome.retries += 1;
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures > opts.max_retries {
                        return Err(match reason {
                            Ok(status) => DownloadError::Unavailable {
                                url: file.url.clone(),
                                status,
                                attempts: failures,
                            },
                            Err(detail) if redirect_failed => DownloadError::RedirectLoop {
                                url: file.url.clone(),
                                hops: 0,
                                detail: format!("{detail} ({failures} attempts)"),
                            },
                            Err(reason) => DownloadError::Network {
                                url: url.clone(),
                                reason,
                                attempts: failures,
                            },
                        });
                    }
                    client.sleep(opts.backoff(failures, retry_after)).await;
                }
            }
        }
        if restart {
            drop(part);
            session.tracker.borrow_mut().remove(offset);
            store.discard(plan, file).await?;
            cdn_url = None;
            continue;
        }
        let actual = hasher.finish_hex();
        if actual == file.check.expected() {
            store.commit(plan, file, part).await?;
            session.tracker.borrow_mut().file_done();
            session.emit();
            return Ok(outcome);
        }
        // Wrong bytes somewhere: nothing of this copy can be trusted.
        drop(part);
        session.tracker.borrow_mut().remove(file.size);
        store.discard(plan, file).await?;
        outcome.integrity_failures += 1;
        if outcome.integrity_failures >= opts.max_integrity_attempts {
            return Err(DownloadError::Integrity {
                file: file.path.clone(),
                algorithm: file.check.algorithm(),
                expected: file.check.expected().to_owned(),
                actual,
                attempts: outcome.integrity_failures,
            });
        }
        cdn_url = None;
    }
}

/// A published sha256 in `X-Linked-Etag`/`ETag` that differs from the plan's means the file
/// changed upstream (a moved branch, a wrong mirror): stop rather than mix two versions.
fn check_etag(file: &FilePlan, head: &ResponseHead) -> DResult<()> {
    let Check::Sha256(expected) = &file.check else {
        return Ok(());
    };
    for tag in [&head.linked_etag, &head.etag].into_iter().flatten() {
        if let Some(sha) = etag_sha256(tag)
            && &sha != expected
        {
            return Err(DownloadError::Protocol {
                url: file.url.clone(),
                reason: format!(
                    "the server's ETag says sha256 {sha}, the listing says {expected}: the file changed upstream"
                ),
            });
        }
    }
    Ok(())
}

/// Streams one answer's body into the part file from `*offset` up to `end` (inclusive; for a
/// `200` answer, which ignored the Range, up to the end of the file). `Ok(())`: all requested
/// bytes arrived. `Ok(Err(reason))`: retry from the new `*offset`. `Err(e)`: final.
#[allow(clippy::too_many_arguments)]
async fn receive<C: HttpClient, B: ResponseBody, P: PartFile>(
    file: &FilePlan,
    head: &ResponseHead,
    mut body: B,
    part: &mut P,
    hasher: &mut super::verify::FileHasher,
    offset: &mut u64,
    end: u64,
    session: &Session<'_>,
    client: &C,
) -> DResult<Result<(), String>> {
    let size = file.size;
    // Where the body starts in the file, and where this request's bytes end (exclusive).
    let (mut pos, stop) = if head.status == 206 {
        let Some((a, b, total)) = head.content_range.as_deref().and_then(parse_content_range)
        else {
            return Ok(Err(format!(
                "206 without a usable Content-Range ({:?})",
                head.content_range
            )));
        };
        if total.is_some_and(|t| t != size) {
            return Err(DownloadError::Protocol {
                url: file.url.clone(),
                reason: format!(
                    "the server says the file has {} bytes, the listing says {size}",
                    total.unwrap_or(0)
                ),
            });
        }
        if a > *offset || b < *offset {
            return Ok(Err(format!(
                "asked for bytes {}-{end}, got {a}-{b}",
                *offset
            )));
        }
        (a, (b + 1).min(end + 1))
    } else {
        // 200: the whole file (a server or proxy that ignores Range). Take the rest of the file
        // from this body instead of asking again per chunk.
        if let Some(len) = head.content_length
            && len != size
        {
            return Ok(Err(format!(
                "a 200 answer of {len} bytes for a file of {size}"
            )));
        }
        (0, size)
    };
    loop {
        session.check_cancel()?;
        let chunk = match body.next_chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(TransportError::Network(e))
            | Err(TransportError::RedirectLoop { detail: e, .. }) => {
                return Ok(Err(format!("connection lost at byte {}: {e}", *offset)));
            }
        };
        let mut piece: &[u8] = &chunk;
        if pos < *offset {
            let skip = ((*offset - pos) as usize).min(piece.len());
            piece = &piece[skip..];
            pos += skip as u64;
        }
        let take = ((stop - pos) as usize).min(piece.len());
        let piece = &piece[..take];
        if !piece.is_empty() {
            part.write_at(pos, piece).await?;
            hasher.update(piece);
            pos += take as u64;
            *offset = pos;
            session
                .tracker
                .borrow_mut()
                .received(&file.path, take as u64, client.now_ms());
            session.emit();
        }
        if pos >= stop {
            return Ok(Ok(()));
        }
    }
    if *offset < stop {
        return Ok(Err(format!(
            "the body ended at byte {} of {} (announced length {:?})",
            *offset, stop, head.content_length
        )));
    }
    Ok(Ok(()))
}
