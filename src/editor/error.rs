//! The editor's error type. Every message names the action, the values involved and, where
//! there is one, the fix.

use super::layer::LayerId;
use super::transform::{MAX_SCALE, MIN_SCALE};

/// Everything that can go wrong in the editor core and its exporters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message named a layer id that is not in the document.
    #[error(
        "{action}: no layer with id {id} in the document (ids present, bottom to top: [{present}])"
    )]
    UnknownLayer {
        action: &'static str,
        id: LayerId,
        present: String,
    },

    /// A message named a layer index past the end of the stack.
    #[error(
        "{action}: layer index {index} is out of range (the document has {len} layers, indices 0..{len})"
    )]
    IndexOutOfRange {
        action: &'static str,
        index: usize,
        len: usize,
    },

    /// Opacity must be a finite number in `0..=1`.
    #[error("set opacity of layer {id}: {value} is not a number in 0..=1")]
    InvalidOpacity { id: LayerId, value: f32 },

    /// Scale must be finite and within the supported range.
    #[error("scale layer {id}: {value} is not a finite scale in {MIN_SCALE}..={MAX_SCALE}")]
    InvalidScale { id: LayerId, value: f32 },

    /// A message that acts on the selection was sent with nothing selected.
    #[error("{action}: no layer is selected; select one first")]
    NoSelection { action: &'static str },

    /// Merge down was asked of a layer that cannot be merged.
    #[error("merge down layer {id}: {reason}")]
    MergeDown { id: LayerId, reason: &'static str },

    /// A new layer's image has no pixels.
    #[error("{action}: layer image {name:?} is {width}x{height}; layers need at least 1x1 pixels")]
    EmptyImage {
        action: &'static str,
        name: String,
        width: u32,
        height: u32,
    },

    /// Replacing a layer by an empty list of sub-layers (that would be a delete).
    #[error(
        "replace layer {id} by sub-layers: no sub-layers were given (use Delete to remove a layer)"
    )]
    NoSublayers { id: LayerId },

    /// A layer offset would leave the `i32` range.
    #[error("{action} layer {id}: offset ({x} + {dx}, {y} + {dy}) overflows i32")]
    OffsetOverflow {
        action: &'static str,
        id: LayerId,
        x: i32,
        y: i32,
        dx: i32,
        dy: i32,
    },

    /// The document size is unusable.
    #[error("document size {width}x{height} is invalid: {reason}")]
    DocumentSize {
        width: u32,
        height: u32,
        reason: &'static str,
    },

    /// An exporter cannot represent the document.
    #[error("export {format}: {reason}")]
    Export {
        format: &'static str,
        reason: String,
    },

    /// PNG encoding failed.
    #[error("encode {what} as PNG: {source}")]
    Png {
        what: String,
        #[source]
        source: image::ImageError,
    },

    /// Writing an entry of a ZIP-based export failed.
    #[error("write {entry} into the {format} archive: {source}")]
    Zip {
        format: &'static str,
        entry: String,
        #[source]
        source: zip::result::ZipError,
    },

    /// Serialising the ZIP manifest failed.
    #[error("serialise manifest.json: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
