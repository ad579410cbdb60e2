//! When to retry a request and how long to wait: exponential backoff with a cap, and the
//! server's `Retry-After` when it sends one (429/503), also capped.

use std::time::Duration;

/// Retry and chunking settings of a download.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadOptions {
    /// Bytes per Range request (the last chunk of a file is shorter).
    pub chunk_bytes: u64,
    /// Files downloaded at the same time.
    pub parallel_files: usize,
    /// Failed requests in a row (without new bytes in between) before giving up.
    pub max_retries: u32,
    /// Full downloads of one file whose hash does not match before giving up.
    pub max_integrity_attempts: u32,
    /// The first backoff delay; doubled after each failure in a row.
    pub base_delay: Duration,
    /// The largest backoff delay.
    pub max_delay: Duration,
    /// The largest `Retry-After` honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: 32 << 20,
            parallel_files: 4,
            max_retries: 8,
            max_integrity_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl DownloadOptions {
    /// Small chunks and short delays, for tests against the local mock hub.
    pub fn for_tests() -> Self {
        Self {
            chunk_bytes: 256 << 10,
            parallel_files: 2,
            max_retries: 4,
            max_integrity_attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(2),
        }
    }

    /// The wait before retry number `failures` (1 = after the first failure): the server's
    /// `Retry-After` if given (capped), else `base · 2^(failures-1)` capped at `max_delay`.
    pub fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let shift = failures.saturating_sub(1).min(20);
        self.base_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_delay)
    }
}

/// What to do with an HTTP status (for a Range request of file bytes, or an API call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 200/206: read the body.
    Ok,
    /// 404/410: the thing does not exist; no retry.
    NotFound,
    /// 401/403: refused; no retry (except renewing an expired CDN URL once).
    Forbidden,
    /// 416: the range is outside the file; restart the file from 0.
    RangeNotSatisfiable,
    /// 408/425/429/5xx: try again later.
    Retry,
    /// Anything else: a clear error.
    Other,
}

/// Classifies an HTTP status.
pub fn classify(status: u16) -> StatusClass {
    match status {
        200 | 206 => StatusClass::Ok,
        404 | 410 => StatusClass::NotFound,
        401 | 403 => StatusClass::Forbidden,
        416 => StatusClass::RangeNotSatisfiable,
        408 | 425 | 429 | 500..=599 => StatusClass::Retry,
        _ => StatusClass::Other,
    }
}

/// Parses `Retry-After` as delay-seconds (the hub and CDNs send seconds; an HTTP date gives
/// `None`, and the normal backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses `Content-Range: bytes a-b/total` into `(a, b, total)` (`total` `None` for `*`).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b).then_some((a, b, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let o = DownloadOptions::default();
        assert_eq!(o.backoff(1, None), Duration::from_millis(500));
        assert_eq!(o.backoff(3, None), Duration::from_secs(2));
        assert_eq!(o.backoff(40, None), Duration::from_secs(30));
        assert_eq!(
            o.backoff(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            o.backoff(1, Some(Duration::from_secs(9999))),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn statuses_and_headers_are_read_as_the_hub_sends_them() {
        assert_eq!(classify(206), StatusClass::Ok);
        assert_eq!(classify(404), StatusClass::NotFound);
        assert_eq!(classify(403), StatusClass::Forbidden);
        assert_eq!(classify(429), StatusClass::Retry);
        assert_eq!(classify(503), StatusClass::Retry);
        assert_eq!(classify(416), StatusClass::RangeNotSatisfiable);
        assert_eq!(classify(418), StatusClass::Other);
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(
            parse_content_range("bytes 10-19/100"),
            Some((10, 19, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("bytes 19-10/100"), None);
    }
}
