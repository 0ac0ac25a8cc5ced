//! `cbfs-tier forget`: deciding which snapshots to keep, and publishing the
//! decision as a signed retention record that a key-less collector can act
//! on without trusting the store.
//!
//! A writer forgets only its own snapshots; the administrator may forget
//! any writer's. The newest snapshot of each writer is never forgotten.
//! Snapshots already forgotten by a trusted record are left as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cbfs_core::umbral_pre::Signer;
use cbfs_core::{AdminSecret, KeySource, UserSecret, fingerprint};
use cbfs_format::{ForgottenSnapshot, RecordId, RetentionRecord, layout};
use cbfs_restore::{Snapshot, snapshot_listing};
use cbfs_store::Store;
use serde::Serialize;

use crate::error::{Error, Result, restore_error};
use crate::list::rfc3339;
use crate::policy::{Candidate, KeepPolicy, apply};
use crate::restore::{TrustOptions, trusted};
use crate::source::StoreSource;

/// Whose key signs the retention record.
#[derive(Clone, Debug)]
pub enum ForgetSigner {
    /// A registered writer's key: it forgets its own snapshots only.
    Writer(KeySource),
    /// The administrator's root secret: it may forget any writer's.
    Admin(KeySource),
}

/// What `cbfs-tier forget` is asked to do.
pub struct ForgetRequest {
    /// The store spec.
    pub store: String,
    /// What to trust.
    pub trust: TrustOptions,
    /// Who signs.
    pub signer: ForgetSigner,
    /// What to keep.
    pub policy: KeepPolicy,
    /// Decide and report, but write nothing.
    pub dry_run: bool,
}

/// One snapshot and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct ForgetEntry {
    /// Sequence number.
    pub sequence: u64,
    /// Snapshot id.
    pub id: String,
    /// Creation time (RFC 3339, UTC).
    pub created: String,
    /// Fingerprint of the writer that signed it.
    pub writer: String,
    /// Whether it is kept.
    pub keep: bool,
    /// Why it is kept; empty for a forgotten one.
    pub reasons: Vec<String>,
}

/// What `cbfs-tier forget` did (or, with `--dry-run`, would do).
#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    /// The policy, as words.
    pub policy: String,
    /// Every trusted snapshot not forgotten before, newest first.
    pub snapshots: Vec<ForgetEntry>,
    /// How many are kept.
    pub kept: usize,
    /// How many this decision forgets.
    pub forgotten: usize,
    /// Snapshots earlier retention records forgot (still in the store until
    /// garbage collection deletes them).
    pub forgotten_before: Vec<u64>,
    /// The retention record written (`None` with `--dry-run`, or when
    /// nothing is forgotten).
    pub record: Option<String>,
    /// Whether nothing was written.
    pub dry_run: bool,
}

/// Applies a retention policy and publishes the decision (see the module).
pub async fn forget(req: ForgetRequest) -> Result<ForgetReport> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || forget_blocking(&req, rt))
        .await
        .map_err(|e| Error::Usage(format!("forget failed: {e}")))?
}

pub(crate) fn forget_blocking(
    req: &ForgetRequest,
    rt: tokio::runtime::Handle,
) -> Result<ForgetReport> {
    if req.policy.is_empty() {
        return Err(Error::Usage(
            "no policy given: say what to keep (--keep-last N, --keep-daily N, --keep-within 30d, \
             --keep-snapshot ID, ...); everything else but the newest snapshot is forgotten"
                .into(),
        ));
    }
    let store = Store::open(&req.store)?;
    let source = StoreSource::new(store.clone(), rt.clone());
    let (source_key, as_admin) = match &req.signer {
        ForgetSigner::Writer(s) => (s, false),
        ForgetSigner::Admin(s) => (s, true),
    };
    let seed = source_key.load(&cbfs_keysource::unlock_from_env())?;
    let key_file = match source_key {
        KeySource::File(p) => Some(p.as_path()),
        _ => None,
    };
    let signer: Signer = if as_admin {
        AdminSecret::from_seed(cbfs_core::Seed::from_slice(
            seed.expose_secret_bytes(),
            "the administrator's secret",
        )?)
        .signer()
    } else {
        UserSecret::from_seed(cbfs_core::Seed::from_slice(
            seed.expose_secret_bytes(),
            "the writer's secret",
        )?)
        .signer()
    };
    let t = trusted(&source, &req.trust, as_admin.then_some(&seed), key_file)?;
    let vk = signer.verifying_key();
    if as_admin && t.keyset.admin_verifying_key() != &vk {
        return Err(Error::Usage(format!(
            "--admin is not the root secret of `{}` (its administrator key is {})",
            t.keyset.fs(),
            fingerprint(t.keyset.admin_verifying_key())
        )));
    }
    if !as_admin && !t.keyset.writers().values().any(|w| *w == vk) {
        return Err(Error::Usage(format!(
            "the writer key {} is not registered in the keyset of `{}`: a collector would not trust its retention record \
             (give the agent's --writer-key, or the administrator's --admin)",
            fingerprint(&vk),
            t.keyset.fs()
        )));
    }
    let listing = snapshot_listing(&source, &t.trust, 0)
        .map_err(|e| restore_error("cannot list the snapshots", e))?;

    // One policy per writer: each writer's newest snapshot is kept.
    let mut by_writer: BTreeMap<Vec<u8>, Vec<&Snapshot>> = BTreeMap::new();
    for s in &listing.kept {
        by_writer
            .entry(s.manifest().writer_key().to_compressed_bytes().to_vec())
            .or_default()
            .push(s);
    }
    let mut entries = Vec::new();
    let mut forgotten = Vec::new();
    for snaps in by_writer.values() {
        let writer_key = *snaps[0].manifest().writer_key();
        let own = as_admin || writer_key == vk;
        let candidates: Vec<Candidate> = snaps
            .iter()
            .map(|s| Candidate {
                sequence: s.sequence(),
                id: s.id().to_string(),
                created_unix: s.manifest().created_unix(),
            })
            .collect();
        for d in apply(&req.policy, &candidates) {
            let snap = snaps
                .iter()
                .find(|s| s.sequence() == d.sequence)
                .expect("decided on these snapshots");
            let (keep, reasons) = if own {
                (d.keep, d.reasons)
            } else {
                (
                    true,
                    vec!["another writer's snapshot (only the administrator forgets it)".into()],
                )
            };
            if !keep {
                forgotten.push(ForgottenSnapshot {
                    sequence: snap.sequence(),
                    snapshot: snap.id(),
                    manifest_hash: snap.manifest().hash(),
                });
            }
            entries.push(ForgetEntry {
                sequence: d.sequence,
                id: d.id,
                created: rfc3339(d.created_unix),
                writer: fingerprint(&writer_key),
                keep,
                reasons,
            });
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.sequence));
    let mut report = ForgetReport {
        policy: req.policy.describe(),
        kept: entries.iter().filter(|e| e.keep).count(),
        forgotten: forgotten.len(),
        snapshots: entries,
        forgotten_before: listing
            .forgotten
            .iter()
            .map(|(s, _)| s.sequence())
            .collect(),
        record: None,
        dry_run: req.dry_run,
    };
    if req.dry_run || forgotten.is_empty() {
        return Ok(report);
    }
    let id = RecordId::random();
    let created = cbfs_core::now().unix_timestamp();
    let record = RetentionRecord::sign(id, created, &report.policy, forgotten, &signer)?;
    let key = layout::retention(created, &id);
    rt.block_on(store.put_new(&key, record.to_bytes()))?;
    tracing::info!(record = %key, forgotten = report.forgotten, "retention record written");
    report.record = Some(key);
    Ok(report)
}

/// The default signer of `forget`: the agent's writer key in its index.
pub fn default_writer_key(index: &std::path::Path) -> Option<KeySource> {
    let path: PathBuf = index.join("writer.key");
    path.exists().then_some(KeySource::File(path))
}
