//! Retention as readers see it: which snapshots a verified retention record
//! forgets.
//!
//! A record counts only if it verifies and its signer is the trusted
//! keyset's administrator or a writer the keyset registers; a writer's
//! record forgets only that writer's own snapshots. The newest snapshot of
//! each writer is never forgotten, whatever a record says. A forgotten
//! snapshot is not listed and not restored; the hash of its manifest still
//! lets a reader check the chain of a kept snapshot that followed it.

use cbfs_core::fingerprint;
use cbfs_core::umbral_pre::PublicKey;
use cbfs_format::{ForgottenSnapshot, RetentionRecord, SnapshotId, layout};

use crate::error::Result;
use crate::snapshot::{Ignored, Trust};
use crate::source::ObjectSource;

/// One snapshot a trusted record forgets.
#[derive(Clone, Debug)]
struct Entry {
    forgotten: ForgottenSnapshot,
    signer: PublicKey,
    record: String,
}

/// What the store's trusted retention records forget.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    entries: Vec<Entry>,
    admin: Option<PublicKey>,
    records: Vec<String>,
    ignored: Ignored,
}

impl Retention {
    /// No record at all: nothing is forgotten.
    pub fn none() -> Self {
        Retention::default()
    }

    /// Reads every retention record of the store and keeps those that
    /// verify and that the administrator or a trusted writer signed; the
    /// others are named in [`ignored`](Self::ignored).
    pub fn load(source: &dyn ObjectSource, trust: &Trust) -> Result<Self> {
        let admin = trust.keyset().map(|k| *k.admin_verifying_key());
        let mut out = Retention {
            admin,
            ..Retention::default()
        };
        for key in source.list(layout::RETENTION)? {
            if !layout::is_retention(&key) {
                out.ignored
                    .push((key, "not a retention record name".to_owned()));
                continue;
            }
            let bytes = match source.get(&key) {
                Ok(b) => b,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    out.ignored.push((key, e.to_string()));
                    continue;
                }
            };
            let record = match RetentionRecord::from_bytes(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    out.ignored.push((key, e.to_string()));
                    continue;
                }
            };
            let signer = *record.signer();
            let by_admin = admin.as_ref() == Some(&signer);
            if !by_admin && trust.writer(&signer).is_untrusted() {
                out.ignored.push((
                    key,
                    format!(
                        "signed by {}, neither the administrator nor a registered writer",
                        fingerprint(&signer)
                    ),
                ));
                continue;
            }
            for f in record.forgotten() {
                out.entries.push(Entry {
                    forgotten: *f,
                    signer,
                    record: key.clone(),
                });
            }
            out.records.push(key);
        }
        Ok(out)
    }

    fn applies(&self, e: &Entry, writer: &PublicKey) -> bool {
        self.admin.as_ref() == Some(&e.signer) || e.signer == *writer
    }

    /// The record that forgets this snapshot (its manifest object hashes
    /// to `hash`; `writer` signed it), if one does.
    pub fn forgets(
        &self,
        sequence: u64,
        id: SnapshotId,
        hash: &[u8; 32],
        writer: &PublicKey,
    ) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| {
                e.forgotten.sequence == sequence
                    && e.forgotten.snapshot == id
                    && e.forgotten.manifest_hash == *hash
                    && self.applies(e, writer)
            })
            .map(|e| e.record.as_str())
    }

    /// The sequence of the forgotten snapshot whose manifest hashed to
    /// `hash`, and the record that forgot it: what a kept snapshot of
    /// `writer` may name as its previous manifest once that is deleted.
    pub fn forgotten_manifest(&self, hash: &[u8; 32], writer: &PublicKey) -> Option<(u64, &str)> {
        self.entries
            .iter()
            .find(|e| e.forgotten.manifest_hash == *hash && self.applies(e, writer))
            .map(|e| (e.forgotten.sequence, e.record.as_str()))
    }

    /// Every snapshot the trusted records forget (some may be another
    /// writer's, or no longer in the store).
    pub fn forgotten(&self) -> impl Iterator<Item = &ForgottenSnapshot> {
        self.entries.iter().map(|e| &e.forgotten)
    }

    /// The keys of the trusted records.
    pub fn records(&self) -> &[String] {
        &self.records
    }

    /// Records that were not trusted, and why.
    pub fn ignored(&self) -> &Ignored {
        &self.ignored
    }
}
