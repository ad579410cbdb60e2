//! [`Editor`]: the document, its history, and [`Editor::update`], the single mutation point.

use std::sync::Arc;

use image::RgbaImage;

use super::composite::composite_region;
use super::document::Document;
use super::error::{Error, Result};
use super::history::{DEFAULT_HISTORY_DEPTH, History};
use super::layer::{BlendMode, Layer, LayerId, NewLayer};
use super::message::{EditorMessage, Effect};
use super::transform::{MAX_SCALE, MIN_SCALE, Rect, Transform};

/// Largest accepted canvas side (PSD's limit).
pub const MAX_DOCUMENT_SIDE: u32 = 30_000;

/// The headless editor: owns the [`Document`] and its [`History`].
#[derive(Clone, Debug)]
pub struct Editor {
    doc: Document,
    history: History,
    next_id: u64,
}

impl Editor {
    /// An empty document of `width x height` with [`DEFAULT_HISTORY_DEPTH`] undo steps.
    pub fn new(width: u32, height: u32) -> Result<Self> {
        Self::with_history_depth(width, height, DEFAULT_HISTORY_DEPTH)
    }

    /// Like [`Editor::new`] with at most `depth` undo steps.
    pub fn with_history_depth(width: u32, height: u32, depth: usize) -> Result<Self> {
        check_document_size(width, height)?;
        Ok(Editor {
            doc: Document::new(width, height),
            history: History::new(depth),
            next_id: 1,
        })
    }

    /// The current document (read-only; change it through [`Editor::update`]).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Whether there is a change to undo.
    pub fn can_undo(&self) -> bool {
        self.history.can_undo()
    }

    /// Whether there is an undone change to redo.
    pub fn can_redo(&self) -> bool {
        self.history.can_redo()
    }

    /// The composite of the visible layers at document size, straight alpha.
    pub fn composite(&self) -> RgbaImage {
        self.doc.composite()
    }

    /// See [`Document::topmost_layer_at`].
    pub fn topmost_layer_at(&self, x: f64, y: f64) -> Option<LayerId> {
        self.doc.topmost_layer_at(x, y)
    }

    /// Applies one message. On error the document, selection and history are unchanged.
    /// A message that changes nothing (e.g. setting the current opacity) records no undo step
    /// and returns no effects.
    pub fn update(&mut self, msg: EditorMessage) -> Result<Vec<Effect>> {
        let before = self.doc.clone();
        match msg {
            EditorMessage::Undo => {
                if !self.history.undo(&mut self.doc) {
                    return Ok(Vec::new());
                }
            }
            EditorMessage::Redo => {
                if !self.history.redo(&mut self.doc) {
                    return Ok(Vec::new());
                }
            }
            EditorMessage::Select { id } => {
                if let Some(id) = id {
                    self.doc.require("select", id)?;
                }
                self.doc.selected = id;
                return Ok(if before.selected == id {
                    Vec::new()
                } else {
                    vec![Effect::Selection(id)]
                });
            }
            msg => {
                // Work on a copy (cheap: pixels are shared), so a failing message leaves the
                // document as it was.
                let mut next = self.doc.clone();
                let mut next_id = self.next_id;
                apply(&mut next, &mut next_id, msg)?;
                self.next_id = next_id;
                if next == self.doc {
                    return Ok(Vec::new());
                }
                self.doc = next;
                self.history.record(before.clone());
            }
        }
        Ok(self.effects(&before))
    }

    fn effects(&self, before: &Document) -> Vec<Effect> {
        let mut out = Vec::new();
        if looks_different(before, &self.doc) {
            out.push(Effect::Render);
        }
        if before.layers != self.doc.layers {
            out.push(Effect::LayersPanel);
        }
        if before.selected != self.doc.selected {
            out.push(Effect::Selection(self.doc.selected));
        }
        out.push(Effect::History {
            can_undo: self.can_undo(),
            can_redo: self.can_redo(),
        });
        out
    }
}

/// Refuses a document size the editor and its exporters cannot hold.
fn check_document_size(width: u32, height: u32) -> Result<()> {
    let reason = if width == 0 || height == 0 {
        Some("both sides must be at least 1 pixel")
    } else if width > MAX_DOCUMENT_SIDE || height > MAX_DOCUMENT_SIDE {
        Some("sides must be at most 30000 pixels (the PSD limit)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::DocumentSize {
            width,
            height,
            reason,
        }),
        None => Ok(()),
    }
}

/// Whether anything but layer names differs (names do not reach the canvas).
fn looks_different(a: &Document, b: &Document) -> bool {
    a.width != b.width
        || a.height != b.height
        || a.layers.len() != b.layers.len()
        || a.layers.iter().zip(&b.layers).any(|(x, y)| {
            !Arc::ptr_eq(&x.image, &y.image)
                || x.transform != y.transform
                || x.opacity != y.opacity
                || x.visible != y.visible
                || x.blend != y.blend
        })
}

fn check_image(action: &'static str, l: &NewLayer) -> Result<()> {
    if l.image.width() == 0 || l.image.height() == 0 {
        return Err(Error::EmptyImage {
            action,
            name: l.name.clone(),
            width: l.image.width(),
            height: l.image.height(),
        });
    }
    Ok(())
}

fn new_layer(next_id: &mut u64, l: NewLayer, transform: Transform) -> Layer {
    let id = LayerId(*next_id);
    *next_id += 1;
    Layer {
        id,
        name: l.name,
        image: Arc::new(l.image),
        transform,
        opacity: 1.0,
        visible: true,
        blend: BlendMode::Normal,
    }
}

fn translate(
    doc: &mut Document,
    action: &'static str,
    id: LayerId,
    dx: i32,
    dy: i32,
) -> Result<()> {
    let i = doc.require(action, id)?;
    let t = &mut doc.layers[i].transform;
    match (t.x.checked_add(dx), t.y.checked_add(dy)) {
        (Some(x), Some(y)) => {
            (t.x, t.y) = (x, y);
            Ok(())
        }
        _ => Err(Error::OffsetOverflow {
            action,
            id,
            x: t.x,
            y: t.y,
            dx,
            dy,
        }),
    }
}

/// Applies every message except undo, redo and select to `doc`.
/// Checks every new layer first (so nothing changes on an error), then puts them on top of
/// `doc` at their offsets, unscaled, and selects the last one.
fn push_new_layers(
    doc: &mut Document,
    next_id: &mut u64,
    layers: Vec<NewLayer>,
    what: &'static str,
) -> Result<()> {
    for l in &layers {
        check_image(what, l)?;
    }
    for l in layers {
        let t = Transform {
            x: l.x,
            y: l.y,
            scale: 1.0,
        };
        let layer = new_layer(next_id, l, t);
        doc.selected = Some(layer.id);
        doc.layers.push(layer);
    }
    Ok(())
}

fn apply(doc: &mut Document, next_id: &mut u64, msg: EditorMessage) -> Result<()> {
    match msg {
        EditorMessage::AddLayers { layers } => {
            push_new_layers(doc, next_id, layers, "add layers")?;
        }
        EditorMessage::SetVisibility { id, visible } => {
            let i = doc.require("set visibility", id)?;
            doc.layers[i].visible = visible;
        }
        EditorMessage::SetOpacity { id, opacity } => {
            let i = doc.require("set opacity", id)?;
            if !(0.0..=1.0).contains(&opacity) {
                return Err(Error::InvalidOpacity { id, value: opacity });
            }
            doc.layers[i].opacity = opacity;
        }
        EditorMessage::Rename { id, name } => {
            let i = doc.require("rename", id)?;
            doc.layers[i].name = name;
        }
        EditorMessage::Reorder { from, to } => {
            let len = doc.layers.len();
            for index in [from, to] {
                if index >= len {
                    return Err(Error::IndexOutOfRange {
                        action: "reorder",
                        index,
                        len,
                    });
                }
            }
            let layer = doc.layers.remove(from);
            doc.layers.insert(to, layer);
        }
        EditorMessage::Duplicate { id } => {
            let i = doc.require("duplicate", id)?;
            let mut copy = doc.layers[i].clone();
            copy.id = LayerId(*next_id);
            *next_id += 1;
            copy.name = format!("{} copy", copy.name);
            doc.selected = Some(copy.id);
            doc.layers.insert(i + 1, copy);
        }
        EditorMessage::Delete { id } => {
            let i = doc.require("delete", id)?;
            doc.layers.remove(i);
            if doc.selected == Some(id) {
                doc.selected = doc.layers.get(i.saturating_sub(1)).map(|l| l.id);
            }
        }
        EditorMessage::MergeDown { id } => merge_down(doc, id)?,
        EditorMessage::Move { id, dx, dy } => translate(doc, "move", id, dx, dy)?,
        EditorMessage::Nudge { dx, dy } => {
            let id = doc.selected.ok_or(Error::NoSelection { action: "nudge" })?;
            translate(doc, "nudge", id, dx, dy)?;
        }
        EditorMessage::SetScale { id, scale } => {
            let i = doc.require("scale", id)?;
            if !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
                return Err(Error::InvalidScale { id, value: scale });
            }
            doc.layers[i].transform.scale = scale;
        }
        EditorMessage::SetTransform { id, transform } => {
            let i = doc.require("set transform", id)?;
            if !(MIN_SCALE..=MAX_SCALE).contains(&transform.scale) {
                return Err(Error::InvalidScale {
                    id,
                    value: transform.scale,
                });
            }
            doc.layers[i].transform = transform;
        }
        EditorMessage::ReplaceDocument {
            width,
            height,
            layers,
        } => {
            check_document_size(width, height)?;
            let mut next = Document::new(width, height);
            push_new_layers(&mut next, next_id, layers, "replace the document")?;
            *doc = next;
        }
        EditorMessage::ReplaceWithSublayers { id, layers } => {
            let i = doc.require("replace by sub-layers", id)?;
            if layers.is_empty() {
                return Err(Error::NoSublayers { id });
            }
            for l in &layers {
                check_image("replace by sub-layers", l)?;
            }
            let parent = doc.layers.remove(i);
            let pt = parent.transform;
            let mut subs = Vec::with_capacity(layers.len());
            for l in layers {
                // Sub-layer offsets are in the parent's image pixels; scale them onto the canvas.
                let at = |base: i32, off: i32| {
                    (base as f64 + off as f64 * pt.scale as f64)
                        .round()
                        .clamp(i32::MIN as f64, i32::MAX as f64) as i32
                };
                let t = Transform {
                    x: at(pt.x, l.x),
                    y: at(pt.y, l.y),
                    scale: pt.scale,
                };
                let mut sub = new_layer(next_id, l, t);
                sub.opacity = parent.opacity;
                sub.visible = parent.visible;
                sub.blend = parent.blend;
                subs.push(sub);
            }
            doc.selected = subs.last().map(|l| l.id);
            doc.layers.splice(i..i, subs);
        }
        EditorMessage::Select { .. } | EditorMessage::Undo | EditorMessage::Redo => {
            unreachable!("handled by Editor::update before apply")
        }
    }
    Ok(())
}

fn merge_down(doc: &mut Document, id: LayerId) -> Result<()> {
    let i = doc.require("merge down", id)?;
    if i == 0 {
        return Err(Error::MergeDown {
            id,
            reason: "it is the bottom layer; there is nothing below to merge into",
        });
    }
    let (lower, upper) = (&doc.layers[i - 1], &doc.layers[i]);
    if !lower.visible || !upper.visible {
        return Err(Error::MergeDown {
            id,
            reason: "both it and the layer below must be visible (merging a hidden layer would \
                     either lose it or make it appear); show them first",
        });
    }
    let (a, b) = (lower.bounds(), upper.bounds());
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    let region = Rect {
        x,
        y,
        width: (a.right().max(b.right()) - x as i64) as u32,
        height: (a.bottom().max(b.bottom()) - y as i64) as u32,
    };
    let image = composite_region([lower, upper], region);
    let merged = Layer {
        id: lower.id,
        name: lower.name.clone(),
        image: Arc::new(image),
        transform: Transform { x, y, scale: 1.0 },
        opacity: 1.0,
        visible: true,
        blend: BlendMode::Normal,
    };
    doc.selected = Some(merged.id);
    doc.layers.splice(i - 1..=i, [merged]);
    Ok(())
}
