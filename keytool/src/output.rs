//! Exit codes and printing.

use cbfs_core::Error;

/// Maps an error to the documented exit code.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<crate::nodes::TooFewNodes>().is_some() {
        return 6;
    }
    if let Some(f) = err.downcast_ref::<crate::rotate::StoreFailed>() {
        return if f.1 { 5 } else { 1 };
    }
    if err.downcast_ref::<crate::rotate::Damaged>().is_some()
        || err
            .downcast_ref::<crate::nodes::NodeKeyMismatch>()
            .is_some()
    {
        return 4;
    }
    match err.downcast_ref::<Error>() {
        Some(
            Error::NotFound { .. }
            | Error::InsecurePermissions { .. }
            | Error::LockedKey { .. }
            | Error::AgeUnwrap { .. }
            | Error::Keyring { .. }
            | Error::Malformed { .. }
            | Error::AlreadyExists { .. },
        ) => 3,
        Some(Error::Document { .. } | Error::KeyMismatch { .. }) => 4,
        Some(Error::Usage(_) | Error::InvalidName { .. } | Error::BadSource { .. }) => 2,
        Some(e) if e.is_transient() => 5,
        Some(Error::Kms { .. }) => 3,
        _ => 1,
    }
}

/// Prints either the JSON value or the human text. A closed pipe (as in
/// `cbfs-keytool list | head -1`) is not an error.
pub fn emit(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    let text = if json {
        let mut t = serde_json::to_string_pretty(&value).expect("JSON values serialize");
        t.push('\n');
        t
    } else {
        human()
    };
    write_stdout(text.as_bytes());
}

/// Writes to stdout, ignoring a closed pipe.
pub fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}
