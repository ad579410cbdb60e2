//! A second click for the buttons that delete stored model files (the model card's **Delete**,
//! the storage manager's **Delete** and **Remove unused files**): a model is gigabytes and
//! hours of download, so one stray click must not remove it. The first click arms the button
//! (its text and accessible name become the question, with the size at stake); a second
//! click within [`ARMED_MS`] confirms; otherwise the button goes back to its label. Inline
//! rather than `window.confirm`, which blocks the page and is suppressed by some browsers.
//!
//! The state lives on the element (`data-armed`, `data-label`, `data-aria-label`), so a
//! button rebuilt by a re-render simply starts unarmed.

use gloo::timers::callback::Timeout;
use web_sys::Element;

/// How long an armed button waits for its second click, in milliseconds.
pub const ARMED_MS: u32 = 8_000;

/// Whether this click on `button` confirms its action: `true` when the button was armed (it is
/// disarmed again). Otherwise it arms the button, showing `question`, and returns `false`.
pub fn second_click(button: &Element, question: &str) -> bool {
    if button.has_attribute("data-armed") {
        disarm(button);
        return true;
    }
    // A token per arming, so that the timer of an earlier arming cannot end a later one.
    let token = format!("{}", js_sys::Date::now());
    let label = button.text_content().unwrap_or_default();
    button.set_attribute("data-label", &label).ok();
    if let Some(aria) = button.get_attribute("aria-label") {
        button.set_attribute("data-aria-label", &aria).ok();
    }
    button.set_attribute("aria-label", question).ok();
    button.set_attribute("data-armed", &token).ok();
    button.set_text_content(Some(question));
    let armed = button.clone();
    Timeout::new(ARMED_MS, move || {
        if armed.get_attribute("data-armed").as_deref() == Some(token.as_str()) {
            disarm(&armed);
        }
    })
    .forget();
    false
}

/// Puts an armed button back to its label (nothing if it is not armed): when what it would
/// delete changes under it (another model chosen).
pub fn disarm(button: &Element) {
    if !button.has_attribute("data-armed") {
        return;
    }
    button.remove_attribute("data-armed").ok();
    let label = button.get_attribute("data-label").unwrap_or_default();
    button.set_text_content(Some(&label));
    button.remove_attribute("data-label").ok();
    match button.get_attribute("data-aria-label") {
        Some(aria) => {
            button.set_attribute("aria-label", &aria).ok();
            button.remove_attribute("data-aria-label").ok();
        }
        None => {
            button.remove_attribute("aria-label").ok();
        }
    }
}
