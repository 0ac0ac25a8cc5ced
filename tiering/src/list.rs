//! `cbfs-tier snapshots` and `cbfs-tier ls`.

use cbfs_core::fingerprint;
use cbfs_format::Manifest;
use serde::Serialize;

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::layout;
use crate::scan::Stat;

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
    /// Whether that writer is registered in the keyset (or is this agent).
    pub trusted_writer: bool,
    /// The manifest's object key.
    pub manifest: String,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Reads, verifies and lists every snapshot manifest in the store.
pub fn list_snapshots(agent: &Agent) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for obj in agent.block_on(agent.store.list(layout::SNAPSHOTS))? {
        if layout::parse_manifest(&obj.key).is_none() {
            continue;
        }
        let manifest = load_manifest(agent, &obj.key)?;
        let writer = *manifest.writer_key();
        let trusted = writer == agent.writer_key()
            || agent
                .keyset
                .as_ref()
                .is_some_and(|ks| ks.writers().values().any(|w| *w == writer));
        out.push(SnapshotInfo {
            sequence: manifest.sequence(),
            id: manifest.snapshot_id().to_string(),
            created: rfc3339(manifest.created_unix()),
            entries: manifest.entries().len() as u64,
            writer: fingerprint(&writer),
            trusted_writer: trusted,
            manifest: obj.key,
        });
    }
    out.sort_by_key(|s| s.sequence);
    Ok(out)
}

fn load_manifest(agent: &Agent, key: &str) -> Result<Manifest> {
    let bytes = agent.block_on(agent.store.get(key))?;
    Manifest::from_bytes_any_signer(&bytes).map_err(|e| Error::Integrity {
        object: key.to_owned(),
        reason: e.to_string(),
    })
}

/// One entry of a snapshot, as the local index knows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListedEntry {
    /// The path (lossy UTF-8).
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink` or `special`.
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

/// The entries of a snapshot (the newest if `snapshot` is `None`; an id or a
/// sequence number otherwise) under `prefix`.
pub fn list_entries(agent: &Agent, snapshot: Option<&str>, prefix: Option<&str>) -> Result<Vec<ListedEntry>> {
    let snaps = list_snapshots(agent)?;
    let chosen = match snapshot {
        None => snaps.last(),
        Some(s) => snaps
            .iter()
            .find(|i| i.id == s || i.id.starts_with(s) && s.len() >= 8 || i.sequence.to_string() == s),
    }
    .ok_or_else(|| {
        Error::Usage(match snapshot {
            Some(s) => format!("no snapshot `{s}` in {}", agent.store.describe()),
            None => format!("{} holds no snapshot yet", agent.store.describe()),
        })
    })?;
    let manifest = load_manifest(agent, &chosen.manifest)?;
    let prefix = prefix.map(|p| p.trim_end_matches('/'));
    let mut out = Vec::new();
    let mut unknown = 0;
    for entry in manifest.entries() {
        let Some(rec) = agent.index.member(&entry.member)? else {
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
