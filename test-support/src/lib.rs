//! What both binaries' unit tests share: a mocked kube `Client` (`api_mock`) and the
//! example values they build on. A dev-dependency only.

pub mod api_mock;

/// A well-formed digest of 64 `c`s (`sha256:aaaa…`), one per character: tests tell
/// digests apart by their letter.
pub fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}
