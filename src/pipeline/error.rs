//! The error type of the pipeline module.

/// Everything that can go wrong in the scalar parts of the pipeline.
///
/// Messages carry the offending values so that a failure in the browser console can be
/// understood without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The reference pipeline only accepts the 640 and 1024 buckets
    /// (`assert resolution in [640, 1024]`, `pipeline_qwenimage_layered.py:663`).
    #[error(
        "resolution bucket {resolution} is not supported; the reference accepts only 640 and 1024 \
         (Dimensions::for_image_any_bucket takes any multiple of 16, for tiny test models)"
    )]
    UnsupportedResolution {
        /// The requested bucket side.
        resolution: u32,
    },

    /// A resolution for the test-model bucket must be a positive multiple of 16.
    #[error("test bucket resolution {resolution} must be a positive multiple of 16")]
    InvalidTestResolution { resolution: u32 },

    /// The input image has a zero side.
    #[error("image size {width}x{height} has a zero side")]
    EmptyImage { width: u32, height: u32 },

    /// `calculate_dimensions` rounded a side to zero (extreme aspect ratio).
    #[error(
        "bucket {resolution} for a {image_width}x{image_height} image gives {width}x{height}: \
         the aspect ratio is too extreme"
    )]
    DegenerateDimensions {
        resolution: u32,
        image_width: u32,
        image_height: u32,
        width: u32,
        height: u32,
    },

    /// A size that must be a multiple of something is not.
    #[error("{what} = {value} is not a multiple of {multiple}")]
    NotMultiple {
        what: &'static str,
        value: usize,
        multiple: usize,
    },

    /// A buffer has the wrong number of elements for the shape it is said to have.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// The scheduler config is invalid (the same checks as the diffusers constructor).
    #[error("invalid scheduler config: {0}")]
    InvalidSchedulerConfig(String),

    /// The scheduler config JSON could not be parsed.
    #[error("scheduler config JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A scheduler feature that this port does not implement.
    #[error("unsupported scheduler feature: {0}")]
    UnsupportedScheduler(&'static str),

    /// `use_dynamic_shifting` is on but no `mu` was given.
    #[error("`mu` must be passed when `use_dynamic_shifting` is true")]
    MissingMu,

    /// `set_timesteps` was called with neither a step count nor sigmas, or with zero steps.
    #[error(
        "set_timesteps needs at least one step (num_inference_steps = {num_inference_steps:?}, sigmas given: {sigmas_given})"
    )]
    NoSteps {
        num_inference_steps: Option<usize>,
        sigmas_given: bool,
    },

    /// Custom sigmas disagree with `num_inference_steps`.
    #[error("{sigmas} custom sigmas given for num_inference_steps = {num_inference_steps}")]
    SigmasLength {
        sigmas: usize,
        num_inference_steps: usize,
    },

    /// `step` was called more times than there are timesteps, or before `set_timesteps`.
    #[error("scheduler step index {step_index} is past the last step ({num_steps} steps)")]
    StepOutOfRange { step_index: usize, num_steps: usize },

    /// `step` was called on a scheduler configured for stochastic sampling without noise.
    #[error("stochastic_sampling is on: call step_stochastic with a noise buffer")]
    NoiseRequired,
}

/// The module's result type.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Checks that a buffer has `expected` elements.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(PipelineError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}
