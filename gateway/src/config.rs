//! The gateway's configuration file (TOML), documented field by field in
//! `gateway/README.md`, with an example in `gateway/examples/gateway.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{FsName, KeySource, UserName, UserPublic};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The configuration as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The gateway's own state: job records, replay cache, audit log, push
    /// staging.
    pub state: PathBuf,
    /// A Cedar policy folder (default: the built-in `policies/gateway`).
    #[serde(default)]
    pub policies: Option<PathBuf>,
    /// Where the audit log goes (default: `STATE/audit`).
    #[serde(default)]
    pub audit: Option<PathBuf>,
    /// TLS: required on every address but loopback.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// The callers, by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Client certificates (mTLS): the SHA-256 of the DER certificate, hex,
    /// to the user it authenticates.
    #[serde(default)]
    pub clients: BTreeMap<String, String>,
    /// The file systems served.
    #[serde(default)]
    pub fs: BTreeMap<String, Fs>,
}

/// TLS settings of the listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates whose client certificates are accepted (mTLS);
    /// without it, callers sign their requests.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Bounds on what one caller can make the gateway do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest JSON request body, bytes.
    pub max_body: usize,
    /// Requests served at once.
    pub max_concurrent: usize,
    /// Seconds a request may take to arrive or to be answered (a pushed
    /// stream: between two reads).
    pub io_timeout_secs: u64,
    /// How far a signed timestamp may be from the gateway's clock, seconds.
    pub clock_skew_secs: u64,
    /// Largest pushed stream, bytes.
    pub max_push: u64,
    /// Longest `?wait=` of a job, seconds.
    pub max_wait_secs: u64,
    /// Seconds one read of the store (a listing, an object's size, one
    /// piece of an object) may take, retries included, before the caller
    /// gets 503 with Retry-After.
    pub store_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 << 20,
            max_concurrent: 64,
            io_timeout_secs: 60,
            clock_skew_secs: 300,
            max_push: 1 << 40,
            max_wait_secs: 300,
            store_timeout_secs: 30,
        }
    }
}

impl Limits {
    /// [`io_timeout_secs`](Self::io_timeout_secs) as a duration.
    pub fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.io_timeout_secs.max(1))
    }

    /// [`store_timeout_secs`](Self::store_timeout_secs) as a duration.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_secs(self.store_timeout_secs.max(1))
    }
}

/// One caller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Its public key file (`NAME.pub`, from `cbfs-keytool create-user`):
    /// its signing key authenticates its requests.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Roles, for the policies (`admin`, `host`, `user`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Per file system, the paths that are the user's own (for listing).
    #[serde(default)]
    pub homes: BTreeMap<String, Vec<String>>,
}

/// One file system.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fs {
    /// The tree tier-out runs read (optional: a file system may be fed by
    /// pushes only).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// The store: a directory or `s3://BUCKET/PREFIX`.
    pub store: String,
    /// The agent's index.
    pub index: PathBuf,
    /// The signed public keyset.
    pub keyset: PathBuf,
    /// Scope rules, `GLOB=LABEL`, first match wins.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The key that signs this file system's manifests (a key source).
    pub writer_key: String,
    /// The delegation nodes, for the unlock relay.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Seconds between scheduled tier-out runs of `source` (none if unset).
    #[serde(default)]
    pub schedule_secs: Option<u64>,
    /// The gateway's own identity for recalls: a user key delegated through
    /// the nodes like any user's (no root secret is ever online).
    #[serde(default)]
    pub identity: Option<Identity>,
    /// Recall released files of `source` on first access (fanotify
    /// pre-content events): the gateway runs the fault-in handler, under a
    /// guard process. Needs `source`, `identity` and `nodes`.
    #[serde(default)]
    pub fault_in: bool,
}

/// The gateway's own user identity in one file system.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Its secret (a key source).
    pub secret: String,
    /// Its public key file.
    pub public: PathBuf,
}

/// A caller, loaded: its verifying key and roles.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Its name.
    pub name: UserName,
    /// The key that verifies its requests (`None`: it authenticates with a
    /// client certificate only).
    pub verifying_key: Option<PublicKey>,
    /// Its roles.
    pub roles: Vec<String>,
    /// Per file system, its home paths.
    pub homes: BTreeMap<String, Vec<String>>,
}

/// The configuration, loaded and checked.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// As written.
    pub config: Config,
    /// Where it was read from.
    pub path: PathBuf,
    /// The callers.
    pub principals: BTreeMap<String, Principal>,
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

impl Loaded {
    /// Reads and checks `path`. Relative paths in it are relative to its
    /// folder. Plain HTTP is refused on any address but loopback unless
    /// `insecure_http` (the `--insecure-http` flag) says otherwise.
    pub fn read(path: &Path, insecure_http: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(path, format!("cannot read it: {e}")))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.state = rel(base, &config.state);
        config.policies = config.policies.map(|p| rel(base, &p));
        config.audit = config.audit.map(|p| rel(base, &p));
        if let Some(tls) = &mut config.tls {
            tls.cert = rel(base, &tls.cert);
            tls.key = rel(base, &tls.key);
            tls.client_ca = tls.client_ca.as_ref().map(|p| rel(base, p));
        }
        let mut principals = BTreeMap::new();
        for (name, user) in &mut config.users {
            let uname = UserName::new(name.clone())
                .map_err(|e| Error::config(path, format!("users.{name}: {e}")))?;
            let verifying_key = match &user.key {
                Some(k) => {
                    let k = rel(base, k);
                    user.key = Some(k.clone());
                    let public = UserPublic::load(&k)
                        .map_err(|e| Error::config(path, format!("users.{name}.key: {e}")))?;
                    if public.name() != &uname {
                        return Err(Error::config(
                            path,
                            format!(
                                "users.{name}.key is the key of user `{}`, not `{name}`",
                                public.name()
                            ),
                        ));
                    }
                    Some(*public.verifying_key())
                }
                None => None,
            };
            for fs in user.homes.keys() {
                if !config.fs.contains_key(fs) {
                    return Err(Error::config(
                        path,
                        format!(
                            "users.{name}.homes names file system `{fs}`, which is not configured"
                        ),
                    ));
                }
            }
            for homes in user.homes.values() {
                for h in homes {
                    crate::paths::check(h).map_err(|e| {
                        Error::config(path, format!("users.{name}.homes: `{h}`: {e}"))
                    })?;
                }
            }
            principals.insert(
                name.clone(),
                Principal {
                    name: uname,
                    verifying_key,
                    roles: user.roles.clone(),
                    homes: user.homes.clone(),
                },
            );
        }
        for (fp, user) in &config.clients {
            if !principals.contains_key(user) {
                return Err(Error::config(
                    path,
                    format!("clients.{fp} names user `{user}`, which is not configured"),
                ));
            }
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::config(
                    path,
                    format!("clients: `{fp}` is not a certificate's SHA-256 in hex"),
                ));
            }
        }
        for (name, fs) in &mut config.fs {
            FsName::new(name.clone())
                .map_err(|e| Error::config(path, format!("fs.{name}: {e}")))?;
            fs.index = rel(base, &fs.index);
            fs.keyset = rel(base, &fs.keyset);
            fs.source = fs.source.as_ref().map(|p| rel(base, p));
            if !fs.store.contains("://") {
                fs.store = rel(base, Path::new(&fs.store)).display().to_string();
            }
            fs.writer_key = absolute_source(base, &fs.writer_key)
                .map_err(|e| Error::config(path, format!("fs.{name}.writer_key: {e}")))?;
            if let Some(id) = &mut fs.identity {
                id.secret = absolute_source(base, &id.secret)
                    .map_err(|e| Error::config(path, format!("fs.{name}.identity.secret: {e}")))?;
                id.public = rel(base, &id.public);
            }
            for rule in &fs.scopes {
                rule.parse::<cbfs_tiering::ScopeRule>()
                    .map_err(|e| Error::config(path, format!("fs.{name}.scopes: {e}")))?;
            }
            if fs.fault_in && (fs.source.is_none() || fs.identity.is_none() || fs.nodes.is_empty())
            {
                return Err(Error::config(
                    path,
                    format!(
                        "fs.{name}.fault_in needs the tree (source), the gateway's identity and the nodes it recalls through"
                    ),
                ));
            }
        }
        let loopback = config.listen.ip().is_loopback();
        if config.tls.is_none() && !loopback && !insecure_http {
            return Err(Error::config(
                path,
                format!(
                    "listen = {} is not a loopback address: give [tls] cert and key (plain HTTP is for loopback only, or with --insecure-http)",
                    config.listen
                ),
            ));
        }
        Ok(Loaded {
            config,
            path: path.to_owned(),
            principals,
        })
    }
}

/// A key source with a `file:` path made absolute against `base`.
fn absolute_source(base: &Path, spec: &str) -> std::result::Result<String, String> {
    let source: KeySource = spec.parse().map_err(|e: cbfs_core::Error| e.to_string())?;
    Ok(match source {
        KeySource::File(p) => format!("file:{}", rel(base, &p).display()),
        _ => spec.to_owned(),
    })
}
