//! Random 16-byte identifiers shown as 32 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};

use crate::error::Error;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = 16;

            /// A fresh random id from the operating system's generator.
            pub fn random() -> Self {
                Self::random_with_rng(&mut rand::rngs::OsRng)
            }

            /// A fresh random id from the given generator. Never all zeros.
            pub fn random_with_rng(rng: &mut (impl RngCore + CryptoRng)) -> Self {
                loop {
                    let mut bytes = [0u8; 16];
                    rng.fill_bytes(&mut bytes);
                    if bytes != [0u8; 16] {
                        return Self(bytes);
                    }
                }
            }

            /// The id with these bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The id's bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// Whether all bytes are zero (never true of a generated id).
            #[allow(dead_code)]
            pub(crate) fn is_zero(&self) -> bool {
                self.0 == [0u8; 16]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Strict: exactly 32 lowercase hex characters.
            fn from_str(s: &str) -> Result<Self, Error> {
                parse_hex16(s.as_bytes()).map(Self)
            }
        }
    };
}

/// Parses exactly 32 lowercase hex characters.
pub(crate) fn parse_hex16(text: &[u8]) -> Result<[u8; 16], Error> {
    let bad = || Error::Malformed {
        object: crate::error::ObjectKind::Id,
        offset: 0,
        reason: format!(
            "expected 32 lowercase hex characters, got {:?}",
            String::from_utf8_lossy(&text[..text.len().min(64)])
        ),
    };
    if text.len() != 32 || !text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(text, &mut out).map_err(|_| bad())?;
    Ok(out)
}

id_type!(
    /// Names one segment (one tar object in the store).
    SegmentId
);
id_type!(
    /// Names one member (one file version). Kept when GC copies the member to a new segment.
    MemberId
);
id_type!(
    /// Names one group key: one per (segment, scope).
    GroupId
);
id_type!(
    /// Names one snapshot (one tiering run).
    SnapshotId
);
id_type!(
    /// Names one record of garbage collection: a retention record, a
    /// collection, a writer's run record, a collector's lease.
    RecordId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let id = MemberId::from_bytes([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<MemberId>().unwrap(), id);
        assert!(
            "AB".repeat(16).parse::<MemberId>().is_err(),
            "uppercase refused"
        );
        assert!(
            "ab".repeat(15).parse::<MemberId>().is_err(),
            "short refused"
        );
        assert!(
            format!("{text}0").parse::<MemberId>().is_err(),
            "long refused"
        );
        assert!(format!(" {}", &text[1..]).parse::<MemberId>().is_err());
        assert!("g".repeat(32).parse::<SegmentId>().is_err());
        assert_eq!(format!("{id:?}"), format!("MemberId({text})"));
    }

    #[test]
    fn random_ids_differ_and_are_not_zero() {
        let a = GroupId::random();
        let b = GroupId::random();
        assert_ne!(a, b);
        assert!(!a.is_zero());
    }
}
