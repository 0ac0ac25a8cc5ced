//! The `cbfs1` age stanza: a member's file key wrapped under its group key.
//!
//! ```text
//! -> cbfs1 <group id: 32 lowercase hex> <nonce: 12 bytes, base64 without padding>
//! <body: ChaCha20-Poly1305(group key, nonce, file key, ad), 32 bytes>
//! ad = "cbfs1 file key\0" || member id (16 bytes) || group id (16 bytes)
//! ```
//!
//! age also writes one random "grease" stanza (tag ending in `-grease`) per header;
//! readers skip those. Any other stanza, or a second cbfs1 stanza, is refused.

use std::cell::RefCell;
use std::collections::HashSet;

use age::{DecryptError, EncryptError};
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::ids::{GroupId, MemberId, parse_hex16};
use crate::keys::{GroupKey, GroupKeys};

/// The stanza's tag.
pub(crate) const TAG: &str = "cbfs1";
const AD_DOMAIN: &[u8] = b"cbfs1 file key\0";
const NONCE_LEN: usize = 12;
const BODY_LEN: usize = FILE_KEY_BYTES + 16;

fn associated_data(member: &MemberId, group: &GroupId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_DOMAIN.len() + 32);
    ad.extend_from_slice(AD_DOMAIN);
    ad.extend_from_slice(member.as_bytes());
    ad.extend_from_slice(group.as_bytes());
    ad
}

fn cipher(key: &GroupKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(key.expose_secret()))
}

/// Wraps a member's file key under a group key.
pub(crate) struct CbfsRecipient<'a> {
    pub(crate) member: MemberId,
    pub(crate) key: &'a GroupKey,
}

impl age::Recipient for CbfsRecipient<'_> {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), EncryptError> {
        // A nonce needs to be unique, not secret: the thread's CSPRNG
        // (seeded from the OS) spares a system call per member.
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let group = self.key.id();
        let ad = associated_data(&self.member, &group);
        let body = cipher(self.key)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: file_key.expose_secret(),
                    aad: &ad,
                },
            )
            .map_err(|_| EncryptError::Io(std::io::Error::other("cbfs1 wrap failed")))?;
        let stanza = Stanza {
            tag: TAG.to_owned(),
            args: vec![group.to_string(), STANDARD_NO_PAD.encode(nonce)],
            body,
        };
        // A label of our own: age refuses to mix this stanza with other recipients.
        Ok((vec![stanza], HashSet::from([TAG.to_owned()])))
    }
}

/// What the identity saw, for precise errors after age gives up.
#[derive(Debug, Default)]
pub(crate) enum Outcome {
    #[default]
    NotCalled,
    /// The header breaks the cbfs1 rules.
    BadStanza(String),
    /// The stanza names a group we have no key for.
    NoKey(GroupId),
    /// The stanza did not authenticate under the group key.
    Unwrap(GroupId),
    /// Unwrapped fine.
    Ok,
}

/// Unwraps a member's file key with the group keys at hand.
pub(crate) struct CbfsIdentity<'a> {
    pub(crate) member: MemberId,
    pub(crate) keys: &'a dyn GroupKeys,
    pub(crate) outcome: RefCell<Outcome>,
}

impl CbfsIdentity<'_> {
    fn bad(&self, reason: impl Into<String>) -> Option<Result<FileKey, DecryptError>> {
        *self.outcome.borrow_mut() = Outcome::BadStanza(reason.into());
        Some(Err(DecryptError::InvalidHeader))
    }
}

impl age::Identity for CbfsIdentity<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        self.unwrap_stanzas(std::slice::from_ref(stanza))
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, DecryptError>> {
        // age adds "grease" stanzas (tags ending in "-grease") to every header; they
        // are ignored. Anything else must be exactly one cbfs1 stanza.
        let mut real = stanzas.iter().filter(|s| !s.tag.ends_with("-grease"));
        let (Some(stanza), None) = (real.next(), real.next()) else {
            let count = stanzas
                .iter()
                .filter(|s| !s.tag.ends_with("-grease"))
                .count();
            return self.bad(format!(
                "expected exactly one non-grease stanza, found {count}"
            ));
        };
        if stanza.tag != TAG {
            return self.bad(format!("stanza type is {:?}, not {TAG:?}", stanza.tag));
        }
        let [group, nonce] = stanza.args.as_slice() else {
            return self.bad(format!(
                "cbfs1 stanza has {} arguments, not 2",
                stanza.args.len()
            ));
        };
        let Ok(group) = parse_hex16(group.as_bytes()).map(GroupId::from_bytes) else {
            return self.bad("cbfs1 stanza: bad group id");
        };
        let nonce = match STANDARD_NO_PAD.decode(nonce) {
            Ok(n) if n.len() == NONCE_LEN && STANDARD_NO_PAD.encode(&n) == *nonce => n,
            _ => return self.bad("cbfs1 stanza: bad nonce"),
        };
        if stanza.body.len() != BODY_LEN {
            return self.bad(format!(
                "cbfs1 stanza body is {} bytes, not {BODY_LEN}",
                stanza.body.len()
            ));
        }
        let Some(key) = self.keys.group_key(&group) else {
            *self.outcome.borrow_mut() = Outcome::NoKey(group);
            return None;
        };
        let ad = associated_data(&self.member, &group);
        let opened = cipher(key).decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &stanza.body,
                aad: &ad,
            },
        );
        match opened {
            Ok(plain) if plain.len() == FILE_KEY_BYTES => {
                *self.outcome.borrow_mut() = Outcome::Ok;
                let mut fk = [0u8; FILE_KEY_BYTES];
                fk.copy_from_slice(&plain);
                let mut plain = plain;
                zeroize::Zeroize::zeroize(&mut plain);
                let file_key = FileKey::init_with_mut(|k| *k = fk);
                zeroize::Zeroize::zeroize(&mut fk);
                Some(Ok(file_key))
            }
            _ => {
                *self.outcome.borrow_mut() = Outcome::Unwrap(group);
                Some(Err(DecryptError::DecryptionFailed))
            }
        }
    }
}

/// The group id named by the cbfs1 stanza in the first bytes of a member payload,
/// read without any key; `None` unless there is exactly one cbfs1 stanza.
pub(crate) fn group_in_header(prefix: &[u8]) -> Option<GroupId> {
    let mut lines = prefix.split(|&b| b == b'\n');
    if lines.next()? != b"age-encryption.org/v1" {
        return None;
    }
    let mut found = None;
    for line in lines {
        if line.starts_with(b"--- ") {
            return found;
        }
        if let Some(rest) = line.strip_prefix(b"-> cbfs1 ") {
            let hex = rest.split(|&b| b == b' ').next()?;
            let group = GroupId::from_bytes(parse_hex16(hex).ok()?);
            if found.replace(group).is_some() {
                return None;
            }
        }
    }
    None
}
