//! `cbfs-tier`: tier a tree out to object storage, list snapshots and files.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 key material problem,
//! 4 an object failed verification, 5 the store is unreachable (retry),
//! 6 the run finished but skipped some entries (they are retried next run).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cbfs_core::KeySource;
use cbfs_tiering::{Agent, AgentOptions, CrashPoint, Error, OutOptions, ScopeRule, ScopeRules};
use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Tier a tree out to a local directory store (the default kind)
  cbfs-tier out /srv/projects --store /mnt/archive --keyset keyset.json \\
      --scope 'home/alice/**=alice' --scope 'home/bob/**=bob'
  # ... or to S3 (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
  cbfs-tier out /srv/projects --store s3://bucket/projects --keyset keyset.json
  cbfs-tier snapshots --store /mnt/archive
  cbfs-tier ls --store /mnt/archive home/alice
  # A user restores their own files with their own key and delegation
  cbfs-tier restore --store /mnt/archive --identity file:alice.key --kfrags grants/ home/alice ./alice
  # Check the store without a key; then decrypt everything with the root secret
  cbfs-tier verify --store /mnt/archive
  cbfs-tier verify --store /mnt/archive --read-data --identity file:admin.key

Exit codes: 0 ok, 1 error, 2 usage, 3 key material (restore: partial, some
            entries failed), 4 verification failed, 5 store unreachable (retry),
            6 done but some entries skipped";

/// Tier files out to object storage as compressed, encrypted segments.
#[derive(Parser)]
#[command(name = "cbfs-tier", version, after_long_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v, -vv, -vvv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct StoreArgs {
    /// The store: a directory, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "STORE")]
    store: String,
    /// The local index (default: under $XDG_DATA_HOME/cbfs, one per store).
    #[arg(long, value_name = "DIR")]
    index: Option<PathBuf>,
    /// The public keyset (needed to tier out with encryption).
    #[arg(long, value_name = "KEYSET.json")]
    keyset: Option<PathBuf>,
    /// The key that signs snapshot manifests (default: file:INDEX/writer.key, made on first use).
    #[arg(long, value_name = "SOURCE")]
    writer_key: Option<KeySource>,
}

#[derive(Subcommand)]
enum Command {
    /// Tier a tree out: store new and changed entries, then a signed snapshot.
    Out {
        /// The tree to tier out.
        source: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Send paths matching GLOB (relative to SOURCE) to scope LABEL; first match wins,
        /// the rest goes to `default`. Repeatable.
        #[arg(long = "scope", value_name = "GLOB=LABEL")]
        scopes: Vec<ScopeRule>,
        /// Close a segment at this size (K, M, G suffixes).
        #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
        segment_size: u64,
        /// zstd compression level.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: i32,
        /// Write plain tars (no compression, no encryption, real names).
        /// Anyone who can read the store can read the files.
        #[arg(long)]
        plain: bool,
        /// Worker threads (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Testing only: abort at a point of the run (segment:N, lockboxes:N, summary:N, commit:N, manifest).
        #[arg(long, hide = true, value_name = "POINT")]
        crash_at: Option<CrashPoint>,
    },
    /// List the snapshots in the store.
    Snapshots {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Restore files from a snapshot into a directory, with your own key.
    ///
    /// A user gives their own secret and either their delegation nodes
    /// (--node URL... --user NAME.pub) or grant files (--kfrags); only the
    /// scopes delegated to them are opened, and what could not be opened is
    /// reported. The result is checked against the signed snapshot manifest.
    Restore {
        /// The store: a directory, or s3://BUCKET/PREFIX.
        #[arg(long, value_name = "STORE")]
        store: String,
        /// Your secret (a user key with --kfrags, or a root or scope secret).
        #[arg(long, value_name = "SOURCE")]
        identity: KeySource,
        /// Directory of your delegation grant files (kfrags held locally).
        #[arg(long, value_name = "DIR", conflicts_with = "node")]
        kfrags: Option<PathBuf>,
        /// A delegation node; repeat for all n nodes of your delegation. All
        /// are asked at once and the first m verified answers are used; a
        /// node that is down, slow or lies is named and worked around.
        #[arg(long, value_name = "URL", requires = "user")]
        node: Vec<String>,
        /// With --node: who you are, your NAME.pub file (or your name).
        #[arg(long, value_name = "NAME.pub")]
        user: Option<String>,
        /// With --node: m of your m-of-n delegation; by default the nodes say it.
        #[arg(long, value_name = "M", requires = "node")]
        threshold: Option<usize>,
        /// With --node: seconds one node gets to answer one batch.
        #[arg(long, value_name = "SECS", default_value_t = 60, requires = "node")]
        node_timeout: u64,
        /// A keyset file instead of the one the store carries.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: Option<PathBuf>,
        /// A snapshot id (or its first 8+ characters) or sequence number; the newest by default.
        #[arg(long)]
        snapshot: Option<String>,
        /// The agent's index, to refuse a store rolled back behind it.
        #[arg(long, value_name = "DIR")]
        index: Option<PathBuf>,
        /// Threads that decode members (default: one per core, at most 8).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// What to restore: a path in the tree, or `.` for everything.
        path: String,
        /// Where to restore it.
        dest: PathBuf,
    },
    /// Check a store: manifests, objects, summaries against segments, lockboxes;
    /// with --read-data and --identity, decrypt everything too.
    Verify {
        /// The store: a directory, or s3://BUCKET/PREFIX.
        #[arg(long, value_name = "STORE")]
        store: String,
        /// A keyset file instead of the one the store carries.
        #[arg(long, value_name = "KEYSET.json")]
        keyset: Option<PathBuf>,
        /// Also decrypt every member (needs --identity).
        #[arg(long)]
        read_data: bool,
        /// The root or a scope secret, for --read-data.
        #[arg(long, value_name = "SOURCE")]
        identity: Option<KeySource>,
    },
    /// List the entries of a snapshot (the newest by default).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// A snapshot id (or its first 8+ characters) or sequence number.
        #[arg(long)]
        snapshot: Option<String>,
        /// Only entries at or below this path.
        path: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64M"))?;
    let size = n.checked_mul(mult).ok_or("size too large")?;
    if size < 64 << 10 {
        return Err("the segment size must be at least 64K".into());
    }
    Ok(size)
}

fn default_index(store: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let canonical = if store.starts_with("s3://") {
        store.trim_end_matches('/').to_owned()
    } else {
        std::fs::canonicalize(store)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| store.to_owned())
    };
    let digest = hex::encode(&Sha256::digest(canonical.as_bytes())[..8]);
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cbfs").join("index").join(digest)
}

fn open_agent(args: &StoreArgs) -> anyhow::Result<Agent> {
    let index = args
        .index
        .clone()
        .unwrap_or_else(|| default_index(&args.store));
    Ok(Agent::open(AgentOptions {
        store: &args.store,
        index: &index,
        keyset: args.keyset.as_deref(),
        writer_key: args.writer_key.clone(),
    })?)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    match cli.command {
        Command::Out {
            source,
            store,
            scopes,
            segment_size,
            zstd_level,
            plain,
            jobs,
            crash_at,
        } => {
            let agent = open_agent(&store)?;
            let workers = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            });
            let opts = OutOptions {
                source: source.clone(),
                rules: ScopeRules::new(scopes),
                segment_size,
                zstd_level,
                plain,
                workers,
                progress: !json,
                crash_at,
            };
            let report = cbfs_tiering::run_out(&agent, &opts)
                .with_context(|| format!("tiering out {}", source.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} entries scanned: {} stored, {} unchanged, {} deleted, {} skipped",
                    report.scanned,
                    report.files,
                    report.unchanged,
                    report.deleted,
                    report.skipped.len()
                );
                println!(
                    "{} bytes read, {} bytes stored in {} new segments, {:.2} s",
                    report.bytes_read, report.bytes_stored, report.new_segments, report.seconds
                );
                match (&report.snapshot, report.sequence) {
                    (Some(id), Some(seq)) => println!("snapshot {seq} ({id})"),
                    _ => println!("nothing changed: no new snapshot"),
                }
                for p in &report.skipped {
                    eprintln!("skipped {}: {} (retried next run)", p.path, p.reason);
                }
            }
            Ok(if report.skipped.is_empty() { 0 } else { 6 })
        }
        Command::Snapshots { store } => {
            let agent = open_agent(&store)?;
            let snaps = cbfs_tiering::list_snapshots(&agent)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else if snaps.is_empty() {
                println!("no snapshots in {}", agent.store.describe());
            } else {
                println!(
                    "{:>6}  {:<32}  {:<20}  {:>8}  writer",
                    "seq", "id", "created", "entries"
                );
                for s in &snaps {
                    println!(
                        "{:>6}  {:<32}  {:<20}  {:>8}  {}{}",
                        s.sequence,
                        s.id,
                        s.created,
                        s.entries,
                        s.writer,
                        if s.trusted_writer {
                            ""
                        } else {
                            " (UNREGISTERED)"
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Restore {
            store,
            identity,
            kfrags,
            node,
            user,
            threshold,
            node_timeout,
            keyset,
            snapshot,
            index,
            jobs,
            path,
            dest,
        } => {
            cbfs_recover::set_decode_threads(jobs.map(usize::from));
            let index = index.or_else(|| Some(default_index(&store)));
            let report = cbfs_tiering::run_restore(&cbfs_tiering::RestoreOptions {
                store: &store,
                keyset: keyset.as_deref(),
                identity: &identity,
                kfrags: kfrags.as_deref(),
                snapshot: snapshot.as_deref(),
                path: &path,
                dest: &dest,
                index: index.as_deref(),
                progress: !json,
                nodes: &node,
                user: user.as_deref(),
                threshold: threshold.unwrap_or(0),
                node_timeout: std::time::Duration::from_secs(node_timeout.max(1)),
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprint!("{}", report.human());
            }
            Ok(if report.failures.is_empty() { 0 } else { 3 })
        }
        Command::Verify {
            store,
            keyset,
            read_data,
            identity,
        } => {
            let report =
                cbfs_tiering::run_verify(&store, keyset.as_deref(), identity.as_ref(), read_data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} snapshots, {} segments, {} members, {} lockboxes checked; {} unreferenced segments{}",
                    report.snapshots,
                    report.segments,
                    report.members,
                    report.lockboxes,
                    report.unreferenced_segments,
                    if read_data {
                        format!("; {} entries decrypted", report.decrypted)
                    } else {
                        String::new()
                    }
                );
                for p in &report.problems {
                    println!("PROBLEM {}: {}", p.object, p.error);
                }
                if report.problems.is_empty() {
                    println!("the store verified");
                }
            }
            Ok(if report.problems.is_empty() { 0 } else { 4 })
        }
        Command::Ls {
            store,
            snapshot,
            path,
        } => {
            let agent = open_agent(&store)?;
            let entries = cbfs_tiering::list_entries(&agent, snapshot.as_deref(), path.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in &entries {
                    println!(
                        "{:<8} {:04o} {:>12} {:>12} {:<12} {}",
                        e.kind, e.mode, e.size, e.mtime, e.scope, e.path
                    );
                }
            }
            Ok(0)
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::Usage(_) => 2,
                Error::Key(k) if k.is_transient() => 5,
                Error::Key(_) => 3,
                Error::Store(s) if s.is_transient() => 5,
                Error::Integrity { .. } | Error::Format(_) => 4,
                _ => 1,
            };
        }
    }
    1
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let json = cli.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit_code(&err);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("{err:#}"), "exit_code": code })
                );
            }
            eprintln!("cbfs-tier: error: {err:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,cbfs_tiering={level},cbfs_store={level},cbfs_core={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
