//! The page's model controls (in `#settings`): pick a model source from `models.json`, see its
//! size and what the browser's cache holds of it, download it (progress, rate, ETA, Cancel,
//! resume after a reload, refused up front when storage is short), delete it, load it from the
//! verified cache (progress, rate, ETA, Cancel), decompose the open picture (or the selected
//! layer: "Decompose layer") with per-step progress, elapsed time, ETA and Cancel, and hand the
//! layers to the page ([`show_layers`], or [`super::editor_ui::replace_layer`] in place of the
//! layer).
//!
//! An empty prompt is captioned by the worker first: the caption grows in `#run-caption` as its
//! tokens arrive, and stays there with "Use as prompt" once the run is done (the prompt field
//! stays empty, so the next run, e.g. on a layer, is captioned for what it shows).
//!
//! State flags on `<body>` for tests and styles: `data-models` (`ready` / `failed`),
//! `data-cache` (`unknown` / `none` / `partial` / `cached`, for the chosen source),
//! `data-download` (`running` / `done` / `cancelled` / `failed`), `data-model` (`loading` /
//! `loaded` / `cancelled` / `failed` / `none`), `data-run` (`running` / `done` / `cancelled` /
//! `failed`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use image::RgbaImage;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Document, Element, HtmlButtonElement, HtmlInputElement, HtmlProgressElement, HtmlSelectElement,
    Response, Worker,
};

use super::confirm;
use super::status::{Tone, set_status};
use super::storage_ui::StoragePanel;
use super::{human_bytes, js_error_text, pixel_buffers};
use crate::download::Progress;
use crate::editor::{LayerId, NewLayer};
use crate::gpu::KeyLimits;
use crate::pipeline::default_budget_bytes;
use crate::protocol::{
    CacheState, CopyProgress, DecomposeRequest, FromWorker, GpuFault, MemoryOverrides,
    MemorySettings, ModelRegistry, ModelSource, Rgba, RunPhase, ToWorker, f16_from_query,
    storage_free_from_query,
};

/// What a run decomposes, and so where its layers go.
#[derive(Debug, Clone)]
enum Target {
    /// The opened picture: the layers replace the document.
    Picture,
    /// One layer: its sub-layers replace it in place.
    Layer { id: LayerId, name: String },
}

/// The model list served with the app.
const REGISTRY_URL: &str = "./models.json";

/// The `localStorage` key of the GPU memory budget (GiB, as typed).
const BUDGET_KEY: &str = "qlw.gpuBudgetGiB";

/// The model panel's elements and state.
pub struct RunPanel {
    document: Document,
    model_select: HtmlSelectElement,
    model_info: Element,
    download_button: HtmlButtonElement,
    cancel_download_button: HtmlButtonElement,
    delete_button: HtmlButtonElement,
    download_progress: HtmlProgressElement,
    download_status: Element,
    load_button: HtmlButtonElement,
    cancel_load_button: HtmlButtonElement,
    load_progress: HtmlProgressElement,
    model_status: Element,
    budget_input: HtmlInputElement,
    plan_line: Element,
    /// The device's limits, once the worker reported them.
    limits: RefCell<Option<KeyLimits>>,
    resolution: HtmlSelectElement,
    decompose_button: HtmlButtonElement,
    cancel_button: HtmlButtonElement,
    run_progress: HtmlProgressElement,
    run_status: Element,
    note: Element,
    decompose_layer_button: HtmlButtonElement,
    caption_box: web_sys::HtmlElement,
    caption_text: Element,
    use_caption_button: HtmlButtonElement,
    /// Whether the editor has a selected layer (for "Decompose layer").
    layer_selected: Cell<bool>,
    /// What the run in flight decomposes.
    target: RefCell<Option<Target>>,
    /// Whether the loaded model can caption an empty prompt.
    captioner: Cell<bool>,
    worker: RefCell<Option<Worker>>,
    models: RefCell<Vec<ModelSource>>,
    image: RefCell<Option<RgbaImage>>,
    gpu_ready: Cell<bool>,
    /// The worker has posted `Ready` (it can take messages).
    worker_ready: Cell<bool>,
    /// The cache state of the chosen source, once the worker reported it.
    cache: RefCell<Option<(String, Option<CacheState>)>>,
    /// The source being downloaded.
    downloading: RefCell<Option<String>>,
    loaded: RefCell<Option<String>>,
    busy: Cell<bool>,
    /// A load is in flight (`busy` too).
    loading: Cell<bool>,
    /// The load's current phase (its progress line's component), when it was first reported
    /// and the bytes then: for its rate and time left.
    load_phase: RefCell<Option<(String, f64, u64)>>,
    /// When the run started and when denoising started (`performance`-free: `Date.now()`).
    run_started: Cell<f64>,
    denoise_started: Cell<Option<(f64, usize)>>,
    /// The storage manager under the model card.
    storage: StoragePanel,
    /// A clean-up was asked for: the chosen model's state is read again once it is done.
    cleaning: Cell<bool>,
}

impl RunPanel {
    /// Finds the elements, wires the buttons, and starts reading `models.json`.
    pub fn mount(document: &Document) -> Result<Rc<Self>, JsValue> {
        let by_id = |id: &str| {
            document.get_element_by_id(id).ok_or_else(|| {
                JsValue::from_str(&format!("element #{id} is missing from the page"))
            })
        };
        let panel = Rc::new(Self {
            document: document.clone(),
            model_select: by_id("model-source")?.dyn_into()?,
            model_info: by_id("model-info")?,
            download_button: by_id("download-model")?.dyn_into()?,
            cancel_download_button: by_id("cancel-download")?.dyn_into()?,
            delete_button: by_id("delete-model")?.dyn_into()?,
            download_progress: by_id("download-progress")?.dyn_into()?,
            download_status: by_id("download-status")?,
            load_button: by_id("load-model")?.dyn_into()?,
            cancel_load_button: by_id("cancel-load")?.dyn_into()?,
            load_progress: by_id("load-progress")?.dyn_into()?,
            model_status: by_id("model-status")?,
            budget_input: by_id("set-memory-budget")?.dyn_into()?,
            plan_line: by_id("memory-plan")?,
            limits: RefCell::new(None),
            resolution: by_id("set-resolution")?.dyn_into()?,
            decompose_button: by_id("decompose")?.dyn_into()?,
            cancel_button: by_id("cancel-run")?.dyn_into()?,
            run_progress: by_id("run-progress")?.dyn_into()?,
            run_status: by_id("run-status")?,
            note: by_id("decompose-note")?,
            decompose_layer_button: by_id("decompose-layer")?.dyn_into()?,
            caption_box: by_id("caption-box")?.dyn_into()?,
            caption_text: by_id("run-caption")?,
            use_caption_button: by_id("use-caption")?.dyn_into()?,
            layer_selected: Cell::new(false),
            target: RefCell::new(None),
            captioner: Cell::new(false),
            worker: RefCell::new(None),
            models: RefCell::new(Vec::new()),
            image: RefCell::new(None),
            gpu_ready: Cell::new(false),
            worker_ready: Cell::new(false),
            cache: RefCell::new(None),
            downloading: RefCell::new(None),
            loaded: RefCell::new(None),
            busy: Cell::new(false),
            loading: Cell::new(false),
            load_phase: RefCell::new(None),
            run_started: Cell::new(0.0),
            denoise_started: Cell::new(None),
            storage: StoragePanel::mount(document)?,
            cleaning: Cell::new(false),
        });

        let this = panel.clone();
        EventListener::new(&panel.model_select, "change", move |_| this.model_chosen()).forget();
        let this = panel.clone();
        EventListener::new(&panel.load_button, "click", move |_| this.load()).forget();
        let this = panel.clone();
        EventListener::new(&panel.cancel_load_button, "click", move |_| {
            this.cancel_load()
        })
        .forget();
        let this = panel.clone();
        EventListener::new(&panel.budget_input, "change", move |_| {
            storage_set(BUDGET_KEY, &this.budget_input.value());
            this.show_budget();
        })
        .forget();
        if let Some(saved) = storage_get(BUDGET_KEY) {
            panel.budget_input.set_value(&saved);
        }
        let this = panel.clone();
        EventListener::new(&panel.download_button, "click", move |_| {
            let this = this.clone();
            wasm_bindgen_futures::spawn_local(async move { this.download().await });
        })
        .forget();
        let this = panel.clone();
        EventListener::new(&panel.cancel_download_button, "click", move |_| {
            this.cancel_download()
        })
        .forget();
        let this = panel.clone();
        EventListener::new(&panel.delete_button, "click", move |_| this.delete()).forget();
        let this = panel.clone();
        EventListener::new(&panel.cancel_button, "click", move |_| this.cancel()).forget();
        let this = panel.clone();
        EventListener::new(panel.storage.details(), "toggle", move |_| {
            if this.storage.is_open() {
                this.list_storage();
            }
        })
        .forget();
        let this = panel.clone();
        EventListener::new(panel.storage.list(), "click", move |event| {
            if let Some((repo, revision)) = StoragePanel::confirmed_click(event) {
                this.clean_storage(repo, revision);
            }
        })
        .forget();
        let this = panel.clone();
        EventListener::new(&panel.decompose_layer_button, "click", move |_| {
            this.decompose_layer()
        })
        .forget();
        let this = panel.clone();
        EventListener::new(&panel.use_caption_button, "click", move |_| {
            this.use_caption()
        })
        .forget();
        let this = panel.clone();
        let form = by_id("settings")?;
        let prevent = EventListenerOptions::enable_prevent_default();
        EventListener::new_with_options(&form, "submit", prevent, move |event| {
            event.prevent_default();
            this.decompose();
        })
        .forget();

        let this = panel.clone();
        wasm_bindgen_futures::spawn_local(async move {
            match fetch_registry().await {
                Ok(registry) => this.show_models(registry),
                Err(message) => {
                    this.set_model_status(&format!("No model list: {message}"), true);
                    this.flag("data-models", "failed");
                }
            }
        });
        Ok(panel)
    }

    /// The page's worker (set once it exists).
    pub fn attach(&self, worker: Worker) {
        *self.worker.borrow_mut() = Some(worker);
    }

    /// The worker's WebGPU device is lost: nothing can load or run any more (a reload gets a
    /// new device); downloads, the cache and the editor go on.
    pub fn gpu_lost(&self) {
        self.gpu_ready.set(false);
        self.update_buttons();
    }

    /// The worker has a WebGPU device with these limits.
    pub fn gpu_ready(&self, limits: &KeyLimits) {
        self.gpu_ready.set(true);
        let default = default_budget_bytes(limits);
        self.budget_input
            .set_placeholder(&format!("{} (default)", gib(default)));
        *self.limits.borrow_mut() = Some(limits.clone());
        self.show_budget();
        self.update_buttons();
    }

    /// What the next load's plan may use: the URL's forced values, else the budget field
    /// (GiB), else the default for the device.
    fn memory_settings(&self) -> Result<MemorySettings, String> {
        let limits = self.limits.borrow().clone().ok_or("the GPU is not ready")?;
        let overrides = url_overrides()?;
        let typed = self.budget_input.value();
        let budget = match overrides.budget {
            Some(bytes) => bytes,
            None if typed.trim().is_empty() => default_budget_bytes(&limits),
            None => {
                let gib = self.budget_input.value_as_number();
                if !(gib.is_finite() && gib > 0.0) {
                    return Err(format!(
                        "the GPU memory budget must be a number of GiB above 0, not {typed:?}"
                    ));
                }
                (gib * (1u64 << 30) as f64) as u64
            }
        };
        let layers = self
            .document
            .get_element_by_id("set-layers")
            .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
            .map(|i| i.value_as_number())
            .filter(|v| v.is_finite() && *v >= 1.0)
            .map_or(4, |v| v as usize);
        let resolution = self
            .resolution
            .value()
            .parse()
            .ok()
            .or_else(|| self.chosen().and_then(|m| m.resolutions.first().copied()))
            .ok_or("choose a resolution")?;
        Ok(MemorySettings {
            budget_bytes: budget,
            max_binding: overrides.max_binding,
            max_buffer: overrides.max_buffer,
            resolution,
            layers,
        })
    }

    /// The plan line before a load: the budget and limits the plan will be made for.
    fn show_budget(&self) {
        let text = match self.memory_settings() {
            Ok(m) => {
                let forced = url_overrides().is_ok_and(|o| o.any());
                let mut text = format!(
                    "Memory plan: made when the model loads, for a budget of {}",
                    gib(m.budget_bytes)
                );
                if let Some(b) = m.max_binding {
                    text.push_str(&format!(", buffer bindings of at most {}", gib(b)));
                }
                if let Some(b) = m.max_buffer {
                    text.push_str(&format!(", buffers of at most {}", gib(b)));
                }
                if forced {
                    text.push_str(" (forced by the page's URL)");
                }
                text.push('.');
                text
            }
            Err(err) => return set_line(&self.plan_line, &format!("Memory plan: {err}"), true),
        };
        set_line(&self.plan_line, &text, false);
    }

    /// The picture the page has open (the one a run decomposes).
    pub fn set_image(&self, image: RgbaImage) {
        *self.image.borrow_mut() = Some(image);
        self.update_buttons();
    }

    /// The editor's selection changed.
    pub fn set_selection(&self, selected: Option<LayerId>) {
        self.layer_selected.set(selected.is_some());
        self.update_buttons();
    }

    /// Handles the worker's model and run messages; returns the others untouched.
    pub fn on_message(&self, message: FromWorker) -> Option<FromWorker> {
        match message {
            FromWorker::Ready => {
                self.worker_ready.set(true);
                self.query_state();
                return Some(FromWorker::Ready);
            }
            FromWorker::ModelState { id, state, note } => {
                self.show_state(id, state, note);
                if self.storage.is_open() && !self.cleaning.get() {
                    self.list_storage();
                }
            }
            FromWorker::Storage { report, note } => {
                self.storage.show(report.as_ref(), note.as_deref());
                self.flag(
                    "data-storage",
                    if report.is_some() { "listed" } else { "failed" },
                );
                if self.cleaning.replace(false) {
                    self.query_state();
                }
            }
            FromWorker::DownloadProgress {
                id,
                progress,
                copying,
            } => self.show_download_progress(&id, &progress, copying.as_ref()),
            FromWorker::DownloadDone {
                id,
                fetched_bytes,
                millis,
                note,
            } => {
                self.download_ended(&id);
                self.set_download_status(
                    &format!(
                        "Downloaded and verified {} of {} in {}; it now loads from this browser's cache, offline too.{}",
                        human_bytes(fetched_bytes),
                        self.label_of(&id),
                        took(millis),
                        note.map(|n| format!(" {n}")).unwrap_or_default()
                    ),
                    false,
                );
                self.flag("data-download", "done");
            }
            FromWorker::DownloadCancelled { id } => {
                self.download_ended(&id);
                self.set_download_status(
                    "Download paused: the verified and partial bytes stay; Resume continues from there.",
                    false,
                );
                self.flag("data-download", "cancelled");
            }
            FromWorker::DownloadFailed { id, message } => {
                self.download_ended(&id);
                self.set_download_status(&message, true);
                self.flag("data-download", "failed");
            }
            FromWorker::LoadProgress {
                component,
                bytes_read,
                bytes_total,
            } => {
                let total = bytes_total.unwrap_or(0).max(1);
                self.load_progress.set_max(total as f64);
                self.load_progress.set_value(bytes_read as f64);
                // Rate and time left over this phase of the load (the copy, the weights).
                let now = js_sys::Date::now();
                let mut phase = self.load_phase.borrow_mut();
                if phase.as_ref().is_none_or(|p| p.0 != component) {
                    *phase = Some((component.clone(), now, bytes_read));
                }
                let (t0, b0) = phase.as_ref().map_or((now, bytes_read), |p| (p.1, p.2));
                drop(phase);
                let elapsed_s = (now - t0) / 1000.0;
                let rate = match elapsed_s >= 1.0 && bytes_read > b0 {
                    true => (bytes_read - b0) as f64 / elapsed_s,
                    false => 0.0,
                };
                let eta = (rate > 0.0).then(|| total.saturating_sub(bytes_read) as f64 / rate);
                self.set_model_status(
                    &format!(
                        "Loading {component}: {} of {}{}…",
                        megabytes(bytes_read),
                        megabytes(total),
                        rate_and_eta(rate, eta)
                    ),
                    false,
                );
            }
            FromWorker::MemoryPlan {
                summary,
                plan,
                budget_bytes,
                limits,
                phased,
                ..
            } => {
                let binding = limits.largest_buffer();
                set_line(
                    &self.plan_line,
                    &format!(
                        "Memory plan for a budget of {} and buffers of at most {}: {summary}.{}",
                        gib(budget_bytes),
                        gib(binding),
                        if phased {
                            " Each run loads the text encoder, frees it, then loads the \
                             transformer and the VAE, and frees them."
                        } else {
                            " The model stays loaded between runs."
                        }
                    ),
                    false,
                );
                self.flag(
                    "data-plan",
                    if plan.is_resident() {
                        "resident"
                    } else {
                        "streaming"
                    },
                );
                self.flag(
                    "data-plan-vae",
                    if plan.vae_tiling.is_some() {
                        "tiled"
                    } else {
                        "whole"
                    },
                );
            }
            FromWorker::RunLoading {
                component,
                bytes_read,
                bytes_total,
                elapsed_ms,
            } => self.set_run_status(
                &format!(
                    "Loading the {component} for this run: {} of at most {} ({} elapsed)…",
                    megabytes(bytes_read),
                    megabytes(bytes_total),
                    duration(elapsed_ms)
                ),
                false,
            ),
            FromWorker::ModelLoaded {
                id,
                text_encoder,
                captioner,
                phased,
                millis,
                note: load_note,
            } => {
                self.captioner.set(captioner);
                self.load_ended();
                let label = self.label_of(&id);
                let mut status = if phased {
                    format!(
                        "Ready: {label}, loaded in phases for each run as its memory plan \
                         says (configs read in {:.1} s).",
                        millis / 1000.0
                    )
                } else {
                    format!("Loaded {label} in {}.", took(millis))
                };
                if let Some(extra) = load_note {
                    status = format!("{status} {extra}");
                }
                self.set_model_status(&status, false);
                let note = if text_encoder && captioner {
                    "Open an image and press Decompose. Leave the prompt empty to have the model \
                     describe the picture first, or describe it yourself. Select a layer and \
                     press Decompose layer to split it further."
                } else if text_encoder {
                    "Open an image, describe it in the prompt, and press Decompose (this model \
                     cannot caption an empty prompt: it has no vision tower)."
                } else {
                    "This model has no text encoder: a run stops with that message, because the \
                     model needs a prompt."
                };
                self.note.set_text_content(Some(note));
                *self.loaded.borrow_mut() = Some(id);
                self.flag("data-model", "loaded");
                self.update_buttons();
            }
            FromWorker::LoadCancelled { at } => {
                self.load_ended();
                self.set_model_status(
                    &format!(
                        "Loading cancelled ({at}): no model is loaded. A quantized copy being \
                         written keeps what it wrote; the next Load goes on from there."
                    ),
                    false,
                );
                self.flag("data-model", "cancelled");
                self.update_buttons();
            }
            FromWorker::LoadFailed { message } => {
                self.load_ended();
                *self.loaded.borrow_mut() = None;
                self.set_model_status(&message, true);
                self.flag("data-model", "failed");
                self.update_buttons();
            }
            FromWorker::Unloaded => {
                *self.loaded.borrow_mut() = None;
                self.set_model_status("No model loaded.", false);
                self.flag("data-model", "none");
                self.update_buttons();
            }
            FromWorker::RunProgress {
                phase,
                step,
                steps,
                elapsed_ms,
            } => self.show_progress(phase, step, steps, elapsed_ms),
            FromWorker::CaptionProgress {
                text,
                tokens,
                max_tokens,
                elapsed_ms,
            } => {
                self.caption_box.set_hidden(false);
                self.use_caption_button.set_hidden(true);
                self.caption_text.set_text_content(Some(&text));
                self.run_progress.set_max(max_tokens.max(1) as f64);
                self.run_progress.set_value(tokens as f64);
                self.set_run_status(
                    &format!(
                        "Captioning: token {tokens} of at most {max_tokens} ({} elapsed)",
                        duration(elapsed_ms)
                    ),
                    false,
                );
            }
            FromWorker::Layers {
                layers,
                caption,
                millis,
            } => {
                self.run_ended();
                let target = self.target.borrow_mut().take();
                if let Some(caption) = &caption {
                    self.caption_text.set_text_content(Some(caption));
                    self.caption_box.set_hidden(false);
                    self.use_caption_button.set_hidden(false);
                }
                let shown = match &target {
                    Some(Target::Layer { id, name }) => images_of(&layers).and_then(|images| {
                        super::editor_ui::replace_layer(
                            *id,
                            NewLayer::from_decomposition(&format!("{name} ·"), images),
                        )
                    }),
                    _ => show_layers(&layers),
                };
                let what = match &target {
                    Some(Target::Layer { name, .. }) => format!("Decomposed “{name}” into"),
                    _ => "Decomposed into".to_owned(),
                };
                match shown {
                    Ok(()) => {
                        let done = format!("{what} {} layers in {}.", layers.len(), took(millis));
                        self.set_run_status(&done, false);
                        // The run was started down in the side panel: the page's status line
                        // and the layers panel (scrolled to) show where the result went.
                        set_status(&format!("{done} They are in the Layers panel."), Tone::Ok);
                        if let Some(panel) = self.document.get_element_by_id("layers-panel") {
                            panel.scroll_into_view_with_bool(true);
                        }
                    }
                    Err(err) => {
                        self.set_run_status(&format!("Could not show the layers: {err}"), true)
                    }
                }
                self.flag("data-run", "done");
            }
            FromWorker::Cancelled { at } => {
                self.run_ended();
                self.target.borrow_mut().take();
                self.set_run_status(&format!("Cancelled {at}."), false);
                self.flag("data-run", "cancelled");
            }
            FromWorker::RunFailed { message } => {
                self.run_ended();
                self.target.borrow_mut().take();
                self.set_run_status(&message, true);
                self.flag("data-run", "failed");
            }
            FromWorker::Error { message } => {
                // The worker may be gone (a crash posts this too): nothing is in flight now.
                if self.busy.get() {
                    let loading = self.loading.get();
                    self.load_ended();
                    self.run_ended();
                    if loading {
                        self.set_model_status(&message, true);
                        self.flag("data-model", "failed");
                    } else {
                        self.target.borrow_mut().take();
                        self.set_run_status(&message, true);
                        self.flag("data-run", "failed");
                    }
                }
                return Some(FromWorker::Error { message });
            }
            other => return Some(other),
        }
        None
    }

    fn show_models(&self, registry: ModelRegistry) {
        let hostname = web_sys::window()
            .and_then(|w| w.location().hostname().ok())
            .unwrap_or_default();
        let models = registry.visible(&hostname);
        self.model_select.set_inner_html("");
        for model in &models {
            if let Ok(option) = self.document.create_element("option") {
                option.set_attribute("value", &model.id).ok();
                option.set_text_content(Some(&model.label));
                self.model_select.append_child(&option).ok();
            }
        }
        *self.models.borrow_mut() = models;
        self.model_chosen();
        self.flag("data-models", "ready");
        self.update_buttons();
    }

    fn chosen(&self) -> Option<ModelSource> {
        let id = self.model_select.value();
        self.models.borrow().iter().find(|m| m.id == id).cloned()
    }

    /// The bytes the browser holds of source `id`, when its cache state is known.
    fn stored_bytes_of(&self, id: &str) -> Option<u64> {
        match self.cache.borrow().as_ref() {
            Some((cached, Some(state))) if cached == id => Some(held_bytes(state)),
            _ => None,
        }
    }

    fn label_of(&self, id: &str) -> String {
        self.models
            .borrow()
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| id.to_owned(), |m| m.label.clone())
    }

    /// The resolution choices and the cache state follow the chosen model.
    fn model_chosen(&self) {
        let Some(model) = self.chosen() else { return };
        confirm::disarm(&self.delete_button);
        self.query_state();
        self.resolution.set_inner_html("");
        for r in &model.resolutions {
            if let Ok(option) = self.document.create_element("option") {
                option.set_attribute("value", &r.to_string()).ok();
                option.set_text_content(Some(&r.to_string()));
                self.resolution.append_child(&option).ok();
            }
        }
        self.update_buttons();
    }

    fn update_buttons(&self) {
        let worker = self.worker.borrow().is_some() && self.gpu_ready.get();
        let busy = self.busy.get();
        let chosen = self.chosen().map(|m| m.id);
        let state = self.cache.borrow().as_ref().and_then(|(id, state)| {
            (Some(id) == chosen.as_ref())
                .then(|| state.clone())
                .flatten()
        });
        let downloading = self.downloading.borrow().clone();
        let this_downloading = downloading.is_some() && downloading == chosen;
        let complete = state.as_ref().is_some_and(CacheState::complete);
        let stored = state
            .as_ref()
            .is_some_and(|s| s.verified_bytes + s.partial_bytes > 0);
        self.download_button.set_hidden(complete);
        self.download_button
            .set_disabled(!self.worker_ready.get() || downloading.is_some() || chosen.is_none());
        self.download_button.set_text_content(Some(match &state {
            Some(s) if s.verified_bytes + s.partial_bytes > 0 => "Resume download",
            _ => "Download",
        }));
        self.cancel_download_button.set_hidden(!this_downloading);
        let can_delete = self.worker_ready.get() && !this_downloading && stored;
        self.delete_button.set_disabled(!can_delete);
        if !can_delete {
            confirm::disarm(&self.delete_button);
        }
        self.load_button
            .set_disabled(!worker || busy || this_downloading || !complete);
        self.cancel_load_button.set_hidden(!self.loading.get());
        self.decompose_button.set_disabled(
            !worker || busy || self.loaded.borrow().is_none() || self.image.borrow().is_none(),
        );
        self.decompose_layer_button.set_disabled(
            !worker || busy || self.loaded.borrow().is_none() || !self.layer_selected.get(),
        );
        self.cancel_button
            .set_hidden(!busy || self.run_started.get() == 0.0);
    }

    fn send(&self, message: &ToWorker) -> Result<(), String> {
        let worker = self.worker.borrow();
        let worker = worker.as_ref().ok_or("the model worker is not running")?;
        let value = serde_wasm_bindgen::to_value(message).map_err(|e| e.to_string())?;
        worker
            .post_message_with_transfer(&value, &pixel_buffers(&value))
            .map_err(|e| js_error_text(&e))
    }

    /// Asks the worker for the storage manager's listing.
    fn list_storage(&self) {
        if !self.worker_ready.get() {
            return self
                .storage
                .busy("The model worker is starting; open this again in a moment.");
        }
        let sources = self.models.borrow().clone();
        match self.send(&ToWorker::ListStorage { sources }) {
            Ok(()) => {
                self.storage.busy("Reading this browser's storage…");
                self.flag("data-storage", "listing");
            }
            Err(err) => self
                .storage
                .busy(&format!("Could not ask the worker: {err}")),
        }
    }

    /// Asks the worker to remove what no listed model reads from `repo@revision`.
    fn clean_storage(&self, repo: String, revision: String) {
        let sources = self.models.borrow().clone();
        let message = ToWorker::CleanStorage {
            sources,
            repo,
            revision,
        };
        match self.send(&message) {
            Ok(()) => {
                self.cleaning.set(true);
                self.storage.busy("Removing…");
                self.flag("data-storage", "cleaning");
            }
            Err(err) => self
                .storage
                .busy(&format!("Could not ask the worker: {err}")),
        }
    }

    /// Asks the worker what the cache holds of the chosen source.
    fn query_state(&self) {
        let Some(model) = self.chosen() else { return };
        if !self.worker_ready.get() {
            return;
        }
        if self.cache.borrow().as_ref().map(|(id, _)| id) != Some(&model.id) {
            *self.cache.borrow_mut() = None;
            self.model_info
                .set_text_content(Some("Checking this browser's model cache…"));
            self.flag("data-cache", "unknown");
        }
        if let Err(err) = self.send(&ToWorker::QueryModel { source: model }) {
            self.set_download_status(&format!("Could not ask the worker: {err}"), true);
        }
    }

    fn show_state(&self, id: String, state: Option<CacheState>, note: Option<String>) {
        let Some(model) = self.chosen() else { return };
        if model.id != id {
            return; // a late answer about another source
        }
        let revision = if model.pinned() {
            format!("{}@{}", model.repo, short(&model.revision))
        } else {
            format!("{} branch {} (unpinned", model.repo, model.revision)
        };
        let (text, flag) = match &state {
            None => (
                format!(
                    "{} {revision}{}.",
                    note.as_deref().unwrap_or("Size unknown."),
                    if model.pinned() { "" } else { ")" }
                ),
                "unknown",
            ),
            Some(s) => {
                let commits = s
                    .revisions
                    .iter()
                    .map(|r| match r.split_once('@') {
                        Some((repo, sha)) => format!("{repo}@{}", short(sha)),
                        None => r.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let source = if model.pinned() {
                    commits
                } else if s.from_record {
                    format!("{revision}, fixed at {commits} by the download)")
                } else {
                    format!("{revision}, now {commits})")
                };
                if s.complete() {
                    (
                        format!(
                            "Cached and verified: {} in {} files{}. {source}.",
                            human_bytes(s.total_bytes),
                            s.files_total,
                            stored_copies(s)
                        ),
                        "cached",
                    )
                } else if s.verified_bytes + s.partial_bytes > 0 {
                    (
                        format!(
                            "Partly downloaded: {} of {} ({} of {} files verified). {source}.",
                            human_bytes(s.verified_bytes + s.partial_bytes),
                            human_bytes(s.total_bytes),
                            s.files_verified,
                            s.files_total
                        ),
                        "partial",
                    )
                } else {
                    (
                        format!(
                            "Size {} in {} files; not downloaded. {source}.",
                            human_bytes(s.total_bytes),
                            s.files_total
                        ),
                        "none",
                    )
                }
            }
        };
        self.model_info.set_text_content(Some(&text));
        *self.cache.borrow_mut() = Some((id, state));
        self.flag("data-cache", flag);
        self.update_buttons();
    }

    async fn download(&self) {
        let Some(model) = self.chosen() else { return };
        if self.downloading.borrow().is_some() {
            return;
        }
        // Ask for persistent storage first, then refuse up front, with the numbers, when the
        // quota cannot hold what is missing (the worker checks again before it starts). Not
        // for a source whose checkpoints are quantized as they arrive: that needs less than
        // what is missing, and only the worker, reading the headers, knows how much.
        let copies = !model.stored_copies().is_empty();
        let missing = self
            .cache
            .borrow()
            .as_ref()
            .filter(|_| !copies)
            .and_then(|(id, state)| {
                let s = state.as_ref().filter(|_| *id == model.id)?;
                Some(
                    s.total_bytes
                        .saturating_sub(s.verified_bytes + s.partial_bytes),
                )
            });
        let persisted = match super::opfs::storage_status().await {
            Ok(status) => {
                if let Some(missing) = missing.filter(|&m| m > 0)
                    && let Err(err) = super::opfs::check_quota(missing, &status)
                {
                    self.set_download_status(
                        &format!("Not downloading {}: {err}", model.label),
                        true,
                    );
                    self.flag("data-download", "failed");
                    return;
                }
                status.persisted
            }
            Err(_) => false,
        };
        let storage_free = match storage_free_from_query(&url_query()) {
            Ok(free) => free,
            Err(err) => {
                return self.set_download_status(&format!("Not downloading: {err}"), true);
            }
        };
        match self.send(&ToWorker::DownloadModel {
            source: model.clone(),
            storage_free,
        }) {
            Ok(()) => {
                *self.downloading.borrow_mut() = Some(model.id.clone());
                self.download_progress.set_value(0.0);
                self.download_progress.set_hidden(false);
                self.set_download_status(
                    &format!(
                        "Starting the download{}…",
                        if persisted {
                            ""
                        } else {
                            " (storage is not persistent: the browser may evict it when space runs low)"
                        }
                    ),
                    false,
                );
                self.flag("data-download", "running");
            }
            Err(err) => {
                self.set_download_status(&format!("Could not start the download: {err}"), true)
            }
        }
        self.update_buttons();
    }

    fn show_download_progress(&self, id: &str, p: &Progress, copying: Option<&CopyProgress>) {
        if self.downloading.borrow().as_deref() != Some(id) {
            return;
        }
        if let (0, Some(c)) = (p.files_total, copying) {
            // No file counted yet: a partial copy is being read back to resume it.
            self.download_progress.set_max(c.size.max(1) as f64);
            self.download_progress.set_value(c.written as f64);
            return self.set_download_status(
                &format!(
                    "Resuming: reading back the {}'s {}-bit copy made so far: {} of {}",
                    c.component.replace('_', " "),
                    c.bits,
                    human_bytes(c.written),
                    human_bytes(c.size)
                ),
                false,
            );
        }
        self.download_progress.set_max(p.total_bytes.max(1) as f64);
        self.download_progress.set_value(p.done_bytes as f64);
        let eta = p.eta_s.filter(|_| p.done_bytes < p.total_bytes);
        // While a shard is quantized into its stored copy, no byte arrives: that is said
        // instead of a rate.
        let moving = match copying {
            Some(c) => format!(
                " · quantizing the {} to {} bits: {} of {}",
                c.component.replace('_', " "),
                c.bits,
                human_bytes(c.written),
                human_bytes(c.size)
            ),
            None => rate_and_eta(p.rate_bytes_per_s, eta),
        };
        self.set_download_status(
            &format!(
                "Downloading: {} of {} ({} of {} files verified){moving}",
                human_bytes(p.done_bytes),
                human_bytes(p.total_bytes),
                p.files_done,
                p.files_total,
            ),
            false,
        );
    }

    fn download_ended(&self, id: &str) {
        if self.downloading.borrow().as_deref() == Some(id) {
            *self.downloading.borrow_mut() = None;
        }
        self.download_progress.set_hidden(true);
        self.update_buttons();
    }

    fn cancel_download(&self) {
        if self.downloading.borrow().is_none() {
            return;
        }
        match self.send(&ToWorker::CancelDownload) {
            Ok(()) => {
                self.cancel_download_button.set_hidden(true);
                self.set_download_status("Pausing the download…", false);
            }
            Err(err) => self.set_download_status(&format!("Could not cancel: {err}"), true),
        }
    }

    fn delete(&self) {
        let Some(model) = self.chosen() else { return };
        let question = match self.stored_bytes_of(&model.id) {
            Some(bytes) if bytes > 0 => format!("Delete {}? Click again", human_bytes(bytes)),
            _ => "Delete? Click again".to_owned(),
        };
        if !confirm::second_click(&self.delete_button, &question) {
            return;
        }
        match self.send(&ToWorker::DeleteModel {
            source: model.clone(),
        }) {
            Ok(()) => {
                self.delete_button.set_disabled(true);
                self.set_download_status(
                    &format!("Deleting {} from this browser's cache…", model.label),
                    false,
                );
                self.flag("data-download", "deleted");
            }
            Err(err) => self.set_download_status(&format!("Could not delete: {err}"), true),
        }
    }

    fn load(&self) {
        let Some(model) = self.chosen() else { return };
        let memory = match self.memory_settings() {
            Ok(memory) => memory,
            Err(err) => return self.set_model_status(&format!("Not loading: {err}"), true),
        };
        let (storage_free, f16) = match (
            storage_free_from_query(&url_query()),
            f16_from_query(&url_query()),
        ) {
            (Ok(free), Ok(f16)) => (free, f16),
            (Err(err), _) | (_, Err(err)) => {
                return self.set_model_status(&format!("Not loading: {err}"), true);
            }
        };
        match self.send(&ToWorker::LoadModel {
            source: model.clone(),
            memory: Some(memory),
            storage_free,
            f16,
        }) {
            Ok(()) => {
                self.busy.set(true);
                self.loading.set(true);
                self.cancel_load_button.set_disabled(false);
                *self.loaded.borrow_mut() = None;
                self.load_progress.set_value(0.0);
                self.load_progress.set_hidden(false);
                self.set_model_status(&format!("Loading {}…", model.label), false);
                self.flag("data-model", "loading");
            }
            Err(err) => self.set_model_status(&format!("Could not start loading: {err}"), true),
        }
        self.update_buttons();
    }

    fn decompose(&self) {
        if self.busy.get() || self.loaded.borrow().is_none() {
            return;
        }
        let Some(image) = self.image.borrow().clone() else {
            return self.set_run_status("Open an image first.", true);
        };
        self.start_run(image, Target::Picture);
    }

    /// Decomposes the selected layer's own pixels; its sub-layers replace it in place.
    fn decompose_layer(&self) {
        if self.busy.get() || self.loaded.borrow().is_none() {
            return;
        }
        let Some((id, name, image)) = super::editor_ui::selected_layer() else {
            return self.set_run_status("Select a layer first.", true);
        };
        self.start_run(image, Target::Layer { id, name });
    }

    fn start_run(&self, image: RgbaImage, target: Target) {
        let request = match self.read_settings(image) {
            Ok(request) => request,
            Err(message) => return self.set_run_status(&message, true),
        };
        let steps = request.steps;
        let captioning = crate::text::needs_caption(&request.prompt);
        if captioning && !self.captioner.get() {
            return self.set_run_status(
                "This model cannot describe the picture itself (it has no vision tower): enter \
                 a prompt that describes it.",
                true,
            );
        }
        match self.send(&ToWorker::Decompose(request)) {
            Ok(()) => {
                *self.target.borrow_mut() = Some(target);
                if captioning {
                    self.caption_text.set_text_content(None);
                    self.caption_box.set_hidden(true);
                }
                self.busy.set(true);
                self.run_started.set(js_sys::Date::now());
                self.denoise_started.set(None);
                self.run_progress.set_max(steps as f64);
                self.run_progress.set_value(0.0);
                self.run_progress.set_hidden(false);
                self.cancel_button.set_disabled(false);
                self.set_run_status("Starting…", false);
                self.flag("data-run", "running");
            }
            Err(err) => self.set_run_status(&format!("Could not start: {err}"), true),
        }
        self.update_buttons();
    }

    fn read_settings(&self, image: RgbaImage) -> Result<DecomposeRequest, String> {
        let input = |id: &str| -> Result<HtmlInputElement, String> {
            self.document
                .get_element_by_id(id)
                .and_then(|e| e.dyn_into().ok())
                .ok_or_else(|| format!("#{id} is missing from the page"))
        };
        let whole = |id: &str, what: &str, min: f64, max: f64| -> Result<f64, String> {
            let v = input(id)?.value_as_number();
            if v.is_finite() && v.fract() == 0.0 && (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{what} must be a whole number from {min} to {max}"))
            }
        };
        let cfg = input("set-cfg")?.value_as_number();
        if !cfg.is_finite() || cfg < 0.0 {
            return Err("the CFG scale must be a number of 0 or more".into());
        }
        let resolution = self
            .resolution
            .value()
            .parse()
            .map_err(|_| "choose a resolution".to_owned())?;
        Ok(DecomposeRequest {
            layers: whole("set-layers", "Layers", 1.0, 10.0)? as usize,
            steps: whole("set-steps", "Steps", 1.0, 100.0)? as usize,
            resolution,
            true_cfg_scale: cfg as f32,
            cfg_normalize: input("set-cfg-normalize")?.checked(),
            seed: whole("set-seed", "The seed", 0.0, 9_007_199_254_740_991.0)? as u64,
            prompt: input("set-prompt")?.value(),
            max_caption_tokens: whole("set-caption-tokens", "Caption tokens", 1.0, 2048.0)?
                as usize,
            gpu_fault: GpuFault::from_query(&url_query())?,
            image: Rgba {
                width: image.width(),
                height: image.height(),
                pixels: image.into_raw(),
            },
        })
    }

    /// Puts the last caption into the prompt field (to reuse or edit it).
    fn use_caption(&self) {
        let text = self.caption_text.text_content().unwrap_or_default();
        if let Some(input) = self
            .document
            .get_element_by_id("set-prompt")
            .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
        {
            input.set_value(&text);
            input.focus().ok();
        }
    }

    fn cancel(&self) {
        if !self.busy.get() {
            return;
        }
        match self.send(&ToWorker::Cancel) {
            Ok(()) => {
                self.cancel_button.set_disabled(true);
                self.set_run_status("Cancelling after the current step…", false);
            }
            Err(err) => self.set_run_status(&format!("Could not cancel: {err}"), true),
        }
    }

    fn show_progress(&self, phase: RunPhase, step: usize, steps: usize, elapsed_ms: f64) {
        let now = js_sys::Date::now();
        let elapsed = format!("{} elapsed", duration(elapsed_ms));
        let text = match phase {
            RunPhase::Captioning => format!("Captioning the picture… ({elapsed})"),
            RunPhase::EncodingPrompt => format!("Encoding the prompt… ({elapsed})"),
            RunPhase::EncodingImage => format!("Encoding the image… ({elapsed})"),
            RunPhase::Denoising => {
                let (t0, s0) = match self.denoise_started.get() {
                    Some(start) => start,
                    None => {
                        self.denoise_started.set(Some((now, step)));
                        (now, step)
                    }
                };
                let eta = if step > s0 {
                    let per_step = (now - t0) / (step - s0) as f64;
                    format!(
                        ", about {} left",
                        duration(per_step * (steps - step) as f64)
                    )
                } else {
                    String::new()
                };
                format!("Denoising: step {step} of {steps} ({elapsed}{eta})")
            }
            RunPhase::Decoding => format!("Decoding the layers… ({elapsed})"),
        };
        self.run_progress.set_max(steps.max(1) as f64);
        self.run_progress.set_value(step as f64);
        self.set_run_status(&text, false);
    }

    /// Asks the worker to stop the load in flight (at its next weight read).
    fn cancel_load(&self) {
        if !self.loading.get() {
            return;
        }
        match self.send(&ToWorker::Cancel) {
            Ok(()) => {
                self.cancel_load_button.set_disabled(true);
                self.set_model_status("Cancelling the load…", false);
            }
            Err(err) => self.set_model_status(&format!("Could not cancel: {err}"), true),
        }
    }

    /// A load is over (loaded, failed, cancelled): its progress and Cancel go away.
    fn load_ended(&self) {
        self.loading.set(false);
        self.load_phase.borrow_mut().take();
        self.busy.set(false);
        self.load_progress.set_hidden(true);
    }

    fn run_ended(&self) {
        self.busy.set(false);
        self.run_started.set(0.0);
        self.run_progress.set_hidden(true);
        self.update_buttons();
    }

    fn set_download_status(&self, text: &str, error: bool) {
        set_line(&self.download_status, text, error);
    }

    fn set_model_status(&self, text: &str, error: bool) {
        set_line(&self.model_status, text, error);
    }

    fn set_run_status(&self, text: &str, error: bool) {
        set_line(&self.run_status, text, error);
    }

    fn flag(&self, name: &str, value: &str) {
        if let Some(body) = self.document.body() {
            body.set_attribute(name, value).ok();
        }
    }
}

fn set_line(element: &Element, text: &str, error: bool) {
    element.set_text_content(Some(text));
    element.set_class_name(if error { "error" } else { "muted" });
    element
        .set_attribute("role", if error { "alert" } else { "status" })
        .ok();
}

/// The URL's forced limits and budget (`?gpu-budget=…&gpu-max-binding=…`), read at each Load
/// (so a test can change them with `history.replaceState` and load again in the same worker).
fn url_overrides() -> Result<MemoryOverrides, String> {
    MemoryOverrides::from_query(&url_query())
}

/// `location.search` (the test and debugging parameters; `gpu-fault` is read at each
/// Decompose, the memory ones at each Load).
fn url_query() -> String {
    web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default()
}

/// Bytes in binary units: `4.00 GiB` (as the budget field takes them), `4.86 MiB`, `64 KiB`.
fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// `localStorage.getItem(key)`, through `Reflect` (no web-sys `Storage` feature needed).
fn storage_get(key: &str) -> Option<String> {
    let storage = js_sys::Reflect::get(&web_sys::window()?.into(), &"localStorage".into()).ok()?;
    let get: js_sys::Function = js_sys::Reflect::get(&storage, &"getItem".into())
        .ok()?
        .dyn_into()
        .ok()?;
    get.call1(&storage, &key.into()).ok()?.as_string()
}

/// `localStorage.setItem(key, value)` (`removeItem` for an empty value); failures (storage
/// disabled) are ignored: the field still works for this page.
fn storage_set(key: &str, value: &str) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let Ok(storage) = js_sys::Reflect::get(&window, &"localStorage".into()) else {
        return;
    };
    let method = if value.trim().is_empty() {
        "removeItem"
    } else {
        "setItem"
    };
    if let Ok(f) = js_sys::Reflect::get(&storage, &method.into())
        && let Ok(f) = f.dyn_into::<js_sys::Function>()
    {
        f.call2(&storage, &key.into(), &value.into()).ok();
    }
}

/// ` · 12.0 MB/s · about 3 s left` (the parts known: nothing before a rate is).
fn rate_and_eta(rate_bytes_per_s: f64, eta_s: Option<f64>) -> String {
    if rate_bytes_per_s <= 0.0 {
        return String::new();
    }
    let eta = eta_s.map_or(String::new(), |s| {
        format!(" · about {} left", duration(s * 1000.0))
    });
    format!(" · {}/s{eta}", human_bytes(rate_bytes_per_s as u64))
}

/// The bytes this browser holds of a source: its committed files less the checkpoint bytes
/// its quantized copies replaced, its partial downloads and the copies.
fn held_bytes(s: &CacheState) -> u64 {
    s.verified_bytes.saturating_sub(s.replaced_bytes) + s.partial_bytes + s.copy_bytes
}

/// What the stored quantized copies add to the cache line: their size, and the checkpoint
/// bytes they replaced (removed from the browser's storage).
fn stored_copies(s: &CacheState) -> String {
    match (s.copy_bytes, s.replaced_bytes) {
        (0, _) => String::new(),
        (copies, 0) => format!(", and {} of quantized copies", human_bytes(copies)),
        (copies, replaced) => format!(
            ", of which {} of checkpoint were replaced by {} of quantized copies (this browser \
             keeps {})",
            human_bytes(replaced),
            human_bytes(copies),
            human_bytes(held_bytes(s))
        ),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The first 7 characters of a commit.
fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// How long something finished took: tenths of a second under a minute ("12.4 s"), then as
/// [`duration`] ("24 min 18 s", not "1457.7 s").
fn took(ms: f64) -> String {
    if ms < 59_950.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        duration(ms)
    }
}

fn duration(ms: f64) -> String {
    let s = (ms / 1000.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

async fn fetch_registry() -> Result<ModelRegistry, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response: Response = JsFuture::from(window.fetch_with_str(REGISTRY_URL))
        .await
        .map_err(|e| format!("{REGISTRY_URL}: {}", js_error_text(&e)))?
        .dyn_into()
        .map_err(|_| format!("{REGISTRY_URL}: not a response"))?;
    if !response.ok() {
        return Err(format!("{REGISTRY_URL}: HTTP {}", response.status()));
    }
    let text = JsFuture::from(response.text().map_err(|e| js_error_text(&e))?)
        .await
        .map_err(|e| js_error_text(&e))?
        .as_string()
        .unwrap_or_default();
    ModelRegistry::from_json(&text)
}

/// Replaces the editor's document by a decomposition's layers (bottom → top), as one undoable
/// change ([`super::editor_ui::show_layers`]).
pub fn show_layers(layers: &[Rgba]) -> Result<(), String> {
    super::editor_ui::show_layers(NewLayer::from_decomposition("Layer", images_of(layers)?))
}

/// The worker's layers as images (checked).
fn images_of(layers: &[Rgba]) -> Result<Vec<RgbaImage>, String> {
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            layer.check(&format!("layer {}", i + 1))?;
            RgbaImage::from_raw(layer.width, layer.height, layer.pixels.clone())
                .ok_or_else(|| format!("layer {}: the pixel buffer does not fit its size", i + 1))
        })
        .collect()
}
