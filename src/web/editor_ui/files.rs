//! Files in and out: the file picker, drag and drop, paste (each opened image becomes a
//! one-layer document, the original kept for comparison), and exports downloaded through a
//! Blob and an object URL under a sanitized name.

use std::rc::Rc;

use gloo::events::{EventListener, EventListenerOptions};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Blob, BlobPropertyBag, ClipboardEvent, DragEvent, HtmlAnchorElement, Url};

use super::{EditorUi, canvas_of};
use crate::editor::{ExportFormat, NewLayer, export};
use crate::image_io::open_image;
use crate::web::status::{Tone, set_status};

/// What an export button produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExportKind {
    Composite,
    SelectedLayer,
    Zip,
    Psd,
    Ora,
}

pub(super) fn wire(ui: &Rc<EditorUi>) {
    // The picker.
    let this = ui.clone();
    let input = ui.el.file_input.clone();
    EventListener::new(&ui.el.file_input, "change", move |_| {
        if let Some(file) = input.files().and_then(|files| files.get(0)) {
            open_file(&this, file);
        }
        input.set_value(""); // choosing the same file again fires `change` again
    })
    .forget();

    // Drag and drop onto the canvas area (files only; the layers panel has its own drops).
    let area = ui.el.canvas_area.clone();
    let prevent = EventListenerOptions::enable_prevent_default();
    for name in ["dragenter", "dragover"] {
        let area2 = area.clone();
        EventListener::new_with_options(&area, name, prevent, move |event| {
            event.prevent_default();
            area2.class_list().add_1("dragover").ok();
        })
        .forget();
    }
    let area2 = area.clone();
    EventListener::new(&area, "dragleave", move |_| {
        area2.class_list().remove_1("dragover").ok();
    })
    .forget();
    let this = ui.clone();
    EventListener::new_with_options(&area, "drop", prevent, move |event| {
        event.prevent_default();
        this.el.canvas_area.class_list().remove_1("dragover").ok();
        let file = event
            .dyn_ref::<DragEvent>()
            .and_then(|e| e.data_transfer())
            .and_then(|dt| dt.files())
            .and_then(|files| files.get(0));
        match file {
            Some(file) => open_file(&this, file),
            None => set_status("Nothing to open: drop an image file.", Tone::Error),
        }
    })
    .forget();

    // Paste anywhere except into a text field.
    let this = ui.clone();
    EventListener::new(&ui.el.document, "paste", move |event| {
        if super::keys::in_text_field(event) {
            return;
        }
        let Some(e) = event.dyn_ref::<ClipboardEvent>() else {
            return;
        };
        let file = e
            .clipboard_data()
            .and_then(|dt| dt.files())
            .and_then(|f| f.get(0));
        match file {
            Some(file) => {
                event.prevent_default();
                open_file(&this, file);
            }
            None => set_status(
                "The clipboard holds no image to paste (copy an image, then press Ctrl+V).",
                Tone::Error,
            ),
        }
    })
    .forget();

    for (button, kind) in &ui.el.export_buttons {
        let this = ui.clone();
        let kind = *kind;
        EventListener::new(button, "click", move |_| download_export(&this, kind)).forget();
    }
}

/// Reads and opens a file; the current document stays when it cannot be opened.
pub(super) fn open_file(ui: &Rc<EditorUi>, file: web_sys::File) {
    let ui = ui.clone();
    let name = file.name();
    set_status(&format!("Opening \"{name}\"…"), Tone::Info);
    wasm_bindgen_futures::spawn_local(async move {
        let file = gloo::file::File::from(file);
        let bytes = match gloo::file::futures::read_as_bytes(&file).await {
            Ok(bytes) => bytes,
            Err(err) => {
                return set_status(&format!("Could not read \"{name}\": {err}"), Tone::Error);
            }
        };
        open_bytes(&ui, &name, &bytes);
    });
}

fn open_bytes(ui: &Rc<EditorUi>, name: &str, bytes: &[u8]) {
    let opened = match open_image(name, bytes) {
        Ok(opened) => opened,
        Err(err) => {
            let reason = match err {
                crate::Error::Image { reason, .. } => reason,
                other => other.to_string(),
            };
            return set_status(&format!("Could not open \"{name}\": {reason}"), Tone::Error);
        }
    };
    let (w, h) = opened.image.dimensions();
    let original = match canvas_of(&ui.el.document, &opened.image) {
        Ok(c) => c,
        Err(err) => {
            return set_status(
                &format!(
                    "Could not draw \"{name}\": {}",
                    crate::web::js_error_text(&err)
                ),
                Tone::Error,
            );
        }
    };
    let layer = NewLayer::new(name, opened.image.clone());
    if ui.replace_document(w, h, vec![layer]).is_err() {
        return; // the status line says why
    }
    super::notify_opened(&opened.image);
    {
        let mut st = ui.state.borrow_mut();
        st.original = Some(original);
        st.title = stem_of(name);
    }
    let mut text = format!("Opened \"{name}\" ({w}×{h}).");
    for notice in &opened.notices {
        text.push(' ');
        text.push_str(notice);
    }
    let tone = if opened.notices.is_empty() {
        Tone::Ok
    } else {
        Tone::Warn
    };
    set_status(&text, tone);
}

/// `"photo.final.png"` → `"photo.final"`.
fn stem_of(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_owned(),
        _ => name.to_owned(),
    }
}

fn download_export(ui: &Rc<EditorUi>, kind: ExportKind) {
    let (format, bytes, file_name) = {
        let st = ui.state.borrow();
        let doc = st.editor.document();
        let format = match kind {
            ExportKind::Composite => ExportFormat::CompositePng,
            ExportKind::SelectedLayer => match doc.selected {
                Some(id) => ExportFormat::LayerPng(id),
                None => return set_status("Select a layer to export it.", Tone::Error),
            },
            ExportKind::Zip => ExportFormat::Zip,
            ExportKind::Psd => ExportFormat::Psd,
            ExportKind::Ora => ExportFormat::Ora,
        };
        let file_name = format.file_name(doc, &st.title);
        (format, export(doc, format), file_name)
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(err) => return set_status(&format!("Export failed: {err}"), Tone::Error),
    };
    match download(&bytes, format.mime_type(), &file_name) {
        Ok(()) => set_status(
            &format!(
                "Saved \"{file_name}\" ({} KiB).",
                bytes.len().div_ceil(1024)
            ),
            Tone::Ok,
        ),
        Err(err) => set_status(
            &format!(
                "Could not download \"{file_name}\": {}",
                crate::web::js_error_text(&err)
            ),
            Tone::Error,
        ),
    }
}

/// Offers `bytes` as a download named `file_name`.
fn download(bytes: &[u8], mime: &str, file_name: &str) -> Result<(), JsValue> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = BlobPropertyBag::new();
    options.set_type(mime);
    let blob = Blob::new_with_u8_array_sequence_and_options(&parts, &options)?;
    let url = Url::create_object_url_with_blob(&blob)?;
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let a: HtmlAnchorElement = document.create_element("a")?.dyn_into()?;
    a.set_href(&url);
    a.set_download(file_name);
    a.set_hidden(true);
    let body = document.body().ok_or("no body")?;
    body.append_child(&a)?;
    a.click();
    body.remove_child(&a)?;
    // Revoke later: the download may still be reading the Blob.
    gloo::timers::callback::Timeout::new(60_000, move || {
        Url::revoke_object_url(&url).ok();
    })
    .forget();
    Ok(())
}
