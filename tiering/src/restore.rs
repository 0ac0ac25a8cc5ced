//! `cbfs-tier restore`: a user (or the administrator) restores files from a
//! snapshot into a directory, through the shared restore engine.
//!
//! Runs inside the caller's tokio runtime: the engine works on a blocking
//! thread, and reads the store through [`StoreSource`] (ranges of segments,
//! never whole downloads).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{KeySource, Keyset, Seed, UserName, UserPublic, UserSecret};
use cbfs_format::Metadata;
use cbfs_restore::{
    Anchors, DirSink, LockboxOpener, ObjectSource, PathFilter, Report, RestoreOptions, Sink, Trust,
    TrustRecords, identify, open_snapshot, trusted_keyset,
};
use cbfs_store::Store;

use crate::error::{Error, Result, restore_error};
use crate::index::Index;
use crate::observe::Observer;
use crate::remote::{NodeOpener, NodeOptions};
use crate::source::StoreSource;

/// How a reader decides which keyset and which snapshots to trust.
#[derive(Clone, Debug, Default)]
pub struct TrustOptions {
    /// A keyset file the reader trusts.
    pub keyset: Option<PathBuf>,
    /// The administrator key the reader trusts, by fingerprint.
    pub admin_key: Option<String>,
    /// Where the trust records are (default beside the identity key file).
    pub trust_file: Option<PathBuf>,
    /// A writer key to trust although the keyset does not register it.
    pub accept_unregistered_writer: Option<String>,
    /// The agent's index: its administrator key is a pin, and its newest
    /// snapshot a floor.
    pub index: Option<PathBuf>,
}

/// The trusted keyset and snapshot trust of a reader, with its records.
pub(crate) struct Trusted {
    pub keyset: Keyset,
    pub trust: Trust,
    pub records: TrustRecords,
    /// The newest snapshot the agent's index recorded, if it has one.
    pub index_newest: Option<u64>,
    /// Whether an agent's index was read (with no newest snapshot, it
    /// says that its agent never committed one).
    pub index_read: bool,
}

/// Decides what to trust (see [`TrustOptions`]); `secret` is the reader's
/// key, which pins its own administrator if it is the root secret.
pub(crate) fn trusted(
    source: &dyn ObjectSource,
    opts: &TrustOptions,
    secret: Option<&Seed>,
    key_file: Option<&Path>,
) -> Result<Trusted> {
    let records_path = opts
        .trust_file
        .clone()
        .unwrap_or_else(|| TrustRecords::default_path(key_file));
    let records =
        TrustRecords::load(&records_path).map_err(|e| restore_error("trust records", e))?;
    let (pinned, index_newest, index_read) = match &opts.index {
        Some(dir) if dir.join("CURRENT").exists() => {
            let index = Index::open_read_only(dir)?;
            let state = index.state()?;
            let admin: Option<PublicKey> = state
                .admin_key
                .as_deref()
                .and_then(|h| cbfs_core::public_key_from_hex(h).ok());
            (admin, state.last_snapshot.map(|s| s.sequence), true)
        }
        _ => (None, None, false),
    };
    let anchors = Anchors {
        keyset_file: opts.keyset.as_deref(),
        admin_key: opts.admin_key.as_deref(),
        pinned,
        secret,
    };
    let keyset = trusted_keyset(source, &anchors, Some(&records))
        .map_err(|e| restore_error("the keyset could not be trusted", e))?;
    let trust = Trust::new(keyset.clone())
        .accept_unregistered_writer(opts.accept_unregistered_writer.clone());
    Ok(Trusted {
        keyset,
        trust,
        records,
        index_newest,
        index_read,
    })
}

/// What `cbfs-tier restore` is asked to do.
pub struct RestoreRequest {
    /// The store spec.
    pub store: String,
    /// What to trust.
    pub trust: TrustOptions,
    /// The user's (or administrator's) secret.
    pub identity: KeySource,
    /// Which snapshot (newest if `None`).
    pub snapshot: Option<String>,
    /// What to restore: a path prefix, or `.` for everything.
    pub path: String,
    /// Where to.
    pub dest: PathBuf,
    /// Decoding threads (`None`: one per core, at most 8).
    pub threads: Option<usize>,
    /// Delegation nodes to unlock through.
    pub nodes: Vec<String>,
    /// With `nodes`: who the user is, a name or a `NAME.pub` file.
    pub user: Option<String>,
    /// With `nodes`: how long one node gets to answer one batch.
    pub node_timeout: Duration,
}

/// The user a `--user` argument names: a `NAME.pub` file (checked against the
/// secret) or a bare name.
pub(crate) fn user_name(arg: &str, secret: &UserSecret) -> Result<UserName> {
    let path = Path::new(arg);
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

fn copy(seed: &Seed) -> Seed {
    Seed::from_slice(seed.expose_secret_bytes(), "identity").expect("32 bytes")
}

/// Restores the files the identity may open from a snapshot into a
/// directory. Returns the report; `observer` sees bytes and entries written.
pub async fn restore(req: RestoreRequest, observer: Arc<dyn Observer>) -> Result<Report> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || restore_blocking(&req, rt, observer.as_ref()))
        .await
        .map_err(|e| Error::Usage(format!("the restore failed: {e}")))?
}

fn restore_blocking(
    req: &RestoreRequest,
    rt: tokio::runtime::Handle,
    observer: &dyn Observer,
) -> Result<Report> {
    let seed = req.identity.load(&cbfs_keysource::unlock_from_env())?;
    // Through a gateway, the user's own key signs every request: store
    // reads and, by default, the relays to the file system's nodes.
    let gateway = if crate::gateway::is_gateway_store(&req.store) {
        let Some(user) = &req.user else {
            return Err(Error::Usage(
                "a store through a gateway needs --user NAME.pub: the gateway knows you by it"
                    .into(),
            ));
        };
        let secret = UserSecret::from_seed(copy(&seed));
        let name = user_name(user, &secret)?;
        let auth = cbfs_client::GatewayAuth::new(name.clone(), secret.signer());
        let client = crate::gateway::GatewayClient::new(&req.store, auth, None)?;
        let source = cbfs_restore::GatewaySource::open(&req.store, name, secret.signer())
            .map_err(|e| restore_error("cannot open the store", e))?;
        Some((client, source))
    } else {
        None
    };
    let local;
    let source: &dyn ObjectSource = match &gateway {
        Some((_, source)) => source,
        None => {
            local = StoreSource::new(Store::open(&req.store)?, rt.clone());
            &local
        }
    };
    let mut node_urls = req.nodes.clone();
    if let Some((client, _)) = &gateway
        && node_urls.is_empty()
    {
        node_urls = rt.block_on(client.node_relays())?;
    }
    let key_file = match &req.identity {
        KeySource::File(p) => Some(p.as_path()),
        _ => None,
    };
    let mut t = trusted(source, &req.trust, Some(&seed), key_file)?;
    let opener: Box<dyn LockboxOpener> = if node_urls.is_empty() {
        if req.user.is_some() {
            return Err(Error::Usage("--user goes with --node URL".into()));
        }
        match identify(copy(&seed), &t.keyset) {
            Some(id) => Box::new(id),
            None => {
                return Err(Error::Usage(format!(
                    "{} is neither the root secret nor a scope secret of `{}`; \
                     a user restores with their own key through the delegation nodes: \
                     --node URL... --user NAME.pub",
                    req.identity,
                    t.keyset.fs()
                )));
            }
        }
    } else {
        let Some(user) = &req.user else {
            return Err(Error::Usage(
                "--node needs --user NAME.pub (or the user's name): the nodes know you by it"
                    .into(),
            ));
        };
        let secret = UserSecret::from_seed(copy(&seed));
        let name = user_name(user, &secret)?;
        Box::new(NodeOpener::new(
            rt.clone(),
            secret,
            &t.keyset,
            NodeOptions {
                urls: &node_urls,
                user: name,
                timeout: req.node_timeout,
                path: request_path(&req.path),
                gateway: gateway.as_ref().map(|(g, _)| g.auth().clone()),
            },
        )?)
    };
    let snapshot = open_snapshot(source, &t.trust, req.snapshot.as_deref())
        .map_err(|e| restore_error("the snapshot could not be verified", e))?;
    if req.snapshot.is_none() {
        t.records
            .check_newest(
                t.keyset.fs().as_str(),
                snapshot.sequence(),
                t.index_newest.unwrap_or(0),
                snapshot.key(),
            )
            .map_err(|e| restore_error("the snapshot could not be verified", e))?;
    }
    let filter = if matches!(req.path.as_str(), "." | "/" | "") {
        PathFilter::all()
    } else {
        PathFilter::new([req.path.trim_end_matches('/').as_bytes()])
            .map_err(|e| Error::Usage(e.to_string()))?
    };
    std::fs::create_dir_all(&req.dest).map_err(|e| Error::io("cannot create", &req.dest, e))?;
    let dir = DirSink::new(&req.dest).map_err(|e| Error::Usage(e.to_string()))?;
    let mut sink = WatchedSink {
        inner: dir,
        observer,
    };
    let opts = RestoreOptions {
        filter,
        threads: req.threads,
    };
    let before = source.fetched();
    let mut report = cbfs_restore::restore(source, &snapshot, opener.as_ref(), &opts, &mut sink)
        .map_err(|e| restore_error(snapshot.key(), e))?;
    report.fetched_bytes = source.fetched() - before;
    report.warnings.extend(opener.notes());
    // A snapshot accepted by name only is not a floor for later reads.
    let seen = if snapshot.writer().is_some() {
        snapshot.sequence()
    } else {
        0
    };
    if t.records.note(&t.keyset, seen)
        && let Err(e) = t.records.save()
    {
        report
            .warnings
            .push(format!("cannot update the trust records: {e}"));
    }
    Ok(report)
}

/// A sink that tells an observer what another sink writes.
struct WatchedSink<'o, S> {
    inner: S,
    observer: &'o dyn Observer,
}

impl<S: Sink> Sink for WatchedSink<'_, S> {
    fn begin_file(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        self.inner.begin_file(meta)
    }
    fn write_content(&mut self, data: &[u8]) -> cbfs_restore::Result<()> {
        self.observer.bytes_read(data.len() as u64);
        self.inner.write_content(data)
    }
    fn commit_file(&mut self) -> cbfs_restore::Result<()> {
        self.observer.file_stored();
        self.inner.commit_file()
    }
    fn abort_file(&mut self) {
        self.inner.abort_file()
    }
    fn add_entry(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        self.observer.file_stored();
        self.inner.add_entry(meta)
    }
    fn finish(&mut self) -> cbfs_restore::Result<()> {
        self.inner.finish()
    }
    fn take_warnings(&mut self) -> Vec<String> {
        self.inner.take_warnings()
    }

    fn carries_links_that_leave(&self) -> bool {
        self.inner.carries_links_that_leave()
    }
}
