//! What can go wrong while planning, downloading, verifying or storing model files. Every
//! variant names the file or URL and the numbers involved, so it can be shown as it is.

/// A download failure. Transient causes (network errors, 429, 5xx, short bodies) are retried
/// inside the engine; what reaches the caller is final.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DownloadError {
    /// The server says the repository, revision or file does not exist (404). Not retried.
    #[error("{url}: not found (HTTP {status}){detail}")]
    NotFound {
        /// The URL asked for.
        url: String,
        /// 404 (or 410).
        status: u16,
        /// The hub's own message, `": ..."`, or empty.
        detail: String,
    },
    /// The server refuses access (401/403): a gated or private repository, or an expired CDN
    /// signature that could not be renewed. Not retried.
    #[error(
        "{url}: access refused (HTTP {status}){detail}; the repository may be gated or private"
    )]
    Forbidden {
        /// The URL asked for.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The hub's own message, `": ..."`, or empty.
        detail: String,
    },
    /// Retryable HTTP statuses (429, 5xx) kept coming back until the retry budget ran out.
    #[error(
        "{url}: HTTP {status} after {attempts} attempts; the server is overloaded or rate-limiting, try again later"
    )]
    Unavailable {
        /// The URL asked for.
        url: String,
        /// The last status.
        status: u16,
        /// How many requests were made.
        attempts: u32,
    },
    /// Any other unexpected HTTP status.
    #[error("{url}: unexpected HTTP {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status.
        status: u16,
    },
    /// The connection failed (refused, reset, cut mid-body) until the retry budget ran out.
    #[error("{url}: network error after {attempts} attempts: {reason}")]
    Network {
        /// The URL asked for.
        url: String,
        /// What the transport said last.
        reason: String,
        /// How many requests were made.
        attempts: u32,
    },
    /// The server kept redirecting (a loop, or more hops than allowed).
    #[error("{url}: too many redirects or a broken redirect{detail}")]
    RedirectLoop {
        /// The URL asked for.
        url: String,
        /// How many redirects were followed (0 where the browser does not say; the detail
        /// then says what is known).
        hops: u32,
        /// Extra words where the browser hides the cause.
        detail: String,
    },
    /// The server answered with bytes other than the ones asked for, repeatedly (a wrong
    /// `Content-Range`, a body shorter than announced).
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL asked for.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The file's contents do not match the hash published for it, on every attempt.
    #[error(
        "\"{file}\": {algorithm} mismatch after {attempts} full downloads (expected {expected}, got {actual}); the download was discarded"
    )]
    Integrity {
        /// The file, relative to the repository root.
        file: String,
        /// "sha256" (LFS files) or "git blob sha1" (small regular files).
        algorithm: &'static str,
        /// The published hash.
        expected: String,
        /// The hash of the last download.
        actual: String,
        /// How many times the whole file was downloaded.
        attempts: u32,
    },
    /// The repository listing (or the revision lookup) could not be used.
    #[error("model listing: {reason}")]
    Plan {
        /// What is wrong.
        reason: String,
    },
    /// The browser's storage cannot hold the download (checked before starting).
    #[error(
        "not enough browser storage: the download needs {needed} bytes ({needed_gb:.2} GB) more, but only {available} bytes ({available_gb:.2} GB) are available (quota {quota}, used {usage}){hint}"
    )]
    QuotaTooSmall {
        /// Bytes still to download.
        needed: u64,
        /// `needed` in GB (10⁹).
        needed_gb: f64,
        /// quota − usage.
        available: u64,
        /// `available` in GB.
        available_gb: f64,
        /// The origin's quota.
        quota: u64,
        /// The origin's usage.
        usage: u64,
        /// Advice (persistence, freeing space).
        hint: String,
    },
    /// Storage ran out while writing (`QuotaExceededError`, a short write).
    #[error(
        "\"{file}\": storage full while writing at byte {offset} ({reason}); {}",
        if *.removed {
            "the partial file was removed, free space and retry"
        } else {
            "what it holds is kept, free space and resume"
        }
    )]
    QuotaExceeded {
        /// The file being written.
        file: String,
        /// Where the write failed.
        offset: u64,
        /// The storage's message.
        reason: String,
        /// Whether the partial file was removed (a download's is; a copy made as its
        /// checkpoint arrives keeps what it holds). A store's write says `false`; whoever
        /// removes the file sets it.
        removed: bool,
    },
    /// Another storage failure (OPFS or filesystem).
    #[error("storage \"{file}\": {reason}")]
    Storage {
        /// The file or folder.
        file: String,
        /// What failed.
        reason: String,
    },
    /// The caller cancelled the download.
    #[error("download cancelled")]
    Cancelled,
}

/// `Result` with a [`DownloadError`].
pub type DResult<T> = core::result::Result<T, DownloadError>;
