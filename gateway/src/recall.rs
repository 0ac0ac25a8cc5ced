//! Recalls through the gateway: the file system (a host, or a user for
//! the files of their homes) asks for released files back, and the fault-in
//! handler of the file systems configured with `fault_in`.
//!
//! | route | action | what |
//! |---|---|---|
//! | `POST /v1/fs/{fs}/recall?path=/P&wait=S` | Recall | recall one file (joins the recall of it in flight); waits up to S seconds for the end |
//! | `GET /v1/fs/{fs}/recall/{id}?wait=S` | Recall | a recall's state, waiting up to S seconds for its end |
//!
//! One job per file: a second request for a file whose recall runs joins
//! it. Recalls go ahead of queued tier-out work: a tier-out job of a file
//! system waits until none of its recalls is pending. Recall jobs live in
//! memory: a recall that a dying gateway leaves unfinished leaves the stub
//! as it was, and the next request starts it again. The gateway recalls
//! with its own identity, delegated through the nodes like any user's: no
//! root secret is online.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use cbfs_tiering::faultin::{Handler, Handover};
use cbfs_tiering::hsm::{PathRecall, RecallFailure, RecallIdentity, Recaller};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Fs;
use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::policy::Action;
use crate::server::{Answer, Caller, answer, guard, json};

/// Where a recall is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecallState {
    /// Running.
    Running,
    /// The file is resident (recalled now, or it was not released).
    Succeeded,
    /// The stub is as it was; `result` says why.
    Failed,
}

/// A recall as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RecallRecord {
    /// Its id (16 random bytes, hex).
    pub id: String,
    /// The file system.
    pub fs: String,
    /// The file, in the file system's namespace.
    pub path: String,
    /// Who asked first.
    pub requested_by: String,
    /// Where it is.
    pub state: RecallState,
    /// When it was asked for, and ended (RFC 3339).
    pub created: String,
    /// When it ended.
    pub ended: Option<String>,
    /// What it came to.
    pub result: Option<PathRecall>,
}

/// One recall in this process.
pub struct RecallJob {
    record: Mutex<RecallRecord>,
    tx: watch::Sender<RecallRecord>,
}

impl RecallJob {
    /// The record now.
    pub fn record(&self) -> RecallRecord {
        self.record.lock().expect("recall record").clone()
    }

    /// Waits until the recall has ended, or `timeout` has passed.
    pub async fn wait(&self, timeout: Duration) -> RecallRecord {
        let mut rx = self.tx.subscribe();
        let _ =
            tokio::time::timeout(timeout, rx.wait_for(|r| r.state != RecallState::Running)).await;
        self.record()
    }

    fn finish(&self, result: PathRecall) {
        let record = {
            let mut r = self.record.lock().expect("recall record");
            r.state = match &result {
                // Removed or renamed as the recall began: not recalled.
                PathRecall::Failed(_) | PathRecall::Gone => RecallState::Failed,
                _ => RecallState::Succeeded,
            };
            r.ended = Some(now());
            r.result = Some(result);
            r.clone()
        };
        self.tx.send_replace(record);
    }
}

fn now() -> String {
    cbfs_core::Clock::rfc3339(&cbfs_core::SystemClock)
}

/// Every recall of this gateway, the recaller of each file system, and
/// the fault-in handler if one runs.
#[derive(Default)]
pub struct Recalls {
    recallers: Mutex<HashMap<String, Arc<Recaller>>>,
    jobs: Mutex<HashMap<String, Arc<RecallJob>>>,
    /// The recall in flight per (file system, path).
    running: Mutex<HashMap<(String, String), Arc<RecallJob>>>,
    /// Recalls pending per file system, and a bell rung when one ends.
    pending: Mutex<HashMap<String, usize>>,
    ended: tokio::sync::Notify,
    handler: OnceLock<Arc<Handler>>,
}

/// The gateway's identity for recalls in file system `cfg`.
fn identity(name: &str, cfg: &Fs, gw: &Gateway) -> Result<RecallIdentity> {
    let Some(id) = &cfg.identity else {
        return Err(Error::Server(format!(
            "fs.{name} has no identity for recalls (`identity = {{ secret, public }}`, delegated through the nodes)"
        )));
    };
    Ok(RecallIdentity::User {
        identity: id
            .secret
            .parse()
            .map_err(|e: cbfs_core::Error| Error::Server(format!("fs.{name}.identity: {e}")))?,
        user: id.public.display().to_string(),
        nodes: cfg.nodes.clone(),
        timeout: gw.config().config.limits.io_timeout(),
    })
}

impl Recalls {
    /// The recaller of file system `fs`, made on first use (from a thread
    /// that may block).
    pub fn recaller(
        &self,
        gw: &Gateway,
        fs: &str,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Recaller>> {
        if let Some(r) = self.recallers.lock().expect("recallers").get(fs) {
            return Ok(r.clone());
        }
        let served = gw
            .served(fs)
            .ok_or_else(|| Error::Server(format!("no file system `{fs}`")))?;
        let cfg = &served.config;
        let keyset = served
            .agent
            .keyset
            .clone()
            .ok_or_else(|| Error::Server(format!("fs.{fs} has no keyset loaded")))?;
        let store = cbfs_store::Store::open(&cfg.store).map_err(cbfs_tiering::Error::from)?;
        let source = cbfs_tiering::StoreSource::new(store, rt.clone())
            .with_timeout(gw.config().config.limits.store_timeout());
        let recaller = Arc::new(Recaller::new(
            source,
            &keyset,
            cbfs_restore::Trust::new(keyset.clone()),
            &identity(fs, cfg, gw)?,
            rt,
            Some(&cfg.index),
        )?);
        self.recallers
            .lock()
            .expect("recallers")
            .insert(fs.to_owned(), recaller.clone());
        Ok(recaller)
    }

    /// A recall by id.
    pub fn get(&self, id: &str) -> Option<Arc<RecallJob>> {
        self.jobs.lock().expect("recalls").get(id).cloned()
    }

    /// Starts the recall of `path` in `fs`, or joins the one in flight
    /// (`false`: joined).
    pub fn start(
        self: &Arc<Self>,
        gw: &Arc<Gateway>,
        fs: &str,
        path: &str,
        who: &str,
    ) -> (Arc<RecallJob>, bool) {
        let key = (fs.to_owned(), path.to_owned());
        let mut running = self.running.lock().expect("running recalls");
        if let Some(j) = running.get(&key) {
            return (j.clone(), false);
        }
        let record = RecallRecord {
            id: hex::encode(rand::random::<[u8; 16]>()),
            fs: fs.to_owned(),
            path: path.to_owned(),
            requested_by: who.to_owned(),
            state: RecallState::Running,
            created: now(),
            ended: None,
            result: None,
        };
        let (tx, _) = watch::channel(record.clone());
        let job = Arc::new(RecallJob {
            record: Mutex::new(record.clone()),
            tx,
        });
        running.insert(key.clone(), job.clone());
        drop(running);
        self.jobs
            .lock()
            .expect("recalls")
            .insert(record.id.clone(), job.clone());
        *self
            .pending
            .lock()
            .expect("pending")
            .entry(fs.to_owned())
            .or_default() += 1;
        let (me, gw, job2) = (self.clone(), gw.clone(), job.clone());
        let rt = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            let (fs, path) = key.clone();
            let me2 = me.clone();
            let outcome = tokio::task::spawn_blocking(move || me2.run(&gw, &fs, &path, rt))
                .await
                .unwrap_or_else(|e| {
                    PathRecall::Failed(RecallFailure::Refused(format!("the recall failed: {e}")))
                });
            job2.finish(outcome);
            me.running.lock().expect("running recalls").remove(&key);
            if let Some(n) = me.pending.lock().expect("pending").get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
            me.ended.notify_waiters();
        });
        (job, true)
    }

    /// Recalls one file (from a thread that may block).
    fn run(&self, gw: &Gateway, fs: &str, path: &str, rt: tokio::runtime::Handle) -> PathRecall {
        let refused = |why: String| PathRecall::Failed(RecallFailure::Refused(why));
        let Some(served) = gw.served(fs) else {
            return refused(format!("no file system `{fs}`"));
        };
        let Some(tree) = served.config.source.clone() else {
            return refused(format!(
                "fs.{fs} has no source tree: released files live in a tree the gateway reads"
            ));
        };
        let recaller = match self.recaller(gw, fs, rt) {
            Ok(r) => r,
            Err(e) => {
                let transient = matches!(&e, Error::Tiering(t) if t.is_transient());
                return PathRecall::Failed(if transient {
                    RecallFailure::Unavailable(e.to_string())
                } else {
                    RecallFailure::Refused(e.to_string())
                });
            }
        };
        let rel = crate::paths::relative(path);
        let outcome = match cbfs_tiering::hsm::recall_path(&recaller, &tree, rel.as_bytes()) {
            Ok(o) => o,
            Err(e) if e.is_transient() => {
                PathRecall::Failed(RecallFailure::Unavailable(e.to_string()))
            }
            Err(e) => refused(e.to_string()),
        };
        // The fault-in handler of this process filled it when the recall
        // opened it; if it failed, it knows why.
        match (&outcome, self.handler.get()) {
            (PathRecall::Failed(RecallFailure::Unavailable(_)), Some(h)) => {
                match std::fs::metadata(tree.join(rel)) {
                    Ok(m) => match h.failure(m.dev(), m.ino()) {
                        Some(f) => PathRecall::Failed(f),
                        None => outcome,
                    },
                    Err(_) => outcome,
                }
            }
            _ => outcome,
        }
    }

    /// Waits until no recall of `fs` is pending and the fault-in handler is
    /// idle: recalls go ahead of tier-out work.
    pub async fn wait_idle(&self, fs: &str) {
        loop {
            let notified = self.ended.notified();
            let pending = self
                .pending
                .lock()
                .expect("pending")
                .get(fs)
                .copied()
                .unwrap_or(0);
            let busy = self.handler.get().is_some_and(|h| h.busy());
            if pending == 0 && !busy {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Runs the fault-in handler on `handover` for every file system
    /// configured with `fault_in` (their source trees' mounts are watched).
    pub async fn start_fault_in(
        self: &Arc<Self>,
        gw: &Arc<Gateway>,
        handover: Handover,
    ) -> Result<()> {
        let rt = tokio::runtime::Handle::current();
        let mut recallers = Vec::new();
        for name in gw.fs_names() {
            let Some(served) = gw.served(&name) else {
                continue;
            };
            if !served.config.fault_in {
                continue;
            }
            let tree = served.config.source.clone().expect("checked when loaded");
            check_outside(&name, &tree, &served.config, &gw.config().config.state)?;
            cbfs_tiering::faultin::check_support(&tree)
                .map_err(|e| Error::Server(e.to_string()))?;
            let (me, gw2, name2, rt2) = (self.clone(), gw.clone(), name.clone(), rt.clone());
            let recaller = tokio::task::spawn_blocking(move || me.recaller(&gw2, &name2, rt2))
                .await
                .map_err(|e| Error::Server(e.to_string()))??;
            handover
                .watch(&tree)
                .map_err(|e| Error::io("cannot watch", &tree, e))?;
            tracing::info!(fs = %name, tree = %tree.display(), guarded = handover.guarded, "fault-in handler watching");
            recallers.push(recaller);
        }
        let handler = Handler::start(
            handover.group.clone(),
            handover.journal.clone(),
            recallers,
            4,
        );
        let _ = self.handler.set(Arc::new(handler));
        Ok(())
    }
}

/// Refuses a watched tree whose mount also holds the file system's index,
/// local store or the gateway's state: the handler's own I/O there would
/// raise events on the mount it watches.
fn check_outside(name: &str, tree: &FsPath, cfg: &Fs, state: &FsPath) -> Result<()> {
    let dev = |p: &FsPath| std::fs::metadata(p).map(|m| m.dev()).ok();
    let mount = dev(tree);
    let mut others = vec![("index", cfg.index.clone()), ("state", state.to_owned())];
    if !cfg.store.contains("://") {
        others.push(("store", cfg.store.clone().into()));
    }
    for (what, p) in others {
        if mount.is_some() && dev(&p) == mount {
            return Err(Error::Server(format!(
                "fs.{name}: the {what} ({}) is on the file system of the watched tree {}; keep it elsewhere",
                p.display(),
                tree.display()
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct RecallQuery {
    path: String,
    wait: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    wait: Option<u64>,
}

/// `POST /v1/fs/{fs}/recall?path=/P&wait=S`.
pub(crate) async fn start_recall(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    Query(q): Query<RecallQuery>,
    req: Request,
) -> std::result::Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    crate::paths::check(&q.path)
        .map_err(|e| answer(400, "bad_path", format!("path `{}`: {e}", q.path)))?;
    let path = match q.path.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    let allowed = guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::Recall,
        Some(&fs),
        &path,
    )?;
    let (job, new) = gw.recalls.start(&gw, &fs, &path, allowed.who.name.as_str());
    let record = match q.wait {
        Some(secs) => {
            let max = gw.config().config.limits.max_wait_secs;
            job.wait(Duration::from_secs(secs.min(max))).await
        }
        None => job.record(),
    };
    let status = match (record.state, new) {
        (RecallState::Running, _) => StatusCode::ACCEPTED,
        (_, true) => StatusCode::CREATED,
        (_, false) => StatusCode::OK,
    };
    Ok(json(status, &record))
}

/// `GET /v1/fs/{fs}/recall/{id}?wait=S`.
pub(crate) async fn get_recall(
    State(gw): State<Arc<Gateway>>,
    Path((fs, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
    req: Request,
) -> std::result::Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    let job = gw
        .recalls
        .get(&id)
        .filter(|j| j.record().fs == fs)
        .ok_or_else(|| answer(404, "unknown_recall", format!("no recall `{id}` of `{fs}`")))?;
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::Recall,
        Some(&fs),
        &job.record().path,
    )?;
    let record = match q.wait {
        Some(secs) => {
            let max = gw.config().config.limits.max_wait_secs;
            job.wait(Duration::from_secs(secs.min(max))).await
        }
        None => job.record(),
    };
    Ok(json(StatusCode::OK, &record))
}
