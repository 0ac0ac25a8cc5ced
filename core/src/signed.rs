//! Signed JSON documents: keysets, user keys and grants.
//!
//! A document is one JSON object whose fields are the body plus a
//! `"signature"` field. The signed message is a domain string, a zero byte,
//! and the compact JSON of the body as this crate serializes it (fixed field
//! order, maps sorted), so the signature does not depend on how the file was
//! formatted.

use serde::{Serialize, de::DeserializeOwned};
use umbral_pre::{PublicKey, Signature, Signer};

use crate::error::{Error, Result};

fn message<T: Serialize>(domain: &str, body: &T) -> Vec<u8> {
    let mut msg = Vec::with_capacity(256);
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(&serde_json::to_vec(body).expect("documents serialize"));
    msg
}

/// Serializes `body` with its signature, pretty-printed, ending in a newline.
pub(crate) fn sign<T: Serialize>(domain: &str, body: &T, signer: &Signer) -> Vec<u8> {
    let signature = signer.sign(&message(domain, body));
    let mut value = serde_json::to_value(body).expect("documents serialize");
    value
        .as_object_mut()
        .expect("documents are objects")
        .insert(
            "signature".into(),
            hex::encode(signature.to_der_bytes()).into(),
        );
    let mut out = serde_json::to_vec_pretty(&value).expect("documents serialize");
    out.push(b'\n');
    out
}

/// Parses a document. The caller checks the signature with [`verify`] once it
/// knows which key must have made it.
pub(crate) fn parse<T: DeserializeOwned>(
    kind: &'static str,
    location: &str,
    bytes: &[u8],
) -> Result<(T, Signature)> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::doc(kind, location, format!("not valid JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| Error::doc(kind, location, "not a JSON object"))?;
    let sig_hex = object
        .remove("signature")
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| Error::doc(kind, location, "it has no signature"))?;
    let sig_bytes = hex::decode(&sig_hex)
        .map_err(|_| Error::doc(kind, location, "the signature is not hex"))?;
    let signature = Signature::try_from_der_bytes(&sig_bytes)
        .map_err(|e| Error::doc(kind, location, format!("malformed signature: {e}")))?;
    let body: T = serde_json::from_value(value)
        .map_err(|e| Error::doc(kind, location, format!("unexpected content: {e}")))?;
    Ok((body, signature))
}

/// Checks that `key` signed `body` in the given domain.
pub(crate) fn verify<T: Serialize>(
    kind: &'static str,
    location: &str,
    domain: &str,
    body: &T,
    signature: &Signature,
    key: &PublicKey,
) -> Result<()> {
    if signature.verify(key, &message(domain, body)) {
        Ok(())
    } else {
        Err(Error::doc(
            kind,
            location,
            "the signature does not verify: the file was altered or signed by another key",
        ))
    }
}

/// The current time in RFC 3339, to the second, UTC.
pub(crate) fn now_rfc3339() -> String {
    let now = crate::clock::now()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of a UTC time succeeds")
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> std::result::Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time (like 2027-01-31T00:00:00Z): {e}"))
}
