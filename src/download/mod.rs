//! Getting a model's files from a Hugging Face–style hub into local storage, once, resumably
//! and verified. Platform-independent (tested natively); the HTTP client and the storage are
//! traits implemented natively in [`native`] (ureq + a cache folder, for `qwen-layered fetch`)
//! and in the browser worker in `crate::web::download` / `crate::web::opfs` (fetch + OPFS).
//!
//! - [`plan`]: the source description and the file list from the hub's tree API;
//! - [`engine`]: Range requests in chunks, retries, resume, verification, commit;
//! - [`verify`]: sha256 (LFS) and git-blob-sha1 (regular files), incremental;
//! - [`retry`]: options, backoff, `Retry-After`, status classes;
//! - [`progress`]: bytes, rate, ETA;
//! - [`derived`]: files made from a revision and kept beside it (the stored quantized
//!   transformer and text encoder), committed the same way, also made while their checkpoint
//!   downloads ([`derived::CopyJob`]);
//! - [`HubSource`]: a revision's files read from the hub by Range requests (the headers a
//!   stored copy is planned from, before anything is downloaded).

pub mod derived;
pub mod engine;
mod error;
mod hub;
pub mod plan;
pub mod progress;
pub mod retry;
pub mod verify;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

pub use engine::{
    DownloadReport, FileOutcome, HttpClient, PartFile, ResponseBody, ResponseHead, Session, Store,
    TransportError, discover, download_file, download_plan, remaining_bytes,
};
pub use error::{DResult, DownloadError};
pub use hub::HubSource;
pub use plan::{DEFAULT_BASE_URL, DownloadPlan, FilePlan, SourceSpec};
pub use progress::{Progress, ProgressTracker};
pub use retry::DownloadOptions;
pub use verify::Check;
