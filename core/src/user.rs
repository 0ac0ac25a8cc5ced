//! A user's public key file (`NAME.pub`): the receiving key of delegations
//! and the key that verifies the user's requests, self-signed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use umbral_pre::PublicKey;

use crate::error::{Error, Result};
use crate::ids::UserName;
#[cfg(feature = "secrets")]
use crate::keys::UserSecret;
use crate::keys::{fingerprint, public_key_from_hex, public_key_hex};
use crate::signed;

const FORMAT: &str = "cbfs-user";
pub(crate) const VERSION: u32 = 1;
const DOMAIN: &str = "cbfs-user/v1";
const KIND: &str = "user public key";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: String,
    version: u32,
    name: UserName,
    created: String,
    public_key: String,
    verifying_key: String,
}

/// A user's verified public keys.
#[derive(Clone, Debug, PartialEq)]
pub struct UserPublic {
    name: UserName,
    created: String,
    public_key: PublicKey,
    verifying_key: PublicKey,
}

impl UserPublic {
    /// A user's public keys as the administrator signed them in a
    /// delegation record (to issue that delegation again).
    pub fn from_record(record: &crate::DelegationRecord) -> Self {
        UserPublic {
            name: record.user().clone(),
            created: record.issued().to_owned(),
            public_key: *record.user_public_key(),
            verifying_key: *record.user_verifying_key(),
        }
    }

    /// The public half of `secret`, under `name`.
    #[cfg(feature = "secrets")]
    pub fn from_secret(name: UserName, secret: &UserSecret) -> Self {
        UserPublic {
            name,
            created: signed::now_rfc3339(),
            public_key: secret.public_key(),
            verifying_key: secret.verifying_key(),
        }
    }

    /// Serializes and self-signs; `secret` must be this user's.
    #[cfg(feature = "secrets")]
    pub fn to_signed_bytes(&self, secret: &UserSecret) -> Result<Vec<u8>> {
        self.check_secret(secret)?;
        Ok(signed::sign(DOMAIN, &self.body(), &secret.signer()))
    }

    fn body(&self) -> Body {
        Body {
            format: FORMAT.into(),
            version: VERSION,
            name: self.name.clone(),
            created: self.created.clone(),
            public_key: public_key_hex(&self.public_key),
            verifying_key: public_key_hex(&self.verifying_key),
        }
    }

    /// Parses and verifies the self-signature.
    pub fn from_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        let (body, signature): (Body, _) = signed::parse(KIND, location, bytes)?;
        if body.format != FORMAT || body.version != VERSION {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "unsupported format `{}` version {}",
                    body.format, body.version
                ),
            ));
        }
        let key = |what: &str, hex: &str| {
            public_key_from_hex(hex).map_err(|e| Error::doc(KIND, location, format!("{what}: {e}")))
        };
        let public_key = key("public_key", &body.public_key)?;
        let verifying_key = key("verifying_key", &body.verifying_key)?;
        signed::verify(KIND, location, DOMAIN, &body, &signature, &verifying_key)?;
        Ok(UserPublic {
            name: body.name,
            created: body.created,
            public_key,
            verifying_key,
        })
    }

    /// Reads and verifies a `NAME.pub` file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read user key", path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Fails unless `secret` is this user's secret.
    #[cfg(feature = "secrets")]
    pub fn check_secret(&self, secret: &UserSecret) -> Result<()> {
        if secret.public_key() == self.public_key && secret.verifying_key() == self.verifying_key {
            Ok(())
        } else {
            Err(Error::KeyMismatch {
                what: format!(
                    "the secret does not belong to user `{}` (public key {})",
                    self.name,
                    fingerprint(&self.public_key)
                ),
            })
        }
    }

    /// The user's name.
    pub fn name(&self) -> &UserName {
        &self.name
    }

    /// When the key was made (RFC 3339).
    pub fn created(&self) -> &str {
        &self.created
    }

    /// The receiving key of delegations.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The key that verifies this user's signed requests.
    pub fn verifying_key(&self) -> &PublicKey {
        &self.verifying_key
    }
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let secret = UserSecret::generate();
        let public = UserPublic::from_secret(UserName::new("alice").unwrap(), &secret);
        let bytes = public.to_signed_bytes(&secret).unwrap();
        assert_eq!(UserPublic::from_bytes(&bytes, "t").unwrap(), public);
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("alice", "mallory");
        assert!(UserPublic::from_bytes(text.as_bytes(), "t").is_err());
        assert!(public.check_secret(&UserSecret::generate()).is_err());
    }
}
