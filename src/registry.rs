//! The model registry served with the app (`www/models.json`): which model sources the page
//! offers, where each one's files come from, which files form which component, and the
//! precision each component is loaded in. Data, not code: a mirror, a pinned commit or another
//! community GGUF is a JSON edit. Parsed and validated here (natively tested); the browser's
//! model panel and worker use the result.
//!
//! ```json
//! {"models": [{
//!   "id": "qwen-image-layered", "label": "…", "host": "https://huggingface.co",
//!   "repo": "Qwen/Qwen-Image-Layered", "revision": "main", "resolutions": [640, 1024],
//!   "components": [
//!     {"name": "transformer", "files": ["transformer/*"], "precision": "q8"},
//!     {"name": "vae", "files": ["vae/*"]}, …
//!   ]
//! }]}
//! ```
//!
//! A component's `files` are glob patterns (`*` within a path segment, `**` across segments)
//! matched against the hub's tree listing of the repo at the revision; every pattern must match
//! at least one file. A transformer may instead come from a community GGUF repository:
//! `"gguf": {"repo": "owner/name", "revision": "…", "file": "*Q4_0.gguf"}` (its config still
//! comes from `files`); the pattern must match exactly one `.gguf` file of that listing, so
//! file names are discovered, not hard-coded.

use serde::{Deserialize, Serialize};

use crate::download::derived::is_checkpoint_of;
use crate::download::plan::is_commit;
use crate::download::{DownloadPlan, SourceSpec};
use crate::weights::http::resolve_base;
use crate::weights::{Precision, stored_copy_path};

/// The components a model source must provide, in load order.
pub const COMPONENTS: [&str; 5] = [
    "scheduler",
    "tokenizer",
    "text_encoder",
    "transformer",
    "vae",
];

/// Components a source may add (the captioner's image processor).
pub const OPTIONAL_COMPONENTS: [&str; 1] = ["processor"];

/// Components whose weights this build can keep quantized (the others load in f32): the
/// transformer, and the text encoder (its language model's linear layers, and `lm_head` and
/// the vision tower's when captioning).
const QUANTIZABLE: [&str; 2] = ["transformer", "text_encoder"];

/// The precision a component is loaded in, as written in `models.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadPrecision {
    /// f32 (bf16/f16 widened exactly).
    #[default]
    F32,
    /// 8-bit blocks of 32 with f16 scales.
    Q8,
    /// 4-bit blocks of 32 with f16 scales.
    Q4,
}

impl From<LoadPrecision> for Precision {
    fn from(p: LoadPrecision) -> Self {
        match p {
            LoadPrecision::F32 => Precision::F32,
            LoadPrecision::Q8 => Precision::Q8,
            LoadPrecision::Q4 => Precision::Q4,
        }
    }
}

/// A transformer taken from one `.gguf` file of another repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GgufFile {
    /// `owner/name` of the GGUF repository (same host as the source).
    pub repo: String,
    /// A branch or a 40-hex commit of that repository.
    pub revision: String,
    /// Glob over the repository's file paths; must match exactly one `.gguf` file.
    pub file: String,
}

/// One component of a model source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Component {
    /// `transformer`, `vae`, `text_encoder`, `tokenizer` or `scheduler` (the diffusers folder).
    pub name: String,
    /// Glob patterns over the source repository's file paths.
    pub files: Vec<String>,
    /// The precision of its linear weights (weight components only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<LoadPrecision>,
    /// The transformer's weights from a community GGUF file instead of `files`' safetensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufFile>,
}

/// Where a model's files come from: a Hugging Face-style host, a repository and a revision,
/// and what each component is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSource {
    /// Stable id of the entry (`"qwen-image-layered"`).
    pub id: String,
    /// What the picker shows.
    pub label: String,
    /// `https://huggingface.co`, a mirror, or a local host for development (the base-URL
    /// override).
    pub host: String,
    /// `owner/name`.
    pub repo: String,
    /// A commit sha (immutable: pinned) or a branch name (resolved to its current commit).
    pub revision: String,
    /// The `resolution` values (bucket sides) this model is meant for; the first is the default.
    #[serde(default = "default_resolutions")]
    pub resolutions: Vec<u32>,
    /// Development-only entry (random test weights): listed only when the page is served
    /// from `localhost` / `127.0.0.1`.
    #[serde(default)]
    pub dev: bool,
    /// What each component is made of.
    pub components: Vec<Component>,
}

fn default_resolutions() -> Vec<u32> {
    vec![640, 1024]
}

/// Who uses one revision folder of the model cache, and what in it nobody keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionUse {
    /// The ids of the sources whose recorded download lists this revision.
    pub used_by: Vec<String>,
    /// Its files (of `files`) that none of them reads or keeps ([`ModelSource::kept_files`]):
    /// stored copies of another precision or of an older format, files of a listing since
    /// changed. Every file when no source uses the revision.
    pub unused: Vec<String>,
}

/// What `records` (each source with the plans its download recorded) make of the revision
/// folder `repo@revision` holding `files` (paths).
pub fn revision_use(
    records: &[(ModelSource, Vec<DownloadPlan>)],
    repo: &str,
    revision: &str,
    files: &[String],
) -> RevisionUse {
    let users: Vec<(&ModelSource, &DownloadPlan)> = records
        .iter()
        .filter_map(|(source, plans)| {
            let plan = plans
                .iter()
                .find(|p| p.repo == repo && p.revision == revision)?;
            Some((source, plan))
        })
        .collect();
    let kept: std::collections::HashSet<_> = users
        .iter()
        .flat_map(|(s, plan)| s.kept_files(plan))
        .collect();
    RevisionUse {
        used_by: users.iter().map(|(s, _)| s.id.clone()).collect(),
        unused: files
            .iter()
            .filter(|f| !kept.contains(f.as_str()))
            .cloned()
            .collect(),
    }
}

/// One repository to download for a source: its spec and the patterns of the files wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Host, repo and revision (every file of the listing; [`Part::select`] filters).
    pub spec: SourceSpec,
    /// Glob patterns, each with the component it belongs to.
    pub patterns: Vec<(String, String)>,
    /// The pattern of the one GGUF file of this part, if it is a GGUF part.
    pub gguf: Option<String>,
}

fn glob(pattern: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(pattern).map_err(|e| format!("file pattern \"{pattern}\" is not valid: {e}"))
}

fn glob_matches(pattern: &glob::Pattern, path: &str) -> bool {
    pattern.matches_with(
        path,
        glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        },
    )
}

impl Part {
    /// Keeps the files of a full listing that this part's patterns match. Every pattern must
    /// match a file; a GGUF pattern exactly one `.gguf` file.
    pub fn select(&self, mut plan: DownloadPlan) -> Result<DownloadPlan, String> {
        let at = format!("{}@{}", plan.repo, plan.revision);
        let mut keep = vec![false; plan.files.len()];
        for (component, pattern) in &self.patterns {
            let p = glob(pattern)?;
            let hits: Vec<usize> = (0..plan.files.len())
                .filter(|&i| glob_matches(&p, &plan.files[i].path))
                .collect();
            if self.gguf.as_deref() == Some(pattern.as_str()) {
                let ggufs: Vec<&str> = hits
                    .iter()
                    .map(|&i| plan.files[i].path.as_str())
                    .filter(|f| f.ends_with(".gguf"))
                    .collect();
                if ggufs.len() != 1 {
                    return Err(format!(
                        "{component}: the GGUF pattern \"{pattern}\" must match exactly one .gguf \
                         file of {at}, it matches {}: [{}]",
                        ggufs.len(),
                        ggufs.join(", ")
                    ));
                }
            }
            if hits.is_empty() {
                return Err(format!(
                    "{component}: no file of {at} matches \"{pattern}\""
                ));
            }
            for i in hits {
                keep[i] = true;
            }
        }
        let mut i = 0;
        plan.files.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        Ok(plan)
    }
}

impl ModelSource {
    /// `{host}/{repo}/resolve/{revision}`: files are `{base}/{path}`.
    pub fn base_url(&self) -> String {
        resolve_base(&self.host, &self.repo, &self.revision)
    }

    /// Whether every repository is pinned to a commit (immutable URLs).
    pub fn pinned(&self) -> bool {
        is_commit(&self.revision)
            && self
                .components
                .iter()
                .filter_map(|c| c.gguf.as_ref())
                .all(|g| is_commit(&g.revision))
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The precision `name` loads in (f32 when not given).
    pub fn precision(&self, name: &str) -> Precision {
        self.component(name)
            .and_then(|c| c.precision)
            .unwrap_or_default()
            .into()
    }

    /// The components this source keeps as a whole stored 8-/4-bit copy, in the order their
    /// copies are made (the text encoder first), each with the copy's path
    /// ([`stored_copy_path`]): those it loads 8-/4-bit, but the transformer when it comes
    /// from a GGUF file (no copy is made of that).
    pub fn stored_copies(&self) -> Vec<(&'static str, String)> {
        let gguf = self.components.iter().any(|c| c.gguf.is_some());
        ["text_encoder", "transformer"]
            .into_iter()
            .filter(|component| !(gguf && *component == "transformer"))
            .filter_map(|c| Some((c, stored_copy_path(c, self.precision(c))?)))
            .collect()
    }

    /// The files this source reads or keeps in the revision that `plan` (one of the plans its
    /// download recorded) lists: its files, and the stored copy of each component whose
    /// checkpoint that plan lists.
    pub fn kept_files<'a>(&self, plan: &'a DownloadPlan) -> Vec<std::borrow::Cow<'a, str>> {
        let copies = self
            .stored_copies()
            .into_iter()
            .filter(|(component, _)| plan.files.iter().any(|f| is_checkpoint_of(component, f)));
        (plan.files.iter().map(|f| f.path.as_str().into()))
            .chain(copies.map(|(_, copy)| copy.into()))
            .collect()
    }

    /// The repositories to download: the source's own, then one per GGUF repository.
    pub fn parts(&self) -> Vec<Part> {
        let spec = |repo: &str, revision: &str| SourceSpec {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            base_url: self.host.trim_end_matches('/').to_owned(),
            components: Vec::new(),
        };
        let mut parts = vec![Part {
            spec: spec(&self.repo, &self.revision),
            patterns: self
                .components
                .iter()
                .flat_map(|c| c.files.iter().map(|f| (c.name.clone(), f.clone())))
                .collect(),
            gguf: None,
        }];
        for c in &self.components {
            if let Some(g) = &c.gguf {
                parts.push(Part {
                    spec: spec(&g.repo, &g.revision),
                    patterns: vec![(c.name.clone(), g.file.clone())],
                    gguf: Some(g.file.clone()),
                });
            }
        }
        parts
    }

    /// Checks one entry; the message names the entry and the field.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |reason: String| Err(format!("models.json entry \"{}\": {reason}", self.id));
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return fail("the id must be non-empty letters, digits, '-', '_' or '.'".into());
        }
        if self.label.trim().is_empty() {
            return fail("the label is empty".into());
        }
        if self.resolutions.is_empty() || self.resolutions.iter().any(|r| r % 16 != 0 || *r == 0) {
            return fail("resolutions must be positive multiples of 16".into());
        }
        for part in self.parts() {
            if let Err(e) = part.spec.validate() {
                return fail(e.to_string());
            }
        }
        for name in COMPONENTS {
            if self.component(name).is_none() {
                return fail(format!("the component \"{name}\" is missing"));
            }
        }
        for (i, c) in self.components.iter().enumerate() {
            if !COMPONENTS.contains(&c.name.as_str())
                && !OPTIONAL_COMPONENTS.contains(&c.name.as_str())
            {
                return fail(format!(
                    "unknown component \"{}\" (expected one of {}, {})",
                    c.name,
                    COMPONENTS.join(", "),
                    OPTIONAL_COMPONENTS.join(", ")
                ));
            }
            if self.components[..i].iter().any(|o| o.name == c.name) {
                return fail(format!("the component \"{}\" is listed twice", c.name));
            }
            if c.files.is_empty() {
                return fail(format!("the component \"{}\" lists no files", c.name));
            }
            let gguf_pattern = c.gguf.as_ref().map(|g| g.file.as_str());
            for f in c.files.iter().map(String::as_str).chain(gguf_pattern) {
                if f.is_empty()
                    || f.starts_with('/')
                    || f.contains('\\')
                    || f.split('/').any(|s| s == ".." || s == ".")
                {
                    return fail(format!(
                        "{}: the file pattern \"{f}\" must be a relative path inside the repository",
                        c.name
                    ));
                }
                if let Err(e) = glob(f) {
                    return fail(format!("{}: {e}", c.name));
                }
            }
            match (c.precision, QUANTIZABLE.contains(&c.name.as_str())) {
                (Some(p), false) if p != LoadPrecision::F32 => {
                    return fail(format!(
                        "{}: this build loads it in f32 only (precision {p:?} is for the {})",
                        c.name,
                        QUANTIZABLE.join(", ")
                    ));
                }
                _ => {}
            }
            if let Some(g) = &c.gguf {
                if c.name != "transformer" {
                    return fail(format!(
                        "{}: only the transformer can come from a GGUF file",
                        c.name
                    ));
                }
                if !g.file.ends_with(".gguf") {
                    return fail(format!(
                        "{}: the GGUF pattern \"{}\" must end in .gguf",
                        c.name, g.file
                    ));
                }
                if g.repo == self.repo {
                    return fail(format!(
                        "{}: the GGUF repository must differ from the source's (list the file in files instead)",
                        c.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The model list served with the app (`www/models.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRegistry {
    /// Entries in the order the picker shows them; the first non-dev one is the default.
    pub models: Vec<ModelSource>,
}

impl ModelRegistry {
    /// Parses and validates `models.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let registry: Self =
            serde_json::from_str(text).map_err(|e| format!("models.json is not valid: {e}"))?;
        if registry.models.is_empty() {
            return Err("models.json lists no models".into());
        }
        for (i, m) in registry.models.iter().enumerate() {
            m.validate()?;
            if registry.models[..i].iter().any(|o| o.id == m.id) {
                return Err(format!("models.json lists the id \"{}\" twice", m.id));
            }
        }
        Ok(registry)
    }

    /// The entries a page served from `hostname` lists: dev entries only on a local host.
    pub fn visible(&self, hostname: &str) -> Vec<ModelSource> {
        let local = matches!(hostname, "localhost" | "127.0.0.1" | "[::1]" | "::1");
        self.models
            .iter()
            .filter(|m| local || !m.dev)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::{Check, FilePlan};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn diffusers(transformer: &str) -> String {
        format!(
            r#"[{transformer},
              {{"name": "vae", "files": ["vae/*"]}},
              {{"name": "text_encoder", "files": ["text_encoder/*"], "precision": "f32"}},
              {{"name": "tokenizer", "files": ["tokenizer/*"]}},
              {{"name": "scheduler", "files": ["scheduler/scheduler_config.json"]}}]"#
        )
    }

    fn entry(id: &str, extra: &str, transformer: &str) -> String {
        format!(
            r#"{{"id": "{id}", "label": "L {id}", "host": "https://huggingface.co",
                "repo": "Qwen/Qwen-Image-Layered", "revision": "main", {extra}
                "components": {}}}"#,
            diffusers(transformer)
        )
    }

    const T_SAFE: &str =
        r#"{"name": "transformer", "files": ["transformer/*"], "precision": "q8"}"#;
    const T_GGUF: &str = r#"{"name": "transformer", "files": ["transformer/config.json"], "precision": "q4",
        "gguf": {"repo": "QuantStack/Qwen-Image-Layered-GGUF", "revision": "main", "file": "*Q4_0.gguf"}}"#;

    fn registry(entries: &[String]) -> Result<ModelRegistry, String> {
        ModelRegistry::from_json(&format!(r#"{{"models": [{}]}}"#, entries.join(",")))
    }

    fn plan(repo: &str, paths: &[&str]) -> DownloadPlan {
        DownloadPlan {
            repo: repo.into(),
            revision: COMMIT.into(),
            files: paths
                .iter()
                .map(|p| FilePlan {
                    path: (*p).into(),
                    size: 1,
                    check: Check::Sha256("a".repeat(64)),
                    url: String::new(),
                })
                .collect(),
        }
    }

    /// The cache manager's view of a revision folder: which sources use it, and which of its
    /// files none of them keeps (another precision's copy, an older format's, a stray file).
    #[test]
    fn a_revision_folder_is_used_by_the_sources_that_recorded_it_and_the_rest_is_unused() {
        let reg = registry(&[
            entry("q8", "", T_SAFE),
            entry("gguf", "", T_GGUF),
            entry("q4", "", &T_SAFE.replace("q8", "q4")),
        ])
        .unwrap();
        let [q8, gguf, q4] = [0, 1, 2].map(|i| reg.models[i].clone());
        const REPO: &str = "Qwen/Qwen-Image-Layered";
        let main = plan(
            REPO,
            &[
                "transformer/config.json",
                "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ],
        );
        let q8_copy = stored_copy_path("transformer", Precision::Q8).unwrap();
        let q4_copy = stored_copy_path("transformer", Precision::Q4).unwrap();
        let old_copy = "transformer/qwen-layered-v0-q8_0.gguf".to_owned();
        let files: Vec<String> = main
            .files
            .iter()
            .map(|f| f.path.clone())
            .chain([q8_copy.clone(), q4_copy.clone(), old_copy.clone()])
            .chain(["transformer/stray.bin".to_owned()])
            .collect();
        assert_eq!(q8.stored_copies(), [("transformer", q8_copy.clone())]);
        assert!(
            gguf.stored_copies().is_empty(),
            "no copy of a GGUF transformer"
        );
        // Only the 8-bit source recorded this revision: the 4-bit copy is of no use to it.
        let records = vec![(q8.clone(), vec![main.clone()]), (q4.clone(), Vec::new())];
        let used = revision_use(&records, REPO, COMMIT, &files);
        assert_eq!(used.used_by, ["q8"]);
        assert_eq!(
            used.unused,
            [
                q4_copy.clone(),
                old_copy.clone(),
                "transformer/stray.bin".into()
            ]
        );
        // Both recorded it: each keeps its own copy.
        let records = vec![(q8.clone(), vec![main.clone()]), (q4, vec![main.clone()])];
        let used = revision_use(&records, REPO, COMMIT, &files);
        assert_eq!(used.used_by, ["q8", "q4"]);
        assert_eq!(used.unused, [old_copy, "transformer/stray.bin".to_owned()]);
        // A GGUF source keeps no transformer copy, even in a revision it uses.
        let records = vec![(gguf, vec![main.clone()])];
        let used = revision_use(&records, REPO, COMMIT, &files);
        assert!(used.unused.contains(&q8_copy) && used.unused.contains(&q4_copy));
        // A revision no source recorded (an older commit, a source no longer listed): all of it.
        let used = revision_use(&records, REPO, &"f".repeat(40), &files);
        assert!(used.used_by.is_empty());
        assert_eq!(used.unused, files);
    }

    #[test]
    fn a_source_lists_its_components_parts_and_precisions() {
        let reg = registry(&[
            entry("real", "", T_SAFE),
            entry("gguf", r#""resolutions": [640],"#, T_GGUF),
        ])
        .unwrap();
        let real = &reg.models[0];
        assert_eq!(real.resolutions, vec![640, 1024]);
        assert_eq!(
            real.base_url(),
            "https://huggingface.co/Qwen/Qwen-Image-Layered/resolve/main"
        );
        assert!(!real.pinned(), "main is a branch");
        assert_eq!(real.precision("transformer"), Precision::Q8);
        assert_eq!(real.precision("vae"), Precision::F32);
        assert_eq!(real.precision("text_encoder"), Precision::F32);
        let q4_text = entry("t", "", T_SAFE).replace(
            r#""text_encoder", "files": ["text_encoder/*"], "precision": "f32""#,
            r#""text_encoder", "files": ["text_encoder/*"], "precision": "q4""#,
        );
        let q4 = registry(&[q4_text]).unwrap();
        assert_eq!(q4.models[0].precision("text_encoder"), Precision::Q4);
        let parts = real.parts();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].spec.repo, "Qwen/Qwen-Image-Layered");
        assert_eq!(parts[0].patterns.len(), 5);

        let gguf = &reg.models[1];
        assert_eq!(gguf.precision("transformer"), Precision::Q4);
        let parts = gguf.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].spec.repo, "QuantStack/Qwen-Image-Layered-GGUF");
        assert_eq!(parts[1].spec.base_url, "https://huggingface.co");
        assert_eq!(parts[1].gguf.as_deref(), Some("*Q4_0.gguf"));
    }

    #[test]
    fn files_are_picked_from_the_listing_by_pattern() {
        let reg = registry(&[entry("gguf", "", T_GGUF)]).unwrap();
        let parts = reg.models[0].parts();
        let base = plan(
            "Qwen/Qwen-Image-Layered",
            &[
                "README.md",
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model-00001-of-00002.safetensors",
                "tokenizer/vocab.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ],
        );
        let picked = parts[0].select(base).unwrap();
        let paths: Vec<_> = picked.files.iter().map(|f| f.path.as_str()).collect();
        // The transformer's weights come from the GGUF repo: only its config is taken here.
        assert_eq!(
            paths,
            [
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model-00001-of-00002.safetensors",
                "tokenizer/vocab.json",
                "transformer/config.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
        let ggufs = plan(
            "QuantStack/Qwen-Image-Layered-GGUF",
            &[
                "Qwen_Image_Layered-Q4_0.gguf",
                "Qwen_Image_Layered-Q8_0.gguf",
                "README.md",
            ],
        );
        let picked = parts[1].select(ggufs.clone()).unwrap();
        assert_eq!(picked.files.len(), 1);
        assert_eq!(picked.files[0].path, "Qwen_Image_Layered-Q4_0.gguf");

        // Zero or two matches are refused with the candidates named.
        let mut two = parts[1].clone();
        two.patterns[0].1 = "*.gguf".into();
        two.gguf = Some("*.gguf".into());
        let err = two.select(ggufs.clone()).unwrap_err();
        assert!(
            err.contains("exactly one .gguf") && err.contains("it matches 2"),
            "{err}"
        );
        assert!(err.contains("Qwen_Image_Layered-Q8_0.gguf"), "{err}");
        let mut none = parts[1].clone();
        none.patterns[0].1 = "*Q2_K.gguf".into();
        none.gguf = Some("*Q2_K.gguf".into());
        let err = none.select(ggufs).unwrap_err();
        assert!(err.contains("matches 0"), "{err}");
        // A pattern without a match in a safetensors part is named too.
        let err = parts[0]
            .select(plan("Qwen/Qwen-Image-Layered", &["vae/config.json"]))
            .unwrap_err();
        assert!(
            err.starts_with("transformer: no file of Qwen/Qwen-Image-Layered@"),
            "{err}"
        );
        // `*` stays inside one folder.
        let err = parts[0]
            .select(plan(
                "Qwen/Qwen-Image-Layered",
                &[
                    "scheduler/scheduler_config.json",
                    "text_encoder/sub/x.safetensors",
                    "tokenizer/a",
                    "transformer/config.json",
                    "vae/a",
                ],
            ))
            .unwrap_err();
        assert!(err.starts_with("text_encoder: no file"), "{err}");
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_and_field_named() {
        let cases: [(String, &str); 10] = [
            (entry("", "", T_SAFE), "the id must be"),
            (
                entry("a", "", T_SAFE).replace("Qwen/Qwen-Image-Layered", "norepo"),
                "owner/name",
            ),
            (
                entry("a", "", T_SAFE).replace("https://huggingface.co", "ftp://x"),
                "not http(s)",
            ),
            (
                entry("a", r#""resolutions": [100],"#, T_SAFE),
                "multiples of 16",
            ),
            (
                entry("a", "", T_SAFE).replace(
                    r#"{"name": "vae", "files": ["vae/*"]}"#,
                    r#"{"name": "vea", "files": ["vae/*"]}"#,
                ),
                "the component \"vae\" is missing",
            ),
            (
                entry("a", "", T_SAFE).replace(r#"["vae/*"]"#, r#"["../vae/*"]"#),
                "relative path inside the repository",
            ),
            (
                entry("a", "", T_SAFE).replace(r#"["vae/*"]"#, r#"["vae/[*"]"#),
                "is not valid",
            ),
            (
                entry("a", "", T_SAFE).replace(
                    r#"{"name": "vae", "files": ["vae/*"]}"#,
                    r#"{"name": "vae", "files": ["vae/*"], "precision": "q4"}"#,
                ),
                "vae: this build loads it in f32 only",
            ),
            (
                entry("a", "", &T_GGUF.replace("*Q4_0.gguf", "*Q4_0.bin")),
                "must end in .gguf",
            ),
            (
                entry("a", "", T_SAFE).replace(r#""precision": "q8""#, r#""precision": "q5""#),
                "models.json is not valid",
            ),
        ];
        for (text, want) in cases {
            let err = registry(std::slice::from_ref(&text)).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}\n{text}");
        }
        let err = registry(&[entry("a", "", T_SAFE), entry("a", "", T_SAFE)]).unwrap_err();
        assert!(err.contains("the id \"a\" twice"), "{err}");
        let err = registry(&[entry("a", r#""colour": 1,"#, T_SAFE)]).unwrap_err();
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert_eq!(
            ModelRegistry::from_json(r#"{"models": []}"#).unwrap_err(),
            "models.json lists no models"
        );
    }

    #[test]
    fn dev_models_are_listed_only_on_a_local_host() {
        let reg = registry(&[
            entry("real", "", T_SAFE),
            entry("tiny", r#""dev": true,"#, T_SAFE),
        ])
        .unwrap();
        let ids = |h: &str| reg.visible(h).into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids("example.org"), ["real"]);
        assert_eq!(ids("127.0.0.1"), ["real", "tiny"]);
        assert_eq!(ids("localhost"), ["real", "tiny"]);
    }

    /// The committed registry parses; its default is the real model from the Hub, the dev
    /// entry says plainly that its weights are random, and the GGUF entries find their file
    /// by pattern.
    #[test]
    fn the_served_registry_is_valid() {
        let reg = ModelRegistry::from_json(include_str!("../www/models.json")).unwrap();
        let visitors = reg.visible("example.org");
        assert_eq!(visitors[0].repo, "Qwen/Qwen-Image-Layered");
        assert_eq!(visitors[0].host, "https://huggingface.co");
        assert!(visitors.iter().all(|m| !m.dev));
        let tiny = reg.models.iter().find(|m| m.dev).expect("a dev entry");
        assert!(tiny.label.contains("random test weights"), "{}", tiny.label);
        let gguf: Vec<_> = reg
            .models
            .iter()
            .filter_map(|m| m.component("transformer")?.gguf.as_ref())
            .collect();
        assert!(!gguf.is_empty(), "a community GGUF source is listed");
        assert!(
            gguf.iter().all(|g| g.file.contains('*')),
            "found by pattern"
        );
        // The real model's text encoder loads in 4 bits (its 8-bit linear layers alone would
        // be 6.8 GiB on the GPU, over the 4 GiB a page can count on; see www/models.json).
        for m in reg.models.iter().filter(|m| !m.dev) {
            assert_eq!(m.precision("text_encoder"), Precision::Q4, "{}", m.id);
        }
        // An unpinned entry says so in its label.
        for m in &reg.models {
            assert!(
                m.pinned() || m.dev || m.label.contains("unpinned"),
                "{}: {}",
                m.id,
                m.label
            );
        }
    }

    /// The page's Content-Security-Policy binds the model worker too (it is started from a
    /// `blob:` URL): every host a visitor's entry downloads from must be in its `connect-src`.
    #[test]
    fn every_host_visitors_download_from_is_in_the_pages_connect_src() {
        let html = include_str!("../www/index.html");
        let policy = html
            .split("http-equiv=\"Content-Security-Policy\" content=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("index.html has a CSP meta tag");
        let sources: Vec<&str> = policy
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("connect-src "))
            .expect("a connect-src directive")
            .split_whitespace()
            .collect();
        // A CSP host source: the scheme, then the host or `*.` and a suffix of it.
        let allows = |source: &str, base: &str| {
            let (Some((s_scheme, s_host)), Some((scheme, host))) =
                (source.split_once("://"), base.split_once("://"))
            else {
                return false;
            };
            s_scheme == scheme
                && match s_host.strip_prefix('*') {
                    Some(suffix) => host.ends_with(suffix),
                    None => s_host == host,
                }
        };
        let reg = ModelRegistry::from_json(include_str!("../www/models.json")).unwrap();
        for m in reg.visible("example.org") {
            for part in m.parts() {
                let base = &part.spec.base_url;
                assert!(
                    sources.iter().any(|s| allows(s, base)),
                    "{}: {base} is not in connect-src {sources:?}",
                    m.id
                );
            }
        }
        // Not a matcher that allows anything.
        assert!(!sources.iter().any(|s| allows(s, "https://example.org")));
        assert!(!sources.iter().any(|s| allows(s, "http://127.0.0.1:8090")));
        // Hugging Face's CDN, where `resolve/` redirects (us.aws.cdn.hf.co, cdn-lfs.hf.co).
        assert!(
            sources
                .iter()
                .any(|s| allows(s, "https://us.aws.cdn.hf.co"))
        );
    }
}
