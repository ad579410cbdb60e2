//! The crate's error type. Every message names what failed and the value that made it fail,
//! so that it can be shown to a person as it is (the browser code turns it into page text).

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be opened as an image.
    #[error("could not open \"{name}\": {reason}")]
    Image {
        /// The file name as the user gave it.
        name: String,
        /// What is wrong with it, in words.
        reason: String,
    },
    /// A GPU could not be obtained or used.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A pipeline computation got arguments it cannot work with.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// An editor change or export was refused.
    #[error(transparent)]
    Editor(#[from] crate::editor::Error),
    /// A tensor could not be read back from a device.
    #[error("reading back {what} from {device} failed: {reason}")]
    Readback {
        /// Which tensor.
        what: String,
        /// Which device.
        device: String,
        /// The backend's message.
        reason: String,
    },
    /// A weight file or config could not be read from its source.
    #[error("reading \"{file}\": {reason}")]
    Source {
        /// The file, relative to the model folder root.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A config file is missing a field, has a wrong value, or asks for something unsupported.
    #[error("config \"{file}\": {reason}")]
    Config {
        /// The config file.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint tensor is missing, unexpected, of the wrong shape or of an unsupported dtype.
    #[error("weights: tensor \"{key}\" ({file}): {reason}")]
    Weights {
        /// The diffusers key of the tensor.
        key: String,
        /// The file that holds it, or the files searched.
        file: String,
        /// What is wrong, with both shapes where shapes differ.
        reason: String,
    },
    /// A tokenizer file is missing, malformed or inconsistent, or a text cannot be encoded.
    #[error("tokenizer \"{file}\": {reason}")]
    Tokenizer {
        /// The tokenizer file (or folder).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A model was called with inputs of the wrong shape or inconsistent arguments.
    #[error("{model}: {reason}")]
    Input {
        /// Which model or stage.
        model: &'static str,
        /// What is wrong with the inputs, with the shapes involved.
        reason: String,
    },
    /// The caller stopped a run through its progress callback.
    #[error("cancelled {at}")]
    Cancelled {
        /// Where the run stopped, e.g. "after denoising step 3 of 50".
        at: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
