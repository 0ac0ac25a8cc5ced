//! Choosing and verifying snapshot manifests: the one verifier that every
//! reader uses (restore, recover, list, ls, verify).
//!
//! A manifest is trusted only if a writer that the trusted keyset registers
//! signed it ([`Trust`]). An object that no registered writer signed
//! (planted by anyone who can write to the store, or damaged) is reported
//! and ignored: it can neither be restored nor hide the real snapshots.

use std::collections::HashMap;

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{Keyset, fingerprint};
use cbfs_format::{
    Manifest, ManifestBase, ManifestHeader, SnapshotId, gather_manifest_chain,
    gather_manifest_chain_until, layout, resolve_manifest_chain_from,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::retention::Retention;
use crate::source::ObjectSource;

/// What snapshots are trusted by: the registered writers of a trusted
/// keyset, and, only when asked for by name for one command, one writer key
/// that no keyset registers.
#[derive(Clone, Debug)]
pub struct Trust {
    keyset: Option<Keyset>,
    unregistered: Option<String>,
}

impl Trust {
    /// Trusts the writers `keyset` registers (and no one if it registers none).
    pub fn new(keyset: Keyset) -> Self {
        Trust {
            keyset: Some(keyset),
            unregistered: None,
        }
    }

    /// Trusts no keyset at all: only the writer accepted with
    /// [`accept_unregistered_writer`](Self::accept_unregistered_writer).
    pub fn without_keyset() -> Self {
        Trust {
            keyset: None,
            unregistered: None,
        }
    }

    /// Also trusts the writer key with this fingerprint, registered or not:
    /// the explicit, named exception (`--accept-unregistered-writer`).
    pub fn accept_unregistered_writer(mut self, fingerprint: Option<String>) -> Self {
        self.unregistered = fingerprint.map(|f| normalize(&f));
        self
    }

    /// The trusted keyset, if there is one.
    pub fn keyset(&self) -> Option<&Keyset> {
        self.keyset.as_ref()
    }

    /// Whether a writer key is trusted, and how.
    pub fn writer(&self, key: &PublicKey) -> WriterTrust {
        if let Some(ks) = &self.keyset
            && let Some((name, _)) = ks.writers().iter().find(|(_, k)| *k == key)
        {
            return WriterTrust::Registered(name.to_string());
        }
        match &self.unregistered {
            Some(fp) if *fp == normalize(&fingerprint(key)) => WriterTrust::AcceptedByName,
            _ => WriterTrust::Untrusted,
        }
    }

    fn describe_keyset(&self) -> String {
        match &self.keyset {
            Some(ks) if ks.writers().is_empty() => format!(
                "the keyset of `{}` (serial {}, which registers no writer at all)",
                ks.fs(),
                ks.serial()
            ),
            Some(ks) => format!("the keyset of `{}` (serial {})", ks.fs(), ks.serial()),
            None => "no keyset (none was trusted)".into(),
        }
    }

    /// Parses a manifest object, checks its signature and that a trusted
    /// writer made it: the writer's key and name.
    fn signer(&self, object: &str, bytes: &[u8]) -> Result<(PublicKey, Option<String>)> {
        let manifest =
            Manifest::from_bytes_any_signer(bytes).map_err(|e| Error::format(object, e))?;
        self.judge(object, *manifest.writer_key(), manifest.sequence())
    }

    /// Whether the writer key that signed manifest `object` of `sequence`
    /// is trusted: registered, or retired after that sequence, or accepted
    /// by name.
    fn judge(
        &self,
        object: &str,
        key: PublicKey,
        sequence: u64,
    ) -> Result<(PublicKey, Option<String>)> {
        // A retired writer's manifests stay valid up to the sequence it was
        // retired at; what it signs later is refused.
        if let Some(ks) = &self.keyset
            && let Some((name, r)) = ks.retired_writers().iter().find(|(_, r)| r.key == key)
        {
            if sequence <= r.last_sequence {
                return Ok((key, Some(format!("{name} (retired)"))));
            }
            return Err(Error::UntrustedWriter {
                object: object.to_owned(),
                fingerprint: fingerprint(&key),
                keyset: format!(
                    "{}, which retired that writer (`{name}`) at {} after snapshot {}",
                    self.describe_keyset(),
                    r.retired,
                    r.last_sequence
                ),
            });
        }
        match self.writer(&key).name() {
            Some(name) => Ok((key, name)),
            None => Err(Error::UntrustedWriter {
                object: object.to_owned(),
                fingerprint: fingerprint(&key),
                keyset: self.describe_keyset(),
            }),
        }
    }
}

/// How [`Trust`] sees a writer key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterTrust {
    /// The keyset registers it, under this name.
    Registered(String),
    /// Accepted for this command by its fingerprint.
    AcceptedByName,
    /// Not trusted.
    Untrusted,
}

impl WriterTrust {
    /// Whether the key is not trusted at all.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, WriterTrust::Untrusted)
    }

    /// The writer's name if trusted (`Some(None)`: accepted by name).
    fn name(self) -> Option<Option<String>> {
        match self {
            WriterTrust::Registered(n) => Some(Some(n)),
            WriterTrust::AcceptedByName => Some(None),
            WriterTrust::Untrusted => None,
        }
    }
}

/// Objects under `snapshots/` that were not trusted: (key, why).
pub type Ignored = Vec<(String, String)>;

fn normalize(fp: &str) -> String {
    fp.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

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
    /// The registered writer that signed it (`None`: a writer accepted by
    /// name with `--accept-unregistered-writer`).
    pub writer: Option<String>,
    /// The fingerprint of the key that signed it.
    pub writer_fingerprint: String,
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
    /// The registered writer that signed it (`None`: accepted by name).
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }
    /// What was checked but could not be proven, and what was ignored
    /// (objects no registered writer signed, a previous manifest no longer
    /// in the store, ...).
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
            writer_fingerprint: fingerprint(self.manifest.writer_key()),
            follows: self.previous.clone(),
        }
    }
}

/// A manifest object in the store, by its name.
struct Listed {
    sequence: u64,
    id: SnapshotId,
    key: String,
}

fn list(source: &dyn ObjectSource, warnings: &mut Vec<String>) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for key in source.list(layout::SNAPSHOTS)? {
        match layout::parse_manifest(&key) {
            Some((sequence, id)) => listed.push(Listed { sequence, id, key }),
            None => warnings.push(format!("ignoring {key}: not a manifest name")),
        }
    }
    listed.sort_by(|a, b| (a.sequence, &a.key).cmp(&(b.sequence, &b.key)));
    Ok(listed)
}

/// Whether an error means "not a manifest a trusted writer made" (ignored
/// with a warning) rather than "a trusted manifest that is broken".
fn untrusted(e: &Error) -> bool {
    match e {
        Error::UntrustedWriter { .. } => true,
        Error::Format { source, .. } => matches!(
            source,
            cbfs_format::Error::BadSignature { .. }
                | cbfs_format::Error::UntrustedSigner { .. }
                | cbfs_format::Error::Malformed { .. }
                | cbfs_format::Error::BadBrand { .. }
        ),
        _ => false,
    }
}

/// The manifest bases in the store (`gc/bases/`), by (sequence, snapshot).
#[derive(Default)]
pub(crate) struct Bases {
    by_name: HashMap<(u64, SnapshotId), String>,
}

impl Bases {
    pub(crate) fn load(source: &dyn ObjectSource) -> Result<Self> {
        let mut by_name = HashMap::new();
        for key in source.list(layout::BASES)? {
            if let Some(name) = layout::parse_base(&key) {
                by_name.insert(name, key);
            }
        }
        Ok(Bases { by_name })
    }

    fn has(&self, sequence: u64, id: SnapshotId) -> bool {
        self.by_name.contains_key(&(sequence, id))
    }

    /// The base of snapshot (`sequence`, `id`), if the store holds one that
    /// parses (it is checked against its manifest by whoever uses it).
    fn get(
        &self,
        source: &dyn ObjectSource,
        sequence: u64,
        id: SnapshotId,
    ) -> Option<ManifestBase> {
        let key = self.by_name.get(&(sequence, id))?;
        let bytes = source.get(key).ok()?;
        ManifestBase::from_bytes(&bytes).ok()
    }
}

/// Verifies one manifest object: a full manifest on its own, a delta
/// through the chain of deltas back to the nearest full manifest, or to
/// the nearest delta that a manifest base completes (all signed by the
/// same trusted writer). Checks that the name matches.
fn verify_object(
    source: &dyn ObjectSource,
    listed: &[Listed],
    chosen: &Listed,
    trust: &Trust,
    bases: &Bases,
) -> Result<(Manifest, Option<String>)> {
    let key = chosen.key.as_str();
    let bytes = source.get(key)?;
    let header = ManifestHeader::peek(&bytes).map_err(|e| Error::format(key, e))?;
    let (manifest, writer) = if !header.delta {
        let (writer_key, writer) = trust.signer(key, &bytes)?;
        let m = Manifest::from_bytes(&bytes, &writer_key).map_err(|e| Error::format(key, e))?;
        (m, writer)
    } else {
        // The delta itself must be a trusted writer's before its chain is read.
        let (writer_key, writer) = trust.signer_of_delta(key, &bytes)?;
        let candidates = |sequence: u64| -> Vec<Vec<u8>> {
            listed
                .iter()
                .filter(|l| l.sequence == sequence)
                .filter_map(|l| source.get(&l.key).ok())
                .collect()
        };
        // Through a base where one stands in for the manifests before a
        // delta; if that fails (a forged base), through the whole chain.
        let via_base = gather_manifest_chain_until(bytes.clone(), &candidates, |h, _| {
            bases.has(h.sequence, h.snapshot)
        })
        .ok()
        .and_then(|chain| {
            let first = ManifestHeader::peek(&chain[0]).ok()?;
            let base = first
                .delta
                .then(|| bases.get(source, first.sequence, first.snapshot))
                .flatten();
            resolve_manifest_chain_from(&chain, &writer_key, base.as_ref()).ok()
        });
        let m = match via_base {
            Some(m) => m,
            None => {
                let chain =
                    gather_manifest_chain(bytes, &candidates).map_err(|e| Error::format(key, e))?;
                resolve_manifest_chain_from(&chain, &writer_key, None)
                    .map_err(|e| Error::format(key, e))?
            }
        };
        (m, writer)
    };
    if manifest.sequence() != chosen.sequence || manifest.snapshot_id() != chosen.id {
        return Err(Error::ManifestName {
            key: key.to_owned(),
            reason: format!(
                "the name says sequence {} and snapshot {}, the signed manifest holds sequence {} and snapshot {}",
                chosen.sequence,
                chosen.id,
                manifest.sequence(),
                manifest.snapshot_id()
            ),
        });
    }
    Ok((manifest, writer))
}

impl Trust {
    /// The trusted writer of a delta manifest object, from its header and
    /// signature alone (its entries need its base).
    fn signer_of_delta(&self, object: &str, bytes: &[u8]) -> Result<(PublicKey, Option<String>)> {
        let key = cbfs_format::delta_writer(bytes).map_err(|e| Error::format(object, e))?;
        // The signature just checked covers the header's sequence.
        let header = ManifestHeader::peek(bytes).map_err(|e| Error::format(object, e))?;
        self.judge(object, key, header.sequence)
    }
}

/// Lists the store's snapshot manifests, picks one and verifies it.
///
/// `selector` is a snapshot id, an id prefix of at least 8 characters, or a
/// sequence number; `None` picks the newest snapshot a trusted writer
/// signed. Objects no trusted writer signed are ignored, each named in the
/// snapshot's warnings. A delta manifest is resolved through the store's
/// earlier manifests back to the nearest full one (or to the nearest one a
/// manifest base completes). The manifest's object name must carry its own
/// sequence and id, and it must follow the manifest it names as previous,
/// which must be one of the store's earlier manifests when any is left, or
/// one a trusted retention record forgot. A snapshot a trusted retention
/// record forgets is not restorable (the newest is never forgotten).
pub fn open_snapshot(
    source: &dyn ObjectSource,
    trust: &Trust,
    selector: Option<&str>,
) -> Result<Snapshot> {
    let mut warnings = Vec::new();
    let listed = list(source, &mut warnings)?;
    if listed.is_empty() {
        return Err(Error::NoSnapshot(format!(
            "the store {} holds no snapshot manifest (snapshots/*.manifest)",
            source.describe()
        )));
    }
    let retention = Retention::load(source, trust)?;
    for (key, why) in retention.ignored() {
        warnings.push(format!("ignored {key}: {why}"));
    }
    let bases = Bases::load(source)?;
    let candidates: Vec<&Listed> = match selector {
        None => listed.iter().rev().collect(),
        Some(sel) => select(&listed, sel)?,
    };
    let newest_listed = listed.last().map(|l| l.sequence);
    let mut chosen: Option<(&Listed, Manifest, Option<String>)> = None;
    // Why each candidate was ignored, newest first.
    let mut refused: Vec<Error> = Vec::new();
    for c in candidates {
        if let Some((first, ..)) = &chosen {
            if c.sequence < first.sequence {
                break;
            }
            // Two trusted manifests of one sequence: a fork.
            match verify_object(source, &listed, c, trust, &bases) {
                Ok(_) => {
                    return Err(Error::Fork {
                        sequence: c.sequence,
                        objects: vec![first.key.clone(), c.key.clone()],
                    });
                }
                // Reported like any other object that is not trusted.
                Err(e) => warnings.push(format!("ignored {}: {e}", c.key)),
            }
            continue;
        }
        match verify_object(source, &listed, c, trust, &bases) {
            Ok((m, writer)) => {
                if let Some(record) =
                    retention.forgets(m.sequence(), m.snapshot_id(), &m.hash(), m.writer_key())
                {
                    // The newest snapshot is never forgotten.
                    let newest = selector.is_none() || newest_listed == Some(c.sequence);
                    if !newest {
                        return Err(Error::NoSnapshot(format!(
                            "snapshot {} ({}) was forgotten by the retention record {record}: it is no longer restorable",
                            m.sequence(),
                            c.key
                        )));
                    }
                    warnings.push(format!(
                        "the retention record {record} forgets the newest snapshot {}: ignored (the newest snapshot is never forgotten)",
                        m.sequence()
                    ));
                }
                chosen = Some((c, m, writer));
            }
            Err(e) if untrusted(&e) => {
                warnings.push(format!("ignored {}: {e}", c.key));
                refused.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((chosen, manifest, writer)) = chosen else {
        // Nothing in the store is signed by a trusted writer, only by keys
        // the keyset does not register: the newest one says which.
        if selector.is_none()
            && !refused.is_empty()
            && refused
                .iter()
                .all(|e| matches!(e, Error::UntrustedWriter { .. }))
        {
            return Err(refused.swap_remove(0));
        }
        return Err(match (refused.pop(), selector) {
            (Some(e), Some(_)) => e,
            (Some(e), None) => Error::NoSnapshot(format!(
                "none of the {} manifests in the store is signed by a trusted writer; the last one tried: {e}",
                listed.len()
            )),
            (None, _) => Error::NoSnapshot("no snapshot matches".into()),
        });
    };
    let mut hashes = Hashes::new(source, &listed);
    let previous = check_chain(
        &mut hashes,
        &chosen.key,
        &manifest,
        &retention,
        &mut warnings,
    )?;
    Ok(Snapshot {
        key: chosen.key.clone(),
        manifest,
        writer,
        previous,
        warnings,
    })
}

/// The store's snapshots as [`snapshot_listing`] sorts them.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every snapshot a trusted writer signed and no trusted retention
    /// record forgets, oldest first.
    pub kept: Vec<Snapshot>,
    /// Snapshots a trusted retention record forgets (whose manifests are
    /// still in the store), with the record's key; oldest first.
    pub forgotten: Vec<(Snapshot, String)>,
    /// Objects that are not trusted, and why.
    pub ignored: Ignored,
    /// The trusted retention records.
    pub retention: Retention,
}

/// Every snapshot of the store that a trusted writer signed, oldest first,
/// each verified (deltas resolved against the snapshot before), from
/// sequence `from` on (see [`snapshot_listing`]); forgotten snapshots left
/// out; and what was ignored, by object.
///
/// The same checks as [`open_snapshot`], for every snapshot listed, so that
/// a listing never shows what a restore refuses: two trusted manifests of
/// one sequence are a [fork](Error::Fork), and each snapshot must follow an
/// earlier manifest of the store when any is left
/// ([`BrokenChain`](Error::BrokenChain)); either fails the whole listing.
pub fn snapshots(
    source: &dyn ObjectSource,
    trust: &Trust,
    from: u64,
) -> Result<(Vec<Snapshot>, Ignored)> {
    let listing = snapshot_listing(source, trust, from)?;
    Ok((listing.kept, listing.ignored))
}

/// Every snapshot of the store that a trusted writer signed, oldest first,
/// each verified (deltas resolved against the snapshot before, or against
/// a manifest base where the manifests before are gone), from sequence
/// `from` on (reading back only as far as the newest full manifest, or
/// base, at or before it, which later deltas need); sorted into kept and
/// forgotten by the store's trusted retention records (the newest snapshot
/// of each writer is always kept); and what was ignored, by object.
pub fn snapshot_listing(source: &dyn ObjectSource, trust: &Trust, from: u64) -> Result<Listing> {
    let mut warnings = Vec::new();
    let listed = list(source, &mut warnings)?;
    let mut ignored: Ignored = warnings
        .into_iter()
        .map(|w| (layout::SNAPSHOTS.to_owned(), w))
        .collect();
    let retention = Retention::load(source, trust)?;
    ignored.extend(retention.ignored().iter().cloned());
    let bases = Bases::load(source)?;
    // Back to the newest full manifest (or based delta) at or before `from`.
    let mut start = listed.partition_point(|l| l.sequence < from);
    let mut fetched: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut i = listed.partition_point(|l| l.sequence <= from);
    while i > 0 && from > 0 {
        i -= 1;
        let bytes = match source.get(&listed[i].key) {
            Ok(b) => b,
            Err(e) if e.is_transient() => return Err(e),
            Err(_) => continue,
        };
        let stop = ManifestHeader::peek(&bytes)
            .is_ok_and(|h| !h.delta || bases.has(h.sequence, h.snapshot));
        fetched.insert(i, bytes);
        start = i;
        if stop {
            break;
        }
    }
    let mut out: Vec<Snapshot> = Vec::new();
    let mut by_hash: HashMap<[u8; 32], usize> = HashMap::new();
    let mut hashes = Hashes::new(source, &listed);
    for (i, l) in listed.iter().enumerate().skip(start) {
        let bytes = match fetched.remove(&i) {
            Some(b) => b,
            None => match source.get(&l.key) {
                Ok(b) => b,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    ignored.push((l.key.clone(), e.to_string()));
                    hashes.unreadable(i, e.to_string());
                    continue;
                }
            },
        };
        hashes.learn(i, &bytes);
        let verified = (|| {
            let header = ManifestHeader::peek(&bytes).map_err(|e| Error::format(&l.key, e))?;
            let (m, writer) = if header.delta {
                let (wk, writer) = trust.signer_of_delta(&l.key, &bytes)?;
                let base = header
                    .previous
                    .and_then(|h| by_hash.get(&h))
                    .map(|&i| &out[i]);
                let m = match base {
                    Some(base) => Manifest::from_delta_bytes(&bytes, &wk, &base.manifest)
                        .map_err(|e| Error::format(&l.key, e))?,
                    None => {
                        let completed = bases
                            .get(source, l.sequence, l.id)
                            .ok_or_else(|| Error::BrokenChain {
                                key: l.key.clone(),
                                previous: format!("sequence {}", l.sequence.saturating_sub(1)),
                                reason: "it is a delta, and the manifest it follows is missing, altered or untrusted".into(),
                            })?;
                        Manifest::from_delta_with_base(&bytes, &wk, &completed)
                            .map_err(|e| Error::format(&l.key, e))?
                    }
                };
                (m, writer)
            } else {
                let (wk, writer) = trust.signer(&l.key, &bytes)?;
                let m = Manifest::from_bytes(&bytes, &wk).map_err(|e| Error::format(&l.key, e))?;
                (m, writer)
            };
            if m.sequence() != l.sequence || m.snapshot_id() != l.id {
                return Err(Error::ManifestName {
                    key: l.key.clone(),
                    reason: "its name does not carry its own sequence and id".into(),
                });
            }
            Ok((m, writer))
        })();
        match verified {
            Ok((manifest, writer)) => {
                let previous = manifest
                    .previous_hash()
                    .and_then(|h| by_hash.get(&h))
                    .map(|&i| out[i].key.clone());
                by_hash.insert(manifest.hash(), out.len());
                out.push(Snapshot {
                    key: l.key.clone(),
                    manifest,
                    writer,
                    previous,
                    warnings: Vec::new(),
                });
            }
            Err(e) => ignored.push((l.key.clone(), e.to_string())),
        }
    }
    out.retain(|s| s.sequence() >= from);
    // A fork: more than one trusted manifest of a sequence.
    for pair in out.windows(2) {
        if pair[0].sequence() == pair[1].sequence() {
            let sequence = pair[0].sequence();
            return Err(Error::Fork {
                sequence,
                objects: out
                    .iter()
                    .filter(|s| s.sequence() == sequence)
                    .map(|s| s.key.clone())
                    .collect(),
            });
        }
    }
    // Each follows an earlier manifest of the store, as open_snapshot checks.
    for snap in &mut out {
        let mut warnings = Vec::new();
        snap.previous = check_chain(
            &mut hashes,
            &snap.key,
            &snap.manifest,
            &retention,
            &mut warnings,
        )?;
        snap.warnings = warnings;
    }
    // The newest snapshot of each writer is never forgotten.
    let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
    for s in &out {
        let w = s.manifest.writer_key().to_compressed_bytes().to_vec();
        let seq = newest.entry(w).or_default();
        *seq = (*seq).max(s.sequence());
    }
    let mut listing = Listing {
        ignored,
        ..Listing::default()
    };
    for s in out {
        let m = &s.manifest;
        let w = m.writer_key().to_compressed_bytes().to_vec();
        match retention.forgets(m.sequence(), m.snapshot_id(), &m.hash(), m.writer_key()) {
            Some(record) if newest.get(&w) != Some(&m.sequence()) => {
                let record = record.to_owned();
                listing.forgotten.push((s, record));
            }
            Some(record) => {
                listing.ignored.push((
                    record.to_owned(),
                    format!(
                        "it forgets the newest snapshot {} of its writer: not honoured",
                        m.sequence()
                    ),
                ));
                listing.kept.push(s);
            }
            None => listing.kept.push(s),
        }
    }
    listing.retention = retention;
    Ok(listing)
}

fn select<'a>(listed: &'a [Listed], sel: &str) -> Result<Vec<&'a Listed>> {
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
    if matches.is_empty() {
        return Err(Error::NoSnapshot(format!(
            "no snapshot matches `{sel}`; the store holds sequences {}..={}",
            listed[0].sequence,
            listed.last().expect("not empty").sequence
        )));
    }
    let ids: std::collections::BTreeSet<SnapshotId> = matches.iter().map(|l| l.id).collect();
    if !by_sequence && ids.len() > 1 {
        return Err(Error::NoSnapshot(format!(
            "`{sel}` matches {} manifests: {}; give more of the id",
            matches.len(),
            matches
                .iter()
                .map(|l| l.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(matches.into_iter().rev().collect())
}

/// What is known of one object under `snapshots/`: the SHA-256 of its
/// bytes and the sequence its header holds (`None`: not a manifest), or
/// why it could not be read.
type ObjectHash = std::result::Result<([u8; 32], Option<u64>), String>;

/// The SHA-256 and the header's sequence of the store's manifest objects,
/// read once each, as the chain checks need them.
struct Hashes<'a> {
    source: &'a dyn ObjectSource,
    listed: &'a [Listed],
    known: HashMap<usize, ObjectHash>,
}

impl<'a> Hashes<'a> {
    fn new(source: &'a dyn ObjectSource, listed: &'a [Listed]) -> Self {
        Hashes {
            source,
            listed,
            known: HashMap::new(),
        }
    }

    /// Remembers the bytes of object `i`, read by the caller.
    fn learn(&mut self, i: usize, bytes: &[u8]) {
        let sequence = ManifestHeader::peek(bytes).ok().map(|h| h.sequence);
        self.known
            .insert(i, Ok((<[u8; 32]>::from(Sha256::digest(bytes)), sequence)));
    }

    /// Remembers that object `i` could not be read.
    fn unreadable(&mut self, i: usize, why: String) {
        self.known.insert(i, Err(why));
    }

    /// The hash and header sequence of object `i` (`None` in the header if
    /// it is not a manifest), reading it if it was not read yet.
    fn get(&mut self, i: usize) -> Result<ObjectHash> {
        if let Some(known) = self.known.get(&i) {
            return Ok(known.clone());
        }
        match self.source.get(&self.listed[i].key) {
            Ok(bytes) => self.learn(i, &bytes),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => self.unreadable(i, e.to_string()),
        }
        Ok(self.known[&i].clone())
    }
}

/// Checks that `manifest` follows an earlier manifest of the store: the one
/// whose bytes hash to the `previous` it names (its signature covers that
/// hash, so the match proves those bytes), with a lower sequence number; or
/// one a trusted retention record forgot (by its hash). Returns the key of
/// that manifest, if the store still holds it.
fn check_chain(
    hashes: &mut Hashes<'_>,
    key: &str,
    manifest: &Manifest,
    retention: &Retention,
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let listed = hashes.listed;
    // `listed` is in sequence order: the earlier manifests, nearest first.
    let earlier = listed.partition_point(|l| l.sequence < manifest.sequence());
    let Some(wanted) = manifest.previous_hash() else {
        if earlier > 0 {
            warnings.push(format!(
                "{key} claims to be the first snapshot, yet the store holds {earlier} earlier manifest(s) \
                 (an agent index rebuilt from scratch, or a fork)"
            ));
        }
        return Ok(None);
    };
    let mut unreadable = Vec::new();
    for i in (0..earlier).rev() {
        let prev = &listed[i];
        let (hash, header_sequence) = match hashes.get(i)? {
            Ok(found) => found,
            Err(why) => {
                unreadable.push(why);
                continue;
            }
        };
        if hash != wanted {
            continue;
        }
        let header_sequence = header_sequence.ok_or_else(|| Error::BrokenChain {
            key: key.to_owned(),
            previous: prev.key.clone(),
            reason: "the manifest it names as previous is not a manifest".into(),
        })?;
        if header_sequence >= manifest.sequence() || header_sequence != prev.sequence {
            return Err(Error::BrokenChain {
                key: key.to_owned(),
                previous: prev.key.clone(),
                reason: "the sequence number does not increase".into(),
            });
        }
        return Ok(Some(prev.key.clone()));
    }
    if let Some((sequence, _)) = retention.forgotten_manifest(&wanted, manifest.writer_key()) {
        if sequence >= manifest.sequence() {
            return Err(Error::BrokenChain {
                key: key.to_owned(),
                previous: format!("forgotten snapshot {sequence}"),
                reason: "the sequence number does not increase".into(),
            });
        }
        return Ok(None);
    }
    match earlier.checked_sub(1) {
        None => {
            warnings.push(format!(
                "the manifest {key} follows is no longer in the store (pruned?): the chain was not checked"
            ));
            Ok(None)
        }
        Some(nearest) => Err(Error::BrokenChain {
            key: key.to_owned(),
            previous: listed[nearest].key.clone(),
            reason: format!(
                "its previous-manifest hash matches none of the {earlier} earlier manifest(s) in the store \
                 (rolled back or forked?){}",
                if unreadable.is_empty() {
                    String::new()
                } else {
                    format!("; unreadable: {}", unreadable.join("; "))
                }
            ),
        }),
    }
}
