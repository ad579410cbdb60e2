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
//! one starts. Loading a model frees the previous one first; the model loads from the verified
//! OPFS cache ([`super::models::CachedModel`]) once the source has been downloaded. A download
//! (at most one) runs beside the other tasks; [`ToWorker::CancelDownload`] stops it between
//! chunks.
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

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::rc::Rc;

use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::{Device, Tensor};
use image::RgbaImage;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::adapter::{AdapterFacts, NoAdapter, request_adapter_facts};
use super::models::{self, CachedModel};
use super::{js_error_text, pixel_buffers};
use crate::caption::{CaptionLanguage, CaptionOptions, Captioner};
use crate::error::{Error, Result};
use crate::gpu::{FeatureState, GpuReport, KeyLimits, matmul_self_test};
use crate::model::text_encoder;
use crate::model::transformer::{QwenImageTransformer2DModel, QwenImageTransformerConfig};
use crate::pipeline::{
    DecomposeParams, Dimensions, LayeredPipeline, Noise, Progress, layers_at_size,
    resize_rgba_lanczos,
};
use crate::protocol::{DecomposeRequest, FromWorker, ModelSource, Rgba, RunPhase, ToWorker};
use crate::text::{
    DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_NEGATIVE_PROMPT, PromptEncoder, QwenTokenizer,
    TOKENIZER_FOLDER, TextEncoderLoad, needs_caption,
};
use crate::weights::{
    BROWSER_F32_WEIGHT_BUDGET, GgufFile, Precision, SafetensorsFolder, WeightSource,
    check_f32_footprint, read_json,
};

thread_local! {
    /// The Burn device once acquired. Burn's runtime can be initialised only once per worker.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    /// The loaded model; a run holds its own `Rc`, so unloading during a run frees it after.
    static MODEL: RefCell<Option<Rc<LoadedModel>>> = const { RefCell::new(None) };
    /// What the worker is doing.
    static BUSY: Cell<Option<Task>> = const { Cell::new(None) };
    /// Set by `Cancel`, read between steps.
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

/// A model on the GPU.
struct LoadedModel {
    /// Transformer, VAE, scheduler config.
    pipeline: LayeredPipeline,
    /// Tokenizer + text encoder (keeps the negative prompt's embeddings once computed); its
    /// language model is the captioner's when there is one (shared, not copied).
    prompt: PromptEncoder,
    /// Vision tower + language model with `lm_head`, when the model has them.
    captioner: Option<Captioner>,
    /// The cached files the model was loaded from: the text encoder's token embedding stays
    /// there, and the rows a prompt or caption uses are read from it.
    source: CachedModel,
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
        ToWorker::LoadModel { source } => load(source).await,
        ToWorker::Decompose(request) => decompose(request).await,
        ToWorker::Cancel => {
            if BUSY.get() == Some(Task::Running) {
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
        ToWorker::DownloadModel { source } => download(source).await,
        ToWorker::CancelDownload => CANCEL_DOWNLOAD.set(true),
        ToWorker::DeleteModel { source } => delete(source).await,
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

async fn download(source: ModelSource) {
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
    let on_progress = |p: &crate::download::Progress| {
        let now = js_sys::Date::now();
        if now - last_post.get() >= 100.0 || p.done_bytes == p.total_bytes {
            last_post.set(now);
            post(&FromWorker::DownloadProgress {
                id: id.clone(),
                progress: p.clone(),
            });
        }
    };
    let result = models::download(&source, &on_progress, &|| CANCEL_DOWNLOAD.get()).await;
    DOWNLOADING.with(|d| *d.borrow_mut() = None);
    CANCEL_DOWNLOAD.set(false);
    post(&match result {
        Ok(fetched_bytes) => FromWorker::DownloadDone {
            id: id.clone(),
            fetched_bytes,
            millis: js_sys::Date::now() - start,
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

async fn load(source: ModelSource) {
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
    free_model();
    let start = js_sys::Date::now();
    let result = match CachedModel::open(&source).await {
        Ok(cached) => load_model(cached, &source, &device).await,
        Err(err) => Err(err),
    };
    BUSY.set(None);
    match result {
        Ok(model) => {
            let captioner = model.captioner.is_some();
            MODEL.with(|m| *m.borrow_mut() = Some(Rc::new(model)));
            post(&FromWorker::ModelLoaded {
                id: source.id,
                text_encoder: true,
                captioner,
                millis: js_sys::Date::now() - start,
            });
        }
        Err(err) => {
            device.memory_cleanup();
            post(&FromWorker::LoadFailed {
                message: format!("Loading {} from the browser's cache: {err}", source.label),
            });
        }
    }
}

/// Loads the pipeline from the cached source in the precisions its registry entry names,
/// posting [`FromWorker::LoadProgress`] as bytes arrive. The text encoder's token embedding
/// is not loaded: its rows are read from `cached` when prompts are encoded.
async fn load_model(
    cached: CachedModel,
    source: &ModelSource,
    device: &Device,
) -> Result<LoadedModel> {
    let total = cached.weight_files().iter().map(|(_, size)| size).sum();
    // Only headers are read here: refuse a model that cannot fit before its weights are read.
    let transformer_precision = source.precision("transformer");
    let text_load = TextEncoderLoad::gathered(source.precision("text_encoder"));
    let captioning = Captioner::available(&cached).await?;
    // The text encoder at its precision, without its gathered embedding (and with the vision
    // tower and lm_head only when captioning loads them).
    let text_folder = SafetensorsFolder::open(&cached, "text_encoder").await?;
    let mut bytes =
        text_encoder::device_bytes(&text_folder, text_load.options(captioning), captioning);
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
    // Blocks of 32 values: 32 codes and one f16 scale.
    bytes += match transformer_precision {
        Precision::F32 => 4 * transformer_values,
        Precision::Q8 => transformer_values / 32 * 34,
        Precision::Q4 => transformer_values / 32 * 18,
    };
    check_f32_footprint("this model", bytes / 4, BROWSER_F32_WEIGHT_BUDGET)?;
    let counted = Counted {
        inner: &cached,
        read: Cell::new(0),
        total,
        last_post: Cell::new(0.0),
    };
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
            let config: QwenImageTransformerConfig =
                read_json(&counted, "transformer/config.json").await?;
            QwenImageTransformer2DModel::load_gguf(
                &counted,
                file,
                &config,
                device,
                transformer_precision,
            )
            .await?
        }
        None => {
            QwenImageTransformer2DModel::load_precision(
                &counted,
                "transformer",
                device,
                transformer_precision,
            )
            .await?
        }
    };
    let pipeline = LayeredPipeline::load_with_transformer(&counted, transformer, device).await?;
    counted.report("done", true);
    Ok(LoadedModel {
        pipeline,
        prompt,
        captioner,
        source: cached,
    })
}

/// A source that counts the bytes read through it and reports them (at most every 100 ms).
struct Counted<'a, S> {
    inner: &'a S,
    read: Cell<u64>,
    total: u64,
    last_post: Cell<f64>,
}

impl<S> Counted<'_, S> {
    fn report(&self, component: &str, force: bool) {
        let now = js_sys::Date::now();
        if force || now - self.last_post.get() >= 100.0 {
            self.last_post.set(now);
            post(&FromWorker::LoadProgress {
                component: component.to_owned(),
                bytes_read: self.read.get(),
                bytes_total: Some(self.total.max(self.read.get())),
            });
        }
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
        let bytes = self.inner.read(file, offset, len).await?;
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
    BUSY.set(Some(Task::Running));
    CANCEL.set(false);
    let start = js_sys::Date::now();
    let result = run(&model, request, start).await;
    drop(model);
    BUSY.set(None);
    CANCEL.set(false);
    match result {
        Ok((layers, caption)) => post(&FromWorker::Layers {
            layers,
            caption,
            millis: js_sys::Date::now() - start,
        }),
        Err(Error::Cancelled { at }) => post(&FromWorker::Cancelled { at }),
        Err(err) => post(&FromWorker::RunFailed {
            message: format!("Decomposing failed: {err}"),
        }),
    }
}

/// One run: the layers at the picture's size, and the caption when the prompt was empty.
async fn run(
    model: &LoadedModel,
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
    } = request;
    let bad = |reason: String| Error::Input {
        model: "decompose request",
        reason,
    };
    image.check("the picture").map_err(bad)?;
    let input = RgbaImage::from_raw(image.width, image.height, image.pixels)
        .ok_or_else(|| bad("the picture's pixel buffer has the wrong length".into()))?;
    let progress = |phase: RunPhase, step: usize| {
        post(&FromWorker::RunProgress {
            phase,
            step,
            steps,
            elapsed_ms: js_sys::Date::now() - start,
        })
    };

    let caption = if needs_caption(&prompt) {
        progress(RunPhase::Captioning, 0);
        Some(auto_caption(model, &input, resolution, max_caption_tokens, start).await?)
    } else {
        None
    };
    let prompt = caption.as_deref().unwrap_or(&prompt);

    progress(RunPhase::EncodingPrompt, 0);
    let (prompt_embeds, negative) = encode_prompt(model, prompt, true_cfg_scale > 1.0).await?;

    progress(RunPhase::EncodingImage, 0);
    let params = DecomposeParams {
        layers,
        steps,
        resolution,
        true_cfg_scale,
        cfg_normalize,
    };
    let output = model
        .pipeline
        .run(
            &input,
            &params,
            prompt_embeds,
            negative,
            Noise::Seed(seed),
            |p| {
                match p {
                    Progress::Encoded => progress(RunPhase::Denoising, 0),
                    Progress::Step { step, .. } => progress(RunPhase::Denoising, step + 1),
                    Progress::Decoding => progress(RunPhase::Decoding, steps),
                    Progress::Prepared { .. } | Progress::Done => {}
                }
                if CANCEL.get() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .await?;
    // Over the picture at its size: the working size's layers resized back.
    let layers = layers_at_size(output.layers, input.width(), input.height())?;
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

/// The reference's auto-caption (`get_image_caption`): `input` resized to the working size of
/// `resolution` with the pipeline's Lanczos (its `prompt_image`), described with the English
/// template (the official app's `use_en_prompt=True`) in at most `max_tokens` tokens, each
/// posted as [`FromWorker::CaptionProgress`]; a cancel stops it between tokens.
async fn auto_caption(
    model: &LoadedModel,
    input: &RgbaImage,
    resolution: u32,
    max_tokens: usize,
    start: f64,
) -> Result<String> {
    let Some(captioner) = &model.captioner else {
        return Err(Error::Input {
            model: "decompose request",
            reason: "this model has no captioning parts (processor/ settings and the vision                      tower in text_encoder/), so it cannot describe the picture itself: enter a                      prompt that describes it"
                .into(),
        });
    };
    if max_tokens == 0 {
        return Err(Error::Input {
            model: "decompose request",
            reason: "the caption needs at least 1 token".into(),
        });
    }
    let dims = Dimensions::for_image_any_bucket(resolution, input.width(), input.height())?;
    let resized = resize_rgba_lanczos(input, dims.width, dims.height)?;
    let options = CaptionOptions {
        language: CaptionLanguage::English,
        max_new_tokens: max_tokens,
        seed: 0,
    };
    let caption = captioner
        .caption_from(&model.source, &resized, &options, |step| {
            post(&FromWorker::CaptionProgress {
                text: step.text.to_owned(),
                tokens: step.index + 1,
                max_tokens,
                elapsed_ms: js_sys::Date::now() - start,
            });
            if CANCEL.get() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
    Ok(caption.text)
}

/// `prompt_embeds` `[1, L, D]` and, for CFG, the negative prompt `" "`'s `[1, L', D]`
/// (`max_sequence_length` 512, the pipeline's default). `prompt` is encoded as given (a
/// caption may be empty: the reference encodes it all the same).
async fn encode_prompt(
    model: &LoadedModel,
    prompt: &str,
    cfg: bool,
) -> Result<(Tensor<3>, Option<Tensor<3>>)> {
    let (encoder, source) = (&model.prompt, &model.source);
    let embeds = encoder
        .encode_from(source, prompt, DEFAULT_MAX_SEQUENCE_LENGTH)
        .await?;
    let negative = if cfg {
        Some(
            encoder
                .encode_from(source, DEFAULT_NEGATIVE_PROMPT, DEFAULT_MAX_SEQUENCE_LENGTH)
                .await?,
        )
    } else {
        None
    };
    Ok((embeds, negative))
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
    post(&FromWorker::Gpu {
        report: report(&facts, &setup),
    });

    let (m, k, n) = SELF_TEST;
    let start = js_sys::Date::now();
    match matmul_self_test(&device, m, k, n, 7).await {
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
