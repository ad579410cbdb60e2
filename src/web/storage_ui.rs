//! The storage manager under the model card (`#storage-manager`, a `<details>`): every model
//! revision this browser's cache holds, its size, which listed model uses it, and what in it
//! no listed model reads (an older revision, a model no longer listed, a stored copy of
//! another precision or an older format), with a button to remove that (after a second
//! click, [`confirm`]). The worker lists and
//! cleans ([`ToWorker::ListStorage`](crate::protocol::ToWorker::ListStorage),
//! [`ToWorker::CleanStorage`](crate::protocol::ToWorker::CleanStorage)); this renders its
//! [`StorageReport`].

use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, Element, Event};

use super::{confirm, human_bytes};
use crate::protocol::{StorageReport, StoredRevision};

/// The storage manager's elements.
pub struct StoragePanel {
    document: Document,
    details: Element,
    summary: Element,
    list: Element,
}

impl StoragePanel {
    /// Finds `#storage-manager`, `#storage-summary` and `#storage-list`.
    pub fn mount(document: &Document) -> Result<Self, JsValue> {
        let by_id = |id: &str| {
            document.get_element_by_id(id).ok_or_else(|| {
                JsValue::from_str(&format!("element #{id} is missing from the page"))
            })
        };
        Ok(Self {
            document: document.clone(),
            details: by_id("storage-manager")?,
            summary: by_id("storage-summary")?,
            list: by_id("storage-list")?,
        })
    }

    /// The `<details>` (its `toggle` event asks for a listing).
    pub fn details(&self) -> &Element {
        &self.details
    }

    /// The list (its clicks carry the revision to clean up, [`StoragePanel::confirmed_click`]).
    pub fn list(&self) -> &Element {
        &self.list
    }

    /// Whether the manager is open (its listing is kept current only then).
    pub fn is_open(&self) -> bool {
        self.details.has_attribute("open")
    }

    /// The clean-up a click on the list asks for, if it hit a button and confirmed it: the
    /// first click on a button only arms it ([`confirm::second_click`]).
    ///
    /// Returns `(repo, revision)`.
    pub fn confirmed_click(event: &Event) -> Option<(String, String)> {
        let target = event.target()?.dyn_into::<Element>().ok()?;
        let button = target.closest("button[data-revision]").ok()??;
        let question = button.get_attribute("data-question")?;
        if !confirm::second_click(&button, &question) {
            return None;
        }
        Some((
            button.get_attribute("data-repo")?,
            button.get_attribute("data-revision")?,
        ))
    }

    /// Says the listing is being read (or a clean-up runs), and disables the buttons.
    pub fn busy(&self, text: &str) {
        self.summary.set_text_content(Some(text));
        if let Ok(buttons) = self.list.query_selector_all("button") {
            for i in 0..buttons.length() {
                if let Some(b) = buttons.item(i).and_then(|n| n.dyn_into::<Element>().ok()) {
                    b.set_attribute("disabled", "").ok();
                }
            }
        }
    }

    /// Renders the worker's report (`None`: the cache could not be read; `note` says why, or
    /// why a clean-up was refused).
    pub fn show(&self, report: Option<&StorageReport>, note: Option<&str>) {
        self.list.set_inner_html("");
        let Some(report) = report else {
            self.summary.set_text_content(Some(
                note.unwrap_or("The browser's storage could not be read."),
            ));
            return;
        };
        let models: u64 = report.revisions.iter().map(|r| r.bytes).sum();
        let mut summary = format!(
            "This site stores {} of the {} the browser lets it use (persistent storage: {}); \
             model files: {}.",
            human_bytes(report.usage),
            human_bytes(report.quota),
            if report.persisted {
                "granted"
            } else {
                "not granted"
            },
            human_bytes(models)
        );
        if report.revisions.is_empty() {
            summary.push_str(" No model files are stored in this browser.");
        }
        if let Some(note) = note {
            summary.push(' ');
            summary.push_str(note);
        }
        self.summary.set_text_content(Some(&summary));
        for revision in &report.revisions {
            if let Err(err) = self.add(revision) {
                web_sys::console::error_1(&err);
            }
        }
    }

    fn add(&self, r: &StoredRevision) -> Result<(), JsValue> {
        let item = self.document.create_element("li")?;
        item.set_attribute("data-repo", &r.repo)?;
        item.set_attribute("data-revision", &r.revision)?;
        let name = format!(
            "{} @ {}",
            r.repo,
            r.revision.get(..7).unwrap_or(&r.revision)
        );
        let unused: u64 = r.unused.iter().map(|(_, b)| b).sum();
        let (text, button) = if r.used_by.is_empty() {
            (
                format!(
                    "{name}: {}, used by no model in the list (an older revision, or a model no \
                     longer listed).",
                    human_bytes(r.bytes)
                ),
                Some((
                    "Delete",
                    format!("Delete {name} from this browser"),
                    format!("Delete {}? Click again", human_bytes(r.bytes)),
                )),
            )
        } else {
            let mut text = format!(
                "{name}: {}, used by {}.",
                human_bytes(r.bytes),
                r.used_by.join(" and ")
            );
            let button = (!r.unused.is_empty()).then(|| {
                let files: Vec<&str> = r.unused.iter().map(|(p, _)| p.as_str()).collect();
                text.push_str(&format!(
                    " {} of it no listed model reads: {}.",
                    human_bytes(unused),
                    files.join(", ")
                ));
                (
                    "Remove unused files",
                    format!("Remove unused files of {name}"),
                    format!("Remove {}? Click again", human_bytes(unused)),
                )
            });
            (text, button)
        };
        let line = self.document.create_element("span")?;
        line.set_text_content(Some(&text));
        item.append_child(&line)?;
        if let Some((label, accessible, question)) = button {
            let b = self.document.create_element("button")?;
            b.set_attribute("type", "button")?;
            b.set_attribute("class", "secondary")?;
            b.set_attribute("aria-label", &accessible)?;
            b.set_attribute("data-repo", &r.repo)?;
            b.set_attribute("data-revision", &r.revision)?;
            b.set_attribute("data-question", &question)?;
            b.set_text_content(Some(label));
            item.append_child(&b)?;
        }
        self.list.append_child(&item)?;
        Ok(())
    }
}
