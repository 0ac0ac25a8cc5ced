//! Choosing and verifying a snapshot manifest.

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{Keyset, fingerprint};
use cbfs_format::{
    Manifest, ManifestHeader, SnapshotId, gather_manifest_chain, layout, resolve_manifest_chain,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::source::ObjectSource;

/// A verified snapshot manifest and where it came from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    key: String,
    manifest: Manifest,
    writer: Option<String>,
    previous: Option<String>,
    warnings: Vec<String>,
}

/// What a report says about the snapshot it restored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The manifest's object key.
    pub object: String,
    /// The snapshot id.
    pub id: String,
    /// Its sequence number.
    pub sequence: u64,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: i64,
    /// How many members it lists.
    pub members: usize,
    /// How many files (entries) those members hold in it: more than the
    /// members when small files are packed together.
    pub files: usize,
    /// The registered writer that signed it, if the keyset registers writers.
    pub writer: Option<String>,
    /// The manifest it was checked to follow, if the store still holds it.
    pub follows: Option<String>,
}

impl Snapshot {
    /// The manifest's object key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The snapshot id.
    pub fn id(&self) -> SnapshotId {
        self.manifest.snapshot_id()
    }
    /// The sequence number.
    pub fn sequence(&self) -> u64 {
        self.manifest.sequence()
    }
    /// The registered writer that signed it (`None`: the keyset registers no
    /// writer, and the manifest was trusted on its own key; see the warnings).
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }
    /// What was checked but could not be proven (unregistered writer, a
    /// previous manifest no longer in the store, ...).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
    /// A summary for reports.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            object: self.key.clone(),
            id: self.id().to_string(),
            sequence: self.sequence(),
            created_unix: self.manifest.created_unix(),
            members: self.manifest.entries().len(),
            files: self.manifest.entries().iter().map(|e| e.slots.len()).sum(),
            writer: self.writer.clone(),
            follows: self.previous.clone(),
        }
    }
}

/// Parses a manifest and checks its signer against the keyset's registered
/// writers. With no registered writer (or no keyset) the manifest's own key
/// is accepted, with a warning.
fn verify(
    key: &str,
    bytes: &[u8],
    keyset: Option<&Keyset>,
    warnings: &mut Vec<String>,
) -> Result<(Manifest, Option<String>, PublicKey)> {
    let manifest = Manifest::from_bytes_any_signer(bytes).map_err(|e| Error::format(key, e))?;
    let writers = keyset.map(|k| k.writers());
    match writers {
        Some(writers) if !writers.is_empty() => {
            match writers.iter().find(|(_, k)| *k == manifest.writer_key()) {
                Some((name, k)) => {
                    let m = Manifest::from_bytes(bytes, k).map_err(|e| Error::format(key, e))?;
                    Ok((m, Some(name.to_string()), *k))
                }
                None => {
                    let any = writers.values().next().expect("not empty");
                    let err =
                        Manifest::from_bytes(bytes, any).expect_err("another key cannot verify");
                    Err(Error::format(
                        format!("{key} (the keyset registers no such writer)"),
                        err,
                    ))
                }
            }
        }
        _ => {
            warnings.push(format!(
                "unregistered writer: {} registers no writer key, so {key} is trusted on its own \
                 signature (writer key {}); register the agent's key with cbfs-keytool add-writer",
                if keyset.is_some() {
                    "the keyset"
                } else {
                    "no keyset was given and the store"
                },
                fingerprint(manifest.writer_key())
            ));
            let writer = *manifest.writer_key();
            Ok((manifest, None, writer))
        }
    }
}

/// Verifies the chosen manifest object: a full manifest on its own, a delta
/// through the chain of deltas back to the nearest full manifest (all
/// signed by the same trusted writer).
fn verify_target(
    source: &dyn ObjectSource,
    listed: &[Listed],
    key: &str,
    bytes: Vec<u8>,
    keyset: Option<&Keyset>,
    warnings: &mut Vec<String>,
) -> Result<(Manifest, Option<String>)> {
    let header = ManifestHeader::peek(&bytes).map_err(|e| Error::format(key, e))?;
    if !header.delta {
        let (m, writer, _) = verify(key, &bytes, keyset, warnings)?;
        return Ok((m, writer));
    }
    let chain = gather_manifest_chain(bytes, |sequence| {
        listed
            .iter()
            .filter(|l| l.sequence == sequence)
            .filter_map(|l| source.get(&l.key).ok())
            .collect()
    })
    .map_err(|e| Error::format(key, e))?;
    let base_seq = cbfs_format::ManifestHeader::peek(&chain[0])
        .map(|h| h.sequence.to_string())
        .unwrap_or_else(|_| "?".into());
    let base =
        format!("the full manifest of sequence {base_seq}, where the delta chain of {key} starts");
    let (_, writer, writer_key) = verify(&base, &chain[0], keyset, warnings)?;
    let m = resolve_manifest_chain(&chain, &writer_key).map_err(|e| Error::format(key, e))?;
    Ok((m, writer))
}

struct Listed {
    sequence: u64,
    id: SnapshotId,
    key: String,
}

/// Lists the store's snapshot manifests, picks one and verifies it.
///
/// `selector` is a snapshot id, an id prefix of at least 8 characters, or a
/// sequence number; `None` picks the newest. A delta manifest is resolved
/// through the store's earlier manifests back to the nearest full one. The manifest must be signed by
/// a writer the keyset registers (or, if it registers none, by the key
/// inside it: reported as a warning); its object name must carry its own
/// sequence and id; and it must follow the manifest it names as previous,
/// which must be one of the store's earlier manifests when any is left.
pub fn open_snapshot(
    source: &dyn ObjectSource,
    keyset: Option<&Keyset>,
    selector: Option<&str>,
) -> Result<Snapshot> {
    let mut warnings = Vec::new();
    let mut listed = Vec::new();
    for key in source.list(layout::SNAPSHOTS)? {
        match layout::parse_manifest(&key) {
            Some((sequence, id)) => listed.push(Listed { sequence, id, key }),
            None => warnings.push(format!("ignoring {key}: not a manifest name")),
        }
    }
    listed.sort_by(|a, b| (a.sequence, &a.key).cmp(&(b.sequence, &b.key)));
    if listed.is_empty() {
        return Err(Error::NoSnapshot(
            "the store holds no snapshot manifest (snapshots/*.manifest)".into(),
        ));
    }
    let chosen = select(&listed, selector)?;
    let bytes = source.get(&chosen.key)?;
    let (manifest, writer) =
        verify_target(source, &listed, &chosen.key, bytes, keyset, &mut warnings)?;
    if manifest.sequence() != chosen.sequence || manifest.snapshot_id() != chosen.id {
        return Err(Error::ManifestName {
            key: chosen.key.clone(),
            reason: format!(
                "the name says sequence {} and snapshot {}, the signed manifest holds sequence {} and snapshot {}",
                chosen.sequence,
                chosen.id,
                manifest.sequence(),
                manifest.snapshot_id()
            ),
        });
    }
    let previous = check_chain(source, &listed, &chosen.key, &manifest, &mut warnings)?;
    Ok(Snapshot {
        key: chosen.key.clone(),
        manifest,
        writer,
        previous,
        warnings,
    })
}

fn select<'a>(listed: &'a [Listed], selector: Option<&str>) -> Result<&'a Listed> {
    let Some(sel) = selector else {
        let newest = listed.last().expect("not empty");
        let rivals: Vec<&str> = listed
            .iter()
            .filter(|l| l.sequence == newest.sequence)
            .map(|l| l.key.as_str())
            .collect();
        if rivals.len() > 1 {
            return Err(Error::NoSnapshot(format!(
                "{} manifests claim the newest sequence {}: {} (a fork?); pick one with --snapshot ID",
                rivals.len(),
                newest.sequence,
                rivals.join(", ")
            )));
        }
        return Ok(newest);
    };
    let by_sequence = sel.bytes().all(|b| b.is_ascii_digit()) && !sel.is_empty();
    let by_id = sel.len() >= 8
        && sel.len() <= 32
        && sel.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !by_sequence && !by_id {
        return Err(Error::Usage(format!(
            "snapshot selector `{sel}`: give a sequence number, or a snapshot id \
             (at least 8 lowercase hex characters)"
        )));
    }
    let matches: Vec<&Listed> = listed
        .iter()
        .filter(|l| {
            (by_sequence && sel.parse::<u64>().ok() == Some(l.sequence))
                || (by_id && l.id.to_string().starts_with(sel))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NoSnapshot(format!(
            "no snapshot matches `{sel}`; the store holds sequences {}..={}",
            listed[0].sequence,
            listed.last().expect("not empty").sequence
        ))),
        many => Err(Error::NoSnapshot(format!(
            "`{sel}` matches {} manifests: {}; give more of the id",
            many.len(),
            many.iter()
                .map(|l| l.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Checks that `manifest` follows an earlier manifest of the store: the one
/// whose bytes hash to the `previous` it names (its signature covers that
/// hash, so the match proves those bytes), with a lower sequence number.
/// Returns the key of that manifest, if the store still holds it.
fn check_chain(
    source: &dyn ObjectSource,
    listed: &[Listed],
    key: &str,
    manifest: &Manifest,
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let earlier: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.sequence < manifest.sequence())
        .rev()
        .collect();
    let Some(wanted) = manifest.previous_hash() else {
        if !earlier.is_empty() {
            warnings.push(format!(
                "{key} claims to be the first snapshot, yet the store holds {} earlier manifest(s) \
                 (an agent index rebuilt from scratch, or a fork)",
                earlier.len()
            ));
        }
        return Ok(None);
    };
    let mut unreadable = Vec::new();
    for prev in &earlier {
        let bytes = match source.get(&prev.key) {
            Ok(b) => b,
            Err(e) => {
                unreadable.push(e.to_string());
                continue;
            }
        };
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != wanted {
            continue;
        }
        let header =
            ManifestHeader::peek(&bytes).map_err(|e| Error::format(prev.key.clone(), e))?;
        if header.sequence >= manifest.sequence() || header.sequence != prev.sequence {
            return Err(Error::BrokenChain {
                key: key.to_owned(),
                previous: prev.key.clone(),
                reason: "the sequence number does not increase".into(),
            });
        }
        return Ok(Some(prev.key.clone()));
    }
    match earlier.first() {
        None => {
            warnings.push(format!(
                "the manifest {key} follows is no longer in the store (pruned?): the chain was not checked"
            ));
            Ok(None)
        }
        Some(nearest) => Err(Error::BrokenChain {
            key: key.to_owned(),
            previous: nearest.key.clone(),
            reason: format!(
                "its previous-manifest hash matches none of the {} earlier manifest(s) in the store \
                 (rolled back or forked?){}",
                earlier.len(),
                if unreadable.is_empty() {
                    String::new()
                } else {
                    format!("; unreadable: {}", unreadable.join("; "))
                }
            ),
        }),
    }
}
