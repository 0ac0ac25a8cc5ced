//! Object keys: which names a store accepts.

use crate::error::{Error, Result};

/// The longest key accepted, in bytes (S3 allows 1024 for the whole name,
/// store prefix included).
pub const MAX_KEY_LEN: usize = 900;

/// Checks that `key` is an acceptable object key.
///
/// A key is a relative, `/`-separated name such as `segments/0a1b.tar`:
///
/// - not empty, at most [`MAX_KEY_LEN`] bytes;
/// - no leading or trailing `/`, no empty part (`a//b`);
/// - every part made of ASCII letters, digits, `-`, `_` and `.`, and not
///   starting with `.` (so no `.` or `..` parts, and names beginning with a
///   dot are left to the store's own bookkeeping).
///
/// The same rules hold on every backend, so a key that works on a local
/// directory works on S3 and the other way round.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| Error::BadKey {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("a key must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad("a key must be at most 900 bytes long"));
    }
    if key.starts_with('/') {
        return Err(bad("a key must be relative (no leading '/')"));
    }
    for part in key.split('/') {
        validate_part(part).map_err(bad)?;
    }
    Ok(())
}

/// Checks a listing prefix: empty (everything), or a key with an optional
/// trailing `/`. Returns the prefix without that `/`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<&str> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        if prefix.is_empty() {
            return Ok("");
        }
        return Err(Error::BadKey {
            key: prefix.to_string(),
            reason: "a prefix must be relative (no leading '/')",
        });
    }
    validate_key(trimmed).map_err(|e| match e {
        Error::BadKey { reason, .. } => Error::BadKey {
            key: prefix.to_string(),
            reason,
        },
        other => other,
    })?;
    Ok(trimmed)
}

fn validate_part(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("a key must not have empty parts (leading, trailing or doubled '/')");
    }
    if part == "." || part == ".." {
        return Err("a key must not have '.' or '..' parts");
    }
    if part.starts_with('.') {
        return Err("a key part must not start with '.'");
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("a key may only use ASCII letters, digits, '-', '_', '.' and '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys() {
        for key in [
            "a",
            "segments/0a1b.tar",
            "snapshots/2024-01-01_00.manifest",
            "a/b/c/d",
            "x..y",
        ] {
            validate_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }

    #[test]
    fn bad_keys() {
        for key in [
            "",
            "/abs",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "..",
            ".hidden",
            "a/.staging",
            "sp ace",
            "hash#1",
            "back\\slash",
            "q?",
            "caf\u{e9}",
            "nul\0",
        ] {
            let err = validate_key(key).unwrap_err();
            assert!(matches!(err, Error::BadKey { .. }), "{key}: {err}");
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn prefixes() {
        assert_eq!(validate_prefix("").unwrap(), "");
        assert_eq!(validate_prefix("segments/").unwrap(), "segments");
        assert_eq!(validate_prefix("a/b").unwrap(), "a/b");
        assert!(validate_prefix("/").is_err());
        assert!(validate_prefix("../").is_err());
        assert!(validate_prefix("a//").is_err());
    }
}
