//! The native side of the downloader (`qwen-layered fetch`): [`UreqClient`], a blocking HTTP
//! client that follows redirects itself (so a loop is a clear error), and [`DirStore`], a
//! cache folder with `.part` files, a JSON sidecar holding the durable offset, and an atomic
//! rename as the commit.
//!
//! Layout: `{root}/{owner}/{name}/{commit}/{path}` — a diffusers model folder once complete
//! (`decompose --model` reads it); `{path}.part` + `{path}.part.json` while in progress.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::engine::{HttpClient, PartFile, ResponseBody, ResponseHead, Store, TransportError};
use super::error::{DResult, DownloadError};
use super::plan::{DownloadPlan, FilePlan};
use super::verify::Check;

/// Redirect hops followed before [`TransportError::RedirectLoop`].
pub const MAX_REDIRECTS: u32 = 10;

/// A blocking HTTP client (ureq, rustls) for the engine.
pub struct UreqClient {
    agent: ureq::Agent,
    start: Instant,
}

impl Default for UreqClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UreqClient {
    /// A client with 30 s connect and 60 s response-header timeouts, no automatic redirects.
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("qwen-layered/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Self {
            agent,
            start: Instant::now(),
        }
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `location` resolved against `base` (absolute, or an absolute path on the same origin).
fn join_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|s| base[s..].find('/').map(|j| s + j));
    let origin = origin_end.map(|e| &base[..e]).unwrap_or(base);
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

/// A ureq response body.
pub struct UreqBody {
    reader: Option<ureq::BodyReader<'static>>,
}

impl ResponseBody for UreqBody {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 256 << 10];
        match reader.read(&mut buf) {
            Ok(0) => {
                self.reader = None;
                Ok(None)
            }
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) => {
                self.reader = None;
                Err(TransportError::Network(e.to_string()))
            }
        }
    }
}

impl HttpClient for UreqClient {
    type Body = UreqBody;

    async fn get(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(ResponseHead, UreqBody), TransportError> {
        let mut current = url.to_owned();
        let mut linked_etag = None;
        for _hop in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&current);
            if let Some((a, b)) = range {
                req = req.header("Range", format!("bytes={a}-{b}"));
            }
            let resp = req
                .call()
                .map_err(|e| TransportError::Network(e.to_string()))?;
            let status = resp.status().as_u16();
            linked_etag = header(&resp, "x-linked-etag").or(linked_etag);
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let Some(location) = header(&resp, "location") else {
                    return Err(TransportError::Network(format!(
                        "HTTP {status} without Location"
                    )));
                };
                current = join_location(&current, &location);
                continue;
            }
            let head = ResponseHead {
                status,
                url: current.clone(),
                content_length: header(&resp, "content-length").and_then(|v| v.trim().parse().ok()),
                content_range: header(&resp, "content-range"),
                etag: header(&resp, "etag"),
                linked_etag,
                retry_after: header(&resp, "retry-after"),
                error_message: header(&resp, "x-error-message"),
            };
            let reader = resp.into_body().into_reader();
            return Ok((
                head,
                UreqBody {
                    reader: Some(reader),
                },
            ));
        }
        Err(TransportError::RedirectLoop {
            hops: MAX_REDIRECTS + 1,
            detail: format!(" ({} hops, the last to {current})", MAX_REDIRECTS + 1),
        })
    }

    async fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

/// A local cache folder for downloaded models.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

/// The sidecar of a `.part` file.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct PartState {
    size: u64,
    check: Check,
    offset: u64,
}

fn io_err(path: &Path, e: std::io::Error) -> DownloadError {
    DownloadError::Storage {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl DirStore {
    /// A cache rooted at `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder of one model revision: a diffusers model folder once complete.
    pub fn model_dir(&self, plan: &DownloadPlan) -> PathBuf {
        let mut dir = self.root.clone();
        dir.extend(plan.repo.split('/'));
        dir.push(&plan.revision);
        dir
    }

    fn final_path(&self, plan: &DownloadPlan, file: &FilePlan) -> PathBuf {
        let mut p = self.model_dir(plan);
        p.extend(file.path.split('/'));
        p
    }

    fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }

    fn read_state(path: &Path) -> Option<PartState> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

/// A `.part` file and its sidecar.
pub struct DirPart {
    file: File,
    path: PathBuf,
    state_path: PathBuf,
    size: u64,
    check: Check,
}

impl PartFile for DirPart {
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> DResult<()> {
        let res = self
            .file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(bytes));
        res.map_err(|e| match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => DownloadError::QuotaExceeded {
                file: self.path.display().to_string(),
                offset,
                reason: e.to_string(),
                removed: false,
            },
            _ => io_err(&self.path, e),
        })
    }

    async fn read_at(&mut self, offset: u64, len: u64) -> DResult<Vec<u8>> {
        let mut buf = Vec::new();
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&self.path, e))?;
        (&mut self.file)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(&self.path, e))?;
        Ok(buf)
    }

    async fn checkpoint(&mut self, offset: u64) -> DResult<()> {
        self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        let state = PartState {
            size: self.size,
            check: self.check.clone(),
            offset,
        };
        let tmp = DirStore::with_suffix(&self.state_path, ".tmp");
        let json = serde_json::to_vec(&state).expect("plain struct serializes");
        fs::write(&tmp, json)
            .and_then(|_| fs::rename(&tmp, &self.state_path))
            .map_err(|e| io_err(&self.state_path, e))
    }
}

impl Store for DirStore {
    type Part = DirPart;

    async fn is_committed(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<bool> {
        Ok(fs::metadata(self.final_path(plan, file))
            .is_ok_and(|m| m.is_file() && m.len() == file.size))
    }

    async fn open_part(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<(DirPart, u64)> {
        let fin = self.final_path(plan, file);
        if let Some(dir) = fin.parent() {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let path = Self::with_suffix(&fin, ".part");
        let state_path = Self::with_suffix(&fin, ".part.json");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
        let offset = match Self::read_state(&state_path) {
            Some(s) if s.size == file.size && s.check == file.check => s.offset.min(len),
            _ => {
                f.set_len(0).map_err(|e| io_err(&path, e))?;
                0
            }
        };
        Ok((
            DirPart {
                file: f,
                path,
                state_path,
                size: file.size,
                check: file.check.clone(),
            },
            offset,
        ))
    }

    async fn commit(&self, plan: &DownloadPlan, file: &FilePlan, part: DirPart) -> DResult<()> {
        part.file
            .set_len(file.size)
            .map_err(|e| io_err(&part.path, e))?;
        part.file.sync_all().map_err(|e| io_err(&part.path, e))?;
        let fin = self.final_path(plan, file);
        fs::rename(&part.path, &fin).map_err(|e| io_err(&fin, e))?;
        let _ = fs::remove_file(&part.state_path);
        Ok(())
    }

    async fn discard(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<()> {
        let fin = self.final_path(plan, file);
        for p in [
            Self::with_suffix(&fin, ".part"),
            Self::with_suffix(&fin, ".part.json"),
            fin,
        ] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, e)),
            }
        }
        Ok(())
    }

    async fn present_bytes(&self, plan: &DownloadPlan, file: &FilePlan) -> DResult<u64> {
        if self.is_committed(plan, file).await? {
            return Ok(file.size);
        }
        let fin = self.final_path(plan, file);
        let len = fs::metadata(Self::with_suffix(&fin, ".part"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(
            match Self::read_state(&Self::with_suffix(&fin, ".part.json")) {
                Some(s) if s.size == file.size && s.check == file.check => s.offset.min(len),
                _ => 0,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_joined_like_a_browser_does() {
        assert_eq!(
            join_location("http://h:1/a/b?x", "http://c/d"),
            "http://c/d"
        );
        assert_eq!(
            join_location("http://h:1/a/b", "/cdn/x?y"),
            "http://h:1/cdn/x?y"
        );
        assert_eq!(join_location("http://h:1/a/b", "c"), "http://h:1/a/c");
    }
}
