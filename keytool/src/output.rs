//! Exit codes and printing.

use cbfs_core::Error;

/// Maps an error to the documented exit code.
pub fn exit_code(err: &anyhow::Error) -> u8 {
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
        Some(e) if e.is_transient() => 5,
        Some(Error::Kms { .. }) => 3,
        _ => 1,
    }
}

/// Prints either the JSON value or the human text.
pub fn emit(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON values serialize"));
    } else {
        print!("{}", human());
    }
}
