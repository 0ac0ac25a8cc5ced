//! `cbfs-delegation`: a delegation node, and the tools to run one.
//!
//! Exit codes: 0 success, 1 other error, 2 usage error, 3 key material not
//! found, locked or unsafe, 4 a check failed (policies do not validate, the
//! audit log is broken, a signature or key does not match).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cbfs_core::{KeySource, fingerprint};
use cbfs_delegation::{
    Error, Init, Limits, Node, NodeConfig, NodeIdentity, Policies, PolicySource,
};
use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Make the node's key pair (DATA/node.key, 0600; DATA/node.pub)
  cbfs-delegation init --data /var/lib/cbfs-node
  # Serve, trusting the administrator key of keyset.json, with the default policies
  cbfs-delegation serve --listen 0.0.0.0:7600 --data /var/lib/cbfs-node --keyset keyset.json
  # Check a policy folder before pointing a node at it, then reload the node
  cbfs-delegation check-policies /etc/cbfs/policies && kill -HUP $(pidof cbfs-delegation)
  # Check that nobody edited or deleted audit entries
  cbfs-delegation audit verify /var/lib/cbfs-node

The administrator sends kfrags to nodes with `cbfs-keytool delegate --node URL...`
and withdraws them with `cbfs-keytool revoke --node URL...`. Revocation stops new
unlocks only: a file key that a user has already unlocked cannot be taken back.
For a node without a network path from the administrator, `cbfs-keytool delegate
--node-key node.pub --out DIR` writes each share sealed for its node, and
`cbfs-delegation import --data DIR FILE` stores it (the node must be stopped).

`--listen 127.0.0.1:0` picks a free port; the first line on standard output is
`listening on http://ADDRESS` (https with --tls-cert). Plain HTTP is served on
loopback only, unless --insecure-http; --client-ca adds client certificates.

Signals: SIGHUP reloads the policies (a folder that does not validate is refused,
and the old policies stay in force); SIGTERM or SIGINT stops the node gracefully.

Exit codes: 0 ok, 1 error, 2 usage, 3 key not found/locked/unsafe, 4 check failed";

/// A cbfs delegation node: policy-checked proxy re-encryption of lockbox
/// capsules for delegated users.
#[derive(Parser)]
#[command(name = "cbfs-delegation", version, after_long_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v, -vv). Logs never contain secrets.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct KeyArgs {
    /// The node's data folder: its key (by default), database and audit log.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Where the node's secret lives (default file:DIR/node.key, made by
    /// `init` or on the first `serve`). file:PATH, keyring:SERVICE/NAME or
    /// openbao:KEY:PATH.
    #[arg(long, value_name = "SOURCE")]
    node_key: Option<KeySource>,
}

#[derive(Subcommand)]
enum Command {
    /// Make the node's key pair, unless it exists; print its fingerprint.
    Init {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Serve re-encryption requests until SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7600")]
        listen: SocketAddr,
        #[command(flatten)]
        key: KeyArgs,
        /// The file system's signed public keyset: the node trusts grants and
        /// revocations signed by its administrator key.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// Policy folder (one *.cedarschema, *.cedar files). Default: the
        /// policies of policies/default, built in.
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Store shares written by `cbfs-keytool delegate --out` (each sealed for
    /// this node) while the node is stopped.
    Import {
        #[command(flatten)]
        key: KeyArgs,
        /// The file system's signed public keyset.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: PathBuf,
        /// The `*.share` files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Validate a policy folder against its schema.
    CheckPolicies {
        /// The folder.
        dir: PathBuf,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of a node's audit log; name the first entry that
    /// was edited, deleted or reordered.
    Verify {
        /// The node's data folder (or its audit/ folder).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct TlsArgs {
    /// PEM certificate chain: serve HTTPS (required on any address but
    /// loopback, unless --insecure-http).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients may present certificates they signed
    /// (mTLS); a certificate that does not verify is refused in the handshake.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address. Requests and answers are
    /// signed, but anyone on the path sees who unlocks what, and when.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_http: bool,
}

#[derive(Args)]
struct LimitArgs {
    /// Largest request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_body)]
    max_body: usize,
    /// Most capsules in one re-encryption request.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_batch)]
    max_batch: usize,
    /// Re-encryption requests per minute per user.
    #[arg(long, value_name = "N", default_value_t = Limits::default().rate_per_minute)]
    rate: u32,
    /// Requests a user may make at once before --rate applies.
    #[arg(long, value_name = "N", default_value_t = Limits::default().burst)]
    burst: u32,
    /// Longest a request may take, in seconds (body upload included).
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().request_timeout.as_secs())]
    timeout: u64,
    /// How far a request's timestamp may be from the node's clock, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().clock_skew.as_secs())]
    clock_skew: u64,
    /// Requests per minute, from everyone, that fail authentication; beyond
    /// it they are refused without an audit record each.
    #[arg(long, value_name = "N", default_value_t = Limits::default().unauthenticated_per_minute)]
    unauthenticated_rate: u32,
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(Some("CBFS_DELEGATION_CONFIG"));
    init_logging(cli.verbose, matches!(cli.command, Command::Serve { .. }));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "cbfs-delegation: error: {}",
                cbfs_core::error_chain(err.as_ref())
            );
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    let core = |e: &cbfs_core::Error| match e {
        cbfs_core::Error::NotFound { .. }
        | cbfs_core::Error::InsecurePermissions { .. }
        | cbfs_core::Error::LockedKey { .. }
        | cbfs_core::Error::AgeUnwrap { .. }
        | cbfs_core::Error::Keyring { .. }
        | cbfs_core::Error::Malformed { .. } => 3,
        cbfs_core::Error::Document { .. } | cbfs_core::Error::KeyMismatch { .. } => 4,
        _ => 1,
    };
    match err.downcast_ref::<Error>() {
        Some(Error::Core(e)) => core(e),
        Some(Error::Policy { .. } | Error::Audit { .. }) => 4,
        _ => err.downcast_ref::<cbfs_core::Error>().map_or(1, core),
    }
}

fn init_logging(verbose: u8, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,cbfs_core={level},cbfs_localkeys={level},cbfs_keysource={level},cbfs_delegation={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { key } => {
            let (identity, how) = NodeIdentity::init(
                &key.data,
                key.node_key.as_ref(),
                &cbfs_keysource::unlock_from_env(),
            )?;
            let fp = fingerprint(identity.public_key());
            match how {
                Init::Created => println!(
                    "created node key {fp}\n  public: {}",
                    key.data.join("node.pub").display()
                ),
                Init::Existing => println!("node key {fp} already exists; kept it"),
            }
            Ok(())
        }
        Command::Serve {
            listen,
            key,
            keyset,
            policies,
            limits,
            tls,
        } => {
            let tls_config = match (&tls.tls_cert, &tls.tls_key) {
                (Some(cert), Some(key)) => Some(
                    cbfs_serve::tls_config(&cbfs_serve::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: tls.client_ca.clone(),
                    })
                    .map_err(|e| Error::Server(format!("cannot serve TLS: {e}")))?,
                ),
                _ => None,
            };
            if tls_config.is_none() && !listen.ip().is_loopback() && !tls.insecure_http {
                anyhow::bail!(
                    "--listen {listen} is not a loopback address: give --tls-cert and --tls-key (or --insecure-http)"
                );
            }
            let limits = Limits {
                max_body: limits.max_body,
                max_batch: limits.max_batch,
                rate_per_minute: limits.rate,
                burst: limits.burst,
                request_timeout: Duration::from_secs(limits.timeout.max(1)),
                clock_skew: Duration::from_secs(limits.clock_skew),
                unauthenticated_per_minute: limits.unauthenticated_rate,
            };
            let config = NodeConfig {
                data: key.data,
                keyset,
                policies: policies.map_or(PolicySource::BuiltIn, PolicySource::Dir),
                node_key: key.node_key,
                limits,
                clock: cbfs_core::system_clock(),
            };
            let node = Arc::new(Node::open(config)?);
            let info = node.info();
            tracing::info!(
                "node {} for file system `{}` (administrator {}), {} grants, policies: {}",
                info.fingerprint,
                info.fs,
                info.admin_fingerprint,
                node.grant_count(),
                node.policy_ids().join(", ")
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let local = listener
                    .local_addr()
                    .context("cannot read the bound address")?;
                {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let scheme = if tls_config.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    writeln!(out, "listening on {scheme}://{local}")?;
                    out.flush()?;
                }
                let shutdown = cbfs_delegation::server::termination()?;
                let reload = cbfs_delegation::server::hangups()?;
                let options = cbfs_serve::ServeOptions {
                    tls: tls_config.map(|c| Arc::new(arc_swap::ArcSwap::new(c))),
                    ..Default::default()
                };
                cbfs_delegation::server::serve_with(node, listener, options, shutdown, reload)
                    .await?;
                anyhow::Ok(())
            })?;
            Ok(())
        }
        Command::Import { key, keyset, files } => {
            let config = NodeConfig {
                data: key.data,
                keyset,
                policies: PolicySource::BuiltIn,
                node_key: key.node_key,
                limits: Limits::default(),
                clock: cbfs_core::system_clock(),
            };
            let node = Node::open(config)?;
            let mut failed = 0;
            for file in &files {
                let bytes = std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                match node.upload(&bytes) {
                    Ok(stored) => println!(
                        "{}: stored share {} of {} ({} needed) of scope `{}` for `{}`",
                        file.display(),
                        stored.share,
                        stored.shares,
                        stored.threshold,
                        stored.scope,
                        stored.user
                    ),
                    Err(r) => {
                        failed += 1;
                        eprintln!("{}: refused ({}): {}", file.display(), r.code, r.reason);
                    }
                }
            }
            node.stopped()?;
            if failed > 0 {
                anyhow::bail!("{failed} of {} shares were not stored", files.len());
            }
            Ok(())
        }
        Command::CheckPolicies { dir } => {
            let policies = Policies::load(&dir)?;
            let ids = policies.ids();
            println!(
                "{}: {} {} valid against the schema: {}",
                dir.display(),
                ids.len(),
                if ids.len() == 1 {
                    "policy is"
                } else {
                    "policies are"
                },
                ids.join(", ")
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { dir },
        } => {
            let verified = cbfs_delegation::audit::verify(&dir)?;
            println!(
                "audit log of {}: {} entries, chain intact; head {}{}",
                dir.display(),
                verified.entries,
                verified.head,
                if verified.head_file {
                    " (matches the head file)"
                } else {
                    " (no head file to compare)"
                }
            );
            Ok(())
        }
    }
}
