//! The layers panel: one row per layer, top of the stack first, each with a thumbnail, a
//! visibility checkbox, an editable name, an opacity slider and a drag grip for reordering
//! (keyboard: the Up/Down buttons or Alt+Up/Down). Focusing or clicking a row selects its layer.

use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{DragEvent, Element, HtmlCanvasElement, HtmlInputElement};

use super::{EditorUi, canvas_of, context_2d};
use crate::editor::{EditorMessage, LayerId};

/// Thumbnail side in CSS pixels.
const THUMB: u32 = 40;

/// Panel-wide listeners (the rows' own listeners are replaced on each rebuild).
pub(super) fn wire(ui: &Rc<EditorUi>) {
    let list = ui.el.layer_list.clone();
    let opts = EventListenerOptions::enable_prevent_default();
    let this = ui.clone();
    EventListener::new_with_options(&list, "dragover", opts, move |e| {
        if this.state.borrow().panel_drag.is_some() {
            e.prevent_default();
            if let Some(dt) = e.dyn_ref::<DragEvent>().and_then(|e| e.data_transfer()) {
                dt.set_drop_effect("move");
            }
        }
    })
    .forget();
    let this = ui.clone();
    EventListener::new_with_options(&list, "drop", opts, move |e| {
        let Some(from) = this.state.borrow_mut().panel_drag.take() else {
            return;
        };
        e.prevent_default();
        let row = e
            .target()
            .and_then(|t| t.dyn_into::<Element>().ok())
            .and_then(|t| t.closest("li[data-index]").ok().flatten());
        let len = this.state.borrow().editor.document().layers.len();
        let to = match row.and_then(|r| r.get_attribute("data-index")) {
            Some(i) => i.parse::<usize>().unwrap_or(from),
            // Dropped below the last row: the bottom of the stack.
            None => 0,
        };
        if to != from && to < len {
            this.dispatch(EditorMessage::Reorder { from, to });
        }
    })
    .forget();
}

/// Rebuilds every row from the document, keeping keyboard focus on the same control.
pub(super) fn rebuild(ui: &Rc<EditorUi>) {
    if let Err(err) = try_rebuild(ui) {
        web_sys::console::error_1(&err);
    }
}

fn try_rebuild(ui: &Rc<EditorUi>) -> Result<(), JsValue> {
    let doc = ui.state.borrow().editor.document().clone();
    let el = &ui.el;
    // Which control had focus, to give it back after the rebuild.
    let focus = el
        .document
        .active_element()
        .filter(|a| el.layer_list.contains(Some(a)))
        .and_then(|a| {
            let row = a.closest("li[data-id]").ok().flatten()?;
            Some((row.get_attribute("data-id")?, a.class_name()))
        });
    ui.row_listeners.borrow_mut().clear();
    el.layer_list.set_text_content(None);
    let mut listeners = Vec::new();
    for (index, layer) in doc.layers.iter().enumerate().rev() {
        let id = layer.id;
        let li = el.document.create_element("li")?;
        li.set_attribute("data-id", &id.to_string())?;
        li.set_attribute("data-index", &index.to_string())?;
        li.set_class_name("layer");

        let grip = el.document.create_element("span")?;
        grip.set_class_name("grip");
        grip.set_text_content(Some("⠿"));
        grip.set_attribute("aria-hidden", "true")?;
        grip.set_attribute("title", "Drag to reorder")?;
        // Only the grip drags, so text in the name field can still be selected with the mouse.
        grip.set_attribute("draggable", "true")?;

        let visible: HtmlInputElement = el.document.create_element("input")?.dyn_into()?;
        visible.set_type("checkbox");
        visible.set_class_name("layer-visible");
        visible.set_checked(layer.visible);
        visible.set_attribute("aria-label", &format!("Show layer {}", layer.name))?;

        let thumb = thumbnail(ui, &layer.image)?;

        let name: HtmlInputElement = el.document.create_element("input")?.dyn_into()?;
        name.set_type("text");
        name.set_class_name("layer-name");
        name.set_value(&layer.name);
        name.set_attribute("aria-label", "Layer name")?;
        name.set_attribute("spellcheck", "false")?;

        let size = el.document.create_element("span")?;
        size.set_class_name("layer-size muted");
        let b = layer.bounds();
        size.set_text_content(Some(&format!("{}×{}", b.width, b.height)));

        let opacity: HtmlInputElement = el.document.create_element("input")?.dyn_into()?;
        opacity.set_type("range");
        opacity.set_class_name("layer-opacity");
        opacity.set_min("0");
        opacity.set_max("100");
        opacity.set_value(&format!("{:.0}", layer.opacity * 100.0));
        opacity.set_attribute(
            "aria-label",
            &format!("Opacity of {} (percent)", layer.name),
        )?;
        let shown = el.document.create_element("span")?;
        shown.set_class_name("opacity-value muted");
        shown.set_text_content(Some(&format!("{:.0}%", layer.opacity * 100.0)));
        shown.set_attribute("aria-hidden", "true")?;

        let top = el.document.create_element("div")?;
        top.set_class_name("row-top");
        top.append_child(&grip)?;
        top.append_child(&visible)?;
        top.append_child(&thumb)?;
        top.append_child(&name)?;
        top.append_child(&size)?;
        let bottom = el.document.create_element("div")?;
        bottom.set_class_name("row-bottom");
        bottom.append_child(&opacity)?;
        bottom.append_child(&shown)?;
        li.append_child(&top)?;
        li.append_child(&bottom)?;
        el.layer_list.append_child(&li)?;

        // Selecting: click or keyboard focus anywhere in the row.
        for event in ["focusin", "pointerdown"] {
            let this = ui.clone();
            listeners.push(EventListener::new(&li, event, move |_| {
                if this.selected() != Some(id) {
                    this.dispatch(EditorMessage::Select { id: Some(id) });
                }
            }));
        }
        let this = ui.clone();
        let input = visible.clone();
        listeners.push(EventListener::new(&visible, "change", move |_| {
            this.dispatch(EditorMessage::SetVisibility {
                id,
                visible: input.checked(),
            });
        }));
        let this = ui.clone();
        let input = name.clone();
        listeners.push(EventListener::new(&name, "change", move |_| {
            this.dispatch(EditorMessage::Rename {
                id,
                name: input.value(),
            });
        }));
        let input = name.clone();
        listeners.push(EventListener::new(&name, "keydown", move |e| {
            if e.dyn_ref::<web_sys::KeyboardEvent>()
                .is_some_and(|k| k.key() == "Enter")
            {
                input.blur().ok(); // commits through `change`
            }
        }));
        let input = opacity.clone();
        let label = shown.clone();
        listeners.push(EventListener::new(&opacity, "input", move |_| {
            label.set_text_content(Some(&format!("{}%", input.value())));
        }));
        let this = ui.clone();
        let input = opacity.clone();
        listeners.push(EventListener::new(&opacity, "change", move |_| {
            let v = input.value_as_number();
            if v.is_finite() {
                this.dispatch(EditorMessage::SetOpacity {
                    id,
                    opacity: (v / 100.0).clamp(0.0, 1.0) as f32,
                });
            }
        }));
        let this = ui.clone();
        listeners.push(EventListener::new(&grip, "dragstart", move |e| {
            this.state.borrow_mut().panel_drag = Some(index);
            if let Some(dt) = e.dyn_ref::<DragEvent>().and_then(|d| d.data_transfer()) {
                dt.set_effect_allowed("move");
                dt.set_data("text/plain", &format!("layer {id}")).ok();
            }
        }));
        let this = ui.clone();
        listeners.push(EventListener::new(&grip, "dragend", move |_| {
            this.state.borrow_mut().panel_drag = None;
        }));
    }
    *ui.row_listeners.borrow_mut() = listeners;
    mark_selection(ui);
    if let Some((id, class)) = focus {
        let selector = format!(
            "li[data-id=\"{id}\"] .{}",
            class.split(' ').next().unwrap_or("")
        );
        if let Ok(Some(target)) = el.layer_list.query_selector(&selector)
            && let Some(h) = target.dyn_ref::<web_sys::HtmlElement>()
        {
            h.focus().ok();
        }
    }
    Ok(())
}

/// Marks the selected row (class and `aria-current`).
pub(super) fn mark_selection(ui: &EditorUi) {
    let selected: Option<LayerId> = ui.selected();
    let rows = ui.el.layer_list.children();
    for i in 0..rows.length() {
        let Some(row) = rows.item(i) else { continue };
        let is = selected.is_some_and(|id| row.get_attribute("data-id") == Some(id.to_string()));
        row.class_list().toggle_with_force("selected", is).ok();
        if is {
            row.set_attribute("aria-current", "true").ok();
        } else {
            row.remove_attribute("aria-current").ok();
        }
    }
}

/// A `THUMB`-sized canvas with `image` fitted into it.
fn thumbnail(ui: &EditorUi, image: &image::RgbaImage) -> Result<HtmlCanvasElement, JsValue> {
    let dpr = web_sys::window()
        .map_or(1.0, |w| w.device_pixel_ratio())
        .max(1.0);
    let side = (THUMB as f64 * dpr).round() as u32;
    let thumb: HtmlCanvasElement = ui.el.document.create_element("canvas")?.dyn_into()?;
    thumb.set_width(side);
    thumb.set_height(side);
    thumb.set_class_name("thumb");
    thumb.set_attribute("aria-hidden", "true")?;
    let ctx = context_2d(&thumb)?;
    let (w, h) = (image.width() as f64, image.height() as f64);
    let k = (side as f64 / w).min(side as f64 / h);
    let (tw, th) = (w * k, h * k);
    let src = canvas_of(&ui.el.document, image)?;
    ctx.draw_image_with_html_canvas_element_and_dw_and_dh(
        &src,
        (side as f64 - tw) / 2.0,
        (side as f64 - th) / 2.0,
        tw,
        th,
    )?;
    Ok(thumb)
}
