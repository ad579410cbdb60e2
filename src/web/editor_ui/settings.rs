//! The decompose form (`#settings`): the presets fill it from [`RunSettings`] and every change
//! shows what the run would cost. Running it is the model's side (`web/run.rs`).

use gloo::events::EventListener;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, HtmlInputElement, HtmlSelectElement};

use crate::run_settings::{Preset, RunSettings};

/// Reads the form (invalid fields fall back to the defaults).
pub fn read_form(document: &Document) -> RunSettings {
    let d = RunSettings::default();
    let input = |id: &str| {
        document
            .get_element_by_id(id)
            .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
    };
    let number = |id: &str| {
        input(id)
            .map(|i| i.value_as_number())
            .filter(|v| v.is_finite())
    };
    let resolution = document
        .get_element_by_id("set-resolution")
        .and_then(|e| e.dyn_into::<HtmlSelectElement>().ok())
        .and_then(|s| s.value().parse().ok())
        .unwrap_or(d.resolution);
    RunSettings {
        layers: number("set-layers").map_or(d.layers, |v| v.clamp(1.0, 10.0) as u32),
        resolution,
        steps: number("set-steps").map_or(d.steps, |v| v.clamp(1.0, 1000.0) as u32),
        true_cfg_scale: number("set-cfg").map_or(d.true_cfg_scale, |v| v as f32),
        cfg_normalize: input("set-cfg-normalize").map_or(d.cfg_normalize, |i| i.checked()),
        seed: number("set-seed").map_or(d.seed, |v| v.max(0.0) as u64),
        prompt: input("set-prompt").map(|i| i.value()).unwrap_or_default(),
    }
}

fn write_form(document: &Document, s: &RunSettings) {
    let set = |id: &str, value: &str| {
        if let Some(i) = document
            .get_element_by_id(id)
            .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
        {
            i.set_value(value);
        }
    };
    set("set-layers", &s.layers.to_string());
    set("set-steps", &s.steps.to_string());
    set("set-cfg", &format!("{:.1}", s.true_cfg_scale));
    set("set-seed", &s.seed.to_string());
    if let Some(sel) = document
        .get_element_by_id("set-resolution")
        .and_then(|e| e.dyn_into::<HtmlSelectElement>().ok())
    {
        sel.set_value(&s.resolution.to_string());
    }
    if let Some(i) = document
        .get_element_by_id("set-cfg-normalize")
        .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
    {
        i.set_checked(s.cfg_normalize);
    }
}

fn show_cost(document: &Document) {
    if let Some(p) = document.get_element_by_id("preset-cost") {
        p.set_text_content(Some(&read_form(document).describe_cost()));
    }
}

/// Wires the preset buttons and the cost line.
pub(super) fn wire(document: &Document) -> Result<(), JsValue> {
    let Some(form) = document.get_element_by_id("settings") else {
        return Ok(()); // a page without the form
    };
    for (id, preset) in [
        ("preset-fast", Preset::Fast),
        ("preset-quality", Preset::Quality),
    ] {
        if let Some(button) = document.get_element_by_id(id) {
            let doc = document.clone();
            button.set_attribute(
                "title",
                &RunSettings::default().with_preset(preset).describe_cost(),
            )?;
            EventListener::new(&button, "click", move |_| {
                let next = read_form(&doc).with_preset(preset);
                write_form(&doc, &next);
                show_cost(&doc);
            })
            .forget();
        }
    }
    for event in ["input", "change"] {
        let doc = document.clone();
        EventListener::new(&form, event, move |_| show_cost(&doc)).forget();
    }
    show_cost(document);
    Ok(())
}
