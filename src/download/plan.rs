//! The download plan: which files of which repository revision, their sizes and hashes, and
//! the URLs to fetch them from. Built from the hub's own listing (the tree API), never from a
//! hard-coded file list, so shard counts and sizes are whatever the repository holds.

use serde::Deserialize;

use super::error::{DResult, DownloadError};
use super::verify::Check;

/// The hub everyone uses; a mirror or a self-hosted copy replaces it through [`SourceSpec::base_url`].
pub const DEFAULT_BASE_URL: &str = "https://huggingface.co";

/// Where a model comes from and which parts of it are wanted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceSpec {
    /// `owner/name`, e.g. `Qwen/Qwen-Image-Layered`.
    pub repo: String,
    /// A branch (`main`) or a 40-hex commit. A branch is resolved to its commit first, so every
    /// URL is pinned and immutable.
    pub revision: String,
    /// Hub base URL without a trailing slash (a mirror or self-hosted copy).
    pub base_url: String,
    /// Top-level folders to fetch (`transformer`, `vae`, …); empty = every folder. Files at the
    /// repository root (`model_index.json`) are always included.
    pub components: Vec<String>,
}

impl SourceSpec {
    /// `repo` at `main` on the public hub, every component.
    pub fn new(repo: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            revision: "main".into(),
            base_url: DEFAULT_BASE_URL.into(),
            components: Vec::new(),
        }
    }

    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// `{base}/api/models/{repo}/revision/{rev}`: the model info with the commit `sha`.
    pub fn revision_url(&self) -> String {
        format!(
            "{}/api/models/{}/revision/{}",
            self.base(),
            self.repo,
            self.revision
        )
    }

    /// `{base}/api/models/{repo}/tree/{commit}?recursive=true`: every file with size and oids.
    pub fn tree_url(&self, commit: &str) -> String {
        format!(
            "{}/api/models/{}/tree/{}?recursive=true",
            self.base(),
            self.repo,
            commit
        )
    }

    /// `{base}/{repo}/resolve/{commit}/{path}`: the file (LFS files redirect to the CDN).
    pub fn resolve_url(&self, commit: &str, path: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.base(), self.repo, commit, path)
    }

    /// Checks the fields before any request: `owner/name`, a revision, an http(s) base URL.
    pub fn validate(&self) -> DResult<()> {
        let bad = |reason: String| Err(DownloadError::Plan { reason });
        let parts: Vec<&str> = self.repo.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) {
            return bad(format!(
                "repository \"{}\" is not of the form owner/name",
                self.repo
            ));
        }
        if self.revision.is_empty() || self.revision.contains(['/', '?', '#', ' ']) {
            return bad(format!(
                "revision \"{}\" is not a branch name or commit",
                self.revision
            ));
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad(format!("base URL \"{}\" is not http(s)", self.base_url));
        }
        Ok(())
    }
}

/// Whether `s` is a full 40-hex commit id.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePlan {
    /// Path in the repository, with `/` (`transformer/config.json`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// How the finished file is verified.
    pub check: Check,
    /// The `resolve/` URL, pinned to the commit.
    pub url: String,
}

/// The files of one repository revision to fetch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DownloadPlan {
    /// `owner/name`.
    pub repo: String,
    /// The 40-hex commit every URL is pinned to.
    pub revision: String,
    /// Files sorted by path.
    pub files: Vec<FilePlan>,
}

impl DownloadPlan {
    /// Sum of all file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// `(component, files, bytes)` per top-level folder (`""` for root files), sorted.
    pub fn components(&self) -> Vec<(String, usize, u64)> {
        let mut out: Vec<(String, usize, u64)> = Vec::new();
        for f in &self.files {
            let comp = f.path.split_once('/').map(|(c, _)| c).unwrap_or("");
            match out.iter_mut().find(|(c, _, _)| c == comp) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += f.size;
                }
                None => out.push((comp.to_owned(), 1, f.size)),
            }
        }
        out.sort();
        out
    }

    /// Builds the plan from the tree API's JSON (`recursive=true`) for `commit`.
    pub fn from_tree(spec: &SourceSpec, commit: &str, tree_json: &[u8]) -> DResult<Self> {
        spec.validate()?;
        if !is_commit(commit) {
            return Err(DownloadError::Plan {
                reason: format!("revision \"{commit}\" is not a 40-hex commit"),
            });
        }
        let entries: Vec<TreeEntry> =
            serde_json::from_slice(tree_json).map_err(|e| DownloadError::Plan {
                reason: format!(
                    "the tree listing of {} is not the expected JSON: {e}",
                    spec.repo
                ),
            })?;
        let mut files = Vec::new();
        for e in entries.into_iter().filter(|e| e.kind == "file") {
            let wanted = match e.path.split_once('/') {
                None => true,
                Some((comp, _)) => {
                    spec.components.is_empty() || spec.components.iter().any(|c| c == comp)
                }
            };
            if !wanted || e.path.starts_with('.') {
                continue;
            }
            check_path(&e.path)?;
            let (size, check) = match e.lfs {
                Some(lfs) => {
                    if lfs.size != e.size {
                        return Err(DownloadError::Plan {
                            reason: format!(
                                "\"{}\": listing gives size {} but LFS size {}",
                                e.path, e.size, lfs.size
                            ),
                        });
                    }
                    (lfs.size, Check::sha256(&lfs.oid, &e.path)?)
                }
                None => (e.size, Check::git_blob_sha1(&e.oid, &e.path)?),
            };
            files.push(FilePlan {
                url: spec.resolve_url(commit, &e.path),
                path: e.path,
                size,
                check,
            });
        }
        for comp in &spec.components {
            if !files
                .iter()
                .any(|f| f.path.starts_with(&format!("{comp}/")))
            {
                return Err(DownloadError::Plan {
                    reason: format!("{}@{commit} has no folder \"{comp}\"", spec.repo),
                });
            }
        }
        if files.is_empty() {
            return Err(DownloadError::Plan {
                reason: format!("{}@{commit} lists no files", spec.repo),
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            repo: spec.repo.clone(),
            revision: commit.to_owned(),
            files,
        })
    }
}

/// Reads the commit `sha` from the revision API's JSON.
pub fn commit_from_model_info(spec: &SourceSpec, json: &[u8]) -> DResult<String> {
    #[derive(Deserialize)]
    struct Info {
        sha: Option<String>,
    }
    let info: Info = serde_json::from_slice(json).map_err(|e| DownloadError::Plan {
        reason: format!(
            "the model info of {} is not the expected JSON: {e}",
            spec.repo
        ),
    })?;
    match info.sha {
        Some(sha) if is_commit(&sha) => Ok(sha.to_ascii_lowercase()),
        other => Err(DownloadError::Plan {
            reason: format!(
                "the model info of {}@{} has no commit sha (got {other:?})",
                spec.repo, spec.revision
            ),
        }),
    }
}

/// Refuses paths that could escape the storage folder (`..`, absolute, backslashes).
fn check_path(path: &str) -> DResult<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(DownloadError::Plan {
            reason: format!("refusing the unsafe file path \"{path}\" in the listing"),
        });
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    size: u64,
    path: String,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn tree() -> Vec<u8> {
        let sha = "a".repeat(64);
        let blob = "b".repeat(40);
        format!(
            r#"[
            {{"type":"directory","oid":"{blob}","size":0,"path":"transformer"}},
            {{"type":"file","oid":"{blob}","size":10,"path":"model_index.json"}},
            {{"type":"file","oid":"{blob}","size":20,"path":"transformer/config.json"}},
            {{"type":"file","oid":"{blob}","size":5000000000,"path":"transformer/x.safetensors","lfs":{{"oid":"{sha}","size":5000000000,"pointerSize":135}}}},
            {{"type":"file","oid":"{blob}","size":30,"path":"vae/config.json"}},
            {{"type":"file","oid":"{blob}","size":5,"path":".gitattributes"}}
            ]"#
        )
        .into_bytes()
    }

    #[test]
    fn a_plan_takes_sizes_and_hashes_from_the_listing_and_pins_urls() {
        let mut spec = SourceSpec::new("Qwen/Qwen-Image-Layered");
        spec.base_url = "http://127.0.0.1:9/".into();
        spec.components = vec!["transformer".into()];
        let plan = DownloadPlan::from_tree(&spec, COMMIT, &tree()).unwrap();
        let paths: Vec<_> = plan.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model_index.json",
                "transformer/config.json",
                "transformer/x.safetensors"
            ]
        );
        let big = &plan.files[2];
        assert_eq!(big.size, 5_000_000_000);
        assert_eq!(big.check, Check::Sha256("a".repeat(64)));
        assert_eq!(
            big.url,
            format!(
                "http://127.0.0.1:9/Qwen/Qwen-Image-Layered/resolve/{COMMIT}/transformer/x.safetensors"
            )
        );
        assert_eq!(plan.files[0].check, Check::GitBlobSha1("b".repeat(40)));
        assert_eq!(plan.total_bytes(), 5_000_000_030);
        assert_eq!(
            plan.components()[1],
            ("transformer".into(), 2, 5_000_000_020)
        );
    }

    #[test]
    fn a_missing_component_or_bad_listing_is_a_plan_error() {
        let mut spec = SourceSpec::new("a/b");
        spec.components = vec!["text_encoder".into()];
        let err = DownloadPlan::from_tree(&spec, COMMIT, &tree()).unwrap_err();
        assert!(
            err.to_string().contains("no folder \"text_encoder\""),
            "{err}"
        );
        let err = DownloadPlan::from_tree(&SourceSpec::new("a/b"), COMMIT, b"{}").unwrap_err();
        assert!(err.to_string().contains("not the expected JSON"), "{err}");
        let err = DownloadPlan::from_tree(&SourceSpec::new("a/b"), "main", &tree()).unwrap_err();
        assert!(err.to_string().contains("40-hex"), "{err}");
        let evil = br#"[{"type":"file","oid":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"path":"x/../../etc"}]"#;
        let err = DownloadPlan::from_tree(&SourceSpec::new("a/b"), COMMIT, evil).unwrap_err();
        assert!(err.to_string().contains("unsafe file path"), "{err}");
    }

    #[test]
    fn specs_are_validated_and_commits_read_from_model_info() {
        assert!(SourceSpec::new("noslash").validate().is_err());
        assert!(SourceSpec::new("a/b/c").validate().is_err());
        let mut s = SourceSpec::new("a/b");
        s.base_url = "ftp://x".into();
        assert!(s.validate().is_err());
        let spec = SourceSpec::new("a/b");
        let json = format!(r#"{{"id":"a/b","sha":"{}"}}"#, COMMIT.to_uppercase());
        assert_eq!(
            commit_from_model_info(&spec, json.as_bytes()).unwrap(),
            COMMIT
        );
        assert!(commit_from_model_info(&spec, br#"{"id":"a/b"}"#).is_err());
    }
}
