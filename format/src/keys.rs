//! Group keys: one random 32-byte key per (segment, scope).

use std::collections::BTreeMap;
use std::fmt;

use rand::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, SecretBox};

use crate::ids::GroupId;

/// Length of a group key in bytes.
pub const GROUP_KEY_LEN: usize = 32;

/// A group key and the id of its group.
///
/// It wraps the file key of every member of its group (in the `cbfs1` stanza). It is
/// zeroized on drop, is not `Clone`, and its `Debug` shows only the group id.
pub struct GroupKey {
    id: GroupId,
    key: SecretBox<[u8; GROUP_KEY_LEN]>,
}

impl GroupKey {
    /// A fresh group key with a fresh group id, from the operating system's generator.
    pub fn generate() -> Self {
        Self::generate_with_rng(&mut rand::rngs::OsRng)
    }

    /// A fresh group key with a fresh group id, from the given generator.
    pub fn generate_with_rng(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let id = GroupId::random_with_rng(rng);
        let key = SecretBox::init_with_mut(|k: &mut [u8; GROUP_KEY_LEN]| rng.fill_bytes(k));
        GroupKey { id, key }
    }

    /// A group key from its parts (for example a key opened from a lockbox elsewhere).
    pub fn new(id: GroupId, key: SecretBox<[u8; GROUP_KEY_LEN]>) -> Self {
        GroupKey { id, key }
    }

    /// The group this key belongs to.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The key bytes. Handle with care: never log or store them in the clear.
    pub fn expose_secret(&self) -> &[u8; GROUP_KEY_LEN] {
        self.key.expose_secret()
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Where a member reader finds the group key named in a member's stanza.
pub trait GroupKeys {
    /// The key of the group, if known.
    fn group_key(&self, id: &GroupId) -> Option<&GroupKey>;
}

impl GroupKeys for GroupKey {
    fn group_key(&self, id: &GroupId) -> Option<&GroupKey> {
        (self.id == *id).then_some(self)
    }
}

/// A set of group keys, looked up by group id.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: BTreeMap<GroupId, GroupKey>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key, replacing any key of the same group.
    pub fn insert(&mut self, key: GroupKey) {
        self.keys.insert(key.id(), key);
    }

    /// The key of the group, if present.
    pub fn get(&self, id: &GroupId) -> Option<&GroupKey> {
        self.keys.get(id)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl GroupKeys for Keyring {
    fn group_key(&self, id: &GroupId) -> Option<&GroupKey> {
        self.get(id)
    }
}

impl FromIterator<GroupKey> for Keyring {
    fn from_iter<T: IntoIterator<Item = GroupKey>>(iter: T) -> Self {
        let mut ring = Keyring::new();
        for key in iter {
            ring.insert(key);
        }
        ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = GroupKey::new(
            GroupId::from_bytes([1; 16]),
            SecretBox::new(Box::new([0x5a; 32])),
        );
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("5a5a"));
        assert!(!shown.contains("90, 90"));
    }

    #[test]
    fn keyring_lookup() {
        let a = GroupKey::generate();
        let id = a.id();
        let ring: Keyring = [a, GroupKey::generate()].into_iter().collect();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.group_key(&id).unwrap().id(), id);
        assert!(ring.group_key(&GroupId::random()).is_none());
    }
}
