//! [`HttpSource`]: a [`WeightSource`] over `{base}/{file}` URLs, read with `fetch` and HTTP
//! `Range` requests, so that a model loads tensor by tensor without any file held whole.
//!
//! For the Hugging Face layout (`https://huggingface.co/<repo>/resolve/<revision>/<path>`,
//! which redirects weight files to the CDN) build it with [`HttpSource::hugging_face`]. Works
//! in a worker and on the main thread (it calls the global `fetch`).
//!
//! - `read`: `Range: bytes=a-b`; a `206` must name exactly that range in `Content-Range` and
//!   carry that many bytes. A `200` means the server ignored the range and sends the whole file:
//!   the body is streamed, the asked bytes are cut out at their offset, and the rest of the
//!   download is cancelled.
//! - `size` / `exists`: one `Range: bytes=0-0` request per file (its `Content-Range` total; a
//!   `416` with `bytes */0` is an empty file; a `404` is "does not exist"), cached.
//! - Errors name the URL and the HTTP status, or say that the request failed on the network
//!   (offline, CORS, connection reset).

use std::cell::RefCell;
use std::collections::HashMap;

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    ReadableStreamDefaultReader, ReferrerPolicy, Request, RequestInit, RequestMode, Response,
    Window, WorkerGlobalScope,
};

use super::js_error_text;
use crate::error::{Error, Result};
use crate::weights::WeightSource;
use crate::weights::http::{
    ContentRange, check_partial, file_url, range_header, resolve_base, slice_of_full_body,
    status_reason,
};

/// Files under one base URL, read by HTTP range requests.
#[derive(Debug)]
pub struct HttpSource {
    base: String,
    /// `Some(size)` for a file seen, `None` for a file the server says does not exist.
    sizes: RefCell<HashMap<String, Option<u64>>>,
}

impl HttpSource {
    /// Files at `{base}/{file}`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            sizes: RefCell::new(HashMap::new()),
        }
    }

    /// A Hugging Face repository at a revision: `{host}/{repo}/resolve/{revision}`.
    pub fn hugging_face(host: &str, repo: &str, revision: &str) -> Self {
        Self::new(resolve_base(host, repo, revision))
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `file`.
    pub fn url(&self, file: &str) -> String {
        file_url(&self.base, file)
    }

    /// The size of `file`, or `None` if the server answers 404.
    async fn probe(&self, file: &str) -> Result<Option<u64>> {
        if let Some(known) = self.sizes.borrow().get(file) {
            return Ok(*known);
        }
        let url = self.url(file);
        let response = fetch(&url, Some("bytes=0-0")).await?;
        let status = response.status();
        let content_range = header(&response, "content-range");
        let found = match status {
            206 => {
                let total = content_range
                    .as_deref()
                    .and_then(ContentRange::parse)
                    .and_then(|c| c.total);
                cancel_body(&response).await;
                Some(total.ok_or_else(|| Error::Source {
                    file: url.clone(),
                    reason: format!(
                        "206 without a readable file size in Content-Range ({content_range:?}); \
                         the server must expose Content-Range to CORS"
                    ),
                })?)
            }
            // The range was ignored: the whole file comes; count it.
            200 => Some(stream_body(&response, &url, None).await?.0),
            416 => match content_range.as_deref().and_then(ContentRange::parse) {
                Some(ContentRange {
                    range: None,
                    total: Some(0),
                }) => Some(0),
                _ => return Err(http_error(&url, &response)),
            },
            404 | 410 => None,
            _ => return Err(http_error(&url, &response)),
        };
        self.sizes.borrow_mut().insert(file.to_owned(), found);
        Ok(found)
    }
}

impl WeightSource for HttpSource {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(self.probe(file).await?.is_some())
    }

    async fn size(&self, file: &str) -> Result<u64> {
        self.probe(file).await?.ok_or_else(|| Error::Source {
            file: self.url(file),
            reason: status_reason(404, "Not Found"),
        })
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let url = self.url(file);
        if let Some(Some(size)) = self.sizes.borrow().get(file).copied()
            && offset.checked_add(len).is_none_or(|end| end > size)
        {
            return Err(Error::Source {
                file: url,
                reason: format!("range {offset}+{len} is outside the file ({size} bytes)"),
            });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let response = fetch(&url, Some(&range_header(offset, len))).await?;
        match response.status() {
            206 => {
                let bytes = array_buffer(&response, &url).await?;
                let content_range = header(&response, "content-range");
                check_partial(
                    &url,
                    offset,
                    len,
                    content_range.as_deref(),
                    bytes.len() as u64,
                )?;
                Ok(bytes)
            }
            200 => {
                let (received, bytes) = stream_body(&response, &url, Some((offset, len))).await?;
                let range = slice_of_full_body(&url, offset, len, received)?;
                debug_assert_eq!(bytes.len(), range.len());
                Ok(bytes)
            }
            _ => Err(http_error(&url, &response)),
        }
    }
}

/// `fetch(url)` with an optional `Range` header, following redirects, without a referrer.
async fn fetch(url: &str, range: Option<&str>) -> Result<Response> {
    let network = |what: &str, err: &JsValue| Error::Source {
        file: url.to_owned(),
        reason: format!(
            "{what}: {} (offline, blocked by CORS, or the connection was reset)",
            js_error_text(err)
        ),
    };
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_mode(RequestMode::Cors);
    init.set_referrer_policy(ReferrerPolicy::NoReferrer);
    let request =
        Request::new_with_str_and_init(url, &init).map_err(|e| network("bad request", &e))?;
    if let Some(range) = range {
        request
            .headers()
            .set("Range", range)
            .map_err(|e| network("bad Range header", &e))?;
    }
    let global = js_sys::global();
    let promise: Promise = if let Some(window) = global.dyn_ref::<Window>() {
        window.fetch_with_request(&request)
    } else {
        global
            .unchecked_into::<WorkerGlobalScope>()
            .fetch_with_request(&request)
    };
    let value = JsFuture::from(promise)
        .await
        .map_err(|e| network("the request failed", &e))?;
    value
        .dyn_into::<Response>()
        .map_err(|v| network("fetch gave no Response", &v))
}

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).ok().flatten()
}

fn http_error(url: &str, response: &Response) -> Error {
    Error::Source {
        file: url.to_owned(),
        reason: status_reason(response.status(), &response.status_text()),
    }
}

async fn array_buffer(response: &Response, url: &str) -> Result<Vec<u8>> {
    let body_error = |e: JsValue| Error::Source {
        file: url.to_owned(),
        reason: format!(
            "reading the body failed: {} (connection cut?)",
            js_error_text(&e)
        ),
    };
    let promise = response.array_buffer().map_err(body_error)?;
    let buffer = JsFuture::from(promise).await.map_err(body_error)?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

/// Drops a body we do not need (so the connection is not kept busy).
async fn cancel_body(response: &Response) {
    if let Some(body) = response.body() {
        JsFuture::from(body.cancel()).await.ok();
    }
}

/// Reads a body chunk by chunk. Returns how many bytes arrived and, when `keep` is
/// `(offset, len)`, the bytes `offset..offset+len`; the download is cancelled as soon as those
/// are in. With `keep = None` the whole body is counted and dropped.
async fn stream_body(
    response: &Response,
    url: &str,
    keep: Option<(u64, u64)>,
) -> Result<(u64, Vec<u8>)> {
    let body_error = |e: &JsValue| Error::Source {
        file: url.to_owned(),
        reason: format!(
            "reading the body failed: {} (connection cut?)",
            js_error_text(e)
        ),
    };
    let Some(body) = response.body() else {
        return Ok((0, Vec::new()));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let (start, end) = keep.map_or((0, 0), |(o, l)| (o, o + l));
    let mut kept = Vec::with_capacity(keep.map_or(0, |(_, l)| l as usize));
    let mut received = 0u64;
    loop {
        let step = JsFuture::from(reader.read())
            .await
            .map_err(|e| body_error(&e))?;
        let done = Reflect::get(&step, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let chunk: Uint8Array = Reflect::get(&step, &"value".into())
            .map_err(|e| body_error(&e))?
            .unchecked_into();
        let (a, b) = (received, received + chunk.length() as u64);
        received = b;
        if keep.is_some() && b > start && a < end {
            let from = start.max(a) - a;
            let to = end.min(b) - a;
            kept.extend_from_slice(&chunk.subarray(from as u32, to as u32).to_vec());
        }
        if keep.is_some() && received >= end {
            JsFuture::from(reader.cancel()).await.ok();
            break;
        }
    }
    Ok((received, kept))
}
