//! Keyboard shortcuts. Text fields keep their own keys (their own undo, arrows, Delete);
//! sliders and selects keep their arrows.

use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use wasm_bindgen::JsCast;
use web_sys::{Event, HtmlInputElement, KeyboardEvent};

use super::{Compare, EditorUi};
use crate::editor::EditorMessage;

/// Whether the event comes from a field that edits text (its keys are its own).
pub(super) fn in_text_field(event: &Event) -> bool {
    let Some(target) = event
        .target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
    else {
        return false;
    };
    match target.tag_name().as_str() {
        "TEXTAREA" | "SELECT" => true,
        "INPUT" => {
            let kind = target
                .dyn_ref::<HtmlInputElement>()
                .map(|i| i.type_())
                .unwrap_or_default();
            !matches!(
                kind.as_str(),
                "checkbox" | "range" | "button" | "file" | "radio"
            )
        }
        _ => target.has_attribute("contenteditable"),
    }
}

/// Whether arrow keys belong to the focused control (sliders, selects, text).
fn control_takes_arrows(event: &Event) -> bool {
    in_text_field(event)
        || event
            .target()
            .and_then(|t| t.dyn_into::<HtmlInputElement>().ok())
            .is_some_and(|i| i.type_() == "range")
}

pub(super) fn wire(ui: &Rc<EditorUi>) {
    let document = ui.el.document.clone();
    let this = ui.clone();
    let opts = EventListenerOptions::enable_prevent_default();
    EventListener::new_with_options(&document, "keydown", opts, move |event| {
        let Some(e) = event.dyn_ref::<KeyboardEvent>() else {
            return;
        };
        if handle(&this, event, e) {
            e.prevent_default();
        }
    })
    .forget();
    let this = ui.clone();
    EventListener::new(&document, "keyup", move |event| {
        if let Some(e) = event.dyn_ref::<KeyboardEvent>()
            && e.key() == " "
        {
            this.state.borrow_mut().space = false;
        }
    })
    .forget();
}

/// Runs the shortcut for `e`; returns whether it was one.
fn handle(ui: &Rc<EditorUi>, event: &Event, e: &KeyboardEvent) -> bool {
    if in_text_field(event) {
        return false;
    }
    let key = e.key();
    let command = e.ctrl_key() || e.meta_key();
    if command {
        let msg = match key.to_lowercase().as_str() {
            "z" if e.shift_key() => EditorMessage::Redo,
            "z" => EditorMessage::Undo,
            "y" => EditorMessage::Redo,
            _ => return false,
        };
        ui.dispatch(msg);
        return true;
    }
    let arrows = !control_takes_arrows(event);
    let step = if e.shift_key() { 10 } else { 1 };
    match key.as_str() {
        "Delete" | "Backspace" => {
            ui.delete_selected();
            true
        }
        "ArrowUp" if e.alt_key() => {
            ui.reorder_selected(1);
            true
        }
        "ArrowDown" if e.alt_key() => {
            ui.reorder_selected(-1);
            true
        }
        "ArrowLeft" | "ArrowRight" | "ArrowUp" | "ArrowDown" if arrows => {
            if ui.selected().is_none() {
                return false;
            }
            let (dx, dy) = match key.as_str() {
                "ArrowLeft" => (-step, 0),
                "ArrowRight" => (step, 0),
                "ArrowUp" => (0, -step),
                _ => (0, step),
            };
            ui.dispatch(EditorMessage::Nudge { dx, dy });
            true
        }
        "+" | "=" => {
            ui.zoom_by(1.25);
            true
        }
        "-" => {
            ui.zoom_by(0.8);
            true
        }
        "0" => {
            ui.fit();
            true
        }
        "c" | "C" => {
            let now = ui.state.borrow().compare;
            ui.set_compare(if now == Compare::Off {
                Compare::Original
            } else {
                Compare::Off
            });
            true
        }
        " " if event
            .target()
            .is_some_and(|t| t.dyn_ref::<web_sys::HtmlCanvasElement>().is_some()) =>
        {
            ui.state.borrow_mut().space = true;
            true
        }
        _ => false,
    }
}
