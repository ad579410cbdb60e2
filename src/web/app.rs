//! The page (main thread): mounts the layer editor ([`super::editor_ui`]), registers the
//! service worker, starts the model worker and shows what it reports. Never blocks on the
//! GPU: all model and device work happens in the worker.

use std::rc::Rc;

use gloo::events::EventListener;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, Element, MessageEvent, Worker, WorkerOptions};

use super::editor_ui::EditorUi;
use super::js_error_text;
use super::run::RunPanel;
use super::status::{Tone, set_status};
use crate::gpu::GpuReport;
use crate::protocol::{FromWorker, ToWorker};

/// URL of the worker bootstrap (copied into `dist/` by Trunk), relative to the page.
const WORKER_URL: &str = "./worker_loader.js";
/// The service worker that keeps the app shell for offline use (built by Trunk, see `sw.js`).
const SERVICE_WORKER_URL: &str = "./sw.js";

/// The model worker's script: a `blob:` URL whose few lines load [`WORKER_URL`] (and, through
/// it, the worker's wasm) by absolute URL. A worker started from its own URL runs under the
/// policy of that script's response headers, which a static host does not send; one started
/// from a `blob:` URL inherits the page's Content-Security-Policy, so its `connect-src` (the
/// model hosts) binds the worker, which does all of the model's network traffic.
fn worker_script_url(document: &Document) -> Result<String, JsValue> {
    let page = document
        .base_uri()?
        .ok_or_else(|| JsValue::from_str("the page has no base URL"))?;
    let base = web_sys::Url::new_with_base("./", &page)?.href();
    let loader = web_sys::Url::new_with_base(WORKER_URL, &page)?.href();
    // JSON string literals are JavaScript string literals.
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let script = format!(
        "self.QLW_BASE = {};\nimportScripts({});\n",
        quote(&base),
        quote(&loader)
    );
    let parts = js_sys::Array::of1(&JsValue::from_str(&script));
    let kind = web_sys::BlobPropertyBag::new();
    kind.set_type("text/javascript");
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &kind)?;
    // Kept for the page's life: the browser may still be reading it after `new Worker`.
    web_sys::Url::create_object_url_with_blob(&blob)
}

/// Entry point of the `app` binary.
pub fn start() {
    console_error_panic_hook::set_once();
    register_service_worker();
    if let Err(err) = EditorUi::mount().and_then(|_| Ui::mount()) {
        web_sys::console::error_1(&err);
        set_status(
            &format!("The page failed to start: {}", js_error_text(&err)),
            Tone::Error,
        );
    }
}

/// Registers `sw.js` (secure contexts only; the page works without it, just not offline).
fn register_service_worker() {
    let Some(window) = web_sys::window() else {
        return;
    };
    if !window.is_secure_context() {
        return;
    }
    let container = window.navigator().service_worker();
    let promise = container.register(SERVICE_WORKER_URL);
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(err) = wasm_bindgen_futures::JsFuture::from(promise).await {
            web_sys::console::warn_1(&JsValue::from_str(&format!(
                "offline use is unavailable: the service worker did not register: {}",
                js_error_text(&err)
            )));
        }
    });
}

fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("the app runs in a page with a document")
}

/// Handles to the page's worker-related elements (ids from `www/index.html`).
struct Ui {
    document: Document,
    gpu_info: Element,
    /// The model controls (`web::run`).
    run: Rc<RunPanel>,
}

impl Ui {
    fn mount() -> Result<(), JsValue> {
        let document = document();
        let by_id = |id: &str| {
            document.get_element_by_id(id).ok_or_else(|| {
                JsValue::from_str(&format!("element #{id} is missing from the page"))
            })
        };
        let ui = Rc::new(Ui {
            gpu_info: by_id("gpu-info")?,
            run: RunPanel::mount(&document)?,
            document: document.clone(),
        });
        // Every image the editor opens is the run's input.
        let run = ui.run.clone();
        super::editor_ui::on_image_opened(move |image| run.set_image(image.clone()));
        // "Decompose layer" follows the editor's selection.
        let run = ui.run.clone();
        super::editor_ui::on_selection(move |selected| run.set_selection(selected));
        ui.set_status("Starting the worker…", Tone::Info);
        Self::start_worker(&ui)?;
        Ok(())
    }

    fn set_status(&self, text: &str, tone: Tone) {
        set_status(text, tone);
    }

    fn set_gpu_lines(&self, lines: &[String], error: bool) {
        self.gpu_info.set_text_content(None);
        for line in lines {
            self.add_gpu_line(line, error);
        }
    }

    fn add_gpu_line(&self, line: &str, error: bool) {
        if let Ok(li) = self.document.create_element("li") {
            li.set_text_content(Some(line));
            if error {
                li.set_class_name("error");
            }
            self.gpu_info.append_child(&li).ok();
        }
    }

    // ---- the worker -----------------------------------------------------------------------

    fn start_worker(ui: &Rc<Self>) -> Result<(), JsValue> {
        let options = WorkerOptions::new();
        options.set_name("model");
        let worker = Worker::new_with_options(&worker_script_url(&ui.document)?, &options)?;
        ui.run.attach(worker.clone());

        let this = ui.clone();
        EventListener::new(&worker, "error", move |event| {
            let detail = js_sys::Reflect::get(event, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| "see the browser console".into());
            this.set_status(&format!("The model worker stopped: {detail}"), Tone::Error);
            this.set_gpu_lines(
                &["The worker failed; reload the page to retry.".into()],
                true,
            );
        })
        .forget();

        let this = ui.clone();
        let worker2 = worker.clone();
        EventListener::new(&worker, "message", move |event| {
            let data = event
                .dyn_ref::<MessageEvent>()
                .map(|e| e.data())
                .unwrap_or(JsValue::NULL);
            match serde_wasm_bindgen::from_value::<FromWorker>(data) {
                Ok(message) => this.on_worker_message(&worker2, message),
                Err(err) => this.set_status(
                    &format!("Unreadable message from the worker: {err}"),
                    Tone::Error,
                ),
            }
        })
        .forget();
        Ok(())
    }

    fn on_worker_message(&self, worker: &Worker, message: FromWorker) {
        let Some(message) = self.run.on_message(message) else {
            return;
        };
        match message {
            FromWorker::Ready => {
                self.set_gpu_lines(&["Requesting a WebGPU adapter…".into()], false);
                match serde_wasm_bindgen::to_value(&ToWorker::ProbeGpu) {
                    Ok(value) => {
                        if let Err(err) = worker.post_message(&value) {
                            self.set_status(
                                &format!("Could not talk to the worker: {}", js_error_text(&err)),
                                Tone::Error,
                            );
                        } else {
                            self.set_status("Ready. Open an image to begin.", Tone::Info);
                        }
                    }
                    Err(err) => {
                        self.set_status(&format!("Could not encode a message: {err}"), Tone::Error)
                    }
                }
            }
            FromWorker::Gpu { report } => {
                self.show_gpu(&report);
                self.run.gpu_ready(&report.limits);
            }
            FromWorker::NoWebGpu { reason } => {
                self.set_gpu_lines(&[format!("WebGPU is not available: {reason}")], true);
                self.set_body_flag("data-gpu", "none");
                self.set_status(
                    "WebGPU is not available in this browser, so layers cannot be computed here. \
                     You can still open and view images.",
                    Tone::Error,
                );
            }
            FromWorker::SelfTest { check, millis } => {
                let ok = check.within(1e-3).is_ok();
                self.add_gpu_line(
                    &format!(
                        "Self-test: {}×{}×{} matmul on the GPU {} the CPU (max error {:.1e}, {:.0} ms)",
                        check.m,
                        check.k,
                        check.n,
                        if ok { "matches" } else { "DIFFERS FROM" },
                        check.max_abs_err,
                        millis
                    ),
                    !ok,
                );
                self.set_body_flag("data-self-test", if ok { "pass" } else { "fail" });
            }
            FromWorker::Error { message } => {
                self.add_gpu_line(&message, true);
                self.set_status(&message, Tone::Error);
            }
            FromWorker::DeviceLost { reason } => {
                self.run.gpu_lost();
                self.set_gpu_lines(
                    &[format!(
                        "The GPU device was lost ({reason}). Save your work (Export), then \
                         reload the page to get a new device."
                    )],
                    true,
                );
                self.set_body_flag("data-gpu", "lost");
            }
            other => web_sys::console::warn_1(&format!("unhandled: {other:?}").into()),
        }
    }

    /// State flags on `<body>` that tests and styles can wait for.
    fn set_body_flag(&self, name: &str, value: &str) {
        if let Some(body) = self.document.body() {
            body.set_attribute(name, value).ok();
        }
    }

    fn show_gpu(&self, report: &GpuReport) {
        let mut lines = report.lines();
        lines.push(format!("Features: {}", report.features.join(", ")));
        self.set_gpu_lines(&lines, false);
        self.set_body_flag("data-gpu", "ready");
    }
}
