//! How a request to `cbfs-gateway` is signed: the caller's cbfs signing
//! key over the method, the path with its query, a timestamp, a nonce and
//! the SHA-256 of the body.
//!
//! ```text
//! Authorization: cbfs-sig user="alice", ts="1700000000", nonce="<32 hex>", sig="<DER hex>"
//! X-Cbfs-Content-Sha256: <64 hex>  |  UNSIGNED-PAYLOAD (streamed bodies only)
//!
//! signed message = "cbfs-gateway/v1" 0x00 METHOD "\n" PATH_AND_QUERY "\n"
//!                  TIMESTAMP "\n" NONCE "\n" CONTENT_SHA256
//! ```
//!
//! The gateway refuses a timestamp too far from its clock and a nonce it
//! has seen; a streamed body (a pushed tar) is not hashed ahead, and rides
//! on TLS and on the signed nonce.

use cbfs_core::UserName;
use cbfs_core::umbral_pre::{PublicKey, Signature, Signer};
use sha2::{Digest, Sha256};

/// Signature domain of gateway requests.
pub const GATEWAY_DOMAIN: &str = "cbfs-gateway/v1";
/// The header that names the body's SHA-256.
pub const CONTENT_SHA256_HEADER: &str = "x-cbfs-content-sha256";
/// What [`CONTENT_SHA256_HEADER`] says of a body that is streamed, not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The scheme of the `Authorization` header.
pub const AUTH_SCHEME: &str = "cbfs-sig";

/// What the caller signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path and query as sent (`/v1/fs/fs1/ls?path=%2Fhome`).
    pub path_and_query: &'a str,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    /// 16 random bytes, hex.
    pub nonce: &'a str,
    /// Hex of the body's SHA-256, or [`UNSIGNED_PAYLOAD`].
    pub content_sha256: &'a str,
}

impl SignedParts<'_> {
    /// The signed message.
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(128 + self.path_and_query.len());
        m.extend_from_slice(GATEWAY_DOMAIN.as_bytes());
        m.push(0);
        for (i, part) in [
            self.method,
            self.path_and_query,
            &self.timestamp.to_string(),
            self.nonce,
            self.content_sha256,
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                m.push(b'\n');
            }
            m.extend_from_slice(part.as_bytes());
        }
        m
    }
}

/// Hex of the SHA-256 of a body.
pub fn content_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A fresh nonce: 16 random bytes, hex.
pub fn new_nonce() -> String {
    let mut n = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
    hex::encode(n)
}

/// The `Authorization` header value for `parts`, signed by `user`'s key.
pub fn authorization(user: &UserName, signer: &Signer, parts: &SignedParts<'_>) -> String {
    let sig = hex::encode(signer.sign(&parts.message()).to_der_bytes());
    format!(
        "{AUTH_SCHEME} user=\"{user}\", ts=\"{}\", nonce=\"{}\", sig=\"{sig}\"",
        parts.timestamp, parts.nonce
    )
}

/// An `Authorization` header, parsed (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Who says they ask.
    pub user: String,
    /// The signed timestamp.
    pub timestamp: i64,
    /// The signed nonce.
    pub nonce: String,
    /// The DER signature.
    pub signature: Vec<u8>,
}

impl Authorization {
    /// Parses the header value, or says why it is not one.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix(AUTH_SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| {
                format!("the Authorization header must use the `{AUTH_SCHEME}` scheme")
            })?;
        let (mut user, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for item in rest.split(',') {
            let (k, v) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("malformed Authorization item `{}`", item.trim()))?;
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(|| format!("Authorization item `{k}` must be quoted"))?;
            let slot = match k {
                "user" => &mut user,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                other => return Err(format!("unknown Authorization item `{other}`")),
            };
            if slot.replace(v.to_owned()).is_some() {
                return Err(format!("Authorization item `{k}` is given twice"));
            }
        }
        let need = |v: Option<String>, what: &str| {
            v.ok_or_else(|| format!("the Authorization header has no `{what}`"))
        };
        let nonce = need(nonce, "nonce")?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the nonce must be 16 bytes in hex".into());
        }
        Ok(Authorization {
            user: need(user, "user")?,
            timestamp: need(ts, "ts")?
                .parse()
                .map_err(|_| "the timestamp is not a number".to_owned())?,
            nonce: nonce.to_ascii_lowercase(),
            signature: hex::decode(need(sig, "sig")?)
                .map_err(|_| "the signature is not hex".to_owned())?,
        })
    }

    /// Whether `key` signed `parts` (whose timestamp and nonce must be this
    /// header's).
    pub fn verify(&self, key: &PublicKey, parts: &SignedParts<'_>) -> bool {
        if parts.timestamp != self.timestamp || parts.nonce != self.nonce {
            return false;
        }
        Signature::try_from_der_bytes(&self.signature)
            .is_ok_and(|s| s.verify(key, &parts.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbfs_core::UserSecret;

    #[test]
    fn a_signed_header_verifies_and_any_change_does_not() {
        let alice = UserSecret::generate();
        let name = UserName::new("alice").unwrap();
        let nonce = new_nonce();
        let body = content_sha256(b"{}");
        let parts = SignedParts {
            method: "POST",
            path_and_query: "/v1/fs/fs1/jobs",
            timestamp: 1_700_000_000,
            nonce: &nonce,
            content_sha256: &body,
        };
        let header = authorization(&name, &alice.signer(), &parts);
        let parsed = Authorization::parse(&header).unwrap();
        assert_eq!(parsed.user, "alice");
        assert!(parsed.verify(&alice.verifying_key(), &parts));
        assert!(!parsed.verify(&UserSecret::generate().verifying_key(), &parts));
        for changed in [
            SignedParts {
                method: "GET",
                ..parts.clone()
            },
            SignedParts {
                path_and_query: "/v1/fs/fs2/jobs",
                ..parts.clone()
            },
            SignedParts {
                content_sha256: UNSIGNED_PAYLOAD,
                ..parts.clone()
            },
            SignedParts {
                timestamp: 1,
                ..parts.clone()
            },
        ] {
            assert!(
                !parsed.verify(&alice.verifying_key(), &changed),
                "{changed:?}"
            );
        }
        for bad in [
            "Bearer x",
            "cbfs-sig user=\"a\"",
            "cbfs-sig user=a, ts=\"1\", nonce=\"00\", sig=\"00\"",
            "cbfs-sig user=\"a\", user=\"b\", ts=\"1\", nonce=\"00000000000000000000000000000000\", sig=\"00\"",
        ] {
            assert!(Authorization::parse(bad).is_err(), "{bad}");
        }
    }
}
