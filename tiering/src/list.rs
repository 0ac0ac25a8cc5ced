//! `cbfs-tier snapshots` and `cbfs-tier ls`.

use cbfs_core::fingerprint;
use cbfs_format::Manifest;
use serde::Serialize;

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::scan::Stat;
use cbfs_format::layout;

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
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Every manifest in the store, oldest first, each verified and resolved
/// (a delta against the resolved manifest before it).
pub(crate) fn load_manifests(agent: &Agent) -> Result<Vec<(String, Manifest)>> {
    load_manifests_since(agent, 0)
}

/// The manifests from sequence `from` on, oldest first, each verified and
/// resolved; reading back only as far as the newest full manifest at or
/// before `from` (which the deltas after it need), not the whole history.
pub(crate) fn load_manifests_since(agent: &Agent, from: u64) -> Result<Vec<(String, Manifest)>> {
    let mut out: Vec<(String, Manifest)> = Vec::new();
    let mut by_hash: std::collections::HashMap<[u8; 32], usize> = std::collections::HashMap::new();
    let mut keys: Vec<(u64, String)> = agent
        .block_on(agent.store.list(layout::SNAPSHOTS))?
        .into_iter()
        .filter_map(|o| layout::parse_manifest(&o.key).map(|(seq, _)| (seq, o.key)))
        .collect();
    keys.sort();
    let mut fetched = std::collections::HashMap::new();
    let mut start = keys.partition_point(|(seq, _)| *seq < from);
    // Back to the newest full manifest at or before `from`.
    let mut i = keys.partition_point(|(seq, _)| *seq <= from);
    while i > 0 {
        i -= 1;
        let bytes = agent.block_on(agent.store.get(&keys[i].1))?;
        let full = cbfs_format::ManifestHeader::peek(&bytes).is_ok_and(|h| !h.delta);
        fetched.insert(i, bytes);
        start = i;
        if full {
            break;
        }
    }
    for (i, (_, key)) in keys.into_iter().enumerate().skip(start) {
        let bytes = match fetched.remove(&i) {
            Some(b) => b,
            None => agent.block_on(agent.store.get(&key))?,
        };
        let bad = |e: cbfs_format::Error| Error::Integrity {
            object: key.clone(),
            reason: e.to_string(),
        };
        let header = cbfs_format::ManifestHeader::peek(&bytes).map_err(bad)?;
        let manifest = if header.delta {
            let base = header
                .previous
                .and_then(|h| by_hash.get(&h))
                .map(|&i| &out[i].1)
                .ok_or_else(|| Error::Integrity {
                    object: key.clone(),
                    reason: "a delta manifest whose previous manifest is missing or altered".into(),
                })?;
            Manifest::from_delta_bytes(&bytes, base.writer_key(), base).map_err(bad)?
        } else {
            Manifest::from_bytes_any_signer(&bytes).map_err(bad)?
        };
        by_hash.insert(manifest.hash(), out.len());
        out.push((key, manifest));
    }
    Ok(out)
}

/// Reads, verifies and lists every snapshot manifest in the store.
pub fn list_snapshots(agent: &Agent) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for (key, manifest) in load_manifests(agent)? {
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
            entries: manifest
                .entries()
                .iter()
                .map(|e| e.slots.len() as u64)
                .sum(),
            writer: fingerprint(&writer),
            trusted_writer: trusted,
            manifest: key,
        });
    }
    out.sort_by_key(|s| s.sequence);
    Ok(out)
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
pub fn list_entries(
    agent: &Agent,
    snapshot: Option<&str>,
    prefix: Option<&str>,
) -> Result<Vec<ListedEntry>> {
    let snaps = load_manifests(agent)?;
    let chosen = match snapshot {
        None => snaps.last(),
        Some(s) => snaps.iter().find(|(_, m)| {
            let id = m.snapshot_id().to_string();
            id == s || (s.len() >= 8 && id.starts_with(s)) || m.sequence().to_string() == s
        }),
    }
    .ok_or_else(|| {
        Error::Usage(match snapshot {
            Some(s) => format!("no snapshot `{s}` in {}", agent.store.describe()),
            None => format!("{} holds no snapshot yet", agent.store.describe()),
        })
    })?;
    let manifest = &chosen.1;
    let prefix = prefix.map(|p| p.trim_end_matches('/'));
    let mut out = Vec::new();
    let mut unknown = 0;
    for entry in manifest.entries() {
        for slot in entry.slots.iter() {
            let slot = u16::try_from(slot).expect("slots are below 256");
            let Some(rec) = agent.index.member(&entry.member, slot)? else {
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
