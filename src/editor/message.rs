//! The one message type through which every change to the document flows, and the effects an
//! update reports back to the UI.

use super::layer::{LayerId, NewLayer};
use super::transform::Transform;

/// A request to change the editor state. [`Editor::update`] is the only place that applies them.
///
/// Layers are addressed by [`LayerId`] (stable across reorders) except in [`Reorder`], which
/// is about positions. Stack indices count from the bottom (0).
///
/// [`Editor::update`]: super::Editor::update
/// [`Reorder`]: EditorMessage::Reorder
#[derive(Clone, Debug, PartialEq)]
pub enum EditorMessage {
    /// Push layers on top of the stack, in the given order (first = lowest), e.g. a
    /// decomposition result. Selects the topmost new layer. An empty list changes nothing.
    AddLayers { layers: Vec<NewLayer> },
    /// Select a layer, or clear the selection with `None`. Selection is view state: it is not
    /// an undo step of its own, but every undo step restores the selection it was taken with.
    Select { id: Option<LayerId> },
    /// Show or hide a layer.
    SetVisibility { id: LayerId, visible: bool },
    /// Set a layer's opacity (`0..=1`; NaN and out-of-range values are rejected).
    SetOpacity { id: LayerId, opacity: f32 },
    /// Rename a layer.
    Rename { id: LayerId, name: String },
    /// Move the layer at stack index `from` so that it ends up at index `to`.
    Reorder { from: usize, to: usize },
    /// Copy a layer (sharing its pixels) directly above itself, named `"{name} copy"`, and
    /// select the copy.
    Duplicate { id: LayerId },
    /// Remove a layer. If it was selected, the layer below it (or else the new bottom) is
    /// selected.
    Delete { id: LayerId },
    /// Merge a layer into the one below it. The result keeps the lower layer's id and name,
    /// covers the union of both layers' bounds at scale 1 and opacity 1, and looks exactly
    /// like the two did. Both layers must be visible.
    MergeDown { id: LayerId },
    /// Translate a layer by `(dx, dy)` canvas pixels (a drag).
    Move { id: LayerId, dx: i32, dy: i32 },
    /// Translate the selected layer by `(dx, dy)` (arrow keys).
    Nudge { dx: i32, dy: i32 },
    /// Set a layer's scale about its top-left corner.
    SetScale { id: LayerId, scale: f32 },
    /// Set a layer's whole placement at once (offset and scale), e.g. the end of a drag on a
    /// corner handle, which moves the corner and rescales in one undo step.
    SetTransform { id: LayerId, transform: Transform },
    /// Replace the whole document (its size and every layer) by new layers, bottom to top,
    /// as one undo step: opening an image, or a decomposition result arriving. Ids continue
    /// from the old document's (never reused), the topmost new layer is selected. Undo brings
    /// the previous document back, size included.
    ReplaceDocument {
        width: u32,
        height: u32,
        layers: Vec<NewLayer>,
    },
    /// Replace a layer by its sub-layers (bottom to top), e.g. the result of decomposing that
    /// layer again. Each sub-layer's offset is in the replaced layer's image pixels; the
    /// sub-layers inherit its placement, scale, opacity and visibility, and get new ids. The
    /// topmost sub-layer is selected.
    ReplaceWithSublayers { id: LayerId, layers: Vec<NewLayer> },
    /// Undo the last change (nothing happens when there is none).
    Undo,
    /// Redo the last undone change (nothing happens when there is none).
    Redo,
}

/// What an update changed, so the UI redraws only what it must.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The composite may look different: redraw the canvas.
    Render,
    /// The layer list (order, names, visibility, opacity, ids) changed: rebuild the panel.
    LayersPanel,
    /// The selection changed to this layer (or none).
    Selection(Option<LayerId>),
    /// Undo/redo availability after the update.
    History { can_undo: bool, can_redo: bool },
}
