//! Verifying a downloaded file against the hash the hub publishes for it: the sha256 (the Git
//! LFS oid, also sent as `X-Linked-Etag`) for LFS files, the git blob sha1 (the tree's `oid`)
//! for small regular files. Hashing is incremental, so no file is ever held whole.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::error::{DResult, DownloadError};

/// The published hash of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Check {
    /// sha256 of the contents, lower-case hex (LFS files).
    Sha256(String),
    /// sha1 of `"blob {size}\0" + contents`, lower-case hex (regular git files).
    GitBlobSha1(String),
}

fn hex_of_len(hex: &str, len: usize, what: &str, path: &str) -> DResult<String> {
    if hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(DownloadError::Plan {
            reason: format!("\"{path}\": {what} \"{hex}\" is not {len} hex digits"),
        })
    }
}

impl Check {
    /// A sha256 check; `path` is for the error message.
    pub fn sha256(hex: &str, path: &str) -> DResult<Self> {
        hex_of_len(hex, 64, "LFS sha256", path).map(Self::Sha256)
    }

    /// A git blob sha1 check; `path` is for the error message.
    pub fn git_blob_sha1(hex: &str, path: &str) -> DResult<Self> {
        hex_of_len(hex, 40, "git blob oid", path).map(Self::GitBlobSha1)
    }

    /// The algorithm's name, for messages.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "sha256",
            Self::GitBlobSha1(_) => "git blob sha1",
        }
    }

    /// The expected hex digest.
    pub fn expected(&self) -> &str {
        match self {
            Self::Sha256(h) | Self::GitBlobSha1(h) => h,
        }
    }

    /// A fresh incremental hasher for a file of `size` bytes.
    pub fn hasher(&self, size: u64) -> FileHasher {
        match self {
            Self::Sha256(_) => FileHasher::Sha256(Sha256::new()),
            Self::GitBlobSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                FileHasher::Sha1(h)
            }
        }
    }
}

/// An incremental hash of a file's bytes, fed in order.
#[derive(Clone)]
pub enum FileHasher {
    /// For [`Check::Sha256`].
    Sha256(Sha256),
    /// For [`Check::GitBlobSha1`] (already fed the blob header).
    Sha1(Sha1),
}

impl FileHasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha1(h) => h.update(bytes),
        }
    }

    /// The lower-case hex digest.
    pub fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The sha256 an `ETag`/`X-Linked-Etag` header carries, if it is one (quotes and `W/` removed).
pub fn etag_sha256(etag: &str) -> Option<String> {
    let t = etag.trim().trim_start_matches("W/").trim_matches('"');
    (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_known_values_when_fed_in_pieces() {
        // sha256("abc") and git's blob id of "hello\n" (`git hash-object`).
        let c = Check::sha256(
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "f",
        )
        .unwrap();
        let mut h = c.hasher(3);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish_hex(), c.expected());
        let g = Check::git_blob_sha1("ce013625030ba8dba906f756967f9e9ca394464a", "f").unwrap();
        let mut h = g.hasher(6);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(h.finish_hex(), g.expected());
        assert!(Check::sha256("abc", "f").is_err());
    }

    #[test]
    fn etags_carry_a_sha256_only_when_they_are_one() {
        let sha = "ab".repeat(32);
        assert_eq!(etag_sha256(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(etag_sha256(&format!("W/\"{sha}\"")), Some(sha));
        assert_eq!(
            etag_sha256("\"ce013625030ba8dba906f756967f9e9ca394464a\""),
            None
        );
    }
}
