//! The node's own key pair.
//!
//! A node's secret is a 32-byte seed in a key source, by default the 0600
//! file `DATA/node.key` (`--node-key` names another: the OS keyring, or a
//! file wrapped by an OpenBao/Vault transit key). From it come, as for a
//! user (`cbfs_core::UserSecret`), an Umbral key pair, under whose public key
//! grants are encrypted for the node, and a signing key. `DATA/node.pub`
//! holds the public key for the administrator to compare.

use std::path::{Path, PathBuf};

use cbfs_core::umbral_pre::{PublicKey, SecretKey};
use cbfs_core::{KeySource, Protection, Unlock, UserSecret, fingerprint};
use cbfs_wire::NodePublicFile;

use crate::error::{Error, Result};

/// The node's secret, and the public key derived from it.
pub struct NodeIdentity {
    secret: UserSecret,
    public: PublicKey,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeIdentity({}, [redacted])", fingerprint(&self.public))
    }
}

/// The default key source of a node: `file:DATA/node.key`.
pub fn default_key_source(data: &Path) -> KeySource {
    KeySource::File(data.join("node.key"))
}

fn public_path(data: &Path) -> PathBuf {
    data.join("node.pub")
}

/// What [`NodeIdentity::init`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Init {
    /// A new key was made.
    Created,
    /// The key was already there.
    Existing,
}

impl NodeIdentity {
    /// Loads the node's key from `source`, or from `DATA/node.key`.
    pub fn load(data: &Path, source: Option<&KeySource>, unlock: &Unlock) -> Result<Self> {
        let source = source.cloned().unwrap_or_else(|| default_key_source(data));
        let secret = UserSecret::from_seed(source.load(unlock)?);
        let identity = NodeIdentity {
            public: secret.public_key(),
            secret,
        };
        identity.write_public(data)?;
        Ok(identity)
    }

    /// Makes the node's key in `source` (default `DATA/node.key`) unless one
    /// is there, and writes `DATA/node.pub`.
    pub fn init(data: &Path, source: Option<&KeySource>, unlock: &Unlock) -> Result<(Self, Init)> {
        std::fs::create_dir_all(data)
            .map_err(|e| Error::io("cannot create data folder", data, e))?;
        let source = source.cloned().unwrap_or_else(|| default_key_source(data));
        match source.load(unlock) {
            Ok(seed) => {
                let secret = UserSecret::from_seed(seed);
                let identity = NodeIdentity {
                    public: secret.public_key(),
                    secret,
                };
                identity.write_public(data)?;
                Ok((identity, Init::Existing))
            }
            Err(cbfs_core::Error::NotFound { .. }) => {
                let secret = UserSecret::generate();
                source.store_new(secret.seed(), &Protection::None, unlock)?;
                let identity = NodeIdentity {
                    public: secret.public_key(),
                    secret,
                };
                identity.write_public(data)?;
                Ok((identity, Init::Created))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_public(&self, data: &Path) -> Result<()> {
        let path = public_path(data);
        let file = NodePublicFile::new(&self.public);
        let mut bytes = serde_json::to_vec_pretty(&file).expect("node keys serialize");
        bytes.push(b'\n');
        if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io("cannot write", path, e))
    }

    /// The node's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The node's Umbral secret key: opens grants sealed for the node.
    pub fn secret_key(&self) -> SecretKey {
        self.secret.secret_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_private_key_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let unlock = Unlock::default();
        let (a, how) = NodeIdentity::init(dir.path(), None, &unlock).unwrap();
        assert_eq!(how, Init::Created);
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, how) = NodeIdentity::init(dir.path(), None, &unlock).unwrap();
        assert_eq!(how, Init::Existing);
        assert_eq!(a.public_key(), b.public_key());
        let c = NodeIdentity::load(dir.path(), None, &unlock).unwrap();
        assert_eq!(c.public_key(), a.public_key());
        let public = NodePublicFile::load(&dir.path().join("node.pub")).unwrap();
        assert_eq!(&public, a.public_key());
        assert!(format!("{a:?}").contains("redacted"));
        let empty = tempfile::tempdir().unwrap();
        assert!(NodeIdentity::load(empty.path(), None, &unlock).is_err());
    }
}
