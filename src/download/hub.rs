//! [`HubSource`]: the files of a planned revision read straight from the hub by Range requests,
//! through the engine's [`HttpClient`] (redirects to the CDN, retries with backoff): what a
//! download reads before it fetches anything, such as the safetensors headers a stored
//! quantized copy is planned from (`qwen-layered fetch --precision q4`). The browser has its
//! own fetch-based source (`web::http::HttpSource`); both check a ranged answer with
//! [`crate::weights::http`].

use super::engine::{HttpClient, get_retrying};
use super::plan::{DownloadPlan, FilePlan};
use super::retry::DownloadOptions;
use crate::error::{Error, Result};
use crate::weights::WeightSource;
use crate::weights::http::{check_partial, slice_of_full_body};

/// The files of `plan` (its commit-pinned `resolve/` URLs) as a [`WeightSource`] read over
/// HTTP; a file the plan does not list does not exist.
pub struct HubSource<'a, C> {
    client: &'a C,
    plan: &'a DownloadPlan,
    options: DownloadOptions,
}

impl<'a, C: HttpClient> HubSource<'a, C> {
    /// Reads `plan`'s files through `client`, retrying as `options` say.
    pub fn new(client: &'a C, plan: &'a DownloadPlan, options: DownloadOptions) -> Self {
        Self {
            client,
            plan,
            options,
        }
    }

    fn file(&self, path: &str) -> Result<&'a FilePlan> {
        self.plan
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| Error::Source {
                file: path.to_owned(),
                reason: format!(
                    "not in the file list of {}@{}",
                    self.plan.repo, self.plan.revision
                ),
            })
    }
}

impl<C: HttpClient> WeightSource for HubSource<'_, C> {
    async fn exists(&self, file: &str) -> Result<bool> {
        Ok(self.file(file).is_ok())
    }

    async fn size(&self, file: &str) -> Result<u64> {
        Ok(self.file(file)?.size)
    }

    async fn read(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let plan = self.file(file)?;
        if offset.checked_add(len).is_none_or(|end| end > plan.size) {
            return Err(Error::Source {
                file: file.to_owned(),
                reason: format!(
                    "the range {offset}+{len} runs past its end ({} bytes)",
                    plan.size
                ),
            });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = (offset, offset + len - 1);
        let (head, body) = get_retrying(self.client, &plan.url, Some(range), &self.options).await?;
        match head.status {
            206 => {
                let content_range = head.content_range.as_deref();
                check_partial(&plan.url, offset, len, content_range, body.len() as u64)?;
                Ok(body)
            }
            200 => {
                let at = slice_of_full_body(&plan.url, offset, len, body.len() as u64)?;
                Ok(body[at].to_vec())
            }
            status => Err(Error::Source {
                file: plan.url.clone(),
                reason: format!("HTTP {status} to a Range request (206 or 200 expected)"),
            }),
        }
    }
}
