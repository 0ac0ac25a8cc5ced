//! Validated names: file systems, scopes and users.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn validate(kind: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    let first = value.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name: 1 to 64 bytes of letters, digits, `.`, `_`, `-`.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

name_type!(
    /// The label of a scope: the unit of cryptographic access control.
    ScopeLabel,
    "scope label"
);
name_type!(
    /// The name of a file system (one root secret each).
    FsName,
    "file system name"
);
name_type!(
    /// The name of a user or service identity.
    UserName,
    "user name"
);

impl ScopeLabel {
    /// The scope that always exists and receives files no rule matches.
    pub fn default_scope() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_names() {
        for ok in ["default", "alice", "proj-1.home_dir", "A9"] {
            ScopeLabel::new(ok).unwrap();
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "-x", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            let err = ScopeLabel::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid scope label"), "{err}");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<UserName>("\"../etc\"").is_err());
        let n: UserName = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"bob\"");
    }
}
