//! The platform-free half of reading weights over HTTP: URLs in the Hugging Face layout and the
//! checks on ranged answers (`Range` / `206` / `Content-Range`). The browser source that sends
//! the requests (`web::http::HttpSource`) uses these, so they are tested natively.

use crate::error::{Error, Result};

/// The base URL of a repository at a revision in the Hugging Face layout:
/// `{host}/{repo}/resolve/{revision}` (files are `{base}/{path}`).
///
/// - host: `https://huggingface.co`, or a mirror / local host (no trailing slash needed)
/// - repo: `owner/name`
/// - revision: a branch name or, for immutable URLs, a 40-hex commit sha
pub fn resolve_base(host: &str, repo: &str, revision: &str) -> String {
    format!(
        "{}/{}/resolve/{}",
        host.trim_end_matches('/'),
        repo.trim_matches('/'),
        revision
    )
}

/// `{base}/{file}`, each path segment of `file` percent-encoded where a URL needs it.
pub fn file_url(base: &str, file: &str) -> String {
    let path: Vec<String> = file
        .split('/')
        .filter(|s| !s.is_empty())
        .map(encode_segment)
        .collect();
    format!("{}/{}", base.trim_end_matches('/'), path.join("/"))
}

fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Range` header value for bytes `offset .. offset + len` (`len > 0`).
pub fn range_header(offset: u64, len: u64) -> String {
    format!("bytes={}-{}", offset, offset + len - 1)
}

/// A parsed `Content-Range: bytes a-b/N` (or `bytes */N` on a 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte and last byte (inclusive); `None` for `*`.
    pub range: Option<(u64, u64)>,
    /// The full size; `None` for `*`.
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses the header value; `None` if it is not a byte range.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        let range = match range.trim() {
            "*" => None,
            r => {
                let (a, b) = r.split_once('-')?;
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || total.is_some_and(|t| b >= t) {
                    return None;
                }
                Some((a, b))
            }
        };
        Some(Self { range, total })
    }
}

/// What a `206` answer to `range_header(offset, len)` must say: its `Content-Range` names
/// exactly the bytes asked for (a server may shorten a range that runs past the end).
///
/// - url: for the message
/// - content_range: the header, if the browser could read it (CORS must expose it)
/// - body_len: bytes actually received
pub fn check_partial(
    url: &str,
    offset: u64,
    len: u64,
    content_range: Option<&str>,
    body_len: u64,
) -> Result<()> {
    let fail = |reason: String| {
        Err(Error::Source {
            file: url.to_owned(),
            reason,
        })
    };
    let want = (offset, offset + len - 1);
    match content_range {
        None => {
            return fail(
                "206 without a readable Content-Range header (the server must expose it to \
                 CORS with Access-Control-Expose-Headers)"
                    .into(),
            );
        }
        Some(value) => match ContentRange::parse(value) {
            Some(ContentRange {
                range: Some(got), ..
            }) if got == want => {}
            Some(ContentRange {
                range: Some(got),
                total,
            }) => {
                let size = total.map_or("?".into(), |t| t.to_string());
                return fail(format!(
                    "asked for bytes {}-{}, the server sent {}-{} of {size} (is the range \
                     outside the file?)",
                    want.0, want.1, got.0, got.1
                ));
            }
            _ => return fail(format!("206 with an unreadable Content-Range \"{value}\"")),
        },
    }
    if body_len != len {
        return fail(format!(
            "asked for {len} bytes at {offset}, the body has {body_len} (connection cut?)"
        ));
    }
    Ok(())
}

/// Where the asked bytes sit in a `200` answer that ignored the `Range` header and sent the
/// whole file from byte 0: `offset..offset+len` of the body, if the body reaches that far.
pub fn slice_of_full_body(
    url: &str,
    offset: u64,
    len: u64,
    received: u64,
) -> Result<std::ops::Range<usize>> {
    let end = offset + len;
    if received < end {
        return Err(Error::Source {
            file: url.to_owned(),
            reason: format!(
                "the server ignored the Range header and sent the whole file, which ends at \
                 byte {received}, before the asked range {offset}-{} ends",
                end - 1
            ),
        });
    }
    let to_usize = |v: u64| {
        usize::try_from(v).map_err(|_| Error::Source {
            file: url.to_owned(),
            reason: format!("offset {v} does not fit in memory on this platform"),
        })
    };
    Ok(to_usize(offset)?..to_usize(end)?)
}

/// An HTTP error status as a readable reason, with what the usual ones mean here.
pub fn status_reason(status: u16, status_text: &str) -> String {
    let hint = match status {
        401 | 403 => ": not allowed (a gated or private repository, or an expired CDN link)",
        404 => ": not found (wrong repository, revision or file name)",
        416 => ": the range is outside the file",
        429 => ": too many requests; wait a minute and try again",
        500..=599 => ": the server failed; try again later",
        _ => "",
    };
    let text = if status_text.is_empty() {
        String::new()
    } else {
        format!(" {status_text}")
    };
    format!("HTTP {status}{text}{hint}")
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_hub_layout() {
        let base = resolve_base("https://huggingface.co/", "Qwen/Qwen-Image-Layered", "main");
        assert_eq!(
            base,
            "https://huggingface.co/Qwen/Qwen-Image-Layered/resolve/main"
        );
        assert_eq!(
            file_url(&base, "vae/config.json"),
            "https://huggingface.co/Qwen/Qwen-Image-Layered/resolve/main/vae/config.json"
        );
        assert_eq!(
            file_url("http://h/r/", "a b/c#d.json"),
            "http://h/r/a%20b/c%23d.json"
        );
    }

    #[test]
    fn content_range_parses_and_rejects() {
        assert_eq!(
            ContentRange::parse("bytes 10-19/100"),
            Some(ContentRange {
                range: Some((10, 19)),
                total: Some(100)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes */42"),
            Some(ContentRange {
                range: None,
                total: Some(42)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 0-0/*").unwrap().range,
            Some((0, 0))
        );
        for bad in [
            "items 0-1/2",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes x-1/2",
            "bytes 0-1",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_partial_answer_must_be_the_asked_range() {
        assert_eq!(range_header(100, 8), "bytes=100-107");
        check_partial("u", 100, 8, Some("bytes 100-107/1000"), 8).unwrap();
        let err = check_partial("u", 100, 8, Some("bytes 100-103/104"), 4).unwrap_err();
        assert!(
            err.to_string().contains("the server sent 100-103 of 104"),
            "{err}"
        );
        let err = check_partial("u", 100, 8, None, 8).unwrap_err();
        assert!(err.to_string().contains("Content-Range"), "{err}");
        let err = check_partial("u", 100, 8, Some("bytes 100-107/1000"), 5).unwrap_err();
        assert!(err.to_string().contains("the body has 5"), "{err}");
    }

    #[test]
    fn a_full_answer_is_sliced_at_the_offset() {
        assert_eq!(slice_of_full_body("u", 10, 5, 100).unwrap(), 10..15);
        let err = slice_of_full_body("http://x/f", 10, 5, 12).unwrap_err();
        assert!(err.to_string().contains("http://x/f"), "{err}");
        assert!(
            err.to_string().contains("ignored the Range header"),
            "{err}"
        );
    }

    #[test]
    fn statuses_read_plainly() {
        assert_eq!(
            status_reason(404, "Not Found"),
            "HTTP 404 Not Found: not found (wrong repository, revision or file name)"
        );
        assert_eq!(status_reason(418, ""), "HTTP 418");
    }
}
