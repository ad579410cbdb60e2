//! The page (main thread): opens images onto the canvas, starts the worker, shows what it
//! reports. Never blocks on the GPU: all model and device work happens in the worker.

use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use image::RgbaImage;
use wasm_bindgen::{Clamped, JsCast, JsValue};
use web_sys::{
    CanvasRenderingContext2d, Document, DragEvent, Element, HtmlCanvasElement, HtmlInputElement,
    ImageData, MessageEvent, Worker, WorkerOptions,
};

use super::js_error_text;
use super::run::RunPanel;
use crate::gpu::GpuReport;
use crate::image_io::decode_image;
use crate::protocol::{FromWorker, ToWorker};

/// URL of the worker bootstrap (copied into `dist/` by Trunk).
const WORKER_URL: &str = "./worker_loader.js";

/// Entry point of the `app` binary.
pub fn start() {
    console_error_panic_hook::set_once();
    if let Err(err) = Ui::mount() {
        web_sys::console::error_1(&err);
        if let Some(status) = document().get_element_by_id("status") {
            status.set_text_content(Some(&format!(
                "The page failed to start: {}",
                js_error_text(&err)
            )));
            status.set_class_name("error");
        }
    }
}

fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("the app runs in a page with a document")
}

/// Handles to the page's elements (ids from `www/index.html`).
struct Ui {
    document: Document,
    status: Element,
    canvas: HtmlCanvasElement,
    context: CanvasRenderingContext2d,
    canvas_area: Element,
    drop_hint: Element,
    layer_list: Element,
    layers_empty: Element,
    gpu_info: Element,
    /// The model controls (`web::run`).
    run: Rc<RunPanel>,
}

/// How a status line is shown.
#[derive(Clone, Copy)]
enum Tone {
    Info,
    Ok,
    Error,
}

impl Ui {
    fn mount() -> Result<(), JsValue> {
        let document = document();
        let by_id = |id: &str| {
            document.get_element_by_id(id).ok_or_else(|| {
                JsValue::from_str(&format!("element #{id} is missing from the page"))
            })
        };
        let canvas: HtmlCanvasElement = by_id("canvas")?.dyn_into()?;
        let context: CanvasRenderingContext2d = canvas
            .get_context("2d")?
            .ok_or("the canvas has no 2D context")?
            .dyn_into()?;
        let ui = Rc::new(Ui {
            status: by_id("status")?,
            canvas_area: by_id("canvas-area")?,
            drop_hint: by_id("drop-hint")?,
            layer_list: by_id("layer-list")?,
            layers_empty: by_id("layers-empty")?,
            gpu_info: by_id("gpu-info")?,
            run: RunPanel::mount(&document)?,
            document: document.clone(),
            canvas,
            context,
        });
        ui.set_status("Starting the worker…", Tone::Info);
        Self::listen_for_files(&ui, by_id("file-input")?.dyn_into()?);
        Self::start_worker(&ui)?;
        Ok(())
    }

    fn set_status(&self, text: &str, tone: Tone) {
        self.status.set_text_content(Some(text));
        self.status.set_class_name(match tone {
            Tone::Info => "",
            Tone::Ok => "ok",
            Tone::Error => "error",
        });
        self.status
            .set_attribute(
                "role",
                if matches!(tone, Tone::Error) {
                    "alert"
                } else {
                    "status"
                },
            )
            .ok();
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

    // ---- opening images -------------------------------------------------------------------

    fn listen_for_files(ui: &Rc<Self>, input: HtmlInputElement) {
        let this = ui.clone();
        let input_clone = input.clone();
        EventListener::new(&input, "change", move |_| {
            if let Some(file) = input_clone.files().and_then(|files| files.get(0)) {
                Self::open_file(&this, file);
            }
            input_clone.set_value(""); // choosing the same file again fires `change` again
        })
        .forget();

        let area = ui.canvas_area.clone();
        let prevent = EventListenerOptions::enable_prevent_default();
        for name in ["dragenter", "dragover"] {
            let area2 = area.clone();
            EventListener::new_with_options(&area, name, prevent, move |event| {
                event.prevent_default();
                area2.class_list().add_1("dragover").ok();
            })
            .forget();
        }
        let area2 = area.clone();
        EventListener::new(&area, "dragleave", move |_| {
            area2.class_list().remove_1("dragover").ok();
        })
        .forget();
        let this = ui.clone();
        EventListener::new_with_options(&area, "drop", prevent, move |event| {
            event.prevent_default();
            this.canvas_area.class_list().remove_1("dragover").ok();
            let file = event
                .dyn_ref::<DragEvent>()
                .and_then(|e| e.data_transfer())
                .and_then(|dt| dt.files())
                .and_then(|files| files.get(0));
            match file {
                Some(file) => Self::open_file(&this, file),
                None => this.set_status("Nothing to open: drop an image file.", Tone::Error),
            }
        })
        .forget();
    }

    fn open_file(ui: &Rc<Self>, file: web_sys::File) {
        let ui = ui.clone();
        let name = file.name();
        ui.set_status(&format!("Opening \"{name}\"…"), Tone::Info);
        wasm_bindgen_futures::spawn_local(async move {
            let file = gloo::file::File::from(file);
            let bytes = match gloo::file::futures::read_as_bytes(&file).await {
                Ok(bytes) => bytes,
                Err(err) => {
                    return ui
                        .set_status(&format!("Could not read \"{name}\": {err}"), Tone::Error);
                }
            };
            // The current picture stays on the canvas when the new file cannot be opened.
            match decode_image(&name, &bytes) {
                Ok(image) => match ui.show_image(&name, &image) {
                    Ok(()) => {
                        ui.set_status(
                            &format!("Opened \"{name}\" ({}×{}).", image.width(), image.height()),
                            Tone::Ok,
                        );
                        ui.run.set_image(image);
                    }
                    Err(err) => ui.set_status(
                        &format!("Could not draw \"{name}\": {}", js_error_text(&err)),
                        Tone::Error,
                    ),
                },
                Err(err) => ui.set_status(
                    &format!("Could not open \"{name}\": {}", reason_of(err)),
                    Tone::Error,
                ),
            }
        });
    }

    /// Draws `image` 1:1 on the canvas and lists it in the layers panel.
    fn show_image(&self, name: &str, image: &RgbaImage) -> Result<(), JsValue> {
        let data = ImageData::new_with_u8_clamped_array_and_sh(
            Clamped(image.as_raw()),
            image.width(),
            image.height(),
        )?;
        self.canvas.set_width(image.width());
        self.canvas.set_height(image.height());
        self.context.put_image_data(&data, 0.0, 0.0)?;
        self.drop_hint.set_attribute("hidden", "")?;

        // Layers panel: the opened image is the one layer until the model decomposes it.
        self.layer_list.set_text_content(None);
        let li = self.document.create_element("li")?;
        let thumb: HtmlCanvasElement = self.document.create_element("canvas")?.dyn_into()?;
        thumb.set_width(image.width());
        thumb.set_height(image.height());
        if let Some(ctx) = thumb.get_context("2d")? {
            ctx.dyn_into::<CanvasRenderingContext2d>()?
                .put_image_data(&data, 0.0, 0.0)?;
        }
        thumb.set_attribute("aria-hidden", "true")?;
        let label = self.document.create_element("span")?;
        label.set_text_content(Some(&format!(
            "{name} — {}×{}",
            image.width(),
            image.height()
        )));
        li.append_child(&thumb)?;
        li.append_child(&label)?;
        self.layer_list.append_child(&li)?;
        self.layers_empty.set_attribute("hidden", "")?;
        Ok(())
    }

    // ---- the worker -----------------------------------------------------------------------

    fn start_worker(ui: &Rc<Self>) -> Result<(), JsValue> {
        let options = WorkerOptions::new();
        options.set_name("model");
        let worker = Worker::new_with_options(WORKER_URL, &options)?;
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
                self.run.gpu_ready();
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

/// The user-facing part of an error: the file name is already in our sentence.
fn reason_of(err: crate::Error) -> String {
    match err {
        crate::Error::Image { reason, .. } => reason,
        other => other.to_string(),
    }
}
