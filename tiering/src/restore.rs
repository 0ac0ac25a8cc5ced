//! `cbfs-tier restore` and `cbfs-tier verify`: reading a store back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cbfs_core::{KeySource, Keyset, Unlock, UserName, UserPublic, UserSecret};
use cbfs_format::{Lockbox, Metadata, SegmentId, Summary, layout};
use cbfs_recover::{
    DirSink, GrantOpener, LockboxOpener, ObjectSource, PathFilter, Report, Sink, identify,
    load_grants, load_keyset, open_snapshot,
};
use cbfs_store::Store;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::remote::{NodeOpener, NodeOptions};
use crate::source::StoreSource;

/// How to reach a store for reading.
pub struct Reader {
    rt: tokio::runtime::Runtime,
    source: StoreSource,
    keyset: Option<Keyset>,
}

impl Reader {
    /// Opens `spec`; the keyset is the store's own newest one unless
    /// `keyset_override` names a file.
    pub fn open(spec: &str, keyset_override: Option<&std::path::Path>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the I/O runtime", PathBuf::new(), e))?;
        let store = Store::open(spec)?;
        let source = StoreSource::open(spec, store, rt.handle().clone())?;
        let keyset = match load_keyset(&source, keyset_override) {
            Ok(k) => Some(k),
            Err(e) if keyset_override.is_some() => return Err(Error::Usage(e.to_string())),
            Err(_) => None,
        };
        Ok(Reader { rt, source, keyset })
    }

    fn keyset(&self) -> Result<&Keyset> {
        self.keyset.as_ref().ok_or_else(|| {
            Error::Usage("the store holds no keyset; give --keyset KEYSET.json".into())
        })
    }
}

/// The identity a restore decrypts with.
pub fn opener_for(
    keyset: &Keyset,
    identity: &KeySource,
    kfrags: Option<&std::path::Path>,
) -> Result<Box<dyn LockboxOpener>> {
    let seed = identity.load(&Unlock::from_env())?;
    if let Some(dir) = kfrags {
        let user = UserSecret::from_seed(seed);
        let grants = load_grants(dir, keyset).map_err(|e| Error::Usage(e.to_string()))?;
        let opener =
            GrantOpener::new(&user, grants, keyset).map_err(|e| Error::Usage(e.to_string()))?;
        return Ok(Box::new(opener));
    }
    match identify(seed, keyset) {
        Some(id) => Ok(Box::new(id)),
        None => Err(Error::Usage(format!(
            "{identity} is neither the root secret nor a scope secret of `{}`; \
             a user restores with their own key and --kfrags DIR (their delegation)",
            keyset.fs()
        ))),
    }
}

/// What `cbfs-tier restore` is asked to do.
pub struct RestoreOptions<'a> {
    /// The store.
    pub store: &'a str,
    /// A keyset file instead of the store's own.
    pub keyset: Option<&'a std::path::Path>,
    /// The user's (or administrator's) secret.
    pub identity: &'a KeySource,
    /// The user's delegation grants.
    pub kfrags: Option<&'a std::path::Path>,
    /// Which snapshot (newest if `None`).
    pub snapshot: Option<&'a str>,
    /// What to restore: a path prefix, or `.` for everything.
    pub path: &'a str,
    /// Where to.
    pub dest: &'a std::path::Path,
    /// The agent's index, to refuse a store rolled back behind it.
    pub index: Option<&'a std::path::Path>,
    /// Show a progress bar.
    pub progress: bool,
    /// Delegation nodes to unlock through (instead of `kfrags`).
    pub nodes: &'a [String],
    /// With `nodes`: who the user is, a name or a `NAME.pub` file.
    pub user: Option<&'a str>,
    /// With `nodes`: m, or 0 to take it from the nodes' answers.
    pub threshold: usize,
    /// With `nodes`: how long one node gets to answer one batch.
    pub node_timeout: std::time::Duration,
}

/// The user a `--user` argument names: a `NAME.pub` file (checked against the
/// secret) or a bare name.
fn user_name(arg: &str, secret: &UserSecret) -> Result<UserName> {
    let path = std::path::Path::new(arg);
    if arg.ends_with(".pub") || path.is_file() {
        let public = UserPublic::load(path)?;
        public.check_secret(secret).map_err(|_| {
            Error::Usage(format!(
                "the --identity secret is not the key of user `{}` ({arg})",
                public.name()
            ))
        })?;
        return Ok(public.name().clone());
    }
    UserName::new(arg).map_err(|e| Error::Usage(format!("--user {arg}: {e}")))
}

/// What opens a restore's lockboxes: a local identity, or delegation nodes
/// (whose notes on failing nodes go into the report).
enum RestoreOpener {
    Local(Box<dyn LockboxOpener>),
    Nodes(Box<NodeOpener>),
}

impl RestoreOpener {
    fn as_dyn(&self) -> &dyn LockboxOpener {
        match self {
            RestoreOpener::Local(o) => o.as_ref(),
            RestoreOpener::Nodes(o) => o.as_ref(),
        }
    }
}

/// The opener of a restore: through delegation nodes, or [`opener_for`].
fn restore_opener(
    opts: &RestoreOptions<'_>,
    keyset: &Keyset,
    rt: tokio::runtime::Handle,
) -> Result<RestoreOpener> {
    if opts.nodes.is_empty() {
        if opts.user.is_some() || opts.threshold > 0 {
            return Err(Error::Usage(
                "--user and --threshold go with --node URL".into(),
            ));
        }
        return Ok(RestoreOpener::Local(opener_for(
            keyset,
            opts.identity,
            opts.kfrags,
        )?));
    }
    if opts.kfrags.is_some() {
        return Err(Error::Usage(
            "give either --kfrags DIR (grants held locally) or --node URL... (delegation nodes), not both".into(),
        ));
    }
    let Some(user) = opts.user else {
        return Err(Error::Usage(
            "--node needs --user NAME.pub (or the user's name): the nodes know you by it".into(),
        ));
    };
    let secret = UserSecret::from_seed(opts.identity.load(&Unlock::from_env())?);
    let name = user_name(user, &secret)?;
    let opener = NodeOpener::new(
        rt,
        secret,
        keyset,
        NodeOptions {
            urls: opts.nodes,
            user: name,
            threshold: opts.threshold,
            timeout: opts.node_timeout,
            path: request_path(opts.path),
        },
    )?;
    Ok(RestoreOpener::Nodes(Box::new(opener)))
}

/// The path prefix a restore of `path` asks the nodes for: `/` for the whole
/// tree, else `/PATH`.
fn request_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if matches!(trimmed, "." | "") {
        "/".into()
    } else {
        format!("/{trimmed}")
    }
}

/// Restores files a user may open from a snapshot into a directory.
pub fn run_restore(opts: &RestoreOptions<'_>) -> Result<Report> {
    let reader = Reader::open(opts.store, opts.keyset)?;
    let keyset = reader.keyset()?;
    let opener = restore_opener(opts, keyset, reader.rt.handle().clone())?;
    let snapshot = open_snapshot(&reader.source, Some(keyset), opts.snapshot).map_err(|e| {
        Error::Integrity {
            object: "snapshots/".into(),
            reason: e.to_string(),
        }
    })?;
    if opts.snapshot.is_none()
        && let Some(dir) = opts.index
        && dir.join("CURRENT").exists()
    {
        let index = Index::open_read_only(dir)?;
        if let Some(last) = index.state()?.last_snapshot
            && last.sequence > snapshot.sequence()
        {
            return Err(Error::Integrity {
                object: snapshot.key().to_owned(),
                reason: format!(
                    "the store's newest snapshot is {}, but this agent wrote snapshot {}: the store was rolled back or a manifest was hidden",
                    snapshot.sequence(),
                    last.sequence
                ),
            });
        }
    }
    let filter = if matches!(opts.path, "." | "/" | "") {
        PathFilter::all()
    } else {
        PathFilter::new([opts.path.trim_end_matches('/').as_bytes()])
            .map_err(|e| Error::Usage(e.to_string()))?
    };
    std::fs::create_dir_all(opts.dest).map_err(|e| Error::io("cannot create", opts.dest, e))?;
    let dir = DirSink::new(opts.dest).map_err(|e| Error::Usage(e.to_string()))?;
    let mut sink = ProgressSink::new(dir, opts.progress);
    let mut report = cbfs_recover::restore(
        &reader.source,
        &snapshot,
        opener.as_dyn(),
        &filter,
        &mut sink,
    )
    .map_err(|e| Error::Integrity {
        object: snapshot.key().to_owned(),
        reason: e.to_string(),
    })?;
    if let RestoreOpener::Nodes(nodes) = &opener {
        report.warnings.extend(nodes.notes());
    }
    sink.bar.finish_and_clear();
    drop(opener);
    drop(reader.rt);
    Ok(report)
}

/// A sink that shows a progress bar while another sink writes.
struct ProgressSink<S> {
    inner: S,
    bar: ProgressBar,
}

impl<S: Sink> ProgressSink<S> {
    fn new(inner: S, enabled: bool) -> Self {
        use std::io::IsTerminal;
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        ProgressSink { inner, bar }
    }
}

impl<S: Sink> Sink for ProgressSink<S> {
    fn begin_file(&mut self, meta: &Metadata) -> cbfs_recover::Result<()> {
        self.bar.set_message(meta.path_lossy());
        self.inner.begin_file(meta)
    }
    fn write_content(&mut self, data: &[u8]) -> cbfs_recover::Result<()> {
        self.bar.inc(data.len() as u64);
        self.inner.write_content(data)
    }
    fn commit_file(&mut self) -> cbfs_recover::Result<()> {
        self.inner.commit_file()
    }
    fn abort_file(&mut self) {
        self.inner.abort_file()
    }
    fn add_entry(&mut self, meta: &Metadata) -> cbfs_recover::Result<()> {
        self.inner.add_entry(meta)
    }
    fn finish(&mut self) -> cbfs_recover::Result<()> {
        self.inner.finish()
    }
    fn take_warnings(&mut self) -> Vec<String> {
        self.inner.take_warnings()
    }
}

/// A sink that keeps nothing: `verify --read-data` decrypts and checks only.
struct DiscardSink;

impl Sink for DiscardSink {
    fn begin_file(&mut self, _: &Metadata) -> cbfs_recover::Result<()> {
        Ok(())
    }
    fn write_content(&mut self, _: &[u8]) -> cbfs_recover::Result<()> {
        Ok(())
    }
    fn commit_file(&mut self) -> cbfs_recover::Result<()> {
        Ok(())
    }
    fn abort_file(&mut self) {}
    fn add_entry(&mut self, _: &Metadata) -> cbfs_recover::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> cbfs_recover::Result<()> {
        Ok(())
    }
}

/// One thing `verify` found wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The object (key) it is about.
    pub object: String,
    /// What is wrong.
    pub error: String,
}

/// What `cbfs-tier verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots whose manifests verified.
    pub snapshots: u64,
    /// Segments checked against their summaries.
    pub segments: u64,
    /// Members the snapshots reference.
    pub members: u64,
    /// Lockboxes checked.
    pub lockboxes: u64,
    /// Segments no snapshot references (garbage for GC, not a problem).
    pub unreferenced_segments: u64,
    /// Entries decrypted (with `--read-data`).
    pub decrypted: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

/// Checks a store: every manifest's signature and chain, every object a
/// snapshot needs, every summary against its segment's tar structure and
/// hashes, every lockbox's form; with an identity and `read_data`, also
/// decrypts everything that identity can open.
pub fn run_verify(
    store: &str,
    keyset: Option<&std::path::Path>,
    identity: Option<&KeySource>,
    read_data: bool,
) -> Result<VerifyReport> {
    let reader = Reader::open(store, keyset)?;
    let source = &reader.source;
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();
    let mut referenced: BTreeMap<SegmentId, BTreeMap<cbfs_format::MemberId, [u8; 32]>> =
        BTreeMap::new();
    let mut snapshots = Vec::new();
    let manifests = source
        .list(layout::SNAPSHOTS)
        .map_err(|e| Error::Usage(e.to_string()))?;
    for key in &manifests {
        let Some((seq, _)) = layout::parse_manifest(key) else {
            continue;
        };
        match open_snapshot(source, reader.keyset.as_ref(), Some(&seq.to_string())) {
            Ok(s) => {
                report.snapshots += 1;
                for e in s.manifest().entries() {
                    referenced
                        .entry(e.segment)
                        .or_default()
                        .insert(e.member, e.sha256);
                }
                snapshots.push(s);
            }
            Err(e) => problems.push(report_problem(key, e.to_string())),
        }
    }
    let existing: BTreeSet<String> = source
        .list(layout::SEGMENTS)
        .map_err(|e| Error::Usage(e.to_string()))?
        .into_iter()
        .collect();
    report.unreferenced_segments = existing
        .iter()
        .filter_map(|k| layout::parse_segment(k))
        .filter(|s| !referenced.contains_key(s))
        .count() as u64;
    for (segment, members) in &referenced {
        report.members += members.len() as u64;
        let skey = layout::summary(segment);
        let summary = match source
            .get(&skey)
            .map_err(|e| e.to_string())
            .and_then(|b| Summary::from_bytes(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                problems.push(report_problem(&skey, e));
                continue;
            }
        };
        for (member, sha) in members {
            match summary.entry(member) {
                Some(e) if &e.sha256 == sha => {}
                Some(_) => problems.push(report_problem(
                    &skey,
                    format!("member {member}: its hash differs from the manifest's"),
                )),
                None => problems.push(report_problem(
                    &skey,
                    format!("member {member} of a snapshot is not in the summary"),
                )),
            }
        }
        let seg_key = layout::segment(segment);
        match source.open(&seg_key) {
            Ok(reader) => {
                report.segments += 1;
                if let Err(e) = summary.verify_segment(reader) {
                    problems.push(report_problem(&seg_key, e.to_string()));
                }
            }
            Err(e) => problems.push(report_problem(&seg_key, e.to_string())),
        }
        for group in summary.groups() {
            let lkey = layout::lockbox(segment, &group);
            match source
                .get(&lkey)
                .map_err(|e| e.to_string())
                .and_then(|b| Lockbox::from_bytes(&b).map_err(|e| e.to_string()))
            {
                Ok(lb) if lb.segment_id() == *segment && lb.group_id() == group => {
                    report.lockboxes += 1
                }
                Ok(_) => problems.push(report_problem(
                    &lkey,
                    "the lockbox names another segment or group".into(),
                )),
                Err(e) => problems.push(report_problem(&lkey, e)),
            }
        }
    }
    if read_data {
        let Some(identity) = identity else {
            return Err(Error::Usage("--read-data needs --identity SOURCE".into()));
        };
        let opener = opener_for(reader.keyset()?, identity, None)?;
        for s in &snapshots {
            let r = cbfs_recover::restore(
                source,
                s,
                opener.as_ref(),
                &PathFilter::all(),
                &mut DiscardSink,
            )
            .map_err(|e| Error::Integrity {
                object: s.key().to_owned(),
                reason: e.to_string(),
            })?;
            report.decrypted += r.restored_entries;
            for f in r.failures {
                problems.push(report_problem(
                    &f.object,
                    format!("member {}: {}", f.member.unwrap_or_default(), f.error),
                ));
            }
        }
    }
    problems.sort_by(|a, b| (&a.object, &a.error).cmp(&(&b.object, &b.error)));
    problems.dedup_by(|a, b| a.object == b.object && a.error == b.error);
    report.problems = problems;
    Ok(report)
}

fn report_problem(object: &str, error: String) -> Problem {
    Problem {
        object: object.to_owned(),
        error,
    }
}
