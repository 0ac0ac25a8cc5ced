//! Key rotation: `rotate-scope` (a new key version, every lockbox of the
//! scope sealed again, no segment touched), `rotate-admin` (a hand-over to
//! the next version of the administrator's signing key) and `rotate-writer`.
//!
//! Each publishes the new keyset three ways: the keyset file, the store
//! (`keysets/<serial>.json`, where readers and agents find it) and the
//! delegation nodes given (which then refuse the retired keys).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cbfs_core::{AdminSecret, Error, KeySource, Keyset, ScopeLabel, Unlock, UserName, UserPublic};
use cbfs_format::{
    GroupId, Lockbox, Manifest, OpeningKey, SealingKey, SegmentId, StoredLockbox, layout,
};
use cbfs_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::{load_admin, replace_public};
use crate::nodes::{Nodes, TooFewNodes, check_url};
use crate::output::emit;

/// Lockboxes fetched, opened and sealed again per batch: bounds memory.
const BATCH: usize = 512;
/// Store requests in flight at once.
const IN_FLIGHT: usize = 32;

/// A store operation failed: exit 5 when worth retrying, else 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailed(pub String, pub bool);

impl StoreFailed {
    fn new(what: &str, e: cbfs_store::Error) -> Self {
        let transient = e.is_transient();
        StoreFailed(format!("{what}: {e}"), transient)
    }
}

/// Objects that could not be handled; the rest was (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damaged(pub String);

/// The journal of a rotation in progress, beside the keyset file: a rerun
/// finishes it instead of starting another.
#[derive(Serialize, Deserialize)]
struct Journal {
    format: String,
    scope: ScopeLabel,
    to_version: u32,
    serial: u64,
}

fn journal_path(keyset: &Path) -> PathBuf {
    let mut name = keyset.file_name().unwrap_or_default().to_owned();
    name.push(".rotation");
    keyset.with_file_name(name)
}

/// Where a new keyset goes besides its file.
pub struct Publish {
    pub store: Option<String>,
    pub nodes: Vec<String>,
    pub node_timeout: u64,
}

/// What publishing did.
struct Published {
    store: Option<String>,
    nodes: Vec<(String, Option<String>)>,
}

impl Published {
    fn json(&self) -> serde_json::Value {
        json!({
            "store": self.store,
            "nodes": self.nodes.iter().map(|(u, e)| json!({ "url": u, "updated": e.is_none(), "error": e })).collect::<Vec<_>>(),
        })
    }

    fn text(&self) -> String {
        let mut s = String::new();
        if let Some(store) = &self.store {
            s.push_str(&format!("  published to the store {store}\n"));
        }
        for (url, e) in &self.nodes {
            match e {
                None => s.push_str(&format!("  node {url}: has the new keyset\n")),
                Some(e) => s.push_str(&format!("  node {url}: NOT updated: {e}\n")),
            }
        }
        s
    }

    fn check(&self) -> Result<()> {
        let failed: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(u, _)| u.as_str())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(TooFewNodes(format!(
                "nodes {} do not have the new keyset yet (they still accept retired keys); rerun when they are back",
                failed.join(", ")
            ))
            .into())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn open_store(spec: &str) -> Result<Store> {
    Store::open(spec).map_err(|e| StoreFailed::new(&format!("cannot open store {spec}"), e).into())
}

/// Puts the keyset into the store (a no-op if it is there already) and
/// sends it to the nodes.
fn publish(rt: &tokio::runtime::Runtime, ks: &Keyset, to: &Publish) -> Result<Published> {
    let bytes = ks.signed_bytes().to_vec();
    let mut out = Published {
        store: None,
        nodes: Vec::new(),
    };
    if let Some(spec) = &to.store {
        let store = open_store(spec)?;
        let key = layout::keyset(ks.serial());
        rt.block_on(store.put_new(&key, bytes.clone()))
            .map_err(|e| StoreFailed::new(&format!("cannot publish the keyset as {key}"), e))?;
        out.store = Some(store.describe().to_owned());
    }
    if !to.nodes.is_empty() {
        let urls = to
            .nodes
            .iter()
            .map(|u| check_url(u).map_err(|e| anyhow::Error::from(Error::Usage(e))))
            .collect::<Result<Vec<_>>>()?;
        let nodes = Nodes::new(Duration::from_secs(to.node_timeout.max(1)))?;
        for (url, answer) in urls.iter().zip(nodes.keyset(&urls, &bytes)) {
            out.nodes
                .push((url.clone(), answer.err().map(|e| e.to_string())));
        }
    }
    Ok(out)
}

/// Reads a keyset file back after writing it, for its signed bytes.
fn write_keyset(path: &Path, ks: &Keyset, admin: &AdminSecret) -> Result<Keyset> {
    replace_public(path, &ks.to_signed_bytes(admin)?)?;
    Ok(Keyset::load(path)?)
}

/// What `rotate-scope` was asked to do.
pub struct RotateScope {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub scope: ScopeLabel,
    pub store: String,
    pub publish: Publish,
}

pub fn rotate_scope(json: bool, unlock: &Unlock, a: RotateScope) -> Result<()> {
    let mut ks = Keyset::load(&a.keyset)?;
    let admin = load_admin(&a.admin, unlock, &ks)?;
    let Some(current) = ks.scope_version(&a.scope) else {
        return Err(Error::Usage(format!(
            "scope `{}` is not in keyset {}",
            a.scope,
            a.keyset.display()
        ))
        .into());
    };
    let jpath = journal_path(&a.keyset);
    let journal: Option<Journal> = match std::fs::read(&jpath) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("the rotation journal {} is damaged", jpath.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", jpath.display())),
    };
    let (to_version, resumed) = match journal {
        Some(j) if j.scope != a.scope => {
            return Err(Error::Usage(format!(
                "the rotation of scope `{}` to key version {} is not finished ({}): run rotate-scope --scope {} first",
                j.scope,
                j.to_version,
                jpath.display(),
                j.scope
            ))
            .into());
        }
        Some(j) if j.to_version == current => (current, true),
        Some(j) if j.to_version == current + 1 => {
            // It stopped before the keyset file was written: do that now.
            let v = ks.rotate_scope(&admin, &a.scope)?;
            ks = write_keyset(&a.keyset, &ks, &admin)?;
            (v, true)
        }
        Some(j) => bail!(
            "the rotation journal {} names key version {} of scope `{}`, but the keyset's current version is {current}: remove the journal if the keyset file was replaced on purpose",
            jpath.display(),
            j.to_version,
            a.scope
        ),
        None => {
            let mut next = ks.clone();
            let v = next.rotate_scope(&admin, &a.scope)?;
            let j = Journal {
                format: "cbfs-rotation".into(),
                scope: a.scope.clone(),
                to_version: v,
                serial: next.serial(),
            };
            crate::commands::write_new_private(&jpath, &serde_json::to_vec_pretty(&j)?)?;
            ks = write_keyset(&a.keyset, &next, &admin)?;
            (v, false)
        }
    };
    let rt = runtime()?;
    let published = publish(
        &rt,
        &ks,
        &Publish {
            store: Some(a.store.clone()),
            nodes: a.publish.nodes.clone(),
            node_timeout: a.publish.node_timeout,
        },
    )?;
    let store = open_store(&a.store)?;
    let started = Instant::now();
    let outcome = reseal(&rt, &store, &admin, &ks, &a.scope, to_version)?;
    let seconds = started.elapsed().as_secs_f64();
    let finished = outcome.damaged.is_empty();
    if finished {
        let _ = std::fs::remove_file(&jpath);
    }
    emit(
        json,
        json!({
            "scope": a.scope, "from_version": to_version - 1, "to_version": to_version,
            "serial": ks.serial(), "resumed": resumed, "finished": finished,
            "resealed": outcome.resealed, "already": outcome.already,
            "lockboxes_per_second": outcome.resealed as f64 / seconds.max(1e-9),
            "seconds": seconds,
            "damaged": outcome.damaged, "published": published.json(),
        }),
        || {
            let mut s = format!(
                "{} scope `{}` to key version {to_version} (keyset serial {})\n  lockboxes sealed again: {}, already done: {}, in {seconds:.1} s\n",
                if resumed {
                    "resumed the rotation of"
                } else {
                    "rotated"
                },
                a.scope,
                ks.serial(),
                outcome.resealed,
                outcome.already
            );
            s.push_str(&published.text());
            for d in &outcome.damaged {
                s.push_str(&format!("  NOT sealed again: {d}\n"));
            }
            if finished {
                s.push_str("The old lockboxes are garbage now; no segment was touched.\nDelegations of the retired key stop working on nodes that have the new keyset: issue them again with cbfs-keytool delegate --reissue.\n");
            } else {
                s.push_str("The rotation is not finished: rerun the same command to resume it.\n");
            }
            s
        },
    );
    if !finished {
        return Err(Damaged(format!(
            "{} lockboxes of scope `{}` could not be sealed again (see above); the others were",
            outcome.damaged.len(),
            a.scope
        ))
        .into());
    }
    published.check()
}

/// One lockbox sealed again: its new key and bytes; `None` when it is
/// another scope's; `Err` names what was wrong with it.
type Sealed = Result<Option<(String, Vec<u8>)>, String>;

struct Resealed {
    resealed: u64,
    already: u64,
    damaged: Vec<String>,
}

/// Seals every lockbox of `scope` whose group has none under `to_version`
/// again under that version. Old lockboxes stay (garbage now); a rerun
/// skips what is done.
fn reseal(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    admin: &AdminSecret,
    ks: &Keyset,
    scope: &ScopeLabel,
    to_version: u32,
) -> Result<Resealed> {
    let listed = rt
        .block_on(store.list(layout::LOCKBOXES))
        .map_err(|e| StoreFailed::new("cannot list lockboxes/", e))?;
    // Per (segment, group): the versions present and their keys.
    let mut groups: BTreeMap<(SegmentId, GroupId), Vec<(u32, String)>> = BTreeMap::new();
    for o in listed {
        let mut parts = o
            .key
            .strip_prefix(layout::LOCKBOXES)
            .unwrap_or("")
            .splitn(2, '/');
        let (Some(seg), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(segment), Some((group, version))) =
            (seg.parse::<SegmentId>(), layout::parse_lockbox_name(name))
        else {
            continue;
        };
        groups
            .entry((segment, group))
            .or_default()
            .push((version, o.key));
    }
    let mut todo = Vec::new();
    let mut already = 0u64;
    for ((segment, group), mut versions) in groups {
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        if versions.iter().any(|(v, _)| *v == to_version) {
            // Done before, or sealed under the new key by the agent; it
            // counts only if it is this scope's, which its object says.
            already += 1;
            continue;
        }
        // The newest older lockbox is the one to open.
        if let Some((v, key)) = versions.into_iter().find(|(v, _)| *v < to_version) {
            todo.push((segment, group, v, key));
        }
    }
    let bar = progress(todo.len() as u64);
    let new_pk = *ks
        .scope_key(scope, to_version)
        .expect("the keyset holds the version it rotated to");
    // The scope's secret of each version to open, derived once, and the
    // new public key made ready to seal every lockbox under.
    let secrets: BTreeMap<u32, OpeningKey> = todo
        .iter()
        .map(|(_, _, v, _)| *v)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .map(|v| (v, OpeningKey::new(admin.scope_at(scope, v).secret_key())))
        .collect();
    let new_pk = SealingKey::new(&new_pk);
    let mut out = Resealed {
        resealed: 0,
        already,
        damaged: Vec::new(),
    };
    // Three stages, a batch each at a time, so that the store's reads and
    // writes (and the flush of each written batch) overlap with the sealing
    // on every core: fetch ─▶ open and seal ─▶ write.
    let (fetched_tx, fetched_rx) = std::sync::mpsc::sync_channel::<Fetched<'_>>(1);
    let (sealed_tx, sealed_rx) = std::sync::mpsc::sync_channel::<Vec<(String, Vec<u8>)>>(1);
    let sealing = Sealing {
        scope,
        to_version,
        new_pk: &new_pk,
        secrets: &secrets,
    };
    let todo = &todo;
    let written = std::thread::scope(|s| -> Result<()> {
        let fetcher = s.spawn(move || -> Result<()> {
            for chunk in todo.chunks(BATCH) {
                let fetched = fetch(rt, store, chunk)?;
                if fetched_tx.send((chunk, fetched)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let bar = &bar;
        let writer = s.spawn(move || -> Result<u64> {
            let mut written_so_far = 0u64;
            let mut n = 0u64;
            for puts in sealed_rx {
                let count = puts.len() as u64;
                write(rt, store, puts, &mut written_so_far)?;
                n += count;
                if let Some(b) = bar {
                    b.inc(count);
                }
            }
            Ok(n)
        });
        for (chunk, fetched) in fetched_rx {
            let mut puts = Vec::new();
            let mut others = 0;
            for r in sealing.seal_batch(chunk, fetched) {
                match r {
                    Ok(Some(put)) => puts.push(put),
                    Ok(None) => others += 1,
                    Err(e) => out.damaged.push(e),
                }
            }
            if let Some(b) = bar {
                // Another scope's lockboxes are done as soon as they are seen.
                b.inc(others);
            }
            if sealed_tx.send(puts).is_err() {
                // The writer stopped; its error is reported below.
                break;
            }
        }
        drop(sealed_tx);
        let fetched = fetcher.join().expect("the fetching thread does not panic");
        let written = writer.join().expect("the writing thread does not panic");
        // The writer's failure stops the fetching (its channel closes); it
        // is the cause to report.
        out.resealed = written?;
        fetched?;
        Ok(())
    });
    written?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(out)
}

/// A batch of lockboxes to do, and their bytes as fetched (or why not).
type Fetched<'a> = (
    &'a [(SegmentId, GroupId, u32, String)],
    Vec<Result<Vec<u8>, String>>,
);

/// Fetches the lockboxes of `chunk`, a few requests at a time. A transient
/// failure of the store stops the rotation (a rerun resumes); a lockbox
/// that cannot be read is named as damaged.
fn fetch(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    chunk: &[(SegmentId, GroupId, u32, String)],
) -> Result<Vec<Result<Vec<u8>, String>>> {
    let fetched: Vec<Result<Vec<u8>, (bool, String)>> = rt.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(chunk.iter().map(|(_, _, _, key)| async move {
            store
                .get(key)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| (e.is_transient(), format!("{key}: {e}")))
        }))
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
    });
    if let Some(Err((_, e))) = fetched.iter().find(|r| matches!(r, Err((true, _)))) {
        return Err(StoreFailed(
            format!("the store failed while reading lockboxes ({e}); rerun to resume"),
            true,
        )
        .into());
    }
    Ok(fetched.into_iter().map(|r| r.map_err(|(_, e)| e)).collect())
}

/// What opening and sealing a lockbox again needs.
struct Sealing<'a> {
    scope: &'a ScopeLabel,
    to_version: u32,
    new_pk: &'a SealingKey,
    secrets: &'a BTreeMap<u32, OpeningKey>,
}

impl Sealing<'_> {
    /// Opens and seals a batch again, on every core.
    fn seal_batch(
        &self,
        chunk: &[(SegmentId, GroupId, u32, String)],
        fetched: Vec<Result<Vec<u8>, String>>,
    ) -> Vec<Sealed> {
        let work: Vec<_> = chunk.iter().zip(fetched).collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per = work.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = work
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        // Parsed together: their capsules are checked at once.
                        let mut parsed = StoredLockbox::from_many(
                            part.iter().filter_map(|(_, bytes)| bytes.as_deref().ok()),
                        )
                        .into_iter();
                        part.iter()
                            .map(|((segment, group, version, key), bytes)| {
                                bytes.as_ref().map_err(Clone::clone)?;
                                let lb = parsed.next().expect("one per lockbox read");
                                self.seal_one(segment, group, *version, key, lb)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("sealing does not panic"))
                .collect()
        })
    }

    fn seal_one(
        &self,
        segment: &SegmentId,
        group: &GroupId,
        version: u32,
        key: &str,
        lb: Result<StoredLockbox, cbfs_format::Error>,
    ) -> Sealed {
        // Parsed and opened on the rotation's path: the same checks as
        // `Lockbox::from_bytes` and `open`, and the same lockbox out as
        // `seal_existing_at` makes, at a fraction of the cost.
        let lb = lb.map_err(|e| format!("{key}: {e}"))?;
        let h = lb.header();
        if h.scope() != self.scope.as_str() {
            return Ok(None);
        }
        if h.group_id() != *group || h.segment_id() != *segment || h.key_version() != version {
            return Err(format!(
                "{key}: it names another segment, group or key version"
            ));
        }
        let secret = &self.secrets[&version];
        let gk = lb.open(secret).map_err(|e| format!("{key}: {e}"))?;
        let new = Lockbox::sealed_bytes(
            self.scope.as_str(),
            self.to_version,
            self.new_pk,
            *segment,
            &gk,
        )
        .map_err(|e| format!("{key}: {e}"))?;
        Ok(Some((
            layout::lockbox_at(segment, group, self.to_version),
            new,
        )))
    }
}

/// Writes a batch of new lockboxes, then flushes it to disk at once. An
/// object already there under its name is another run's copy: never
/// overwritten, and fine.
fn write(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    puts: Vec<(String, Vec<u8>)>,
    written_so_far: &mut u64,
) -> Result<()> {
    let written: Vec<Result<(), cbfs_store::Error>> =
        if abort_after().is_some() {
            // One at a time: the test hook stops the run in the middle of a
            // batch.
            rt.block_on(async {
                use futures::StreamExt;
                futures::stream::iter(puts.into_iter().map(|(key, bytes)| async move {
                    store.put_new(&key, bytes).await.map(|_| ())
                }))
                .buffered(1)
                .inspect(|_| abort_if_asked(written_so_far))
                .collect()
                .await
            })
        } else {
            let puts = puts.into_iter().map(|(k, b)| (k, b.into())).collect();
            rt.block_on(store.put_many_new(puts, IN_FLIGHT))
                .into_iter()
                .map(|r| r.map(|_| ()))
                .collect()
        };
    for w in written {
        if let Err(e) = w
            && !e.is_already_exists()
        {
            return Err(StoreFailed::new("cannot write a lockbox; rerun to resume", e).into());
        }
    }
    Ok(())
}

/// Test-suite builds only: `CBFS_TEST_ABORT_AFTER=N` ends the process
/// abruptly (as kill -9 would) after N lockboxes are written, to test that
/// a rerun resumes.
fn abort_if_asked(count: &mut u64) {
    *count += 1;
    if abort_after().is_some_and(|n| *count >= n) {
        std::process::abort();
    }
}

fn abort_after() -> Option<u64> {
    if !cbfs_core::test_hooks() {
        return None;
    }
    std::env::var("CBFS_TEST_ABORT_AFTER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
}

fn progress(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || len == 0 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sealing lockboxes again {pos}/{len} [{bar:30}] {per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    Some(bar)
}

/// What `rotate-admin` was asked to do.
pub struct RotateAdmin {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub publish: Publish,
}

pub fn rotate_admin(json: bool, unlock: &Unlock, a: RotateAdmin) -> Result<()> {
    let mut ks = Keyset::load(&a.keyset)?;
    let old = load_admin(&a.admin, unlock, &ks)?;
    let old_fp = cbfs_core::fingerprint(&old.verifying_key());
    let new = ks.rotate_admin(old)?;
    let ks = write_keyset(&a.keyset, &ks, &new)?;
    let rt = runtime()?;
    let published = publish(&rt, &ks, &a.publish)?;
    let new_fp = cbfs_core::fingerprint(ks.admin_verifying_key());
    emit(
        json,
        json!({
            "from": old_fp, "to": new_fp, "admin_key_version": ks.admin_key_version(),
            "serial": ks.serial(), "published": published.json(),
        }),
        || {
            let mut s = format!(
                "the administrator's key of `{}` handed over: {old_fp} -> {new_fp} (key version {}, keyset serial {})\n",
                ks.fs(),
                ks.admin_key_version(),
                ks.serial()
            );
            s.push_str(&published.text());
            s.push_str("Readers and agents that pinned the old key follow the hand-over, and refuse what the old key signs alone from now on.\nDelegations signed by the old key stop working on nodes that have the new keyset: issue them again with cbfs-keytool delegate --reissue, scope by scope.\n");
            s
        },
    );
    published.check()
}

/// What `rotate-writer` was asked to do.
pub struct RotateWriter {
    pub admin: KeySource,
    pub keyset: PathBuf,
    pub writer: UserName,
    pub public: PathBuf,
    pub last_sequence: Option<u64>,
    pub publish: Publish,
}

pub fn rotate_writer(json: bool, unlock: &Unlock, a: RotateWriter) -> Result<()> {
    let mut ks = Keyset::load(&a.keyset)?;
    let admin = load_admin(&a.admin, unlock, &ks)?;
    let new = UserPublic::load(&a.public)?;
    let Some(old_key) = ks.writers().get(&a.writer).copied() else {
        return Err(Error::Usage(format!(
            "writer `{}` is not registered in keyset {}",
            a.writer,
            a.keyset.display()
        ))
        .into());
    };
    let rt = runtime()?;
    let last = match (a.last_sequence, &a.publish.store) {
        (Some(n), _) => n,
        (None, Some(spec)) => {
            let store = open_store(spec)?;
            newest_sequence_of(&rt, &store, &old_key)?
        }
        (None, None) => {
            return Err(Error::Usage(
                "give --store (to find the last snapshot the old writer signed) or --last-sequence N"
                    .into(),
            )
            .into());
        }
    };
    ks.rotate_writer(&admin, &a.writer, new.name(), *new.verifying_key(), last)?;
    let ks = write_keyset(&a.keyset, &ks, &admin)?;
    let published = publish(&rt, &ks, &a.publish)?;
    emit(
        json,
        json!({
            "retired": a.writer, "retired_fingerprint": cbfs_core::fingerprint(&old_key),
            "last_sequence": last, "writer": new.name(),
            "fingerprint": cbfs_core::fingerprint(new.verifying_key()),
            "serial": ks.serial(), "published": published.json(),
        }),
        || {
            let mut s = format!(
                "retired writer `{}` ({}) after snapshot {last}; registered `{}` ({}); keyset serial {}\n",
                a.writer,
                cbfs_core::fingerprint(&old_key),
                new.name(),
                cbfs_core::fingerprint(new.verifying_key()),
                ks.serial()
            );
            s.push_str(&published.text());
            s.push_str("Snapshots the old key signed up to that sequence stay valid; anything it signs later is refused. Run the agent with the new key (--writer-key).\n");
            s
        },
    );
    published.check()
}

/// The highest sequence of a manifest in the store signed by `writer`.
fn newest_sequence_of(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    writer: &cbfs_core::umbral_pre::PublicKey,
) -> Result<u64> {
    let mut keys: Vec<(u64, String)> = rt
        .block_on(store.list(layout::SNAPSHOTS))
        .map_err(|e| StoreFailed::new("cannot list snapshots/", e))?
        .into_iter()
        .filter_map(|o| layout::parse_manifest(&o.key).map(|(seq, _)| (seq, o.key)))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.0));
    for (seq, key) in keys {
        let bytes = rt
            .block_on(store.get(&key))
            .map_err(|e| StoreFailed::new(&format!("cannot read {key}"), e))?;
        // A full manifest, or a delta one (which names its signer too).
        let signer = Manifest::from_bytes_any_signer(&bytes)
            .map(|m| *m.writer_key())
            .or_else(|_| cbfs_format::delta_writer(&bytes));
        if signer.is_ok_and(|k| k == *writer) {
            return Ok(seq);
        }
    }
    Ok(0)
}
