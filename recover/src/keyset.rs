//! Finding the public keyset: the store's newest copy, or a file the caller trusts.

use std::path::Path;

use cbfs_core::Keyset;
use cbfs_format::layout;

use crate::error::{Error, Result};
use crate::source::ObjectSource;

/// The keyset to verify a store with.
///
/// With `override_file`, that file (verified). Otherwise the newest
/// `keysets/<serial>.json` in the store, verified against the administrator
/// key written inside it. A newest copy that fails to verify is an error (an
/// older one is not silently used instead: that would be a rollback).
///
/// A keyset from the store proves itself only to a caller that checks its
/// administrator key: [`identify`](crate::identify) does so for a root secret.
/// Callers with a scope secret or a user key should pass a keyset they trust.
pub fn load_keyset(source: &dyn ObjectSource, override_file: Option<&Path>) -> Result<Keyset> {
    if let Some(path) = override_file {
        return Keyset::load(path).map_err(|e| Error::key(format!("keyset {}", path.display()), e));
    }
    let newest = source
        .list(layout::KEYSETS)?
        .into_iter()
        .filter_map(|key| parse_keyset_key(&key).map(|serial| (serial, key)))
        .max();
    let Some((_, key)) = newest else {
        return Err(Error::Keyset(
            "the store holds no keyset (keysets/<serial>.json); give one with --keyset KEYSET.json"
                .into(),
        ));
    };
    let bytes = source.get(&key)?;
    Keyset::from_bytes(&bytes, &key).map_err(|e| {
        Error::key(
            format!(
                "the store's newest keyset {key} does not verify; give a trusted copy with --keyset"
            ),
            e,
        )
    })
}

fn parse_keyset_key(key: &str) -> Option<u64> {
    let serial = key.strip_prefix(layout::KEYSETS)?.strip_suffix(".json")?;
    if serial.len() != 20 || !serial.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    serial.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_keys() {
        assert_eq!(parse_keyset_key(&layout::keyset(12)), Some(12));
        assert_eq!(parse_keyset_key("keysets/12.json"), None);
        assert_eq!(parse_keyset_key("keysets/0000000000000000001x.json"), None);
    }
}
