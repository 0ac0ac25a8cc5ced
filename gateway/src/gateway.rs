//! The gateway's state: configuration, policies, audit log, jobs, and one
//! tiering agent per file system; and how every request is guarded
//! (authenticated, decided by policy, audited).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use cbfs_core::{Clock, KeySource};
use cbfs_delegation::audit::{Event, SharedAuditLog};
use cbfs_delegation::{Policies, PolicySource};
use cbfs_tiering::{Agent, AgentOptions, ChangeTest, OutOptions, ScopeRules};

use crate::auth::{Presented, Refused, Replays, authenticate};
use crate::config::{Fs, Loaded, Principal};
use crate::error::{Error, Result};
use crate::jobs::{Job, Jobs, Kind, State};
use crate::metrics::Metrics;
use crate::policy::{Action, decide};

/// One file system served.
pub struct Served {
    /// Its configuration.
    pub config: Fs,
    /// Its agent (holding the index for this process).
    pub agent: Arc<Agent>,
}

/// The running gateway.
pub struct Gateway {
    config: ArcSwap<Loaded>,
    policies: ArcSwap<Policies>,
    audit: SharedAuditLog,
    replays: Replays,
    /// Every job.
    pub jobs: Jobs,
    fs: ArcSwap<BTreeMap<String, Arc<Served>>>,
    /// Metrics.
    pub metrics: Metrics,
    /// HTTP client for the relay to nodes.
    pub http: reqwest::Client,
    stopping: AtomicBool,
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    /// Recalls of released files, and the fault-in handler.
    pub recalls: Arc<crate::recall::Recalls>,
}

/// What a guarded request knows once it passed.
pub struct Allowed {
    /// Who asks.
    pub who: Principal,
}

impl Gateway {
    /// Opens everything the configuration names: policies, audit log, job
    /// records (marking interrupted what was running), and an agent per
    /// file system.
    pub fn open(config: Loaded, clock: Arc<dyn Clock>) -> Result<Arc<Self>> {
        let state = &config.config.state;
        std::fs::create_dir_all(state).map_err(|e| Error::io("cannot create", state, e))?;
        let policy_source = match &config.config.policies {
            Some(dir) => PolicySource::Dir(dir.clone()),
            None => crate::policy::built_in(),
        };
        let policies = Policies::load_from(&policy_source)?;
        let audit_dir = config
            .config
            .audit
            .clone()
            .unwrap_or_else(|| state.join("audit"));
        let audit = SharedAuditLog::open(&audit_dir)?;
        let jobs = Jobs::open(&state.join("jobs"))?;
        let fs = open_agents(&config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(config.config.limits.io_timeout() * 2)
            .build()
            .map_err(|e| Error::Server(format!("cannot make an HTTP client: {e}")))?;
        let gw = Gateway {
            replays: Replays::new(clock.unix()),
            config: ArcSwap::from_pointee(config),
            policies: ArcSwap::from_pointee(policies),
            audit,
            jobs,
            fs: ArcSwap::from_pointee(fs),
            metrics: Metrics::new(),
            http,
            stopping: AtomicBool::new(false),
            clock,
            recalls: Arc::default(),
        };
        let mut ev = Event::new("start", true, "the gateway started");
        ev.policies = gw.policies.load().ids();
        gw.audit_event(&ev)?;
        Ok(Arc::new(gw))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Loaded> {
        self.config.load_full()
    }

    /// A file system served, by name.
    pub fn served(&self, fs: &str) -> Option<Arc<Served>> {
        self.fs.load().get(fs).cloned()
    }

    /// The names of the file systems served.
    pub fn fs_names(&self) -> Vec<String> {
        self.fs.load().keys().cloned().collect()
    }

    /// Reloads the configuration's callers, limits and policies (and opens
    /// file systems added since). Requests in flight finish under the old
    /// ones; a configuration or policy folder that does not load is refused
    /// and the old one stays.
    pub fn reload(&self, insecure_http: bool) -> Result<String> {
        let path = self.config.load().path.clone();
        let outcome = (|| {
            let loaded = Loaded::read(&path, insecure_http)?;
            let policy_source = match &loaded.config.policies {
                Some(dir) => PolicySource::Dir(dir.clone()),
                None => crate::policy::built_in(),
            };
            let policies = Policies::load_from(&policy_source)?;
            let mut fs = (**self.fs.load()).clone();
            let mut notes = Vec::new();
            for (name, cfg) in &loaded.config.fs {
                match fs.get(name) {
                    Some(old) if format!("{:?}", old.config) != format!("{cfg:?}") => notes.push(
                        format!("fs.{name} changed: restart the gateway to apply it (its agent holds the index)"),
                    ),
                    Some(_) => {}
                    None => {
                        fs.insert(name.clone(), Arc::new(open_agent(cfg)?));
                        notes.push(format!("fs.{name} added"));
                    }
                }
            }
            self.policies.store(Arc::new(policies));
            self.config.store(Arc::new(loaded));
            self.fs.store(Arc::new(fs));
            Ok::<_, Error>(notes)
        })();
        let (allowed, reason) = match &outcome {
            Ok(notes) => (
                true,
                format!("reloaded {}; {}", path.display(), notes.join("; ")),
            ),
            Err(e) => (false, format!("kept the configuration in force: {e}")),
        };
        let mut ev = Event::new("reload", allowed, reason.clone());
        ev.policies = self.policies.load().ids();
        self.audit_event(&ev)?;
        outcome.map(|_| reason)
    }

    /// Appends a decision and returns once it is durable. The flush is
    /// shared with the decisions made meanwhile (group commit), and a
    /// runtime worker waiting for it hands its other tasks on first.
    fn audit_event(&self, event: &Event) -> Result<()> {
        blocking(|| self.audit.append(event)).map_err(Error::from)
    }

    /// Makes the audit entries written lazily durable (see
    /// [`guard`](Self::guard)); the server calls it every second and at stop.
    pub fn sync_audit(&self) -> Result<()> {
        self.audit.sync().map_err(Error::from)
    }

    /// Authenticates a request, asks the policies about it and audits the
    /// decision: nothing is served that was not audited.
    pub fn guard(
        &self,
        presented: &Presented<'_>,
        action: Action,
        fs: Option<&str>,
        path: &str,
    ) -> std::result::Result<Allowed, Refused> {
        let config = self.config.load();
        let now = self.clock.unix();
        let mut event = Event::new(action.name(), false, "");
        event.path = Some(match fs {
            Some(f) => format!("{f}:{path}"),
            None => path.to_owned(),
        });
        let outcome = (|| {
            let who = authenticate(&config, &self.replays, now, presented)?;
            let fs_name = match fs {
                Some(f) => {
                    if self.served(f).is_none() {
                        return Err(Refused::new(
                            404,
                            "unknown_fs",
                            format!("this gateway serves no file system `{f}`"),
                        ));
                    }
                    f
                }
                // Requests about no file system are asked of the first.
                None => "",
            };
            let verdict = decide(&self.policies.load(), &who, action, fs_name, path, now);
            self.metrics
                .decisions
                .with_label_values(&[
                    action.name(),
                    if verdict.allowed { "allow" } else { "deny" },
                ])
                .inc();
            Ok((who, verdict))
        })();
        match outcome {
            Err(refused) => {
                event.code = Some(refused.code.to_owned());
                event.reason = refused.reason.clone();
                event.decision = "deny".into();
                self.audit_or_refuse(&event)?;
                Err(refused)
            }
            Ok((who, verdict)) => {
                event.user = Some(who.name.to_string());
                event.policies = verdict.policies.clone();
                event.reason = format!("policy: {}", verdict.reason);
                event.decision = if verdict.allowed { "allow" } else { "deny" }.into();
                if !verdict.allowed {
                    event.code = Some("denied".into());
                }
                if verdict.allowed && action == Action::ReadStore {
                    // A read of ciphertext: written in order now, made
                    // durable with others within a second (a restore makes
                    // hundreds of these; an fsync each would be most of its
                    // time). Every other decision is durable before it is
                    // answered.
                    self.audit.write(&event).map_err(|e| {
                        tracing::error!("{e}");
                        Refused::new(500, "internal", "the gateway could not write its audit log")
                    })?;
                } else {
                    self.audit_or_refuse(&event)?;
                }
                if verdict.allowed {
                    Ok(Allowed { who })
                } else {
                    Err(Refused::new(
                        403,
                        "denied",
                        format!("policy: {}", verdict.reason),
                    ))
                }
            }
        }
    }

    fn audit_or_refuse(&self, event: &Event) -> std::result::Result<(), Refused> {
        self.audit_event(event).map_err(|e| {
            tracing::error!("{e}");
            Refused::new(500, "internal", "the gateway could not write its audit log")
        })
    }

    /// Whether a decision about `path` for `who` allows listing it (for
    /// filtering a listing; not audited one by one: the listing is).
    pub fn may_list(&self, who: &Principal, fs: &str, path: &str) -> bool {
        decide(
            &self.policies.load(),
            who,
            Action::List,
            fs,
            path,
            self.clock.unix(),
        )
        .allowed
    }

    /// Starts (or joins) a tier-out run of `fs`'s source.
    pub fn start_tier_out(self: &Arc<Self>, fs: &str, who: &str) -> Result<(Arc<Job>, bool)> {
        let served = self
            .served(fs)
            .ok_or_else(|| Error::Server(format!("no file system `{fs}`")))?;
        let Some(source) = served.config.source.clone() else {
            return Err(Error::Server(format!(
                "file system `{fs}` has no source tree configured: it is fed by pushes"
            )));
        };
        let (job, new) = self.jobs.start(fs, Kind::TierOut, None, who)?;
        if new {
            let mut opts = OutOptions::new(source, rules(&served.config)?);
            opts.cancel = Some(job.cancel.clone());
            drop(self.clone().run(served, job.clone(), opts, None));
        }
        Ok((job, new))
    }

    /// Runs a job's tier-out on the file system's agent, recording how it
    /// ends: a run over the file system's tree, or over `stream` (a push).
    /// The handle gives the run's error, if it failed.
    pub fn run(
        self: Arc<Self>,
        served: Arc<Served>,
        job: Arc<Job>,
        opts: OutOptions,
        stream: Option<Box<dyn std::io::Read + Send>>,
    ) -> tokio::task::JoinHandle<Result<(), cbfs_tiering::Error>> {
        tokio::spawn(async move {
            // Recalls go ahead of tier-out work.
            self.recalls.wait_idle(&job.record().fs).await;
            let started = Instant::now();
            let _ = job.set(State::Running, None, None);
            let result = match stream {
                None => served.agent.tier_out(opts, job.clone()).await,
                Some(s) => served.agent.tier_out_stream(s, opts, job.clone()).await,
            };
            let (state, report, error) = match &result {
                Ok(r) => (State::Succeeded, Some(r.clone()), None),
                Err(cbfs_tiering::Error::Cancelled) => (
                    State::Cancelled,
                    None,
                    Some("cancelled at a safe point; the next run finishes the snapshot".into()),
                ),
                Err(e) => (State::Failed, None, Some(format!("{e}"))),
            };
            let kind = match job.record().kind {
                Kind::TierOut => "tier-out",
                Kind::Push => "push",
            };
            self.metrics
                .jobs
                .with_label_values(&[kind, &format!("{state:?}").to_lowercase()])
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = job.set(state, report, error) {
                tracing::error!("cannot record the end of job {}: {e}", job.record().id);
            }
            result.map(|_| ())
        })
    }

    /// Options for a push under `prefix`: the stream is what the file
    /// system holds there now, and its entries count as unchanged by their
    /// attributes (a tar header has no inode).
    pub fn push_options(&self, served: &Served, prefix: &str, job: &Job) -> Result<OutOptions> {
        let mut opts = OutOptions::new(std::path::PathBuf::new(), rules(&served.config)?);
        let rel = crate::paths::relative(prefix);
        opts.prefix = (!rel.is_empty()).then(|| rel.as_bytes().to_vec());
        opts.change_test = ChangeTest::Attributes;
        opts.cancel = Some(job.cancel.clone());
        Ok(opts)
    }

    /// Whether the gateway is stopping (new jobs are refused).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops: refuses new jobs, asks running ones to stop at their next safe
    /// point and waits for them, records the stop.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let active = self.jobs.active();
        for j in &active {
            j.cancel.store(true, Ordering::SeqCst);
        }
        for j in &active {
            j.wait(std::time::Duration::from_secs(600)).await;
        }
        // Appending syncs what was written lazily before it.
        let _ = self.audit_event(&Event::new("stop", true, "the gateway stopped"));
    }

    /// Runs the scheduled tier-outs of every file system that has one.
    pub fn schedule(self: &Arc<Self>) {
        for (name, served) in self.fs.load().iter() {
            let Some(secs) = served.config.schedule_secs else {
                continue;
            };
            if served.config.source.is_none() {
                continue;
            }
            let (gw, name) = (self.clone(), name.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(secs.max(1)));
                every.tick().await;
                loop {
                    every.tick().await;
                    if gw.stopping() {
                        return;
                    }
                    if let Err(e) = gw.start_tier_out(&name, "schedule") {
                        tracing::error!("scheduled tier-out of {name}: {e}");
                    }
                }
            });
        }
    }
}

fn rules(cfg: &Fs) -> Result<ScopeRules> {
    let rules = cfg
        .scopes
        .iter()
        .map(|r| r.parse())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(ScopeRules::new(rules))
}

fn open_agent(cfg: &Fs) -> Result<Served> {
    let writer: KeySource = cfg
        .writer_key
        .parse()
        .map_err(|e: cbfs_core::Error| Error::Server(e.to_string()))?;
    let agent = Agent::open(AgentOptions {
        store: &cfg.store,
        index: &cfg.index,
        keyset: Some(&cfg.keyset),
        writer_key: Some(writer),
    })?;
    Ok(Served {
        config: cfg.clone(),
        agent,
    })
}

fn open_agents(config: &Loaded) -> Result<BTreeMap<String, Arc<Served>>> {
    let mut out = BTreeMap::new();
    for (name, cfg) in &config.config.fs {
        out.insert(name.clone(), Arc::new(open_agent(cfg)?));
    }
    Ok(out)
}

/// Checks what each file system of `config` names, without opening its
/// index (a running gateway holds it): the keyset verifies, the writer key
/// loads and the keyset registers it, the store opens, the scope rules parse.
pub fn check_fs(config: &Loaded) -> Result<()> {
    for (name, cfg) in &config.config.fs {
        let keyset = cbfs_core::Keyset::load(&cfg.keyset)?;
        let writer: KeySource = cfg
            .writer_key
            .parse()
            .map_err(|e: cbfs_core::Error| Error::Server(format!("fs.{name}.writer_key: {e}")))?;
        let seed = writer.load(&cbfs_keysource::unlock_from_env())?;
        let vk = cbfs_core::UserSecret::from_seed(seed).verifying_key();
        if !keyset.writers().values().any(|w| *w == vk) {
            return Err(Error::Server(format!(
                "fs.{name}: the writer key {} is not registered in the keyset {}; register it with cbfs-keytool add-writer",
                cbfs_core::fingerprint(&vk),
                cfg.keyset.display()
            )));
        }
        cbfs_store::Store::open(&cfg.store).map_err(cbfs_tiering::Error::from)?;
        rules(cfg)?;
    }
    Ok(())
}

/// Runs `f`, which waits for the disk: on a worker of a multi-threaded
/// runtime, after handing that worker's other tasks to another thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
