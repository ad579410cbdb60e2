//! The page's one status line (`#status`), shared by every part of the page.

/// How a status line is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Neutral progress or information.
    Info,
    /// Something worked.
    Ok,
    /// Worked, but the user should read this (a notice about their file).
    Warn,
    /// Something failed; announced at once to screen readers (`role="alert"`).
    Error,
}

/// Shows `text` in `#status` (as text, never markup).
pub fn set_status(text: &str, tone: Tone) {
    let Some(status) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("status"))
    else {
        return;
    };
    status.set_text_content(Some(text));
    status.set_class_name(match tone {
        Tone::Info => "",
        Tone::Ok => "ok",
        Tone::Warn => "warn",
        Tone::Error => "error",
    });
    let role = if tone == Tone::Error {
        "alert"
    } else {
        "status"
    };
    status.set_attribute("role", role).ok();
}
