//! The scalar / CPU parts of `QwenImageLayeredPipeline` (diffusers 0.42.1), in plain Rust.
//!
//! Everything here needs no tensor library and is held bit-for-bit (or to ≤ 1 ulp where stated)
//! to the reference by `tests/pipeline_math.rs`, whose expected values come from the real
//! diffusers / Pillow code (`tests/fixtures/gen_pipeline_math.py`).
//!
//! The order of use in one run (`docs/model-spec.md` §2):
//!
//! 1. [`Dimensions::for_image`] — the 640/1024 bucket: working size `W×H` (multiples of 32),
//!    latent sizes, sequence lengths, `img_shapes`.
//! 2. [`preprocess_image`] — PIL-exact Lanczos resize of the RGBA input (premultiplied), then
//!    `(1, 4, 1, H, W)` floats in `[-1, 1]` for the VAE encoder.
//! 3. [`normalize_latents`], [`pack_latents`] / [`unpack_latents`], [`latents_for_decode`] —
//!    latent normalisation, the 2×2 patch packing and the decoder-input layout (plain-slice
//!    twins for the tensor versions; `latents_for_decode` keeps diffusers' `z / (1/std)`).
//! 4. [`FlowMatchEulerDiscreteScheduler`] with [`layered_sigmas`] and [`layered_mu`] — the
//!    sigma/timestep schedule and the Euler step; [`transformer_timestep_f32`] is what the
//!    transformer receives.
//! 5. [`decoded_layers_to_rgba`] — decoder output to straight-alpha RGBA layers.
//!
//! Those modules allocate no GPU memory and do not depend on Burn; they compile for
//! `wasm32-unknown-unknown` as is.
//!
//! On top of them, on a Burn device:
//!
//! - [`layered`] — [`LayeredPipeline`]: the whole `__call__` (image → N RGBA layers) with the
//!   transformer and VAE of [`crate::model`], progress reports and cancellation between steps;
//! - [`latents`] — [`pack_latents_tensor`] / [`unpack_latents_tensor`] (device twins of the
//!   slice functions) and the deterministic [`seeded_noise`].

pub mod dimensions;
pub mod error;
pub mod latents;
pub mod layered;
pub mod memory;
pub mod phased;
pub mod postprocess;
pub mod preprocess;
pub mod scheduler;

pub use dimensions::{
    Dimensions, PATCH_SIZE, PIXELS_PER_TOKEN, SUPPORTED_RESOLUTIONS, VAE_SCALE_FACTOR,
    aspect_ratio, calculate_dimensions, latents_for_decode, normalize_latents, pack_latents,
    packed_position, python_round, unpack_latents,
};
pub use error::{PipelineError, Result};
pub use latents::{pack_latents_tensor, seeded_noise, seeded_normal, unpack_latents_tensor};
pub use layered::{
    DecomposeParams, LayeredOutput, LayeredPipeline, Noise, Progress, SCHEDULER_CONFIG_FILE, Traced,
};
pub use memory::{
    DEFAULT_BUDGET_BYTES, MemoryBudget, MemoryEstimate, MemoryPlan, ModelConfigs, OversizedTensor,
    PlanRequest, TensorAction, TransformerResidency, default_budget_bytes, plan_memory, show_bytes,
};
pub use phased::{PlannedPipeline, PromptEmbeds, encode_prompts_then_free};
pub use postprocess::{
    decoded_layers_to_rgba, decoded_to_rgba, decoded_to_unit_hwc, denormalize, layers_at_size,
    unit_to_u8,
};
pub use preprocess::{
    PreprocessedImage, image_to_vae_input, premultiply_alpha, preprocess_image,
    resize_rgba_lanczos, u8_to_unit_signed, unpremultiply_alpha,
};
pub use scheduler::{
    FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, TimeShiftType, euler_update,
    layered_mu, layered_sigmas, numpy_linspace, round_to_bf16, transformer_timestep_bf16,
    transformer_timestep_f32,
};
