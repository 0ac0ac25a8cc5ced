//! `cbfs-tier snapshots` and `cbfs-tier ls`: read-only, without the writer's
//! secret and without taking the index's lock. Snapshots come through the
//! one verifier (signed by a writer the trusted keyset registers); names
//! come from the agent's index.

use std::path::Path;

use cbfs_core::fingerprint;
use cbfs_restore::{Snapshot, snapshots};
use cbfs_store::Store;
use serde::Serialize;

use crate::error::{Error, Result, restore_error};
use crate::index::Index;
use crate::restore::{TrustOptions, trusted};
use crate::scan::Stat;
use crate::source::StoreSource;

/// One snapshot in the store.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// Sequence number.
    pub sequence: u64,
    /// Snapshot id.
    pub id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Entries in it.
    pub entries: u64,
    /// Fingerprint of the writer key that signed it.
    pub writer: String,
    /// The registered writer's name (`None`: accepted by name with
    /// `--accept-unregistered-writer`).
    pub writer_name: Option<String>,
    /// The manifest's object key.
    pub manifest: String,
}

/// An object under `snapshots/` that is not a trusted snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Ignored {
    /// Its key.
    pub object: String,
    /// Why it is not trusted.
    pub reason: String,
}

/// A Unix time as RFC 3339 (the number itself if out of range).
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn info(s: &Snapshot) -> SnapshotInfo {
    let m = s.manifest();
    SnapshotInfo {
        sequence: m.sequence(),
        id: m.snapshot_id().to_string(),
        created: rfc3339(m.created_unix()),
        entries: m.entries().iter().map(|e| e.slots.len() as u64).sum(),
        writer: fingerprint(m.writer_key()),
        writer_name: s.writer().map(str::to_owned),
        manifest: s.key().to_owned(),
    }
}

fn load(
    store: &str,
    trust: &TrustOptions,
    rt: tokio::runtime::Handle,
) -> Result<(Vec<Snapshot>, Vec<Ignored>)> {
    let source = StoreSource::new(Store::open(store)?, rt);
    let t = trusted(&source, trust, None, None)?;
    let (snaps, ignored) = snapshots(&source, &t.trust, 0)
        .map_err(|e| restore_error("cannot list the snapshots", e))?;
    let ignored: Vec<Ignored> = ignored
        .into_iter()
        .map(|(object, reason)| Ignored { object, reason })
        .collect();
    none_trusted(&snaps, &ignored, store)?;
    Ok((snaps, ignored))
}

/// Fails when the store holds manifests and none of them is trusted: a
/// listing of nothing would read as "no snapshot yet", as a restore does
/// not (it refuses them, exit 4). The error names every refused object.
fn none_trusted(snaps: &[Snapshot], ignored: &[Ignored], store: &str) -> Result<()> {
    let refused: Vec<&Ignored> = ignored
        .iter()
        .filter(|i| i.object != cbfs_format::layout::SNAPSHOTS)
        .collect();
    if !snaps.is_empty() || refused.is_empty() {
        return Ok(());
    }
    Err(Error::Integrity {
        object: refused
            .iter()
            .map(|i| i.object.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        reason: format!(
            "none of the {} manifests in {store} is trusted, so no snapshot can be listed: {}",
            refused.len(),
            refused
                .iter()
                .map(|i| format!("{}: {}", i.object, i.reason))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// Every snapshot of the store a trusted writer signed, oldest first, and
/// what was ignored.
pub async fn list_snapshots(
    store: &str,
    trust: TrustOptions,
) -> Result<(Vec<SnapshotInfo>, Vec<Ignored>)> {
    let store = store.to_owned();
    let rt = tokio::runtime::Handle::current();
    let (snaps, ignored) = tokio::task::spawn_blocking(move || load(&store, &trust, rt))
        .await
        .map_err(|e| Error::Usage(format!("listing failed: {e}")))??;
    Ok((snaps.iter().map(info).collect(), ignored))
}

/// One entry of a snapshot, as the local index knows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListedEntry {
    /// The path (lossy UTF-8).
    pub path: String,
    /// `file`, `dir`, `symlink` or `special`.
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Its scope.
    pub scope: String,
    /// The member holding it.
    pub member: String,
}

/// The entries of a snapshot (the newest if `snapshot` is `None`; an id, an
/// id prefix of 8+ characters, or a sequence number otherwise) under
/// `prefix`, named by the agent's index at `index`; and what was ignored
/// in the store (manifests no trusted writer signed), for the caller to
/// report.
pub async fn list_entries(
    store: &str,
    trust: TrustOptions,
    index: &Path,
    snapshot: Option<&str>,
    prefix: Option<&str>,
) -> Result<(Vec<ListedEntry>, Vec<Ignored>)> {
    let (store, index) = (store.to_owned(), index.to_owned());
    let (snapshot, prefix) = (snapshot.map(str::to_owned), prefix.map(str::to_owned));
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (snaps, ignored) = load(&store, &trust, rt)?;
        let chosen = match snapshot.as_deref() {
            None => snaps.last(),
            Some(s) => snaps.iter().find(|snap| {
                let id = snap.id().to_string();
                id == s || (s.len() >= 8 && id.starts_with(s)) || snap.sequence().to_string() == s
            }),
        }
        .ok_or_else(|| {
            Error::Usage(match &snapshot {
                Some(s) => format!("no trusted snapshot `{s}` in {store}"),
                None => format!("{store} holds no trusted snapshot yet"),
            })
        })?;
        let index = Index::open_read_only(&index)?;
        Ok((entries_of(&index, chosen, prefix.as_deref())?, ignored))
    })
    .await
    .map_err(|e| Error::Usage(format!("listing failed: {e}")))?
}

impl crate::agent::Agent {
    /// Every trusted snapshot of this agent's store, oldest first, and what
    /// was ignored (the keyset this agent was opened with is the trust).
    pub async fn snapshots(
        self: &std::sync::Arc<Self>,
    ) -> Result<(Vec<SnapshotInfo>, Vec<Ignored>)> {
        let agent = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let (snaps, ignored) = snapshots(&agent.source(rt), &agent.trust()?, 0)
                .map_err(|e| restore_error("cannot list the snapshots", e))?;
            Ok((
                snaps.iter().map(info).collect(),
                ignored
                    .into_iter()
                    .map(|(object, reason)| Ignored { object, reason })
                    .collect(),
            ))
        })
        .await
        .map_err(|e| Error::Usage(format!("listing failed: {e}")))?
    }

    /// The entries of one of this agent's snapshots under `prefix` (see
    /// [`list_entries`]), named by its own index.
    pub async fn entries(
        self: &std::sync::Arc<Self>,
        snapshot: Option<String>,
        prefix: Option<String>,
    ) -> Result<Vec<ListedEntry>> {
        let agent = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let source = agent.source(rt);
            let trust = agent.trust()?;
            let chosen = cbfs_restore::open_snapshot(&source, &trust, snapshot.as_deref())
                .map_err(|e| restore_error("the snapshot could not be verified", e))?;
            entries_of(&agent.index, &chosen, prefix.as_deref())
        })
        .await
        .map_err(|e| Error::Usage(format!("listing failed: {e}")))?
    }
}

fn entries_of(
    index: &Index,
    snapshot: &Snapshot,
    prefix: Option<&str>,
) -> Result<Vec<ListedEntry>> {
    let prefix = prefix.map(|p| p.trim_end_matches('/'));
    let mut out = Vec::new();
    let mut unknown = 0;
    for entry in snapshot.manifest().entries() {
        for slot in entry.slots.iter() {
            let slot = u16::try_from(slot).expect("slots are below 256");
            let Some(rec) = index.member(&entry.member, slot)? else {
                unknown += 1;
                continue;
            };
            let path = String::from_utf8_lossy(&rec.path).into_owned();
            if let Some(p) = prefix
                && !(path == p || path.starts_with(&format!("{p}/")))
            {
                continue;
            }
            out.push(ListedEntry {
                path,
                kind: kind_of(&rec.stat),
                mode: rec.stat.mode & 0o7777,
                size: if rec.stat.is_file() { rec.stat.size } else { 0 },
                mtime: rec.stat.mtime,
                scope: rec.scope,
                member: entry.member.to_string(),
            });
        }
    }
    if unknown > 0 {
        tracing::warn!(
            unknown,
            "entries of this snapshot are not in the local index; their names need a key to read"
        );
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn kind_of(st: &Stat) -> &'static str {
    match st.file_type() {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "special",
    }
}
