//! The whole contract between the page (main thread) and the worker (GPU and model).
//!
//! Messages cross `postMessage` as plain JS objects made by `serde-wasm-bindgen`, tagged by
//! `type`, so the browser's devtools show them readably. Pixel buffers are `serde_bytes`, so
//! they cross as `Uint8Array`s (one copy out of wasm memory) and the sender transfers their
//! `ArrayBuffer`s instead of cloning them (see [`Rgba`]).
//!
//! A session: `ProbeGpu` → `Gpu` + `SelfTest`; `LoadModel` → `LoadProgress`… → `ModelLoaded`
//! (or `LoadFailed`); `Decompose` → `RunProgress`… (with an empty prompt first `RunProgress`
//! `captioning` and `CaptionProgress` per generated token) → `Layers` (or `Cancelled` after
//! `Cancel`, or `RunFailed`); `Unload` → `Unloaded`.

use serde::{Deserialize, Serialize};

use crate::gpu::{GpuReport, MatmulCheck};
use crate::weights::http::resolve_base;

/// Where a model's files come from: a Hugging Face-style host, a repository and a revision.
/// The page reads the list from `models.json` (served with the app).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Stable id of the entry (`"qwen-image-layered"`).
    pub id: String,
    /// What the picker shows.
    pub label: String,
    /// `https://huggingface.co`, or a local host for development.
    pub host: String,
    /// `owner/name`.
    pub repo: String,
    /// A commit sha (immutable) or a branch name.
    pub revision: String,
    /// The `resolution` values (bucket sides) this model is meant for; the first is the default.
    #[serde(default = "default_resolutions")]
    pub resolutions: Vec<u32>,
    /// Development-only entry (random test weights): listed only when the page is served
    /// from `localhost` / `127.0.0.1`.
    #[serde(default)]
    pub dev: bool,
}

fn default_resolutions() -> Vec<u32> {
    vec![640, 1024]
}

impl ModelSource {
    /// `{host}/{repo}/resolve/{revision}`: files are `{base}/{path}`.
    pub fn base_url(&self) -> String {
        resolve_base(&self.host, &self.repo, &self.revision)
    }
}

/// The model list served with the app (`www/models.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRegistry {
    /// Entries in the order the picker shows them; the first non-dev one is the default.
    pub models: Vec<ModelSource>,
}

impl ModelRegistry {
    /// Parses `models.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let registry: Self =
            serde_json::from_str(text).map_err(|e| format!("models.json is not valid: {e}"))?;
        if registry.models.is_empty() {
            return Err("models.json lists no models".into());
        }
        for m in &registry.models {
            if m.id.is_empty() || m.repo.split('/').count() != 2 || m.revision.is_empty() {
                return Err(format!(
                    "models.json entry \"{}\" needs an id, an owner/name repo and a revision",
                    m.id
                ));
            }
            if m.resolutions.is_empty() || m.resolutions.iter().any(|r| r % 16 != 0 || *r == 0) {
                return Err(format!(
                    "models.json entry \"{}\": resolutions must be positive multiples of 16",
                    m.id
                ));
            }
        }
        Ok(registry)
    }

    /// The entries a page served from `hostname` lists: dev entries only on a local host.
    pub fn visible(&self, hostname: &str) -> Vec<ModelSource> {
        let local = matches!(hostname, "localhost" | "127.0.0.1" | "[::1]" | "::1");
        self.models
            .iter()
            .filter(|m| local || !m.dev)
            .cloned()
            .collect()
    }
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
}

fn default_max_caption_tokens() -> usize {
    crate::caption::DEFAULT_MAX_NEW_TOKENS
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
    },
    /// Decompose a picture with the loaded model.
    Decompose(DecomposeRequest),
    /// Stop the running decomposition after its current step.
    Cancel,
    /// Free the loaded model.
    Unload,
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
        /// Wall time of the load, ms.
        millis: f64,
    },
    /// Loading failed; no model is loaded.
    LoadFailed {
        /// What failed, with the file / URL and status.
        message: String,
    },
    /// The model was freed.
    Unloaded,
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
        }
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
                },
            },
            ToWorker::Decompose(request()),
            ToWorker::Cancel,
            ToWorker::Unload,
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
                millis: 1.5,
            },
            FromWorker::LoadFailed {
                message: "x".into(),
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
        ];
        for m in from {
            let json = serde_json::to_value(&m).unwrap();
            assert!(json["type"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<FromWorker>(json).unwrap(), m);
        }
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

    #[test]
    fn the_registry_hides_dev_models_from_visitors() {
        let text = r#"{"models": [
            {"id": "real", "label": "Real", "host": "https://huggingface.co",
             "repo": "Qwen/Qwen-Image-Layered", "revision": "main"},
            {"id": "tiny", "label": "Tiny", "host": "http://127.0.0.1:8090",
             "repo": "test/tiny", "revision": "main", "resolutions": [64, 32], "dev": true}
        ]}"#;
        let reg = ModelRegistry::from_json(text).unwrap();
        assert_eq!(reg.models[0].resolutions, vec![640, 1024]);
        assert_eq!(
            reg.models[0].base_url(),
            "https://huggingface.co/Qwen/Qwen-Image-Layered/resolve/main"
        );
        let ids = |h: &str| reg.visible(h).into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids("example.org"), ["real"]);
        assert_eq!(ids("127.0.0.1"), ["real", "tiny"]);
        assert!(ModelRegistry::from_json(r#"{"models": []}"#).is_err());
        let bad = r#"{"models": [{"id": "x", "label": "", "host": "h", "repo": "norepo", "revision": "main"}]}"#;
        assert!(
            ModelRegistry::from_json(bad)
                .unwrap_err()
                .contains("owner/name")
        );
    }

    /// The committed registry parses, and its default entry is the real model.
    #[test]
    fn the_served_registry_is_valid() {
        let text = include_str!("../www/models.json");
        let reg = ModelRegistry::from_json(text).unwrap();
        let visitors = reg.visible("example.org");
        assert_eq!(visitors[0].repo, "Qwen/Qwen-Image-Layered");
        assert_eq!(visitors[0].host, "https://huggingface.co");
        assert!(
            reg.models
                .iter()
                .any(|m| m.dev && m.label.contains("random"))
        );
    }
}
