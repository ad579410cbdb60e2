//! The browser downloader: `fetch` with Range requests from the worker, streamed through the
//! platform-independent engine (`crate::download`) into OPFS (`super::opfs`). Only ever one
//! network chunk (tens of KB, as the browser hands it over) is in wasm memory at a time.

use std::cell::RefCell;
use std::time::Duration;

use gloo::events::EventListener;

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Headers, ReadableStreamDefaultReader, ReferrerPolicy, RequestCache, RequestInit, RequestMode,
    RequestRedirect, Response,
};

use super::js_error_text;
use super::opfs::{OpfsStore, check_quota, storage_status};
use crate::download::{
    DResult, DownloadOptions, DownloadPlan, DownloadReport, HttpClient, Progress, ResponseBody,
    ResponseHead, Session, SourceSpec, TransportError, discover, download_plan, remaining_bytes,
};

thread_local! {
    /// The origins this context's Content-Security-Policy refused a connection to
    /// (`connect-src`), in the order first refused: what a failed `fetch` ("Failed to fetch")
    /// does not say.
    static CSP_REFUSED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Starts recording the `connect-src` refusals of this context's Content-Security-Policy
/// (`securitypolicyviolation` events) for [`FetchClient`]'s messages. Once, at start.
pub fn watch_csp_violations() {
    let Some(target) = js_sys::global().dyn_ref::<web_sys::EventTarget>().cloned() else {
        return;
    };
    EventListener::new(&target, "securitypolicyviolation", |event| {
        let field = |name: &str| {
            Reflect::get(event, &name.into())
                .ok()
                .and_then(|v| v.as_string())
                .unwrap_or_default()
        };
        if field("effectiveDirective") != "connect-src" {
            return;
        }
        // The refused URL, or only its origin where the browser strips it.
        let blocked = field("blockedURI");
        let origin = web_sys::Url::new(&blocked).map_or(blocked, |u| u.origin());
        CSP_REFUSED.with(|r| {
            let mut refused = r.borrow_mut();
            if !refused.contains(&origin) {
                refused.push(origin);
            }
        });
    })
    .forget(); // for the context's life
}

/// What the Content-Security-Policy refused so far, as words for a failed fetch's message.
fn csp_refusals() -> Option<String> {
    let refused = CSP_REFUSED.with(|r| r.borrow().join(", "));
    (!refused.is_empty()).then(|| {
        format!(
            "; this app's Content-Security-Policy refused connecting to {refused} (connect-src \
             lists the model hosts the app may reach: see the README's \"Security\")"
        )
    })
}

/// `fetch(url, init)` on the current global (page or worker).
fn global_fetch(url: &str, init: &RequestInit) -> std::result::Result<Promise, JsValue> {
    let global = js_sys::global();
    if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        Ok(worker.fetch_with_str_and_init(url, init))
    } else if let Some(window) = global.dyn_ref::<web_sys::Window>() {
        Ok(window.fetch_with_str_and_init(url, init))
    } else {
        Err(JsValue::from_str("no fetch in this context"))
    }
}

/// The browser's `fetch` as the engine's HTTP client. Redirects are followed by the browser
/// (the hub's 302 to its CDN); the final URL is reported so later chunks go to the CDN.
#[derive(Debug, Default, Clone)]
pub struct FetchClient;

fn init(
    method_range: Option<(u64, u64)>,
    redirect: RequestRedirect,
) -> std::result::Result<RequestInit, JsValue> {
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_mode(RequestMode::Cors);
    // The bytes go to OPFS; the HTTP cache would store every chunk a second time.
    init.set_cache(RequestCache::NoStore);
    // The hub has blocked some Referer values (transformers.js PR #1510).
    init.set_referrer_policy(ReferrerPolicy::NoReferrer);
    init.set_redirect(redirect);
    if let Some((a, b)) = method_range {
        let headers = Headers::new()?;
        headers.set("Range", &format!("bytes={a}-{b}"))?;
        init.set_headers(&headers);
    }
    Ok(init)
}

/// A `fetch` response body read through its stream reader; cancelled when dropped early.
pub struct FetchBody {
    reader: Option<ReadableStreamDefaultReader>,
}

impl Drop for FetchBody {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            // Stop the transfer (a 200 answer to a Range request, or a cancelled download).
            let _ = reader.cancel();
        }
    }
}

impl ResponseBody for FetchBody {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let Some(reader) = self.reader.as_ref() else {
            return Ok(None);
        };
        let result = JsFuture::from(reader.read()).await.map_err(|e| {
            self.reader = None;
            TransportError::Network(js_error_text(&e))
        })?;
        let done = Reflect::get(&result, &"done".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if done {
            self.reader = None;
            return Ok(None);
        }
        let value = Reflect::get(&result, &"value".into())
            .map_err(|e| TransportError::Network(js_error_text(&e)))?;
        Ok(Some(
            value
                .dyn_into::<Uint8Array>()
                .map_err(|_| TransportError::Network("a body chunk that is not bytes".into()))?
                .to_vec(),
        ))
    }
}

impl HttpClient for FetchClient {
    type Body = FetchBody;

    async fn get(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(ResponseHead, FetchBody), TransportError> {
        let net = |e: JsValue| TransportError::Network(js_error_text(&e));
        let request = init(range, RequestRedirect::Follow).map_err(net)?;
        let response: Response = match JsFuture::from(global_fetch(url, &request).map_err(net)?)
            .await
        {
            Ok(r) => r.dyn_into().map_err(net)?,
            Err(e) => {
                // The browser says only "Failed to fetch". Ask again without following
                // redirects: if the URL redirects, the failure was on the way (a redirect
                // loop, an unreachable or CORS-refusing CDN).
                let probe = init(range, RequestRedirect::Manual).map_err(net)?;
                let redirected = match global_fetch(url, &probe) {
                    Ok(p) => JsFuture::from(p)
                        .await
                        .ok()
                        .and_then(|r| r.dyn_into::<Response>().ok())
                        .is_some_and(|r| r.type_() == web_sys::ResponseType::Opaqueredirect),
                    Err(_) => false,
                };
                // (By now the refusal of the first try, if any, has been reported.)
                let csp = csp_refusals().unwrap_or_default();
                return Err(if redirected {
                    TransportError::RedirectLoop {
                        hops: 0,
                        detail: format!(
                            ": the hub redirects this URL and the browser could not follow the redirect ({}): a redirect loop, or a CDN that is unreachable or refuses CORS{csp}",
                            js_error_text(&e)
                        ),
                    }
                } else {
                    TransportError::Network(format!("{}{csp}", js_error_text(&e)))
                });
            }
        };
        let headers = response.headers();
        let get = |name: &str| headers.get(name).ok().flatten();
        let head = ResponseHead {
            status: response.status(),
            url: response.url(),
            content_length: get("content-length").and_then(|v| v.trim().parse().ok()),
            content_range: get("content-range"),
            etag: get("etag"),
            linked_etag: get("x-linked-etag"),
            retry_after: get("retry-after"),
            error_message: get("x-error-message"),
        };
        let reader = match response.body() {
            Some(stream) => Some(
                stream
                    .get_reader()
                    .dyn_into::<ReadableStreamDefaultReader>()
                    .map_err(|o| net(o.into()))?,
            ),
            None => None,
        };
        Ok((head, FetchBody { reader }))
    }

    async fn sleep(&self, duration: Duration) {
        gloo::timers::future::TimeoutFuture::new(duration.as_millis().min(u32::MAX as u128) as u32)
            .await;
    }

    fn now_ms(&self) -> f64 {
        js_sys::Date::now()
    }
}

/// Everything about one download in the browser.
pub struct BrowserDownload {
    /// The plan (pinned commit, files, sizes, hashes).
    pub plan: DownloadPlan,
    /// The store it writes to.
    pub store: OpfsStore,
}

impl BrowserDownload {
    /// Lists the repository (tree API) and opens the OPFS store.
    pub async fn prepare(
        spec: &SourceSpec,
        options: &DownloadOptions,
        store: OpfsStore,
    ) -> DResult<Self> {
        let plan = discover(&FetchClient, spec, options).await?;
        Ok(Self { plan, store })
    }

    /// Checks the quota against what is still missing (asking for persistence first), then
    /// downloads, verifies and commits every missing file.
    pub async fn run(
        &self,
        options: DownloadOptions,
        on_progress: &dyn Fn(&Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> DResult<DownloadReport> {
        let needed = remaining_bytes(&self.store, &self.plan).await?;
        if needed > 0 {
            check_quota(needed, &storage_status().await?)?;
        }
        let session = Session::new(&self.plan, options, on_progress, cancelled);
        download_plan(&FetchClient, &self.store, &self.plan, &session).await
    }
}
