//! The canvas: the core's composite (`Editor::composite`, or the document a drag would leave)
//! drawn at the viewport's zoom and pan, the original for comparison, the selection outline
//! with its corner handles; pointer and wheel input.

use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{PointerEvent, WheelEvent};

use super::{Compare, Drag, EditorUi};
use crate::editor::view::HANDLE_RADIUS as HANDLE_RADIUS_PX;
use crate::editor::view::{drag_corner, handle_at};
use crate::editor::{EditorMessage, Viewport, composite};

/// The canvas element's CSS size.
pub(super) fn view_size(ui: &EditorUi) -> (f64, f64) {
    let c = &ui.el.canvas;
    (
        c.client_width().max(1) as f64,
        c.client_height().max(1) as f64,
    )
}

/// Fits the document into the canvas (never enlarging).
pub(super) fn fit_view(ui: &EditorUi) {
    let (w, h) = view_size(ui);
    let mut st = ui.state.borrow_mut();
    let doc = st.editor.document();
    let (dw, dh) = (doc.width, doc.height);
    // A margin, so the selection handles at the document's edges stay visible.
    const MARGIN: f64 = 16.0;
    let fit = Viewport::fit(
        dw,
        dh,
        (w - 2.0 * MARGIN).max(1.0),
        (h - 2.0 * MARGIN).max(1.0),
    );
    st.view = fit.panned(MARGIN, MARGIN);
}

/// Redraws: refreshes the composite if the document changed, then the view.
pub(super) fn render(ui: &Rc<EditorUi>) {
    if let Err(err) = draw(ui) {
        web_sys::console::error_1(&err);
    }
}

fn draw(ui: &Rc<EditorUi>) -> Result<(), JsValue> {
    let el = &ui.el;
    // 1. The composite, from the core.
    let dirty = std::mem::take(&mut ui.state.borrow_mut().composite_dirty);
    if dirty {
        let image = {
            let st = ui.state.borrow();
            match &st.preview {
                Some(doc) => composite(doc),
                None => st.editor.composite(),
            }
        };
        super::put_image(&el.composite, &el.composite_ctx, &image)?;
    }

    // 2. The backing store follows the element's size and the device pixel ratio.
    let dpr = web_sys::window()
        .map_or(1.0, |w| w.device_pixel_ratio())
        .max(1.0);
    let (cw, ch) = view_size(ui);
    let (bw, bh) = ((cw * dpr).round() as u32, (ch * dpr).round() as u32);
    if el.canvas.width() != bw || el.canvas.height() != bh {
        el.canvas.set_width(bw);
        el.canvas.set_height(bh);
    }
    if ui.state.borrow().fitted {
        fit_view(ui);
    }

    let st = ui.state.borrow();
    let ctx = &el.context;
    let doc = st.preview.as_ref().unwrap_or(st.editor.document());
    let v = st.view;
    ctx.set_transform(1.0, 0.0, 0.0, 1.0, 0.0, 0.0)?;
    ctx.clear_rect(0.0, 0.0, bw as f64, bh as f64);
    el.zoom_level
        .set_text_content(Some(&format!("{:.0}%", v.zoom * 100.0)));
    // The view as drawn, "zoom pan_x pan_y" (view pixels: a document point (x, y) is at
    // (pan_x + x·zoom, pan_y + y·zoom) in the canvas element), for tests and debugging.
    el.canvas
        .set_attribute("data-view", &format!("{} {} {}", v.zoom, v.pan_x, v.pan_y))?;
    if doc.layers.is_empty() {
        return Ok(());
    }
    let (dw, dh) = (doc.width as f64, doc.height as f64);
    let z = v.zoom * dpr;
    ctx.set_transform(z, 0.0, 0.0, z, v.pan_x * dpr, v.pan_y * dpr)?;
    ctx.set_image_smoothing_enabled(v.zoom < 2.0);
    // The document's area, so transparent regions read as "canvas" against the page.
    ctx.set_stroke_style_str("rgba(255,255,255,0.25)");
    ctx.set_line_width(1.0 / z);
    ctx.stroke_rect(0.0, 0.0, dw, dh);
    let original = st.original.as_ref();
    match (st.compare, original) {
        (Compare::Original, Some(orig)) => {
            ctx.draw_image_with_html_canvas_element_and_dw_and_dh(orig, 0.0, 0.0, dw, dh)?;
        }
        (Compare::Split, Some(orig)) => {
            ctx.draw_image_with_html_canvas_element(&el.composite, 0.0, 0.0)?;
            let sx = (dw * st.split).round();
            ctx.save();
            ctx.begin_path();
            ctx.rect(0.0, 0.0, sx, dh);
            ctx.clip();
            ctx.clear_rect(0.0, 0.0, sx, dh);
            ctx.draw_image_with_html_canvas_element_and_dw_and_dh(orig, 0.0, 0.0, dw, dh)?;
            ctx.restore();
            ctx.set_stroke_style_str("#ffcc00");
            ctx.set_line_width(2.0 / z);
            ctx.begin_path();
            ctx.move_to(sx, 0.0);
            ctx.line_to(sx, dh);
            ctx.stroke();
        }
        _ => {
            ctx.draw_image_with_html_canvas_element(&el.composite, 0.0, 0.0)?;
        }
    }

    // 3. Selection outline and handles, in view pixels.
    if st.compare == Compare::Original {
        return Ok(());
    }
    if let Some(layer) = doc.selected.and_then(|id| doc.layer(id)) {
        let b = layer.bounds();
        ctx.set_transform(dpr, 0.0, 0.0, dpr, 0.0, 0.0)?;
        let (x0, y0) = v.to_view(b.x as f64, b.y as f64);
        let (x1, y1) = v.to_view(b.right() as f64, b.bottom() as f64);
        ctx.set_line_width(1.0);
        ctx.set_stroke_style_str("#5b8cff");
        ctx.stroke_rect(x0 + 0.5, y0 + 0.5, x1 - x0 - 1.0, y1 - y0 - 1.0);
        let r = HANDLE_RADIUS_PX;
        for (hx, hy) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1)] {
            ctx.set_fill_style_str("#ffffff");
            ctx.fill_rect(hx - r, hy - r, 2.0 * r, 2.0 * r);
            ctx.stroke_rect(hx - r + 0.5, hy - r + 0.5, 2.0 * r - 1.0, 2.0 * r - 1.0);
        }
    }
    Ok(())
}

/// Pointer, wheel and resize input.
pub(super) fn wire(ui: &Rc<EditorUi>) {
    let canvas = ui.el.canvas.clone();

    let this = ui.clone();
    EventListener::new(&canvas, "pointerdown", move |e| {
        let Some(e) = e.dyn_ref::<PointerEvent>() else {
            return;
        };
        pointer_down(&this, e);
    })
    .forget();

    let this = ui.clone();
    EventListener::new(&canvas, "pointermove", move |e| {
        if let Some(e) = e.dyn_ref::<PointerEvent>() {
            pointer_move(&this, e);
        }
    })
    .forget();

    for name in ["pointerup", "pointercancel"] {
        let this = ui.clone();
        EventListener::new(&canvas, name, move |e| {
            let cancel = e.type_() == "pointercancel";
            pointer_up(&this, cancel);
        })
        .forget();
    }

    let this = ui.clone();
    let opts = EventListenerOptions::enable_prevent_default();
    EventListener::new_with_options(&canvas, "wheel", opts, move |e| {
        let Some(e) = e.dyn_ref::<WheelEvent>() else {
            return;
        };
        e.prevent_default();
        let factor = (-e.delta_y() * 0.0015).exp();
        {
            let mut st = this.state.borrow_mut();
            st.view = st
                .view
                .zoom_about(factor, e.offset_x() as f64, e.offset_y() as f64);
            st.fitted = false;
        }
        this.request_render();
    })
    .forget();

    if let Some(window) = web_sys::window() {
        let this = ui.clone();
        EventListener::new(&window, "resize", move |_| this.request_render()).forget();
    }
}

fn pointer_down(ui: &Rc<EditorUi>, e: &PointerEvent) {
    ui.el.canvas.focus().ok();
    let p = (e.offset_x() as f64, e.offset_y() as f64);
    let (pan, handle, hit) = {
        let st = ui.state.borrow();
        let doc = st.editor.document();
        let pan = e.button() == 1 || st.space || doc.layers.is_empty();
        let handle = doc.selected.and_then(|id| {
            let l = doc.layer(id)?;
            handle_at(&st.view, l.bounds(), p.0, p.1).map(|c| (id, c, l.transform))
        });
        let (dx, dy) = st.view.to_doc(p.0, p.1);
        (pan, handle, doc.topmost_layer_at(dx, dy))
    };
    if e.button() != 0 && e.button() != 1 {
        return;
    }
    let drag = if pan {
        Drag::Pan { last: p }
    } else if let Some((id, corner, from)) = handle {
        Drag::Scale {
            id,
            corner,
            start: p,
            from,
            to: from,
        }
    } else if let Some(id) = hit {
        ui.dispatch(EditorMessage::Select { id: Some(id) });
        Drag::Move {
            id,
            start: p,
            dx: 0,
            dy: 0,
        }
    } else {
        ui.dispatch(EditorMessage::Select { id: None });
        Drag::Pan { last: p }
    };
    ui.el.canvas.set_pointer_capture(e.pointer_id()).ok();
    ui.state.borrow_mut().drag = Some(drag);
}

fn pointer_move(ui: &Rc<EditorUi>, e: &PointerEvent) {
    let p = (e.offset_x() as f64, e.offset_y() as f64);
    let mut st = ui.state.borrow_mut();
    let Some(drag) = st.drag else {
        return;
    };
    let zoom = st.view.zoom;
    match drag {
        Drag::Pan { last } => {
            st.view = st.view.panned(p.0 - last.0, p.1 - last.1);
            st.fitted = false;
            st.drag = Some(Drag::Pan { last: p });
        }
        Drag::Move { id, start, .. } => {
            let dx = ((p.0 - start.0) / zoom).round() as i32;
            let dy = ((p.1 - start.1) / zoom).round() as i32;
            st.drag = Some(Drag::Move { id, start, dx, dy });
            let mut doc = st.editor.document().clone();
            if let Some(i) = doc.index_of(id) {
                let t = &mut doc.layers[i].transform;
                t.x = t.x.saturating_add(dx);
                t.y = t.y.saturating_add(dy);
            }
            st.preview = Some(doc);
            st.composite_dirty = true;
        }
        Drag::Scale {
            id,
            corner,
            start,
            from,
            ..
        } => {
            let mut doc = st.editor.document().clone();
            if let Some(i) = doc.index_of(id) {
                let (w, h) = doc.layers[i].image.dimensions();
                let to = drag_corner(
                    from,
                    w,
                    h,
                    corner,
                    (p.0 - start.0) / zoom,
                    (p.1 - start.1) / zoom,
                );
                doc.layers[i].transform = to;
                st.drag = Some(Drag::Scale {
                    id,
                    corner,
                    start,
                    from,
                    to,
                });
            }
            st.preview = Some(doc);
            st.composite_dirty = true;
        }
    }
    drop(st);
    ui.request_render();
}

fn pointer_up(ui: &Rc<EditorUi>, cancel: bool) {
    let drag = {
        let mut st = ui.state.borrow_mut();
        st.preview = None;
        st.composite_dirty = true;
        st.drag.take()
    };
    if !cancel {
        match drag {
            Some(Drag::Move { id, dx, dy, .. }) if dx != 0 || dy != 0 => {
                ui.dispatch(EditorMessage::Move { id, dx, dy });
            }
            Some(Drag::Scale { id, from, to, .. }) if from != to => {
                ui.dispatch(EditorMessage::SetTransform { id, transform: to });
            }
            _ => {}
        }
    }
    ui.request_render();
}
