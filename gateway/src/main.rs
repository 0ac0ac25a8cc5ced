//! `cbfs-gateway`: the service in front of the tiering agent.
//!
//! Exit codes: 0 success, 1 other error, 2 usage error, 3 key material not
//! found, locked or unsafe, 4 a check failed (configuration or policies do
//! not validate, the audit log is broken).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use cbfs_gateway::{Error, Gateway, Loaded};
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Check a configuration (and every key, keyset and policy it names), then serve it
  cbfs-gateway check-config --config /etc/cbfs/gateway.toml
  cbfs-gateway serve --config /etc/cbfs/gateway.toml
  # Check a policy folder before pointing the configuration at it, then reload
  cbfs-gateway check-policies /etc/cbfs/gateway-policies && kill -HUP $(pidof cbfs-gateway)
  # Check that nobody edited or deleted audit entries
  cbfs-gateway audit verify /var/lib/cbfs-gateway/audit

The configuration is documented field by field in gateway/README.md, with an
example in gateway/examples/gateway.toml. `listen = \"127.0.0.1:0\"` picks a free
port; the first line on standard output is `listening on http(s)://ADDRESS`.

TLS (the [tls] table) is required on every address but loopback; plain HTTP
elsewhere needs --insecure-http, and says so in the log.

Signals: SIGHUP reloads the configuration's callers and limits, the policies
and the TLS certificate (what does not load is refused, and the old stays in
force); SIGTERM or SIGINT lets running jobs reach a safe point, then stops.

With a file system configured `fault_in = true`, the process started is a
guard that owns the fault-in watch and runs the gateway as its child (and
again if it dies); signals sent to the guard are passed on.

Exit codes: 0 ok, 1 error, 2 usage, 3 key not found/locked/unsafe, 4 check failed";

/// The cbfs gateway: pushes, tier-out runs, listings, store reads and
/// unlock relays, authenticated, under policy, audited, and holding no key
/// that decrypts.
#[derive(Parser)]
#[command(name = "cbfs-gateway", version, after_long_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v, -vv). Logs never contain secrets.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Serve plain HTTP on a non-loopback address. Requests are signed,
        /// but anyone on the path reads what is pushed and listed.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Check a configuration and everything it names, and say what it serves.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// As `serve --insecure-http`.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Validate a gateway policy folder against its schema.
    CheckPolicies {
        /// The folder (one *.cedarschema, *.cedar files).
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
    /// Check the hash chain of the gateway's audit log; name the first entry
    /// that was edited, deleted or reordered.
    Verify {
        /// The audit folder (`STATE/audit` unless the configuration says).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli: Cli = cbfs_cli::parse(None);
    init_logging(cli.verbose, matches!(cli.command, Command::Serve { .. }));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "cbfs-gateway: error: {}",
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
        Some(Error::Config { .. }) => 4,
        Some(Error::Key(e)) => core(e),
        Some(Error::Policies(
            cbfs_delegation::Error::Policy { .. } | cbfs_delegation::Error::Audit { .. },
        )) => 4,
        Some(Error::Policies(cbfs_delegation::Error::Core(e))) => core(e),
        Some(Error::Tiering(cbfs_tiering::Error::Key(e))) => core(e),
        Some(Error::Tiering(cbfs_tiering::Error::Usage(_))) => 2,
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
            "warn,cbfs_gateway={level},cbfs_tiering={level},cbfs_core={level},cbfs_localkeys={level},cbfs_keysource={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn tls_files(loaded: &Loaded) -> Option<cbfs_serve::TlsFiles> {
    loaded.config.tls.as_ref().map(|t| cbfs_serve::TlsFiles {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: t.client_ca.clone(),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            config,
            insecure_http,
        } => serve(config, insecure_http),
        Command::CheckConfig {
            config,
            insecure_http,
        } => {
            let loaded = Loaded::read(&config, insecure_http)?;
            if let Some(files) = tls_files(&loaded) {
                cbfs_serve::tls_config(&files).map_err(Error::Server)?;
            }
            let policies = match &loaded.config.policies {
                Some(dir) => cbfs_delegation::Policies::load(dir)?,
                None => cbfs_delegation::Policies::load_from(&cbfs_gateway::policy::built_in())?,
            };
            cbfs_gateway::gateway::check_fs(&loaded)?;
            println!(
                "{}: listen {}{}, {} callers, policies {}, file systems: {}",
                config.display(),
                loaded.config.listen,
                if loaded.config.tls.is_some() {
                    " (TLS)"
                } else {
                    " (plain HTTP)"
                },
                loaded.principals.len(),
                policies.ids().join(", "),
                loaded
                    .config
                    .fs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::CheckPolicies { dir } => {
            let policies = cbfs_delegation::Policies::load(&dir)?;
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
                "{}: {} entries, the hash chain is intact",
                dir.display(),
                verified.entries
            );
            if verified.after_head > 0 {
                println!(
                    "{} of them after the head: written, and not yet synced when the gateway stopped (they chain to the head; the next start takes them in)",
                    verified.after_head
                );
            }
            Ok(())
        }
    }
}

fn serve(config: PathBuf, insecure_http: bool) -> Result<()> {
    let loaded = Loaded::read(&config, insecure_http)?;
    // Fault-in: this process becomes the guard that owns the fanotify
    // group, and the gateway runs again as its child, the handler.
    let handover = if loaded.config.fs.values().any(|f| f.fault_in) {
        match cbfs_tiering::faultin::handed_down().context("the fault-in group handed down")? {
            Some(h) => Some(h),
            None => {
                let opts = cbfs_tiering::faultin::GuardOptions::this_program()?;
                let code = cbfs_tiering::faultin::run_guard(&opts)?;
                std::process::exit(code);
            }
        }
    } else {
        None
    };
    let listen = loaded.config.listen;
    let tls = match tls_files(&loaded) {
        Some(files) => Some(Arc::new(arc_swap::ArcSwap::new(
            cbfs_serve::tls_config(&files).map_err(Error::Server)?,
        ))),
        None => None,
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP on {listen} (--insecure-http): what is pushed and listed crosses the network in the clear"
        );
    }
    cbfs_gateway::server::INSECURE_HTTP.store(insecure_http, std::sync::atomic::Ordering::Relaxed);
    let max_concurrent = loaded.config.limits.max_concurrent;
    let io_timeout = loaded.config.limits.io_timeout();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let gw = Gateway::open(loaded, cbfs_core::system_clock())?;
        if let Some(h) = handover {
            gw.recalls.start_fault_in(&gw, h).await?;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener
            .local_addr()
            .context("cannot read the bound address")?;
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let scheme = if tls.is_some() { "https" } else { "http" };
            writeln!(out, "listening on {scheme}://{local}")?;
            out.flush()?;
        }
        tracing::info!(
            "serving file systems {} on {local}",
            gw.fs_names().join(", ")
        );
        gw.schedule();
        // Store reads are audited lazily: durable within a second.
        {
            let gw = gw.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let g = gw.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || g.sync_audit()).await {
                        tracing::error!("cannot sync the audit log: {e}");
                    }
                }
            });
        }
        // SIGHUP: configuration, policies and the TLS certificate.
        let hangups = {
            let (gw, tls) = (gw.clone(), tls.clone());
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot watch SIGHUP")?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let g = gw.clone();
                    match tokio::task::spawn_blocking(move || g.reload(insecure_http)).await {
                        Ok(Ok(notes)) => tracing::info!("{notes}"),
                        Ok(Err(e)) => tracing::error!(
                            "NOT reloaded, the old configuration stays in force: {e}"
                        ),
                        Err(e) => tracing::error!("reload failed: {e}"),
                    }
                    if let (Some(tls), Some(files)) = (&tls, tls_files(&gw.config())) {
                        match cbfs_serve::tls_config(&files) {
                            Ok(c) => {
                                tls.store(c);
                                tracing::info!("TLS certificate reloaded");
                            }
                            Err(e) => tracing::error!("TLS certificate NOT reloaded: {e}"),
                        }
                    }
                }
            })
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot watch SIGINT")?;
        let stopping = {
            let gw = gw.clone();
            async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: stopping at the next safe point"),
                    _ = int.recv() => tracing::info!("SIGINT: stopping at the next safe point"),
                }
                // Jobs first (a push answers when its job ends), then the
                // listener drains what is in flight.
                gw.stop().await;
            }
        };
        let options = cbfs_serve::ServeOptions {
            tls,
            max_connections: max_concurrent.max(1) * 4,
            header_timeout: io_timeout,
            ..Default::default()
        };
        cbfs_serve::serve(
            listener,
            cbfs_gateway::server::router(gw.clone()),
            options,
            stopping,
        )
        .await
        .with_context(|| format!("serving on {local} failed"))?;
        hangups.abort();
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
