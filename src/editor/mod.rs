//! The headless layer editor and its exporters.
//!
//! No browser code lives here: `src/web/` turns DOM events into [`EditorMessage`]s, feeds them
//! to [`Editor::update`] (the only mutation point) and draws the [`Document`] it reads back.
//! Everything here also compiles for `wasm32-unknown-unknown` and is tested natively
//! (`tests/editor.rs`, `tests/export.rs`).
//!
//! - [`layer`], [`document`]: the data (layers bottom to top, straight-alpha RGBA8 pixels
//!   shared behind `Arc`).
//! - [`message`]: [`EditorMessage`] in, [`Effect`]s out.
//! - [`handler`]: [`Editor`], which validates and applies messages atomically.
//! - [`history`]: undo/redo as bounded snapshots (why: see the module).
//! - [`transform`]: offset + scale, the shared bilinear resampler.
//! - [`mod@composite`]: premultiplied "over", matching PIL `alpha_composite`.
//! - [`view`]: zoom/pan and the corner handles' geometry, for the page's canvas.
//! - [`mod@export`]: PNG, ZIP (+ manifest), PSD, OpenRaster, all returning bytes.

pub mod composite;
pub mod document;
pub mod error;
pub mod export;
pub mod handler;
pub mod history;
pub mod layer;
pub mod message;
pub mod transform;
pub mod view;

pub use composite::{composite, composite_region};
pub use document::Document;
pub use error::{Error, Result};
pub use export::{ExportFormat, export, sanitize_file_name};
pub use handler::{Editor, MAX_DOCUMENT_SIDE};
pub use history::{DEFAULT_HISTORY_DEPTH, History};
pub use layer::{BlendMode, Layer, LayerId, NewLayer};
pub use message::{EditorMessage, Effect};
pub use transform::{MAX_SCALE, MIN_SCALE, Rect, Transform};
pub use view::{Corner, Viewport};
