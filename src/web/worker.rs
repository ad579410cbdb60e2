//! The Web Worker: owns the GPU device and the model, so the page never freezes.
//!
//! Protocol: on start it installs its message handler and posts [`FromWorker::Ready`]; the page
//! must not send anything before that (messages sent while the wasm loads are dropped). Every
//! failure is posted as a message. A panic (e.g. wgpu's handler for an uncaptured GPU error
//! such as out-of-memory) is logged, posted as [`FromWorker::Error`], and also surfaces through
//! the worker's `error` event.
//!
//! One task at a time: a load or a run. A run awaits a readback after every caption token and
//! every denoising step, so a [`ToWorker::Cancel`] arriving meanwhile is seen before the next
//! one starts. Weight reads are cancellable too ([`Counted`], [`Cancellable`]): a load (or a
//! phase of a run loading its weights, or a streamed ring reading blocks) stops at its next
//! read, and a stored copy being written keeps what it wrote for the next load; the load ends
//! with [`FromWorker::LoadCancelled`], the run with [`FromWorker::Cancelled`]. Loading a model
//! frees the previous one first; the model loads from the verified OPFS cache
//! ([`super::models::CachedModel`]) once the source has been downloaded. A download (at most
//! one) runs beside the other tasks; [`ToWorker::CancelDownload`] stops it between chunks.
//!
//! An empty prompt (`""` or `" "`) is captioned first, as the reference pipeline does
//! (`get_image_caption` of the picture resized to the working size, English template as the
//! official app, at most `max_caption_tokens` tokens streamed as
//! [`FromWorker::CaptionProgress`]); the caption is then the prompt and comes back with the
//! layers. Models that have the processor settings and the vision tower load the [`Captioner`]
//! (vision tower + language model with `lm_head`) and encode prompts with its language model;
//! others load only the text encoder and refuse an empty prompt with a message.
//!
//! Layers come back at the size of the request's picture (see [`layers_at_size`]).
//!
//! Memory (issue #6): at Load the worker reads the three configs (JSON only), makes a
//! [`MemoryPlan`] from the device's limits (or the page's forced ones) and the page's budget,
//! posts it ([`FromWorker::MemoryPlan`]) before any weight is read, and refuses a plan that
//! cannot fit with its numbers. A plan that keeps the transformer resident loads everything
//! and keeps it between runs (VAE tiling as each run's plan says). Otherwise the model is
//! *phased*: only its configs are kept, and each run loads the text encoder (the captioner
//! for an empty prompt), encodes, frees it ([`encode_prompts_then_free`]), then loads the
//! transformer's non-block part, a ring of blocks and the VAE ([`PlannedPipeline`]), runs
//! with per-step progress and cancel, drops the ring before the VAE decode, and frees it all;
//! [`FromWorker::RunLoading`] says which phase is loading. An uncaptured GPU error (out of
//! memory) is recorded instead of panicking; the task in flight stops at its next step and
//! fails with it, and the model is unloaded (the page's editor is untouched). A lost device
//! (cubecl poisons it in its device-lost callback) fails the run's next read; the run says so
//! and asks for an Export and a reload. For tests, a request may carry a [`GpuFault`] that the
//! worker causes for real after the first denoising step ([`cause_gpu_fault`]).

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;
use image::RgbaImage;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::adapter::{AdapterFacts, NoAdapter, request_adapter_facts};
use super::models::{self, CachedModel};
use super::{js_error_text, pixel_buffers};
use crate::caption::{CaptionLanguage, CaptionOptions, Captioner};
use crate::error::{Error, Result};
use crate::gpu::{FeatureState, GpuReport, KeyLimits, lost_device_reason, matmul_self_test};
use crate::model::nn::{QuantizedMatmul, default_quantized_matmul, set_quantized_matmul};
use crate::model::text_encoder;
use crate::model::transformer::QwenImageTransformer2DModel;
use crate::pipeline::{
    DecomposeParams, Dimensions, LayeredPipeline, MemoryPlan, ModelConfigs, Noise, PlannedPipeline,
    Progress, PromptEmbeds, encode_prompts_then_free, layers_at_size, resize_rgba_lanczos,
};
use crate::protocol::{
    CopyProgress, DecomposeRequest, FromWorker, GpuFault, MemorySettings, ModelSource, Rgba,
    RunPhase, ToWorker,
};
use crate::text::{
    DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_NEGATIVE_PROMPT, PromptEncoder, QwenTokenizer,
    TOKENIZER_FOLDER, TextEncoderLoad, needs_caption,
};
use crate::weights::{
    BROWSER_F32_WEIGHT_BUDGET, Cancellable, Checkpoint, GgufFile, LinearLoad, Precision,
    SafetensorsFolder, WeightSource, check_f32_footprint,
};

thread_local! {
    /// The Burn device once acquired. Burn's runtime can be initialised only once per worker.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    /// The wgpu device under it (for [`cause_gpu_fault`]).
    static WGPU_DEVICE: RefCell<Option<wgpu::Device>> = const { RefCell::new(None) };
    /// The device's limits (from the probe), for memory plans.
    static LIMITS: RefCell<Option<KeyLimits>> = const { RefCell::new(None) };
    /// The loaded model; a run holds its own `Rc`, so unloading during a run frees it after.
    static MODEL: RefCell<Option<Model>> = const { RefCell::new(None) };
    /// What the worker is doing.
    static BUSY: Cell<Option<Task>> = const { Cell::new(None) };
    /// Set by `Cancel`, read between steps and before every weight read.
    static CANCEL: Cell<bool> = const { Cell::new(false) };
    /// The id of the source being downloaded.
    static DOWNLOADING: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set by `CancelDownload`, read between chunks.
    static CANCEL_DOWNLOAD: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Loading,
    Running,
}

/// The first uncaptured GPU error (e.g. out of memory) since the last task started: wgpu posts
/// it to the handler installed in [`probe_gpu`], which records it here instead of panicking;
/// runs check it between steps and fail with it.
static GPU_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// The recorded GPU error, if any.
fn gpu_error() -> Option<String> {
    GPU_ERROR.lock().ok().and_then(|e| e.clone())
}

fn clear_gpu_error() {
    if let Ok(mut e) = GPU_ERROR.lock() {
        *e = None;
    }
}

/// The loaded model: resident (everything on the device between runs, as its memory plan
/// allows) or phased (only its configs: each run loads the text encoder, frees it, loads the
/// transformer as the plan says, runs, frees it).
#[derive(Clone)]
enum Model {
    Resident(Rc<LoadedModel>),
    Phased(Rc<PhasedModel>),
}

/// Plans `source` for a `width × height` run with `layers` layers under `memory`
/// ([`ModelConfigs::plan_keeping`] with the device's limits, or the forced ones); `text_kept`:
/// what the text side keeps on the device if the model stays loaded ([`TextSide`]).
fn plan(
    configs: &ModelConfigs,
    source: &ModelSource,
    memory: &MemorySettings,
    size: (usize, usize),
    layers: usize,
    text_kept: Option<u64>,
) -> Result<MemoryPlan> {
    let limits = LIMITS.with(|l| l.borrow().clone()).ok_or(Error::Input {
        model: "memory plan",
        reason: "the GPU's limits are not known yet".into(),
    })?;
    configs.plan_keeping(
        &memory.budget(&limits),
        source.precision("transformer"),
        source.precision("text_encoder"),
        size,
        layers,
        text_kept,
    )
}

/// What a model's text side is, from its checkpoint headers (read once per load).
#[derive(Debug, Clone, Copy)]
struct TextSide {
    /// Whether the model can caption ([`Captioner::available`]).
    captioning: bool,
    /// Bytes it keeps on the device when the model stays loaded: the text encoder as
    /// [`load_model`] loads it (token embedding gathered), with `lm_head` and the vision tower
    /// when the model can caption.
    kept_bytes: u64,
    /// Bytes of its files that loading it to encode prompts reads (the token embedding
    /// gathered, no `lm_head`, no vision tower): what the load progress counts to.
    prompt_read_bytes: u64,
    /// The same when it loads to caption (with `lm_head` and the vision tower).
    caption_read_bytes: u64,
}

impl TextSide {
    /// Bytes a load of the text side reads: to caption, or only to encode prompts.
    fn read_bytes(&self, captioning: bool) -> u64 {
        if captioning {
            self.caption_read_bytes
        } else {
            self.prompt_read_bytes
        }
    }
}

async fn text_side(cached: &CachedModel, source: &ModelSource) -> Result<TextSide> {
    let precision = source.precision("text_encoder");
    let captioning = Captioner::available(cached, precision).await?;
    let weights = Checkpoint::open(cached, "text_encoder", precision).await?;
    let load = TextEncoderLoad::gathered(precision);
    Ok(TextSide {
        captioning,
        kept_bytes: text_encoder::device_bytes(&weights, load.options(captioning), captioning),
        prompt_read_bytes: text_encoder::read_bytes(&weights, load.options(false), false),
        caption_read_bytes: text_encoder::read_bytes(&weights, load.options(true), true),
    })
}

/// Posts a plan for the page; `phased`: the model loads in phases for each run; `text`: what
/// its text side is, for a sentence when a phased run that captions would go over the budget
/// ([`MemoryPlan::captioning_note`]).
fn post_plan(
    id: &str,
    plan: &MemoryPlan,
    configs: &ModelConfigs,
    memory: &MemorySettings,
    phased: bool,
    text: TextSide,
) {
    let Some(limits) = LIMITS.with(|l| l.borrow().clone()) else {
        return;
    };
    let budget = memory.budget(&limits);
    let mut summary = plan.describe(configs.transformer.num_layers);
    let captioning = text.captioning.then_some(text.kept_bytes);
    if phased && let Some(note) = plan.captioning_note(captioning, budget.device_bytes) {
        summary = format!("{summary} · {note}");
    }
    post(&FromWorker::MemoryPlan {
        id: id.to_owned(),
        summary,
        plan: plan.clone(),
        budget_bytes: budget.device_bytes,
        limits: budget.limits,
        phased,
    });
}

/// A model whose components load for each run.
struct PhasedModel {
    source: ModelSource,
    cached: CachedModel,
    configs: ModelConfigs,
    memory: MemorySettings,
    /// What its text side is: whether it can caption, and what the text encoder with the
    /// captioning parts takes on the device.
    text: TextSide,
}

/// A model on the GPU.
struct LoadedModel {
    /// Transformer, VAE (tiling as the run's plan says), scheduler config.
    pipeline: RefCell<LayeredPipeline>,
    /// What it was loaded from and under which memory settings (`None`: no plan).
    source: ModelSource,
    configs: ModelConfigs,
    memory: Option<MemorySettings>,
    /// Tokenizer + text encoder (keeps the negative prompt's embeddings once computed); its
    /// language model is the captioner's when there is one (shared, not copied).
    prompt: PromptEncoder,
    /// Vision tower + language model with `lm_head`, when the model has them.
    captioner: Option<Captioner>,
    /// The cached files the model was loaded from: the text encoder's token embedding stays
    /// there, and the rows a prompt or caption uses are read from it.
    cached: CachedModel,
    /// What its text side is ([`TextSide`]), for each run's plan: what it keeps on the device,
    /// and whether it captions.
    text: TextSide,
}

/// Size of the self-test matmul: small, so SwiftShader runs it in about a second.
const SELF_TEST: (usize, usize, usize) = (64, 64, 64);

/// Entry point of the `worker` binary.
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        post(&FromWorker::Error {
            message: format!(
                "The model worker crashed ({info}). If the GPU ran out of memory, try fewer \
                 layers or a lower resolution; reload the page to start again."
            ),
        });
    }));
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| {
        match serde_wasm_bindgen::from_value::<ToWorker>(event.data()) {
            Ok(message) => wasm_bindgen_futures::spawn_local(handle(message)),
            Err(err) => post(&FromWorker::Error {
                message: format!("the worker got a message it does not understand: {err}"),
            }),
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget(); // lives as long as the worker
    super::download::watch_csp_violations();
    post(&FromWorker::Ready);
}

/// Posts a message, moving (not copying) its pixel buffers.
fn post(message: &FromWorker) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let value = match serde_wasm_bindgen::to_value(message) {
        Ok(value) => value,
        Err(err) => {
            return web_sys::console::error_1(&format!("encoding a message: {err}").into());
        }
    };
    if let Err(err) = scope.post_message_with_transfer(&value, &pixel_buffers(&value)) {
        web_sys::console::error_1(&format!("postMessage failed: {}", js_error_text(&err)).into());
    }
}

async fn handle(message: ToWorker) {
    match message {
        ToWorker::ProbeGpu => probe_gpu().await,
        ToWorker::LoadModel {
            source,
            memory,
            storage_free,
            f16,
        } => load(source, memory, storage_free, f16).await,
        ToWorker::Decompose(request) => decompose(request).await,
        ToWorker::Cancel => {
            if BUSY.get().is_some() {
                CANCEL.set(true);
            }
        }
        ToWorker::Unload => {
            if BUSY.get() == Some(Task::Loading) {
                return post(&FromWorker::Error {
                    message: "a model is loading; unload it once it has loaded".into(),
                });
            }
            free_model();
            post(&FromWorker::Unloaded);
        }
        ToWorker::QueryModel { source } => post_state(&source).await,
        ToWorker::DownloadModel {
            source,
            storage_free,
        } => download(source, storage_free).await,
        ToWorker::CancelDownload => CANCEL_DOWNLOAD.set(true),
        ToWorker::DeleteModel { source } => delete(source).await,
        ToWorker::ListStorage { sources } => storage(&sources, None).await,
        ToWorker::CleanStorage {
            sources,
            repo,
            revision,
        } => storage(&sources, Some((repo, revision))).await,
    }
}

// ---- the model cache ----------------------------------------------------------------------

async fn post_state(source: &ModelSource) {
    let (state, note) = match models::query(source).await {
        Ok(state) => (Some(state), None),
        Err(note) => (None, Some(note)),
    };
    post(&FromWorker::ModelState {
        id: source.id.clone(),
        state,
        note,
    });
}

async fn download(source: ModelSource, storage_free: Option<u64>) {
    let id = source.id.clone();
    if let Some(other) = DOWNLOADING.with(|d| d.borrow().clone()) {
        return post(&FromWorker::DownloadFailed {
            id,
            message: format!("another download ({other}) is running; cancel it first"),
        });
    }
    DOWNLOADING.with(|d| *d.borrow_mut() = Some(id.clone()));
    CANCEL_DOWNLOAD.set(false);
    let start = js_sys::Date::now();
    let last_post = Cell::new(0.0);
    let last = RefCell::new(None::<crate::download::Progress>);
    let on_progress = |p: &crate::download::Progress| {
        *last.borrow_mut() = Some(p.clone());
        let now = js_sys::Date::now();
        if now - last_post.get() >= 100.0 || p.done_bytes == p.total_bytes {
            last_post.set(now);
            post(&FromWorker::DownloadProgress {
                id: id.clone(),
                progress: p.clone(),
                copying: None,
            });
        }
    };
    // A copy being written from the shard that just arrived: the download's bytes stand still
    // meanwhile, so this is what moves.
    let on_copy = |component: &str, written: u64, size: u64| {
        let now = js_sys::Date::now();
        // Before the download's first snapshot (a resumed copy read back first): an empty
        // one, which the page shows as a resume being prepared.
        let progress = last.borrow().clone().unwrap_or_default();
        if now - last_post.get() >= 100.0 || written == size {
            last_post.set(now);
            post(&FromWorker::DownloadProgress {
                id: id.clone(),
                progress,
                copying: Some(CopyProgress {
                    component: component.to_owned(),
                    bits: source.precision(component).bits().unwrap_or(32),
                    written,
                    size,
                }),
            });
        }
    };
    let cancelled = || CANCEL_DOWNLOAD.get();
    let result = models::download(&source, storage_free, &on_progress, &on_copy, &cancelled).await;
    let millis = js_sys::Date::now() - start;
    // What the first load's copies will take: advice only, the download stands whatever it
    // says. Read while the download still holds the model (a Delete waits for it).
    let note = match &result {
        Ok(_) => models::copies_outlook(&source, storage_free)
            .await
            .unwrap_or_else(|err| {
                let text = format!("the stored copies' outlook is unknown: {err}");
                web_sys::console::warn_1(&text.into());
                None
            }),
        Err(_) => None,
    };
    DOWNLOADING.with(|d| *d.borrow_mut() = None);
    CANCEL_DOWNLOAD.set(false);
    post(&match result {
        Ok(fetched_bytes) => FromWorker::DownloadDone {
            id: id.clone(),
            fetched_bytes,
            millis,
            note,
        },
        Err(crate::download::DownloadError::Cancelled) => {
            FromWorker::DownloadCancelled { id: id.clone() }
        }
        Err(err) => FromWorker::DownloadFailed {
            id: id.clone(),
            message: format!("Downloading {}: {err}", source.label),
        },
    });
    post_state(&source).await;
}

async fn delete(source: ModelSource) {
    if DOWNLOADING.with(|d| d.borrow().as_deref() == Some(source.id.as_str())) {
        return post(&FromWorker::DownloadFailed {
            id: source.id.clone(),
            message: "this model is downloading: cancel the download before deleting it".into(),
        });
    }
    if let Err(err) = models::delete(&source).await {
        post(&FromWorker::Error {
            message: format!("Deleting {} from the browser's cache: {err}", source.label),
        });
    }
    post_state(&source).await;
}

/// Lists the model cache against `sources`, after cleaning the revision `clean` up (refused
/// while a download or a load runs: they write into the cache).
async fn storage(sources: &[ModelSource], clean: Option<(String, String)>) {
    let running = DOWNLOADING.with(|d| d.borrow().is_some()) || BUSY.get() == Some(Task::Loading);
    let refused = (clean.is_some() && running)
        .then(|| "A download or a load is running: clean up once it has ended.".to_owned());
    let clean = clean.filter(|_| refused.is_none());
    let clean = clean
        .as_ref()
        .map(|(repo, rev)| (repo.as_str(), rev.as_str()));
    let (report, note) = match models::storage(sources, clean).await {
        Ok(report) => (Some(report), refused),
        Err(err) => (
            None,
            Some(format!("Reading the browser's model cache: {err}")),
        ),
    };
    post(&FromWorker::Storage { report, note });
}

fn device() -> Option<Device> {
    DEVICE.with(|d| d.borrow().clone())
}

/// Drops the loaded model and asks Burn to release its pooled GPU memory.
fn free_model() {
    let had = MODEL.with(|m| m.borrow_mut().take()).is_some();
    if let (true, Some(device)) = (had, device()) {
        device.memory_cleanup();
    }
}

// ---- loading ------------------------------------------------------------------------------

/// Sets how quantized weights multiply from this load on: with f16 operands when the page asked
/// (`?f16=1`) and the device has `shader-f16`, else as by default. The sentence for the page
/// when it asked.
fn choose_operands(f16: bool) -> Option<String> {
    let has = WGPU_DEVICE.with(|d| {
        d.borrow()
            .as_ref()
            .is_some_and(|d| d.features().contains(wgpu::Features::SHADER_F16))
    });
    let on = f16 && has;
    for bits in [8, 4] {
        let how = match on {
            true => QuantizedMatmul::DequantizeF16,
            false => default_quantized_matmul(bits),
        };
        set_quantized_matmul(bits, how);
    }
    match (f16, has) {
        (false, _) => None,
        (true, true) => Some(
            "Its 8-/4-bit weights multiply with f16 operands (?f16=1; each input row scaled \
             into [-1, 1], f32 accumulation)."
                .into(),
        ),
        (true, false) => Some(
            "?f16=1 asks for f16 operands, but this GPU has no shader-f16: its weights \
             multiply in f32."
                .into(),
        ),
    }
}

async fn load(
    source: ModelSource,
    memory: Option<MemorySettings>,
    storage_free: Option<u64>,
    f16: bool,
) {
    if let Some(task) = BUSY.get() {
        return post(&FromWorker::LoadFailed {
            message: format!("the worker is busy ({task:?}); wait or cancel first"),
        });
    }
    let Some(device) = device() else {
        return post(&FromWorker::LoadFailed {
            message: "the GPU is not ready (no WebGPU device in the worker)".into(),
        });
    };
    BUSY.set(Some(Task::Loading));
    CANCEL.set(false);
    free_model();
    clear_gpu_error();
    let start = js_sys::Date::now();
    let operands = choose_operands(f16);
    let result = load_planned(&source, memory, storage_free, &device).await;
    BUSY.set(None);
    CANCEL.set(false);
    let result = match gpu_error() {
        Some(gpu) => Err(Error::Input {
            model: "GPU",
            reason: gpu_error_advice(&gpu),
        }),
        None => result,
    };
    match result {
        Ok((model, note)) => {
            let (captioner, phased) = match &model {
                Model::Resident(m) => (m.captioner.is_some(), false),
                Model::Phased(p) => (p.text.captioning, true),
            };
            MODEL.with(|m| *m.borrow_mut() = Some(model));
            let note = match (note, operands) {
                (Some(a), Some(b)) => Some(format!("{a} {b}")),
                (a, b) => a.or(b),
            };
            post(&FromWorker::ModelLoaded {
                id: source.id.clone(),
                text_encoder: true,
                captioner,
                phased,
                millis: js_sys::Date::now() - start,
                note,
            });
        }
        Err(Error::Cancelled { at }) => {
            device.memory_cleanup();
            post(&FromWorker::LoadCancelled { at });
        }
        Err(err) => {
            clear_gpu_error();
            device.memory_cleanup();
            post(&FromWorker::LoadFailed {
                message: format!("Loading {} from the browser's cache: {err}", source.label),
            });
        }
    }
    // A first load stores quantized copies (and removes the checkpoint a copy replaces).
    post_state(&source).await;
}

/// Reads the configs, plans (when the page sent memory settings; the plan is posted before
/// any weight is read), and loads everything resident, or nothing but the configs when the
/// plan streams the transformer (each run then loads its phases). A transformer kept 8-/4-bit
/// is read from its stored quantized copy, made first on the first load
/// ([`models::use_stored_copies`], the text encoder's too); the returned sentences say what
/// happened, for the page.
async fn load_planned(
    source: &ModelSource,
    memory: Option<MemorySettings>,
    storage_free: Option<u64>,
    device: &Device,
) -> Result<(Model, Option<String>)> {
    let mut cached = CachedModel::open(source).await?;
    let report = |component: &str, done, total| {
        let bits = source.precision(component).bits().unwrap_or(32);
        post(&FromWorker::LoadProgress {
            component: format!(
                "{}, quantizing it to {bits} bits and storing that (first load only)",
                component.replace('_', " ")
            ),
            bytes_read: done,
            bytes_total: Some(total),
        })
    };
    let note = models::use_stored_copies(
        &mut cached,
        source,
        storage_free,
        &report,
        &cancel_requested,
    )
    .await?;
    Ok((load_cached(cached, source, memory, device).await?, note))
}

/// [`load_planned`] once the cached source is final.
async fn load_cached(
    cached: CachedModel,
    source: &ModelSource,
    memory: Option<MemorySettings>,
    device: &Device,
) -> Result<Model> {
    let configs = ModelConfigs::read(&cached).await?;
    // Headers only: what the text side takes on the device, for the plan and the size check.
    let text = text_side(&cached, source).await?;
    let planned = match &memory {
        Some(m) => {
            let side = m.resolution as usize;
            let plan = plan(
                &configs,
                source,
                m,
                (side, side),
                m.layers,
                Some(text.kept_bytes),
            )?;
            post_plan(&source.id, &plan, &configs, m, !plan.keep_loaded, text);
            Some(plan)
        }
        None => None,
    };
    match (planned, memory) {
        (Some(plan), Some(memory)) if !plan.keep_loaded => {
            Ok(Model::Phased(Rc::new(PhasedModel {
                source: source.clone(),
                cached,
                configs,
                memory,
                text,
            })))
        }
        (plan, memory) => {
            let max_part_bytes = plan.as_ref().map(|p| p.estimate.max_tensor_bytes);
            let model = load_model(
                cached,
                source,
                device,
                configs,
                memory,
                max_part_bytes,
                text,
            )
            .await?;
            if let Some(plan) = plan {
                plan.apply(&mut model.pipeline.borrow_mut());
            }
            Ok(Model::Resident(Rc::new(model)))
        }
    }
}

/// Loads the pipeline from the cached source in the precisions its registry entry names,
/// posting [`FromWorker::LoadProgress`] as bytes arrive; `text` is what the text side is
/// ([`text_side`]). The text encoder's token embedding
/// is not loaded: its rows are read from `cached` when prompts are encoded.
async fn load_model(
    cached: CachedModel,
    source: &ModelSource,
    device: &Device,
    configs: ModelConfigs,
    memory: Option<MemorySettings>,
    max_part_bytes: Option<u64>,
    text: TextSide,
) -> Result<LoadedModel> {
    // Everything but the text encoder's files, and of those what its load reads.
    let total = cached.load_bytes(&[""]) - cached.load_bytes(&["text_encoder/"])
        + text.read_bytes(text.captioning);
    // Only headers are read here: refuse a model that cannot fit before its weights are read.
    let transformer_load = LinearLoad {
        precision: source.precision("transformer"),
        max_part_bytes,
    };
    let text_load = TextEncoderLoad {
        max_part_bytes,
        ..TextEncoderLoad::gathered(source.precision("text_encoder"))
    };
    let captioning = text.captioning;
    // The text encoder at its precision, without its gathered embedding (and with the vision
    // tower and lm_head only when captioning loads them).
    let mut bytes = text.kept_bytes;
    bytes += 4 * SafetensorsFolder::open(&cached, "vae").await?.value_count();
    let transformer_values = match &cached.gguf {
        Some(file) => GgufFile::open(&cached, file)
            .await?
            .tensors()
            .iter()
            .map(|t| t.numel() as u64)
            .sum(),
        None => SafetensorsFolder::open(&cached, "transformer")
            .await?
            .value_count(),
    };
    // Blocks of 32 values as the device holds them: the codes and one f32 scale (the layout
    // `pipeline::linear_bytes` counts), not the f16 scales of the GGUF files.
    bytes += match transformer_load.precision {
        Precision::F32 => 4 * transformer_values,
        Precision::Q8 => transformer_values / 32 * 36,
        Precision::Q4 => transformer_values / 32 * 20,
    };
    check_f32_footprint("this model", bytes / 4, BROWSER_F32_WEIGHT_BUDGET)?;
    let counted = Counted::new(&cached, total, Report::Load);
    // With the captioning parts, the text encoder checkpoint is loaded once, whole (vision
    // tower, language model, lm_head), and prompts are encoded with the same language model.
    let (prompt, captioner) = if captioning {
        let captioner = Captioner::load_with(&counted, device, text_load).await?;
        let tokenizer = QwenTokenizer::load(&cached, TOKENIZER_FOLDER).await?;
        (captioner.prompt_encoder(tokenizer)?, Some(captioner))
    } else {
        (
            PromptEncoder::load_with(&counted, device, text_load).await?,
            None,
        )
    };
    let transformer = match &cached.gguf {
        Some(file) => {
            QwenImageTransformer2DModel::load_gguf(
                &counted,
                file,
                &configs.transformer,
                device,
                transformer_load,
            )
            .await?
        }
        None => {
            QwenImageTransformer2DModel::load_precision(
                &counted,
                "transformer",
                device,
                transformer_load,
            )
            .await?
        }
    };
    let pipeline = LayeredPipeline::load_with_transformer(&counted, transformer, device).await?;
    counted.report("done", true);
    Ok(LoadedModel {
        pipeline: RefCell::new(pipeline),
        source: source.clone(),
        configs,
        memory,
        prompt,
        captioner,
        cached,
        text,
    })
}

/// How a [`Counted`] source reports.
#[derive(Debug, Clone, Copy)]
enum Report {
    /// [`FromWorker::LoadProgress`] (a model load).
    Load,
    /// [`FromWorker::RunLoading`] (a phase of a run that started at this `Date.now()`).
    Run(f64),
}

/// Whether the task in flight was asked to stop ([`ToWorker::Cancel`]).
fn cancel_requested() -> bool {
    CANCEL.get()
}

/// A source that counts the bytes read through it and reports them (at most every 100 ms,
/// and not while `quiet`: a block stream reading during the denoising loop). Its reads stop
/// with [`Error::Cancelled`] once a cancel is requested ([`Cancellable`]).
struct Counted<'a, S> {
    inner: &'a S,
    read: Cell<u64>,
    total: u64,
    last_post: Cell<f64>,
    how: Report,
    quiet: Cell<bool>,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: &'a S, total: u64, how: Report) -> Self {
        Self {
            inner,
            read: Cell::new(0),
            total,
            last_post: Cell::new(0.0),
            how,
            quiet: Cell::new(false),
        }
    }

    fn report(&self, component: &str, force: bool) {
        let now = js_sys::Date::now();
        if self.quiet.get() || !(force || now - self.last_post.get() >= 100.0) {
            return;
        }
        self.last_post.set(now);
        let bytes_read = self.read.get();
        post(&match self.how {
            Report::Load => FromWorker::LoadProgress {
                component: component.to_owned(),
                bytes_read,
                bytes_total: Some(self.total.max(bytes_read)),
            },
            Report::Run(start) => FromWorker::RunLoading {
                component: component.to_owned(),
                bytes_read,
                bytes_total: self.total.max(bytes_read),
                elapsed_ms: now - start,
            },
        });
    }
}

impl<S: WeightSource> WeightSource for Counted<'_, S> {
    async fn exists(&self, file: &str) -> Result<bool> {
        self.inner.exists(file).await
    }

    async fn size(&self, file: &str) -> Result<u64> {
        self.inner.size(file).await
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let bytes = Cancellable::new(self.inner, &cancel_requested)
            .read(file, offset, len)
            .await?;
        if file.ends_with(".safetensors") || file.ends_with(".gguf") {
            self.read.set(self.read.get() + bytes.len() as u64);
            let component = match file.split('/').next().unwrap_or(file) {
                "text_encoder" => "text encoder",
                f if f.ends_with(".gguf") => "transformer",
                other => other,
            };
            self.report(component, false);
        }
        Ok(bytes)
    }
}

// ---- decomposing --------------------------------------------------------------------------

async fn decompose(request: DecomposeRequest) {
    if let Some(task) = BUSY.get() {
        return post(&FromWorker::RunFailed {
            message: format!("the worker is busy ({task:?}); wait or cancel first"),
        });
    }
    let Some(model) = MODEL.with(|m| m.borrow().clone()) else {
        return post(&FromWorker::RunFailed {
            message: "no model is loaded: load one first".into(),
        });
    };
    let Some(device) = device() else {
        return post(&FromWorker::RunFailed {
            message: "the GPU is not ready (no WebGPU device in the worker)".into(),
        });
    };
    BUSY.set(Some(Task::Running));
    CANCEL.set(false);
    clear_gpu_error();
    let start = js_sys::Date::now();
    let phased = matches!(model, Model::Phased(_));
    let result = run(model, &device, request, start).await;
    BUSY.set(None);
    CANCEL.set(false);
    if phased {
        device.memory_cleanup();
    }
    // An uncaptured GPU error (out of memory) makes the result garbage even when the run got
    // to its end: report it instead, and free the model (the device itself stays usable). A
    // lost device is reported as such, whatever else was recorded.
    let lost = matches!(&result, Err(err) if is_device_lost(&err.to_string()));
    let result = match gpu_error() {
        Some(gpu) if !lost => Err(Error::Input {
            model: "GPU",
            reason: gpu_error_advice(&gpu),
        }),
        _ => result,
    };
    match result {
        Ok((layers, caption)) => post(&FromWorker::Layers {
            layers,
            caption,
            millis: js_sys::Date::now() - start,
        }),
        Err(Error::Cancelled { at }) => post(&FromWorker::Cancelled { at }),
        Err(err) => {
            let gpu = gpu_error().is_some();
            let text = one_line(&err.to_string());
            let lost = is_device_lost(&text);
            let message = if lost {
                format!(
                    "Decomposing failed: the GPU device was lost ({}). The editor and its \
                     layers are untouched: save them (Export), then reload the page to get a \
                     new GPU device.",
                    lost_device_reason(&text)
                )
            } else {
                format!("Decomposing failed: {text}")
            };
            post(&FromWorker::RunFailed { message });
            if gpu || lost {
                clear_gpu_error();
                free_model();
                post(&FromWorker::Unloaded);
            }
            if lost {
                post(&FromWorker::DeviceLost {
                    reason: lost_device_reason(&text),
                });
            }
        }
    }
}

/// `text` on one line: a driver's messages span several (Dawn adds a "While calling …" line).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether an error's text says the device is gone (cubecl poisons a lost device: every later
/// read fails with the loss's reason).
fn is_device_lost(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("device was lost") || t.contains("device lost") || t.contains("poisoned")
}

/// An uncaptured GPU error in words, with what the user can do.
fn gpu_error_advice(error: &str) -> String {
    let what = if error.to_lowercase().contains("out of memory") {
        "the GPU ran out of memory"
    } else {
        "the GPU reported an error"
    };
    format!(
        "{what} ({error}). The model was unloaded; the editor and its layers are untouched. \
         Lower the GPU memory budget in the model panel (the plan then streams the transformer \
         in a smaller ring and tiles the VAE), or use fewer layers or a lower resolution, and \
         load the model again."
    )
}

/// Causes `fault` on the worker's device, for tests ([`GpuFault`], the page's `?gpu-fault=`):
/// the device reports it as it would report the real thing, and the run in flight has to
/// handle it as it would the real thing.
fn cause_gpu_fault(fault: GpuFault) {
    let Some(device) = WGPU_DEVICE.with(|d| d.borrow().clone()) else {
        return;
    };
    web_sys::console::warn_1(
        &format!("causing a GPU fault on purpose (gpu-fault): {fault:?}").into(),
    );
    match fault {
        GpuFault::Error => {
            // Over the device's limit: a validation error, reported (asynchronously) to the
            // uncaptured-error handler, the way an out-of-memory error is.
            let over = device.limits().max_buffer_size.saturating_add(4) & !3;
            drop(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gpu-fault: a buffer over maxBufferSize"),
                size: over,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }));
        }
        // The device is lost; cubecl's device-lost callback poisons it, and every later read
        // fails with the reason.
        GpuFault::LoseDevice => device.destroy(),
    }
}

/// The break of every step callback: a cancel, or a GPU error recorded meanwhile.
fn stop_requested() -> ControlFlow<()> {
    if CANCEL.get() || gpu_error().is_some() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// One run, resident or phased as the model and the run's plan say: the layers at the
/// picture's size, and the caption when the prompt was empty.
async fn run(
    model: Model,
    device: &Device,
    request: DecomposeRequest,
    start: f64,
) -> Result<(Vec<Rgba>, Option<String>)> {
    let DecomposeRequest {
        image,
        layers,
        steps,
        resolution,
        true_cfg_scale,
        cfg_normalize,
        seed,
        prompt,
        max_caption_tokens,
        gpu_fault,
    } = request;
    let bad = |reason: String| Error::Input {
        model: "decompose request",
        reason,
    };
    image.check("the picture").map_err(bad)?;
    let input = RgbaImage::from_raw(image.width, image.height, image.pixels)
        .ok_or_else(|| bad("the picture's pixel buffer has the wrong length".into()))?;
    let params = DecomposeParams {
        layers,
        steps,
        resolution,
        true_cfg_scale,
        cfg_normalize,
    };
    let dims = Dimensions::for_image_any_bucket(resolution, input.width(), input.height())?;
    let run = Run {
        input: &input,
        params: &params,
        seed,
        prompt: &prompt,
        max_caption_tokens,
        start,
        gpu_fault: Cell::new(gpu_fault),
    };

    // The run's own plan (its working size and layer count): a resident model whose plan now
    // streams is freed and this run, and the next ones, go phased.
    let model = match model {
        Model::Resident(m) => match &m.memory {
            Some(memory) => {
                let plan = plan(
                    &m.configs,
                    &m.source,
                    memory,
                    (dims.width as usize, dims.height as usize),
                    layers,
                    Some(m.text.kept_bytes),
                )?;
                let text = m.text;
                post_plan(
                    &m.source.id,
                    &plan,
                    &m.configs,
                    memory,
                    !plan.keep_loaded,
                    text,
                );
                if plan.keep_loaded {
                    plan.apply(&mut m.pipeline.borrow_mut());
                    Model::Resident(m)
                } else {
                    let source = m.source.clone();
                    let memory = memory.clone();
                    drop(m);
                    free_model();
                    let cached = CachedModel::open(&source).await?;
                    let configs = ModelConfigs::read(&cached).await?;
                    let phased = Model::Phased(Rc::new(PhasedModel {
                        source,
                        cached,
                        configs,
                        memory,
                        text,
                    }));
                    MODEL.with(|slot| *slot.borrow_mut() = Some(phased.clone()));
                    phased
                }
            }
            None => Model::Resident(m),
        },
        phased => phased,
    };
    let (output, caption) = match model {
        Model::Resident(m) => run.resident(&m).await?,
        Model::Phased(p) => {
            let plan = plan(
                &p.configs,
                &p.source,
                &p.memory,
                (dims.width as usize, dims.height as usize),
                layers,
                None,
            )?;
            post_plan(&p.source.id, &plan, &p.configs, &p.memory, true, p.text);
            run.phased(&p, &plan, device).await?
        }
    };
    // Over the picture at its size: the working size's layers resized back.
    let layers = layers_at_size(output, input.width(), input.height())?;
    let layers = layers
        .into_iter()
        .map(|layer| Rgba {
            width: layer.width(),
            height: layer.height(),
            pixels: layer.into_raw(),
        })
        .collect();
    Ok((layers, caption))
}

/// A run's inputs.
struct Run<'a> {
    input: &'a RgbaImage,
    params: &'a DecomposeParams,
    seed: u64,
    prompt: &'a str,
    max_caption_tokens: usize,
    start: f64,
    /// Caused once, after the first denoising step (tests).
    gpu_fault: Cell<Option<GpuFault>>,
}

impl Run<'_> {
    fn progress(&self, phase: RunPhase, step: usize) {
        post(&FromWorker::RunProgress {
            phase,
            step,
            steps: self.params.steps,
            elapsed_ms: js_sys::Date::now() - self.start,
        })
    }

    /// The pipeline's progress as messages; a cancel or a GPU error stops it.
    fn on_step(&self, p: Progress) -> ControlFlow<()> {
        match p {
            Progress::Encoded => self.progress(RunPhase::Denoising, 0),
            Progress::Step { step, .. } => {
                self.progress(RunPhase::Denoising, step + 1);
                if let Some(fault) = self.gpu_fault.take() {
                    cause_gpu_fault(fault);
                }
            }
            Progress::Decoding => self.progress(RunPhase::Decoding, self.params.steps),
            Progress::Prepared { .. } | Progress::Done => {}
        }
        stop_requested()
    }

    fn negative(&self) -> Option<&'static str> {
        (self.params.true_cfg_scale > 1.0).then_some(DEFAULT_NEGATIVE_PROMPT)
    }

    /// Everything on the device already: caption (empty prompt), encode, denoise, decode.
    // The pipeline's `RefCell` is borrowed mutably only in `run`, before this, to set the VAE
    // tiling of the run's plan; one task runs at a time (`BUSY`), so no borrow can clash.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn resident(&self, model: &LoadedModel) -> Result<(Vec<RgbaImage>, Option<String>)> {
        let caption = if needs_caption(self.prompt) {
            self.progress(RunPhase::Captioning, 0);
            let Some(captioner) = &model.captioner else {
                return Err(no_captioner());
            };
            Some(self.caption(captioner, &model.cached).await?)
        } else {
            None
        };
        let prompt = caption.as_deref().unwrap_or(self.prompt);
        self.progress(RunPhase::EncodingPrompt, 0);
        let (prompt_embeds, negative) = model
            .prompt
            .encode_pair_from(
                &model.cached,
                prompt,
                self.negative(),
                DEFAULT_MAX_SEQUENCE_LENGTH,
            )
            .await?;
        self.progress(RunPhase::EncodingImage, 0);
        let pipeline = model.pipeline.borrow();
        let output = pipeline
            .run(
                self.input,
                self.params,
                prompt_embeds,
                negative,
                Noise::Seed(self.seed),
                |p| self.on_step(p),
            )
            .await?;
        Ok((output.layers, caption))
    }

    /// The phases one after another, each freed before the next loads: the text encoder (or
    /// the captioner, for an empty prompt) encodes the prompts and is freed; the transformer
    /// (resident or a ring of blocks, as `plan` says) and the VAE load, run, and are freed.
    async fn phased(
        &self,
        model: &PhasedModel,
        plan: &MemoryPlan,
        device: &Device,
    ) -> Result<(Vec<RgbaImage>, Option<String>)> {
        let sizes = |prefixes: &[&str]| model.cached.load_bytes(prefixes);
        let cached = &model.cached;
        let captioning = needs_caption(self.prompt) && model.text.captioning;
        let text = Counted::new(
            cached,
            model.text.read_bytes(captioning),
            Report::Run(self.start),
        );
        // The token embedding stays in storage; only a prompt's rows are read.
        let text_load = TextEncoderLoad {
            max_part_bytes: Some(plan.estimate.max_tensor_bytes),
            ..TextEncoderLoad::gathered(model.source.precision("text_encoder"))
        };
        let (embeds, caption) = if needs_caption(self.prompt) {
            if !model.text.captioning {
                return Err(no_captioner());
            }
            self.progress(RunPhase::Captioning, 0);
            let captioner = Captioner::load_with(&text, device, text_load).await?;
            let caption = self.caption(&captioner, cached).await?;
            self.progress(RunPhase::EncodingPrompt, 0);
            let tokenizer = QwenTokenizer::load(cached, TOKENIZER_FOLDER).await?;
            let encoder = captioner.prompt_encoder(tokenizer)?;
            let (prompt, negative) = encoder
                .encode_pair_from(
                    cached,
                    &caption,
                    self.negative(),
                    DEFAULT_MAX_SEQUENCE_LENGTH,
                )
                .await?;
            drop(encoder);
            drop(captioner);
            device.memory_cleanup();
            (PromptEmbeds { prompt, negative }, Some(caption))
        } else {
            self.progress(RunPhase::EncodingPrompt, 0);
            let embeds = encode_prompts_then_free(
                &text,
                device,
                self.prompt,
                self.negative(),
                DEFAULT_MAX_SEQUENCE_LENGTH,
                text_load,
            )
            .await?;
            (embeds, None)
        };
        if let ControlFlow::Break(()) = stop_requested() {
            return Err(Error::Cancelled {
                at: "after encoding the prompt".into(),
            });
        }

        // The transformer is `transformer/` or a GGUF file (wherever its repo keeps it).
        let transformer_file = cached.gguf.as_deref().unwrap_or("transformer/");
        let weights = Counted::new(
            cached,
            sizes(&[transformer_file, "vae/"]),
            Report::Run(self.start),
        );
        let precision = model.source.precision("transformer");
        let mut planned = match &cached.gguf {
            None => PlannedPipeline::load(&weights, device, plan, precision).await?,
            Some(file) => {
                let config = &model.configs.transformer;
                PlannedPipeline::load_gguf(&weights, device, plan, precision, file, config).await?
            }
        };
        // The ring's block reads during the denoising loop are not load progress.
        weights.quiet.set(true);
        self.progress(RunPhase::EncodingImage, 0);
        let output = planned
            .run(
                self.input,
                self.params,
                embeds,
                Noise::Seed(self.seed),
                |p| self.on_step(p),
            )
            .await?;
        drop(planned);
        device.memory_cleanup();
        Ok((output.layers, caption))
    }

    /// The reference's auto-caption (`get_image_caption`): the input resized to the working
    /// size of `resolution` with the pipeline's Lanczos (its `prompt_image`), described with
    /// the English template (the official app's `use_en_prompt=True`) in at most
    /// `max_caption_tokens` tokens, each posted as [`FromWorker::CaptionProgress`]; a cancel
    /// stops it between tokens.
    async fn caption(&self, captioner: &Captioner, cached: &CachedModel) -> Result<String> {
        let max_tokens = self.max_caption_tokens;
        if max_tokens == 0 {
            return Err(Error::Input {
                model: "decompose request",
                reason: "the caption needs at least 1 token".into(),
            });
        }
        let (input, resolution) = (self.input, self.params.resolution);
        let dims = Dimensions::for_image_any_bucket(resolution, input.width(), input.height())?;
        let resized = resize_rgba_lanczos(input, dims.width, dims.height)?;
        let options = CaptionOptions {
            language: CaptionLanguage::English,
            max_new_tokens: max_tokens,
            seed: 0,
        };
        let caption = captioner
            .caption_from(cached, &resized, &options, |step| {
                post(&FromWorker::CaptionProgress {
                    text: step.text.to_owned(),
                    tokens: step.index + 1,
                    max_tokens,
                    elapsed_ms: js_sys::Date::now() - self.start,
                });
                stop_requested()
            })
            .await?;
        Ok(caption.text)
    }
}

fn no_captioner() -> Error {
    Error::Input {
        model: "decompose request",
        reason: "this model has no captioning parts (processor/ settings and the vision tower \
                 in text_encoder/), so it cannot describe the picture itself: enter a prompt \
                 that describes it"
            .into(),
    }
}

async fn probe_gpu() {
    let facts = match request_adapter_facts().await {
        Ok(facts) => facts,
        Err(NoAdapter::Unavailable(reason)) => return post(&FromWorker::NoWebGpu { reason }),
        Err(NoAdapter::Failed(message)) => {
            return post(&FromWorker::Error {
                message: format!("WebGPU adapter request: {message}"),
            });
        }
    };
    if DEVICE.with(|d| d.borrow().is_some()) {
        return post(&FromWorker::Error {
            message: "the GPU was already initialised in this worker".into(),
        });
    }
    let (device, setup) = match Device::wgpu_options().init_with_setup_async().await {
        Ok(pair) => pair,
        Err(err) => {
            return post(&FromWorker::Error {
                message: format!("Burn could not create a WebGPU device: {err}"),
            });
        }
    };
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    WGPU_DEVICE.with(|d| *d.borrow_mut() = Some(setup.device.clone()));
    let report = report(&facts, &setup);
    LIMITS.with(|l| *l.borrow_mut() = Some(report.limits.clone()));
    post(&FromWorker::Gpu { report });

    let (m, k, n) = SELF_TEST;
    let start = js_sys::Date::now();
    let tested = matmul_self_test(&device, m, k, n, 7).await;
    // Burn's runtime exists now (it installed wgpu's handler, which panics): from here an
    // uncaptured error such as out-of-memory is recorded for the task in flight to report.
    setup
        .device
        .on_uncaptured_error(Arc::new(|error: wgpu::Error| {
            let text = one_line(&error.to_string());
            web_sys::console::error_1(&format!("uncaptured GPU error: {text}").into());
            if let Ok(mut slot) = GPU_ERROR.lock()
                && slot.is_none()
            {
                *slot = Some(text);
            }
        }));
    match tested {
        Ok(check) => post(&FromWorker::SelfTest {
            check,
            millis: js_sys::Date::now() - start,
        }),
        Err(err) => post(&FromWorker::Error {
            message: format!("GPU self-test: {err}"),
        }),
    }
}

/// The page's view of the device: limits and enabled features from the wgpu device Burn uses,
/// names and offered features from `navigator.gpu`.
fn report(facts: &AdapterFacts, setup: &WgpuSetup) -> GpuReport {
    let offered = |name: &str| facts.features.iter().any(|f| f == name);
    let enabled = setup.device.features();
    GpuReport {
        backend: format!("{:?}", setup.backend),
        vendor: facts.vendor.clone(),
        architecture: facts.architecture.clone(),
        description: if facts.description.is_empty() {
            setup.adapter.get_info().name
        } else {
            facts.description.clone()
        },
        is_fallback: facts.is_fallback,
        limits: KeyLimits::from_wgpu(&setup.device.limits()),
        shader_f16: FeatureState::new(
            offered("shader-f16"),
            enabled.contains(wgpu::Features::SHADER_F16),
        ),
        subgroups: FeatureState::new(
            offered("subgroups"),
            enabled.contains(wgpu::Features::SUBGROUP),
        ),
        features: facts.features.clone(),
    }
}
