//! The layer editor in the page: DOM events become [`EditorMessage`]s for the headless
//! [`Editor`] (`src/editor/`), and its document is drawn back. No editing logic lives here.
//!
//! - [`mod@self`]: [`EditorUi`] (state, [`EditorUi::dispatch`], effects), [`show_layers`].
//! - [`canvas`]: the composite on the canvas, zoom/pan, compare, selection handles, pointer.
//! - [`panel`]: the layers panel (thumbnails, visibility, opacity, names, drag reorder).
//! - [`files`]: opening (picker, drop, paste) and exporting (Blob downloads).
//! - [`keys`]: keyboard shortcuts.
//! - [`settings`]: the decompose form: presets, cost line, and [`settings::read_form`] for the run.
//!
//! User strings (file and layer names) only ever reach the DOM as text (`textContent`,
//! `value`, attributes), never as markup.

mod canvas;
mod files;
mod keys;
mod panel;
pub mod settings;

use std::cell::RefCell;
use std::rc::Rc;

use gloo::events::EventListener;
use image::RgbaImage;
use wasm_bindgen::{Clamped, JsCast, JsValue};
use web_sys::{
    CanvasRenderingContext2d, Document as DomDocument, Element, HtmlButtonElement,
    HtmlCanvasElement, HtmlInputElement, HtmlSelectElement, ImageData,
};

use super::status::{Tone, set_status};
use crate::editor::{Document, Editor, EditorMessage, Effect, LayerId, NewLayer, Viewport};

/// Called with each image the user opens (e.g. the run panel's `set_image`).
type OnOpen = Box<dyn Fn(&RgbaImage)>;
/// Called with the selected layer (or none) whenever the controls are refreshed.
type OnSelection = Box<dyn Fn(Option<LayerId>)>;

thread_local! {
    static UI: RefCell<Option<Rc<EditorUi>>> = const { RefCell::new(None) };
    static ON_OPEN: RefCell<Option<OnOpen>> = const { RefCell::new(None) };
    static ON_SELECTION: RefCell<Option<OnSelection>> = const { RefCell::new(None) };
}

/// Registers `f` to be told the selected layer after every change (the run panel enables
/// "Decompose layer" by it).
pub fn on_selection(f: impl Fn(Option<LayerId>) + 'static) {
    ON_SELECTION.with(|slot| *slot.borrow_mut() = Some(Box::new(f)));
}

fn mounted() -> Result<Rc<EditorUi>, String> {
    UI.with(|ui| ui.borrow().clone())
        .ok_or_else(|| "the editor is not mounted yet".to_owned())
}

/// The selected layer: its id, name and pixels (its own image, not placed on the canvas).
pub fn selected_layer() -> Option<(LayerId, String, RgbaImage)> {
    let ui = mounted().ok()?;
    let st = ui.state.borrow();
    let doc = st.editor.document();
    let layer = doc.layer(doc.selected?)?;
    Some((layer.id, layer.name.clone(), (*layer.image).clone()))
}

/// Replaces layer `id` by `layers` (bottom to top, offsets in its image's pixels), in place,
/// as one undoable change ([`EditorMessage::ReplaceWithSublayers`]).
pub fn replace_layer(id: LayerId, layers: Vec<NewLayer>) -> Result<(), String> {
    let ui = mounted()?;
    let result = ui
        .state
        .borrow_mut()
        .editor
        .update(EditorMessage::ReplaceWithSublayers { id, layers });
    match result {
        Ok(effects) => {
            ui.apply_effects(&effects);
            Ok(())
        }
        Err(err) => Err(capitalised(&err.to_string())),
    }
}

/// Registers `f` to be called with every image the user opens (picker, drop, paste), after it
/// became the document: the model run takes its input from here.
pub fn on_image_opened(f: impl Fn(&RgbaImage) + 'static) {
    ON_OPEN.with(|slot| *slot.borrow_mut() = Some(Box::new(f)));
}

pub(crate) fn notify_opened(image: &RgbaImage) {
    ON_OPEN.with(|slot| {
        if let Some(f) = slot.borrow().as_ref() {
            f(image);
        }
    });
}

/// Replaces the document by `layers` (bottom to top; name, pixels, offset), as one undoable
/// change, e.g. a decomposition result. The canvas is the union of the layers' extents from
/// (0, 0). The original image kept for comparison stays as it is.
pub fn show_layers(layers: Vec<NewLayer>) -> Result<(), String> {
    let ui = mounted()?;
    let width = layers
        .iter()
        .map(|l| l.x.max(0) as u64 + l.image.width() as u64)
        .max()
        .unwrap_or(1)
        .clamp(1, u32::MAX as u64) as u32;
    let height = layers
        .iter()
        .map(|l| l.y.max(0) as u64 + l.image.height() as u64)
        .max()
        .unwrap_or(1)
        .clamp(1, u32::MAX as u64) as u32;
    ui.replace_document(width, height, layers)
        .map_err(|e| super::js_error_text(&e))
}

/// The page's editor elements (ids from `www/index.html`).
pub(crate) struct Elements {
    pub document: DomDocument,
    pub canvas_area: Element,
    pub canvas: HtmlCanvasElement,
    pub context: CanvasRenderingContext2d,
    pub composite: HtmlCanvasElement,
    pub composite_ctx: CanvasRenderingContext2d,
    pub drop_hint: Element,
    pub layer_list: Element,
    pub layers_empty: Element,
    pub file_input: HtmlInputElement,
    pub undo: HtmlButtonElement,
    pub redo: HtmlButtonElement,
    pub zoom_in: HtmlButtonElement,
    pub zoom_out: HtmlButtonElement,
    pub zoom_fit: HtmlButtonElement,
    pub zoom_level: Element,
    pub compare: HtmlSelectElement,
    pub split: HtmlInputElement,
    pub layer_up: HtmlButtonElement,
    pub layer_down: HtmlButtonElement,
    pub layer_duplicate: HtmlButtonElement,
    pub layer_merge: HtmlButtonElement,
    pub layer_delete: HtmlButtonElement,
    pub export_buttons: Vec<(HtmlButtonElement, files::ExportKind)>,
}

/// How the original is compared with the edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compare {
    /// Only the edit.
    Off,
    /// Only the original.
    Original,
    /// Original left of the split line, edit right of it.
    Split,
}

/// A pointer drag in progress on the canvas.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Drag {
    /// Moving a layer; `dx, dy` in document pixels so far.
    Move {
        id: LayerId,
        start: (f64, f64),
        dx: i32,
        dy: i32,
    },
    /// Scaling a layer by a corner handle.
    Scale {
        id: LayerId,
        corner: crate::editor::Corner,
        start: (f64, f64),
        from: crate::editor::Transform,
        to: crate::editor::Transform,
    },
    /// Panning the view.
    Pan { last: (f64, f64) },
}

/// Mutable UI state. Borrowed only briefly: never across DOM calls that fire events.
pub(crate) struct State {
    pub editor: Editor,
    /// The opened file's pixels, drawn for comparison.
    pub original: Option<HtmlCanvasElement>,
    /// Download name stem (the opened file's name without extension).
    pub title: String,
    pub view: Viewport,
    /// Whether the view follows the window (until the user zooms or pans).
    pub fitted: bool,
    pub compare: Compare,
    /// Split position, 0..=1 of the document width showing the original.
    pub split: f64,
    pub drag: Option<Drag>,
    /// The document as a drag would leave it (drawn, not yet committed).
    pub preview: Option<Document>,
    pub composite_dirty: bool,
    pub frame_pending: bool,
    /// Space held: drags pan.
    pub space: bool,
    /// Stack index of the layer being dragged in the panel.
    pub panel_drag: Option<usize>,
}

/// The mounted editor.
pub(crate) struct EditorUi {
    pub el: Elements,
    pub state: RefCell<State>,
    /// Listeners of the current layers-panel rows (replaced on every rebuild).
    pub row_listeners: RefCell<Vec<EventListener>>,
}

impl EditorUi {
    /// Finds the elements, wires every control, and registers the UI for [`show_layers`].
    pub fn mount() -> Result<Rc<Self>, JsValue> {
        let document = web_sys::window()
            .and_then(|w| w.document())
            .ok_or("no document")?;
        let by_id = |id: &str| {
            document.get_element_by_id(id).ok_or_else(|| {
                JsValue::from_str(&format!("element #{id} is missing from the page"))
            })
        };
        let button =
            |id: &str| -> Result<HtmlButtonElement, JsValue> { Ok(by_id(id)?.dyn_into()?) };
        let canvas: HtmlCanvasElement = by_id("canvas")?.dyn_into()?;
        let context = context_2d(&canvas)?;
        let composite: HtmlCanvasElement = by_id("composite")?.dyn_into()?;
        let composite_ctx = context_2d(&composite)?;
        use files::ExportKind::*;
        let export_buttons = vec![
            (button("export-composite")?, Composite),
            (button("export-layer")?, SelectedLayer),
            (button("export-zip")?, Zip),
            (button("export-psd")?, Psd),
            (button("export-ora")?, Ora),
        ];
        let el = Elements {
            canvas_area: by_id("canvas-area")?,
            drop_hint: by_id("drop-hint")?,
            layer_list: by_id("layer-list")?,
            layers_empty: by_id("layers-empty")?,
            file_input: by_id("file-input")?.dyn_into()?,
            undo: button("undo")?,
            redo: button("redo")?,
            zoom_in: button("zoom-in")?,
            zoom_out: button("zoom-out")?,
            zoom_fit: button("zoom-fit")?,
            zoom_level: by_id("zoom-level")?,
            compare: by_id("compare")?.dyn_into()?,
            split: by_id("split")?.dyn_into()?,
            layer_up: button("layer-up")?,
            layer_down: button("layer-down")?,
            layer_duplicate: button("layer-duplicate")?,
            layer_merge: button("layer-merge")?,
            layer_delete: button("layer-delete")?,
            export_buttons,
            document,
            canvas,
            context,
            composite,
            composite_ctx,
        };
        let editor = Editor::new(1, 1).map_err(|e| JsValue::from_str(&e.to_string()))?;
        let ui = Rc::new(EditorUi {
            el,
            state: RefCell::new(State {
                editor,
                original: None,
                title: "layers".into(),
                view: Viewport::default(),
                fitted: true,
                compare: Compare::Off,
                split: 0.5,
                drag: None,
                preview: None,
                composite_dirty: true,
                frame_pending: false,
                space: false,
                panel_drag: None,
            }),
            row_listeners: RefCell::new(Vec::new()),
        });
        files::wire(&ui);
        canvas::wire(&ui);
        keys::wire(&ui);
        panel::wire(&ui);
        settings::wire(&ui.el.document)?;
        ui.wire_toolbar();
        ui.refresh_all();
        UI.with(|slot| *slot.borrow_mut() = Some(ui.clone()));
        Ok(ui)
    }

    fn wire_toolbar(self: &Rc<Self>) {
        type Action = Box<dyn Fn(&Rc<EditorUi>)>;
        let on = |b: &HtmlButtonElement, f: Action| {
            let ui = self.clone();
            EventListener::new(b, "click", move |_| f(&ui)).forget();
        };
        on(
            &self.el.undo,
            Box::new(|ui| {
                ui.dispatch(EditorMessage::Undo);
            }),
        );
        on(
            &self.el.redo,
            Box::new(|ui| {
                ui.dispatch(EditorMessage::Redo);
            }),
        );
        on(&self.el.layer_up, Box::new(|ui| ui.reorder_selected(1)));
        on(&self.el.layer_down, Box::new(|ui| ui.reorder_selected(-1)));
        on(
            &self.el.layer_duplicate,
            Box::new(|ui| {
                if let Some(id) = ui.selected() {
                    ui.dispatch(EditorMessage::Duplicate { id });
                }
            }),
        );
        on(
            &self.el.layer_merge,
            Box::new(|ui| {
                if let Some(id) = ui.selected() {
                    ui.dispatch(EditorMessage::MergeDown { id });
                }
            }),
        );
        on(&self.el.layer_delete, Box::new(|ui| ui.delete_selected()));
        on(&self.el.zoom_in, Box::new(|ui| ui.zoom_by(1.25)));
        on(&self.el.zoom_out, Box::new(|ui| ui.zoom_by(0.8)));
        on(&self.el.zoom_fit, Box::new(|ui| ui.fit()));
        let ui = self.clone();
        EventListener::new(&self.el.compare, "change", move |_| {
            let mode = match ui.el.compare.value().as_str() {
                "original" => Compare::Original,
                "split" => Compare::Split,
                _ => Compare::Off,
            };
            ui.set_compare(mode);
        })
        .forget();
        let ui = self.clone();
        EventListener::new(&self.el.split, "input", move |_| {
            let v = ui.el.split.value_as_number();
            if v.is_finite() {
                ui.state.borrow_mut().split = (v / 100.0).clamp(0.0, 1.0);
                ui.request_render();
            }
        })
        .forget();
    }

    /// Applies one message; reports a refusal in the status line. Returns whether it applied.
    pub fn dispatch(self: &Rc<Self>, msg: EditorMessage) -> bool {
        let result = self.state.borrow_mut().editor.update(msg);
        match result {
            Ok(effects) => {
                self.apply_effects(&effects);
                true
            }
            Err(err) => {
                set_status(&capitalised(&err.to_string()), Tone::Error);
                false
            }
        }
    }

    fn apply_effects(self: &Rc<Self>, effects: &[Effect]) {
        let mut panel = false;
        for fx in effects {
            match fx {
                Effect::Render => {
                    self.state.borrow_mut().composite_dirty = true;
                    self.request_render();
                }
                Effect::LayersPanel => panel = true,
                Effect::Selection(_) => {
                    self.request_render();
                }
                Effect::History { .. } => {}
            }
        }
        if panel {
            panel::rebuild(self);
        } else {
            panel::mark_selection(self);
        }
        self.refresh_controls();
    }

    /// Replaces the document (open, or a decomposition result): one undo step; the view fits.
    pub fn replace_document(
        self: &Rc<Self>,
        width: u32,
        height: u32,
        layers: Vec<NewLayer>,
    ) -> Result<(), JsValue> {
        if self.dispatch(EditorMessage::ReplaceDocument {
            width,
            height,
            layers,
        }) {
            self.fit();
            Ok(())
        } else {
            Err(JsValue::from_str(
                "the document was not replaced (see the status line)",
            ))
        }
    }

    pub fn selected(&self) -> Option<LayerId> {
        self.state.borrow().editor.document().selected
    }

    pub fn delete_selected(self: &Rc<Self>) {
        if let Some(id) = self.selected() {
            self.dispatch(EditorMessage::Delete { id });
        }
    }

    /// Moves the selected layer `delta` places up (+) or down (-) the stack.
    pub fn reorder_selected(self: &Rc<Self>, delta: i64) {
        let target = {
            let st = self.state.borrow();
            let doc = st.editor.document();
            doc.selected
                .and_then(|id| doc.index_of(id))
                .and_then(|from| {
                    let to = from as i64 + delta;
                    (0..doc.layers.len() as i64)
                        .contains(&to)
                        .then_some((from, to as usize))
                })
        };
        if let Some((from, to)) = target {
            self.dispatch(EditorMessage::Reorder { from, to });
        }
    }

    pub fn set_compare(self: &Rc<Self>, mode: Compare) {
        self.state.borrow_mut().compare = mode;
        self.el.compare.set_value(match mode {
            Compare::Off => "off",
            Compare::Original => "original",
            Compare::Split => "split",
        });
        self.el.split.set_hidden(mode != Compare::Split);
        self.request_render();
    }

    pub fn zoom_by(self: &Rc<Self>, factor: f64) {
        let (w, h) = canvas::view_size(self);
        {
            let mut st = self.state.borrow_mut();
            st.view = st.view.zoom_about(factor, w / 2.0, h / 2.0);
            st.fitted = false;
        }
        self.request_render();
    }

    pub fn fit(self: &Rc<Self>) {
        {
            let mut st = self.state.borrow_mut();
            st.fitted = true;
        }
        canvas::fit_view(self);
        self.request_render();
    }

    /// Enables and disables controls by what the document allows.
    pub fn refresh_controls(&self) {
        let st = self.state.borrow();
        let doc = st.editor.document();
        let has_layers = !doc.layers.is_empty();
        let sel_index = doc.selected.and_then(|id| doc.index_of(id));
        self.el.undo.set_disabled(!st.editor.can_undo());
        self.el.redo.set_disabled(!st.editor.can_redo());
        let none = sel_index.is_none();
        self.el.layer_duplicate.set_disabled(none);
        self.el.layer_delete.set_disabled(none);
        self.el
            .layer_up
            .set_disabled(sel_index.is_none_or(|i| i + 1 >= doc.layers.len()));
        self.el
            .layer_down
            .set_disabled(sel_index.is_none_or(|i| i == 0));
        self.el
            .layer_merge
            .set_disabled(sel_index.is_none_or(|i| i == 0));
        for (button, kind) in &self.el.export_buttons {
            let needs_selection = matches!(kind, files::ExportKind::SelectedLayer);
            button.set_disabled(!has_layers || (needs_selection && none));
        }
        self.el
            .drop_hint
            .toggle_attribute_with_force("hidden", has_layers)
            .ok();
        self.el
            .layers_empty
            .toggle_attribute_with_force("hidden", has_layers)
            .ok();
        if let Some(body) = self.el.document.body() {
            body.set_attribute("data-layers", &doc.layers.len().to_string())
                .ok();
        }
        let selected = sel_index.map(|i| doc.layers[i].id);
        drop(st);
        ON_SELECTION.with(|slot| {
            if let Some(f) = slot.borrow().as_ref() {
                f(selected);
            }
        });
    }

    fn refresh_all(self: &Rc<Self>) {
        panel::rebuild(self);
        self.refresh_controls();
        self.request_render();
    }

    /// Schedules one redraw on the next animation frame.
    pub fn request_render(self: &Rc<Self>) {
        {
            let mut st = self.state.borrow_mut();
            if st.frame_pending {
                return;
            }
            st.frame_pending = true;
        }
        let ui = self.clone();
        let cb = wasm_bindgen::closure::Closure::once_into_js(move || {
            ui.state.borrow_mut().frame_pending = false;
            canvas::render(&ui);
        });
        if let Some(w) = web_sys::window() {
            w.request_animation_frame(cb.unchecked_ref()).ok();
        }
    }
}

/// The 2D context of a canvas.
pub(crate) fn context_2d(canvas: &HtmlCanvasElement) -> Result<CanvasRenderingContext2d, JsValue> {
    Ok(canvas
        .get_context("2d")?
        .ok_or("the canvas has no 2D context")?
        .dyn_into()?)
}

/// Puts `image` into `canvas` at its own size.
pub(crate) fn put_image(
    canvas: &HtmlCanvasElement,
    ctx: &CanvasRenderingContext2d,
    image: &RgbaImage,
) -> Result<(), JsValue> {
    if canvas.width() != image.width() || canvas.height() != image.height() {
        canvas.set_width(image.width());
        canvas.set_height(image.height());
    }
    let data = ImageData::new_with_u8_clamped_array_and_sh(
        Clamped(image.as_raw()),
        image.width(),
        image.height(),
    )?;
    ctx.put_image_data(&data, 0.0, 0.0)
}

/// An offscreen canvas holding `image`.
pub(crate) fn canvas_of(
    document: &DomDocument,
    image: &RgbaImage,
) -> Result<HtmlCanvasElement, JsValue> {
    let canvas: HtmlCanvasElement = document.create_element("canvas")?.dyn_into()?;
    let ctx = context_2d(&canvas)?;
    put_image(&canvas, &ctx, image)?;
    Ok(canvas)
}

/// "could not …" → "Could not …".
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
