//! The whole contract between the page (main thread) and the worker (GPU and model).
//!
//! Messages cross `postMessage` as plain JS objects made by `serde-wasm-bindgen`, tagged by
//! `type`, so the browser's devtools show them readably. Pixel buffers are `serde_bytes`, so
//! they cross as `Uint8Array`s (one copy out of wasm memory) and the sender transfers their
//! `ArrayBuffer`s instead of cloning them (see [`Rgba`]).
//!
//! A session: `ProbeGpu` → `Gpu` + `SelfTest`; `LoadModel` → `MemoryPlan`, `LoadProgress`… →
//! `ModelLoaded` (or `LoadFailed`, or `LoadCancelled` after `Cancel`); a phased model's runs
//! post `MemoryPlan` and `RunLoading` for each phase's load; `Decompose` → `RunProgress`…
//! (with an empty prompt first `RunProgress` `captioning` and `CaptionProgress` per generated
//! token) → `Layers` (or `Cancelled` after `Cancel`, or `RunFailed`); `Unload` → `Unloaded`.

use serde::{Deserialize, Serialize};

use crate::download::Progress;
use crate::gpu::{GpuReport, KeyLimits, MatmulCheck};
use crate::pipeline::{MemoryBudget, MemoryPlan};

pub use crate::registry::{ModelRegistry, ModelSource};

/// What the browser's model cache (OPFS) holds of one model source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheState {
    /// The repositories at the commits the source resolved to (`owner/name@sha`).
    pub revisions: Vec<String>,
    /// Bytes of every file of the source.
    pub total_bytes: u64,
    /// Bytes verified and committed.
    pub verified_bytes: u64,
    /// Bytes of partial downloads that a new download resumes from.
    pub partial_bytes: u64,
    /// Files of the source.
    pub files_total: usize,
    /// Files verified and committed.
    pub files_verified: usize,
    /// The file list is the one recorded when the download started (fixed until the source
    /// is deleted; no hub request), not the hub's listing now.
    pub from_record: bool,
    /// Bytes of checkpoint files a stored quantized copy serves instead (the transformer's
    /// bf16 shards once its whole 8-/4-bit copy is committed): counted as verified, not kept.
    #[serde(default)]
    pub replaced_bytes: u64,
    /// Bytes of the stored quantized copies the first load made from the checkpoints.
    #[serde(default)]
    pub copy_bytes: u64,
}

impl CacheState {
    /// Every file is verified: the model loads from the cache.
    pub fn complete(&self) -> bool {
        self.files_total > 0 && self.files_verified == self.files_total
    }
}

/// One revision folder of the browser's model cache, as the storage manager lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRevision {
    /// `owner/name`.
    pub repo: String,
    /// The commit.
    pub revision: String,
    /// Bytes of its files, committed or partial.
    pub bytes: u64,
    /// The labels of the listed sources that use it (none: nothing reads it any more).
    pub used_by: Vec<String>,
    /// Its files that none of them reads or keeps, with their bytes
    /// ([`crate::registry::revision_use`]).
    pub unused: Vec<(String, u64)>,
}

/// Everything the browser's model cache holds, against the listed sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageReport {
    /// One entry per revision folder.
    pub revisions: Vec<StoredRevision>,
    /// What the site stores (all of it, not only models), as `navigator.storage.estimate()`
    /// says.
    pub usage: u64,
    /// The most it may store.
    pub quota: u64,
    /// Whether the browser granted persistent storage.
    pub persisted: bool,
}

/// Straight-alpha RGBA8 pixels, row-major, `width·height·4` bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rgba {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels; a `Uint8Array` in JS.
    #[serde(with = "serde_bytes")]
    pub pixels: Vec<u8>,
}

impl Rgba {
    /// Checks that the buffer holds exactly `width·height` pixels.
    pub fn check(&self, what: &str) -> Result<(), String> {
        let want = self.width as usize * self.height as usize * 4;
        if self.width == 0 || self.height == 0 || self.pixels.len() != want {
            return Err(format!(
                "{what}: {}×{} RGBA needs {want} bytes, got {}",
                self.width,
                self.height,
                self.pixels.len()
            ));
        }
        Ok(())
    }
}

/// One decomposition's inputs (the `QwenImageLayeredPipeline.__call__` arguments the app
/// exposes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecomposeRequest {
    /// The input picture.
    pub image: Rgba,
    /// `layers`: number of output layers.
    pub layers: usize,
    /// `num_inference_steps`.
    pub steps: usize,
    /// `resolution`: bucket side (640 or 1024 for the real model).
    pub resolution: u32,
    /// `true_cfg_scale`; CFG runs when it is above 1 (with the negative prompt `" "`).
    pub true_cfg_scale: f32,
    /// `cfg_normalize`.
    pub cfg_normalize: bool,
    /// Seed of the initial noise (a JS number: at most 2^53 − 1).
    pub seed: u64,
    /// The prompt describing the picture; empty (or `" "`) makes the worker caption the
    /// picture first and use the caption, as the reference pipeline does.
    pub prompt: String,
    /// Most tokens the caption may have (the pipeline's `max_new_tokens`, 512).
    #[serde(default = "default_max_caption_tokens")]
    pub max_caption_tokens: usize,
    /// For tests: a GPU fault the worker causes once the first denoising step is done (the
    /// page's `?gpu-fault=` URL parameter, [`GpuFault::from_query`]).
    #[serde(default)]
    pub gpu_fault: Option<GpuFault>,
}

/// A real GPU fault caused on purpose in the middle of a run, so that tests can prove what a
/// visitor sees when it happens by itself: the run ends with a clear message and the editor's
/// document is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GpuFault {
    /// `gpu-fault=error`: an invalid GPU call (a buffer over `maxBufferSize`), which the device
    /// reports as an uncaptured error, as it reports running out of memory.
    Error,
    /// `gpu-fault=lose-device`: the device is destroyed (`GPUDevice.destroy()`), which loses
    /// it as a driver reset or a removed GPU does.
    LoseDevice,
}

impl GpuFault {
    /// The `gpu-fault` parameter of `location.search` (`?a=1&gpu-fault=error`), if any; an
    /// unknown value is an error naming the known ones.
    pub fn from_query(query: &str) -> Result<Option<Self>, String> {
        let value = query
            .trim_start_matches('?')
            .split('&')
            .find_map(|pair| pair.strip_prefix("gpu-fault="));
        match value {
            None => Ok(None),
            Some("error") => Ok(Some(Self::Error)),
            Some("lose-device") => Ok(Some(Self::LoseDevice)),
            Some(other) => Err(format!(
                "the URL parameter gpu-fault={other} is not one of: error, lose-device"
            )),
        }
    }
}

fn default_max_caption_tokens() -> usize {
    crate::caption::DEFAULT_MAX_NEW_TOKENS
}

/// What the memory plan of a load may use (sent with [`ToWorker::LoadModel`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySettings {
    /// Device memory one phase may take, bytes (the model panel's "GPU memory budget", or the
    /// `gpu-budget` URL parameter).
    pub budget_bytes: u64,
    /// Forced `maxStorageBufferBindingSize` (the `gpu-max-binding` URL parameter), bytes.
    #[serde(default)]
    pub max_binding: Option<u64>,
    /// Forced `maxBufferSize` (the `gpu-max-buffer` URL parameter), bytes.
    #[serde(default)]
    pub max_buffer: Option<u64>,
    /// The bucket side the plan is made for at load (the page's resolution setting).
    pub resolution: u32,
    /// The layer count the plan is made for at load (the page's layers setting).
    pub layers: usize,
}

impl MemorySettings {
    /// The budget: the device's limits with the forced ones in their place.
    pub fn budget(&self, device: &KeyLimits) -> MemoryBudget {
        let mut limits = device.clone();
        if let Some(binding) = self.max_binding {
            limits.max_storage_buffer_binding_size = binding;
        }
        if let Some(buffer) = self.max_buffer {
            limits.max_buffer_size = buffer;
        }
        MemoryBudget {
            limits,
            device_bytes: self.budget_bytes,
        }
    }
}

/// Memory overrides from the page's URL query, for tests and debugging:
/// `?gpu-budget=BYTES&gpu-max-binding=BYTES&gpu-max-buffer=BYTES` (whole numbers, with an
/// optional `K`, `M` or `G` suffix for KiB, MiB, GiB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryOverrides {
    /// `gpu-budget`.
    pub budget: Option<u64>,
    /// `gpu-max-binding`.
    pub max_binding: Option<u64>,
    /// `gpu-max-buffer`.
    pub max_buffer: Option<u64>,
}

impl MemoryOverrides {
    /// Reads them from `location.search` (`?a=1&b=2`, with or without the `?`); other
    /// parameters are ignored; a malformed value is an error naming it.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for pair in query.trim_start_matches('?').split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let slot = match key {
                "gpu-budget" => &mut out.budget,
                "gpu-max-binding" => &mut out.max_binding,
                "gpu-max-buffer" => &mut out.max_buffer,
                _ => continue,
            };
            *slot = Some(parse_bytes(value).ok_or_else(|| {
                format!(
                    "the URL parameter {key}={value} is not a positive byte count (e.g. 65536, \
                     64K, 512M, 3G)"
                )
            })?);
        }
        Ok(out)
    }

    /// Whether any override is set.
    pub fn any(&self) -> bool {
        self.budget.is_some() || self.max_binding.is_some() || self.max_buffer.is_some()
    }
}

/// The test parameter `storage-free` of the page's URL query (`?storage-free=10K`): bytes of
/// free storage the worker is to assume at most when it stores quantized copies.
pub fn storage_free_from_query(query: &str) -> Result<Option<u64>, String> {
    for pair in query.trim_start_matches('?').split('&') {
        if let Some(("storage-free", value)) = pair.split_once('=') {
            return parse_bytes(value).map(Some).ok_or_else(|| {
                format!("the URL parameter storage-free={value} is not a positive byte count")
            });
        }
    }
    Ok(None)
}

/// The URL parameter `f16` of the page (`?f16=1`): multiply quantized weights with f16
/// operands where the GPU has `shader-f16` ([`crate::model::nn::QuantizedMatmul::DequantizeF16`];
/// not the default until it is timed on a GPU). `1`/`on`/`true`, `0`/`off`/`false`.
pub fn f16_from_query(query: &str) -> Result<bool, String> {
    for pair in query.trim_start_matches('?').split('&') {
        if let Some(("f16", value)) = pair.split_once('=') {
            return match value {
                "1" | "on" | "true" => Ok(true),
                "0" | "off" | "false" => Ok(false),
                other => Err(format!("the URL parameter f16={other} is not 1 or 0")),
            };
        }
    }
    Ok(false)
}

/// `65536`, `64K`, `512M`, `3G` (binary units) → bytes; `None` for anything else or 0 (the
/// page's URL parameters and the CLI's `--gpu-*` options).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 10),
        (i, 'M' | 'm') => (&text[..i], 20),
        (i, 'G' | 'g') => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().ok()?;
    (n > 0).then_some(n)?.checked_mul(1 << shift)
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunPhase {
    /// Describing the picture with the vision-language model (empty prompt); then
    /// [`FromWorker::CaptionProgress`] follows each token.
    Captioning,
    /// Encoding the prompt with the text encoder.
    EncodingPrompt,
    /// Resizing the picture and encoding it with the VAE.
    EncodingImage,
    /// Denoising: `step` of `steps` done.
    Denoising,
    /// Decoding the layers with the VAE.
    Decoding,
}

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ToWorker {
    /// Acquire the WebGPU adapter and device, report them, then run the GPU self-test.
    ProbeGpu,
    /// Load a model onto the GPU (freeing the one loaded before).
    LoadModel {
        /// Where its files are.
        source: ModelSource,
        /// What the memory plan may use; `None`: everything resident, as before plans.
        #[serde(default)]
        memory: Option<MemorySettings>,
        /// Test parameter `?storage-free=BYTES` ([`storage_free_from_query`]): the most free
        /// storage the worker counts on when it stores quantized copies (a browser's storage
        /// cannot be filled on demand). `None`: what `navigator.storage.estimate()` says.
        #[serde(default)]
        storage_free: Option<u64>,
        /// The page's `?f16=1` ([`f16_from_query`]): quantized weights multiply with f16
        /// operands if the device has `shader-f16`.
        #[serde(default)]
        f16: bool,
    },
    /// Decompose a picture with the loaded model.
    Decompose(DecomposeRequest),
    /// Stop the task in flight: a decomposition after its current step (or at its next weight
    /// read, while a phase of it loads), a load at its next weight read (a stored copy being
    /// written keeps what it wrote, uncommitted, for the next load).
    Cancel,
    /// Free the loaded model.
    Unload,
    /// Report what the browser's model cache holds of a source ([`FromWorker::ModelState`]).
    QueryModel {
        /// The source.
        source: ModelSource,
    },
    /// Download a source's missing files into the cache, verified (resumes partial files).
    DownloadModel {
        /// The source.
        source: ModelSource,
        /// Test parameter `?storage-free=BYTES`, as for [`ToWorker::LoadModel`]: what the note
        /// on the first load's stored copies counts on ([`FromWorker::DownloadDone`]).
        #[serde(default)]
        storage_free: Option<u64>,
    },
    /// Stop the running download (its durable bytes stay for a resume).
    CancelDownload,
    /// Delete a source's files from the cache.
    DeleteModel {
        /// The source.
        source: ModelSource,
    },
    /// List every revision folder of the model cache against `sources` (the page's model
    /// list): who uses it, and what in it nobody reads ([`FromWorker::Storage`]).
    ListStorage {
        /// The listed sources.
        sources: Vec<ModelSource>,
    },
    /// Remove what none of `sources` reads from the revision folder `repo@revision`: the whole
    /// folder when none of them uses it, else the files none of them keeps. Then lists again.
    CleanStorage {
        /// The listed sources.
        sources: Vec<ModelSource>,
        /// `owner/name`.
        repo: String,
        /// The commit.
        revision: String,
    },
}

/// A stored quantized copy being written while its checkpoint downloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The component (`transformer`, `text_encoder`).
    pub component: String,
    /// 8 or 4.
    pub bits: u32,
    /// Bytes of the copy written.
    pub written: u64,
    /// Its size.
    pub size: u64,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum FromWorker {
    /// The worker's wasm is loaded and its message handler installed: messages sent before
    /// this one would be lost.
    Ready,
    /// The device Burn computes on.
    Gpu {
        /// Adapter, limits and features.
        report: GpuReport,
    },
    /// This browser has no usable WebGPU; the page stays usable for viewing.
    NoWebGpu {
        /// Why, in words, with what the user can do about it.
        reason: String,
    },
    /// The GPU self-test: a small matmul on the device compared with the CPU backend.
    SelfTest {
        /// What was compared.
        check: MatmulCheck,
        /// Wall time of the test, including shader compilation, in milliseconds.
        millis: f64,
    },
    /// Something failed in the worker; the message is for the user.
    Error {
        /// What failed, with context.
        message: String,
    },
    /// Model loading: bytes of weights read so far.
    LoadProgress {
        /// The component being loaded (`"transformer"`, `"vae"`, `"text encoder"`).
        component: String,
        /// Bytes read from the source so far (all components).
        bytes_read: u64,
        /// Bytes of all weight files, when known.
        bytes_total: Option<u64>,
    },
    /// The memory plan of a load (before its weights are read) or of a run (before it starts).
    MemoryPlan {
        /// `ModelSource::id`.
        id: String,
        /// The plan.
        plan: MemoryPlan,
        /// The plan in words ([`MemoryPlan::describe`]).
        summary: String,
        /// The budget it was made for, bytes.
        budget_bytes: u64,
        /// The limits it was made for (the device's, or the URL's forced ones).
        limits: KeyLimits,
        /// Whether the components load for each run and are freed after it (the plan streams),
        /// rather than staying loaded.
        phased: bool,
    },
    /// A phased run loads a component: bytes of its weights read so far.
    RunLoading {
        /// `"text encoder"`, `"transformer"`, `"vae"`.
        component: String,
        /// Bytes read so far in this phase.
        bytes_read: u64,
        /// Bytes of this phase's weight files.
        bytes_total: u64,
        /// Since the run started, ms.
        elapsed_ms: f64,
    },
    /// The model is on the GPU and can decompose.
    ModelLoaded {
        /// `ModelSource::id`.
        id: String,
        /// Whether prompts can be encoded (the text encoder is part of this build and loaded).
        text_encoder: bool,
        /// Whether an empty prompt can be captioned (the model has the processor settings and
        /// the vision tower, and they are loaded).
        #[serde(default)]
        captioner: bool,
        /// Whether the model loads for each run and is freed after it (its memory plan streams
        /// the transformer): then only its configs are held now.
        #[serde(default)]
        phased: bool,
        /// Wall time of the load, ms.
        millis: f64,
        /// One more sentence about the load for the page (e.g. that the transformer was
        /// quantized and stored in this browser, or read from that stored copy).
        #[serde(default)]
        note: Option<String>,
    },
    /// The load stopped after a `Cancel`; no model is loaded, and no stored copy is committed
    /// half-made (a copy being written keeps its bytes for the next load to go on from).
    LoadCancelled {
        /// Where it stopped, e.g. "before reading transformer/x.safetensors".
        at: String,
    },
    /// Loading failed; no model is loaded.
    LoadFailed {
        /// What failed, with the file / URL and status.
        message: String,
    },
    /// The model was freed.
    Unloaded,
    /// The GPU device is lost (a driver reset, a removed GPU): nothing more can run in this
    /// worker; the page keeps its document and asks for an Export and a reload.
    DeviceLost {
        /// What the device said.
        reason: String,
    },
    /// What the cache holds of a source (after a query, a download or a deletion).
    ModelState {
        /// `ModelSource::id`.
        id: String,
        /// `None` when the file list is unknown (the hub is unreachable and nothing of the
        /// source was ever downloaded here).
        state: Option<CacheState>,
        /// Why the state is unknown, or what went wrong reading it.
        note: Option<String>,
    },
    /// The model cache's revision folders ([`ToWorker::ListStorage`],
    /// [`ToWorker::CleanStorage`]).
    Storage {
        /// `None` when the cache could not be read.
        report: Option<StorageReport>,
        /// What went wrong, or why a clean-up was refused.
        note: Option<String>,
    },
    /// A download's progress (bytes done/total over all files, rate, ETA).
    DownloadProgress {
        /// `ModelSource::id`.
        id: String,
        /// The snapshot.
        progress: Progress,
        /// The stored copy being written from the shard that just arrived, if one is.
        #[serde(default)]
        copying: Option<CopyProgress>,
    },
    /// The download finished: every file is verified in the cache.
    DownloadDone {
        /// `ModelSource::id`.
        id: String,
        /// Bytes fetched over the network by this download.
        fetched_bytes: u64,
        /// Wall time, ms.
        millis: f64,
        /// What the first load's stored quantized copies will take (room on the way, and the
        /// model's size after), or that the storage cannot hold them; `None`: no copy to make.
        #[serde(default)]
        note: Option<String>,
    },
    /// The download stopped because the page asked; its durable bytes stay.
    DownloadCancelled {
        /// `ModelSource::id`.
        id: String,
    },
    /// The download failed (or was refused up front, e.g. by the storage quota).
    DownloadFailed {
        /// `ModelSource::id`.
        id: String,
        /// What failed, with the numbers.
        message: String,
    },
    /// A run's progress.
    RunProgress {
        /// The phase now running (or, for `Denoising`, the step just done).
        phase: RunPhase,
        /// Denoising steps done.
        step: usize,
        /// All denoising steps.
        steps: usize,
        /// Since the run started, ms.
        elapsed_ms: f64,
    },
    /// The caption of an empty-prompt run so far, after each generated token.
    CaptionProgress {
        /// The caption so far (special tokens skipped; not yet stripped).
        text: String,
        /// Tokens generated so far.
        tokens: usize,
        /// Most tokens the caption may have.
        max_tokens: usize,
        /// Since the run started, ms.
        elapsed_ms: f64,
    },
    /// The run finished: the layers, bottom → top.
    Layers {
        /// Straight-alpha RGBA at the size of the request's picture (the working size's
        /// result resized back with the pipeline's Lanczos).
        layers: Vec<Rgba>,
        /// The caption that served as the prompt, when the request's prompt was empty.
        #[serde(default)]
        caption: Option<String>,
        /// Wall time of the run, ms.
        millis: f64,
    },
    /// The run stopped because the page asked.
    Cancelled {
        /// Where it stopped ("after denoising step 3 of 50").
        at: String,
    },
    /// The run failed; the model stays loaded unless the message says the GPU was lost.
    RunFailed {
        /// What failed, with context.
        message: String,
    },
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let json = serde_json::to_string(&FromWorker::NoWebGpu { reason: "x".into() }).unwrap();
        assert_eq!(json, r#"{"type":"noWebGpu","reason":"x"}"#);
        let back: ToWorker = serde_json::from_str(r#"{"type":"probeGpu"}"#).unwrap();
        assert_eq!(back, ToWorker::ProbeGpu);
    }

    fn request() -> DecomposeRequest {
        DecomposeRequest {
            image: Rgba {
                width: 2,
                height: 1,
                pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
            layers: 3,
            steps: 2,
            resolution: 64,
            true_cfg_scale: 4.0,
            cfg_normalize: true,
            seed: 9,
            prompt: "a cat".into(),
            max_caption_tokens: 16,
            gpu_fault: None,
        }
    }

    #[test]
    fn the_storage_free_parameter_is_a_byte_count() {
        assert_eq!(f16_from_query("?gpu-budget=1G"), Ok(false));
        assert_eq!(f16_from_query("?a=1&f16=1"), Ok(true));
        assert_eq!(f16_from_query("f16=off"), Ok(false));
        assert!(f16_from_query("?f16=yes").unwrap_err().contains("f16=yes"));
        assert_eq!(storage_free_from_query("?gpu-budget=1G"), Ok(None));
        assert_eq!(
            storage_free_from_query("?a=1&storage-free=10K"),
            Ok(Some(10 << 10))
        );
        let err = storage_free_from_query("storage-free=lots").unwrap_err();
        assert!(err.contains("storage-free=lots"), "{err}");
    }

    #[test]
    fn the_gpu_fault_parameter_names_one_of_two_faults() {
        assert_eq!(GpuFault::from_query("?gpu-budget=1G"), Ok(None));
        assert_eq!(GpuFault::from_query(""), Ok(None));
        assert_eq!(
            GpuFault::from_query("?a=1&gpu-fault=error"),
            Ok(Some(GpuFault::Error))
        );
        assert_eq!(
            GpuFault::from_query("gpu-fault=lose-device"),
            Ok(Some(GpuFault::LoseDevice))
        );
        let err = GpuFault::from_query("?gpu-fault=oom").unwrap_err();
        assert!(
            err.contains("gpu-fault=oom") && err.contains("lose-device"),
            "{err}"
        );
        // Requests from a page without the parameter still parse.
        let json = serde_json::to_value(request()).unwrap();
        let mut without = json.clone();
        without.as_object_mut().unwrap().remove("gpuFault");
        let back: DecomposeRequest = serde_json::from_value(without).unwrap();
        assert_eq!(back.gpu_fault, None);
        let mut with = json;
        with["gpuFault"] = "loseDevice".into();
        let back: DecomposeRequest = serde_json::from_value(with).unwrap();
        assert_eq!(back.gpu_fault, Some(GpuFault::LoseDevice));
    }

    #[test]
    fn url_overrides_parse_bytes_with_binary_suffixes() {
        let o =
            MemoryOverrides::from_query("?model=x&gpu-max-binding=65536&gpu-budget=3M").unwrap();
        assert_eq!(
            o,
            MemoryOverrides {
                budget: Some(3 << 20),
                max_binding: Some(65536),
                max_buffer: None
            }
        );
        assert!(o.any());
        let o = MemoryOverrides::from_query("gpu-max-buffer=64k&gpu-budget=2G").unwrap();
        assert_eq!((o.max_buffer, o.budget), (Some(64 << 10), Some(2 << 30)));
        assert!(!MemoryOverrides::from_query("").unwrap().any());
        assert!(!MemoryOverrides::from_query("?a=1&b").unwrap().any());
        for bad in [
            "gpu-budget=0",
            "gpu-budget=-1",
            "gpu-budget=2T",
            "gpu-max-binding=",
            "gpu-budget=99999999999G",
        ] {
            let err = MemoryOverrides::from_query(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn memory_settings_force_only_the_limits_they_name() {
        let device = KeyLimits {
            max_buffer_size: 1 << 30,
            max_storage_buffer_binding_size: 128 << 20,
            max_compute_workgroup_storage_size: 16384,
            max_compute_invocations_per_workgroup: 256,
        };
        let settings = MemorySettings {
            budget_bytes: 5 << 20,
            max_binding: Some(65536),
            max_buffer: None,
            resolution: 64,
            layers: 2,
        };
        let budget = settings.budget(&device);
        assert_eq!(budget.device_bytes, 5 << 20);
        assert_eq!(budget.limits.max_storage_buffer_binding_size, 65536);
        assert_eq!(budget.limits.max_buffer_size, 1 << 30);
    }

    #[test]
    fn every_message_round_trips_tagged() {
        let to = [
            ToWorker::LoadModel {
                source: ModelSource {
                    id: "tiny".into(),
                    label: "Tiny".into(),
                    host: "http://127.0.0.1:8090".into(),
                    repo: "test/tiny".into(),
                    revision: "main".into(),
                    resolutions: vec![64],
                    dev: true,
                    components: Vec::new(),
                },
                memory: Some(MemorySettings {
                    budget_bytes: 1 << 30,
                    max_binding: Some(65536),
                    max_buffer: None,
                    resolution: 64,
                    layers: 3,
                }),
                storage_free: Some(10 << 10),
                f16: true,
            },
            ToWorker::Decompose(request()),
            ToWorker::Cancel,
            ToWorker::Unload,
            ToWorker::CancelDownload,
        ];
        for m in to {
            let json = serde_json::to_value(&m).unwrap();
            assert!(json["type"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<ToWorker>(json).unwrap(), m);
        }
        let decompose = serde_json::to_value(ToWorker::Decompose(request())).unwrap();
        assert_eq!(decompose["type"], "decompose");
        assert_eq!(decompose["trueCfgScale"], 4.0);
        assert_eq!(decompose["image"]["pixels"].as_array().unwrap().len(), 8);

        let from = [
            FromWorker::LoadProgress {
                component: "vae".into(),
                bytes_read: 10,
                bytes_total: Some(20),
            },
            FromWorker::ModelLoaded {
                id: "tiny".into(),
                text_encoder: false,
                captioner: true,
                phased: true,
                millis: 1.5,
                note: Some("stored".into()),
            },
            FromWorker::RunLoading {
                component: "transformer".into(),
                bytes_read: 5,
                bytes_total: 9,
                elapsed_ms: 1.0,
            },
            FromWorker::LoadFailed {
                message: "x".into(),
            },
            FromWorker::LoadCancelled {
                at: "before reading vae/x.safetensors".into(),
            },
            FromWorker::Unloaded,
            FromWorker::RunProgress {
                phase: RunPhase::Denoising,
                step: 1,
                steps: 2,
                elapsed_ms: 3.0,
            },
            FromWorker::CaptionProgress {
                text: "a red".into(),
                tokens: 2,
                max_tokens: 16,
                elapsed_ms: 5.0,
            },
            FromWorker::Layers {
                layers: vec![request().image],
                caption: Some("a red ball".into()),
                millis: 2.0,
            },
            FromWorker::Cancelled {
                at: "after denoising step 1 of 2".into(),
            },
            FromWorker::RunFailed {
                message: "y".into(),
            },
            FromWorker::ModelState {
                id: "tiny".into(),
                state: Some(CacheState {
                    revisions: vec!["test/tiny@0123".into()],
                    total_bytes: 30,
                    verified_bytes: 10,
                    partial_bytes: 5,
                    files_total: 3,
                    files_verified: 1,
                    from_record: true,
                    replaced_bytes: 0,
                    copy_bytes: 7,
                }),
                note: None,
            },
            FromWorker::DownloadProgress {
                id: "tiny".into(),
                progress: Progress {
                    done_bytes: 1,
                    total_bytes: 2,
                    files_done: 0,
                    files_total: 1,
                    current_file: "vae/x.safetensors".into(),
                    rate_bytes_per_s: 3.5,
                    eta_s: Some(0.3),
                },
                copying: Some(CopyProgress {
                    component: "transformer".into(),
                    bits: 4,
                    written: 10,
                    size: 20,
                }),
            },
            FromWorker::DownloadDone {
                id: "tiny".into(),
                fetched_bytes: 2,
                millis: 1.0,
                note: Some("n".into()),
            },
            FromWorker::DownloadCancelled { id: "tiny".into() },
            FromWorker::DownloadFailed {
                id: "tiny".into(),
                message: "z".into(),
            },
        ];
        for m in from {
            let json = serde_json::to_value(&m).unwrap();
            assert!(json["type"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<FromWorker>(json).unwrap(), m);
        }
        let state = CacheState {
            revisions: Vec::new(),
            total_bytes: 4,
            verified_bytes: 4,
            partial_bytes: 0,
            files_total: 2,
            files_verified: 2,
            from_record: false,
            replaced_bytes: 3,
            copy_bytes: 1,
        };
        assert!(state.complete());
        assert!(
            !CacheState {
                files_verified: 1,
                ..state
            }
            .complete()
        );
        let json = serde_json::to_string(&FromWorker::RunProgress {
            phase: RunPhase::EncodingPrompt,
            step: 0,
            steps: 2,
            elapsed_ms: 0.0,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"runProgress","phase":"encodingPrompt","step":0,"steps":2,"elapsedMs":0.0}"#
        );
        // A request without the caption limit gets the pipeline's 512.
        let mut json = serde_json::to_value(ToWorker::Decompose(request())).unwrap();
        assert_eq!(json["maxCaptionTokens"], 16);
        json.as_object_mut().unwrap().remove("maxCaptionTokens");
        match serde_json::from_value::<ToWorker>(json).unwrap() {
            ToWorker::Decompose(r) => assert_eq!(r.max_caption_tokens, 512),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pixel_buffers_are_checked() {
        assert!(request().image.check("input").is_ok());
        let mut bad = request().image;
        bad.pixels.pop();
        assert_eq!(
            bad.check("input").unwrap_err(),
            "input: 2×1 RGBA needs 8 bytes, got 7"
        );
    }
}
